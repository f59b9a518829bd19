//! What a run offers: the engines it registers, the requests it submits, and etcd's own put rate
//! with the same number of clients (the ratio's denominator).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use etcd_client::{Client, Txn, TxnOp};

use super::BenchError;
use crate::keys::Keys;
use crate::model::EngineId;

/// The engines a run registers: the default mix, or with `--headroom H` sized to the run's
/// requests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fleet {
    pub(super) engines: usize,
    /// With `--headroom`: the cpus and memory (MB) of a size-1 engine.
    unit: Option<(f64, f64)>,
    /// A scenario's fleet: every engine of these cpus and memory (MB).
    equal: Option<(f64, f64)>,
}

/// Size weights of engine `i` under `--headroom`: 1 to 4, so the fleet stays heterogeneous.
const WEIGHTS: [usize; 4] = [1, 2, 3, 4];

impl Fleet {
    /// Without a headroom, engine `i` has 8 to 64 cpus and 16 to 128 GB (today's mix). With
    /// `headroom` H, the engines together hold H times what `requests` of [`request_json`]'s mix
    /// ask for, in cpus and in memory alike, each with the mix's memory per cpu, in sizes 1 to 4:
    /// 1.1 is a run where everything fits, 0.3 a saturated one.
    pub(super) fn new(engines: usize, requests: usize, headroom: Option<f64>) -> Fleet {
        let unit = headroom.map(|h| {
            let (cpus, memory) = (0..requests)
                .map(demand)
                .fold((0.0, 0.0), |(c, m), (dc, dm)| (c + dc, m + dm));
            let weights: usize = (0..engines).map(|i| WEIGHTS[i % 4]).sum();
            let weights = weights.max(1) as f64;
            (h * cpus / weights, h * memory / weights)
        });
        Fleet {
            engines,
            unit,
            equal: None,
        }
    }

    /// `engines` engines of `cpus` and `memory` (MB) each.
    pub(super) fn equal(engines: usize, cpus: f64, memory: f64) -> Fleet {
        Fleet {
            engines,
            unit: None,
            equal: Some((cpus, memory)),
        }
    }

    /// Engine `i`'s key value: in two regions, five zones and two disk kinds.
    pub(super) fn engine_json(&self, i: usize) -> String {
        let (cpus, memory) = match (self.equal, self.unit) {
            (Some(equal), _) => equal,
            // Rounded up to what the scheduler counts in: millicpus and whole MB.
            (None, Some((cpu, mem))) => {
                let w = WEIGHTS[i % 4] as f64;
                (
                    ((cpu * w * 1000.0).ceil() / 1000.0).max(0.001),
                    (mem * w).ceil().max(1.0),
                )
            }
            (None, None) => (
                [8.0, 16.0, 32.0, 64.0][i % 4],
                [16_384.0, 32_768.0, 65_536.0, 131_072.0][(i / 4) % 4],
            ),
        };
        let region = if i.is_multiple_of(2) {
            "eu-west"
        } else {
            "us-east"
        };
        let disk = if i.is_multiple_of(3) { "ssd" } else { "hdd" };
        let labels = [
            format!("\"zone=z{}\"", i % 5),
            format!("\"region={region}\""),
            format!("\"disk={disk}\""),
        ];
        format!(
            r#"{{"addr":"tcp://127.{}.{}.{}:2375","cpus":{cpus},"memory":{memory},"labels":[{}]}}"#,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            labels.join(",")
        )
    }
}

/// `engine-00042`.
pub(super) fn engine_id(i: usize) -> EngineId {
    EngineId::new(format!("engine-{i:05}")).expect("a valid engine id")
}

/// Registers the fleet's engines, 64 per transaction; returns each one's key revision.
pub(super) async fn register_engines(
    client: &Client,
    keys: &Keys,
    fleet: &Fleet,
) -> Result<Vec<(EngineId, i64)>, BenchError> {
    let mut kv = client.kv_client();
    let mut registered = Vec::with_capacity(fleet.engines);
    for chunk in (0..fleet.engines).collect::<Vec<_>>().chunks(64) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(keys.engine(&engine_id(*i)), fleet.engine_json(*i), None))
            .collect();
        let resp = kv.txn(Txn::new().and_then(ops)).await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        registered.extend(chunk.iter().map(|i| (engine_id(*i), rev)));
    }
    Ok(registered)
}

/// What request `n` of the mix asks for: cpus and memory (MB).
fn demand(n: usize) -> (f64, f64) {
    (
        [0.1, 0.25, 0.5, 1.0][n % 4],
        [128.0, 256.0, 512.0, 1024.0][(n / 4) % 4],
    )
}

/// A mix of service and batch requests, some with constraints and host ports.
pub fn request_json(n: usize) -> String {
    let (cpus, memory) = demand(n);
    let kind = if n % 5 < 3 { "service" } else { "batch" };
    let mut extra = String::new();
    match n % 20 {
        0 => extra.push_str(r#","labels":["zone==z1"]"#),
        1 => extra.push_str(r#","labels":["region==eu-*","disk==ssd"]"#),
        2 => extra.push_str(r#","labels":["zone!=z0","disk==~ssd"]"#),
        // A thousand ports, each asked for in turn: enough host ports for every fleet size.
        3 => extra.push_str(&format!(
            r#","bind_ports":[{{"port":{}}}]"#,
            8000 + (n / 20) % 1000
        )),
        _ => {}
    }
    format!(
        r#"{{"image":"bench/app:{}","cpus":{cpus},"memory":{memory},"type":"{kind}"{extra}}}"#,
        n % 100
    )
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What one measurement of etcd's own put rate found.
pub(super) struct RawPuts {
    pub(super) per_s: f64,
    /// The median put, from send to etcd's answer.
    pub(super) p50_ms: f64,
}

/// Puts `total` keys from `clients` concurrent tasks over a few connections.
pub(super) async fn raw_put_rate(
    conns: &[Client],
    prefix: &str,
    total: usize,
    clients: usize,
) -> Result<RawPuts, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let value = request_json(7);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut kv = conns[c % conns.len()].kv_client();
        let (next, prefix, value) = (next.clone(), prefix.to_string(), value.clone());
        tasks.spawn(async move {
            let mut took = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, etcd_client::Error>(took);
                }
                let sent = Instant::now();
                kv.put(format!("{prefix}{n:08}"), value.clone(), None)
                    .await?;
                took.push(sent.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    let mut took = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        took.extend(r.map_err(|e| BenchError::Setup(e.to_string()))??);
    }
    let per_s = total as f64 / start.elapsed().as_secs_f64();
    took.sort_by(f64::total_cmp);
    Ok(RawPuts {
        per_s,
        p50_ms: percentile(&took, 0.5),
    })
}
