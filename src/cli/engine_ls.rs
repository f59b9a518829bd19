//! `citadel ls`, `engine ls` and `engine show`: the engines as the cache reads them, with what
//! they hold, their live use and their health, as a table or JSON.

use std::time::SystemTime;

use etcd_client::Client;
use serde::Serialize;

use super::leader::{Election, election, leader_line};
use super::output::{
    OutputArgs, add_row, age, id_cell, json, labels_cell, outln, print_table, table,
};
use super::{CliError, engine_id, trim};
use crate::cache::{Cache, Mirror};
use crate::keys::Keys;
use crate::model::{ClusterInfo, ContainerState, EngineId, Health};

/// One engine, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRow {
    pub id: String,
    pub addr: String,
    pub labels: Vec<String>,
    pub cordoned: bool,
    /// ready, cordoned, draining (a drain with placements left) or drained.
    pub state: &'static str,
    pub cpus: f64,
    pub memory: f64,
    pub reserved_cpus: f64,
    pub reserved_memory: f64,
    /// The leader's last contact (with `--docker`); `None`: no health key.
    pub health: Option<Health>,
    /// Why its key is not a valid engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

fn engine_rows(state: &Mirror) -> Vec<EngineRow> {
    state
        .engine_rows()
        .into_iter()
        .map(|(snap, addr, invalid)| {
            let id = EngineId::new(&snap.id).ok();
            let spec = id.as_ref().and_then(|id| state.engine_spec(id));
            EngineRow {
                health: id
                    .as_ref()
                    .and_then(|id| state.health(id).map(|h| h.health.clone())),
                labels: spec.as_ref().map(|s| s.labels.clone()).unwrap_or_default(),
                cordoned: spec.is_some_and(|s| s.cordoned),
                state: id
                    .as_ref()
                    .map_or("-", |id| super::maintenance::state_of(state, id)),
                id: snap.id,
                addr,
                cpus: snap.cpus,
                memory: snap.memory,
                reserved_cpus: snap.reserved_cpus,
                reserved_memory: snap.reserved_memory,
                invalid,
            }
        })
        .collect()
}

/// `HEALTH`'s short word.
fn health_word(r: &EngineRow) -> &'static str {
    match (&r.invalid, &r.health) {
        (Some(_), _) => "invalid",
        (None, Some(_)) => "ok",
        (None, None) => "silent",
    }
}

fn print_engines(rows: &[EngineRow], wide: bool) {
    let mut header = vec![
        "ENGINE",
        "CPUS (res/total)",
        "MEMORY MB (res/total)",
        "LIVE CPU",
        "LIVE MB",
        "CTRS",
        "HEALTH",
        "CONTACT",
        "LABELS",
        "STATE",
    ];
    if wide {
        header.extend(["ADDR", "CORDONED", "CHECKED BY"]);
    }
    let now = SystemTime::now();
    let mut t = table(&header);
    for r in rows {
        let h = r.health.as_ref();
        let dash = || "-".to_string();
        let mut row = vec![
            id_cell(&r.id, wide),
            format!("{}/{}", trim(r.reserved_cpus), trim(r.cpus)),
            format!("{}/{}", trim(r.reserved_memory), trim(r.memory)),
            h.map_or_else(dash, |h| trim(h.cpus_used)),
            h.map_or_else(dash, |h| trim(h.memory_used_mb.round())),
            h.map_or_else(dash, |h| h.containers_running.to_string()),
            health_word(r).to_string(),
            h.map_or_else(dash, |h| age(&h.last_contact, now)),
            labels_cell(&r.labels),
            r.state.to_string(),
        ];
        if wide {
            row.extend([
                if r.addr.is_empty() {
                    dash()
                } else {
                    r.addr.clone()
                },
                if r.cordoned { "yes" } else { "no" }.to_string(),
                h.map_or_else(dash, |h| h.checked_by.clone()),
            ]);
        }
        add_row(&mut t, row);
    }
    print_table(&t);
}

/// What `citadel ls -o json` prints.
#[derive(Debug, Serialize)]
struct ClusterListing<'a> {
    election: &'a Election,
    /// The seed's totals: its `container_count` counts placements (what holds a reservation),
    /// whether or not a container runs for them.
    cluster: ClusterInfo,
    /// Placements whose container runs, as a leader with --docker or an engine's agent last
    /// recorded it.
    containers_running: usize,
    engines: Vec<EngineRow>,
}

/// The placed requests whose container runs on their engine: the decision's `run` (a leader
/// with --docker) or the engine's agent's report says so. A placement alone runs nothing.
fn running(state: &Mirror) -> usize {
    state
        .placed()
        .filter(|id| {
            let Some(d) = state.decision(id) else {
                return false;
            };
            let is_running = |s: Option<&ContainerState>| s == Some(&ContainerState::Running);
            is_running(d.run.as_ref().and_then(|r| r.state.as_ref()))
                || d.engine.as_ref().is_some_and(|e| {
                    state
                        .run_report(id, e)
                        .and_then(|r| r.report.as_ref())
                        .is_some_and(|r| is_running(r.state.as_ref()))
                })
        })
        .count()
}

/// `engine ls` (the table), and `ls` (who leads and the cluster's totals first).
pub(super) async fn ls(
    client: &Client,
    keys: &Keys,
    summary: bool,
    o: OutputArgs,
) -> Result<(), CliError> {
    let election = if summary {
        Some(election(client, keys).await?)
    } else {
        None
    };
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    let state = cache.read();
    let rows = engine_rows(&state);
    match (&election, o.json()) {
        (None, true) => json(&rows),
        (Some(e), true) => json(&ClusterListing {
            election: e,
            cluster: state.cluster_info(),
            containers_running: running(&state),
            engines: rows,
        }),
        (e, false) => {
            if let Some(e) = e {
                outln!("{}", leader_line(e, SystemTime::now()));
                let i = state.cluster_info();
                outln!(
                    "{} engine(s): {}/{} cpus, {}/{} MB reserved; {} placement(s) of {} \
                     image(s), {} container(s) running",
                    i.engine_count,
                    trim(i.reserved_cpus),
                    trim(i.cpus),
                    trim(i.reserved_memory),
                    trim(i.memory),
                    i.container_count,
                    i.image_count,
                    running(&state)
                );
            }
            if !rows.is_empty() {
                print_engines(&rows, o.wide());
            }
            Ok(())
        }
    }
}

/// One placement on an engine, as `engine show` lists it.
#[derive(Debug, Serialize)]
struct HoldingRow {
    request: String,
    status: Option<String>,
    cpus: f64,
    memory: u64,
    ports: Vec<String>,
}

#[derive(Debug, Serialize)]
struct EngineShow {
    engine: EngineRow,
    holds: Vec<HoldingRow>,
}

/// The long health sentence `engine show` says (`engine ls` has one word).
fn health_sentence(r: &EngineRow) -> String {
    match &r.health {
        Some(h) => format!(
            "ok, last contact {} ({}) by {}: {} container(s) running, {} cpus and {} MB in use",
            h.last_contact,
            age(&h.last_contact, SystemTime::now()),
            h.checked_by,
            h.containers_running,
            trim(h.cpus_used),
            trim(h.memory_used_mb.round())
        ),
        None => "no health key: a silent engine, or no leader runs with --docker".to_string(),
    }
}

/// What `engine show` says of an engine out of service (`None`: it takes placements). A
/// drain is a cordon that also moves the engine's services, so the two are told apart.
fn state_sentence(r: &EngineRow, holds: &[HoldingRow]) -> Option<String> {
    match r.state {
        "drained" => Some(format!(
            "drained: cordoned (takes no new placement) and its services moved elsewhere; {} \
             batch placement(s) left run to their end; `engine uncordon {}` takes it back",
            holds.len(),
            r.id
        )),
        "draining" => Some(format!(
            "draining: cordoned (takes no new placement), and its service placements are being \
             moved elsewhere ({} placement(s) still here); batch ones run to their end",
            holds.len()
        )),
        _ if r.cordoned => Some(
            "cordoned: takes no new placement; what it holds stays (`engine drain` moves its \
             services)"
                .to_string(),
        ),
        _ => None,
    }
}

pub(super) async fn engine_show(
    client: &Client,
    keys: &Keys,
    id: &str,
    o: OutputArgs,
) -> Result<(), CliError> {
    let id = engine_id(id)?;
    let cache = Cache::new(keys.clone(), 1.0);
    cache.load(client).await?;
    let state = cache.read();
    let Some(row) = engine_rows(&state)
        .into_iter()
        .find(|r| r.id == id.as_str() && r.invalid.is_none())
    else {
        return Err(CliError::Usage(format!("engine {id} is not registered")));
    };
    let holds: Vec<HoldingRow> = state
        .held_on(&id)
        .into_iter()
        .map(|h| HoldingRow {
            request: h.request.to_string(),
            status: h.status.map(|s| s.to_string()),
            cpus: h.cpus.as_cpus(),
            memory: h.memory.0,
            ports: h.ports.iter().map(ToString::to_string).collect(),
        })
        .collect();
    if o.json() {
        return json(&EngineShow { engine: row, holds });
    }
    outln!(
        "engine {id} ({}): {}/{} cpus, {}/{} MB reserved by {} request(s)",
        row.addr,
        trim(row.reserved_cpus),
        trim(row.cpus),
        trim(row.reserved_memory),
        trim(row.memory),
        holds.len()
    );
    outln!("labels: {}", labels_cell(&row.labels));
    if let Some(state) = state_sentence(&row, &holds) {
        outln!("{state}");
    }
    outln!("health: {}", health_sentence(&row));
    if holds.is_empty() {
        return Ok(());
    }
    let mut t = table(&["REQUEST", "STATUS", "CPUS", "MEMORY MB", "PORTS"]);
    for h in &holds {
        add_row(
            &mut t,
            [
                id_cell(&h.request, o.wide()),
                h.status.clone().unwrap_or_else(|| "-".into()),
                trim(h.cpus),
                h.memory.to_string(),
                if h.ports.is_empty() {
                    "-".into()
                } else {
                    h.ports.join(",")
                },
            ],
        );
    }
    print_table(&t);
    Ok(())
}
