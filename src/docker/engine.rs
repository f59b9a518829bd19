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
    #[error("cannot reach the engine at {addr}: {}", super::describe(.source))]
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

/// What a leader may reach on an engine record's word (`controller --docker`). Whoever may
/// write `engines/` (the operator role) is not thereby the controller's operator: the record's
/// address is dialed only if the controller's own flags allow it (`--docker-allow`), and its
/// TLS files are read only from the one directory they name (`--docker-tls-dir`), never from
/// anywhere else on the leader's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// Addresses that may be dialed: exact, or with `*` standing for a run of letters, digits,
    /// `.`, `_` and `-` (`tcp://10.0.0.*:2376`), which never crosses a `/`, `:` or `@`.
    pub allow: Vec<String>,
    /// The directory TLS files must lie in, canonical; `None`: no TLS file is ever read.
    pub tls_dir: Option<PathBuf>,
}

/// Docker's own default address: what a leader may dial when its flags name none.
pub const DEFAULT_ALLOW: &str = "unix:///var/run/docker.sock";

impl Default for Trust {
    /// The local Docker engine's default socket only, and no TLS file.
    fn default() -> Self {
        Trust {
            allow: vec![DEFAULT_ALLOW.to_string()],
            tls_dir: None,
        }
    }
}

/// Why an engine record is not acted on: nothing was dialed nor opened for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("address {0:?} is not allowed (controller --docker-allow)")]
    Address(String),
    #[error("its TLS files are not read: the controller has no --docker-tls-dir")]
    NoTlsDir,
    #[error("TLS file {path:?} is not read: {why}")]
    TlsFile { path: String, why: String },
}

impl Trust {
    /// `allow` (empty: [`DEFAULT_ALLOW`]) and `tls_dir`, which must exist: it is made
    /// canonical here, once.
    pub fn new(allow: Vec<String>, tls_dir: Option<&Path>) -> Result<Trust, String> {
        let allow = if allow.is_empty() {
            vec![DEFAULT_ALLOW.to_string()]
        } else {
            allow
        };
        if let Some(bad) = allow.iter().find(|a| a.trim().is_empty()) {
            return Err(format!("--docker-allow {bad:?}: an address is not empty"));
        }
        let tls_dir = match tls_dir {
            None => None,
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .map_err(|e| format!("--docker-tls-dir {}: {e}", d.display()))?,
            ),
        };
        Ok(Trust { allow, tls_dir })
    }

    /// Whether an engine at `addr` may be dialed.
    pub fn allows(&self, addr: &str) -> bool {
        self.allow.iter().any(|pattern| glob(pattern, addr))
    }

    /// The TLS files an engine record names, if it names all three, each checked without
    /// opening it: it must be, once every link is followed, a regular file inside
    /// [`Trust::tls_dir`]. The paths returned are the canonical ones.
    pub fn tls_files(
        &self,
        ca: Option<&str>,
        cert: Option<&str>,
        key: Option<&str>,
    ) -> Result<Option<TlsFiles>, Refused> {
        let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
            return Ok(None);
        };
        let Some(dir) = &self.tls_dir else {
            return Err(Refused::NoTlsDir);
        };
        let inside = |path: &str| {
            let refused = |why: String| Refused::TlsFile {
                path: path.to_string(),
                why,
            };
            // `canonicalize` resolves links with lstat and readlink, and `metadata` is a
            // stat: neither opens the file (a FIFO would block an open).
            let real = std::fs::canonicalize(path).map_err(|e| refused(e.to_string()))?;
            if !real.starts_with(dir) {
                return Err(refused(format!("it is not inside {}", dir.display())));
            }
            let meta = std::fs::metadata(&real).map_err(|e| refused(e.to_string()))?;
            if !meta.is_file() {
                return Err(refused("it is not a regular file".into()));
            }
            Ok(real)
        };
        Ok(Some(TlsFiles {
            ca: inside(ca)?,
            cert: inside(cert)?,
            key: inside(key)?,
        }))
    }
}

/// Whether `text` matches `pattern`, where `*` stands for a run (maybe empty) of letters,
/// digits, `.`, `_` and `-`.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            let run = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                .unwrap_or(tail.len());
            (0..=run).any(|n| glob(rest, &tail[n..]))
        }
    }
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

    #[test]
    fn only_allowed_addresses_are_dialed() {
        let t = Trust::new(
            vec![
                "unix:///run/citadel/docker.sock".into(),
                "tcp://10.0.0.*:2376".into(),
                "tcp://*.docker.example:2376".into(),
            ],
            None,
        )
        .unwrap();
        // (address, allowed)
        let cases = [
            ("unix:///run/citadel/docker.sock", true),
            ("unix:///run/citadel/docker.sock2", false),
            ("unix:///var/run/docker.sock", false), // the default is replaced, not added to
            ("unix:///run/citadel/../citadel/docker.sock", false),
            ("tcp://10.0.0.5:2376", true),
            ("tcp://10.0.0.:2376", true),
            ("tcp://10.0.0.5:2375", false),
            ("tcp://10.0.0.5@evil.example:2376", false),
            ("tcp://10.0.0.5/x:2376", false),
            ("tcp://10.0.0.5:1/:2376", false),
            ("tcp://a.docker.example:2376", true),
            ("tcp://a.b.docker.example:2376", true),
            ("tcp://docker.example:2376", false),
            ("tcp://evil.example/.docker.example:2376", false),
            ("https://a.docker.example:2376", false),
            ("", false),
        ];
        for (addr, allowed) in cases {
            assert_eq!(t.allows(addr), allowed, "{addr:?}");
        }
        let default = Trust::new(Vec::new(), None).unwrap();
        assert_eq!(default, Trust::default());
        assert!(default.allows(DEFAULT_ALLOW));
        assert!(!default.allows("unix:///run/docker.sock"));
        assert!(!default.allows("tcp://127.0.0.1:2375"));
        assert!(Trust::new(vec![" ".into()], None).is_err());
    }

    #[test]
    fn tls_files_are_read_only_from_inside_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("tls");
        std::fs::create_dir(&dir).unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        std::fs::write(root.path().join("outside.pem"), "x").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.pem"), dir.join("link.pem")).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let at = |f: &str| dir.join(f).display().to_string();
        let (ca, cert, key, link) = (at("ca.pem"), at("cert.pem"), at("key.pem"), at("link.pem"));
        let climb = format!("{}/../outside.pem", dir.display());
        let t = Trust::new(Vec::new(), Some(&dir)).unwrap();
        let files = |ca: &str, cert: &str, key: &str| t.tls_files(Some(ca), Some(cert), Some(key));
        let got = files(&ca, &cert, &key).unwrap().unwrap();
        assert_eq!(got.ca, std::fs::canonicalize(&ca).unwrap());
        // (the key file named, what is refused)
        let cases = [
            (link.as_str(), "is not inside"),  // a link out of the directory
            (climb.as_str(), "is not inside"), // `..` out of it
            ("/etc/passwd", "is not inside"),
            (&*at("sub"), "not a regular file"), // a directory
            (&*at("missing.pem"), "No such file"),
        ];
        for (bad, why) in cases {
            let e = files(&ca, &cert, bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(t.tls_files(Some(&ca), None, Some(&key)), Ok(None));
        let none = Trust::default();
        assert_eq!(files_of(&none, &ca, &cert, &key), Err(Refused::NoTlsDir));
        assert!(Trust::new(Vec::new(), Some(&root.path().join("missing"))).is_err());
    }

    fn files_of(t: &Trust, ca: &str, cert: &str, key: &str) -> Result<Option<TlsFiles>, Refused> {
        t.tls_files(Some(ca), Some(cert), Some(key))
    }
}
