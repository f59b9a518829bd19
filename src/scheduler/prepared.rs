//! The request made ready: its constraints and affinity parsed, and their regexes compiled,
//! once, when the request is read, and the [`Shape`] the leader's memo of refused requests
//! knows it by.
//!
//! It may not look at an engine: whether one fits is [`super::feasible`]'s to say, from what
//! this stage parsed. A bad expression is refused here, naming its entry.

use std::sync::Arc;

use super::group::{self, GroupFilter};
use super::{Constraint, ConstraintError, SchedulerError, constraint};
use crate::model::policy::{Privilege, privileges};
use crate::model::{DiskMb, EngineId, HostPort, MemoryMb, Millicpus, Request};

/// What decides whether, and why not, a request fits an engine: its demand, its host ports,
/// its constraints as written and the privileges it asks for with whether it asks to be
/// launched (affinity, volume pins and group rules aside: see
/// [`Prepared::depends_on_placements`]); not its image, name, type or environment. Requests of one shape
/// are refused alike on the same engines, so when one fits nowhere, neither does the next until
/// capacity grows (the leader's memo of unschedulable shapes holds them). A request field
/// that the filters read belongs here too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    cpus: Millicpus,
    memory: MemoryMb,
    disk: DiskMb,
    ports: Vec<HostPort>,
    constraints: Vec<String>,
    /// Its privileges, and `launch` when it has any: requests without privileges share a
    /// shape whatever their `launch`.
    privileges: Vec<Privilege>,
    launch: bool,
}

impl Shape {
    /// Whether `p` has this shape, without building its own.
    pub fn is_of(&self, p: &Prepared) -> bool {
        let r = &p.request;
        self.cpus == r.cpus
            && self.memory == r.memory
            && self.disk == r.disk
            && self.ports == r.ports
            && self.constraints == r.constraints
            && self.privileges == p.privileges
            && self.launch == p.launch_privileged()
    }

    fn hash_of(r: &Request, privileges: &[Privilege], launch: bool) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (r.cpus, r.memory, r.disk, &r.ports, &r.constraints).hash(&mut h);
        if !privileges.is_empty() {
            (privileges, launch).hash(&mut h);
        }
        h.finish()
    }
}

/// A request ready to schedule: its constraints and affinity parsed (and their regexes
/// compiled) once, when the request is read, not once per engine or per scheduling round.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: Request,
    pub(super) hard: Vec<Constraint>,
    pub(super) soft: Vec<Constraint>,
    pub(super) affinity_hard: Vec<Constraint>,
    pub(super) affinity_soft: Vec<Constraint>,
    /// The engines its named volumes are recorded on (see [`Prepared::pinned`]).
    pub(super) pins: Vec<(String, EngineId)>,
    /// Its group's rules as this round's placements leave them (see
    /// [`super::GroupCounts::rules_for`]); `None` for most requests, which pay nothing for it.
    pub(super) group_rules: Option<Arc<GroupFilter>>,
    /// What it asks of its host beyond an ordinary container (a host path, the host's or
    /// another container's network): found once, here, and empty for most requests, which
    /// then pay nothing for the launch-policy filter. It binds only a request that is launched
    /// (`launch`, or every one under the leader's `--launch`: see [`EngineView::launch_all`]).
    ///
    /// [`EngineView::launch_all`]: super::EngineView::launch_all
    pub(super) privileges: Vec<Privilege>,
    /// A hash of its [`Shape`], made once when it is read: the leader's memo of refused shapes
    /// looks it up without building one.
    shape_hash: u64,
}

/// The keys an affinity expression may name.
const AFFINITY_KEYS: [&str; 2] = ["request", "image"];

impl Prepared {
    /// What `submit` and `plan` warn about before writing it: expressions that parse but are
    /// probably not what was meant (see [`constraint::warning`]), each naming its entry.
    pub fn warnings(&self) -> Vec<String> {
        let named = |field: &str, exprs: &[String]| -> Vec<String> {
            exprs
                .iter()
                .enumerate()
                .filter_map(|(i, e)| constraint::warning(e).map(|w| format!("{field}[{i}]: {w}")))
                .collect()
        };
        let mut all = named("labels", &self.request.constraints);
        all.extend(named("affinity", &self.request.affinity));
        all
    }

    /// Fails with a reason naming the bad `labels[i]` or `affinity[i]` entry.
    pub fn new(request: Request) -> Result<Self, SchedulerError> {
        // Counted before any is compiled: a request pays for at most this many.
        let regexes = request
            .constraints
            .iter()
            .chain(&request.affinity)
            .filter(|e| constraint::names_regex(e))
            .count();
        if regexes > constraint::MAX_REGEX_CONSTRAINTS {
            return Err(SchedulerError::TooManyRegexes {
                count: regexes,
                limit: constraint::MAX_REGEX_CONSTRAINTS,
            });
        }
        let (hard, soft) = parse_all(&request.constraints, |index, source| {
            SchedulerError::Constraint { index, source }
        })?;
        let (affinity_hard, affinity_soft) = parse_all(&request.affinity, |index, source| {
            SchedulerError::Affinity { index, source }
        })?;
        if let Some(c) = affinity_hard
            .iter()
            .chain(&affinity_soft)
            .find(|c| !AFFINITY_KEYS.contains(&c.key.as_str()))
        {
            // Named by its entry as written (hard and soft ones were parsed apart).
            let index = request
                .affinity
                .iter()
                .position(|e| e.trim() == c.expr)
                .unwrap_or_default();
            return Err(SchedulerError::AffinityKey { index });
        }
        let privileges = privileges(&request.image).map_err(SchedulerError::HostPath)?;
        let shape_hash = Shape::hash_of(&request, &privileges, request.image.launch);
        Ok(Prepared {
            request,
            hard,
            soft,
            affinity_hard,
            affinity_soft,
            pins: Vec::new(),
            group_rules: None,
            privileges,
            shape_hash,
        })
    }

    /// A hash of [`Prepared::shape`]; equal shapes hash alike.
    pub fn shape_hash(&self) -> u64 {
        self.shape_hash
    }

    /// What decides where this request may go (see [`Shape`]).
    pub fn shape(&self) -> Shape {
        Shape {
            cpus: self.request.cpus,
            memory: self.request.memory,
            disk: self.request.disk,
            ports: self.request.ports.clone(),
            constraints: self.request.constraints.clone(),
            privileges: self.privileges.clone(),
            launch: self.launch_privileged(),
        }
    }

    /// It asks for a privilege and to be launched: the launch policy of the engine binds it
    /// even where the leader does not launch every request.
    pub(super) fn launch_privileged(&self) -> bool {
        !self.privileges.is_empty() && self.request.image.launch
    }

    /// What it asks of its host beyond an ordinary container (see [`Privilege`]).
    pub fn privileges(&self) -> &[Privilege] {
        &self.privileges
    }

    /// The same request, held to the engines its named volumes are recorded on.
    pub fn pinned(&self, pins: Vec<(String, EngineId)>) -> Prepared {
        Prepared {
            pins,
            ..self.clone()
        }
    }

    /// The same request, held to its group's rules as they stand in this round.
    pub(super) fn held_to_group(&self, rules: Arc<GroupFilter>) -> Prepared {
        Prepared {
            group_rules: Some(rules),
            ..self.clone()
        }
    }

    /// It asks for more than resources, ports and labels (affinity, a pinned volume, or a
    /// group with rules, held to them or not yet): a plan for it made on another view must be
    /// made again, not only re-verified.
    pub fn depends_on_placements(&self) -> bool {
        !self.affinity_hard.is_empty()
            || !self.affinity_soft.is_empty()
            || !self.pins.is_empty()
            || self.group_rules.is_some()
            || self.request.group.as_ref().is_some_and(group::has_rules)
    }

    /// It has soft constraints or soft affinity: a scan that finds no engine meeting them is
    /// made again without them.
    pub(super) fn has_soft(&self) -> bool {
        !self.soft.is_empty() || !self.affinity_soft.is_empty()
    }
}

/// Parses expressions into hard and soft ones; `err` names the bad entry.
fn parse_all(
    exprs: &[String],
    err: impl Fn(usize, ConstraintError) -> SchedulerError,
) -> Result<(Vec<Constraint>, Vec<Constraint>), SchedulerError> {
    let mut hard = Vec::new();
    let mut soft = Vec::new();
    for (i, expr) in exprs.iter().enumerate() {
        let c = Constraint::parse(expr).map_err(|source| err(i, source))?;
        if c.soft {
            soft.push(c);
        } else {
            hard.push(c);
        }
    }
    Ok((hard, soft))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{image, request};
    use super::*;
    use crate::model::Image;

    fn with_affinity(labels: &[&str], affinity: &[&str]) -> Request {
        Request::from_image(Image {
            affinity: affinity.iter().map(|s| s.to_string()).collect(),
            ..image(1.0, 1.0, labels, &[])
        })
        .unwrap()
    }

    /// What [`Prepared::new`] made of a request: its expressions counted, or the error.
    fn outcome(r: Result<Prepared, SchedulerError>) -> String {
        match r {
            Ok(p) => format!(
                "hard {} soft {}, affinity hard {} soft {}",
                p.hard.len(),
                p.soft.len(),
                p.affinity_hard.len(),
                p.affinity_soft.len()
            ),
            Err(SchedulerError::Constraint { index, .. }) => format!("labels[{index}]"),
            Err(SchedulerError::Affinity { index, .. }) => format!("affinity[{index}]"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn expressions_are_parsed_into_hard_and_soft_or_refused_by_entry() {
        let regexes: Vec<String> = (0..9).map(|i| format!("k{i}==/v{i}/")).collect();
        let regexes: Vec<&str> = regexes.iter().map(String::as_str).collect();
        // (labels, affinity, what comes of them)
        let cases: [(&[&str], &[&str], &str); 10] = [
            (&[], &[], "hard 0 soft 0, affinity hard 0 soft 0"),
            (
                &["zone==a", "disk==~ssd", "gpu"],
                &[],
                "hard 2 soft 1, affinity hard 0 soft 0",
            ),
            (
                &[],
                &["request!=web-*", "image==~redis*"],
                "hard 0 soft 0, affinity hard 1 soft 1",
            ),
            (&["zone==/(/"], &[], "labels[0]"),
            (&["zone==a", "==b"], &[], "labels[1]"),
            (&[], &["request==/(/"], "affinity[0]"),
            (
                &[],
                &["zone==a"],
                "affinity[0]: the key is request or image",
            ),
            (&regexes[..8], &[], "hard 8 soft 0, affinity hard 0 soft 0"),
            (
                &regexes,
                &[],
                "labels: 9 /regex/ constraints, the limit is 8",
            ),
            (
                &regexes[..5],
                &["request==/a/", "request==/b/", "image==/c/", "image==/d/"],
                "labels: 9 /regex/ constraints, the limit is 8",
            ),
        ];
        for (labels, affinity, want) in cases {
            let got = outcome(Prepared::new(with_affinity(labels, affinity)));
            assert_eq!(got, want, "{labels:?} {affinity:?}");
        }
    }

    #[test]
    fn bad_constraints() {
        let bad = request(1.0, 1.0, &["zone==/(/"], &[]);
        assert!(matches!(
            Prepared::new(bad),
            Err(SchedulerError::Constraint { index: 0, .. })
        ));
    }

    #[test]
    fn a_shape_is_what_the_filters_read_and_nothing_else() {
        let base = || image(1.0, 256.0, &["zone==a", "disk==ssd"], &[80]);
        // (how the request differs from the base one, whether it has the base one's shape)
        let cases: [(&str, Image, bool); 15] = [
            ("the same", base(), true),
            (
                "another image",
                Image {
                    name: "other".into(),
                    ..base()
                },
                true,
            ),
            (
                "another type",
                Image {
                    kind: "batch".into(),
                    ..base()
                },
                true,
            ),
            (
                "affinity",
                Image {
                    affinity: vec!["request!=web-*".into()],
                    ..base()
                },
                true,
            ),
            (
                "more cpus",
                Image {
                    cpus: Some(2.0),
                    ..base()
                },
                false,
            ),
            (
                "more memory",
                Image {
                    memory: Some(512.0),
                    ..base()
                },
                false,
            ),
            (
                "disk",
                Image {
                    disk: Some(10.0),
                    ..base()
                },
                false,
            ),
            (
                "another port",
                image(1.0, 256.0, &["zone==a", "disk==ssd"], &[81]),
                false,
            ),
            (
                "another constraint",
                image(1.0, 256.0, &["zone==b", "disk==ssd"], &[80]),
                false,
            ),
            (
                "the constraints in another order",
                image(1.0, 256.0, &["disk==ssd", "zone==a"], &[80]),
                false,
            ),
            (
                "launched, with no privilege",
                Image {
                    launch: true,
                    volumes: vec!["data:/d".into()],
                    network_mode: "bridge".into(),
                    ..base()
                },
                true,
            ),
            (
                "a host path",
                Image {
                    volumes: vec!["/srv:/srv".into()],
                    ..base()
                },
                false,
            ),
            (
                "a host path, launched",
                Image {
                    volumes: vec!["/srv:/srv".into()],
                    launch: true,
                    ..base()
                },
                false,
            ),
            (
                "the host's network, launched",
                Image {
                    network_mode: "host".into(),
                    launch: true,
                    ..base()
                },
                false,
            ),
            (
                "another container's network",
                Image {
                    network_mode: "container:db".into(),
                    ..base()
                },
                false,
            ),
        ];
        let shape = Prepared::new(Request::from_image(base()).unwrap()).unwrap();
        for (how, i, same) in cases {
            let p = Prepared::new(Request::from_image(i).unwrap()).unwrap();
            assert_eq!(shape.shape().is_of(&p), same, "{how}");
            assert_eq!(shape.shape() == p.shape(), same, "{how}");
            if same {
                assert_eq!(shape.shape_hash(), p.shape_hash(), "{how}");
            }
        }
    }

    #[test]
    fn privileges_are_found_once_and_launch_tells_shapes_apart_only_with_them() {
        let with = |volumes: &[&str], network: &str, launch: bool| {
            Prepared::new(
                Request::from_image(Image {
                    volumes: volumes.iter().map(|v| v.to_string()).collect(),
                    network_mode: network.into(),
                    launch,
                    ..image(1.0, 1.0, &[], &[])
                })
                .unwrap(),
            )
            .unwrap()
        };
        assert!(
            with(&["data:/d", "/anon"], "", true)
                .privileges()
                .is_empty()
        );
        assert_eq!(
            with(&["/srv//x/:/x:ro"], "host", false).privileges(),
            [
                Privilege::HostPath {
                    path: "/srv/x".into(),
                    read_only: true
                },
                Privilege::HostNetwork
            ]
        );
        let (placed, launched) = (with(&["/srv:/s"], "", false), with(&["/srv:/s"], "", true));
        assert!(!placed.shape().is_of(&launched));
        assert!(!launched.shape().is_of(&placed));
        assert_ne!(placed.shape_hash(), launched.shape_hash());
        // A host path no engine could permit: the model refuses it, and so does this stage for
        // a request built without the model's checks.
        let mut r = request(1.0, 1.0, &[], &[]);
        r.image.volumes = vec!["/srv/../:/host".into()];
        assert!(matches!(Prepared::new(r), Err(SchedulerError::HostPath(_))));
    }

    #[test]
    fn affinity_and_volume_pins_make_a_plan_depend_on_placements() {
        let on = |id: &str| vec![("data".to_string(), EngineId::new(id).unwrap())];
        // (the request, its volume pins, whether a plan for it depends on other placements)
        let cases = [
            (with_affinity(&[], &[]), vec![], false),
            (
                with_affinity(&["zone==a", "disk==~ssd"], &[]),
                vec![],
                false,
            ),
            (with_affinity(&[], &["request!=web-*"]), vec![], true),
            (with_affinity(&[], &["image==~redis*"]), vec![], true),
            (with_affinity(&[], &[]), on("e1"), true),
        ];
        for (r, pins, depends) in cases {
            let p = Prepared::new(r).unwrap().pinned(pins.clone());
            assert_eq!(
                p.depends_on_placements(),
                depends,
                "{:?} {pins:?}",
                p.request.affinity
            );
        }
    }
}
