//! `citadel engine add|rm` and the engine commands themselves; `engine ls`, `engine show` and
//! `citadel ls` print from `engine_ls`, and cordon, uncordon and drain are in `maintenance.rs`.

use std::time::Duration;

use clap::{Args, Subcommand};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::output::{Done, DoneArgs, OutputArgs};
use super::{CliError, engine_id, timed, trim};
use crate::cache::{Cache, HealthPolicy};
use crate::keys::Keys;
use crate::model::{Engine, EngineSpec};

#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Register an engine (or replace one, with --replace).
    Add(EngineAddArgs),
    /// List engines with reserved and total resources, live use and health.
    Ls(OutputArgs),
    /// What one engine holds: every request reserved on it, with its cpus, memory and ports.
    Show {
        /// The engine's id.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove an engine: refused while placements hold resources on it. It is cordoned first
    /// (no placement can land meanwhile), checked, then deleted in one transaction.
    Rm {
        /// The engine's id.
        #[arg(value_name = "ID")]
        id: String,
        /// Remove it even though placements hold resources on it: the leader then places its
        /// services elsewhere and marks the rest lost.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        output: DoneArgs,
    },
    /// Take no new placements; existing ones stay (`"cordoned": true` in its key).
    Cordon {
        /// The engine's id.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        output: DoneArgs,
    },
    /// Take placements again (clears a cordon and a drain).
    Uncordon {
        /// The engine's id.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        output: DoneArgs,
    },
    /// Cordon, then place its service requests again elsewhere; batch ones run to the end.
    Drain {
        /// The engine's id.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        output: DoneArgs,
    },
}

#[derive(Debug, Args)]
pub struct EngineAddArgs {
    /// The engine's id (its key under engines/, and the label engine=ID).
    #[arg(value_name = "ID")]
    pub id: String,
    /// Docker API address: unix:///var/run/docker.sock, tcp://HOST:2375, https://HOST:2376.
    #[arg(long, value_name = "ADDR")]
    pub addr: String,
    /// Cpus to offer [default: the engine's NCPU, read from the engine].
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Memory in MB to offer [default: the engine's MemTotal, read from the engine].
    #[arg(long, value_name = "MB")]
    pub memory: Option<f64>,
    /// Disk in MB to offer [default: the size of the filesystem Docker keeps its data on,
    /// when the engine is probed and tells it; else none].
    #[arg(long)]
    pub disk: Option<f64>,
    /// key=value or a bare key; repeat for several. Added to the daemon's own labels (a flag
    /// wins over a daemon label with the same key).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Seconds to wait for the engine when probing it.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub probe_timeout: u64,
    /// The CA that signed the engine's Docker API certificate (for https:// addresses).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// A client certificate the engine's Docker API accepts.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// The client certificate's private key.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Replace an engine registered under this id (refused otherwise); says what it replaced.
    #[arg(long)]
    pub replace: bool,
    /// Register it even with less capacity than its placements hold: the leader then moves its
    /// newest placements until the rest fit (implies --replace).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: DoneArgs,
}

/// The engine's offer: explicit flags, else what the engine itself reports.
/// What an engine offers: cpus, memory, disk (MB) and labels.
type Offer = (f64, f64, f64, Vec<String>);

async fn engine_offer(a: &EngineAddArgs) -> Result<Offer, CliError> {
    if let (Some(cpus), Some(memory)) = (a.cpus, a.memory) {
        return Ok((cpus, memory, a.disk.unwrap_or(0.0), a.labels.clone()));
    }
    let tls = match (&a.tls_ca, &a.tls_cert, &a.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(crate::docker::engine::TlsFiles {
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
    let probe = crate::docker::engine::probe(&a.addr, tls.as_ref(), timeout)
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
        a.disk.unwrap_or(probe.disk_mb),
        labels,
    ))
}

pub(super) async fn engine_add(
    client: &Client,
    keys: &Keys,
    a: EngineAddArgs,
) -> Result<(), CliError> {
    let id = engine_id(&a.id)?;
    check_addr(&a.addr)?;
    let (cpus, memory, disk, labels) = engine_offer(&a).await?;
    let wire = Engine {
        id: id.to_string(),
        addr: a.addr,
        cpus,
        memory,
        disk,
        labels,
        tls_ca: a.tls_ca,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        cordoned: false,
        drained: false,
        agent: None,
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
        return a.output.print(&Done {
            what: "engine",
            id: id.as_str(),
            action: "registered",
            message: format!(
                "engine {id} registered: {} cpus, {} MB",
                trim(cpus),
                trim(memory)
            ),
        });
    };
    let was: Engine = serde_json::from_slice(current.value()).unwrap_or_default();
    if !(a.replace || a.force) {
        return Err(CliError::Usage(format!(
            "engine {id} is already registered ({}); use --replace to replace it",
            offer(&was)
        )));
    }
    // An operator's cordon outlives a change of capacity or labels.
    let mut wire = wire;
    wire.cordoned = was.cordoned;
    // The engine's agent keeps its own registration: `--replace` changes what the operator set.
    wire.agent = was.agent.clone();
    wire.drained = was.drained;
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
        let held = cache.read().usage(&id, HealthPolicy::default());
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
    a.output.print(&Done {
        what: "engine",
        id: id.as_str(),
        action: "replaced",
        message: format!(
            "engine {id} replaced: now {}; was {}",
            offer(&wire),
            offer(&was)
        ),
    })
}

/// The schemes a Docker API address may have.
const SCHEMES: [&str; 4] = ["tcp://", "unix://", "http://", "https://"];

/// Refuses an address without a scheme the engine's Docker API can be reached by, before
/// anything is written: `127.0.0.1:2375` would be stored as it stands and never reached.
fn check_addr(addr: &str) -> Result<(), CliError> {
    if SCHEMES.iter().any(|s| addr.starts_with(s)) {
        return Ok(());
    }
    let schemes = SCHEMES.join(", ");
    Err(CliError::Usage(match addr.split_once("://") {
        Some((scheme, _)) => {
            format!("--addr {addr}: unknown scheme {scheme}://; use one of {schemes}")
        }
        None if addr.starts_with('/') => {
            format!("--addr {addr}: no scheme; did you mean unix://{addr}? ({schemes})")
        }
        None => format!("--addr {addr}: no scheme; did you mean tcp://{addr}? ({schemes})"),
    }))
}

/// An engine's offer in one phrase: `4 cpus, 8192 MB, labels zone=a,ssd`.
fn offer(e: &Engine) -> String {
    format!(
        "{} cpus, {} MB, labels {}{}",
        trim(e.cpus),
        trim(e.memory),
        super::output::labels_cell(&e.labels),
        if e.cordoned { ", cordoned" } else { "" }
    )
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

pub(super) async fn engine_rm(
    client: &Client,
    keys: &Keys,
    id: &str,
    force: bool,
    output: DoneArgs,
) -> Result<(), CliError> {
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
        return output.print(&Done {
            what: "engine",
            id: id.as_str(),
            action: "removed",
            message: format!(
                "engine {id} removed (the leader places its services elsewhere and marks the \
                 rest lost)"
            ),
        });
    }
    let still = Still::hold(client, &key, current.value(), current.mod_revision()).await?;
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    let held = cache.read().held_on(&id).len();
    if held > 0 {
        still.release(client).await?;
        return Err(CliError::Usage(format!(
            "engine {id} still holds {held} reservation(s); release them first or use --force"
        )));
    }
    if !timed(kv.txn(delete_if(still.at))).await?.succeeded() {
        return Err(changed());
    }
    output.print(&Done {
        what: "engine",
        id: id.as_str(),
        action: "removed",
        message: format!("engine {id} removed"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_needs_a_scheme_and_the_error_suggests_one() {
        for ok in [
            "tcp://127.0.0.1:2375",
            "unix:///var/run/docker.sock",
            "http://h:2375",
            "https://h:2376",
        ] {
            assert!(check_addr(ok).is_ok(), "{ok}");
        }
        let e = check_addr("127.0.0.1:2375").expect_err("no scheme");
        assert!(
            e.to_string().contains("did you mean tcp://127.0.0.1:2375?"),
            "{e}"
        );
        let e = check_addr("/var/run/docker.sock").expect_err("a path");
        assert!(
            e.to_string().contains("unix:///var/run/docker.sock?"),
            "{e}"
        );
        let e = check_addr("htp://h:2375").expect_err("a typo");
        assert!(e.to_string().contains("unknown scheme htp://"), "{e}");
    }
}
