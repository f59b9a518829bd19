//! The processes a run measures: the controllers it starts (the real binary), and what /proc
//! says each one, etcd and the bench itself used.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use super::{BenchArgs, BenchError};
use crate::keys::Keys;
use crate::store::EtcdConfig;

/// A child process of this binary; SIGTERMed (then killed) when dropped.
pub(super) struct ChildProc(Child);

impl ChildProc {
    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// cpu seconds (user + system) and resident set (current, peak) in MB, from /proc.
pub(super) fn proc_usage(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ is 100 on Linux x86_64 and arm64.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
    };
    Some((
        (utime + stime) / ticks,
        kb("VmRSS:")? / 1024.0,
        kb("VmHWM:")? / 1024.0,
    ))
}

/// cpu seconds of etcd (when the bench started it: the sum over its members) and of the bench
/// process itself.
pub(super) struct Meter {
    /// Every member's process id; empty for an etcd the bench was given.
    pub(super) etcd_pids: Vec<u32>,
}

impl Meter {
    /// `None` for a given etcd, or when a member's figures cannot be read (a sum without it
    /// would pass for the whole).
    pub(super) fn etcd(&self) -> Option<f64> {
        if self.etcd_pids.is_empty() {
            return None;
        }
        self.etcd_pids
            .iter()
            .map(|pid| proc_usage(*pid).map(|u| u.0))
            .sum()
    }

    pub(super) fn own(&self) -> f64 {
        proc_usage(std::process::id())
            .map(|u| u.0)
            .unwrap_or_default()
    }
}

/// The real controller binary: a leader, then `--replicas` standbys.
pub(super) struct Controllers {
    pub(super) leader: ChildProc,
    /// The leader's HTTP address (`http://127.0.0.1:PORT`), where the bench reads its metrics.
    pub(super) leader_http: Option<String>,
    _standbys: Vec<ChildProc>,
}

impl Controllers {
    /// Starts the leader, waits until it is elected, starts the standbys, and gives the leader
    /// half a second to load the engines before the clock starts.
    pub(super) async fn start(
        etcd: &EtcdConfig,
        prefix: &str,
        args: &BenchArgs,
        client: &Client,
        keys: &Keys,
    ) -> Result<Controllers, BenchError> {
        // CITADEL_BENCH_CONTROLLER runs another build's controller under this bench: an A/B
        // of two builds then differs in the controller alone.
        let exe = match std::env::var_os("CITADEL_BENCH_CONTROLLER") {
            Some(path) => std::path::PathBuf::from(path),
            None => std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?,
        };
        // The leader listens on a free loopback port, for its metrics; the standbys nowhere.
        let leader_port = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok();
        let spawn = |i: usize| -> Result<ChildProc, BenchError> {
            let mut cmd = Command::new(&exe);
            // Endpoints, TLS files and credentials go through the environment: a password in
            // the arguments would show in `ps`.
            etcd.pass_to_child(&mut cmd);
            cmd.args(["--prefix", prefix, "controller"])
                .args(["--id", &format!("bench-{i}")])
                // The leader keeps etcd's history short, as in production: a million
                // requests would otherwise keep every revision.
                .args(["--compact-every", "10", "--compact-retain", "200000"])
                .args(["--max-txn-ops", &args.max_txn_ops.to_string()])
                .args(["--nice", &args.nice.to_string()])
                // Several replicas on one host: none takes the default HTTP port.
                .args([
                    "--listen",
                    &match leader_port.filter(|_| i == 0) {
                        Some(port) => format!("127.0.0.1:{port}"),
                        None => String::new(),
                    },
                ])
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if let Some(w) = args.workers {
                cmd.args(["--workers", &w.to_string()]);
            }
            // A bench killed outright (SIGKILL, or SIGTERM before it cleans up) takes its
            // controllers with it: they get SIGTERM and stop cleanly, and none keeps leading
            // on the etcd for the next run.
            // SAFETY: the closure runs in the child between fork and exec and only makes one
            // async-signal-safe system call.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::TERM,
                    ))
                    .map_err(std::io::Error::from)
                });
            }
            cmd.spawn()
                .map(ChildProc)
                .map_err(|e| BenchError::Setup(format!("start controller: {e}")))
        };
        let leader = spawn(0)?;
        let leader_key = format!("{}/", keys.leader());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut kv = client.kv_client();
        loop {
            let r = kv
                .get(
                    leader_key.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?;
            if r.count() > 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup(
                    "the controller was not elected within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut standbys = Vec::new();
        for i in 1..=args.replicas {
            standbys.push(spawn(i)?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Controllers {
            leader,
            leader_http: leader_port.map(|p| format!("http://127.0.0.1:{p}")),
            _standbys: standbys,
        })
    }
}
