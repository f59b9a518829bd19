//! `citadel events`: what happens in the cluster, from an etcd watch, as `docker events`
//! prints it: one line per event, or one JSON object per line with `-o json` (the seed's
//! `Event`: `type`, `time`, `engine`, `container`, with `action` and the rest).
//!
//! It shows the last few events first (`--tail`), or everything since a revision (`--since`),
//! then follows; through etcd restarts and compaction (see [`super::follow`]). Each event
//! carries the time of its revision as its value records it (a decision's `decided_at`, a
//! candidate's `since`, …; a value without one borrows it from another written in the same
//! transaction); a replayed event whose revision recorded none shows `-`, and one seen as it
//! happens the time it was seen. Leadership is followed as etcd's election decides it: the
//! candidate with the lowest create revision leads.

use std::collections::BTreeMap;
use std::time::SystemTime;

use clap::Args;
use etcd_client::{Client, Event, EventType, GetOptions, SortOrder, SortTarget};
use serde::Serialize;

use super::follow::{Batch, Follow};
use super::output::{OutputArgs, json_line, outln};
use super::{CliError, timed};
use crate::keys::{Key, Keys};
use crate::model::{Decision, Engine, Health, LeaderInfo, Resignation, RunReport};
use crate::store::watch::{Next, Resumable, WatchError};
use crate::store::{CALL_TIMEOUT, StoreError};

/// Events shown before following, unless told otherwise.
const TAIL: usize = 10;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Start at this etcd revision: everything since is printed first (from the oldest
    /// revision etcd keeps, if it compacted that one), then what happens next. Overrides
    /// --tail.
    #[arg(long, value_name = "REV", value_parser = clap::value_parser!(i64).range(1..))]
    pub since: Option<i64>,
    /// Print the last N events first, then what happens next (0: only what happens next).
    #[arg(long, value_name = "N", default_value_t = TAIL)]
    pub tail: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One event, as printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterEvent {
    /// `decision`, `engine`, `health`, `leader`, `volume`, `run` or `assignment`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A decision's status (`placed`, `unschedulable`, …) or `removed`; `added`, `changed`,
    /// `removed` for an engine; `ok` or `lost` for health; for the election `campaign` (a
    /// candidate joins), `leads` (it leads now), `resigned` (it withdrew cleanly) or
    /// `expired` (its lease ended without a resignation: killed or cut off).
    pub action: String,
    /// RFC 3339: when its revision was written, as recorded in it; for an event seen as it
    /// happened that recorded none, when it was seen; `null` (`-`) for a replayed one.
    pub time: Option<String>,
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

pub(super) async fn events(client: &Client, keys: &Keys, a: EventsArgs) -> Result<(), CliError> {
    let print = |e: &ClusterEvent| -> Result<(), CliError> {
        if a.output.json() {
            json_line(e)?;
        } else {
            outln!("{}", line(e));
        }
        Ok(())
    };
    let mut follow = Follow::new(client, keys);
    let (mut timeline, from) = match (a.since, a.tail) {
        (Some(since), _) => {
            // Where etcd has compacted that far, the watch says so and the candidates are
            // read where history resumes.
            let t = match Timeline::at(client, keys, since - 1).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, since, "candidates before --since unreadable");
                    Timeline::at(client, keys, 0).await?
                }
            };
            (t, since)
        }
        (None, 0) => {
            let now = revision(client, keys).await?;
            (Timeline::at(client, keys, now).await?, now + 1)
        }
        (None, n) => {
            let tail = tail(client, keys, n).await?;
            for e in &tail.events {
                print(e)?;
            }
            (tail.timeline, tail.next)
        }
    };
    follow.watch_from(from);
    while let Some(batch) = follow.next().await? {
        match batch {
            Batch::Events { events, live_after } => {
                for e in timeline.apply(&events, live_after) {
                    print(&e)?;
                }
            }
            Batch::Compacted { oldest } => {
                // The candidates as they stand where history resumes (the oldest revision
                // etcd can still read; its own events are replayed on top, to no harm).
                let Some(t) = follow.read(|| Timeline::at(client, keys, oldest)).await? else {
                    break;
                };
                timeline.reseed(t);
                follow.watch_from(oldest);
            }
        }
    }
    Ok(())
}

/// etcd's revision now (from the header of a count of one key: cheap, whatever the registry).
async fn revision(client: &Client, keys: &Keys) -> Result<i64, CliError> {
    let opts = GetOptions::new().with_count_only();
    let got = timed(client.kv_client().get(keys.resigned(), Some(opts))).await?;
    Ok(got.header().map_or(0, |h| h.revision()))
}

/// The last events before now, and where to follow on from.
struct Tail {
    events: Vec<ClusterEvent>,
    timeline: Timeline,
    next: i64,
}

/// The last `n` events: replays ever longer stretches of history, ending at the latest
/// revision under the prefix, until one holds `n` events or reaches the oldest revision
/// etcd keeps. (etcd cannot list history backwards; a watch reads it forwards.)
async fn tail(client: &Client, keys: &Keys, n: usize) -> Result<Tail, CliError> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_limit(1)
        .with_sort(SortTarget::Mod, SortOrder::Descend);
    let got = timed(client.kv_client().get(keys.root(), Some(opts))).await?;
    let now = got.header().map_or(0, |h| h.revision());
    let Some(latest) = got.kvs().first().map(|kv| kv.mod_revision()) else {
        return Ok(Tail {
            events: Vec::new(),
            timeline: Timeline::at(client, keys, now).await?,
            next: now + 1,
        });
    };
    let mut span = (n as i64).saturating_mul(20).max(200);
    loop {
        let mut start = (latest - span + 1).max(1);
        let mut oldest = start == 1;
        let (events, timeline, next) = loop {
            match replay(client, keys, start, latest).await? {
                Replayed::Done(events, timeline, next) => break (events, timeline, next),
                Replayed::Compacted(c) => {
                    start = c;
                    oldest = true;
                }
            }
        };
        if events.len() >= n || oldest {
            let skip = events.len().saturating_sub(n);
            return Ok(Tail {
                events: events.into_iter().skip(skip).collect(),
                timeline,
                next,
            });
        }
        span = span.saturating_mul(8);
    }
}

enum Replayed {
    Done(Vec<ClusterEvent>, Timeline, i64),
    Compacted(i64),
}

/// The events from `start` through `until`, and the revision after the last one read.
async fn replay(
    client: &Client,
    keys: &Keys,
    start: i64,
    until: i64,
) -> Result<Replayed, CliError> {
    // When `start` is the oldest revision etcd keeps, the one before is gone: the state at
    // `start` will do (its own events replayed on top, to no harm).
    let mut timeline = match Timeline::at(client, keys, start - 1).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, start, "candidates before the replay unreadable");
            Timeline::at(client, keys, start).await?
        }
    };
    let mut out = Vec::new();
    if until < start {
        return Ok(Replayed::Done(out, timeline, start));
    }
    let mut watch = Resumable::new(client, keys.root(), true, start);
    loop {
        let got = tokio::time::timeout(CALL_TIMEOUT, watch.next())
            .await
            .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))?
            .map_err(|e| match e {
                WatchError::Store(e) => CliError::Store(e),
                other => CliError::Usage(other.to_string()),
            })?;
        match got {
            Next::Compacted { oldest, .. } => return Ok(Replayed::Compacted(oldest)),
            Next::Events { events, .. } => {
                // Every event here is history: no time is made up for it.
                out.extend(timeline.apply(&events, i64::MAX));
                if watch.from() > until {
                    return Ok(Replayed::Done(out, timeline, watch.from()));
                }
            }
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// One key written or deleted, as a watch event carries it.
struct Change<'a> {
    deleted: bool,
    kv: &'a etcd_client::KeyValue,
}

/// A campaign key of the election.
#[derive(Debug, Clone)]
struct Candidate {
    create_revision: i64,
    id: String,
}

/// What the events of a stretch of history mean, as it is read in order: who campaigns and
/// who leads, so that a deleted campaign key (its value gone) is named, and a change of leader
/// shown.
struct Timeline {
    keys: Keys,
    /// By the campaign key's suffix.
    candidates: BTreeMap<String, Candidate>,
}

impl Timeline {
    /// The candidates as they stood at revision `rev` (none before revision 1).
    async fn at(client: &Client, keys: &Keys, rev: i64) -> Result<Timeline, CliError> {
        let prefix = format!("{}/", keys.leader());
        let opts = GetOptions::new().with_prefix().with_revision(rev);
        let mut candidates = BTreeMap::new();
        // Before revision 1 there was nothing.
        if rev >= 1 {
            let got = timed(client.kv_client().get(prefix.as_str(), Some(opts))).await?;
            for kv in got.kvs() {
                if let Some(Key::Leader(suffix)) = keys.parse(kv.key()) {
                    candidates.insert(suffix, candidate(kv));
                }
            }
        }
        Ok(Timeline {
            keys: keys.clone(),
            candidates,
        })
    }

    fn reseed(&mut self, other: Timeline) {
        self.candidates = other.candidates;
    }

    /// Who leads: the lowest create revision.
    fn leading(&self) -> Option<(&String, &Candidate)> {
        self.candidates
            .iter()
            .min_by_key(|(_, c)| c.create_revision)
    }

    /// The events of a watch response, in order, a revision at a time. Those after
    /// `live_after` were seen as they happened.
    fn apply(&mut self, events: &[Event], live_after: i64) -> Vec<ClusterEvent> {
        let changes: Vec<Change> = events
            .iter()
            .filter_map(|e| {
                e.kv().map(|kv| Change {
                    deleted: e.event_type() == EventType::Delete,
                    kv,
                })
            })
            .collect();
        self.changes(&changes, live_after)
    }

    /// [`Timeline::apply`], on the changes the events carry.
    fn changes(&mut self, changes: &[Change], live_after: i64) -> Vec<ClusterEvent> {
        let mut out = Vec::new();
        for group in changes.chunk_by(|a, b| a.kv.mod_revision() == b.kv.mod_revision()) {
            let rev = group.first().map_or(0, |c| c.kv.mod_revision());
            out.extend(self.revision(group, rev > live_after));
        }
        out
    }

    /// The events of one revision (one transaction).
    fn revision(&mut self, group: &[Change], live: bool) -> Vec<ClusterEvent> {
        let marker = self.keys.resigned();
        let resigned: Vec<Resignation> = group
            .iter()
            .filter(|c| !c.deleted && c.kv.key() == marker.as_bytes())
            .filter_map(|c| serde_json::from_slice(c.kv.value()).ok())
            .collect();
        let before = self.leading().map(|(s, c)| (s.clone(), c.id.clone()));
        let mut out: Vec<ClusterEvent> = Vec::new();
        let mut gone: Option<(String, Gone)> = None;
        for change in group {
            if let Some(Key::Leader(suffix)) = self.keys.parse(change.kv.key()) {
                if let Some(e) = self.candidate_event(change, &suffix, &resigned, &before) {
                    if before.as_ref().is_some_and(|(s, _)| *s == suffix) {
                        let how = if e.action == "resigned" {
                            Gone::Resigned
                        } else {
                            Gone::Expired
                        };
                        gone = Some((e.id.clone().unwrap_or_default(), how));
                    }
                    out.push(e);
                }
            } else if let Some(e) = describe(&self.keys, change) {
                out.push(e);
            }
        }
        let after = self.leading().map(|(s, c)| (s.clone(), c.id.clone()));
        let rev = group.first().map_or(0, |c| c.kv.mod_revision());
        match after {
            Some((suffix, id)) if before.as_ref().is_none_or(|(s, _)| *s != suffix) => {
                let reason = match &gone {
                    Some((was, Gone::Resigned)) => format!("after {was} resigned"),
                    Some((was, Gone::Expired)) => format!("after {was}'s lease expired"),
                    None => String::new(),
                };
                out.push(ClusterEvent {
                    kind: "leader",
                    action: "leads".into(),
                    time: None,
                    id: Some(id),
                    engine: None,
                    container: None,
                    reason,
                    revision: rev,
                });
            }
            None if gone.is_some() => {
                if let Some(e) = out.iter_mut().rev().find(|e| e.kind == "leader") {
                    e.reason.push_str("; no candidate left to lead");
                }
            }
            _ => {}
        }
        // One revision is one instant: a value that recorded no time takes one that did.
        let known = out
            .iter()
            .find_map(|e| e.time.clone())
            .or_else(|| resigned.first().map(|r| r.at.clone()))
            .or_else(|| live.then(now));
        for e in &mut out {
            if e.time.is_none() {
                e.time = known.clone();
            }
        }
        out
    }

    /// A campaign key written or deleted.
    fn candidate_event(
        &mut self,
        change: &Change,
        suffix: &str,
        resigned: &[Resignation],
        leading: &Option<(String, String)>,
    ) -> Option<ClusterEvent> {
        let kv = change.kv;
        let mut e = ClusterEvent {
            kind: "leader",
            action: String::new(),
            time: None,
            id: None,
            engine: None,
            container: None,
            reason: String::new(),
            revision: kv.mod_revision(),
        };
        if change.deleted {
            let was = self.candidates.remove(suffix);
            e.id = Some(was.map_or_else(|| format!("lease {suffix}"), |c| c.id));
            let clean = resigned.iter().find(|r| r.lease == suffix);
            let led = leading.as_ref().is_some_and(|(s, _)| s == suffix);
            match clean {
                Some(r) => {
                    e.action = "resigned".into();
                    e.time = Some(r.at.clone());
                    e.reason = if led {
                        "clean shutdown; was leading"
                    } else {
                        "clean shutdown"
                    }
                    .into();
                }
                None => {
                    e.action = "expired".into();
                    e.reason = format!(
                        "its lease ended without a resignation: killed or cut off{}",
                        if led { "; was leading" } else { "" }
                    );
                }
            }
            return Some(e);
        }
        let c = candidate(kv);
        let first = kv.version() == 1;
        self.candidates.insert(suffix.to_string(), c.clone());
        if !first {
            return None; // the leader's barrier rewrites its value
        }
        e.action = "campaign".into();
        e.id = Some(c.id);
        e.time = serde_json::from_slice::<LeaderInfo>(kv.value())
            .ok()
            .map(|i| i.since);
        Some(e)
    }
}

/// How the leader stopped leading.
#[derive(Debug, Clone, Copy)]
enum Gone {
    Resigned,
    Expired,
}

fn candidate(kv: &etcd_client::KeyValue) -> Candidate {
    let id = serde_json::from_slice::<LeaderInfo>(kv.value())
        .map(|i| i.id)
        .unwrap_or_else(|_| {
            format!(
                "lease {}",
                String::from_utf8_lossy(kv.key())
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
            )
        });
    Candidate {
        create_revision: kv.create_revision(),
        id,
    }
}

/// What one watch event means to an operator; `None` for what is not worth a line (a request
/// written, a health key refreshed, a profile).
fn describe(keys: &Keys, change: &Change) -> Option<ClusterEvent> {
    let kv = change.kv;
    let deleted = change.deleted;
    let first = kv.version() == 1;
    let mut event = ClusterEvent {
        kind: "",
        action: String::new(),
        time: None,
        id: None,
        engine: None,
        container: None,
        reason: String::new(),
        revision: kv.mod_revision(),
    };
    match keys.parse(kv.key())? {
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
            event.time = Some(d.decided_at).filter(|t| !t.is_empty());
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
                // An agent records when it registered; that is this write only the first time.
                if first {
                    event.time = e
                        .agent
                        .as_ref()
                        .map(|a| a.since.clone())
                        .filter(|t| !t.is_empty());
                }
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
                event.time = Some(h.last_contact).filter(|t| !t.is_empty());
            }
        }
        // Followed by the timeline, which knows who the candidates are.
        Key::Leader(_) => return None,
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
            event.time = Some(r.updated_at).filter(|t| !t.is_empty());
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
    let time = e.time.clone().unwrap_or_else(|| "-".into());
    let mut parts = vec![time, e.kind.to_string(), e.action.clone()];
    parts.extend(e.id.clone());
    if let Some(engine) = &e.engine {
        parts.push(format!("engine={engine}"));
    }
    if !e.reason.is_empty() {
        parts.push(format!("({})", e.reason));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use etcd_client::KeyValue;
    use etcd_client::proto::PbKeyValue;

    use super::*;

    fn pb(key: String, value: String, rev: i64, create: i64, version: i64) -> PbKeyValue {
        PbKeyValue {
            key: key.into_bytes(),
            value: value.into_bytes(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease: 0,
        }
    }

    fn campaign(keys: &Keys, lease: &str, id: &str, rev: i64) -> PbKeyValue {
        let info = format!(r#"{{"id":"{id}","since":"2026-01-01T00:00:{rev:02}Z"}}"#);
        pb(format!("{}/{lease}", keys.leader()), info, rev, rev, 1)
    }

    fn gone(keys: &Keys, lease: &str, rev: i64) -> PbKeyValue {
        pb(
            format!("{}/{lease}", keys.leader()),
            String::new(),
            rev,
            0,
            0,
        )
    }

    fn marker(keys: &Keys, lease: &str, id: &str, rev: i64) -> PbKeyValue {
        let m = format!(r#"{{"lease":"{lease}","id":"{id}","at":"2026-01-01T00:00:{rev:02}Z"}}"#);
        pb(keys.resigned(), m, rev, 1, 1)
    }

    /// The lines a revision's changes make, replayed (`live`: seen as they happen).
    fn lines(t: &mut Timeline, changes: &[(bool, &PbKeyValue)], live: bool) -> Vec<String> {
        let changes: Vec<Change> = changes
            .iter()
            .map(|(deleted, pb)| {
                let kv: &KeyValue = (*pb).into();
                Change {
                    deleted: *deleted,
                    kv,
                }
            })
            .collect();
        let live_after = if live { 0 } else { i64::MAX };
        let mut out: Vec<String> = t.changes(&changes, live_after).iter().map(line).collect();
        if live {
            // The time seen varies: only that there is one.
            for l in &mut out {
                assert!(!l.starts_with("- "), "{l}");
                *l = format!("NOW{}", &l[l.find(' ').unwrap_or(0)..]);
            }
        }
        out
    }

    /// Leadership as the events tell it: who campaigns, who leads after whom, and why the one
    /// before stopped; a deletion without the marker (a killed replica, or a release that
    /// writes none) is an expiry, and a revision that recorded no time says so.
    #[test]
    fn leadership_is_told_from_the_campaign_keys_and_the_resignation_marker() {
        let keys = Keys::default();
        let mut t = Timeline {
            keys: keys.clone(),
            candidates: BTreeMap::new(),
        };
        let a = campaign(&keys, "a1", "one", 2);
        assert_eq!(
            lines(&mut t, &[(false, &a)], false),
            [
                "2026-01-01T00:00:02Z leader campaign one",
                "2026-01-01T00:00:02Z leader leads one"
            ]
        );
        let b = campaign(&keys, "b2", "two", 3);
        assert_eq!(
            lines(&mut t, &[(false, &b)], false),
            ["2026-01-01T00:00:03Z leader campaign two"]
        );
        // The leader's key goes without a marker: its lease expired.
        assert_eq!(
            lines(
                &mut t,
                &[
                    (false, &marker(&keys, "zz", "other", 4)),
                    (true, &gone(&keys, "a1", 4))
                ],
                false
            ),
            [
                "2026-01-01T00:00:04Z leader expired one (its lease ended without a resignation: killed or cut off; was leading)",
                "2026-01-01T00:00:04Z leader leads two (after one's lease expired)"
            ],
            "a marker for another lease is not this one's"
        );
        let c = campaign(&keys, "c3", "three", 5);
        lines(&mut t, &[(false, &c)], false);
        // A replayed expiry that recorded no time shows none.
        let d = campaign(&keys, "d4", "four", 6);
        lines(&mut t, &[(false, &d)], false);
        assert_eq!(
            lines(&mut t, &[(true, &gone(&keys, "c3", 7))], false),
            ["- leader expired three (its lease ended without a resignation: killed or cut off)"]
        );
        // The leader resigns: the marker and the deletion in one revision.
        assert_eq!(
            lines(
                &mut t,
                &[
                    (false, &marker(&keys, "b2", "two", 8)),
                    (true, &gone(&keys, "b2", 8))
                ],
                false
            ),
            [
                "2026-01-01T00:00:08Z leader resigned two (clean shutdown; was leading)",
                "2026-01-01T00:00:08Z leader leads four (after two resigned)"
            ]
        );
        // The last one killed, seen as it happens.
        assert_eq!(
            lines(&mut t, &[(true, &gone(&keys, "d4", 9))], true),
            [
                "NOW leader expired four (its lease ended without a resignation: killed or cut off; was leading; no candidate left to lead)"
            ]
        );
    }
}
