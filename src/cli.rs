//! The `citadel` command line.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};

use crate::cache::Cache;
use crate::controller::{self, ControllerConfig};
use crate::keys::Keys;
use crate::manager::ManagerConfig;
use crate::model::{Decision, Engine, EngineId, EngineSpec, Request, RequestId, Status};
use crate::scheduler::Schedulers;
use crate::store::{self, CALL_TIMEOUT, EtcdConfig, StoreError, TlsConfig};

#[derive(Debug, Parser)]
#[command(
    name = "citadel",
    version,
    about = "A Docker container scheduler whose registry is etcd"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379; `bench` starts its own].
    #[arg(long, global = true, env = "CITADEL_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// Key prefix everything lives under.
    #[arg(
        long,
        global = true,
        env = "CITADEL_PREFIX",
        default_value = "/citadel"
    )]
    pub prefix: String,
    /// Log format of long-running commands.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// The CA bundle etcd's server certificate must chain to, for https:// endpoints (else
    /// the system's bundle) [also read from ETCDCTL_CACERT].
    #[arg(long, global = true, env = "CITADEL_ETCD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// A client certificate, for an etcd that asks for one (`--client-cert-auth`; its CN is
    /// then the etcd user) [also read from ETCDCTL_CERT].
    #[arg(long, global = true, env = "CITADEL_ETCD_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key [also read from ETCDCTL_KEY].
    #[arg(long, global = true, env = "CITADEL_ETCD_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The etcd user, as NAME or NAME:PASSWORD (as etcdctl's --user) [also read from
    /// ETCDCTL_USER].
    #[arg(
        long,
        global = true,
        env = "CITADEL_ETCD_USER",
        hide_env_values = true,
        value_name = "NAME[:PASSWORD]"
    )]
    pub user: Option<String>,
    /// The etcd user's password; --user is then the name as given [also read from
    /// ETCDCTL_PASSWORD]. Prefer the environment: arguments show in `ps`.
    #[arg(
        long,
        global = true,
        env = "CITADEL_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
}

impl Global {
    /// The connection settings every command uses, from the flags, citadel's variables, and
    /// then etcdctl's.
    pub fn etcd_config(&self) -> Result<EtcdConfig, CliError> {
        self.etcd_config_with(|var| std::env::var(var).ok())
    }

    /// As [`Self::etcd_config`], with etcdctl's variables looked up by `env`. They count when
    /// citadel's own flag and variable are not set, so that one environment serves both
    /// tools; empty counts as unset, as clap does for citadel's variables.
    pub fn etcd_config_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EtcdConfig, CliError> {
        let etcdctl_env = |var: &str| env(var).filter(|v| !v.is_empty());
        let path = |flag: &Option<PathBuf>, var: &str| {
            flag.clone().or_else(|| etcdctl_env(var).map(PathBuf::from))
        };
        let cacert = path(&self.cacert, "ETCDCTL_CACERT");
        let identity = match (
            path(&self.cert, "ETCDCTL_CERT"),
            path(&self.key, "ETCDCTL_KEY"),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(CliError::Usage(format!(
                    "--cert {} needs its --key",
                    cert.display()
                )));
            }
            (None, Some(key)) => {
                return Err(CliError::Usage(format!(
                    "--key {} needs its --cert",
                    key.display()
                )));
            }
        };
        let tls =
            (cacert.is_some() || identity.is_some()).then_some(TlsConfig { cacert, identity });
        let endpoints = self.etcd.clone().unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            vec![format!("{scheme}://127.0.0.1:2379")]
        });
        let user = self.user.clone().or_else(|| etcdctl_env("ETCDCTL_USER"));
        // etcdctl's rules: with a password given apart, --user is the name as it stands;
        // without one, --user is NAME:PASSWORD. etcdctl's variable comes last of all: a
        // password written into --user is citadel's own setting. A password without a user
        // is ignored.
        let auth = match (user, self.password.clone()) {
            (None, _) => None,
            (Some(name), Some(password)) => Some((name, password)),
            (Some(user), None) => match (user.split_once(':'), etcdctl_env("ETCDCTL_PASSWORD")) {
                (Some((name, password)), _) => Some((name.to_string(), password.to_string())),
                (None, Some(password)) => Some((user, password)),
                (None, None) => {
                    return Err(CliError::Usage(format!(
                        "--user {user}: no password; give --user {user}:PASSWORD, --password or \
                         CITADEL_ETCD_PASSWORD (a client certificate needs no --user)"
                    )));
                }
            },
        };
        let mut cfg = EtcdConfig::new(endpoints);
        cfg.tls = tls;
        if let Some((name, password)) = auth {
            cfg = cfg.with_auth(name, password);
        }
        cfg.check()?;
        Ok(cfg)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a controller replica (leader election, scheduling, commits).
    Controller(ControllerArgs),
    /// Register, list and remove Docker engines.
    #[command(subcommand)]
    Engine(EngineCommand),
    /// Submit a request (a JSON file, or - for standard input).
    Submit(SubmitArgs),
    /// Show the decision for a request.
    Status { id: String },
    /// Cluster summary (the seed's ClusterInfo) and a table of engines.
    Ls,
    /// Release a request: deletes it; the leader frees its reservation and removes its decision.
    Release { id: String },
    /// Learned usage per image: requested against observed p50/p95 cpu and memory (recorded
    /// by a leader running with --docker).
    Profile { image: Option<String> },
    /// Measure placements/s and latency against etcd's own put rate (starts its own etcd
    /// unless --etcd is given; then it works under a fresh prefix and removes it after).
    Bench(crate::bench::BenchArgs),
    /// Check the invariants on etcd's contents: no engine over capacity, no host port bound
    /// twice, one current decision per request, none without its request, no placement on a
    /// missing engine. Exits 1 if anything is found.
    Check(CheckArgs),
    /// Least-privilege etcd roles and users for citadel under --prefix: prints the etcdctl
    /// commands, or creates them with --apply (as an etcd admin, given by the global flags).
    Rbac(crate::rbac::RbacArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The controllers' --overcommit: capacity is multiplied by it.
    #[arg(long, default_value_t = 1.0)]
    pub overcommit: f64,
    /// On a live cluster requests wait for their decision for a moment: look again for up to
    /// this many seconds before reporting what is still unsettled (0: report the first look).
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

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
    /// own --auto-compaction-* instead).
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
    /// Engines a container may fail to start on before its request is `failed`.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub launch_tries: u32,
    /// Lower this replica's cpu priority by this much (Unix nice, 0 to 19; 0 keeps it). On a
    /// machine it shares with etcd, a leader that yields the cpu to etcd places more: every
    /// user's put waits on etcd, while the leader only batches more when it runs later.
    #[arg(long, default_value_t = DEFAULT_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
    /// Serve the status page, /metrics, /healthz and /readyz on IP:PORT (port 0 picks a free
    /// one, logged at start); '' serves nothing. Each replica on a host needs its own.
    #[arg(long, default_value = crate::http::DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: String,
}

/// The controller's default `--nice`.
pub const DEFAULT_NICE: i32 = 5;

/// Lowers the priority of the calling thread, and of every thread it starts from now on, by
/// `by` (Unix nice). Lowering one's own priority needs no privilege.
pub fn lower_priority(by: i32) -> std::io::Result<()> {
    if by == 0 {
        return Ok(());
    }
    rustix::process::nice(by)
        .map(|_| ())
        .map_err(std::io::Error::from)
}

#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Register (or update) an engine.
    Add(EngineAddArgs),
    /// List engines with reserved and total resources.
    Ls,
    /// What one engine holds: every request reserved on it, with its cpus, memory and ports.
    Show { id: String },
    /// Remove an engine: refused while placements hold resources on it. It is cordoned first
    /// (no placement can land meanwhile), checked, then deleted in one transaction.
    Rm {
        id: String,
        /// Remove it even though placements hold resources on it: the leader then places its
        /// services elsewhere and marks the rest lost.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct EngineAddArgs {
    pub id: String,
    /// Docker API address: unix:///var/run/docker.sock, tcp://HOST:2375, https://HOST:2376.
    #[arg(long)]
    pub addr: String,
    /// Cpus to offer [default: the engine's NCPU, read from the engine].
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory in MB to offer [default: the engine's MemTotal, read from the engine].
    #[arg(long)]
    pub memory: Option<f64>,
    /// key=value or a bare key; repeat for several. Added to the daemon's own labels (a flag
    /// wins over a daemon label with the same key).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Seconds to wait for the engine when probing it.
    #[arg(long, default_value_t = 5)]
    pub probe_timeout: u64,
    #[arg(long)]
    pub tls_ca: Option<String>,
    #[arg(long)]
    pub tls_cert: Option<String>,
    #[arg(long)]
    pub tls_key: Option<String>,
    /// Register it even with less capacity than its placements hold: the leader then moves its
    /// newest placements until the rest fit.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A JSON file, or - for standard input.
    pub file: String,
    /// Request id (default: a new UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// Wait for the decision and print it; exit 0 if placed, 2 if not.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// A CLI failure: printed as one line, exit code 1 (2 for "decided, but not placed").
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("etcd: {}", store::short(.0))]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Rbac(#[from] crate::rbac::RbacError),
    #[error(transparent)]
    Controller(#[from] controller::ControllerError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotPlaced(String),
    #[error("check: {0} finding(s)")]
    Findings(usize),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::NotPlaced(_) => 2,
            _ => 1,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let keys = Keys::new(&cli.global.prefix).map_err(|e| CliError::Usage(e.to_string()))?;
    let bench_own_etcd = cli.global.etcd.is_none();
    // Built once, here, and handed to everything that connects.
    let etcd = match (&cli.command, bench_own_etcd) {
        // The bench's own etcd is plain and local: settings meant for another etcd (say,
        // etcdctl's variables) do not apply to it.
        (Command::Bench(_), true) => EtcdConfig::default(),
        _ => cli.global.etcd_config()?,
    };
    match cli.command {
        Command::Controller(args) => run_controller(args, keys, etcd).await,
        Command::Rbac(args) => crate::rbac::run(args, &keys, &etcd)
            .await
            .map_err(Into::into),
        Command::Bench(args) => {
            let json = args.json;
            let result = crate::bench::run(args, (!bench_own_etcd).then_some(etcd))
                .await
                .map_err(|e| CliError::Usage(format!("bench: {e}")))?;
            crate::bench::print_table(&result);
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&result).map_err(|e| CliError::Usage(e.to_string()))?
                );
            }
            let violations = result.overcommitted_engines
                + result.double_bound_ports
                + result.mismatched
                + result.duplicate_or_missing_decisions;
            if violations > 0 {
                return Err(CliError::NotPlaced(format!(
                    "bench: {violations} invariant violation(s)"
                )));
            }
            Ok(())
        }
        command => {
            let client = store::connect(&etcd, Some(Duration::from_secs(5))).await?;
            match command {
                Command::Engine(EngineCommand::Add(a)) => engine_add(&client, &keys, a).await,
                Command::Engine(EngineCommand::Ls) | Command::Ls => {
                    let summary = matches!(command, Command::Ls);
                    ls(&client, &keys, summary).await
                }
                Command::Engine(EngineCommand::Show { id }) => {
                    engine_show(&client, &keys, &id).await
                }
                Command::Engine(EngineCommand::Rm { id, force }) => {
                    engine_rm(&client, &keys, &id, force).await
                }
                Command::Submit(a) => submit(&client, &keys, a).await,
                Command::Status { id } => status(&client, &keys, &id).await,
                Command::Release { id } => release(&client, &keys, &id).await,
                Command::Check(a) => check(&client, &keys, a).await,
                Command::Profile { image } => {
                    println!(
                        "{}",
                        crate::profile::show(&client, &keys, image.as_deref()).await?
                    );
                    Ok(())
                }
                Command::Controller(_) | Command::Bench(_) | Command::Rbac(_) => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

async fn run_controller(
    args: ControllerArgs,
    keys: Keys,
    etcd: EtcdConfig,
) -> Result<(), CliError> {
    let schedulers = Schedulers::with_overrides(&args.schedulers).map_err(CliError::Usage)?;
    if !(args.overcommit.is_finite() && args.overcommit > 0.0 && args.overcommit <= 100.0) {
        return Err(CliError::Usage(format!(
            "--overcommit {}: expected a number in (0, 100]",
            args.overcommit
        )));
    }
    let replica = match args.id {
        Some(id) => EngineId::new(&id)
            .map(|_| id)
            .map_err(|e| CliError::Usage(format!("--id: {e}")))?,
        None => format!(
            "{}-{}",
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "replica".into()),
            std::process::id()
        ),
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
    let listen = match args.listen.trim() {
        "" => None,
        addr => Some(addr.parse::<std::net::SocketAddr>().map_err(|_| {
            CliError::Usage(format!(
                "--listen {addr}: expected IP:PORT, e.g. 127.0.0.1:9090 or 0.0.0.0:9090 ('' serves nothing)"
            ))
        })?),
    };
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
        },
        addr: args.addr,
        lease_ttl: args.lease_ttl,
        overcommit: args.overcommit,
        docker: (args.docker || args.launch).then(|| crate::runner::RunnerConfig {
            replica: replica_id.clone(),
            health_every: secs(args.health_every),
            health_ttl: secs(args.health_ttl),
            launch_tries: args.launch_tries as usize,
            ..Default::default()
        }),
        policy: crate::cache::HealthPolicy {
            docker: args.docker || args.launch,
            count_live: args.count_live,
            launch_all: args.launch,
        },
        listen,
        metrics: Default::default(),
    };
    Ok(controller::run(cfg, controller::shutdown_on_signals()).await?)
}

fn engine_id(id: &str) -> Result<EngineId, CliError> {
    EngineId::new(id).map_err(|e| CliError::Usage(format!("engine id: {e}")))
}

fn request_id(id: &str) -> Result<RequestId, CliError> {
    RequestId::new(id).map_err(|e| CliError::Usage(format!("request id: {e}")))
}

/// The engine's offer: explicit flags, else what the engine itself reports.
async fn engine_offer(a: &EngineAddArgs) -> Result<(f64, f64, Vec<String>), CliError> {
    if let (Some(cpus), Some(memory)) = (a.cpus, a.memory) {
        return Ok((cpus, memory, a.labels.clone()));
    }
    let tls = match (&a.tls_ca, &a.tls_cert, &a.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(crate::engine::TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }),
        (None, None, None) => None,
        _ => {
            return Err(CliError::Usage(
                "--tls-ca, --tls-cert and --tls-key go together".into(),
            ));
        }
    };
    let timeout = Duration::from_secs(a.probe_timeout.max(1));
    let probe = crate::engine::probe(&a.addr, tls.as_ref(), timeout)
        .await
        .map_err(|e| CliError::Usage(format!("{e} (or give --cpus and --memory)")))?;
    let key = |l: &str| l.split_once('=').map_or(l, |(k, _)| k).to_string();
    let mut labels: Vec<String> = probe
        .labels
        .into_iter()
        .filter(|d| !a.labels.iter().any(|l| key(l) == key(d)))
        .collect();
    labels.extend(a.labels.iter().cloned());
    Ok((
        a.cpus.unwrap_or(probe.cpus),
        a.memory.unwrap_or(probe.memory_mb),
        labels,
    ))
}

async fn engine_add(client: &Client, keys: &Keys, a: EngineAddArgs) -> Result<(), CliError> {
    let id = engine_id(&a.id)?;
    let (cpus, memory, labels) = engine_offer(&a).await?;
    let wire = Engine {
        id: id.to_string(),
        addr: a.addr,
        cpus,
        memory,
        labels,
        tls_ca: a.tls_ca,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        cordoned: false,
    };
    let value = serde_json::to_vec(&wire).map_err(|e| CliError::Usage(e.to_string()))?;
    let spec =
        EngineSpec::parse(&id, &value).map_err(|e| CliError::Usage(format!("engine {id}: {e}")))?;
    let key = keys.engine(&id);
    let mut kv = client.kv_client();
    let got = timed(kv.get(key.as_str(), None)).await?;
    let put_if = |rev: i64, value: Vec<u8>| {
        Txn::new()
            .when(vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(vec![TxnOp::put(key.as_str(), value, None)])
    };
    let changed = || CliError::Usage(format!("engine {id} changed meanwhile; try again"));
    let Some(current) = got.kvs().first() else {
        // New: nothing can be placed on it before it exists.
        if !timed(kv.txn(put_if(0, value))).await?.succeeded() {
            return Err(changed());
        }
        println!(
            "engine {id} registered: {} cpus, {} MB",
            trim(cpus),
            trim(memory)
        );
        return Ok(());
    };
    let was: Engine = serde_json::from_slice(current.value()).unwrap_or_default();
    // An operator's cordon outlives a change of capacity or labels.
    let mut wire = wire;
    wire.cordoned = was.cordoned;
    let value = serde_json::to_vec(&wire).map_err(|e| CliError::Usage(e.to_string()))?;
    if a.force {
        if !timed(kv.txn(put_if(current.mod_revision(), value)))
            .await?
            .succeeded()
        {
            return Err(changed());
        }
    } else {
        let still = Still::hold(client, &key, current.value(), current.mod_revision()).await?;
        let cache = Cache::new(keys.clone(), 1.0);
        cache.load(client).await?;
        let held = cache.lock().usage(&id);
        if held.cpus > spec.cpus || held.memory > spec.memory {
            still.release(client).await?;
            return Err(CliError::Usage(format!(
                "engine {id}: its {} placement(s) hold {} cpus and {} MB, more than {} cpus and {} MB; \
                 release some first, or use --force (the leader then moves its newest placements)",
                held.count,
                trim(held.cpus.as_cpus()),
                held.memory.0,
                trim(spec.cpus.as_cpus()),
                spec.memory.0
            )));
        }
        if !timed(kv.txn(put_if(still.at, value))).await?.succeeded() {
            return Err(changed());
        }
    }
    println!(
        "engine {id} registered: {} cpus, {} MB",
        trim(cpus),
        trim(memory)
    );
    Ok(())
}

/// An engine held still while a command checks what it holds: cordoned (unless it already
/// was), so that nothing new can land on it. Every placement the leader verified on the engine
/// as it was fails its compare on the engine key, and a cordoned engine takes no new one: what
/// it holds once the cordon is written is all it will hold until the command is done.
struct Still {
    key: String,
    original: Vec<u8>,
    /// The engine key's mod revision with the cordon.
    at: i64,
    /// Cordoned by this command (not by an operator before it).
    ours: bool,
}

impl Still {
    async fn hold(client: &Client, key: &str, value: &[u8], seen: i64) -> Result<Still, CliError> {
        let mut wire: Engine = serde_json::from_slice(value)
            .map_err(|e| CliError::Usage(format!("{key}: unreadable: {e}")))?;
        if wire.cordoned {
            return Ok(Still {
                key: key.to_string(),
                original: value.to_vec(),
                at: seen,
                ours: false,
            });
        }
        wire.cordoned = true;
        let cordon = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, seen)])
            .and_then(vec![TxnOp::put(
                key,
                serde_json::to_vec(&wire).map_err(|e| CliError::Usage(e.to_string()))?,
                None,
            )]);
        let resp = timed(client.kv_client().txn(cordon)).await?;
        if !resp.succeeded() {
            return Err(CliError::Usage(format!(
                "{key} changed meanwhile; try again"
            )));
        }
        Ok(Still {
            key: key.to_string(),
            original: value.to_vec(),
            at: resp.header().map_or(seen, |h| h.revision()),
            ours: true,
        })
    }

    /// Puts the engine back as it was, unless someone changed it meanwhile.
    async fn release(self, client: &Client) -> Result<(), CliError> {
        if self.ours {
            let undo = Txn::new()
                .when(vec![Compare::mod_revision(
                    self.key.as_str(),
                    CompareOp::Equal,
                    self.at,
                )])
                .and_then(vec![TxnOp::put(self.key.as_str(), self.original, None)]);
            timed(client.kv_client().txn(undo)).await?;
        }
        Ok(())
    }
}

async fn engine_rm(client: &Client, keys: &Keys, id: &str, force: bool) -> Result<(), CliError> {
    let id = engine_id(id)?;
    let key = keys.engine(&id);
    let mut kv = client.kv_client();
    let got = timed(kv.get(key.as_str(), None)).await?;
    let Some(current) = got.kvs().first() else {
        return Err(CliError::Usage(format!("engine {id} is not registered")));
    };
    let delete_if = |rev: i64| {
        Txn::new()
            .when(vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(vec![TxnOp::delete(key.as_str(), None)])
    };
    let changed = || CliError::Usage(format!("engine {id} changed meanwhile; try again"));
    if force {
        if !timed(kv.txn(delete_if(current.mod_revision())))
            .await?
            .succeeded()
        {
            return Err(changed());
        }
        println!(
            "engine {id} removed (the leader places its services elsewhere and marks the rest lost)"
        );
        return Ok(());
    }
    let still = Still::hold(client, &key, current.value(), current.mod_revision()).await?;
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    let held = cache.lock().held_on(&id).len();
    if held > 0 {
        still.release(client).await?;
        return Err(CliError::Usage(format!(
            "engine {id} still holds {held} reservation(s); release them first or use --force"
        )));
    }
    if !timed(kv.txn(delete_if(still.at))).await?.succeeded() {
        return Err(changed());
    }
    println!("engine {id} removed");
    Ok(())
}

async fn engine_show(client: &Client, keys: &Keys, id: &str) -> Result<(), CliError> {
    let id = engine_id(id)?;
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    let state = cache.lock();
    let Some(spec) = state.engine_spec(&id) else {
        return Err(CliError::Usage(format!("engine {id} is not registered")));
    };
    let held = state.held_on(&id);
    let usage = state.usage(&id);
    println!(
        "engine {id} ({}): {}/{} cpus, {}/{} MB reserved by {} request(s)",
        spec.addr,
        trim(usage.cpus.as_cpus()),
        trim(spec.cpus.as_cpus()),
        usage.memory.0,
        spec.memory.0,
        held.len()
    );
    if held.is_empty() {
        return Ok(());
    }
    println!(
        "{:<40} {:<14} {:>8} {:>10}  PORTS",
        "REQUEST", "STATUS", "CPUS", "MEMORY MB"
    );
    for h in held {
        let ports: Vec<String> = h.ports.iter().map(ToString::to_string).collect();
        println!(
            "{:<40} {:<14} {:>8} {:>10}  {}",
            h.request.as_str(),
            h.status.map(|s| s.to_string()).unwrap_or_default(),
            trim(h.cpus.as_cpus()),
            h.memory.0,
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            }
        );
    }
    Ok(())
}

async fn ls(client: &Client, keys: &Keys, summary: bool) -> Result<(), CliError> {
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    let state = cache.lock();
    if summary {
        let info = state.cluster_info();
        println!(
            "{}",
            serde_json::to_string_pretty(&info).map_err(|e| CliError::Usage(e.to_string()))?
        );
        println!();
    }
    println!(
        "{:<20} {:<28} {:>17} {:>21} {:>9} {:>9} {:>5}  HEALTH",
        "ENGINE",
        "ADDR",
        "CPUS (res/total)",
        "MEMORY MB (res/total)",
        "LIVE CPU",
        "LIVE MB",
        "CTRS"
    );
    for (snap, addr, error) in state.engine_rows() {
        if let Some(e) = error {
            println!(
                "{:<20} {:<28} {:>17} {:>21} {:>9} {:>9} {:>5}  invalid: {e}",
                snap.id, "", "-", "-", "-", "-", "-"
            );
            continue;
        }
        let health = EngineId::new(&snap.id)
            .ok()
            .and_then(|id| state.health(&id).cloned());
        let (live_cpu, live_mb, ctrs, status) = match health {
            Some(h) => (
                trim(h.health.cpus_used),
                trim(h.health.memory_used_mb.round()),
                h.health.containers_running.to_string(),
                format!("ok, last contact {}", h.health.last_contact),
            ),
            None => (
                "-".into(),
                "-".into(),
                "-".into(),
                "no health key: silent engine, or no leader runs with --docker".into(),
            ),
        };
        println!(
            "{:<20} {:<28} {:>17} {:>21} {:>9} {:>9} {:>5}  {status}",
            snap.id,
            addr,
            format!("{}/{}", trim(snap.reserved_cpus), trim(snap.cpus)),
            format!("{}/{}", trim(snap.reserved_memory), trim(snap.memory)),
            live_cpu,
            live_mb,
            ctrs,
        );
    }
    Ok(())
}

fn trim(v: f64) -> String {
    let v = if v.abs() < 0.0005 { 0.0 } else { v };
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

async fn check(client: &Client, keys: &Keys, a: CheckArgs) -> Result<(), CliError> {
    if !(a.overcommit.is_finite() && a.overcommit > 0.0) {
        return Err(CliError::Usage(format!(
            "--overcommit {}: expected a number greater than 0",
            a.overcommit
        )));
    }
    let settle = Duration::try_from_secs_f64(a.settle.max(0.0))
        .map_err(|e| CliError::Usage(format!("--settle {}: {e}", a.settle)))?;
    let deadline = tokio::time::Instant::now() + settle;
    let report = loop {
        let report = crate::invariants::check_etcd(client, keys, a.overcommit).await?;
        let clean = report.violations() + report.unsettled() == 0;
        if clean || tokio::time::Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let findings = report.findings();
    if a.output == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Usage(e.to_string()))?
        );
    } else {
        println!(
            "revision {}: {} engines, {} requests, {} decisions ({} placed, {} unschedulable, {} invalid, {} pending, {} ended)",
            report.revision,
            report.engines,
            report.requests,
            report.decided,
            report.placed,
            report.unschedulable,
            report.invalid,
            report.pending,
            report.ended
        );
        if findings.is_empty() {
            println!("ok: no engine over capacity, no port bound twice, every request decided");
        }
        for (kind, detail) in &findings {
            println!("{kind}: {detail}");
        }
    }
    match findings.len() {
        0 => Ok(()),
        n => Err(CliError::Findings(n)),
    }
}

async fn submit(client: &Client, keys: &Keys, a: SubmitArgs) -> Result<(), CliError> {
    let raw = if a.file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Usage(format!("reading standard input: {e}")))?;
        buf
    } else {
        std::fs::read(&a.file).map_err(|e| CliError::Usage(format!("{}: {e}", a.file)))?
    };
    if let Err(e) = Request::parse(&raw) {
        return Err(CliError::Usage(format!("invalid request: {e}")));
    }
    let id = match a.id {
        Some(id) => request_id(&id)?,
        None => request_id(&uuid::Uuid::new_v4().to_string())?,
    };
    let key = keys.request(&id);
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key, raw, None)]);
    let mut kv = client.kv_client();
    let resp = timed(kv.txn(txn)).await?;
    if !resp.succeeded() {
        return Err(CliError::Usage(format!(
            "request {id} already exists; release it first or pick another --id"
        )));
    }
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    if !a.wait {
        println!("{id}");
        return Ok(());
    }
    let decision = wait_decision(client, keys, &id, rev, Duration::from_secs(a.timeout)).await?;
    print_decision(&decision)
}

/// Waits for a decision on request revision `rev`, watching from that revision.
async fn wait_decision(
    client: &Client,
    keys: &Keys,
    id: &RequestId,
    rev: i64,
    timeout: Duration,
) -> Result<Decision, CliError> {
    let key = keys.decision(id);
    let wait = async {
        let mut stream = client
            .watch_client()
            .watch(
                key.clone(),
                Some(WatchOptions::new().with_start_revision(rev)),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            for ev in resp.events() {
                if let Some(kv) = ev.kv()
                    && let Ok(d) = serde_json::from_slice::<Decision>(kv.value())
                    && d.request_revision >= rev
                {
                    return Ok(d);
                }
            }
        }
        Err(CliError::Usage(
            "watch ended before a decision arrived".into(),
        ))
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| {
        CliError::Usage(format!(
            "no decision for {id} within {timeout:?}: is a controller running? (citadel status {id})"
        ))
    })?
}

fn print_decision(d: &Decision) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(d).map_err(|e| CliError::Usage(e.to_string()))?
    );
    match d.status {
        Status::Placed => Ok(()),
        other => Err(CliError::NotPlaced(format!("{other}: {}", d.reason))),
    }
}

async fn status(client: &Client, keys: &Keys, id: &str) -> Result<(), CliError> {
    let id = request_id(id)?;
    let mut kv = client.kv_client();
    let txn = Txn::new().and_then(vec![
        TxnOp::get(keys.request(&id), None),
        TxnOp::get(keys.decision(&id), None),
    ]);
    let resp = timed(kv.txn(txn)).await?;
    let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let request = gets.next().and_then(|g| g.kvs().first().cloned());
    let decision = gets.next().and_then(|g| g.kvs().first().cloned());
    match (request, decision) {
        (None, None) => Err(CliError::Usage(format!("no request {id}"))),
        (Some(r), None) => {
            println!("{id}: pending (request revision {})", r.mod_revision());
            Ok(())
        }
        (r, Some(d)) => {
            let d: Decision = serde_json::from_slice(d.value())
                .map_err(|e| CliError::Usage(format!("decision for {id} is unreadable: {e}")))?;
            if let Some(r) = r
                && r.mod_revision() != d.request_revision
            {
                println!(
                    "{id}: pending (request revision {}; the decision below is for revision {})",
                    r.mod_revision(),
                    d.request_revision
                );
            }
            // `status` reports; only `submit --wait` turns "not placed" into an exit code.
            print_decision(&d).or_else(|e| match e {
                CliError::NotPlaced(_) => Ok(()),
                e => Err(e),
            })
        }
    }
}

async fn release(client: &Client, keys: &Keys, id: &str) -> Result<(), CliError> {
    let id = request_id(id)?;
    let mut kv = client.kv_client();
    let deleted = timed(kv.delete(keys.request(&id), None)).await?.deleted();
    if deleted == 0 {
        return Err(CliError::Usage(format!("no request {id}")));
    }
    println!("released {id}: the leader frees its reservation and removes its decision");
    Ok(())
}

async fn timed<T>(fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, CliError> {
    Ok(tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))??)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Credentials;

    /// The connection settings of a command line, with `env` as etcdctl's variables.
    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<EtcdConfig, CliError> {
        let mut argv = vec!["citadel"];
        argv.extend_from_slice(args);
        argv.push("ls");
        let cli = Cli::try_parse_from(argv).expect("parses");
        cli.global.etcd_config_with(|var| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        })
    }

    fn creds(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials {
            user: user.into(),
            password: password.into(),
        })
    }

    #[test]
    fn user_takes_a_password_as_etcdctl_does() {
        let c = config(&["--user", "alice:s3:cret"], &[]).expect("config");
        assert_eq!(c.auth, creds("alice", "s3:cret"));
        // With --password apart, --user is the name as it stands.
        let c = config(&["--user", "a:b", "--password", "pw"], &[]).expect("config");
        assert_eq!(c.auth, creds("a:b", "pw"));
        let e = config(&["--user", "alice"], &[]).expect_err("no password");
        assert!(e.to_string().contains("--user alice: no password"), "{e}");
        // A password without a user is ignored, as etcdctl does.
        assert_eq!(
            config(&["--password", "pw"], &[]).expect("config").auth,
            None
        );
    }

    #[test]
    fn etcdctl_variables_fill_in_what_citadel_is_not_told() {
        let env = [
            ("ETCDCTL_CACERT", "/e/ca.pem"),
            ("ETCDCTL_CERT", "/e/c.pem"),
            ("ETCDCTL_KEY", "/e/k.pem"),
            ("ETCDCTL_USER", "bob"),
            ("ETCDCTL_PASSWORD", "pw"),
        ];
        let c = config(&["--etcd", "https://h:2379"], &env).expect("config");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.cacert, Some(PathBuf::from("/e/ca.pem")));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/e/c.pem"), PathBuf::from("/e/k.pem")))
        );
        assert_eq!(c.auth, creds("bob", "pw"));
        // citadel's own flags win.
        let c = config(
            &[
                "--etcd",
                "https://h:2379",
                "--cacert",
                "/c/ca.pem",
                "--user",
                "x:y",
            ],
            &env,
        )
        .expect("config");
        assert_eq!(c.tls.expect("tls").cacert, Some(PathBuf::from("/c/ca.pem")));
        assert_eq!(c.auth, creds("x", "y"));
    }

    #[test]
    fn tls_settings_pick_the_default_scheme_and_refuse_plain_endpoints() {
        let c = config(&["--cacert", "/c/ca.pem"], &[]).expect("config");
        assert_eq!(c.endpoints, ["https://127.0.0.1:2379"]);
        assert_eq!(
            config(&[], &[]).expect("config").endpoints,
            ["http://127.0.0.1:2379"]
        );
        let e = config(&["--etcd", "http://h:2379", "--cacert", "/c/ca.pem"], &[])
            .expect_err("TLS files for plain http");
        assert!(e.to_string().contains("use https://"), "{e}");
        let e = config(&["--cert", "/c/c.pem"], &[]).expect_err("a cert without its key");
        assert!(e.to_string().contains("needs its --key"), "{e}");
    }
}
