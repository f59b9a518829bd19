//! `citadel plan FILE|-`: a dry run, like `nomad job plan`. It reads the engines, their health
//! and every decision from etcd once, builds the views the leader schedules on, and runs the
//! scheduler's own filters and scoring on them: for each engine, the filter that rules it out
//! or its score, and which engine the leader would choose now. It writes nothing.

use std::collections::HashMap;

use clap::Args;
use etcd_client::Client;
use serde::Serialize;

use super::output::{OutputArgs, add_row, json, labels_cell, outln, print_table, table};
use super::request::{EXIT_INVALID, EXIT_UNSCHEDULABLE, read_input, warn_line};
use super::{CliError, request_id, trim};
use crate::cache::{Cache, HealthPolicy};
use crate::keys::Keys;
use crate::model::RequestId;
use crate::scheduler::{self, EngineView, Prepared, Schedulers, Strategy, prepare};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The request: a JSON file, or - for standard input.
    #[arg(value_name = "FILE|-")]
    pub file: String,
    /// The id it would be submitted under: it picks where the leader's scan starts (and
    /// random's draw), as it will for the real request [default: FILE's name without its
    /// extension].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// TYPE=STRATEGY, as the controllers run with (defaults: service=spread, batch=binpack).
    #[arg(long = "scheduler", value_name = "TYPE=STRATEGY")]
    pub schedulers: Vec<String>,
    /// The controllers' --overcommit.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub overcommit: f64,
    /// Whether the leader runs with --docker, so that only engines with a health key are
    /// schedulable [default: true when any engine has a health key].
    #[arg(long, value_name = "BOOL")]
    pub docker: Option<bool>,
    /// As the controllers' --count-live: count max(reserved, live use) against capacity.
    #[arg(long)]
    pub count_live: bool,
    /// The controllers' --preempt-gap: how much lower a placement's priority must be for the
    /// request to evict it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub preempt_gap: u32,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One engine in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct EnginePlan {
    pub id: String,
    pub addr: String,
    pub labels: Vec<String>,
    /// The first filter it fails (`None`: it fits).
    pub rejected: Option<String>,
    /// Its reserved fraction once the request is placed there (engines that fit).
    pub score: Option<f64>,
    /// Its place among the engines that fit, best first (1: the best), as a placed decision's
    /// `alternatives` would rank it.
    pub rank: Option<usize>,
    pub free_cpus: f64,
    pub free_memory: f64,
    pub chosen: bool,
}

/// What `plan -o json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// etcd's revision the state was read at.
    pub revision: i64,
    pub request: String,
    /// `placed`, `unschedulable` or `invalid`: the decision the leader would write now.
    pub status: &'static str,
    pub strategy: Option<&'static str>,
    /// The engine it would be placed on.
    pub engine: Option<String>,
    pub reason: String,
    /// No engine met the soft constraints, so they were dropped.
    pub soft_dropped: bool,
    /// Nothing fits as things stand: the placements of lower priority it would evict from
    /// `engine` to make room, with their priorities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preempts: Vec<Victim>,
    pub engines: Vec<EnginePlan>,
}

/// A placement the request would evict.
#[derive(Debug, Clone, Serialize)]
pub struct Victim {
    pub request: String,
    pub priority: i32,
}

pub(super) async fn plan(client: &Client, keys: &Keys, a: PlanArgs) -> Result<(), CliError> {
    if !(a.overcommit.is_finite() && a.overcommit > 0.0) {
        return Err(CliError::Usage(format!(
            "--overcommit {}: expected a number greater than 0",
            a.overcommit
        )));
    }
    let schedulers =
        Schedulers::with_overrides(&a.schedulers).map_err(|e| CliError::Usage(e.to_string()))?;
    let raw = read_input(&a.file)?;
    let (id, name) = plan_id(a.id.as_deref(), &a.file)?;
    let (views, labels, revision) = engine_views(client, keys, &a).await?;
    let prepared = prepare(&id, &raw);
    if let Ok(p) = &prepared {
        for w in p.warnings() {
            warn_line(&w);
        }
    }
    let report = match prepared.map_err(|e| e.to_string()).and_then(|p| {
        Ok((
            schedulers
                .for_type(&p.request.kind)
                .map_err(|e| e.to_string())?,
            p,
        ))
    }) {
        Err(reason) => PlanReport {
            revision,
            request: name,
            status: "invalid",
            strategy: None,
            engine: None,
            reason,
            soft_dropped: false,
            preempts: Vec::new(),
            engines: Vec::new(),
        },
        Ok((strategy, prepared)) => {
            let mut r = explain(&prepared, &views, &labels, strategy, &id, a.preempt_gap);
            r.revision = revision;
            r.request = name;
            r
        }
    };
    if a.output.json() {
        json(&report)?;
    } else {
        print(&report, a.output.wide());
    }
    match report.status {
        "invalid" => Err(CliError::Decided {
            code: EXIT_INVALID,
            message: format!("invalid: {}", super::one_line(&report.reason)),
        }),
        "unschedulable" => Err(CliError::Decided {
            code: EXIT_UNSCHEDULABLE,
            message: format!("unschedulable: {}", report.reason),
        }),
        _ => Ok(()),
    }
}

/// The id a plan is made for (it seeds the scan, as the real request's id will) and how the
/// plan names the request: `--id`; else FILE's name without its extension (`web.json` is
/// `web`) when that is an id; else `the request`, with a fixed seed.
fn plan_id(id: Option<&str>, file: &str) -> Result<(RequestId, String), CliError> {
    if let Some(id) = id {
        return Ok((request_id(id)?, id.to_string()));
    }
    let stem = (file != "-")
        .then(|| std::path::Path::new(file).file_stem())
        .flatten()
        .and_then(|s| s.to_str())
        .and_then(|s| RequestId::new(s).ok());
    Ok(match stem {
        Some(id) => {
            let name = id.to_string();
            (id, name)
        }
        None => (request_id("plan")?, "the request".to_string()),
    })
}

/// The engines as the leader sees them: every decision's reservation applied, health as
/// `--docker` weighs it. Read once; only the cache's own reads.
async fn engine_views(
    client: &Client,
    keys: &Keys,
    a: &PlanArgs,
) -> Result<(Vec<EngineView>, HashMap<String, Vec<String>>, i64), CliError> {
    let cache = Cache::new(keys.clone(), a.overcommit);
    cache.load(client).await?;
    // What each engine holds, by request and priority: what preemption would choose from.
    cache.track_tenants();
    let revision = cache.revision();
    let state = cache.read();
    let docker = a.docker.unwrap_or_else(|| {
        state
            .engine_specs()
            .iter()
            .any(|s| state.health(&s.id).is_some())
    });
    let policy = HealthPolicy {
        docker,
        count_live: a.count_live,
        launch_all: false,
    };
    let labels = state
        .engine_specs()
        .into_iter()
        .map(|s| (s.id.to_string(), s.labels))
        .collect();
    Ok((state.engines(policy).views, labels, revision))
}

/// Schedules as the leader would (same seed, same sample), then names each engine's verdict.
fn explain(
    p: &Prepared,
    views: &[EngineView],
    labels: &HashMap<String, Vec<String>>,
    strategy: Strategy,
    id: &crate::model::RequestId,
    gap: u32,
) -> PlanReport {
    let sample = scheduler::sample_size(views.len());
    let seed = scheduler::fnv1a(id.as_str());
    let result = scheduler::schedule(p, views, strategy, seed, sample);
    // Nothing fits: what the leader would evict, as it chooses (disruption budgets are
    // counted from what the engines hold).
    let preemption = result.as_ref().err().and_then(|_| {
        let opts = scheduler::PreemptOptions {
            gap,
            max_candidates: scheduler::candidates_for(views.len()),
            start: (seed % views.len().max(1) as u64) as usize,
        };
        scheduler::preempt(p, views, &opts, &|group| budget(views, group))
            .filter(|c| !c.victims.is_empty())
    });
    // The verdicts of the pass that decided: soft constraints count unless they were dropped.
    let with_soft = result.as_ref().is_ok_and(|plan| !plan.soft_dropped);
    let chosen = result.as_ref().ok().map(|plan| plan.engine);
    let ranked: HashMap<usize, usize> = scheduler::rank(p, views, strategy, views.len())
        .into_iter()
        .enumerate()
        .map(|(place, (i, _))| (i, place + 1))
        .collect();
    let mut engines: Vec<EnginePlan> = views
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let verdict = p.verdict(e, with_soft);
            EnginePlan {
                id: e.id.to_string(),
                addr: e.addr.clone(),
                labels: labels.get(e.id.as_str()).cloned().unwrap_or_default(),
                rejected: verdict.as_ref().err().map(ToString::to_string),
                score: verdict.is_ok().then(|| p.score(e)),
                rank: ranked.get(&i).copied(),
                free_cpus: e.cpus.as_cpus() - e.reserved_cpus.as_cpus(),
                free_memory: e.memory.0.saturating_sub(e.reserved_memory.0) as f64,
                chosen: chosen == Some(i),
            }
        })
        .collect();
    // Best first, then the engines ruled out, by id.
    let mut preempts = Vec::new();
    if let Some(c) = &preemption {
        let e = &views[c.engine];
        for v in &c.victims {
            preempts.push(Victim {
                request: v.to_string(),
                priority: e.tenants.get(v).map_or(0, |t| t.held.rank.priority),
            });
        }
        if let Some(row) = engines.iter_mut().find(|r| r.id == e.id.as_str()) {
            row.chosen = true;
        }
    }
    engines.sort_by_key(|e| (e.rank.unwrap_or(usize::MAX), e.id.clone()));
    let (status, engine, reason, soft_dropped) = match (result, &preemption) {
        (Err(_), Some(c)) => {
            let e = &views[c.engine];
            let names: Vec<String> = preempts
                .iter()
                .map(|v| format!("{} (priority {})", v.request, v.priority))
                .collect();
            (
                "placed",
                Some(e.id.to_string()),
                format!(
                    "{} chose {} by preempting {} of lower priority: {}",
                    strategy.name(),
                    e.id,
                    names.len(),
                    names.join(", ")
                ),
                false,
            )
        }
        (result, _) => match result {
            Ok(plan) => {
                let e = &views[plan.engine];
                (
                    "placed",
                    Some(e.id.to_string()),
                    format!("{} chose {}", strategy.name(), e.id),
                    plan.soft_dropped,
                )
            }
            // The reason says "(soft constraints ignored)" itself.
            Err(u) => ("unschedulable", None, u.reason, false),
        },
    };
    PlanReport {
        revision: 0,
        request: id.to_string(),
        status,
        strategy: Some(strategy.name()),
        engine,
        reason,
        soft_dropped,
        preempts,
        engines,
    }
}

/// A group's disruption budget as its placed members state it (the lowest), if any.
fn budget(views: &[EngineView], group: &str) -> Option<u32> {
    views
        .iter()
        .flat_map(|e| e.tenants.values())
        .filter(|t| t.held.rank.group.as_deref() == Some(group))
        .filter_map(|t| t.held.rank.disruption_budget)
        .min()
}

fn print(r: &PlanReport, wide: bool) {
    if !r.engines.is_empty() {
        let mut header = vec!["ENGINE", "RESULT", "RANK", "SCORE", "FREE CPUS", "FREE MB"];
        if wide {
            header.extend(["ADDR", "LABELS"]);
        }
        let mut t = table(&header);
        for e in &r.engines {
            let result = match (&e.rejected, e.chosen) {
                (Some(_), true) => format!("chosen: {} evicted", r.preempts.len()),
                (Some(why), _) => format!("ruled out: {why}"),
                (None, true) => "fits, chosen".to_string(),
                (None, false) => "fits".to_string(),
            };
            let mut row = vec![
                e.id.clone(),
                result,
                e.rank.map_or_else(|| "-".into(), |r| r.to_string()),
                e.score.map_or_else(|| "-".into(), |s| format!("{s:.3}")),
                trim(e.free_cpus),
                trim(e.free_memory),
            ];
            if wide {
                row.extend([e.addr.clone(), labels_cell(&e.labels)]);
            }
            add_row(&mut t, row);
        }
        print_table(&t);
    }
    let strategy = r.strategy.map(|s| format!(" ({s}")).unwrap_or_default();
    let how = match r.strategy {
        Some("spread") => ": the lowest score wins)",
        Some("binpack") => ": the highest score that fits wins)",
        Some(_) => ")",
        None => "",
    };
    match &r.engine {
        Some(e) if !r.preempts.is_empty() => outln!(
            "would place {} on {e} by evicting {}; nothing was written (revision {})",
            r.request,
            r.preempts
                .iter()
                .map(|v| format!("{} (priority {})", v.request, v.priority))
                .collect::<Vec<_>>()
                .join(", "),
            r.revision
        ),
        Some(e) => outln!(
            "would place {} on {e}{strategy}{how}{}; nothing was written (revision {})",
            r.request,
            if r.soft_dropped {
                ", soft constraints dropped"
            } else {
                ""
            },
            r.revision
        ),
        None => outln!(
            "would be {}: {}; nothing was written (revision {})",
            r.status,
            r.reason,
            r.revision
        ),
    }
}
