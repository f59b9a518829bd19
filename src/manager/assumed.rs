//! What the leader has sent and not heard back about, and the running view it plans on.

use std::collections::{HashMap, HashSet};

use super::item::Item;
use super::ledger::Ledger;
use crate::cache::{Engines, Mirror, Usage, apply_usage};
use crate::model::{EngineId, Held, RequestId};
use crate::scheduler::EngineView;

/// What a write is for: a request, or an odd request key (by its segment: it has no id).
#[derive(Debug)]
enum Target {
    Request(RequestId),
    Odd(Vec<u8>),
}

/// What the leader wrote for, and what its placement holds (if it placed one).
type Written = (Target, Option<(EngineId, Held)>);

/// Writes sent and not answered yet (a committed batch goes straight into the cache's mirror). The
/// running view is the cache's usage plus these, so a placement is never forgotten in between,
/// and a request in flight is never planned twice.
#[derive(Debug, Default)]
pub(super) struct Assumed {
    /// By batch: what it wrote.
    batches: HashMap<u64, Vec<Written>>,
    pub(super) ids: HashSet<RequestId>,
    /// Odd request keys written for, by segment.
    pub(super) odd: HashSet<Vec<u8>>,
    /// Named volumes recorded by batches in flight: where, and by which batch.
    volumes: HashMap<String, (u64, EngineId)>,
    /// What assumed placements hold, per engine and batch.
    held: HashMap<EngineId, Vec<(u64, RequestId, Held)>>,
    /// Engines evicted from, by batch.
    evicting: HashMap<u64, Vec<EngineId>>,
}

impl Assumed {
    pub(super) fn add(&mut self, token: u64, items: &[Item]) {
        let mut written = Vec::with_capacity(items.len());
        for item in items.iter().flat_map(Item::leaves) {
            let target = match item {
                Item::Odd { segment, .. } => {
                    self.odd.insert(segment.clone());
                    written.push((Target::Odd(segment.clone()), None));
                    continue;
                }
                Item::Evict { id, engine, .. } => {
                    // Its engine's view is refreshed once the batch is answered, whatever
                    // the answer: until then the view counts both it and what replaced it.
                    self.ids.insert(id.clone());
                    self.evicting.entry(token).or_default().push(engine.clone());
                    written.push((Target::Request(id.clone()), None));
                    continue;
                }
                Item::Together(_) => continue,
                Item::Place { id, .. }
                | Item::Refuse { id, .. }
                | Item::Park { id }
                | Item::Defer { id, .. }
                | Item::Release { id, .. }
                | Item::Restore { id, .. } => id,
            };
            self.ids.insert(target.clone());
            let held = match item {
                Item::Place {
                    engine,
                    held,
                    volumes,
                    ..
                } => {
                    for v in volumes {
                        self.volumes.insert(v.clone(), (token, engine.clone()));
                    }
                    self.held.entry(engine.clone()).or_default().push((
                        token,
                        target.clone(),
                        held.clone(),
                    ));
                    Some((engine.clone(), held.clone()))
                }
                _ => None,
            };
            written.push((Target::Request(target.clone()), held));
        }
        self.batches.insert(token, written);
    }

    /// The requests batch `token` wrote for.
    pub(super) fn ids_of(&self, token: u64) -> Vec<RequestId> {
        self.batches
            .get(&token)
            .into_iter()
            .flatten()
            .filter_map(|(target, _)| match target {
                Target::Request(id) => Some(id.clone()),
                Target::Odd(_) => None,
            })
            .collect()
    }

    /// Forgets a batch; returns the engines it held resources on.
    pub(super) fn forget(&mut self, token: u64) -> Vec<EngineId> {
        let mut engines = self.evicting.remove(&token).unwrap_or_default();
        self.volumes.retain(|_, (t, _)| *t != token);
        if let Some(written) = self.batches.remove(&token) {
            for (target, held) in written {
                match target {
                    Target::Request(id) => self.ids.remove(&id),
                    Target::Odd(segment) => self.odd.remove(&segment),
                };
                if let Some((engine, _)) = held {
                    if let Some(list) = self.held.get_mut(&engine) {
                        list.retain(|(t, _, _)| *t != token);
                        if list.is_empty() {
                            self.held.remove(&engine);
                        }
                    }
                    engines.push(engine);
                }
            }
        }
        engines
    }

    /// Adds what assumed placements hold on `engine` to its view.
    pub(super) fn apply(&self, view: &mut EngineView) {
        for (_, id, h) in self.held.get(&view.id).into_iter().flatten() {
            view.hold(id, h);
        }
    }

    /// Where a named volume recorded by a batch in flight lives.
    pub(super) fn volume(&self, name: &str) -> Option<EngineId> {
        self.volumes.get(name).map(|(_, e)| e.clone())
    }

    pub(super) fn in_flight(&self) -> usize {
        self.batches.len()
    }
}

/// The leader's running view: every engine, with what the cache knows is committed plus what
/// is assumed. Kept across rounds and updated per engine, so a round costs what changed, not
/// the size of the cluster.
#[derive(Debug, Default)]
pub(super) struct RunningView {
    pub(super) engines: Engines,
    index: HashMap<EngineId, usize>,
    /// Set when the view must be rebuilt (new leader, engines changed).
    pub(super) stale: bool,
}

impl RunningView {
    /// A view that is rebuilt from the cache before the first round.
    pub(super) fn stale() -> Self {
        RunningView {
            stale: true,
            ..RunningView::default()
        }
    }

    pub(super) fn rebuild(&mut self, engines: Engines, assumed: &Assumed) {
        self.index = engines
            .views
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        self.engines = engines;
        for view in &mut self.engines.views {
            assumed.apply(view);
        }
        self.stale = false;
    }

    /// Recomputes one engine from the cache's usage and what is assumed on it.
    pub(super) fn refresh(&mut self, engine: &EngineId, usage: &Usage, assumed: &Assumed) {
        if let Some(&i) = self.index.get(engine) {
            let view = &mut self.engines.views[i];
            apply_usage(view, usage);
            assumed.apply(view);
        }
    }

    /// Recomputes the engines a forgotten batch held resources on.
    pub(super) fn refresh_forgotten(
        &mut self,
        engines: Vec<EngineId>,
        mirror: &Mirror,
        ledger: &Ledger,
        assumed: &Assumed,
    ) {
        for engine in engines {
            self.refresh(&engine, &ledger.usage(mirror, &engine), assumed);
        }
    }
}
