//! Real etcd servers as child processes on loopback, as tests want them: one member
//! ([`EtcdProcess`]) that can serve TLS, demand client certificates, be killed, paused and
//! restarted on its data and ports, or a cluster of several ([`EtcdCluster`]) whose members can
//! be killed, paused and restarted.
//!
//! Both build on the product's own starter, [`citadel::bench::etcd`] (what `citadel bench`
//! runs when it is given no etcd): its [`EtcdMember`] spawns a member and waits until it is
//! healthy, and its `start_cluster` starts several together (`citadel bench --etcd-members`).
//! What is here adds what only tests do with them: certificates and a readiness probe that
//! speaks TLS, restarts, signals.
//!
//! Dropping an [`EtcdProcess`] kills the server and removes its data.

use std::ffi::OsString;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

pub use citadel::bench::etcd::EtcdProcessError;
use citadel::bench::etcd::{
    self as product, Attempt, EtcdMember, POLL_INTERVAL, PROBE_TIMEOUT, Probe, ProbeFuture,
    READY_TIMEOUT,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::child::ChildProcess;
use tokio::time::{Instant, sleep, timeout};

/// How long [`EtcdProcess::stop`] waits after SIGTERM before sending SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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

impl EtcdOptions {
    /// The product's options: its own flags, and TLS and the token TTL as extra flags.
    fn member_options(&self) -> product::EtcdOptions {
        let mut extra: Vec<OsString> = Vec::new();
        if let Some(tls) = &self.tls {
            extra.extend([
                "--cert-file".into(),
                tls.cert.clone().into(),
                "--key-file".into(),
                tls.key.clone().into(),
            ]);
            // etcd 3.4 asks every client for a certificate as soon as it has a
            // --trusted-ca-file, --client-cert-auth or not: server-only TLS goes without.
            if tls.client_cert_auth {
                extra.extend([
                    "--trusted-ca-file".into(),
                    tls.ca.clone().into(),
                    "--client-cert-auth".into(),
                ]);
            }
        }
        if let Some(ttl) = self.auth_token_ttl {
            extra.extend(["--auth-token-ttl".into(), ttl.to_string().into()]);
        }
        product::EtcdOptions {
            auto_compaction_retention: self.auto_compaction_retention.clone(),
            quota_bytes: self.quota_bytes,
            max_txn_ops: self.max_txn_ops,
            binary: self.binary.clone(),
            https: self.tls.is_some(),
            extra_args: extra,
            probe: self
                .tls
                .clone()
                .map(|tls| Arc::new(EtcdctlHealth { tls }) as Arc<dyn Probe>),
        }
    }
}

/// Readiness over TLS (perhaps demanding a client certificate): etcdctl speaks for us, with the
/// server's own certificate as the client's. etcd 3.4's `endpoint health` counts "permission
/// denied" as healthy, so it works as well once authentication is on.
#[derive(Debug)]
struct EtcdctlHealth {
    tls: EtcdTls,
}

impl Probe for EtcdctlHealth {
    fn healthy<'a>(&'a self, member: &'a EtcdMember) -> ProbeFuture<'a> {
        Box::pin(async move {
            let tls = &self.tls;
            // Cheap first: no etcdctl process while nothing listens yet.
            let listening = timeout(
                PROBE_TIMEOUT,
                TcpStream::connect((Ipv4Addr::LOCALHOST, member.client_port)),
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
                .arg(member.client_url())
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
        })
    }
}

/// One real etcd server process listening on `127.0.0.1`.
#[derive(Debug)]
pub struct EtcdProcess {
    // Field order matters for `Drop`: the child goes before the temp dir.
    child: ChildProcess,
    member: EtcdMember,
    tls: Option<EtcdTls>,
    _dir: TempDir,
}

impl EtcdProcess {
    /// Starts etcd with default options.
    pub async fn start() -> Result<Self, EtcdProcessError> {
        Self::start_with(EtcdOptions::default()).await
    }

    /// Starts etcd with the given options and waits until it is healthy.
    pub async fn start_with(opts: EtcdOptions) -> Result<Self, EtcdProcessError> {
        let dir = tempfile::Builder::new().prefix("citadel-etcd-").tempdir()?;
        let (member, child) = product::start_single(&opts.member_options(), dir.path()).await?;
        Ok(EtcdProcess {
            child: ChildProcess::new(child),
            member,
            tls: opts.tls,
            _dir: dir,
        })
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.member.client_url()
    }

    /// The CA clients must trust, when it serves TLS.
    pub fn ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// The OS process id of the most recently started etcd process.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The etcd data directory (inside the temporary directory).
    pub fn data_dir(&self) -> &Path {
        &self.member.data_dir
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
        match self.member.spawn_and_wait().await {
            Attempt::Ready(child) => {
                self.child = ChildProcess::new(child);
                tracing::debug!(pid = self.pid(), endpoint = %self.endpoint(), "etcd restarted");
                Ok(())
            }
            Attempt::PortInUse(err) | Attempt::Failed(err) => Err(err),
        }
    }
}

impl EtcdProcess {
    /// The member's name (`--name`), as `etcdctl snapshot restore --name` wants it.
    pub fn name(&self) -> &str {
        &self.member.name
    }

    /// Its peer URL (`--initial-advertise-peer-urls`).
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.member.peer_port)
    }

    /// `--initial-cluster`, as `etcdctl snapshot restore` wants it.
    pub fn initial_cluster(&self) -> &str {
        &self.member.initial_cluster
    }

    /// `--initial-cluster-token`.
    pub fn cluster_token(&self) -> &str {
        product::CLUSTER_TOKEN
    }

    /// A directory beside the data directory, removed with the rest: where a test puts a
    /// snapshot, or restores one into.
    pub fn scratch_dir(&self) -> &Path {
        self._dir.path()
    }

    /// Starts etcd again on the same name and ports but on another data directory (one that
    /// `etcdctl snapshot restore` made), as an operator does after a disaster. A still running
    /// process is stopped gracefully first.
    pub async fn restart_on(&mut self, data_dir: PathBuf) -> Result<(), EtcdProcessError> {
        self.stop().await;
        self.member.data_dir = data_dir;
        self.restart().await
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
    spec: EtcdMember,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy (which needs a quorum):
    /// the product's [`product::start_cluster`], the one `citadel bench --etcd-members` runs.
    pub async fn start(size: usize) -> Result<Self, EtcdProcessError> {
        let dir = tempfile::Builder::new()
            .prefix("citadel-etcd-cluster-")
            .tempdir()?;
        let members = product::start_cluster(&product::EtcdOptions::default(), size, dir.path())
            .await?
            .into_iter()
            .map(|(spec, child)| Member {
                child: Some(ChildProcess::new(child)),
                spec,
            })
            .collect();
        Ok(EtcdCluster { members, _dir: dir })
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
                        log_tail: m.spec.log_tail(),
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
        let port = etcd.member.client_port;
        assert!(etcd.member.healthy().await);
        etcd.kill().await;
        assert!(!etcd.member.healthy().await);
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
        etcd.stop().await;
        assert!(!etcd.member.healthy().await);
        let log = etcd.member.log_tail();
        assert!(log.contains("received signal"), "log: {log}");
    }

    #[tokio::test]
    async fn drop_removes_data_dir() {
        let etcd = EtcdProcess::start().await.expect("start etcd");
        let data_dir = etcd.data_dir().to_path_buf();
        let member = etcd.member.clone();
        drop(etcd);
        assert!(!data_dir.exists());
        assert!(!member.healthy().await);
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
