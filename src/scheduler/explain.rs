//! Explanation: the reason given when no engine fits a request, e.g.
//! `0/12 engines fit: 7 insufficient memory, 5 constraint zone==a`. Each engine is counted
//! under the first filter it failed; the counts go largest first, equal ones in the order of
//! [`Rejection`]'s kinds; a scan made without the soft constraints says so at the end.
//!
//! A count of engines short of cpus, memory or disk says by how much: `2 insufficient memory
//! (needs 65536MB, largest free 32256MB)`, the most any of those engines has free. The scan
//! keeps only counts; the sizes are found here, by checking the engines again, and only when a
//! resource ruled some out.
//!
//! It runs only once nothing fits, so it may allocate; it may not change what was decided,
//! only name it.

use std::collections::BTreeMap;

use super::feasible::{ClassMemo, Code};
use super::select::Refused;
use super::{EngineView, Prepared, Rejection};

/// No engine fits. The reason reads `0/12 engines fit: 7 insufficient memory, 5 constraint zone==a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub reason: String,
}

/// Why nothing fits `p` on `engines`: the codes the scan counted, named, with the sizes that
/// failed.
pub(super) fn unschedulable(
    p: &Prepared,
    engines: &[EngineView],
    refused: Refused,
) -> Unschedulable {
    let short = refused
        .rejections
        .iter()
        .any(|(code, _)| matches!(code, Code::Cpus | Code::Memory | Code::Disk));
    let sizes = if short {
        Sizes::of(p, engines, !refused.soft_dropped)
    } else {
        Sizes::default()
    };
    let mut named: BTreeMap<Rejection, usize> = BTreeMap::new();
    for (code, count) in refused.rejections {
        *named.entry(p.rejection(code)).or_default() += count;
    }
    Unschedulable {
        reason: explain(engines.len(), named, refused.soft_dropped, &sizes),
    }
}

/// What the request needs and the most any engine ruled out for lacking it has free, per
/// resource: `(needs, largest free)`, as the reason shows them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sizes {
    cpus: Option<(String, String)>,
    memory: Option<(String, String)>,
    disk: Option<(String, String)>,
}

impl Sizes {
    /// The engines checked again, as the scan that refused them did (`with_soft` as it was),
    /// each counted under the first filter it fails.
    fn of(p: &Prepared, engines: &[EngineView], with_soft: bool) -> Sizes {
        let (mut cpus, mut memory, mut disk) = (None, None, None);
        let mut memo = ClassMemo::default();
        for e in engines {
            match p.check(e, with_soft, &mut memo) {
                Err(Code::Cpus) => {
                    let free = e.cpus.0.saturating_sub(e.reserved_cpus.0);
                    cpus = cpus.max(Some(free));
                }
                Err(Code::Memory) => {
                    let free = e.memory.0.saturating_sub(e.reserved_memory.0);
                    memory = memory.max(Some(free));
                }
                Err(Code::Disk) => {
                    let free = e.disk.0.saturating_sub(e.reserved_disk.0);
                    disk = disk.max(Some(free));
                }
                _ => {}
            }
        }
        let r = &p.request;
        Sizes {
            cpus: cpus.map(|free| {
                (
                    format!("{} cpus", r.cpus),
                    format!("{} cpus", crate::model::Millicpus(free)),
                )
            }),
            memory: memory.map(|free| {
                (
                    r.memory.to_string(),
                    crate::model::MemoryMb(free).to_string(),
                )
            }),
            disk: disk.map(|free| (r.disk.to_string(), crate::model::DiskMb(free).to_string())),
        }
    }

    fn of_rejection(&self, r: &Rejection) -> Option<&(String, String)> {
        match r {
            Rejection::Cpus => self.cpus.as_ref(),
            Rejection::Memory => self.memory.as_ref(),
            Rejection::Disk => self.disk.as_ref(),
            _ => None,
        }
    }
}

/// The note after a count of engines short of a resource: ` (needs …, largest free …)`.
const SIZES_OPEN: &str = " (needs ";

/// Whether two unschedulable reasons say the same but for the sizes: a parked request whose
/// reason changed only in how much is free is not written again (the sizes are as of when its
/// decision was written; the counts say what rules the engines out).
pub fn same_but_sizes(a: &str, b: &str) -> bool {
    fn without_sizes(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find(SIZES_OPEN) {
            out.push_str(&rest[..at]);
            rest = rest[at..].find(')').map_or("", |end| &rest[at + end + 1..]);
        }
        out.push_str(rest);
        out
    }
    a == b || without_sizes(a) == without_sizes(b)
}

/// The reason text: `0/{total} engines fit: ` and the counts, largest first.
fn explain(
    total: usize,
    rejections: BTreeMap<Rejection, usize>,
    dropped_soft: bool,
    sizes: &Sizes,
) -> String {
    if total == 0 {
        return "0/0 engines fit: no engines registered".to_string();
    }
    let mut counts: Vec<(Rejection, usize)> = rejections.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let parts: Vec<String> = counts
        .iter()
        .map(|(r, n)| match sizes.of_rejection(r) {
            Some((needs, free)) => format!("{n} {r}{SIZES_OPEN}{needs}, largest free {free})"),
            None => format!("{n} {r}"),
        })
        .collect();
    let mut reason = format!("0/{total} engines fit: {}", parts.join(", "));
    if dropped_soft {
        reason.push_str(" (soft constraints ignored)");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::super::feasible::Code;
    use super::super::testing::{engine, image, place, request, tcp};
    use super::super::{EngineView, Strategy, schedule};
    use super::*;
    use crate::model::{DiskMb, EngineId, HostPort, Image, MemoryMb, Millicpus, Proto, Request};

    #[test]
    fn counts_go_largest_first_then_by_kind() {
        let volume = Rejection::Volume {
            name: "data".into(),
            engine: EngineId::new("e2").unwrap(),
        };
        let zone = |z: &str| Rejection::Constraint(format!("zone=={z}"));
        // (engines, rejections and their counts, soft constraints dropped, the reason)
        let cases = [
            (0, vec![], false, "0/0 engines fit: no engines registered"),
            (0, vec![], true, "0/0 engines fit: no engines registered"),
            (
                12,
                vec![(Rejection::Memory, 7), (zone("a"), 5)],
                false,
                "0/12 engines fit: 7 insufficient memory, 5 constraint zone==a",
            ),
            (
                6,
                vec![(Rejection::Memory, 2), (Rejection::Cpus, 2), (zone("a"), 2)],
                false,
                "0/6 engines fit: 2 constraint zone==a, 2 insufficient cpus, 2 insufficient memory",
            ),
            (
                2,
                vec![
                    (zone("b"), 1),
                    (Rejection::Constraint("disk==ssd".into()), 1),
                ],
                false,
                "0/2 engines fit: 1 constraint disk==ssd, 1 constraint zone==b",
            ),
            (
                6,
                vec![
                    (Rejection::Affinity("request!=web-*".into()), 1),
                    (volume, 1),
                    (Rejection::Port(tcp(80)), 1),
                    (Rejection::Disk, 1),
                    (Rejection::Unhealthy, 1),
                    (Rejection::Cordoned, 1),
                ],
                false,
                "0/6 engines fit: 1 cordoned, 1 unhealthy, 1 insufficient disk, 1 port 80/tcp in use, \
                 1 volume data is on engine e2, 1 affinity request!=web-*",
            ),
            (
                4,
                vec![
                    (
                        Rejection::GroupNoLabel {
                            over: "zone".into(),
                        },
                        1,
                    ),
                    (
                        Rejection::GroupSkew {
                            over: "zone".into(),
                            max_skew: 1,
                        },
                        1,
                    ),
                    (
                        Rejection::GroupFull {
                            group: "web".into(),
                            max: 2,
                        },
                        2,
                    ),
                ],
                false,
                "0/4 engines fit: 2 max 2 of group web per engine, \
                 1 spread over zone: skew would exceed 1, 1 no zone label (spread)",
            ),
            (
                3,
                vec![(Rejection::Cordoned, 1), (Rejection::Cpus, 2)],
                true,
                "0/3 engines fit: 2 insufficient cpus, 1 cordoned (soft constraints ignored)",
            ),
        ];
        for (total, rejections, dropped, want) in cases {
            let counts: BTreeMap<Rejection, usize> = rejections.into_iter().collect();
            assert_eq!(explain(total, counts, dropped, &Sizes::default()), want);
        }
    }

    #[test]
    fn each_code_is_named_from_the_request_it_was_counted_for() {
        let r = Request::from_image(Image {
            affinity: vec!["request!=web-*".into()],
            ..image(1.0, 1.0, &["zone==a", "disk==~ssd"], &[])
        })
        .unwrap();
        let e2 = EngineId::new("e2").unwrap();
        let p = Prepared::new(r).unwrap().pinned(vec![("data".into(), e2)]);
        // (codes counted, soft constraints dropped, the reason for four engines)
        let cases = [
            (
                vec![
                    (Code::Constraint(1), 2),
                    (Code::Constraint(0), 1),
                    (Code::Cpus, 1),
                ],
                false,
                "0/4 engines fit: 2 constraint disk==~ssd, 1 constraint zone==a, 1 insufficient cpus",
            ),
            (
                vec![(Code::Affinity(0), 3), (Code::Volume(0), 1)],
                true,
                "0/4 engines fit: 3 affinity request!=web-*, 1 volume data is on engine e2 \
                 (soft constraints ignored)",
            ),
        ];
        // Four engines, none short of anything: no sizes to show.
        let es: Vec<EngineView> = (0..4)
            .map(|i| engine(&format!("e{i}"), 8.0, 8192.0, &[]))
            .collect();
        for (rejections, soft_dropped, want) in cases {
            let refused = Refused {
                rejections,
                soft_dropped,
            };
            assert_eq!(unschedulable(&p, &es, refused).reason, want);
        }
    }

    #[test]
    fn a_resource_count_gives_the_need_and_the_most_free_among_the_engines_it_counts() {
        let mut es = vec![
            engine("small", 1.0, 65536.0, &[]),
            engine("a", 4.0, 16384.0, &[]),
            engine("b", 4.0, 32768.0, &[]),
            // The most memory free, but ruled out first by the constraint: not counted.
            engine("c", 4.0, 131072.0, &["zone=b"]),
        ];
        es[2].reserve(Millicpus(2500), MemoryMb(512), &[]);
        let r = request(1.5, 65536.0, &["zone!=b"], &[]);
        assert_eq!(
            place(&r, &mut es, Strategy::Spread).unwrap_err(),
            "0/4 engines fit: 2 insufficient memory (needs 65536MB, largest free 32256MB), \
             1 constraint zone!=b, 1 insufficient cpus (needs 1.5 cpus, largest free 1 cpus)"
        );
        // Disk likewise, and after soft constraints were dropped, the scan without them.
        let mut es = vec![engine("d", 4.0, 4096.0, &[])];
        es[0].disk = DiskMb(100);
        let r = Request::from_image(Image {
            disk: Some(200.0),
            ..image(1.0, 1.0, &["ssd==~yes"], &[])
        })
        .unwrap();
        assert_eq!(
            place(&r, &mut es, Strategy::Spread).unwrap_err(),
            "0/1 engines fit: 1 insufficient disk (needs 200MB, largest free 100MB) \
             (soft constraints ignored)"
        );
    }

    #[test]
    fn reasons_that_differ_only_in_sizes_are_the_same() {
        let a = "0/2 engines fit: 2 insufficient memory (needs 64MB, largest free 31MB)";
        // (another reason, the same but for sizes)
        let cases = [
            (a, true),
            (
                "0/2 engines fit: 2 insufficient memory (needs 64MB, largest free 12MB)",
                true,
            ),
            ("0/2 engines fit: 2 insufficient memory", true),
            (
                "0/3 engines fit: 3 insufficient memory (needs 64MB, largest free 31MB)",
                false,
            ),
            (
                "0/2 engines fit: 2 insufficient cpus (needs 1 cpus, largest free 0 cpus)",
                false,
            ),
        ];
        for (b, same) in cases {
            assert_eq!(same_but_sizes(a, b), same, "{b}");
            assert_eq!(same_but_sizes(b, a), same, "{b}");
        }
    }

    #[test]
    fn unschedulable_reason_counts_every_filter() {
        let mut es = vec![
            engine("a", 1.0, 100.0, &["zone=a"]),
            engine("b", 8.0, 100.0, &["zone=a"]),
            engine("c", 8.0, 100_000.0, &["zone=b"]),
        ];
        es[1].reserve(
            Millicpus(0),
            MemoryMb(0),
            &[HostPort {
                proto: Proto::Tcp,
                port: 80,
            }],
        );
        let r = request(2.0, 50.0, &["zone==a"], &[80]);
        let err = place(&r, &mut es, Strategy::Spread).unwrap_err();
        assert_eq!(
            err,
            "0/3 engines fit: 1 constraint zone==a, \
             1 insufficient cpus (needs 2 cpus, largest free 1 cpus), 1 port 80/tcp in use"
        );
        let none: Vec<EngineView> = vec![];
        let p = Prepared::new(r.clone()).unwrap();
        assert_eq!(
            schedule(&p, &none, Strategy::Spread, 0, usize::MAX)
                .unwrap_err()
                .reason,
            "0/0 engines fit: no engines registered"
        );
    }
}
