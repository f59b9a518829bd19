//! `citadel bench --quality`: how well the strategies place, in-process and pure, through the
//! scheduler itself. No etcd, no clock: a seeded generator makes each run the same.
//!
//! Two fleets, each with one sequence of mixed requests submitted one at a time:
//!
//! - **binpack**: engines in use after placing every request with `binpack`, beside first-fit
//!   decreasing (the requests sorted largest first, each on the first engine that fits, the
//!   largest engines first) and a lower bound (the fewest of the largest engines whose cpus and
//!   memory together cover the demand).
//! - **spread**: after placing the same sequence with `spread`, the max−min spread across the
//!   engines of the reserved cpu fraction and of the memory fraction.

use serde::Serialize;

use crate::model::{EngineId, EngineSpec, Held, Image, Request, RequestId};
use crate::scheduler::{self, EngineView, Prepared, Strategy, splitmix};

/// One fleet's shape: how many engines, their cpus and memory ranges, and the requests.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub name: &'static str,
    pub engines: usize,
    pub cpus: (u64, u64),
    pub memory_gb: (u64, u64),
    pub requests: usize,
}

/// The fleets of issue 16: 50 engines of 8–16 cpus and 16–48 GB, and a wider one of 2–32
/// cpus and 4–64 GB; 300 requests each.
pub const FLEETS: [Fleet; 2] = [
    Fleet {
        name: "heterogeneous",
        engines: 50,
        cpus: (8, 16),
        memory_gb: (16, 48),
        requests: 300,
    },
    Fleet {
        name: "wide",
        engines: 50,
        cpus: (2, 32),
        memory_gb: (4, 64),
        requests: 300,
    },
];

/// The figures for one fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetQuality {
    pub fleet: String,
    pub engines: usize,
    pub requests: usize,
    pub binpack_engines_used: usize,
    pub ffd_engines_used: usize,
    pub lower_bound: usize,
    pub binpack_over_ffd: f64,
    pub binpack_unplaced: usize,
    pub spread_cpu_range: f64,
    pub spread_memory_range: f64,
    pub spread_unplaced: usize,
}

/// A small deterministic generator (SplitMix64's sequence).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick<T: Copy>(&mut self, of: &[T]) -> T {
        of[(self.next() % of.len() as u64) as usize]
    }
}

fn engines(f: &Fleet, rng: &mut Rng) -> Vec<EngineView> {
    (0..f.engines)
        .filter_map(|i| {
            let id = EngineId::new(format!("e{i:03}")).ok()?;
            let raw = serde_json::json!({
                "addr": format!("tcp://e{i:03}:2375"),
                "cpus": rng.range(f.cpus.0, f.cpus.1),
                "memory": rng.range(f.memory_gb.0, f.memory_gb.1) * 1024,
            });
            let spec = EngineSpec::parse(&id, raw.to_string().as_bytes()).ok()?;
            Some(EngineView::new(&spec, 1.0))
        })
        .collect()
}

/// Mixed requests: mostly small services, some large, cpu-heavy and memory-heavy ones.
fn requests(f: &Fleet, rng: &mut Rng) -> Vec<Request> {
    const SHAPES: [(f64, f64); 8] = [
        (0.25, 256.0),
        (0.25, 1024.0),
        (0.5, 512.0),
        (0.5, 2048.0),
        (1.0, 1024.0),
        (1.0, 4096.0),
        (2.0, 2048.0),
        (2.0, 6144.0),
    ];
    (0..f.requests)
        .filter_map(|_| {
            let (cpus, memory) = rng.pick(&SHAPES);
            Request::from_image(Image {
                name: "quality".into(),
                cpus: Some(cpus),
                memory: Some(memory),
                kind: "service".into(),
                ..Image::default()
            })
            .ok()
        })
        .collect()
}

/// Places each request in turn with `strategy`, through the scheduler, recording each placement
/// on `engines`; returns containers per engine and how many found no engine.
pub fn place_all(
    requests: &[Request],
    engines: &mut [EngineView],
    strategy: Strategy,
) -> (Vec<usize>, usize) {
    let sample = scheduler::sample_size(engines.len());
    let mut count = vec![0usize; engines.len()];
    let mut unplaced = 0;
    for (n, r) in requests.iter().enumerate() {
        let Ok(p) = Prepared::new(r.clone()) else {
            unplaced += 1;
            continue;
        };
        let seed = crate::model::fnv1a(&format!("q-{n}"));
        match scheduler::schedule(&p, engines, strategy, seed, sample) {
            Ok(plan) => {
                engines[plan.engine].hold(&id(n), &Held::of(r));
                count[plan.engine] += 1;
            }
            Err(_) => unplaced += 1,
        }
    }
    (count, unplaced)
}

fn id(n: usize) -> RequestId {
    RequestId::from_key_segment(&format!("q-{n}")).unwrap_or_else(|| unreachable!())
}

/// A request's size for sorting: its larger share of an average engine.
fn size(r: &Request, avg_cpus: f64, avg_memory: f64) -> f64 {
    (r.cpus.0 as f64 / avg_cpus).max(r.memory.0 as f64 / avg_memory)
}

/// First-fit decreasing: requests largest first, engines largest first. Engines in use.
fn ffd(requests: &[Request], engines: &[EngineView]) -> usize {
    let n = engines.len().max(1) as f64;
    let avg_c = engines.iter().map(|e| e.cpus.0 as f64).sum::<f64>() / n;
    let avg_m = engines.iter().map(|e| e.memory.0 as f64).sum::<f64>() / n;
    let mut sorted: Vec<&Request> = requests.iter().collect();
    sorted.sort_by(|a, b| size(b, avg_c, avg_m).total_cmp(&size(a, avg_c, avg_m)));
    let mut es: Vec<EngineView> = engines.to_vec();
    es.sort_by(|a, b| {
        let big = |e: &EngineView| e.cpus.0 as f64 / avg_c + e.memory.0 as f64 / avg_m;
        big(b).total_cmp(&big(a))
    });
    let mut used = vec![false; es.len()];
    for r in sorted {
        if let Some(i) = es
            .iter()
            .position(|e| scheduler::fits_resources(r, e).is_ok())
        {
            es[i].reserve(r.cpus, r.memory, &r.ports);
            used[i] = true;
        }
    }
    used.iter().filter(|u| **u).count()
}

/// The fewest engines that could hold the demand: the largest by cpus until the cpus are
/// covered, the same by memory, whichever needs more.
fn lower_bound(requests: &[Request], engines: &[EngineView]) -> usize {
    let need = |demand: u64, mut caps: Vec<u64>| {
        caps.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum = 0u64;
        for (k, c) in caps.iter().enumerate() {
            if sum >= demand {
                return k;
            }
            sum += c;
        }
        caps.len()
    };
    let cpus: u64 = requests.iter().map(|r| r.cpus.0).sum();
    let memory: u64 = requests.iter().map(|r| r.memory.0).sum();
    need(cpus, engines.iter().map(|e| e.cpus.0).collect())
        .max(need(memory, engines.iter().map(|e| e.memory.0).collect()))
}

/// max − min of the reserved cpu and memory fractions across the engines.
fn ranges(engines: &[EngineView]) -> (f64, f64) {
    let frac = |used: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            used as f64 / cap as f64
        }
    };
    let range = |xs: Vec<f64>| {
        let max = xs.iter().copied().fold(f64::MIN, f64::max);
        let min = xs.iter().copied().fold(f64::MAX, f64::min);
        if xs.is_empty() { 0.0 } else { max - min }
    };
    (
        range(
            engines
                .iter()
                .map(|e| frac(e.reserved_cpus.0, e.cpus.0))
                .collect(),
        ),
        range(
            engines
                .iter()
                .map(|e| frac(e.reserved_memory.0, e.memory.0))
                .collect(),
        ),
    )
}

/// One fleet's engines and its sequence of requests, as the generator seeded by `seed` draws
/// them.
pub fn draw(f: &Fleet, seed: u64) -> (Vec<EngineView>, Vec<Request>) {
    let mut rng = Rng(seed);
    let fleet = engines(f, &mut rng);
    let reqs = requests(f, &mut rng);
    (fleet, reqs)
}

/// Measures one fleet with the generator seeded by `seed`.
pub fn measure(f: &Fleet, seed: u64) -> FleetQuality {
    let (fleet, reqs) = draw(f, seed);
    let mut binpacked = fleet.clone();
    let (count, binpack_unplaced) = place_all(&reqs, &mut binpacked, Strategy::Binpack);
    let used = count.iter().filter(|c| **c > 0).count();
    let ffd_used = ffd(&reqs, &fleet);
    let mut spread = fleet.clone();
    let (_, spread_unplaced) = place_all(&reqs, &mut spread, Strategy::Spread);
    let (spread_cpu_range, spread_memory_range) = ranges(&spread);
    FleetQuality {
        fleet: f.name.to_string(),
        engines: fleet.len(),
        requests: reqs.len(),
        binpack_engines_used: used,
        ffd_engines_used: ffd_used,
        lower_bound: lower_bound(&reqs, &fleet),
        binpack_over_ffd: used as f64 / ffd_used.max(1) as f64,
        binpack_unplaced,
        spread_cpu_range,
        spread_memory_range,
        spread_unplaced,
    }
}

/// Both fleets, with the default seed.
pub fn measure_all(seed: u64) -> Vec<FleetQuality> {
    FLEETS.iter().map(|f| measure(f, seed)).collect()
}

/// The figures as a table for people.
pub fn table(rows: &[FleetQuality]) -> String {
    let mut out = String::from(
        "fleet          engines requests  binpack  ffd  bound  binpack/ffd  spread cpu range  spread mem range\n",
    );
    for q in rows {
        out.push_str(&format!(
            "{:<14} {:>7} {:>8} {:>8} {:>4} {:>6} {:>12.2} {:>17.3} {:>17.3}\n",
            q.fleet,
            q.engines,
            q.requests,
            q.binpack_engines_used,
            q.ffd_engines_used,
            q.lower_bound,
            q.binpack_over_ffd,
            q.spread_cpu_range,
            q.spread_memory_range
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_measures_the_same() {
        let a = measure_all(7);
        let b = measure_all(7);
        println!("{}", table(&measure_all(16)));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        for q in &a {
            assert!(q.lower_bound <= q.ffd_engines_used, "{q:?}");
            assert!(q.lower_bound <= q.binpack_engines_used, "{q:?}");
        }
    }
}
