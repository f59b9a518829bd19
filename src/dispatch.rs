//! The leader's side of the agents: what their reports and their losses change.
//!
//! ```text
//! runs/<engine>/<id>  failed to start ─▶ decision pending elsewhere (engine excluded) or failed,
//!                                        assignment withdrawn in the same txn
//!                     batch exited    ─▶ decision exited, reservation freed
//! health/<engine> gone (lease expired) ─▶ its services pending (placed again elsewhere),
//!                                        its launched batch jobs lost; assignments withdrawn
//! placed for launch on an agent's engine, no assignment (an older leader placed it)
//!                                      ─▶ assignment written (fenced on the decision)
//! assignment or report no decision holds ─▶ deleted
//! ```
//!
//! Level-triggered on the cache: the ledger names the requests whose assignment, report or
//! decision changed, and every few seconds all of them are looked at again, so a new leader
//! picks up where the old one stopped. A running container changes no decision: the report
//! is the record (`citadel status` reads it), which keeps a launch at one leader write, the
//! placement's own transaction.
//!
//! It may not choose an engine (the manager does) nor write outside a fenced transaction.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, TxnOp};

use crate::cache::{Cache, Mirror};
use crate::manager::Rewriter;
use crate::model::{
    Assignment, Attempt, ContainerState, Decision, EngineId, Lifecycle, RequestId, Run, Status,
    now_rfc3339,
};
use crate::store::fence::Commit;

/// How often everything assigned is looked at again, whatever changed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Engines a container may fail to start on before it is `failed`.
    pub launch_tries: usize,
}

/// One thing to write for a request.
#[derive(Debug)]
enum Act {
    /// Rewrite its decision (seen at `seen`), withdrawing its assignment from `withdraw`.
    Decide {
        id: RequestId,
        seen: i64,
        withdraw: Option<EngineId>,
        what: Outcome,
    },
    /// Write the assignment a placement lacks (fenced on the decision's mod revision).
    Assign {
        id: RequestId,
        engine: EngineId,
        decision_rev: i64,
        value: Vec<u8>,
    },
    /// Delete an assignment (at `rev`, 0: none) and the report beside it.
    Withdraw {
        id: RequestId,
        engine: EngineId,
        rev: i64,
    },
    /// Delete a report whose assignment is gone.
    Forget {
        id: RequestId,
        engine: EngineId,
        rev: i64,
    },
}

/// What became of a launched container, as its decision records it: the one place that says
/// how, for the agents' reports and for the leader's own `--docker` launches alike.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It could not start on `engine`: placed again elsewhere, or `failed` after `tries` engines.
    FailedToStart { engine: String, error: String },
    /// A batch container ran to its end: its reservation is freed.
    BatchExited { code: Option<i64> },
    /// Its engine was lost: a batch job that ran is `lost`, anything else placed again.
    EngineLost { engine: String, batch: bool },
}

impl Outcome {
    /// Records it in the decision; `tries`: engines a container may fail to start on.
    pub fn apply(&self, dec: &mut Decision, tries: usize) {
        let run = dec.run.get_or_insert_with(Run::default);
        run.updated_at = now_rfc3339();
        match self {
            Outcome::FailedToStart { engine, error } => {
                run.attempts.push(Attempt {
                    engine: engine.clone(),
                    error: error.clone(),
                });
                run.forget_container();
                run.updated_at = now_rfc3339();
                let n = run.attempts.len();
                dec.reservation = None;
                dec.resource = None;
                if n >= tries {
                    dec.status = Status::Failed;
                    dec.reason = format!(
                        "the container failed to start on {n} engines; last, on {engine}: {error}"
                    );
                } else {
                    dec.status = Status::Pending;
                    dec.reason = format!(
                        "the container failed to start on {engine} ({error}); placing it on another engine"
                    );
                }
            }
            Outcome::BatchExited { code } => {
                if run
                    .state
                    .as_ref()
                    .is_none_or(|s| !s.is_done() && *s != ContainerState::Removed)
                {
                    run.state = Some(ContainerState::Exited);
                }
                run.exit_code = code.or(run.exit_code);
                dec.reservation = None;
                dec.status = Status::Exited;
                dec.reason = match code {
                    Some(c) => format!("the batch container exited with code {c}"),
                    None => "the batch container is gone".into(),
                };
            }
            Outcome::EngineLost { engine, batch } => {
                dec.reservation = None;
                run.lost.push(engine.clone());
                if *batch {
                    dec.status = Status::Lost;
                    dec.reason = format!("engine {engine} was lost while the container ran");
                    run.state = Some(ContainerState::Lost);
                } else {
                    dec.status = Status::Pending;
                    dec.resource = None;
                    dec.reason = format!("engine {engine} was lost; placing it again");
                    run.forget_container();
                    run.updated_at = now_rfc3339();
                }
            }
        }
    }
}

pub struct Dispatch {
    cache: Arc<Cache>,
    writer: Rewriter,
    cfg: DispatchConfig,
}

impl Dispatch {
    pub fn new(cache: Arc<Cache>, writer: Rewriter, cfg: DispatchConfig) -> Self {
        Dispatch { cache, writer, cfg }
    }

    /// Runs until etcd refuses its fence (another replica leads), or until dropped.
    pub async fn run(&self) {
        self.cache
            .wait_for(self.writer.fence.rev, Duration::from_secs(30))
            .await;
        let mut changed = self.cache.subscribe();
        let fenced = self.writer.fenced.subscribe();
        let mut swept: Option<Instant> = None;
        let mut lost = HashSet::new();
        loop {
            let sweep = swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
            if sweep {
                swept = Some(Instant::now());
            }
            let acts = self.plan(sweep, &mut lost);
            if !acts.is_empty() {
                self.write(acts).await;
            }
            if *fenced.borrow() {
                return;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            // Let a burst of events settle into one round.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What to write, from the mirror: the requests the ledger named, every request on an
    /// agent's engine that was just lost, and (on a sweep, and first of all when a leader
    /// starts) everything assigned, reported or placed on an agent's engine. `lost`: the agents' engines known lost, kept between rounds.
    fn plan(&self, sweep: bool, lost: &mut HashSet<EngineId>) -> Vec<Act> {
        let mut books = self.writer.books.lock();
        let mut ids: BTreeSet<RequestId> = books.listener_mut().take_agent_dirty();
        let launch_all = books.listener().policy().launch_all;
        let (mirror, _) = books.parts();
        if ids.is_empty() && !mirror.has_agents() {
            return Vec::new();
        }
        if sweep {
            ids.extend(mirror.assigned().cloned());
            ids.extend(mirror.reported().cloned());
            // Placements an older leader (or a lost write) left without their assignment.
            ids.extend(mirror.placed_on_agents());
        }
        let now_lost: HashSet<EngineId> = mirror
            .agent_engines()
            .filter(|e| mirror.health(e).is_none())
            .cloned()
            .collect();
        for engine in &now_lost {
            if !lost.contains(engine) {
                tracing::warn!(engine = %engine, "engine lost: its agent's lease expired");
            }
            if sweep || !lost.contains(engine) {
                ids.extend(mirror.placed_on(engine).into_iter().map(|(id, _)| id));
            }
        }
        *lost = now_lost;
        let mut acts = Vec::new();
        for id in ids {
            examine(mirror, &id, launch_all, &mut acts);
        }
        acts
    }

    /// Writes each act in a transaction of its own: one stale act (its compare fails) must not
    /// fail the others, and acts are rare (reports that end a launch, repairs).
    async fn write(&self, acts: Vec<Act>) {
        let keys = &self.writer.keys;
        for act in acts {
            let (compares, ops) = match act {
                Act::Decide {
                    id,
                    seen,
                    withdraw,
                    what,
                } => {
                    self.decide(&id, seen, withdraw, what).await;
                    continue;
                }
                Act::Assign {
                    id,
                    engine,
                    decision_rev,
                    value,
                } => {
                    tracing::info!(request = %id, engine = %engine, "assigning a placement its agent lacks");
                    (
                        vec![Compare::mod_revision(
                            keys.decision(&id),
                            CompareOp::Equal,
                            decision_rev,
                        )],
                        vec![
                            TxnOp::delete(keys.run(&engine, &id), None),
                            TxnOp::put(keys.assignment(&engine, &id), value, None),
                        ],
                    )
                }
                Act::Withdraw { id, engine, rev } => {
                    tracing::info!(request = %id, engine = %engine, "withdrawing an assignment no decision holds");
                    (
                        vec![Compare::mod_revision(
                            keys.assignment(&engine, &id),
                            CompareOp::Equal,
                            rev,
                        )],
                        withdrawal(keys, &engine, &id).into(),
                    )
                }
                Act::Forget { id, engine, rev } => (
                    vec![Compare::mod_revision(
                        keys.run(&engine, &id),
                        CompareOp::Equal,
                        rev,
                    )],
                    vec![TxnOp::delete(keys.run(&engine, &id), None)],
                ),
            };
            if self.writer.commit(compares, ops, "assignment").await == Some(Commit::Fenced) {
                return;
            }
        }
    }

    async fn decide(&self, id: &RequestId, seen: i64, withdraw: Option<EngineId>, what: Outcome) {
        let keys = &self.writer.keys;
        let extra = withdraw
            .iter()
            .flat_map(|e| withdrawal(keys, e, id))
            .collect();
        let tries = self.cfg.launch_tries;
        match &what {
            Outcome::FailedToStart { engine, error } => {
                tracing::warn!(request = %id, engine = %engine, error = %error, "container failed to start")
            }
            Outcome::BatchExited { code } => {
                tracing::info!(request = %id, exit_code = ?code, "batch container exited")
            }
            Outcome::EngineLost { engine, batch } => {
                tracing::warn!(request = %id, engine = %engine, batch, "engine lost under a container")
            }
        }
        let edit = |dec: &mut Decision| what.apply(dec, tries);
        self.writer.update(id, seen, edit, extra).await;
    }
}

/// Deleting an assignment and the report beside it.
fn withdrawal(keys: &crate::keys::Keys, engine: &EngineId, id: &RequestId) -> [TxnOp; 2] {
    [
        TxnOp::delete(keys.assignment(engine, id), None),
        TxnOp::delete(keys.run(engine, id), None),
    ]
}

/// What one request needs written for the agents, if anything.
fn examine(mirror: &Mirror, id: &RequestId, launch_all: bool, acts: &mut Vec<Act>) {
    let request = mirror.request(id);
    let decision = mirror.decision(id);
    // Where the decision holds it, if it is to be run by an agent there.
    let target: Option<(&EngineId, i64)> = decision.and_then(|d| {
        let engine = d.engine.as_ref()?;
        let r = request?;
        let held = matches!(d.status, Status::Placed | Status::Exited);
        (held
            && d.request_revision == r.mod_revision
            && (r.launch || launch_all)
            && mirror.agent(engine).is_some())
        .then_some((engine, d.mod_revision))
    });
    let mut current = None;
    for (engine, a) in mirror.assignments(id) {
        let holds = target.is_some_and(|(e, _)| e == engine)
            && decision.is_some_and(|d| d.request_revision == a.request_revision);
        if holds {
            current = Some((engine, *a));
        } else if decision.map_or(request.is_none(), |d| d.mod_revision > a.mod_revision) {
            // Only once the decision is newer than the assignment (or the request is gone):
            // the leader's own decision, written with the assignment in one transaction, may
            // reach the mirror after it (the ledger's guard holds its event until the commit
            // answers), and must not be taken for a decision that does not hold it.
            acts.push(Act::Withdraw {
                id: id.clone(),
                engine: engine.clone(),
                rev: a.mod_revision,
            });
        }
    }
    for (engine, report) in mirror.run_reports(id) {
        if mirror.assignments(id).all(|(e, _)| e != engine) {
            acts.push(Act::Forget {
                id: id.clone(),
                engine: engine.clone(),
                rev: report.mod_revision,
            });
        }
    }
    let (Some((engine, seen)), Some(d), Some(r)) = (target, decision, request) else {
        return;
    };
    let batch = r.lifecycle == Lifecycle::Batch;
    if mirror.health(engine).is_none() {
        // Its agent's lease expired. A batch job that ran is lost; anything else (a service,
        // or a job that never started) is placed again.
        if d.status == Status::Placed {
            let ran = current
                .and_then(|(e, a)| {
                    mirror
                        .run_report(id, e)
                        .and_then(|r| r.report.as_ref())
                        .filter(|r| r.assignment_revision == a.mod_revision)
                })
                .is_some_and(|r| !r.container_id.is_empty());
            acts.push(Act::Decide {
                id: id.clone(),
                seen,
                withdraw: Some(engine.clone()),
                what: Outcome::EngineLost {
                    engine: engine.to_string(),
                    batch: batch && ran,
                },
            });
        }
        return;
    }
    let Some((_, a)) = current else {
        // Placed for a launch, and its agent was never told (an older leader placed it, or an
        // assignment was deleted by hand): once the watch has passed the decision, so that an
        // assignment committed with it would be in the mirror.
        if d.status == Status::Placed && d.mod_revision <= mirror.revision() {
            acts.push(Act::Assign {
                id: id.clone(),
                engine: engine.clone(),
                decision_rev: d.mod_revision,
                value: Assignment::encode(
                    id.as_str(),
                    engine.as_str(),
                    r.lifecycle.as_str(),
                    r.mod_revision,
                    r.raw(),
                ),
            });
        }
        return;
    };
    let Some(report) = mirror
        .run_report(id, engine)
        .and_then(|e| e.report.as_ref())
        .filter(|rep| rep.assignment_revision == a.mod_revision)
    else {
        return;
    };
    if d.status != Status::Placed {
        return;
    }
    if report.failed() {
        acts.push(Act::Decide {
            id: id.clone(),
            seen,
            withdraw: Some(engine.clone()),
            what: Outcome::FailedToStart {
                engine: engine.to_string(),
                error: report.error.clone(),
            },
        });
    } else if batch
        && report
            .state
            .as_ref()
            .is_some_and(|s| s.is_done() || *s == ContainerState::Removed)
    {
        acts.push(Act::Decide {
            id: id.clone(),
            seen,
            withdraw: None,
            what: Outcome::BatchExited {
                code: report.exit_code,
            },
        });
    }
}
