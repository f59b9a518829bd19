//! `citadel controller`: one replica, from its flags.

use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::controller::{self, ControllerConfig, DEFAULT_NICE};
use crate::http::{DEFAULT_LISTEN, Listen};
use crate::keys::Keys;
use crate::manager::ManagerConfig;
use crate::model::ReplicaId;
use crate::scheduler::Schedulers;
use crate::store::EtcdConfig;

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// This replica's id (default: hostname-pid).
    #[arg(long)]
    pub id: Option<String>,
    /// Address shown in the leader key (informational).
    #[arg(long, default_value = "")]
    pub addr: String,
    /// Lease TTL in seconds: how long a dead leader keeps the lead.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=600))]
    pub lease_ttl: i64,
    /// TYPE=STRATEGY (spread, binpack, random); defaults: service=spread, batch=binpack.
    #[arg(long = "scheduler")]
    pub schedulers: Vec<String>,
    /// Capacity multiplier for every engine (1.0 = never overcommit).
    #[arg(long, default_value_t = 1.0)]
    pub overcommit: f64,
    /// Scheduler worker threads (default: the number of cpus).
    #[arg(long)]
    pub workers: Option<usize>,
    /// While leading, compact etcd's history every this many seconds (0: never; use etcd's
    /// own --auto-compaction-* instead). One at a time, and only once the history it would
    /// drop (values overwritten, keys deleted under the prefix) is a quarter as long as the
    /// keys alive: etcd scans them all on each compaction.
    #[arg(long, default_value_t = 300)]
    pub compact_every: u64,
    /// Revisions kept by that compaction.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub compact_retain: i64,
    /// While leading, contact every engine's Docker API: health keys and live usage (only
    /// engines that answer are schedulable), launch placed requests that ask for it
    /// (`"launch": true`), follow their containers, stop what is deleted.
    #[arg(long)]
    pub docker: bool,
    /// Launch every placed request, not only those with `"launch": true` (implies --docker).
    #[arg(long)]
    pub launch: bool,
    /// With --docker: an engine address the leader may dial (repeatable), exactly as engine
    /// records write it (unix:///var/run/docker.sock, tcp://10.0.0.5:2376), or with `*` for a
    /// run of letters, digits, `.`, `_` and `-` (tcp://10.0.0.*:2376). An engine whose address
    /// is not allowed is never dialed, and so never schedulable. Without the flag: only
    /// unix:///var/run/docker.sock.
    #[arg(long = "docker-allow", value_name = "ADDR")]
    pub docker_allow: Vec<String>,
    /// With --docker: the directory engine records' TLS files (tls_ca, tls_cert, tls_key) must
    /// lie in, once every link is followed; a record naming others is not dialed. Without it,
    /// no TLS file is ever read and such an engine is not dialed.
    #[arg(long = "docker-tls-dir", value_name = "DIR")]
    pub docker_tls_dir: Option<std::path::PathBuf>,
    /// Count max(reserved, live use) against an engine's capacity (with --docker).
    #[arg(long)]
    pub count_live: bool,
    /// Seconds between two contacts with each engine.
    #[arg(long, default_value_t = 2.0)]
    pub health_every: f64,
    /// Seconds an engine may stay silent before it drops out of scheduling and its containers
    /// are placed again (service) or marked lost (batch).
    #[arg(long, default_value_t = 6.0)]
    pub health_ttl: f64,
    /// etcd's --max-txn-ops, if the operator raised it: fuller transactions cost etcd less per
    /// placement. Should etcd refuse a transaction as too large, the leader logs an error and
    /// goes back to 128, etcd's default.
    #[arg(long, default_value_t = crate::manager::MAX_TXN_OPS as u32, value_parser = clap::value_parser!(u32).range(8..=100_000))]
    pub max_txn_ops: u32,
    /// How many priority points lower a placement must be for a request to evict it (Nomad
    /// demands 10); 1: any lower priority.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub preempt_gap: u32,
    /// Engines a container may fail to start on before its request is `failed`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub launch_tries: u32,
    /// Lower this replica's cpu priority by this much (Unix nice, 0 to 19; 0 keeps it). On a
    /// machine it shares with etcd, a leader that yields the cpu to etcd places more: every
    /// user's put waits on etcd, while the leader only batches more when it runs later.
    #[arg(long, default_value_t = DEFAULT_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
    /// Serve the status page, /metrics, /healthz and /readyz on IP:PORT (port 0 picks a free
    /// one); '' serves nothing; a port taken stops the replica. Without it: 127.0.0.1:9090,
    /// or while that port is taken (another replica on this host) the next free one up to
    /// 9099, else any free one. The address taken is logged, and `citadel leader` lists it.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Answer HTTP requests that name this host (repeatable). Against DNS rebinding, the
    /// status page, /api and /metrics answer only requests whose Host is an IP address,
    /// localhost, or a name given here; others get 421.
    #[arg(long = "http-allow-host", value_name = "NAME")]
    pub http_allow_hosts: Vec<String>,
    /// Act as a release that does not know this request field (repeatable): how one build
    /// stands in for an older one in rolling-upgrade tests. Hidden: it has no other use.
    #[arg(long = "forget-request-field", value_name = "FIELD", hide = true)]
    pub forget_request_fields: Vec<String>,
}

/// Where to serve: exactly where `--listen` says, or without it the default's first free port.
fn listen(flag: Option<&str>) -> Result<Option<Listen>, CliError> {
    let Some(addr) = flag.map(str::trim) else {
        let default = DEFAULT_LISTEN
            .parse()
            .expect("the default --listen is an address");
        return Ok(Some(Listen::FirstFree(default)));
    };
    if addr.is_empty() {
        return Ok(None);
    }
    let addr = addr.parse::<std::net::SocketAddr>().map_err(|_| {
        CliError::Usage(format!(
            "--listen {addr}: expected IP:PORT, e.g. 127.0.0.1:9090 or 0.0.0.0:9090 ('' serves nothing)"
        ))
    })?;
    Ok(Some(Listen::Exactly(addr)))
}

pub(super) async fn run_controller(
    args: ControllerArgs,
    keys: Keys,
    etcd: EtcdConfig,
) -> Result<(), CliError> {
    if !args.forget_request_fields.is_empty() {
        crate::model::forget_request_fields(args.forget_request_fields.clone())
            .map_err(|e| CliError::Usage(format!("--forget-request-field: {e}")))?;
    }
    let schedulers =
        Schedulers::with_overrides(&args.schedulers).map_err(|e| CliError::Usage(e.to_string()))?;
    if !(args.overcommit.is_finite() && args.overcommit > 0.0 && args.overcommit <= 100.0) {
        return Err(CliError::Usage(format!(
            "--overcommit {}: expected a number in (0, 100]",
            args.overcommit
        )));
    }
    let replica = match args.id {
        Some(id) => ReplicaId::new(id).map_err(|e| CliError::Usage(format!("--id: {e}")))?,
        None => {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            ReplicaId::new(format!("{host}-{}", std::process::id()))
                .or_else(|_| ReplicaId::new(format!("replica-{}", std::process::id())))
                .map_err(|e| CliError::Usage(format!("--id: {e}")))?
        }
    };
    for (flag, v) in [
        ("--health-every", args.health_every),
        ("--health-ttl", args.health_ttl),
    ] {
        if !(v.is_finite() && (0.1..=3600.0).contains(&v)) {
            return Err(CliError::Usage(format!(
                "{flag} {v}: expected seconds in [0.1, 3600]"
            )));
        }
    }
    if args.health_ttl < args.health_every {
        return Err(CliError::Usage(format!(
            "--health-ttl {} is shorter than --health-every {}: every engine would drop out",
            args.health_ttl, args.health_every
        )));
    }
    let listen = listen(args.listen.as_deref())?;
    let http_allow_hosts =
        crate::http::AllowedHosts::new(&args.http_allow_hosts).map_err(CliError::Usage)?;
    let trust =
        crate::docker::engine::Trust::new(args.docker_allow, args.docker_tls_dir.as_deref())
            .map_err(CliError::Usage)?;
    let secs = Duration::from_secs_f64;
    let replica_id = replica.clone();
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let cfg = ControllerConfig {
        etcd,
        keys,
        manager: ManagerConfig {
            replica,
            schedulers,
            workers: workers.max(1),
            compact_every: (args.compact_every > 0)
                .then(|| Duration::from_secs(args.compact_every)),
            compact_retain: args.compact_retain,
            max_txn_ops: args.max_txn_ops as usize,
            preempt_gap: args.preempt_gap,
        },
        addr: args.addr,
        lease_ttl: args.lease_ttl,
        overcommit: args.overcommit,
        docker: (args.docker || args.launch).then(|| crate::runner::RunnerConfig {
            replica: replica_id.to_string(),
            health_every: secs(args.health_every),
            health_ttl: secs(args.health_ttl),
            launch_tries: args.launch_tries as usize,
            trust,
            ..Default::default()
        }),
        policy: crate::cache::HealthPolicy {
            docker: args.docker || args.launch,
            count_live: args.count_live,
            launch_all: args.launch,
        },
        listen,
        http_allow_hosts,
        metrics: Default::default(),
    };
    Ok(controller::run(cfg, controller::shutdown_on_signals()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_replica_told_no_listen_moves_on_from_a_taken_port() {
        let at = |a: &str| a.parse::<std::net::SocketAddr>().expect("an address");
        assert_eq!(
            listen(None).expect("default"),
            Some(Listen::FirstFree(at(DEFAULT_LISTEN)))
        );
        assert_eq!(
            listen(Some("127.0.0.1:9090")).expect("given"),
            Some(Listen::Exactly(at("127.0.0.1:9090")))
        );
        assert_eq!(listen(Some(" ")).expect("nowhere"), None);
        let e = listen(Some("localhost")).expect_err("not IP:PORT");
        assert!(
            e.to_string()
                .contains("--listen localhost: expected IP:PORT"),
            "{e}"
        );
    }
}
