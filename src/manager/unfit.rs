//! The leader's memo of request shapes that fit nowhere, for one capacity epoch.
//!
//! Placements only take capacity away, so a shape ([`Shape`]) found unschedulable stays so
//! until the cache starts a new capacity epoch (a release, a new or larger engine, a batch
//! that did not commit). Until then every request of that shape gets the same answer without a
//! scan of the engines: a saturated cluster decides its backlog at the cost of a lookup each.
//!
//! It may not touch etcd or the cache: the leader hands it the epoch of the view it plans on.

use std::collections::HashMap;

use crate::scheduler::{Prepared, Shape};

/// Shapes past this many are forgotten at once (many distinct refused shapes cost a scan each
/// again, never memory).
const MAX_SHAPES: usize = 4_096;

/// Unschedulable shapes and their reasons, valid in `epoch`, by [`Prepared::shape_hash`]. A
/// lookup compares the whole shape, so two shapes that hash alike only cost a scan.
#[derive(Debug, Default)]
pub struct Unfit {
    epoch: u64,
    reasons: HashMap<u64, (Shape, String)>,
}

impl Unfit {
    /// Plans on a view of capacity epoch `epoch` follow: forgets what an older one said.
    pub fn at(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.reasons.clear();
            self.epoch = epoch;
        }
    }

    /// Why `p` fits nowhere, if a request of its shape was found so in this epoch. No shape is
    /// built to look it up.
    /// A request whose answer hangs on other placements (affinity, a pinned volume) is
    /// never answered from the memo.
    pub fn reason(&self, p: &Prepared) -> Option<&str> {
        if self.reasons.is_empty() || p.depends_on_placements() {
            return None;
        }
        self.reasons
            .get(&p.shape_hash())
            .filter(|(shape, _)| shape.is_of(p))
            .map(|(_, reason)| reason.as_str())
    }

    pub fn remember(&mut self, p: &Prepared, reason: &str) {
        if p.depends_on_placements() {
            return;
        }
        if self.reasons.len() >= MAX_SHAPES {
            self.reasons.clear();
        }
        self.reasons
            .insert(p.shape_hash(), (p.shape(), reason.to_string()));
    }

    pub fn len(&self) -> usize {
        self.reasons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }
}
