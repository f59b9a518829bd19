//! `citadel volume ls|rm`: the named volumes the leader recorded (`volumes/<name>`), each on
//! the engine its first placement went to. A volume outlives its requests; `rm` forgets it.

use super::output::outln;
use clap::Subcommand;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{CliError, timed};
use crate::cache::Cache;
use crate::keys::Keys;
use crate::model::Request;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Named volumes and the engine each lives on.
    Ls,
    /// Forget a volume: a later request that names it may go to any engine. Refused while a
    /// placed request mounts it, unless --force.
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

pub(super) async fn run(client: &Client, keys: &Keys, cmd: VolumeCommand) -> Result<(), CliError> {
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    match cmd {
        VolumeCommand::Ls => {
            let volumes = cache.lock().volumes();
            let mut rows: Vec<_> = volumes.iter().collect();
            rows.sort();
            outln!("{:<40} {:<20} MOUNTED BY", "VOLUME", "ENGINE");
            for (name, engine) in rows {
                let users = mounted_by(&cache, name).join(", ");
                outln!("{name:<40} {:<20} {users}", engine.as_str());
            }
            Ok(())
        }
        VolumeCommand::Rm { name, force } => {
            if !cache.lock().volumes().contains_key(&name) {
                return Err(CliError::Usage(format!("volume {name} is not recorded")));
            }
            let users = mounted_by(&cache, &name);
            if !users.is_empty() && !force {
                return Err(CliError::Usage(format!(
                    "volume {name} is mounted by placed request(s) {}; release them first, or use --force",
                    users.join(", ")
                )));
            }
            let key = keys.volume(&name);
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.as_str(),
                    CompareOp::Greater,
                    0,
                )])
                .and_then(vec![TxnOp::delete(key.as_str(), None)]);
            if !timed(client.kv_client().txn(txn)).await?.succeeded() {
                return Err(CliError::Usage(format!("volume {name} is not recorded")));
            }
            outln!("volume {name} forgotten");
            Ok(())
        }
    }
}

/// The placed requests that mount `name`.
fn mounted_by(cache: &Cache, name: &str) -> Vec<String> {
    let state = cache.lock();
    let mut users: Vec<String> = state
        .placed()
        .filter_map(|id| {
            let raw = state.request(id)?.raw();
            let r = Request::parse(raw).ok()?;
            r.volumes.iter().any(|v| v == name).then(|| id.to_string())
        })
        .collect();
    users.sort();
    users
}
