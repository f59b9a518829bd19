//! The ledger fed key by key, as the watch feeds its cache: what work each change makes.

use std::collections::HashSet;

use super::*;
use crate::cache::fed::{Fed, eid, rid};
use crate::model::Status;

/// A mirror fed key by key, with a ledger listening.
fn fed() -> Fed<Ledger> {
    Fed::with(Ledger::default())
}

impl Fed<Ledger> {
    fn work(&self) -> Vec<Work> {
        let (mirror, ledger) = (self.shared.mirror(), self.shared.listener());
        ledger.work(mirror, 100, &HashSet::new(), &HashSet::new())
    }

    fn ledger(&mut self) -> &mut Ledger {
        self.shared.listener_mut()
    }
}

fn displaced(w: &[Work], id: &str) -> Option<Displaced> {
    w.iter().find_map(|w| match w {
        Work::Decide(d) if d.id.as_str() == id => d.displaced.clone(),
        _ => None,
    })
}

#[test]
fn a_removed_engine_displaces_its_placements_until_it_is_back() {
    let mut f = fed();
    f.engine("e1", 4.0);
    let r = f.request("a", 1.0, "service");
    f.place("a", "e1", 1.0, r);
    assert!(f.work().is_empty(), "placed and settled");
    f.delete("/citadel/engines/e1");
    let e1 = eid("e1");
    assert_eq!(displaced(&f.work(), "a"), Some(Displaced::Removed(e1)));
    f.engine("e1", 4.0);
    assert!(f.work().is_empty(), "back before it moved: it stays");
}

#[test]
fn an_engine_over_capacity_gives_up_its_newest_placements_first() {
    let mut f = fed();
    f.engine("e1", 4.0);
    for id in ["old", "mid", "new"] {
        let r = f.request(id, 1.0, "service");
        f.place(id, "e1", 1.0, r);
    }
    f.engine("e1", 2.0);
    let w = f.work();
    let e1 = eid("e1");
    assert_eq!(displaced(&w, "new"), Some(Displaced::Shrunk(e1)));
    assert_eq!(w.len(), 1, "one move makes the rest fit: {w:?}");
    f.engine("e1", 4.0);
    assert!(f.work().is_empty(), "it grew back: nothing moves");
}

#[test]
fn only_this_revisions_decision_counts_as_previous() {
    let mut f = fed();
    let first = f.request("a", 1.0, "service");
    let d = r#"{"container":{},"status":"unschedulable","reason":"0/0 engines fit: no engines registered","request_revision":REV,"decided_at":"","decided_by":""}"#;
    f.put(
        "/citadel/decisions/a",
        &d.replace("REV", &first.to_string()),
    );
    f.request("a", 2.0, "service");
    match &f.work()[..] {
        [Work::Decide(d)] => assert_eq!(d.previous, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_guard_holds_back_others_writes_and_queues_their_repair() {
    let mut f = fed();
    f.engine("e1", 4.0);
    let r = f.request("a", 1.0, "service");
    Ledger::set_leading(&mut f.shared, true);
    let seq = f.ledger().begin_write();
    f.place("a", "e1", 1.0, r);
    f.ledger().end_write(seq);
    // Our own echo was explained; someone else's delete is not, but a write of ours
    // sent before it arrived might explain it yet.
    let busy = f.ledger().begin_write();
    f.delete("/citadel/decisions/a");
    assert!(f.mirror().decision(&rid("a")).is_some(), "held back");
    let later = f.ledger().begin_write();
    Ledger::judge(&mut f.shared);
    assert_eq!(
        f.shared.listener().repairs(),
        0,
        "a write of ours sent before is still out"
    );
    f.ledger().end_write(busy);
    Ledger::judge(&mut f.shared);
    assert_eq!(
        f.shared.listener().repairs(),
        1,
        "one sent after it cannot explain it"
    );
    f.ledger().end_write(later);
    match &f.work()[..] {
        [
            Work::Restore {
                decision_fence,
                decision,
                ..
            },
        ] => {
            assert_eq!(*decision_fence, 0, "the key must still be gone");
            assert_eq!(decision.status, Status::Placed);
            assert_eq!(
                decision.resource.as_ref().map(|r| r.id.as_str()),
                Some("e1")
            );
        }
        other => panic!("{other:?}"),
    }
    // Stepping down applies what was held back.
    Ledger::set_leading(&mut f.shared, false);
    assert!(f.mirror().decision(&rid("a")).is_none());
}

#[test]
fn an_uncertain_write_compares_its_key_and_its_event_is_the_truth() {
    let mut f = fed();
    f.engine("e1", 4.0);
    f.request("a", 1.0, "service");
    Ledger::set_leading(&mut f.shared, true);
    f.ledger().uncertain([&rid("a")]);
    match &f.work()[..] {
        [Work::Decide(d)] => assert_eq!(d.decision_fence, Some(0)),
        other => panic!("{other:?}"),
    }
    // It landed after all: taken as written, no repair.
    f.put("/citadel/decisions/a", &placed_json("e1", f.rev));
    assert_eq!(
        f.mirror().decision(&rid("a")).map(|d| d.status),
        Some(Status::Placed)
    );
    Ledger::judge(&mut f.shared);
    assert_eq!(f.shared.listener().repairs(), 0);
}

fn placed_json(engine: &str, request_revision: i64) -> String {
    format!(
        r#"{{"container":{{}},"resource":{{"id":"{engine}","addr":"","total_cpus":4,"total_memory":4096}},"reservation":{{"cpus":1,"memory":1}},"status":"placed","request_revision":{request_revision},"decided_at":"","decided_by":""}}"#
    )
}

/// The leader finds `id` unschedulable in the current epoch and writes that.
fn refuse(f: &mut Fed<Ledger>, id: &str, request_revision: i64) {
    let epoch = f.shared.listener().capacity_epoch();
    f.ledger().note_unschedulable(&rid(id), epoch);
    let d = format!(
        r#"{{"container":{{}},"status":"unschedulable","reason":"0/1 engines fit: 1 lack cpus","request_revision":{request_revision},"decided_at":"","decided_by":""}}"#
    );
    f.put(&format!("/citadel/decisions/{id}"), &d);
}

fn deciding(f: &Fed<Ledger>) -> Vec<String> {
    f.work()
        .iter()
        .filter_map(|w| match w {
            Work::Decide(d) => Some(d.id.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn parked_requests_are_retried_when_room_that_fits_them_appears_oldest_first() {
    let mut f = fed();
    f.engine("e1", 4.0);
    let r = f.request("big-job", 3.0, "service");
    f.place("big-job", "e1", 3.0, r);
    // Five 2-cpu requests and one of 8 cpus find no room, and are parked.
    for id in ["s1", "s2", "s3", "s4", "s5"] {
        let r = f.request(id, 2.0, "service");
        refuse(&mut f, id, r);
    }
    let r = f.request("huge", 8.0, "service");
    refuse(&mut f, "huge", r);
    assert_eq!(f.shared.listener().parked(), 6);
    assert!(deciding(&f).is_empty(), "parked: not planned again");

    // A new engine, even one too small for any of them: every parked request gets another
    // look (its reason counts the engines); refused again, they are parked again.
    f.engine("e2", 1.0);
    let six = ["s1", "s2", "s3", "s4", "s5", "huge"];
    assert_eq!(deciding(&f), six);
    assert_eq!(f.shared.listener().parked(), 0);
    for id in six {
        let r = f.mirror().request(&rid(id)).map_or(0, |r| r.mod_revision);
        refuse(&mut f, id, r);
    }
    assert_eq!(f.shared.listener().parked(), 6);

    // Placements elsewhere take capacity: nothing is re-tried.
    let r = f.request("tiny", 0.5, "service");
    f.place("tiny", "e2", 0.5, r);
    assert!(deciding(&f).is_empty(), "{:?}", deciding(&f));
    assert_eq!(f.shared.listener().parked(), 6);

    // The 3-cpu placement is released: 4 cpus free on e1 hold two 2-cpu requests.
    // The two oldest are re-tried, and one more to learn whether others fit; the
    // 8-cpu one is not.
    f.delete("/citadel/requests/big-job");
    f.release("big-job");
    assert_eq!(deciding(&f), ["s1", "s2", "s3"]);
    assert_eq!(f.shared.listener().parked(), 3);

    // They are placed, or refused again and parked again; the rest wait their turn.
    let rev =
        |f: &Fed<Ledger>, id: &str| f.mirror().request(&rid(id)).map_or(0, |r| r.mod_revision);
    let (r1, r2, r3) = (rev(&f, "s1"), rev(&f, "s2"), rev(&f, "s3"));
    f.place("s1", "e1", 2.0, r1);
    f.place("s2", "e1", 2.0, r2);
    refuse(&mut f, "s3", r3);
    assert!(deciding(&f).is_empty());
    assert_eq!(f.shared.listener().parked(), 4);

    // A larger engine arrives: everything that fits it is re-tried, oldest first, the
    // ones re-tried before included (no starvation).
    f.engine("e3", 16.0);
    assert_eq!(deciding(&f), ["s3", "s4", "s5", "huge"]);
    assert_eq!(f.shared.listener().parked(), 0);
}

#[test]
fn engines_keep_their_tenants_once_a_request_asks_for_affinity() {
    let mut f = fed();
    f.engine("e1", 4.0);
    let r = f.request("web-1", 1.0, "service");
    f.place("web-1", "e1", 1.0, r);
    let e1 = eid("e1");
    // No request asks for affinity: placements cost no tenant bookkeeping.
    assert!(
        f.mirror()
            .usage(&e1, HealthPolicy::default())
            .tenants
            .is_empty()
    );
    assert!(
        !f.mirror()
            .usage(&e1, HealthPolicy::default())
            .tracks_tenants
    );
    let generation = f.mirror().engine_generation();

    f.put(
        "/citadel/requests/cache",
        r#"{"image":"redis","cpus":1,"memory":1,"type":"service","affinity":["request==web-*"]}"#,
    );
    let u = f.mirror().usage(&e1, HealthPolicy::default());
    assert!(u.tracks_tenants);
    assert_eq!(
        u.tenants.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["web-1"]
    );
    assert!(
        f.mirror().engine_generation() > generation,
        "the leader's views are rebuilt with them"
    );
    // Later placements are added as they come.
    let r = f.request("web-2", 1.0, "service");
    f.place("web-2", "e1", 1.0, r);
    assert_eq!(
        f.mirror().usage(&e1, HealthPolicy::default()).tenants.len(),
        2
    );
}

#[test]
fn leader_keys_are_listed_lowest_create_revision_first_with_their_leases() {
    let mut f = fed();
    f.put("/citadel/leader/b", r#"{"id":"b","since":""}"#);
    f.put("/citadel/leader/a", "not json");
    let keys = f.mirror().leader_keys();
    assert_eq!(keys[0].0, "b");
    assert_eq!(keys[0].1.info.as_ref().map(|i| i.id.as_str()), Some("b"));
    assert_eq!(keys[1].1.lease, 0);
    assert!(keys[1].1.info.is_none());
}

#[test]
fn a_request_key_that_cannot_be_an_id_is_answered_and_its_answer_released_when_it_goes() {
    let mut f = fed();
    let segment = b"r\xff".to_vec();
    let key = f.keys.odd_request(&segment);
    let rev = f.put_bytes(&key, br#"{"image":"x"}"#);
    match &f.work()[..] {
        [
            Work::Odd {
                segment: s,
                request: Some(r),
            },
        ] => {
            assert_eq!(s, &segment);
            assert_eq!(r.mod_revision, rev);
            assert_eq!(r.why, "id: the key's last segment is not UTF-8 text");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.shared.listener().queued(), 1);
    // The leader's answer commits: nothing more to do.
    f.rev += 1;
    f.shared.odd_committed(&segment, f.rev, Some(rev));
    assert!(f.work().is_empty());
    // The request is deleted: its answer goes too.
    f.delete_bytes(&key);
    assert!(matches!(&f.work()[..], [Work::Odd { request: None, .. }]));
    f.rev += 1;
    f.shared.odd_committed(&segment, f.rev, None);
    assert!(f.work().is_empty());
    assert!(f.mirror().odd(&segment).is_none(), "nothing left of it");
}

#[test]
fn pending_requests_are_taken_highest_priority_first_then_oldest() {
    let mut f = fed();
    f.put(
        "/citadel/requests/old-low",
        r#"{"image":"x","cpus":1,"memory":1,"type":"service"}"#,
    );
    f.put(
        "/citadel/requests/new-high",
        r#"{"image":"x","cpus":1,"memory":1,"type":"service","priority":9}"#,
    );
    f.put(
        "/citadel/requests/newer-low",
        r#"{"image":"x","cpus":1,"memory":1,"type":"service","priority":0}"#,
    );
    f.put(
        "/citadel/requests/negative",
        r#"{"image":"x","cpus":1,"memory":1,"type":"service","priority":-3}"#,
    );
    let order: Vec<String> = f
        .work()
        .iter()
        .filter_map(|w| match w {
            Work::Decide(d) => Some(d.id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["new-high", "old-low", "newer-low", "negative"]);
}

#[test]
fn a_gang_is_taken_whole_and_waits_while_one_of_its_members_is_in_flight() {
    let mut f = fed();
    let member = r#"{"image":"x","cpus":1,"memory":1,"type":"service","group":"g","group_min":3}"#;
    f.put("/citadel/requests/g-0", member);
    f.put(
        "/citadel/requests/other",
        r#"{"image":"x","cpus":1,"memory":1,"type":"service"}"#,
    );
    f.put("/citadel/requests/g-1", member);
    f.put("/citadel/requests/g-2", member);
    let ids = |w: Vec<Work>| -> Vec<String> {
        w.iter()
            .filter_map(|w| match w {
                Work::Decide(d) => Some(d.id.to_string()),
                _ => None,
            })
            .collect()
    };
    // Taken together, however small the limit, in the place of the oldest.
    let (mirror, ledger) = (f.shared.mirror(), f.shared.listener());
    let two = ledger.work(mirror, 2, &HashSet::new(), &HashSet::new());
    assert_eq!(ids(two), ["g-0", "g-1", "g-2"]);
    // One member's write in flight: the gang waits for it, the rest goes on.
    let in_flight: HashSet<RequestId> = [rid("g-1")].into();
    let w = ledger.work(mirror, 100, &in_flight, &HashSet::new());
    assert_eq!(ids(w), ["other"]);
}
