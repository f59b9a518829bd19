//! Feasibility: whether one engine may take a request, and if not, the first filter it fails.
//!
//! The filters, in the order they run: hard constraints, then soft ones (each decided once per
//! engine class, see [`ClassMemo`]); volume pins; group rules (per engine, only for a member
//! held to them: see [`super::GroupCounts`]); the launch policy (only for a request that
//! asks for a privilege and is launched); cordoned; unhealthy; cpus, memory, disk and
//! host ports ([`fits_resources`], what the leader verifies again before a commit); affinity,
//! last, as it reads what the engine holds.
//!
//! It may not score or compare engines ([ranking](mod@super::rank) does), nor allocate or
//! name a reason per engine: a failure is a [`Code`], named as a [`Rejection`] only to explain.

use std::fmt;

use super::view::ENGINE_LABEL;
use super::{Constraint, EngineView, Prepared};
use crate::model::policy::Privilege;
use crate::model::{EngineId, HostPort, Request};

/// Why one engine cannot take a request: the first filter it failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    Constraint(String),
    Cordoned,
    Unhealthy,
    Cpus,
    Memory,
    Disk,
    Port(HostPort),
    /// A named volume the request mounts lives on another engine.
    Volume {
        name: String,
        engine: EngineId,
    },
    /// An affinity expression (`request!=web-*`, `image==redis*`) the engine fails.
    Affinity(String),
    /// A privilege the engine's launch policy does not allow a launched container.
    Policy(Privilege),
    /// The engine holds the most members of the request's group it may (`max_per_engine`).
    GroupFull {
        group: String,
        max: u32,
    },
    /// One more member in the engine's domain would spread the group too unevenly.
    GroupSkew {
        over: String,
        max_skew: u32,
    },
    /// The engine lacks the label the request's group is spread over.
    GroupNoLabel {
        over: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Constraint(expr) => write!(f, "constraint {expr}"),
            Rejection::Cordoned => f.write_str("cordoned"),
            Rejection::Unhealthy => f.write_str("unhealthy"),
            Rejection::Cpus => f.write_str("insufficient cpus"),
            Rejection::Memory => f.write_str("insufficient memory"),
            Rejection::Disk => f.write_str("insufficient disk"),
            Rejection::Volume { name, engine } => write!(f, "volume {name} is on engine {engine}"),
            Rejection::Affinity(expr) => write!(f, "affinity {expr}"),
            Rejection::Port(p) => write!(f, "port {p} in use"),
            Rejection::Policy(p) => write!(f, "do not allow {p} (launch policy)"),
            Rejection::GroupFull { group, max } => {
                write!(f, "max {max} of group {group} per engine")
            }
            Rejection::GroupSkew { over, max_skew } => {
                write!(f, "spread over {over}: skew would exceed {max_skew}")
            }
            Rejection::GroupNoLabel { over } => write!(f, "no {over} label (spread)"),
        }
    }
}

/// [`Rejection`] without its text: counted per engine, named only when explaining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    Constraint(usize),
    Affinity(usize),
    Volume(usize),
    Policy(usize),
    GroupFull,
    GroupSkew,
    GroupNoLabel,
    Cordoned,
    Unhealthy,
    Cpus,
    Memory,
    Disk,
    Port(HostPort),
}

impl Prepared {
    /// The resources-and-ports part of the filters: what the leader re-verifies before a commit.
    pub fn fits_resources(&self, e: &EngineView) -> Result<(), Rejection> {
        fits_resources(&self.request, e)
    }

    /// The first filter `e` fails, named, or `Ok` if it fits: the scan's own check, for a dry
    /// run (`citadel plan`) that explains every engine.
    pub fn verdict(&self, e: &EngineView, with_soft: bool) -> Result<(), Rejection> {
        self.check(e, with_soft, &mut ClassMemo::default())
            .map_err(|code| self.rejection(code))
    }

    /// The first filter `e` fails, as a cheap code (no allocation on the hot path).
    pub(super) fn check(
        &self,
        e: &EngineView,
        with_soft: bool,
        memo: &mut ClassMemo,
    ) -> Result<(), Code> {
        for (i, c) in self.hard.iter().enumerate() {
            if !memo.matches(c, i, e) {
                return Err(Code::Constraint(i));
            }
        }
        if with_soft {
            for (i, c) in self.soft.iter().enumerate() {
                let k = self.hard.len() + i;
                if !memo.matches(c, k, e) {
                    return Err(Code::Constraint(k));
                }
            }
        }
        if let Some(i) = self.pins.iter().position(|(_, at)| *at != e.id) {
            return Err(Code::Volume(i));
        }
        if let Some(g) = &self.group_rules {
            g.check(e)?;
        }
        if !self.privileges.is_empty()
            && (self.request.image.launch || e.launch_all)
            && let Some(i) = self.privileges.iter().position(|p| !permits(e, p))
        {
            return Err(Code::Policy(i));
        }
        if e.cordoned {
            return Err(Code::Cordoned);
        }
        if !e.healthy {
            return Err(Code::Unhealthy);
        }
        if let Some(lack) = lack(&self.request, e) {
            return Err(match lack {
                Lack::Cpus => Code::Cpus,
                Lack::Memory => Code::Memory,
                Lack::Disk => Code::Disk,
                Lack::Port(p) => Code::Port(p),
            });
        }
        self.check_affinity(e, with_soft)
    }

    /// Affinity, decided on what the engine holds (its tenants), after the cheaper filters.
    fn check_affinity(&self, e: &EngineView, with_soft: bool) -> Result<(), Code> {
        let holds = |c: &Constraint| match c.key.as_str() {
            "request" => c.matches_values(e.tenants.keys().map(|id| Some(id.as_str()))),
            _ => c.matches_values(e.tenants.values().map(|t| Some(&*t.held.image))),
        };
        for (i, c) in self.affinity_hard.iter().enumerate() {
            if !holds(c) {
                return Err(Code::Affinity(i));
            }
        }
        if with_soft {
            for (i, c) in self.affinity_soft.iter().enumerate() {
                if !holds(c) {
                    return Err(Code::Affinity(self.affinity_hard.len() + i));
                }
            }
        }
        Ok(())
    }

    pub(super) fn rejection(&self, code: Code) -> Rejection {
        match code {
            Code::Constraint(i) => Rejection::Constraint(nth_expr(&self.hard, &self.soft, i)),
            Code::Affinity(i) => {
                Rejection::Affinity(nth_expr(&self.affinity_hard, &self.affinity_soft, i))
            }
            Code::Volume(i) => {
                let (name, engine) = self.pins[i].clone();
                Rejection::Volume { name, engine }
            }
            Code::Policy(i) => Rejection::Policy(self.privileges[i].clone()),
            Code::GroupFull | Code::GroupSkew | Code::GroupNoLabel => match &self.group_rules {
                Some(g) => g.rejection(code),
                None => Rejection::GroupFull {
                    group: String::new(),
                    max: 0,
                },
            },
            Code::Cordoned => Rejection::Cordoned,
            Code::Unhealthy => Rejection::Unhealthy,
            Code::Cpus => Rejection::Cpus,
            Code::Memory => Rejection::Memory,
            Code::Disk => Rejection::Disk,
            Code::Port(p) => Rejection::Port(p),
        }
    }
}

/// Whether `e`'s launch policy lets a launched container have `p`: an engine without one (no
/// agent, or the leader's own Docker mode) permits nothing beyond the default.
fn permits(e: &EngineView, p: &Privilege) -> bool {
    e.policy
        .as_deref()
        .is_some_and(|policy| policy.permits_one(p))
}

/// Whether an engine has room for a request's cpus, memory and host ports.
pub fn fits_resources(r: &Request, e: &EngineView) -> Result<(), Rejection> {
    match lack(r, e) {
        None => Ok(()),
        Some(Lack::Cpus) => Err(Rejection::Cpus),
        Some(Lack::Memory) => Err(Rejection::Memory),
        Some(Lack::Disk) => Err(Rejection::Disk),
        Some(Lack::Port(p)) => Err(Rejection::Port(p)),
    }
}

/// What an engine lacks for a request's resources: the one answer of the resource filter,
/// which the scan's [`Code`] and the leader's [`Rejection`] are each mapped from arm by arm.
/// A resource added here must be named in both, and no other reason can come out of it.
#[derive(Debug, Clone, Copy)]
enum Lack {
    Cpus,
    Memory,
    Disk,
    Port(HostPort),
}

/// The first resource `e` lacks for `r`: cpus, memory, disk, then host ports.
fn lack(r: &Request, e: &EngineView) -> Option<Lack> {
    if e.reserved_cpus.0.saturating_add(r.cpus.0) > e.cpus.0 {
        return Some(Lack::Cpus);
    }
    if e.reserved_memory.0.saturating_add(r.memory.0) > e.memory.0 {
        return Some(Lack::Memory);
    }
    if r.disk.0 > 0 && e.reserved_disk.0.saturating_add(r.disk.0) > e.disk.0 {
        return Some(Lack::Disk);
    }
    r.ports
        .iter()
        .find(|p| e.ports.contains(p))
        .map(|p| Lack::Port(*p))
}

/// One request's constraint results by engine class: bit `k` of `known` says constraint `k`
/// was decided for the class, bit `k` of `pass` that it matched.
#[derive(Default)]
pub(super) struct ClassMemo(Vec<(u32, u32)>);

/// Classes past this many are not numbered: their engines are checked one by one (a cluster
/// where every engine has labels of its own gains nothing from classes).
pub const MAX_CLASSES: u32 = 4096;

impl ClassMemo {
    pub(super) fn matches(&mut self, c: &Constraint, k: usize, e: &EngineView) -> bool {
        // The engine label tells engines of one class apart: never decided per class.
        if k >= 32 || e.class >= MAX_CLASSES || c.key == ENGINE_LABEL {
            return c.matches(&e.labels);
        }
        let class = e.class as usize;
        if self.0.len() <= class {
            self.0.resize(class + 1, (0, 0));
        }
        let bit = 1u32 << k;
        let (known, pass) = &mut self.0[class];
        if *known & bit == 0 {
            *known |= bit;
            if c.matches(&e.labels) {
                *pass |= bit;
            }
        }
        *pass & bit != 0
    }
}

/// The `i`th expression counting the hard ones first, as [`Code`] numbers them.
fn nth_expr(hard: &[Constraint], soft: &[Constraint], i: usize) -> String {
    hard.iter()
        .chain(soft)
        .nth(i)
        .map(|c| c.expr.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{engine, image, place, request, tcp, tenant};
    use super::super::{GroupCounts, Strategy, UNCLASSED};
    use super::*;
    use crate::model::{DiskMb, HostVolume, Image, LaunchPolicy, MemoryMb, Millicpus};
    use std::sync::Arc;

    /// One way an engine fails a request, one per filter.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fault {
        Hard,
        Soft,
        Volume,
        Group,
        Policy,
        Cordoned,
        Unhealthy,
        Cpus,
        Memory,
        Disk,
        Port,
        Affinity,
    }
    use Fault::*;

    /// The filters in the order they run.
    const ORDER: [Fault; 12] = [
        Hard, Soft, Volume, Group, Policy, Cordoned, Unhealthy, Cpus, Memory, Disk, Port, Affinity,
    ];

    /// A request that every filter has something to say about (`zone==a`, soft `disk==~ssd`,
    /// volume `data` on e1, of group `g` at most 1 per engine, launched with the host's
    /// network, 1 cpu, 1024 MB, 100 MB of disk, port 80, not beside `web-*`) and engine e1,
    /// which passes every filter but those of `faults`.
    fn case(faults: &[Fault]) -> (Prepared, EngineView) {
        let has = |f: Fault| faults.contains(&f);
        let zone = if has(Hard) { "zone=b" } else { "zone=a" };
        let disk = if has(Soft) { "disk=hdd" } else { "disk=ssd" };
        let mut e = engine("e1", 4.0, 4096.0, &[zone, disk]);
        e.disk = DiskMb(1000);
        e.cordoned = has(Cordoned);
        e.healthy = !has(Unhealthy);
        e.policy = Some(Arc::new(LaunchPolicy {
            host_network: !has(Policy),
            container_network: true,
            ..LaunchPolicy::default()
        }));
        if has(Cpus) {
            e.reserve(Millicpus(3500), MemoryMb(0), &[]);
        }
        if has(Memory) {
            e.reserve(Millicpus(0), MemoryMb(3500), &[]);
        }
        if has(Disk) {
            e.reserved_disk = DiskMb(950);
        }
        if has(Port) {
            e.reserve(Millicpus(0), MemoryMb(0), &[tcp(80)]);
        }
        if has(Affinity) {
            tenant(&mut e, "web-1", "nginx");
        }
        if has(Group) {
            tenant(&mut e, "g-1", "nginx");
            let t = Arc::make_mut(&mut e.tenants).values_mut().last().unwrap();
            t.held.rank.group = Some("g".into());
        }
        let r = Request::from_image(Image {
            group: Some("g".into()),
            max_per_engine: Some(1),
            disk: Some(100.0),
            affinity: vec!["request!=web-*".into()],
            network_mode: "host".into(),
            launch: true,
            ..image(1.0, 1024.0, &["zone==a", "disk==~ssd"], &[80])
        })
        .unwrap();
        let at = EngineId::new(if has(Volume) { "e2" } else { "e1" }).unwrap();
        let p = Prepared::new(r).unwrap().pinned(vec![("data".into(), at)]);
        let p = GroupCounts::of(&p, std::slice::from_ref(&e))
            .rules_for(&p)
            .unwrap();
        (Prepared::clone(&p), e)
    }

    #[test]
    fn each_filter_rejects_with_its_own_reason() {
        let cases = [
            (Hard, Rejection::Constraint("zone==a".into())),
            (Soft, Rejection::Constraint("disk==~ssd".into())),
            (
                Volume,
                Rejection::Volume {
                    name: "data".into(),
                    engine: EngineId::new("e2").unwrap(),
                },
            ),
            (
                Group,
                Rejection::GroupFull {
                    group: "g".into(),
                    max: 1,
                },
            ),
            (Policy, Rejection::Policy(Privilege::HostNetwork)),
            (Cordoned, Rejection::Cordoned),
            (Unhealthy, Rejection::Unhealthy),
            (Cpus, Rejection::Cpus),
            (Memory, Rejection::Memory),
            (Disk, Rejection::Disk),
            (Port, Rejection::Port(tcp(80))),
            (Affinity, Rejection::Affinity("request!=web-*".into())),
        ];
        let (p, e) = case(&[]);
        assert_eq!(p.verdict(&e, true), Ok(()), "no fault, no rejection");
        for (fault, want) in cases {
            let (p, e) = case(&[fault]);
            assert_eq!(p.verdict(&e, true), Err(want), "{fault:?}");
        }
    }

    #[test]
    fn the_first_filter_that_fails_is_the_one_named() {
        for (i, first) in ORDER.iter().enumerate() {
            let (p, e) = case(&[*first]);
            let want = p.verdict(&e, true);
            for later in &ORDER[i + 1..] {
                let (p, e) = case(&[*later, *first]);
                assert_eq!(p.verdict(&e, true), want, "{first:?} before {later:?}");
            }
            let (p, e) = case(&ORDER[i..]);
            assert_eq!(
                p.verdict(&e, true),
                want,
                "{first:?} and every filter after it"
            );
        }
    }

    #[test]
    fn without_the_soft_ones_only_hard_expressions_reject() {
        // (faults, the verdict with soft constraints, the verdict without)
        let cases = [
            (
                vec![Soft],
                Err(Rejection::Constraint("disk==~ssd".into())),
                Ok(()),
            ),
            (
                vec![Soft, Cpus],
                Err(Rejection::Constraint("disk==~ssd".into())),
                Err(Rejection::Cpus),
            ),
            (
                vec![Hard, Soft],
                Err(Rejection::Constraint("zone==a".into())),
                Err(Rejection::Constraint("zone==a".into())),
            ),
            (
                vec![Affinity],
                Err(Rejection::Affinity("request!=web-*".into())),
                Err(Rejection::Affinity("request!=web-*".into())),
            ),
        ];
        for (faults, with_soft, without) in cases {
            let (p, e) = case(&faults);
            assert_eq!(p.verdict(&e, true), with_soft, "{faults:?} with soft");
            assert_eq!(p.verdict(&e, false), without, "{faults:?} without soft");
        }
    }

    #[test]
    fn each_expression_is_named_as_written_hard_ones_checked_first() {
        // Written soft, hard, soft: the hard one is checked first; each is named as written.
        let p = Prepared::new(request(1.0, 1.0, &["a==~1", "b==2", "c==~3"], &[])).unwrap();
        // (the engine's labels, with soft, the constraint named)
        let cases = [
            (["a=1", "b=2", "c=x"], true, Some("c==~3")),
            (["a=x", "b=2", "c=3"], true, Some("a==~1")),
            (["a=x", "b=x", "c=x"], true, Some("b==2")),
            (["a=x", "b=2", "c=x"], false, None),
        ];
        for (labels, with_soft, want) in cases {
            let e = engine("e1", 4.0, 4096.0, &labels);
            let want = want.map_or(Ok(()), |x| Err(Rejection::Constraint(x.into())));
            assert_eq!(
                p.verdict(&e, with_soft),
                want,
                "{labels:?}, soft {with_soft}"
            );
        }
        // Affinity likewise, written soft, hard.
        let r = Request::from_image(Image {
            affinity: vec!["image!=~redis*".into(), "request!=web-*".into()],
            ..image(1.0, 1.0, &[], &[])
        })
        .unwrap();
        let p = Prepared::new(r).unwrap();
        // (the request the engine holds and its image, with soft, the expression named)
        let cases = [
            (("web-1", "nginx"), true, Some("request!=web-*")),
            (("web-1", "redis:7"), true, Some("request!=web-*")),
            (("db-1", "redis:7"), true, Some("image!=~redis*")),
            (("db-1", "redis:7"), false, None),
            (("db-1", "nginx"), true, None),
        ];
        for ((id, held), with_soft, want) in cases {
            let mut e = engine("e1", 4.0, 4096.0, &[]);
            tenant(&mut e, id, held);
            let want = want.map_or(Ok(()), |x| Err(Rejection::Affinity(x.into())));
            assert_eq!(
                p.verdict(&e, with_soft),
                want,
                "holding {id} of {held}, soft {with_soft}"
            );
        }
    }

    #[test]
    fn the_resource_filter_is_the_scans_and_reads_nothing_else() {
        // What the leader verifies again before a commit says what the scan said, for the
        // resources, and ignores every other filter.
        let cases: [(&[Fault], Result<(), Rejection>); 6] = [
            (&[], Ok(())),
            (&[Cpus, Memory], Err(Rejection::Cpus)),
            (&[Memory, Disk], Err(Rejection::Memory)),
            (&[Disk, Port], Err(Rejection::Disk)),
            (&[Port], Err(Rejection::Port(tcp(80)))),
            (
                &[
                    Hard, Soft, Volume, Group, Policy, Cordoned, Unhealthy, Affinity,
                ],
                Ok(()),
            ),
        ];
        for (faults, want) in cases {
            let (p, e) = case(faults);
            assert_eq!(p.fits_resources(&e), want, "{faults:?}");
            assert_eq!(fits_resources(&p.request, &e), want, "{faults:?}");
            if faults
                .iter()
                .all(|f| [Cpus, Memory, Disk, Port].contains(f))
            {
                assert_eq!(p.verdict(&e, true), want, "{faults:?}: the scan agrees");
            }
        }
    }

    #[test]
    fn resources_fit_up_to_the_last_unit() {
        // (reserved millicpus, reserved MB, reserved disk MB, the engine's disk, the request's
        // disk) on a 4 cpu, 4096 MB engine, for 1 cpu and 1024 MB
        let cases = [
            (3000, 3072, 0, 0, None, Ok(())),
            (3001, 0, 0, 0, None, Err(Rejection::Cpus)),
            (0, 3073, 0, 0, None, Err(Rejection::Memory)),
            (0, 0, 0, 0, Some(1.0), Err(Rejection::Disk)),
            (0, 0, 900, 1000, Some(100.0), Ok(())),
            (0, 0, 901, 1000, Some(100.0), Err(Rejection::Disk)),
        ];
        for (cpus, memory, disk_used, disk, ask_disk, want) in cases {
            let mut e = engine("e1", 4.0, 4096.0, &[]);
            e.reserve(Millicpus(cpus), MemoryMb(memory), &[]);
            e.reserved_disk = DiskMb(disk_used);
            e.disk = DiskMb(disk);
            let r = Request::from_image(Image {
                disk: ask_disk,
                ..image(1.0, 1024.0, &[], &[])
            })
            .unwrap();
            assert_eq!(
                fits_resources(&r, &e),
                want,
                "{cpus}m {memory} MB {disk_used}/{disk} MB disk, asking {ask_disk:?}"
            );
        }
    }

    #[test]
    fn a_class_answers_for_its_engines_but_never_for_the_engine_label() {
        // (constraint, its number in the request, the engines' class, whether an engine that
        // does not match is answered as the first of its class, which did)
        let cases = [
            ("zone==a", 0, 3, true),
            ("zone==a", 31, 3, true),
            ("zone==a", 32, 3, false),
            ("zone==a", 0, MAX_CLASSES - 1, true),
            ("zone==a", 0, MAX_CLASSES, false),
            ("zone==a", 0, UNCLASSED, false),
            ("engine==e0", 0, 3, false),
        ];
        for (expr, k, class, shared) in cases {
            let c = Constraint::parse(expr).unwrap();
            let mut first = engine("e0", 1.0, 1.0, &["zone=a"]);
            let mut other = engine("e1", 1.0, 1.0, &["zone=b"]);
            first.class = class;
            other.class = class;
            let mut memo = ClassMemo::default();
            assert!(memo.matches(&c, k, &first), "{expr}");
            assert_eq!(
                memo.matches(&c, k, &other),
                shared,
                "{expr} #{k} class {class}"
            );
        }
    }

    #[test]
    fn a_class_decides_constraints_once_but_never_the_engine_itself() {
        // Two classes: eu engines (class 0) and us engines (class 1). The us engine is the
        // least loaded, so only the constraint keeps it out.
        let mut es = vec![
            engine("e0", 4.0, 4096.0, &["region=eu"]),
            engine("e1", 4.0, 4096.0, &["region=eu"]),
            engine("e2", 4.0, 4096.0, &["region=us"]),
        ];
        for (e, class) in es.iter_mut().zip([0, 0, 1]) {
            e.class = class;
        }
        es[1].reserve(Millicpus(1000), MemoryMb(0), &[]);
        let r = request(1.0, 1.0, &["region==eu", "engine!=e0"], &[]);
        assert_eq!(place(&r, &mut es, Strategy::Spread), Ok(1));
        // Nothing else fits: the reason counts each engine under the constraint it failed.
        let r = request(1.0, 1.0, &["region==eu", "engine!=e0", "engine!=e1"], &[]);
        assert_eq!(
            place(&r, &mut es, Strategy::Spread),
            Err("0/3 engines fit: 1 constraint engine!=e0, 1 constraint engine!=e1, 1 constraint region==eu".into())
        );
    }

    /// An engine whose agent advertises `policy`.
    fn with_policy(id: &str, policy: LaunchPolicy) -> EngineView {
        let mut e = engine(id, 4.0, 4096.0, &[]);
        e.policy = (!policy.is_default()).then(|| Arc::new(policy));
        e
    }

    #[test]
    fn the_launch_policy_binds_a_launched_request_that_asks_for_a_privilege() {
        let agent = |volumes: &[&str], host_network: bool| LaunchPolicy {
            host_volumes: volumes
                .iter()
                .map(|v| HostVolume::parse(v).unwrap())
                .collect(),
            host_network,
            container_network: false,
        };
        let none = LaunchPolicy::default();
        let root = "host path /, which holds the Docker socket";
        // (volumes, network_mode, launch, the leader launches all, the engine's policy, the
        // privilege it refuses, if any)
        type Case<'a> = (
            &'a [&'a str],
            &'a str,
            bool,
            bool,
            LaunchPolicy,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            // Nothing asked: every engine, launched or not.
            (&[], "", true, true, none.clone(), None),
            (
                &["data:/d", "/anon"],
                "bridge",
                true,
                false,
                none.clone(),
                None,
            ),
            // Asked, launched (by the request or the leader's --launch), not permitted.
            (&["/:/host"], "", true, false, none.clone(), Some(root)),
            (&["/:/host"], "", false, true, none.clone(), Some(root)),
            (
                &[],
                "host",
                true,
                false,
                none.clone(),
                Some("the host's network"),
            ),
            (
                &[],
                "container:db",
                true,
                false,
                agent(&[], true),
                Some("another container's network"),
            ),
            (
                &["/srv/data:/d"],
                "",
                true,
                false,
                agent(&["/srv/datum"], true),
                Some("host path /srv/data"),
            ),
            (
                &["/etc:/e"],
                "",
                true,
                false,
                agent(&["/etc:ro"], false),
                Some("host path /etc"),
            ),
            // The first privilege the engine refuses is the one named.
            (
                &["/srv/a:/a", "/srv/b:/b:ro"],
                "host",
                true,
                false,
                agent(&["/srv/a"], false),
                Some("host path /srv/b (read-only)"),
            ),
            // Not launched: a reservation only, which binds nothing on the host.
            (&["/:/host"], "host", false, false, none.clone(), None),
            // Permitted by the engine's agent.
            (
                &["/srv/data/x:/d", "/etc:/e:ro"],
                "host",
                true,
                false,
                agent(&["/srv/data", "/etc:ro"], true),
                None,
            ),
            (
                &["/var/run/docker.sock:/s"],
                "",
                true,
                false,
                agent(&["/var/run/docker.sock"], false),
                None,
            ),
            (
                &["/var/run/docker.sock:/s"],
                "",
                true,
                false,
                agent(&["/var"], false),
                Some("host path /var/run/docker.sock, which holds the Docker socket"),
            ),
        ];
        for (volumes, network, launch, launch_all, policy, refused) in cases {
            let r = Request::from_image(Image {
                volumes: volumes.iter().map(|v| v.to_string()).collect(),
                network_mode: network.into(),
                launch,
                ..image(1.0, 1.0, &[], &[])
            })
            .unwrap();
            let p = Prepared::new(r).unwrap();
            let mut e = with_policy("e1", policy);
            e.launch_all = launch_all;
            let got = p.verdict(&e, true).map_err(|r| r.to_string());
            let want = refused.map_or(Ok(()), |what| {
                Err(format!("do not allow {what} (launch policy)"))
            });
            assert_eq!(
                got, want,
                "{volumes:?} {network:?} launch {launch}, all {launch_all}"
            );
        }
    }

    #[test]
    fn a_privileged_request_goes_only_where_it_is_allowed_or_nowhere() {
        let mut es = vec![
            engine("e0", 8.0, 8192.0, &[]),
            with_policy(
                "e1",
                LaunchPolicy {
                    host_network: true,
                    ..LaunchPolicy::default()
                },
            ),
            engine("e2", 8.0, 8192.0, &[]),
        ];
        let host = |launch: bool| {
            Request::from_image(Image {
                network_mode: "host".into(),
                launch,
                ..image(0.5, 1.0, &[], &[])
            })
            .unwrap()
        };
        // e1 is the smallest and the busiest, and the only one that allows it.
        es[1].reserve(Millicpus(2000), MemoryMb(0), &[]);
        for strategy in [Strategy::Spread, Strategy::Binpack, Strategy::Random] {
            assert_eq!(place(&host(true), &mut es, strategy), Ok(1), "{strategy:?}");
        }
        assert_eq!(
            place(&host(false), &mut es, Strategy::Spread),
            Ok(0),
            "not launched"
        );
        let root = Request::from_image(Image {
            volumes: vec!["/:/host".into()],
            launch: true,
            ..image(1.0, 1.0, &[], &[])
        })
        .unwrap();
        assert_eq!(
            place(&root, &mut es, Strategy::Spread),
            Err("0/3 engines fit: 3 do not allow host path /, which holds the Docker socket (launch policy)".into())
        );
    }

    #[test]
    fn engine_pin() {
        let mut es = vec![engine("a", 4.0, 4096.0, &[]), engine("b", 4.0, 4096.0, &[])];
        assert_eq!(
            place(
                &request(1.0, 1.0, &["engine==b"], &[]),
                &mut es,
                Strategy::Binpack
            ),
            Ok(1)
        );
    }
}
