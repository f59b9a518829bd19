//! The etcd `citadel bench` starts when it is given none: a real etcd as a child process on free
//! loopback ports, its data and log in a temporary directory, killed and removed with it.
//!
//! [`EtcdServer`] is that etcd: one member, or with `--etcd-members N` a cluster of N. Underneath,
//! [`EtcdMember`] is what spawning one member takes (its command line, ports, data directory and
//! log), [`EtcdMember::spawn_and_wait`] spawns it and waits until its [`Probe`] says it is
//! healthy, [`start_single`] starts a fresh single-member etcd on ports nobody holds, and
//! [`start_cluster`] a fresh cluster of several, all spawned together. Whatever else one may
//! want of an etcd (TLS, restarts, signals) builds on these outside the product.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// How long to wait for a freshly spawned etcd to report healthy.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Delay between two readiness probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Per-probe bound on connecting to / talking with the client port.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a fresh start is retried with new ports when another process grabbed one of
/// the picked ports in the meantime.
const PORT_RETRIES: usize = 3;
/// Number of etcd log lines included in errors.
const LOG_TAIL_LINES: usize = 40;
/// The member name (`--name`, `--initial-cluster`) of a single-member etcd.
const MEMBER_NAME: &str = "citadel-test";
/// `--initial-cluster-token` of every member started here.
pub const CLUSTER_TOKEN: &str = "citadel-test";

/// Errors from starting or restarting an etcd.
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

/// The future a [`Probe`] answers with.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// What tells that a member is up and healthy.
pub trait Probe: fmt::Debug + Send + Sync {
    /// Whether `member` answers as a healthy member.
    fn healthy<'a>(&'a self, member: &'a EtcdMember) -> ProbeFuture<'a>;
}

/// etcd's own `GET /health` over plain HTTP: healthy when it says `"health":"true"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthEndpoint;

impl Probe for HealthEndpoint {
    fn healthy<'a>(&'a self, member: &'a EtcdMember) -> ProbeFuture<'a> {
        Box::pin(health_ok(member.client_port))
    }
}

/// How to run an etcd member: the flags the bench sets, and room for those it never does.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// If set, passed as `--auto-compaction-retention` together with
    /// `--auto-compaction-mode=revision` (e.g. `"1000"` keeps the last 1000 revisions).
    pub auto_compaction_retention: Option<String>,
    /// If set, passed as `--quota-backend-bytes`.
    pub quota_bytes: Option<u64>,
    /// If set, passed as `--max-txn-ops`.
    pub max_txn_ops: Option<u32>,
    /// The etcd binary; `etcd` from `PATH` when `None`.
    pub binary: Option<PathBuf>,
    /// Serve clients over `https://` (the certificate flags go in `extra_args`).
    pub https: bool,
    /// Flags passed after the ones above (certificates, token TTL, …).
    pub extra_args: Vec<OsString>,
    /// How to tell the member is healthy; [`HealthEndpoint`] when `None`.
    pub probe: Option<Arc<dyn Probe>>,
}

/// Everything needed to (re)spawn the same etcd member on `127.0.0.1`.
#[derive(Debug, Clone)]
pub struct EtcdMember {
    pub binary: PathBuf,
    pub opts: EtcdOptions,
    /// `--name`.
    pub name: String,
    /// `--initial-cluster`: every member's `name=peer-url`.
    pub initial_cluster: String,
    pub data_dir: PathBuf,
    /// Where etcd logs (appended to across restarts).
    pub log_path: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
}

/// Outcome of one [`EtcdMember::spawn_and_wait`] (a member's [`Child`]), or of spawning several
/// members together (every member's, in order).
#[derive(Debug)]
pub enum Attempt<C = Child> {
    /// Healthy.
    Ready(C),
    /// etcd exited early because one of its ports was already taken.
    PortInUse(EtcdProcessError),
    Failed(EtcdProcessError),
}

impl EtcdMember {
    /// The client URL, `http://127.0.0.1:PORT` (`https://` with [`EtcdOptions::https`]).
    pub fn client_url(&self) -> String {
        let scheme = if self.opts.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Whether the member answers its [`Probe`].
    pub async fn healthy(&self) -> bool {
        match &self.opts.probe {
            Some(probe) => probe.healthy(self).await,
            None => HealthEndpoint.healthy(self).await,
        }
    }

    /// The last lines of the member's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// Spawns etcd and waits until it is healthy. On failure the child has been killed and
    /// reaped.
    pub async fn spawn_and_wait(&self) -> Attempt {
        match spawn_all_and_wait(std::slice::from_ref(self)).await {
            Attempt::Ready(mut children) => match children.pop() {
                Some(child) => Attempt::Ready(child),
                None => Attempt::Failed(EtcdProcessError::Io(io::Error::other(
                    "etcd was spawned but no process is left",
                ))),
            },
            Attempt::PortInUse(err) => Attempt::PortInUse(err),
            Attempt::Failed(err) => Attempt::Failed(err),
        }
    }

    /// Spawns etcd without waiting for it; it is killed if the [`Child`] is dropped.
    pub fn spawn(&self) -> Result<Child, EtcdProcessError> {
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
            .arg(CLUSTER_TOKEN)
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
        cmd.args(&self.opts.extra_args)
            .stdin(Stdio::null())
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

/// Spawns every one of `members` at once (a member of a cluster waits for a quorum before it
/// reports healthy) and waits until each is healthy. If one exits first or they are not all
/// healthy within [`READY_TIMEOUT`], every one is killed and reaped.
async fn spawn_all_and_wait(members: &[EtcdMember]) -> Attempt<Vec<Child>> {
    // Only what this start logs says whether a port was taken.
    let log_starts: Vec<u64> = members
        .iter()
        .map(|m| std::fs::metadata(&m.log_path).map(|m| m.len()).unwrap_or(0))
        .collect();
    let mut children = Vec::with_capacity(members.len());
    for member in members {
        match member.spawn() {
            Ok(child) => children.push(child),
            Err(err) => {
                kill_all(&mut children).await;
                return Attempt::Failed(err);
            }
        }
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut healthy = vec![false; members.len()];
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            let failed = match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => {
                    let err = EtcdProcessError::Exited {
                        status: status.to_string(),
                        log_tail: members[i].log_tail(),
                    };
                    if read_log_from(&members[i].log_path, log_starts[i])
                        .contains("address already in use")
                    {
                        Attempt::PortInUse(err)
                    } else {
                        Attempt::Failed(err)
                    }
                }
                Err(err) => Attempt::Failed(EtcdProcessError::Io(err)),
            };
            kill_all(&mut children).await;
            return failed;
        }
        for (member, ok) in members.iter().zip(healthy.iter_mut()) {
            if !*ok {
                *ok = member.healthy().await;
            }
        }
        if healthy.iter().all(|ok| *ok) {
            return Attempt::Ready(children);
        }
        if Instant::now() >= deadline {
            let late = healthy.iter().position(|ok| !*ok).unwrap_or(0);
            kill_all(&mut children).await;
            return Attempt::Failed(EtcdProcessError::NotReady {
                log_tail: members[late].log_tail(),
            });
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Kills and reaps every child.
async fn kill_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        let _ = child.start_kill();
    }
    for child in children.iter_mut() {
        let _ = child.wait().await;
    }
}

/// Starts `size` fresh members with `opts` on free loopback ports (new ones if another process
/// takes one first), member `i` named, stored and logging where `layout(i)` says, and waits
/// until every one is healthy.
async fn start_members(
    opts: &EtcdOptions,
    size: usize,
    layout: impl Fn(usize) -> (String, PathBuf, PathBuf),
) -> Result<Vec<(EtcdMember, Child)>, EtcdProcessError> {
    if size == 0 {
        return Err(EtcdProcessError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an etcd needs at least one member",
        )));
    }
    let binary = resolve_binary(opts.binary.as_deref())?;
    let mut retries = 0;
    loop {
        let ports = pick_port_pairs(size)?;
        let names: Vec<(String, PathBuf, PathBuf)> = (0..size).map(&layout).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|((name, _, _), (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<EtcdMember> = names
            .into_iter()
            .zip(&ports)
            .map(
                |((name, data_dir, log_path), &(client_port, peer_port))| EtcdMember {
                    binary: binary.clone(),
                    opts: opts.clone(),
                    name,
                    initial_cluster: initial_cluster.clone(),
                    data_dir,
                    log_path,
                    client_port,
                    peer_port,
                },
            )
            .collect();
        match spawn_all_and_wait(&members).await {
            Attempt::Ready(children) => {
                for (member, child) in members.iter().zip(&children) {
                    tracing::debug!(
                        pid = child.id().unwrap_or(0),
                        endpoint = %member.client_url(),
                        data_dir = %member.data_dir.display(),
                        log = %member.log_path.display(),
                        "etcd started"
                    );
                }
                return Ok(members.into_iter().zip(children).collect());
            }
            Attempt::PortInUse(_) if retries < PORT_RETRIES => {
                retries += 1;
                tracing::debug!(
                    ?ports,
                    retries,
                    "etcd port already in use, retrying with new ports"
                );
                // etcd binds its listeners before creating the data dir,
                // but never reuse a half-initialised one.
                for member in &members {
                    if member.data_dir.exists() {
                        std::fs::remove_dir_all(&member.data_dir)?;
                    }
                }
            }
            Attempt::PortInUse(err) | Attempt::Failed(err) => return Err(err),
        }
    }
}

/// Starts a fresh single-member etcd with `opts`, its data and log in `dir`, on free loopback
/// ports (new ones if another process takes one first), and waits until it is healthy.
pub async fn start_single(
    opts: &EtcdOptions,
    dir: &Path,
) -> Result<(EtcdMember, Child), EtcdProcessError> {
    start_members(opts, 1, |_| {
        (
            MEMBER_NAME.to_string(),
            dir.join("data"),
            dir.join("etcd.log"),
        )
    })
    .await?
    .pop()
    .ok_or_else(|| EtcdProcessError::Io(io::Error::other("etcd started no member")))
}

/// Starts a fresh cluster of `size` members with `opts` on free loopback ports, all spawned
/// together: member `i` is named `m<i>`, keeps its data in `dir/m<i>` and logs to
/// `dir/m<i>.log`. Waits until every member is healthy (which needs a quorum); on failure
/// every member has been killed and reaped.
pub async fn start_cluster(
    opts: &EtcdOptions,
    size: usize,
    dir: &Path,
) -> Result<Vec<(EtcdMember, Child)>, EtcdProcessError> {
    start_members(opts, size, |i| {
        (
            format!("m{i}"),
            dir.join(format!("m{i}")),
            dir.join(format!("m{i}.log")),
        )
    })
    .await
}

/// An etcd of its own (one member, or a cluster of several), for as long as this value lives:
/// dropping it kills every member and removes their data.
#[derive(Debug)]
pub struct EtcdServer {
    // Field order matters for `Drop`: the children go before the temp dir.
    children: Vec<Child>,
    members: Vec<EtcdMember>,
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts a single-member etcd with `opts` and waits until it is healthy.
    pub async fn start(opts: EtcdOptions) -> Result<Self, EtcdProcessError> {
        let dir = tempfile::Builder::new().prefix("citadel-etcd-").tempdir()?;
        let (member, child) = start_single(&opts, dir.path()).await?;
        Ok(EtcdServer {
            children: vec![child],
            members: vec![member],
            _dir: dir,
        })
    }

    /// Starts a cluster of `size` members with `opts`, their data and logs in one temporary
    /// directory, and waits until every member is healthy.
    pub async fn start_cluster(opts: EtcdOptions, size: usize) -> Result<Self, EtcdProcessError> {
        let dir = tempfile::Builder::new().prefix("citadel-etcd-").tempdir()?;
        let (members, children) = start_cluster(&opts, size, dir.path())
            .await?
            .into_iter()
            .unzip();
        Ok(EtcdServer {
            children,
            members,
            _dir: dir,
        })
    }

    /// The first member's client URL.
    pub fn endpoint(&self) -> String {
        self.members
            .first()
            .map(EtcdMember::client_url)
            .unwrap_or_default()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// The first member's process id.
    pub fn pid(&self) -> u32 {
        self.pids().first().copied().unwrap_or(0)
    }

    /// Every member's process id.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id().unwrap_or(0)).collect()
    }

    /// How the first member was spawned (ports, data directory, log).
    pub fn member(&self) -> &EtcdMember {
        &self.members[0]
    }

    /// How every member was spawned.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        // Give the kernel a moment to tear the processes down, so that their data directories
        // are not removed under them.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Finds the etcd binary: an explicit path is used as is, a bare name (and the default `etcd`)
/// is searched in `PATH`.
pub fn resolve_binary(binary: Option<&Path>) -> Result<PathBuf, EtcdProcessError> {
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
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Picks two distinct free ports on 127.0.0.1 (client, peer). Both listeners are held until
/// both ports are known, then released for etcd to bind.
pub fn pick_ports() -> io::Result<(u16, u16)> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let client = TcpListener::bind(any)?;
    let peer = TcpListener::bind(any)?;
    Ok((client.local_addr()?.port(), peer.local_addr()?.port()))
}

/// Picks `n` pairs of free ports on 127.0.0.1 (client, peer), all distinct: every listener is
/// held until every port is known, then all are released for etcd to bind.
pub fn pick_port_pairs(n: usize) -> io::Result<Vec<(u16, u16)>> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listeners = (0..2 * n)
        .map(|_| TcpListener::bind(any))
        .collect::<io::Result<Vec<_>>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(ports.chunks_exact(2).map(|p| (p[0], p[1])).collect())
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

/// The last [`LOG_TAIL_LINES`] lines of an etcd log.
fn log_tail(path: &Path) -> String {
    let log = read_log_from(path, 0);
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_and_answers_health() {
        let etcd = EtcdServer::start(EtcdOptions::default())
            .await
            .expect("start etcd");
        assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
        assert!(etcd.pid() > 0);
        assert!(health_ok(etcd.member().client_port).await);
        assert!(etcd.member().data_dir.join("member").is_dir());
    }

    #[tokio::test]
    async fn drop_kills_it_and_removes_its_data() {
        let etcd = EtcdServer::start(EtcdOptions::default())
            .await
            .expect("start etcd");
        let data_dir = etcd.member().data_dir.clone();
        let port = etcd.member().client_port;
        drop(etcd);
        assert!(!data_dir.exists());
        assert!(!health_ok(port).await);
    }

    #[tokio::test]
    async fn a_cluster_starts_every_member_and_drop_kills_them_all() {
        let etcd = EtcdServer::start_cluster(EtcdOptions::default(), 3)
            .await
            .expect("start a 3-member etcd");
        let endpoints = etcd.endpoints();
        assert_eq!(endpoints.len(), 3);
        let mut pids = etcd.pids();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), 3, "three processes");
        let members: Vec<EtcdMember> = etcd.members().to_vec();
        for m in &members {
            assert!(health_ok(m.client_port).await, "{} is healthy", m.name);
            assert_eq!(m.initial_cluster.split(',').count(), 3);
        }
        drop(etcd);
        for m in &members {
            assert!(!m.data_dir.exists());
            assert!(!health_ok(m.client_port).await);
        }
    }

    #[tokio::test]
    async fn taken_port_is_detected_as_port_in_use() {
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let (_, peer_port) = pick_ports().expect("ports");
        let dir = tempfile::tempdir().expect("temp dir");
        let member = EtcdMember {
            binary: resolve_binary(None).expect("etcd installed"),
            opts: EtcdOptions::default(),
            name: MEMBER_NAME.to_string(),
            initial_cluster: format!("{MEMBER_NAME}=http://127.0.0.1:{peer_port}"),
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("etcd.log"),
            client_port: squatter.local_addr().expect("addr").port(),
            peer_port,
        };
        match member.spawn_and_wait().await {
            Attempt::PortInUse(EtcdProcessError::Exited { log_tail, .. }) => {
                assert!(log_tail.contains("address already in use"), "{log_tail}");
            }
            Attempt::PortInUse(err) | Attempt::Failed(err) => panic!("unexpected: {err}"),
            Attempt::Ready(_) => panic!("etcd started on a taken port"),
        }
    }

    #[tokio::test]
    async fn missing_binary_is_not_installed() {
        let err = EtcdServer::start(EtcdOptions {
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
}
