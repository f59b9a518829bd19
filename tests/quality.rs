//! Placement quality as a property (issue 16): on the fleets and request sequences `citadel
//! bench --quality` draws, binpack is never worse than first-fit with the engines in id order.
//! Pure and in-process, through the public scheduler: no etcd.

use citadel::bench::quality::{FLEETS, Fleet, draw, place_all};
use citadel::model::Request;
use citadel::scheduler::{EngineView, Strategy, fits_resources};
use proptest::prelude::{ProptestConfig, any, prop_assert, proptest};

/// First-fit with the engines in id order: engines in use and requests left unplaced.
fn first_fit(requests: &[Request], engines: &[EngineView]) -> (usize, usize) {
    let mut es = engines.to_vec();
    let mut used = vec![false; es.len()];
    let mut unplaced = 0;
    for r in requests {
        match es.iter().position(|e| fits_resources(r, e).is_ok()) {
            Some(i) => {
                es[i].reserve(r.cpus, r.memory, &r.ports);
                used[i] = true;
            }
            None => unplaced += 1,
        }
    }
    (used.iter().filter(|u| **u).count(), unplaced)
}

/// Engines in use and requests unplaced, by binpack and by first-fit in id order, on one
/// fleet drawn with `seed`.
fn binpack_and_first_fit(f: &Fleet, seed: u64) -> ((usize, usize), (usize, usize)) {
    let (fleet, reqs) = draw(f, seed);
    let mut packed = fleet.clone();
    let (count, unplaced) = place_all(&reqs, &mut packed, Strategy::Binpack);
    (
        (count.iter().filter(|c| **c > 0).count(), unplaced),
        first_fit(&reqs, &fleet),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// On heterogeneous fleets and mixed sequences drawn as `bench --quality` draws them,
    /// binpack never uses more engines than first-fit with the engines in id order, nor places
    /// fewer requests. (Over every sequence this holds for no best-fit rule: best fit and first
    /// fit are incomparable instance by instance, and a homogeneous fleet of 4 engines with 15
    /// requests is enough to show it. Measured here over the workloads it is chosen for.)
    #[test]
    fn binpack_is_never_worse_than_first_fit_in_id_order(seed in any::<u64>()) {
        for fleet in FLEETS {
            let (binpack, first_fit) = binpack_and_first_fit(&fleet, seed);
            prop_assert!(binpack.1 <= first_fit.1, "seed {seed}: binpack left {} unplaced, first-fit {}", binpack.1, first_fit.1);
            prop_assert!(
                binpack.0 <= first_fit.0,
                "seed {seed}, {} fleet: binpack used {} engines, first-fit {}", fleet.name, binpack.0, first_fit.0
            );
        }
    }
}
