//! `--scenario preemption|gang`: the leader's priorities, preemption and gangs under load, on
//! the same etcd, controller binary and decision watch as the default run, and reported beside
//! it (the same ratio to etcd's raw put rate).
//!
//! - `preemption`: every engine (4 cpus, 4096 MB) is first filled exactly with low requests
//!   (`priority: 0`, 1 cpu and 1024 MB, four per engine), not measured; then `--requests` high
//!   ones (`priority: 100`, the same size) are submitted and timed until placed: each fits only
//!   by evicting one low request.
//! - `gang`: `--requests` members of gangs of `--gang-size` (`"group":"g<k>","group_min":N`),
//!   members of [`GANG_WINDOW`] gangs at a time interleaved, on equal engines that hold them all
//!   (`--headroom`, 1.25 by default). A gang is timed from its last member's put to its
//!   members' placement.
//!
//! What each ends with is read from etcd: every decision, and the invariants.

use std::collections::{HashMap, HashSet};

use etcd_client::Client;
use serde::Serialize;

use super::phase::{self, Batch, Seen, Shape};
use super::proc::{Controllers, Meter, proc_usage};
use super::workload::Fleet;
use super::{BenchArgs, BenchError, Citadel, revision_now};
use crate::invariants;
use crate::keys::{Key, Keys};
use crate::model::{Decision, Status};
use crate::store::{self, EtcdConfig};

/// What `citadel bench` runs: today's request mix, or one of the scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scenario {
    /// The default mix of services and batch requests, some with constraints and ports.
    #[default]
    Default,
    /// Engines filled with low-priority requests, then high-priority ones that each preempt one.
    Preemption,
    /// Gangs placed all or nothing, their members' puts interleaved.
    Gang,
}

/// Cpus and memory (MB) of a preemption run's engines, and of every request in both scenarios.
const ENGINE_CPUS: f64 = 4.0;
const ENGINE_MEMORY_MB: f64 = 4096.0;
const SLOT_MEMORY_MB: f64 = 1024.0;
/// Low requests per engine in a preemption run: exactly full.
const LOWS_PER_ENGINE: usize = 4;
const LOW_PRIORITY: i32 = 0;
const HIGH_PRIORITY: i32 = 100;
/// Gangs whose members are interleaved in a gang run: member 0 of each of 100 gangs, then
/// member 1 of each, …, then the next 100 gangs.
pub(super) const GANG_WINDOW: usize = 100;
/// A gang run's engines hold this many times what its members ask for, without `--headroom`.
const GANG_HEADROOM: f64 = 1.25;

/// What a scenario found, besides the default figures (flattened into the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioFigures {
    /// `preemption` or `gang`.
    pub scenario: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub preemption: Option<PreemptionFigures>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreemptionFigures {
    /// Low requests that filled the engines, and how long that took (not measured otherwise).
    pub low_requests: usize,
    pub fill_s: f64,
    /// High requests placed (all of `requests`, when it went well).
    pub high_placed: usize,
    /// Low requests whose decision is `preempted`.
    pub preempted: usize,
    /// Evictions that placed decisions list (`"preempted": [ids]`): what the leader's
    /// `citadel_preemptions` counts, read from etcd.
    pub preemptions_listed: usize,
    /// Low requests neither placed nor `preempted` (no decision, `pending`, refused).
    pub victims_undecided: usize,
    /// `preempted` decisions whose `preempted_by` is not a placed high request that lists them.
    pub victims_unaccounted: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GangFigures {
    pub gang_size: usize,
    pub gangs: usize,
    /// Gangs with every member placed.
    pub gangs_whole: usize,
    /// Gangs with some members placed and some not: never, all or nothing.
    pub gangs_partial: usize,
    /// Gangs with no member placed.
    pub gangs_unplaced: usize,
}

impl ScenarioFigures {
    /// What the scenario promises and did not keep: a run with any exits non-zero.
    pub fn failures(&self, requests: usize) -> usize {
        let p = self.preemption.as_ref().map_or(0, |p| {
            requests.saturating_sub(p.high_placed)
                + p.victims_undecided
                + p.victims_unaccounted
                + p.preempted.abs_diff(p.preemptions_listed)
        });
        p + self.gang.as_ref().map_or(0, |g| g.gangs_partial)
    }
}

/// The checks a scenario is run with, before anything starts.
pub(super) fn validate(args: &BenchArgs) -> Result<(), BenchError> {
    if args.scenario == Scenario::Default {
        return Ok(());
    }
    let refuse = |what: &str| {
        Err(BenchError::Setup(format!(
            "--scenario {:?} does not run with {what}",
            args.scenario
        )))
    };
    if args.agents.is_some() {
        return refuse("--agents");
    }
    if args.baseline.is_some() {
        return refuse("--baseline");
    }
    if args.engines == 0 || args.requests == 0 {
        return refuse("no engines or no requests");
    }
    if args.scenario == Scenario::Gang && !args.requests.is_multiple_of(args.gang_size) {
        return Err(BenchError::Setup(format!(
            "--scenario gang: --requests {} is not a multiple of --gang-size {}",
            args.requests, args.gang_size
        )));
    }
    Ok(())
}

/// A scenario's engines, all of one size.
pub(super) fn fleet(args: &BenchArgs) -> Fleet {
    match args.scenario {
        Scenario::Gang => {
            let h = args.headroom.unwrap_or(GANG_HEADROOM);
            let slots = (h * args.requests as f64 / args.engines.max(1) as f64)
                .ceil()
                .max(1.0);
            Fleet::equal(args.engines, slots, slots * SLOT_MEMORY_MB)
        }
        _ => Fleet::equal(args.engines, ENGINE_CPUS, ENGINE_MEMORY_MB),
    }
}

/// The scenario's phases under the real controllers: the measured one timed and metered as the
/// default run's is, and what it ends with read from etcd.
pub(super) async fn citadel_phase(
    args: &BenchArgs,
    etcd: &EtcdConfig,
    prefix: &str,
    conns: &[Client],
    keys: &Keys,
    meter: &Meter,
) -> Result<Citadel, BenchError> {
    let first_revision = revision_now(&conns[0]).await?;
    let controllers = Controllers::start(etcd, prefix, args, &conns[0], keys).await?;
    let leader = controllers.leader.pid();
    let lows = args.engines * LOWS_PER_ENGINE;
    let low = Batch {
        tag: 'l',
        launch: false,
        shape: Shape::Slot {
            priority: LOW_PRIORITY,
        },
        count: Some(lows),
    };
    let measured = match args.scenario {
        Scenario::Gang => Batch {
            tag: 'g',
            launch: false,
            shape: Shape::Gang {
                size: args.gang_size,
                window: GANG_WINDOW,
            },
            count: Some(args.requests),
        },
        _ => Batch {
            tag: 'h',
            launch: false,
            shape: Shape::Slot {
                priority: HIGH_PRIORITY,
            },
            count: Some(args.requests),
        },
    };
    let fill = if args.scenario == Scenario::Preemption {
        eprintln!(
            "bench: filling {} engines with {lows} low-priority requests (not measured)",
            args.engines
        );
        let seen = phase::run(etcd, conns, keys, args, low, None, None).await?;
        if seen.placed < lows {
            return Err(BenchError::Setup(format!(
                "only {} of {lows} low-priority requests were placed within {} s: the engines \
                 are not full, so the high ones would not need to preempt",
                seen.placed, args.timeout
            )));
        }
        eprintln!(
            "bench: {lows} low-priority requests placed in {:.1} s; now {} high-priority ones",
            seen.span_s, args.requests
        );
        Some(seen.span_s)
    } else {
        None
    };
    let (cpu0, rss0, _) = proc_usage(leader).unwrap_or_default();
    let (etcd0, own0) = (meter.etcd(), meter.own());
    let mut seen = phase::run(etcd, conns, keys, args, measured, None, None).await?;
    let (cpu1, _, hwm) = proc_usage(leader).unwrap_or_default();
    let etcd_cpu_s = meter.etcd().zip(etcd0).map(|(b, a)| b - a);
    let bench_cpu_s = meter.own() - own0;
    let report = invariants::check_etcd(&conns[0], keys, 1.0).await?;
    let decisions = read_decisions(&conns[0], keys).await?;
    drop(controllers);
    let figures = match args.scenario {
        Scenario::Gang => ScenarioFigures {
            scenario: "gang",
            preemption: None,
            gang: Some(gangs(&measured, &mut seen, &decisions, args.gang_size)),
        },
        _ => ScenarioFigures {
            scenario: "preemption",
            preemption: Some(preemption(
                &low,
                &measured,
                &decisions,
                fill.unwrap_or_default(),
            )),
            gang: None,
        },
    };
    let submitted = args.requests + if fill.is_some() { lows } else { 0 };
    Ok(Citadel {
        first_revision,
        per_placement: seen.placed,
        per_decision: seen.decided(),
        submitted,
        seen,
        report,
        cpu_s: cpu1 - cpu0,
        rss0_mb: rss0,
        rss_peak_mb: hwm,
        etcd_cpu_s,
        bench_cpu_s,
        agents: None,
        scenario: Some(figures),
    })
}

/// Every decision under the prefix, by request id.
async fn read_decisions(
    client: &Client,
    keys: &Keys,
) -> Result<HashMap<String, Decision>, BenchError> {
    let (kvs, _) = store::range_all(client, &keys.decisions(), 5_000).await?;
    let mut out = HashMap::with_capacity(kvs.len());
    for kv in &kvs {
        if let Some(Key::Decision(id)) = keys.parse(kv.key())
            && let Ok(d) = serde_json::from_slice::<Decision>(kv.value())
        {
            out.insert(id.to_string(), d);
        }
    }
    Ok(out)
}

/// Every low request placed or preempted, every preempted one listed by the high one that
/// evicted it, and every high one placed.
fn preemption(
    low: &Batch,
    high: &Batch,
    decisions: &HashMap<String, Decision>,
    fill_s: f64,
) -> PreemptionFigures {
    let status = |id: &str| decisions.get(id).map(|d| d.status);
    let lows: Vec<String> = (0..low.count.unwrap_or(0))
        .map(|n| low.id(n).to_string())
        .collect();
    let highs: Vec<String> = (0..high.count.unwrap_or(0))
        .map(|n| high.id(n).to_string())
        .collect();
    // (high, low) for each eviction a placed high request lists.
    let mut listed = HashSet::new();
    let mut high_placed = 0;
    for id in &highs {
        if let Some(d) = decisions.get(id)
            && d.status == Status::Placed
        {
            high_placed += 1;
            listed.extend(d.preempted.iter().map(|v| (id.as_str(), v.as_str())));
        }
    }
    let (mut preempted, mut undecided, mut unaccounted) = (0, 0, 0);
    for id in &lows {
        match status(id) {
            Some(Status::Placed) => {}
            Some(Status::Preempted) => {
                preempted += 1;
                let by = decisions.get(id).map_or("", |d| d.preempted_by.as_str());
                if !listed.contains(&(by, id.as_str())) {
                    unaccounted += 1;
                }
            }
            _ => undecided += 1,
        }
    }
    PreemptionFigures {
        low_requests: lows.len(),
        fill_s,
        high_placed,
        preempted,
        preemptions_listed: listed.len(),
        victims_undecided: undecided,
        victims_unaccounted: unaccounted,
    }
}

/// Counts whole and partial gangs, and replaces the phase's latencies with one per placed
/// gang: from its last member's put to its members' placement.
fn gangs(
    batch: &Batch,
    seen: &mut Seen,
    decisions: &HashMap<String, Decision>,
    size: usize,
) -> GangFigures {
    let count = batch.count.unwrap_or(0);
    let n_gangs = count / size.max(1);
    // Per gang: members placed, last put, last decision (ns since the phase began).
    let mut per = vec![(0usize, 0u64, 0u64); n_gangs];
    for n in 0..count {
        let Some((k, _)) = batch.gang_member(n) else {
            continue;
        };
        let id = batch.id(n);
        let g = &mut per[k];
        if decisions
            .get(id.as_str())
            .is_some_and(|d| d.status == Status::Placed)
        {
            g.0 += 1;
        }
        let (sent, decided) = seen.times.get(n).copied().unwrap_or_default();
        g.1 = g.1.max(sent);
        g.2 = g.2.max(decided);
    }
    let mut latencies = Vec::with_capacity(n_gangs);
    let mut series = Vec::with_capacity(n_gangs);
    let (mut whole, mut partial, mut unplaced) = (0, 0, 0);
    for (placed, last_put, last_decision) in per {
        if placed == size {
            whole += 1;
            if last_put > 0 && last_decision >= last_put {
                let ms = (last_decision - last_put) as f64 / 1e6;
                latencies.push(ms);
                series.push((last_put as f64 / 1e9, ms));
            }
        } else if placed == 0 {
            unplaced += 1;
        } else {
            partial += 1;
        }
    }
    series.sort_by(|a, b| a.0.total_cmp(&b.0));
    latencies.sort_by(f64::total_cmp);
    seen.latencies = latencies;
    seen.series = series;
    GangFigures {
        gang_size: size,
        gangs: n_gangs,
        gangs_whole: whole,
        gangs_partial: partial,
        gangs_unplaced: unplaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request of a gang batch is one member of one gang, and its id leads back to it.
    #[test]
    fn gang_members_are_interleaved_and_named_back() {
        for (count, size, window) in [(16, 8, 100), (2_400, 8, 100), (90, 3, 7), (12, 4, 1)] {
            let batch = Batch {
                tag: 'g',
                launch: false,
                shape: Shape::Gang { size, window },
                count: Some(count),
            };
            let mut members = HashSet::new();
            for n in 0..count {
                let (k, m) = batch.gang_member(n).expect("a member");
                assert!(k < count / size && m < size, "{n}: ({k}, {m})");
                assert!(members.insert((k, m)), "{n}: ({k}, {m}) twice");
                let id = batch.id(n);
                assert_eq!(id.as_str(), format!("g{k}-{m}"));
                assert_eq!(batch.number(id.as_str(), count), Some(n), "{id}");
                let json: serde_json::Value = serde_json::from_str(&batch.json(n)).expect("JSON");
                assert_eq!(json["group"], format!("g{k}"));
                assert_eq!(json["group_min"], size);
            }
            // Members of one gang are not submitted one after another (unless one gang at a
            // time is all there is).
            if window > 1 && count / size > 1 {
                assert_ne!(
                    batch.gang_member(0).map(|g| g.0),
                    batch.gang_member(1).map(|g| g.0)
                );
            }
        }
    }
}
