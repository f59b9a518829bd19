//! `citadel volume ls|rm`: the named volumes the leader recorded (`volumes/<name>`), each on
//! the engine its first placement went to. A volume outlives its requests; `rm` forgets it.

use super::output::{OutputArgs, add_row, json, print_table, table};
use clap::Subcommand;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{CliError, timed};
use crate::cache::Cache;
use crate::keys::Keys;
use crate::model::Request;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Named volumes and the engine each lives on.
    Ls(OutputArgs),
    /// Forget a volume: a later request that names it may go to any engine. Refused while a
    /// placed request mounts it, unless --force.
    Rm {
        /// The volume's name (`pgdata` of `pgdata:/var/lib/postgresql`).
        #[arg(value_name = "NAME")]
        name: String,
        /// Forget it even though placed requests mount it: their next placement may go
        /// anywhere.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        output: super::output::DoneArgs,
    },
}

/// One named volume, as listed.
#[derive(Debug, serde::Serialize)]
struct VolumeRow {
    name: String,
    engine: String,
    /// The requests placed with it mounted.
    mounted_by: Vec<String>,
}

pub(super) async fn run(client: &Client, keys: &Keys, cmd: VolumeCommand) -> Result<(), CliError> {
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    match cmd {
        VolumeCommand::Ls(o) => {
            let volumes = cache.read().volumes();
            let mut rows: Vec<VolumeRow> = volumes
                .iter()
                .map(|(name, engine)| VolumeRow {
                    name: name.clone(),
                    engine: engine.to_string(),
                    mounted_by: mounted_by(&cache, name),
                })
                .collect();
            rows.sort_by(|a, b| a.name.cmp(&b.name));
            if o.json() {
                return json(&rows);
            }
            let mut t = table(&["VOLUME", "ENGINE", "MOUNTED BY"]);
            for r in &rows {
                add_row(
                    &mut t,
                    [r.name.clone(), r.engine.clone(), r.mounted_by.join(", ")],
                );
            }
            print_table(&t);
            Ok(())
        }
        VolumeCommand::Rm {
            name,
            force,
            output,
        } => {
            if !cache.read().volumes().contains_key(&name) {
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
            output.print(&super::output::Done {
                what: "volume",
                id: &name,
                action: "forgotten",
                message: format!("volume {name} forgotten"),
            })
        }
    }
}

/// The placed requests that mount `name`.
fn mounted_by(cache: &Cache, name: &str) -> Vec<String> {
    let state = cache.read();
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
