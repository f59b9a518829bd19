//! `citadel events`: what happens in the cluster as it happens, from an etcd watch, as
//! `docker events` prints it: one line per event, or one JSON object per line with `-o json`
//! (the seed's `Event`: `type`, `time`, `engine`, `container`, with `action` and the rest).

use std::time::SystemTime;

use clap::Args;
use etcd_client::{Client, EventType};
use serde::Serialize;

use super::CliError;
use super::follow::{Follow, Stop};
use super::output::{OutputArgs, json_line, outln};
use crate::keys::Key;
use crate::model::{Decision, Engine, Health, LeaderInfo, RunReport};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Start at this etcd revision: what happened since is printed first, if etcd still
    /// keeps it [default: from now on].
    #[arg(long, value_name = "REV", value_parser = clap::value_parser!(i64).range(1..))]
    pub since: Option<i64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One event, as printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterEvent {
    /// `decision`, `engine`, `health` or `leader`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A decision's status (`placed`, `unschedulable`, …) or `removed`; `added`, `changed`,
    /// `removed` for an engine; `ok` or `lost` for health; `campaign` or `resigned` for a
    /// candidate of the election.
    pub action: String,
    /// RFC 3339: when the decision was made, else when this command saw it.
    pub time: String,
    /// The request (decisions) or the candidate's replica (leader).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The request as written (decisions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// etcd's revision of the change.
    pub revision: i64,
}

pub(super) async fn events(
    client: &Client,
    keys: &crate::keys::Keys,
    a: EventsArgs,
) -> Result<(), CliError> {
    let mut stop = Stop::new();
    let mut follow = Follow::start(client, keys, a.since.unwrap_or(0)).await?;
    while let Some(batch) = follow.next(&mut stop).await? {
        for ev in &batch {
            let Some(event) = describe(&follow, ev) else {
                continue;
            };
            if a.output.json() {
                json_line(&event)?;
            } else {
                outln!("{}", line(&event));
            }
        }
    }
    Ok(())
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What one watch event means to an operator; `None` for what is not worth a line (a request
/// written, a health key refreshed, a profile).
fn describe(follow: &Follow, ev: &etcd_client::Event) -> Option<ClusterEvent> {
    let kv = ev.kv()?;
    let deleted = ev.event_type() == EventType::Delete;
    let first = kv.version() == 1;
    let mut event = ClusterEvent {
        kind: "",
        action: String::new(),
        time: now(),
        id: None,
        engine: None,
        container: None,
        reason: String::new(),
        revision: kv.mod_revision(),
    };
    match follow.keys.parse(kv.key())? {
        Key::Decision(id) => {
            event.kind = "decision";
            event.id = Some(id.to_string());
            if deleted {
                event.action = "removed".into();
                return Some(event);
            }
            let d: Decision = serde_json::from_slice(kv.value()).ok()?;
            event.action = d.status.to_string();
            event.engine = d.resource.map(|r| r.id);
            event.container = Some(d.container.value());
            event.reason = d.reason;
            if !d.decided_at.is_empty() {
                event.time = d.decided_at;
            }
        }
        Key::Engine(id) => {
            event.kind = "engine";
            event.engine = Some(id.to_string());
            event.action = match (deleted, first) {
                (true, _) => "removed",
                (false, true) => "added",
                (false, false) => "changed",
            }
            .into();
            if let Ok(e) = serde_json::from_slice::<Engine>(kv.value()) {
                event.reason = format!(
                    "{} cpus, {} MB{}",
                    super::trim(e.cpus),
                    super::trim(e.memory),
                    if e.drained {
                        ", drained"
                    } else if e.cordoned {
                        ", cordoned"
                    } else {
                        ""
                    }
                );
            }
        }
        Key::Health(id) => {
            // A health key is rewritten every round: only its coming and going is news.
            if !deleted && !first {
                return None;
            }
            event.kind = "health";
            event.engine = Some(id.to_string());
            event.action = if deleted { "lost" } else { "ok" }.into();
            if let Ok(h) = serde_json::from_slice::<Health>(kv.value()) {
                event.reason = format!("checked by {}", h.checked_by);
            }
        }
        Key::Leader(lease) => {
            if !deleted && !first {
                return None;
            }
            event.kind = "leader";
            event.action = if deleted { "resigned" } else { "campaign" }.into();
            // A deleted key has no value left: its lease names it.
            event.id = match serde_json::from_slice::<LeaderInfo>(kv.value()) {
                Ok(info) => Some(info.id),
                Err(_) => Some(format!("lease {lease}")),
            };
        }
        Key::Volume(name) => {
            event.kind = "volume";
            event.id = Some(name);
            event.action = if deleted { "forgotten" } else { "recorded" }.into();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(kv.value())
                && let Some(engine) = v.get("engine").and_then(|e| e.as_str())
            {
                event.engine = Some(engine.to_string());
            }
        }
        Key::Run(engine, id) => {
            event.kind = "run";
            event.id = Some(id.to_string());
            event.engine = Some(engine.to_string());
            if deleted {
                event.action = "removed".into();
                return Some(event);
            }
            let r: RunReport = serde_json::from_slice(kv.value()).ok()?;
            event.action = match (&r.state, r.failed()) {
                (_, true) => "failed".into(),
                (Some(s), false) => s.to_string(),
                (None, false) => "assigned".into(),
            };
            event.reason = if r.failed() {
                r.error
            } else if r.cut_off {
                "stopped by its agent: cut off from etcd".into()
            } else {
                match r.exit_code {
                    Some(c) => format!(
                        "container {} exit code {c}",
                        crate::docker::short_id(&r.container_id)
                    ),
                    None => format!("container {}", crate::docker::short_id(&r.container_id)),
                }
            };
            if !r.updated_at.is_empty() {
                event.time = r.updated_at;
            }
        }
        Key::Assignment(engine, id) => {
            event.kind = "assignment";
            event.id = Some(id.to_string());
            event.engine = Some(engine.to_string());
            event.action = if deleted { "withdrawn" } else { "assigned" }.into();
        }
        Key::Request(_) | Key::OddRequest(..) | Key::OddDecision(_) | Key::OddEngine(_) => {
            return None;
        }
    }
    Some(event)
}

/// `TIME TYPE ACTION [ID] [engine=E] [(reason)]`.
pub fn line(e: &ClusterEvent) -> String {
    let mut parts = vec![e.time.clone(), e.kind.to_string(), e.action.clone()];
    parts.extend(e.id.clone());
    if let Some(engine) = &e.engine {
        parts.push(format!("engine={engine}"));
    }
    if !e.reason.is_empty() {
        parts.push(format!("({})", e.reason));
    }
    parts.join(" ")
}
