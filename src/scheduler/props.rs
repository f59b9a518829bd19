//! Property tests of the scheduling core (issue 16): exact ties do not depend on how engines
//! are named, affinity is never violated when requests are placed one after another on a
//! view that records each placement, and a launched request never goes to an engine whose
//! launch policy forbids what it asks of the host, and members of a group placed one by one
//! keep to its `max_per_engine` and `spread` and are refused only where the rules (or the other
//! filters) leave no engine. (Binpack against first-fit, on the fleets `bench
//! --quality` draws, is `tests/quality.rs`.)

use std::collections::BTreeMap;

use proptest::prelude::{Just, ProptestConfig, any, prop_assert, prop_assert_eq, proptest};
use proptest::strategy::Strategy as _;

use super::testing::{engine, engine_in_class, image, request, request_with_affinity};
use super::*;
use crate::model::{Held, HostVolume, Image, LaunchPolicy, Request, RequestId};

/// The strategies draw cpus in thousandths.
fn milli(cpus: u32) -> f64 {
    f64::from(cpus) / 1000.0
}

/// Places `rs` in turn; containers per engine id.
fn place_all(
    rs: &[Request],
    mut view: Vec<EngineView>,
    s: Strategy,
) -> (Vec<EngineView>, BTreeMap<String, usize>) {
    view.sort_by(|a, b| a.id.cmp(&b.id));
    let mut counts = BTreeMap::new();
    for (n, r) in rs.iter().enumerate() {
        let p = Prepared::new(r.clone()).unwrap();
        if let Ok(plan) = schedule(&p, &view, s, n as u64 * 7919, usize::MAX) {
            let id = RequestId::new(format!("r{n}")).unwrap();
            view[plan.engine].hold(&id, &Held::of(r));
            *counts.entry(view[plan.engine].id.to_string()).or_default() += 1;
        }
    }
    (view, counts)
}

fn shapes() -> impl proptest::strategy::Strategy<Value = Vec<(u32, u32)>> {
    proptest::collection::vec((1u32..4_000, 1u32..4_000), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Identical engines under any names: the containers each ends up with, sorted, are the
    /// same, whatever the names and wherever each scan starts.
    #[test]
    fn ties_do_not_depend_on_engine_names(
        rs in shapes(),
        n in 2usize..8,
        names in Just((0..8u32).collect::<Vec<u32>>()).prop_shuffle(),
        binpack in any::<bool>(),
    ) {
        let s = if binpack { Strategy::Binpack } else { Strategy::Spread };
        let rs: Vec<Request> = rs.iter().map(|(c, m)| request(milli(*c), f64::from(*m), &[], &[])).collect();
        let plain = (0..n).map(|i| engine(&format!("e{i}"), 8.0, 8192.0, &[])).collect();
        let renamed = (0..n).map(|i| engine(&format!("z{}", names[i]), 8.0, 8192.0, &[])).collect();
        let (_, a) = place_all(&rs, plain, s);
        let (_, b) = place_all(&rs, renamed, s);
        let mut a: Vec<usize> = a.into_values().collect();
        let mut b: Vec<usize> = b.into_values().collect();
        a.sort_unstable();
        b.sort_unstable();
        prop_assert_eq!(a, b);
    }

    /// Requests of a few groups, each anti-affine to its own group and some affine to another,
    /// placed in turn on a view that records each placement (as a round's running view does):
    /// no engine ever holds two of an anti-affine group, and an affine request lands beside
    /// its group.
    #[test]
    fn affinity_is_never_violated(
        rs in proptest::collection::vec((0u8..3, any::<bool>(), 1u32..2_000), 1..40),
        n in 1usize..8,
    ) {
        let mut view: Vec<EngineView> = (0..n).map(|i| engine(&format!("e{i}"), 16.0, 16384.0, &[])).collect();
        let mut group_of: BTreeMap<String, (u8, bool)> = BTreeMap::new();
        for (k, (g, anti, cpus)) in rs.iter().enumerate() {
            let expr = if *anti { format!("request!=g{g}-*") } else { format!("request==g{}-*", (g + 1) % 3) };
            let r = request_with_affinity(milli(*cpus), 64.0, &[], &[expr.as_str()]);
            let p = Prepared::new(r.clone()).unwrap();
            let id = RequestId::new(format!("g{g}-{k}")).unwrap();
            if let Ok(plan) = schedule(&p, &view, Strategy::Spread, k as u64, usize::MAX) {
                let e = &view[plan.engine];
                let beside = e.tenants.keys().any(|t| t.as_str().starts_with(&format!("g{}-", (g + 1) % 3)));
                let own = e.tenants.keys().any(|t| t.as_str().starts_with(&format!("g{g}-")));
                if *anti {
                    prop_assert!(!own, "{id} anti-affine but placed beside its group on {}", e.id);
                } else {
                    prop_assert!(beside, "{id} affine but placed away from its group on {}", e.id);
                }
                group_of.insert(id.to_string(), (*g, *anti));
                view[plan.engine].hold(&id, &Held::of(&r));
            }
        }
        for e in &view {
            for g in 0..3u8 {
                let anti = e.tenants.keys().filter(|t| group_of.get(t.as_str()) == Some(&(g, true))).count();
                prop_assert!(anti <= 1, "{} holds {anti} anti-affine requests of group {g}", e.id);
            }
        }
    }

    /// Engines whose agents permit a random few of the privileges, or none (no agent), and
    /// requests asking for a random few, launched or not (or all, as under `--launch`): a
    /// launched request is never placed where the engine's policy (read by the policy's own
    /// `permits`, not the filter) refuses it, and one is called unschedulable only when every
    /// engine either refuses it or lacks room.
    #[test]
    fn no_engine_that_forbids_a_privilege_is_ever_chosen(
        es in proptest::collection::vec((any::<bool>(), 0u8..8, any::<bool>(), 1u32..4_000), 1..8),
        rs in proptest::collection::vec((0u8..8, 0u8..3, any::<bool>(), 1u32..3_000), 1..30),
        launch_all in any::<bool>(),
        strategy in 0u8..3,
    ) {
        const PATHS: [&str; 4] = ["/srv", "/srv/data", "/etc", "/var/run/docker.sock"];
        let strategy = [Strategy::Spread, Strategy::Binpack, Strategy::Random][strategy as usize];
        let mut policies = Vec::new();
        let mut view: Vec<EngineView> = es.iter().enumerate().map(|(i, (agent, vols, net, cpus))| {
            let policy = LaunchPolicy {
                host_volumes: PATHS.iter().enumerate()
                    .filter(|(k, _)| vols & (1 << k) != 0)
                    .map(|(k, p)| HostVolume { path: p.to_string(), read_only: k == 2 })
                    .collect(),
                host_network: *net,
                container_network: !*net,
            };
            let policy = if *agent { policy } else { LaunchPolicy::default() };
            let mut e = engine(&format!("e{i}"), milli(*cpus), 4096.0, &[]);
            e.policy = (!policy.is_default()).then(|| std::sync::Arc::new(policy.clone()));
            e.launch_all = launch_all;
            policies.push(policy);
            e
        }).collect();
        for (n, (vols, net, launch, cpus)) in rs.iter().enumerate() {
            let volumes = [("/srv/data/x:/x", 1u8), ("/etc/ssl:/s:ro", 2), ("/var/run/docker.sock:/d", 4)]
                .iter().filter(|(_, bit)| vols & bit != 0).map(|(v, _)| v.to_string()).collect();
            let network = ["", "host", "container:db"][*net as usize];
            let image = Image { volumes, network_mode: network.into(), launch: *launch, ..image(milli(*cpus), 1.0, &[], &[]) };
            let r = Request::from_image(image).unwrap();
            let p = Prepared::new(r.clone()).unwrap();
            let bound = *launch || launch_all;
            match schedule(&p, &view, strategy, n as u64, usize::MAX) {
                Ok(plan) => {
                    let permitted = policies[plan.engine].permits(&r.image);
                    prop_assert!(!bound || permitted.is_ok(), "request {n} on {}: {permitted:?}", view[plan.engine].id);
                    let id = RequestId::new(format!("r{n}")).unwrap();
                    view[plan.engine].hold(&id, &Held::of(&r));
                }
                Err(_) => {
                    for (e, policy) in view.iter().zip(&policies) {
                        let could = fits_resources(&r, e).is_ok() && (!bound || policy.permits(&r.image).is_ok());
                        prop_assert!(!could, "{} could take request {n}", e.id);
                    }
                }
            }
        }
    }
}

/// The spread label's value on `e`, as the rules read it: its `zone`.
fn zone_of(e: &EngineView) -> Option<&str> {
    e.labels.value("zone")
}

/// Members of group `g` on `e`, from its tenants.
fn members_on(e: &EngineView, g: &str) -> usize {
    e.tenants
        .values()
        .filter(|t| t.held.rank.group.as_deref() == Some(g))
        .count()
}

/// Members of group `g` per spread domain, counted by brute force from the view: the domains
/// are the zones of the engines that are not cordoned and not in the excluded zone; members
/// count on any engine of a domain outside it.
fn domain_counts(view: &[EngineView], g: &str, excluded: Option<&str>) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = view
        .iter()
        .filter(|e| !e.cordoned)
        .filter_map(zone_of)
        .filter(|z| Some(*z) != excluded)
        .map(|z| (z.to_string(), 0))
        .collect();
    for e in view {
        if let Some(n) = zone_of(e).and_then(|z| counts.get_mut(z)) {
            *n += members_on(e, g);
        }
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Members of one group, placed one by one with `schedule` on engines of zones a, b, c or
    /// none (one class per zone), some cordoned, of random capacities, the counts kept current
    /// after each placement: every placement leaves the skew over the eligible zones at most
    /// `max_skew` and no engine above `max_per_engine`, and a member is refused only when
    /// no engine could take it under the rules (checked engine by engine, by brute force).
    #[test]
    fn group_rules_hold_and_refuse_only_when_nothing_could_take_a_member(
        es in proptest::collection::vec((0u8..4, any::<bool>(), 1u32..6_000), 1..10),
        members in proptest::collection::vec(1u32..2_000, 1..30),
        max_per_engine in proptest::option::of(1u64..4),
        max_skew in proptest::option::of(1u64..3),
        exclude_c in any::<bool>(),
        strategy in 0u8..3,
        sample in proptest::prop_oneof![Just(usize::MAX), 1usize..4],
    ) {
        let strategy = [Strategy::Spread, Strategy::Binpack, Strategy::Random][strategy as usize];
        let mut view: Vec<EngineView> = es.iter().enumerate().map(|(i, (z, cordoned, cpus))| {
            let label = format!("zone={}", ["a", "b", "c", ""][*z as usize]);
            let labels: &[&str] = if *z == 3 { &[] } else { &[label.as_str()] };
            let mut e = engine_in_class(&format!("e{i}"), milli(*cpus), 65536.0, labels, u32::from(*z));
            e.cordoned = *cordoned && i % 3 == 0;
            e
        }).collect();
        let constraints: &[&str] = if exclude_c { &["zone!=c"] } else { &[] };
        let excluded = exclude_c.then_some("c");
        let spread = max_skew.map(|s| serde_json::from_value(serde_json::json!({"over": "zone", "max_skew": s})).unwrap());
        let member = |cpus: u32| {
            let r = Request::from_image(Image {
                group: Some("web".into()),
                max_per_engine,
                spread: spread.clone(),
                ..image(milli(cpus), 1.0, constraints, &[])
            }).unwrap();
            Prepared::new(r).unwrap()
        };
        let mut counts = GroupCounts::of(&member(1), &view);
        for (n, cpus) in members.iter().enumerate() {
            let p = member(*cpus);
            let ruled = counts.rules_for(&p);
            prop_assert_eq!(ruled.is_some(), max_per_engine.is_some() || max_skew.is_some());
            let q = ruled.as_deref().unwrap_or(&p);
            match schedule(q, &view, strategy, n as u64, sample) {
                Ok(plan) => {
                    let id = RequestId::new(format!("web-{n}")).unwrap();
                    view[plan.engine].hold(&id, &Held::of(&p.request));
                    counts.placed(&view[plan.engine]);
                    let e = &view[plan.engine];
                    if let Some(k) = max_per_engine {
                        prop_assert!(members_on(e, "web") as u64 <= k, "{} holds more than {k}", e.id);
                    }
                    if let Some(s) = max_skew {
                        let d = domain_counts(&view, "web", excluded);
                        let skew = d.values().max().unwrap() - d.values().min().unwrap();
                        prop_assert!(skew as u64 <= s, "member {n} on {}: skew {skew} over {d:?}", e.id);
                        prop_assert_eq!(counts.skew(), Some(skew as u32));
                    }
                }
                Err(u) => {
                    let d = domain_counts(&view, "web", excluded);
                    let min = d.values().min().copied().unwrap_or(0);
                    for e in &view {
                        // Every other filter, without the rules: constraints, cordon, room.
                        let others = p.verdict(e, true).is_ok();
                        let room = max_per_engine.is_none_or(|k| (members_on(e, "web") as u64) < k);
                        let even = max_skew.is_none_or(|s| {
                            zone_of(e).is_some_and(|z| d.get(z).is_none_or(|c| (c + 1 - min) as u64 <= s))
                        });
                        prop_assert!(!(others && room && even), "{} could take member {n}: {}", e.id, u.reason);
                    }
                }
            }
            // The counts kept current agree with counts taken afresh.
            let fresh = GroupCounts::of(&p, &view);
            for e in &view {
                prop_assert_eq!(counts.on_engine(&e.id), fresh.on_engine(&e.id));
            }
            prop_assert_eq!(counts.skew(), fresh.skew());
        }
        for e in &view {
            if let Some(k) = max_per_engine {
                prop_assert!(members_on(e, "web") as u64 <= k, "{} holds more than {k}", e.id);
            }
        }
    }
}
