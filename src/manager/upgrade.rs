//! Rolling upgrades: while replicas of two releases run side by side, a request that uses a
//! field the leader's build does not know, and a live candidate's does, is left to that
//! candidate instead of being decided `invalid` (invariant 6).
//!
//! Each candidate lists the request fields it understands in its election key. The leader
//! reads them from its mirror (again only when a campaign key changes); a request it cannot
//! parse for a field one of them knows is not decided ([`super::Item::Defer`]), and the leader
//! hands leadership over: it resigns once its writes in flight have answered, and campaigns
//! again behind the others. A field no candidate knows is a typo, and `invalid` as before.
//!
//! Pure: it reads the mirror it is handed.

use std::collections::BTreeMap;

use crate::cache::Mirror;
use crate::model::{ReplicaId, known_request_fields, unknown_request_fields};

/// The request fields live candidates understand and this replica does not, with a candidate
/// for each.
#[derive(Debug, Default)]
pub struct Newer {
    /// The mirror's leaders generation this was read at (`None`: never read).
    read_at: Option<u64>,
    fields: BTreeMap<String, String>,
}

impl Newer {
    /// Reads the candidates again if a campaign key changed since the last look.
    pub fn refresh(&mut self, mirror: &Mirror, me: &ReplicaId) {
        let generation = mirror.leaders_generation();
        if self.read_at == Some(generation) {
            return;
        }
        self.read_at = Some(generation);
        let known = known_request_fields();
        self.fields = mirror
            .candidates()
            .into_iter()
            .filter(|c| c.lease != 0)
            .filter_map(|c| c.info)
            .filter(|info| info.id != me.as_str())
            .flat_map(|info| {
                let id = info.id;
                info.request_fields
                    .into_iter()
                    .filter(|f| !known.contains(&f.as_str()))
                    .map(move |f| (f, id.clone()))
            })
            .collect();
    }

    /// A field of `raw` this replica does not know and a live candidate does, with that
    /// candidate's id.
    pub fn knower(&self, raw: &[u8]) -> Option<(String, &str)> {
        if self.fields.is_empty() {
            return None;
        }
        unknown_request_fields(raw)
            .into_iter()
            .find_map(|f| Some((f.clone(), self.fields.get(&f)?.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fed::Fed;

    fn candidate(f: &mut Fed, lease: i64, id: &str, fields: &[&str]) {
        let info = serde_json::json!({"id": id, "since": "", "request_fields": fields});
        f.put_leased(
            &format!("/citadel/leader/{lease:x}"),
            &info.to_string(),
            lease,
        );
    }

    #[test]
    fn only_a_live_other_candidate_that_knows_the_field_takes_the_request() {
        let me = ReplicaId::new("old").expect("an id");
        let mut f = Fed::new();
        let every = known_request_fields();
        candidate(&mut f, 1, "old", &every);
        let mut newer = Newer::default();
        newer.refresh(f.mirror(), &me);
        let asks = br#"{"image":"x","cpus":1,"memory":1,"type":"service","gpus":5}"#;
        assert_eq!(newer.knower(asks), None, "nobody else knows it: a typo");

        let mut with_gpus = every.clone();
        with_gpus.push("gpus");
        candidate(&mut f, 2, "new", &with_gpus);
        // An older release's key lists no fields; one without a lease is no candidate.
        f.put_leased("/citadel/leader/3", r#"{"id":"older","since":""}"#, 3);
        f.put(
            "/citadel/leader/stray",
            r#"{"id":"stray","since":"","request_fields":["lables"]}"#,
        );
        newer.refresh(f.mirror(), &me);
        assert_eq!(newer.knower(asks), Some(("gpus".to_string(), "new")));
        let typo = br#"{"image":"x","cpus":1,"memory":1,"type":"service","lables":[]}"#;
        assert_eq!(newer.knower(typo), None, "a stray key is no candidate");
    }
}
