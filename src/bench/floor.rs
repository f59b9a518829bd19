//! The contract's floor (`--baseline floor`): the least any client can do while it writes one
//! decision key per request with the leader's guards, measured in the same run as citadel.
//!
//! A minimal writer, in the bench's process, under a prefix of its own and with as many engines:
//! it watches `requests/`, and for each request writes a decision of the same shape and size as
//! the leader's (the request's echo, the engine's `resource`, a reservation, a reason), choosing
//! engines round robin instead of scheduling. It batches as the leader does: one decision less
//! than `--max-txn-ops` per transaction, each guarded by the fence compare on an election key
//! of its own and by one compare per engine placed on (one over the engines prefix when the
//! cluster is no bigger than the batch), up to 8 transactions in flight, and only whole
//! transactions while one is. It parses nothing, schedules nothing, keeps no cache.
//!
//! It runs as a leader would: on a thread of its own, at the controllers' `--nice`, with its
//! own connection and runtime, so it does not share the submitters' scheduler. It runs twice,
//! right before citadel's phase and right after, each time under a fresh prefix, and
//! `floor_per_s` is the mean: this machine drifts within a run, and both sides see the same
//! drift. Its decisions are timed by the same watch as citadel's, so the two rates are read
//! alike, and `ratio_to_floor` is their quotient.

use std::collections::{BTreeSet, VecDeque};

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::phase::{self, Seen};
use super::workload::{Fleet, register_engines};
use super::{BenchArgs, BenchError};
use crate::controller::lower_priority;
use crate::keys::Keys;
use crate::model::{
    Decision, Echo, Engine, EngineId, RequestId, Reservation, Resource, Status, now_rfc3339,
};
use crate::store::fence::Fence;
use crate::store::{self, EtcdConfig};

/// Transactions in flight at once, as the leader keeps them.
const IN_FLIGHT: usize = 8;

/// One engine as the writer names it in a decision, with its key's revision for the compare.
struct Target {
    id: EngineId,
    revision: i64,
    resource: Resource,
}

/// Runs one floor phase under `<prefix>-floor-<n>`: the writer on a thread of its own at the
/// controllers' `--nice`, with a connection of its own, while this task submits and watches.
pub(super) async fn run(
    etcd: &EtcdConfig,
    conns: &[Client],
    prefix: &str,
    n: usize,
    args: &BenchArgs,
) -> Result<Seen, BenchError> {
    let keys =
        Keys::new(&format!("{prefix}-floor-{n}")).map_err(|e| BenchError::Setup(e.to_string()))?;
    let client = conns[0].clone();
    let fleet = Fleet::new(args.engines, args.requests, args.headroom);
    let targets: Vec<Target> = register_engines(&client, &keys, &fleet)
        .await?
        .into_iter()
        .enumerate()
        .map(|(i, (id, revision))| {
            let wire: Engine = serde_json::from_str(&fleet.engine_json(i)).unwrap_or_default();
            let resource = Resource {
                id: id.to_string(),
                addr: wire.addr,
                total_cpus: wire.cpus,
                total_memory: wire.memory,
            };
            Target {
                id,
                revision,
                resource,
            }
        })
        .collect();
    // An election key of its own, for the fence compare every transaction carries. Its
    // revision is also where the writer's watch starts: no request can come before it.
    let key = format!("{}/floor", keys.leader());
    let put = client.kv_client().put(key.as_str(), "{}", None).await?;
    let rev = put.header().map_or(0, |h| h.revision());
    let writer = Writer {
        keys: keys.clone(),
        fence: Fence {
            key: key.into_bytes(),
            rev,
        },
        targets,
        whole: (args.max_txn_ops as usize).saturating_sub(1).max(1),
    };
    let (stop, stopped) = watch::channel(false);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let writing = writer.start(etcd.clone(), args.nice, rev + 1, stopped, ready_tx)?;
    // The writer's watch is open before the first request is put.
    let ready = ready.await.unwrap_or(false);
    let seen = if ready {
        phase::run(etcd, conns, &keys, args, phase::Batch::PLAIN, None, None).await
    } else {
        Err(BenchError::Setup(
            "the floor's writer could not start".into(),
        ))
    };
    stop.send_replace(true);
    match tokio::task::spawn_blocking(move || writing.join()).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("bench: the floor's writer stopped: {e}"),
        Ok(Err(_)) | Err(_) => eprintln!("bench: the floor's writer panicked"),
    }
    seen
}

struct Writer {
    keys: Keys,
    fence: Fence,
    targets: Vec<Target>,
    /// Decisions a transaction holds: etcd's `--max-txn-ops` less the fence.
    whole: usize,
}

impl Writer {
    /// Starts the writer on a thread of its own, with the controllers' priority (as a leader
    /// would have) and its own current-thread runtime and connection: it shares neither cpu
    /// priority nor a scheduler with the submitters it answers.
    fn start(
        self,
        etcd: EtcdConfig,
        nice: i32,
        from: i64,
        stop: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<bool>,
    ) -> Result<std::thread::JoinHandle<Result<(), BenchError>>, BenchError> {
        std::thread::Builder::new()
            .name("citadel-floor".into())
            .spawn(move || {
                if let Err(e) = lower_priority(nice) {
                    eprintln!("bench: the floor's writer keeps its priority: {e}");
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(false);
                        return Err(BenchError::Setup(format!("floor runtime: {e}")));
                    }
                };
                rt.block_on(self.run(etcd, from, stop, ready))
            })
            .map_err(|e| BenchError::Setup(format!("floor thread: {e}")))
    }

    async fn run(
        self,
        etcd: EtcdConfig,
        from: i64,
        mut stop: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<bool>,
    ) -> Result<(), BenchError> {
        let opened = async {
            let client = store::connect(&etcd, Some(Duration::from_secs(10))).await?;
            let stream = client
                .watch_client()
                .max_decoding_message_size(store::MAX_RESPONSE_BYTES)
                .watch(
                    self.keys.requests(),
                    Some(WatchOptions::new().with_prefix().with_start_revision(from)),
                )
                .await?;
            Ok::<_, BenchError>((client, stream))
        }
        .await;
        let _ = ready.send(opened.is_ok());
        let (client, mut stream) = opened?;
        let mut waiting: VecDeque<(String, i64, Vec<u8>)> = VecDeque::new();
        let mut in_flight = JoinSet::new();
        let mut next = 0usize;
        let requests = self.keys.requests();
        loop {
            // While one is in flight, only whole transactions go: fewer, fuller ones cost etcd
            // less, as they do the leader.
            while in_flight.len() < IN_FLIGHT
                && (waiting.len() >= self.whole || (in_flight.is_empty() && !waiting.is_empty()))
            {
                let take = waiting.len().min(self.whole);
                let txn = self.txn(waiting.drain(..take), &mut next);
                let mut kv = client.kv_client();
                in_flight.spawn(async move { kv.txn(txn).await });
            }
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            if ev.event_type() != etcd_client::EventType::Put {
                                continue;
                            }
                            let id = String::from_utf8_lossy(kv.key());
                            let Some(id) = id.strip_prefix(requests.as_str()) else { continue };
                            waiting.push_back((id.to_string(), kv.mod_revision(), kv.value().to_vec()));
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e.into()),
                },
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done {
                        Ok(Ok(r)) if !r.succeeded() => eprintln!("bench: a floor transaction was refused"),
                        Ok(Err(e)) => eprintln!("bench: a floor transaction failed: {e}"),
                        _ => {}
                    }
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// One transaction: a decision per request, the fence, and the engine compares.
    fn txn(&self, items: impl Iterator<Item = (String, i64, Vec<u8>)>, next: &mut usize) -> Txn {
        let mut ops = Vec::new();
        let mut placed_on = BTreeSet::new();
        let decided_at = now_rfc3339();
        for (id, revision, raw) in items {
            let i = *next % self.targets.len().max(1);
            *next += 1;
            let Some(target) = self.targets.get(i) else {
                continue;
            };
            placed_on.insert(i);
            // The image the leader records in each reservation, as long as the mix's own.
            let n: usize = id
                .strip_prefix('r')
                .and_then(|n| n.parse().ok())
                .unwrap_or_default();
            let decision = Decision {
                container: Echo::of(&raw),
                resource: Some(target.resource.clone()),
                reservation: Some(Reservation {
                    cpus: 0.25,
                    memory: 256.0,
                    disk: 0.0,
                    ports: Vec::new(),
                    image: format!("bench/app:{}", n % 100),
                    priority: 0,
                    preemptible: true,
                    group: String::new(),
                    disruption_budget: None,
                }),
                status: Status::Placed,
                reason: format!("spread chose {}", target.id),
                scheduler: "spread".into(),
                alternatives: Vec::new(),
                request_revision: revision,
                decided_at: decided_at.clone(),
                decided_by: "floor".into(),
                run: None,
                preempted_by: String::new(),
                preempted: Vec::new(),
            };
            let Some(id) = RequestId::from_key_segment(&id) else {
                continue;
            };
            let Ok(value) = serde_json::to_vec(&decision) else {
                continue; // never written empty; the run reports it undecided
            };
            ops.push(TxnOp::put(self.keys.decision(&id), value, None));
        }
        let mut compares = vec![self.fence.compare()];
        if self.targets.len() <= placed_on.len() {
            let newest = self.targets.iter().map(|t| t.revision).max().unwrap_or(0);
            compares.push(
                Compare::mod_revision(self.keys.engines(), CompareOp::Less, newest + 1)
                    .with_prefix(),
            );
        } else {
            compares.extend(placed_on.into_iter().filter_map(|i| {
                let t = self.targets.get(i)?;
                Some(Compare::mod_revision(
                    self.keys.engine(&t.id),
                    CompareOp::Equal,
                    t.revision,
                ))
            }));
        }
        Txn::new().when(compares).and_then(ops)
    }
}
