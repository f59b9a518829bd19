//! The Docker edge: reaching an engine with bollard and reading what it offers.
//!
//! Addresses follow the seed's `Engine.Addr` and Docker's own `-H`: `unix:///path`,
//! `tcp://host:port` or `http://host:port` (plain), `https://host:port` (or `tcp://` with TLS
//! files). The API version is negotiated with the engine (Debian's speaks 1.41).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{API_DEFAULT_VERSION, Docker};

/// The TLS files of the seed's `Engine.Connect(tls.Config)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine address {0:?}: expected unix://PATH, tcp://HOST:PORT, http://… or https://…")]
    BadAddress(String),
    #[error("https needs --tls-ca, --tls-cert and --tls-key")]
    TlsFilesMissing,
    #[error("cannot reach the engine at {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the engine at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("the engine at {addr} did not report {what}")]
    Incomplete { addr: String, what: &'static str },
}

/// What an engine says it has.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub cpus: f64,
    /// MemTotal, in MB (MiB, as Docker's own `docker info` rounds it).
    pub memory_mb: f64,
    /// The size of the filesystem Docker keeps its data on, in MB (0: not told).
    pub disk_mb: f64,
    /// The daemon's labels (`--label` on dockerd), `key=value`.
    pub labels: Vec<String>,
    pub name: String,
    pub server_version: String,
}

/// Connects to an engine (lazily: the first request reaches it).
pub fn connect(
    addr: &str,
    tls: Option<&TlsFiles>,
    timeout: Duration,
) -> Result<Docker, EngineError> {
    let secs = timeout.as_secs().max(1);
    let unreachable = |source| EngineError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    if let Some(path) = addr.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(EngineError::BadAddress(addr.to_string()));
        }
        return Docker::connect_with_unix(addr, secs, API_DEFAULT_VERSION).map_err(unreachable);
    }
    let https = addr.starts_with("https://");
    if !(https || addr.starts_with("tcp://") || addr.starts_with("http://")) {
        return Err(EngineError::BadAddress(addr.to_string()));
    }
    match tls {
        Some(t) => Docker::connect_with_ssl(
            addr,
            Path::new(&t.key),
            Path::new(&t.cert),
            Path::new(&t.ca),
            secs,
            API_DEFAULT_VERSION,
        )
        .map_err(unreachable),
        None if https => Err(EngineError::TlsFilesMissing),
        None => Docker::connect_with_http(addr, secs, API_DEFAULT_VERSION).map_err(unreachable),
    }
}

/// Reads NCPU, MemTotal and the daemon's labels, within `timeout` whatever the network does.
pub async fn probe(
    addr: &str,
    tls: Option<&TlsFiles>,
    timeout: Duration,
) -> Result<Probe, EngineError> {
    let docker = connect(addr, tls, timeout)?;
    let unreachable = |source| EngineError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    let ask = async {
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.info().await.map_err(unreachable)
    };
    let info = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| EngineError::Timeout {
            addr: addr.to_string(),
            timeout,
        })??;
    let incomplete = |what| EngineError::Incomplete {
        addr: addr.to_string(),
        what,
    };
    let cpus = info
        .ncpu
        .filter(|n| *n > 0)
        .ok_or_else(|| incomplete("NCPU"))?;
    let mem = info
        .mem_total
        .filter(|m| *m > 0)
        .ok_or_else(|| incomplete("MemTotal"))?;
    let disk_mb = data_space_total(info.driver_status.as_deref().unwrap_or_default())
        .or_else(|| local_root_size(addr, info.docker_root_dir.as_deref()?))
        .unwrap_or(0.0);
    Ok(Probe {
        cpus: cpus as f64,
        memory_mb: (mem / (1024 * 1024)) as f64,
        disk_mb,
        labels: info.labels.unwrap_or_default(),
        name: info.name.unwrap_or_default(),
        server_version: info.server_version.unwrap_or_default(),
    })
}

/// The storage driver's "Data Space Total" (devicemapper and friends report it), in MB.
fn data_space_total(status: &[Vec<String>]) -> Option<f64> {
    let value = status
        .iter()
        .find(|kv| kv.first().is_some_and(|k| k.ends_with("Space Total")))?
        .get(1)?;
    let (number, unit) = value.trim().split_once(' ')?;
    let n: f64 = number.parse().ok()?;
    let mb = match unit.trim() {
        "kB" | "KB" => n / 1000.0 / 1.048_576,
        "MB" => n / 1.048_576,
        "GB" => n * 1000.0 / 1.048_576,
        "TB" => n * 1_000_000.0 / 1.048_576,
        _ => return None,
    };
    (mb > 0.0).then_some(mb.floor())
}

/// For an engine on this machine (a unix socket), the size of the filesystem under its data
/// root (`DockerRootDir`), in MB, read with statvfs.
fn local_root_size(addr: &str, root: &str) -> Option<f64> {
    if !addr.starts_with("unix://") {
        return None;
    }
    let st = rustix::fs::statvfs(root).ok()?;
    let bytes = st.f_blocks.saturating_mul(st.f_frsize);
    (bytes > 0).then_some((bytes / (1024 * 1024)) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_is_read_from_the_driver_or_the_local_data_root() {
        let status = vec![
            vec!["Pool Name".to_string(), "docker-pool".to_string()],
            vec!["Data Space Total".to_string(), "107.4 GB".to_string()],
        ];
        let mb = data_space_total(&status).unwrap();
        assert!((102_000.0..103_000.0).contains(&mb), "{mb}");
        assert_eq!(data_space_total(&[]), None);
        assert!(local_root_size("unix:///var/run/docker.sock", "/").is_some_and(|mb| mb > 0.0));
        assert_eq!(local_root_size("tcp://h:2375", "/"), None);
    }

    #[test]
    fn addresses_are_checked_before_any_io() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            connect("ftp://x", None, t),
            Err(EngineError::BadAddress(_))
        ));
        assert!(matches!(
            connect("unix://", None, t),
            Err(EngineError::BadAddress(_))
        ));
        assert!(matches!(
            connect("https://h:2376", None, t),
            Err(EngineError::TlsFilesMissing)
        ));
        assert!(connect("tcp://127.0.0.1:2375", None, t).is_ok());
    }
}
