//! Explanation: the reason given when no engine fits a request, e.g.
//! `0/12 engines fit: 7 insufficient memory, 5 constraint zone==a`. Each engine is counted
//! under the first filter it failed; the counts go largest first, equal ones in the order of
//! [`Rejection`]'s kinds; a scan made without the soft constraints says so at the end.
//!
//! It runs only once nothing fits, so it may allocate; it may not change what was decided,
//! only name it.

use std::collections::BTreeMap;

use super::select::Refused;
use super::{Prepared, Rejection};

/// No engine fits. The reason reads `0/12 engines fit: 7 insufficient memory, 5 constraint zone==a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub reason: String,
}

/// Why nothing fits `p` among `total` engines: the codes the scan counted, named.
pub(super) fn unschedulable(p: &Prepared, total: usize, refused: Refused) -> Unschedulable {
    let mut named: BTreeMap<Rejection, usize> = BTreeMap::new();
    for (code, count) in refused.rejections {
        *named.entry(p.rejection(code)).or_default() += count;
    }
    Unschedulable {
        reason: explain(total, named, refused.soft_dropped),
    }
}

/// The reason text: `0/{total} engines fit: ` and the counts, largest first.
fn explain(total: usize, rejections: BTreeMap<Rejection, usize>, dropped_soft: bool) -> String {
    if total == 0 {
        return "0/0 engines fit: no engines registered".to_string();
    }
    let mut counts: Vec<(Rejection, usize)> = rejections.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
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
    use crate::model::{EngineId, HostPort, Image, MemoryMb, Millicpus, Proto, Request};

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
            assert_eq!(explain(total, counts, dropped), want);
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
        for (rejections, soft_dropped, want) in cases {
            let refused = Refused {
                rejections,
                soft_dropped,
            };
            assert_eq!(unschedulable(&p, 4, refused).reason, want);
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
            "0/3 engines fit: 1 constraint zone==a, 1 insufficient cpus, 1 port 80/tcp in use"
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
