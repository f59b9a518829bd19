//! Real etcd servers as child processes on loopback: one member ([`EtcdProcess`]) or a
//! cluster of several ([`EtcdCluster`]) whose members can be killed, paused and restarted.
//!
//! Used by tests and local tooling: [`EtcdProcess::start`] picks free client
//! and peer ports on `127.0.0.1`, puts the data directory (and the etcd log)
//! in a fresh temporary directory, spawns `etcd` and waits until
//! `GET /health` reports `"health":"true"` (with TLS, until `etcdctl endpoint
//! health` says so). The process can then be killed,
//! stopped gracefully and restarted on the same data directory and ports,
//! which makes it possible to exercise registry outages.
//!
//! Dropping an [`EtcdProcess`] kills the server and removes its data.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::child::ChildProcess;
use tokio::time::{Instant, sleep, timeout};

/// How long to wait for a freshly spawned etcd to report healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`EtcdProcess::stop`] waits after SIGTERM before sending SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Per-probe bound on connecting to / talking with the client port.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a fresh start is retried with new ports when another
/// process grabbed one of the picked ports in the meantime.
const PORT_RETRIES: usize = 3;
/// Number of etcd log lines included in errors.
const LOG_TAIL_LINES: usize = 40;
/// Member name passed to `--name` / `--initial-cluster`.
const MEMBER_NAME: &str = "citadel-test";

/// Errors from starting or restarting an [`EtcdProcess`].
#[derive(Debug, thiserror::Error)]
pub enum EtcdProcessError {
    /// The etcd binary could not be found.
    #[error(
        "etcd binary `{binary}` not found; install it with `apt-get install etcd-server etcd-client` \
         (or run scripts/install-deps.sh)"
    )]
    NotInstalled {
        /// The binary that was looked for (a name searched in `PATH`, or a path).
        binary: String,
    },
    /// Spawning the etcd process failed.
    #[error("failed to spawn etcd")]
    Spawn(#[source] io::Error),
    /// etcd exited before it became ready.
    #[error("etcd exited before becoming ready ({status}); last etcd log lines:\n{log_tail}")]
    Exited {
        /// The exit status, as displayed by the OS.
        status: String,
        /// The last lines of the etcd log.
        log_tail: String,
    },
    /// etcd did not report healthy within 20 s.
    #[error("etcd did not become ready within 20 s; last etcd log lines:\n{log_tail}")]
    NotReady {
        /// The last lines of the etcd log.
        log_tail: String,
    },
    /// Filesystem or socket error while preparing the process.
    #[error("etcd process I/O error")]
    Io(#[from] io::Error),
}

/// Options for [`EtcdProcess::start_with`].
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// If set, passed as `--auto-compaction-retention` together with
    /// `--auto-compaction-mode=revision` (e.g. `"1000"` keeps the last 1000
    /// revisions).
    pub auto_compaction_retention: Option<String>,
    /// If set, passed as `--quota-backend-bytes`.
    pub quota_bytes: Option<u64>,
    /// If set, passed as `--max-txn-ops`.
    pub max_txn_ops: Option<u32>,
    /// The etcd binary; `etcd` from `PATH` when `None`.
    pub binary: Option<PathBuf>,
    /// Serve clients over TLS (`https://`), with the caller's files.
    pub tls: Option<EtcdTls>,
    /// If set, passed as `--auth-token-ttl` (seconds a simple token lives unused).
    pub auth_token_ttl: Option<u64>,
}

/// TLS on the client port, with files the caller made (tests make them with `openssl`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA of the server's certificate, and with `client_cert_auth` the one clients'
    /// certificates must chain to (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// The server certificate, for `127.0.0.1` (an IP subject alternative name). It must
    /// also allow client use (`extendedKeyUsage = serverAuth, clientAuth`): etcd's own
    /// gateway connects to itself with it, and so does the readiness probe.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `--client-cert-auth`: every client needs a certificate from `ca`, and once
    /// authentication is on, a request without a token runs as the user its CN names.
    pub client_cert_auth: bool,
}

/// One real etcd server process listening on `127.0.0.1`.
#[derive(Debug)]
pub struct EtcdProcess {
    // Field order matters for `Drop`: the child goes before the temp dir.
    child: ChildProcess,
    spec: Spec,
    _dir: TempDir,
}

/// Everything needed to (re)spawn the same etcd member.
#[derive(Debug, Clone)]
struct Spec {
    binary: PathBuf,
    opts: EtcdOptions,
    /// `--name`, and `--initial-cluster` (every member's `name=peer-url`).
    name: String,
    initial_cluster: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
}

/// Outcome of one spawn-and-wait attempt.
enum Attempt {
    Ready(Child),
    /// etcd exited early because one of its ports was already taken.
    PortInUse(EtcdProcessError),
    Failed(EtcdProcessError),
}

impl EtcdProcess {
    /// Starts etcd with default options.
    pub async fn start() -> Result<Self, EtcdProcessError> {
        Self::start_with(EtcdOptions::default()).await
    }

    /// Starts etcd with the given options and waits until it is healthy.
    pub async fn start_with(opts: EtcdOptions) -> Result<Self, EtcdProcessError> {
        let binary = resolve_binary(opts.binary.as_deref())?;
        let dir = tempfile::Builder::new().prefix("citadel-etcd-").tempdir()?;
        let mut retries = 0;
        loop {
            let (client_port, peer_port) = pick_ports()?;
            let spec = Spec {
                binary: binary.clone(),
                opts: opts.clone(),
                name: MEMBER_NAME.to_string(),
                initial_cluster: format!("{MEMBER_NAME}=http://127.0.0.1:{peer_port}"),
                data_dir: dir.path().join("data"),
                log_path: dir.path().join("etcd.log"),
                client_port,
                peer_port,
            };
            match spec.spawn_and_wait().await {
                Attempt::Ready(child) => {
                    let process = EtcdProcess {
                        child: ChildProcess::new(child),
                        spec,
                        _dir: dir,
                    };
                    tracing::debug!(
                        pid = process.pid(),
                        endpoint = %process.endpoint(),
                        data_dir = %process.spec.data_dir.display(),
                        log = %process.spec.log_path.display(),
                        "etcd started"
                    );
                    return Ok(process);
                }
                Attempt::PortInUse(_) if retries < PORT_RETRIES => {
                    retries += 1;
                    tracing::debug!(
                        client_port,
                        peer_port,
                        retries,
                        "etcd port already in use, retrying with new ports"
                    );
                    // etcd binds its listeners before creating the data dir,
                    // but never reuse a half-initialised one.
                    if spec.data_dir.exists() {
                        std::fs::remove_dir_all(&spec.data_dir)?;
                    }
                }
                Attempt::PortInUse(err) | Attempt::Failed(err) => return Err(err),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.spec.client_url()
    }

    /// The CA clients must trust, when it serves TLS.
    pub fn ca(&self) -> Option<&Path> {
        self.spec.opts.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// The OS process id of the most recently started etcd process.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The etcd data directory (inside the temporary directory).
    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    /// Kills etcd with SIGKILL and reaps it. No-op if it is not running.
    pub async fn kill(&mut self) {
        self.child.kill().await;
        tracing::debug!(pid = self.pid(), "etcd killed");
    }

    /// SIGSTOP: etcd keeps its sockets but answers nothing, as a frozen host.
    pub fn pause(&mut self) -> io::Result<()> {
        self.child.pause()
    }

    /// SIGCONT after [`EtcdProcess::pause`].
    pub fn resume(&mut self) -> io::Result<()> {
        self.child.resume()
    }

    /// Stops etcd with SIGTERM, waits up to 10 s for it to exit, then falls
    /// back to SIGKILL. No-op if it is not running.
    pub async fn stop(&mut self) {
        self.child.stop(STOP_TIMEOUT).await;
    }

    /// Restarts etcd on the same data directory and ports and waits until it
    /// is healthy. A still running process is stopped gracefully first.
    pub async fn restart(&mut self) -> Result<(), EtcdProcessError> {
        self.stop().await;
        match self.spec.spawn_and_wait().await {
            Attempt::Ready(child) => {
                self.child = ChildProcess::new(child);
                tracing::debug!(pid = self.pid(), endpoint = %self.endpoint(), "etcd restarted");
                Ok(())
            }
            Attempt::PortInUse(err) | Attempt::Failed(err) => Err(err),
        }
    }
}

/// Several etcd members forming one cluster on loopback, each with its own data dir: members can
/// be killed, paused (SIGSTOP) and restarted on their data, as hosts fail.
#[derive(Debug)]
pub struct EtcdCluster {
    // Field order matters for `Drop`: the children go before the temp dir.
    members: Vec<Member>,
    _dir: TempDir,
}

#[derive(Debug)]
struct Member {
    child: Option<ChildProcess>,
    spec: Spec,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy (which needs a quorum).
    pub async fn start(size: usize) -> Result<Self, EtcdProcessError> {
        let binary = resolve_binary(None)?;
        let dir = tempfile::Builder::new()
            .prefix("citadel-etcd-cluster-")
            .tempdir()?;
        let ports = (0..size)
            .map(|_| pick_ports())
            .collect::<io::Result<Vec<_>>>()?;
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let specs: Vec<Spec> = ports
            .iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| Spec {
                binary: binary.clone(),
                opts: EtcdOptions::default(),
                name: format!("m{i}"),
                initial_cluster: initial_cluster.clone(),
                data_dir: dir.path().join(format!("m{i}")),
                log_path: dir.path().join(format!("m{i}.log")),
                client_port: *client_port,
                peer_port: *peer_port,
            })
            .collect();
        // Each member waits for the others before it reports healthy: start them together.
        let mut members = Vec::new();
        for spec in specs {
            let child = spec.spawn()?;
            members.push(Member {
                child: Some(ChildProcess::new(child)),
                spec,
            });
        }
        let cluster = EtcdCluster { members, _dir: dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        for m in &cluster.members {
            while !m.spec.healthy().await {
                if Instant::now() >= deadline {
                    return Err(EtcdProcessError::NotReady {
                        log_tail: log_tail(&m.spec.log_path),
                    });
                }
                sleep(POLL_INTERVAL).await;
            }
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.spec.client_url()).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].spec.client_url()
    }

    /// Which member raft elected leader, as the members that answer see it.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = vec![None; self.members.len()];
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            if let Some(s) = status(m.spec.client_port).await {
                ids[i] = s.member;
                leader = leader.or(s.leader);
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// SIGKILLs member `i`.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().await;
        }
    }

    /// SIGSTOPs member `i`: it keeps its sockets and answers nothing.
    pub fn pause(&mut self, i: usize) -> io::Result<()> {
        match self.members[i].child.as_mut() {
            Some(c) => c.pause(),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "not running")),
        }
    }

    /// SIGCONTs member `i`.
    pub fn resume(&mut self, i: usize) -> io::Result<()> {
        match self.members[i].child.as_mut() {
            Some(c) => c.resume(),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "not running")),
        }
    }

    /// Stops member `i` gracefully.
    pub async fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.stop(STOP_TIMEOUT).await;
        }
    }

    /// Starts member `i` again on its data; without `wait`, does not wait until it is
    /// healthy (it cannot be while the cluster has no quorum).
    pub async fn restart(&mut self, i: usize, wait: bool) -> Result<(), EtcdProcessError> {
        self.stop(i).await;
        let m = &mut self.members[i];
        let child = m.spec.spawn()?;
        m.child = Some(ChildProcess::new(child));
        if wait {
            let deadline = Instant::now() + READY_TIMEOUT;
            while !m.spec.healthy().await {
                if Instant::now() >= deadline {
                    return Err(EtcdProcessError::NotReady {
                        log_tail: log_tail(&m.spec.log_path),
                    });
                }
                sleep(POLL_INTERVAL).await;
            }
        }
        Ok(())
    }

    /// Whether member `i` answers a health check (it has a leader).
    pub async fn healthy(&self, i: usize) -> bool {
        self.members[i].spec.healthy().await
    }
}

/// What `/v3/maintenance/status` says of the member answering: its id and its leader's.
struct Status {
    member: Option<u64>,
    leader: Option<u64>,
}

/// Asks the member on `port` for its status through etcd's JSON gateway.
async fn status(port: u16) -> Option<Status> {
    let body = b"{}";
    let probe = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        let head = format!(
            "POST /v3/maintenance/status HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(response)
    };
    let response = timeout(PROBE_TIMEOUT, probe).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&response);
    let json = text.split("\r\n\r\n").nth(1)?;
    // The gateway writes uint64s as strings: "member_id":"123", "leader":"456".
    let field = |name: &str| -> Option<u64> {
        let at = json.find(&format!("\"{name}\":\""))? + name.len() + 4;
        json[at..].split('"').next()?.parse().ok()
    };
    Some(Status {
        member: field("member_id"),
        leader: field("leader"),
    })
}

impl Spec {
    /// Spawns etcd and waits until it is healthy. On failure the child has
    /// been killed and reaped.
    async fn spawn_and_wait(&self) -> Attempt {
        let log_start = std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut child = match self.spawn() {
            Ok(child) => child,
            Err(err) => return Attempt::Failed(err),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let err = EtcdProcessError::Exited {
                        status: status.to_string(),
                        log_tail: log_tail(&self.log_path),
                    };
                    // Only look at what this run logged.
                    return if read_log_from(&self.log_path, log_start)
                        .contains("address already in use")
                    {
                        Attempt::PortInUse(err)
                    } else {
                        Attempt::Failed(err)
                    };
                }
                Ok(None) => {}
                Err(err) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Attempt::Failed(EtcdProcessError::Io(err));
                }
            }
            if self.healthy().await {
                return Attempt::Ready(child);
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Attempt::Failed(EtcdProcessError::NotReady {
                    log_tail: log_tail(&self.log_path),
                });
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    fn client_url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Whether etcd answers its health check. Over TLS (perhaps demanding a client
    /// certificate) etcdctl speaks for us, with the server's own certificate as the client's:
    /// etcd 3.4's `endpoint health` counts "permission denied" as healthy, so it works as
    /// well once authentication is on.
    async fn healthy(&self) -> bool {
        let Some(tls) = &self.opts.tls else {
            return health_ok(self.client_port).await;
        };
        // Cheap first: no etcdctl process while nothing listens yet.
        let listening = timeout(
            PROBE_TIMEOUT,
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.client_port)),
        )
        .await;
        if !matches!(listening, Ok(Ok(_))) {
            return false;
        }
        let mut cmd = Command::new("etcdctl");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.client_url())
            .arg("--cacert")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .args(["--dial-timeout", "1s", "--command-timeout", "1s"])
            .args(["endpoint", "health"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        matches!(
            timeout(PROBE_TIMEOUT * 2, cmd.status()).await,
            Ok(Ok(status)) if status.success()
        )
    }

    fn spawn(&self) -> Result<Child, EtcdProcessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let stdout = log.try_clone()?;
        let client_url = self.client_url();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);

        let mut cmd = Command::new(&self.binary);
        // etcd also reads ETCD_* variables and refuses to start when one
        // conflicts with a flag: keep the caller's environment out of it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(&key);
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg("citadel-test")
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg(&self.log_path);
        if let Some(retention) = &self.opts.auto_compaction_retention {
            cmd.arg("--auto-compaction-mode")
                .arg("revision")
                .arg("--auto-compaction-retention")
                .arg(retention);
        }
        if let Some(quota) = self.opts.quota_bytes {
            cmd.arg("--quota-backend-bytes").arg(quota.to_string());
        }
        if let Some(ops) = self.opts.max_txn_ops {
            cmd.arg("--max-txn-ops").arg(ops.to_string());
        }
        if let Some(tls) = &self.opts.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
            // etcd 3.4 asks every client for a certificate as soon as it has a
            // --trusted-ca-file, --client-cert-auth or not: server-only TLS goes without.
            if tls.client_cert_auth {
                cmd.arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth");
            }
        }
        if let Some(ttl) = self.opts.auth_token_ttl {
            cmd.arg("--auth-token-ttl").arg(ttl.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);

        cmd.spawn().map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                EtcdProcessError::NotInstalled {
                    binary: self.binary.display().to_string(),
                }
            } else {
                EtcdProcessError::Spawn(err)
            }
        })
    }
}

/// Finds the etcd binary: an explicit path is used as is, a bare name (and
/// the default `etcd`) is searched in `PATH`.
fn resolve_binary(binary: Option<&Path>) -> Result<PathBuf, EtcdProcessError> {
    let wanted = binary.unwrap_or(Path::new("etcd"));
    let not_installed = || EtcdProcessError::NotInstalled {
        binary: wanted.display().to_string(),
    };
    if wanted.components().count() > 1 || wanted.is_absolute() {
        return if is_executable(wanted) {
            Ok(wanted.to_path_buf())
        } else {
            Err(not_installed())
        };
    }
    let path = std::env::var_os("PATH").ok_or_else(not_installed)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(wanted))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(not_installed)
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Picks two distinct free ports on 127.0.0.1 (client, peer). Both listeners
/// are held until both ports are known, then released for etcd to bind.
fn pick_ports() -> io::Result<(u16, u16)> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let client = TcpListener::bind(any)?;
    let peer = TcpListener::bind(any)?;
    Ok((client.local_addr()?.port(), peer.local_addr()?.port()))
}

/// `GET /health` over raw HTTP/1.0; true when etcd answers `"health":"true"`.
async fn health_ok(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(response)
    };
    match timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(response)) => String::from_utf8_lossy(&response).contains("\"health\":\"true\""),
        _ => false,
    }
}

/// The log from byte `offset` on (lossy UTF-8); empty if unreadable.
fn read_log_from(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_default()
}

/// The last [`LOG_TAIL_LINES`] lines of the etcd log.
fn log_tail(path: &Path) -> String {
    let log = read_log_from(path, 0);
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcdctl(endpoint: &str, args: &[&str]) -> String {
        let output = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoint)
            .args(args)
            .output()
            .expect("run etcdctl (apt-get install etcd-client)");
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 etcdctl output")
    }

    #[tokio::test]
    async fn starts_and_answers_health() {
        let etcd = EtcdProcess::start().await.expect("start etcd");
        assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
        assert!(etcd.pid() > 0);
        assert!(health_ok(etcd.spec.client_port).await);
        assert!(etcd.data_dir().join("member").is_dir());
    }

    #[tokio::test]
    async fn restart_keeps_data_and_ports() {
        let mut etcd = EtcdProcess::start_with(EtcdOptions {
            auto_compaction_retention: Some("1000".into()),
            quota_bytes: Some(64 * 1024 * 1024),
            ..EtcdOptions::default()
        })
        .await
        .expect("start etcd");
        let endpoint = etcd.endpoint();
        let first_pid = etcd.pid();
        etcdctl(&endpoint, &["put", "/citadel/test/key", "survives"]);

        etcd.restart().await.expect("restart etcd");
        assert_eq!(etcd.endpoint(), endpoint);
        assert_ne!(etcd.pid(), first_pid);
        let value = etcdctl(
            &endpoint,
            &["get", "/citadel/test/key", "--print-value-only"],
        );
        assert_eq!(value.trim(), "survives");

        // Also after a crash.
        etcd.kill().await;
        etcd.restart().await.expect("restart after kill");
        let value = etcdctl(
            &endpoint,
            &["get", "/citadel/test/key", "--print-value-only"],
        );
        assert_eq!(value.trim(), "survives");
    }

    #[tokio::test]
    async fn kill_makes_endpoint_stop_answering() {
        let mut etcd = EtcdProcess::start().await.expect("start etcd");
        let port = etcd.spec.client_port;
        assert!(health_ok(port).await);
        etcd.kill().await;
        assert!(!health_ok(port).await);
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_err()
        );
        // Killing twice is harmless.
        etcd.kill().await;
    }

    #[tokio::test]
    async fn stop_terminates_gracefully() {
        let mut etcd = EtcdProcess::start().await.expect("start etcd");
        let port = etcd.spec.client_port;
        etcd.stop().await;
        assert!(!health_ok(port).await);
        let log = log_tail(&etcd.spec.log_path);
        assert!(log.contains("received signal"), "log: {log}");
    }

    #[tokio::test]
    async fn drop_removes_data_dir() {
        let etcd = EtcdProcess::start().await.expect("start etcd");
        let data_dir = etcd.data_dir().to_path_buf();
        let port = etcd.spec.client_port;
        drop(etcd);
        assert!(!data_dir.exists());
        assert!(!health_ok(port).await);
    }

    #[tokio::test]
    async fn taken_port_is_detected_as_port_in_use() {
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let (_, peer_port) = pick_ports().expect("ports");
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = Spec {
            binary: resolve_binary(None).expect("etcd installed"),
            opts: EtcdOptions::default(),
            name: MEMBER_NAME.to_string(),
            initial_cluster: format!("{MEMBER_NAME}=http://127.0.0.1:{peer_port}"),
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("etcd.log"),
            client_port: squatter.local_addr().expect("addr").port(),
            peer_port,
        };
        match spec.spawn_and_wait().await {
            Attempt::PortInUse(EtcdProcessError::Exited { log_tail, .. }) => {
                assert!(log_tail.contains("address already in use"), "{log_tail}");
            }
            Attempt::PortInUse(err) | Attempt::Failed(err) => panic!("unexpected: {err}"),
            Attempt::Ready(_) => panic!("etcd started on a taken port"),
        }
    }

    #[tokio::test]
    async fn missing_binary_is_not_installed() {
        let err = EtcdProcess::start_with(EtcdOptions {
            binary: Some("/nonexistent/etcd".into()),
            ..EtcdOptions::default()
        })
        .await
        .expect_err("no such binary");
        assert!(
            matches!(err, EtcdProcessError::NotInstalled { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("apt-get install etcd-server"));
    }

    #[tokio::test]
    async fn a_cluster_elects_a_leader_and_keeps_quorum_without_one_member() {
        let mut cluster = EtcdCluster::start(3)
            .await
            .expect("start a 3-member cluster");
        assert_eq!(cluster.endpoints().len(), 3);
        let leader = cluster.leader().await.expect("raft elected a leader");
        let other = (leader + 1) % 3;
        cluster.kill(leader).await;
        // The two left elect another leader among themselves.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(now) = cluster.leader().await
                && now != leader
            {
                break;
            }
            assert!(Instant::now() < deadline, "no new leader");
            sleep(POLL_INTERVAL).await;
        }
        assert!(cluster.healthy(other).await);
        cluster.restart(leader, true).await.expect("rejoins");
        assert!(cluster.healthy(leader).await);
    }
}
