//! Liveness: one lease for the agent's lifetime, the health key on it, and live usage.
//!
//! The health key names who keeps it ([`AgentStamp`]). An agent that finds it on a live lease
//! of another instance adopts that lease if the stamp is its crashed predecessor's (same host,
//! and its pid no longer runs citadel, or is our own pid in a new namespace), so that a quick
//! restart never makes the engine count as lost; any other live stamp is a second agent, and
//! this one is refused. A health key without a stamp (a leader's `--docker` polling) is simply
//! replaced.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;

use crate::docker::{self, EngineUsage};
use crate::model::{Health, now_rfc3339};
use crate::shutdown::stopping;
use crate::store;

use super::*;

/// How far usage must move before it is written sooner than `--report-every`.
const CPUS_THRESHOLD: f64 = 0.25;
const MEMORY_SHARE_THRESHOLD: f64 = 0.05;

/// Whether `pid` is a live process running the same program as this one (a zombie, or a pid
/// reused by another program, is not).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z' | 'X' | 'x') | None) {
        return false;
    }
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    comm(&pid.to_string()) == comm("self")
}

impl Agent {
    fn health(&self, usage: Option<&EngineUsage>) -> Health {
        Health {
            engine: self.engine().to_string(),
            last_contact: now_rfc3339(),
            cpus_used: usage.map_or(0.0, |u| u.cpus),
            memory_used_mb: usage.map_or(0.0, |u| u.memory_mb),
            containers_running: usage.map_or(0, |u| u.running),
            checked_by: format!("agent@{}", self.cfg.host),
            agent: Some(self.stamp.clone()),
        }
    }

    /// One usage sample of the engine, or `None` (logged) if Docker did not give one.
    pub(super) async fn sample(&self) -> Option<EngineUsage> {
        match tokio::time::timeout(DOCKER_TIMEOUT, docker::usage(&self.docker)).await {
            Ok(Ok(u)) => Some(u),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot sample the engine's usage");
                None
            }
            Err(_) => {
                tracing::warn!("the engine's usage took over {DOCKER_TIMEOUT:?}");
                None
            }
        }
    }

    /// Puts the health key on our lease, deciding first whose it is (see the module comment).
    /// Keeps the lease we hold if it is alive, else adopts a predecessor's or grants one.
    pub(super) async fn claim(&self, usage: Option<&EngineUsage>) -> Result<(), AgentError> {
        let key = self.cfg.keys.health(&self.cfg.engine);
        let ttl = i64::try_from(self.cfg.ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        let mut granted: Option<i64> = None;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let kv = match self.read(&key).await {
                Ok(kv) => kv,
                Err(e) if tries < 100 => {
                    tracing::warn!(error = %e, "cannot read the health key; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut adopt = None;
            let guard = match &kv {
                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
                Some((rev, lease, value)) => {
                    let stamp = serde_json::from_slice::<Health>(value)
                        .ok()
                        .and_then(|h| h.agent);
                    if *lease != 0
                        && self.lease_alive(*lease).await
                        && let Some(s) = stamp
                    {
                        if s.instance == self.stamp.instance {
                            adopt = Some(*lease); // ours already
                        } else if s.host == self.cfg.host
                            && (s.pid == self.stamp.pid || !process_alive(s.pid))
                        {
                            tracing::info!(
                                pid = s.pid,
                                lease = format!("{lease:x}"),
                                "adopting the lease of this host's previous agent"
                            );
                            adopt = Some(*lease);
                        } else {
                            if let Some(g) = granted {
                                self.revoke(g).await;
                            }
                            return Err(AgentError::Refused(format!(
                                "engine {} is already run by an agent on host {} (pid {}); stop \
                                 that agent, or wait up to {} s for its lease to lapse",
                                self.engine(),
                                s.host,
                                s.pid,
                                ttl
                            )));
                        }
                    }
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)
                }
            };
            let lease = match adopt {
                Some(l) => l,
                None => {
                    let current = self.lease();
                    if current != 0 && self.lease_alive(current).await {
                        current
                    } else if let Some(g) = granted {
                        g
                    } else {
                        match store::timed(self.client.lease_client().grant(ttl, None)).await {
                            Ok(r) => {
                                granted = Some(r.id());
                                r.id()
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot grant a lease; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                continue;
                            }
                        }
                    }
                }
            };
            let value = serde_json::to_vec(&self.health(usage))
                .map_err(|e| AgentError::Task(format!("encode the health: {e}")))?;
            let txn = Txn::new().when(vec![guard]).and_then(vec![TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
            match store::timed(self.client.kv_client().txn(txn)).await {
                Ok(r) if r.succeeded() => {
                    if let Some(g) = granted.filter(|g| *g != lease) {
                        self.revoke(g).await;
                    }
                    self.lease.store(lease, Ordering::SeqCst);
                    *lock(&self.answered) = Instant::now();
                    tracing::info!(engine = %self.cfg.engine, lease = format!("{lease:x}"),
                        "health key held");
                    return Ok(());
                }
                Ok(_) => tracing::debug!("the health key changed under us; deciding again"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the health key; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// A key's mod revision, lease and value, or `None`.
    async fn read(&self, key: &str) -> Result<Option<(i64, i64, Vec<u8>)>, AgentError> {
        let got = store::timed(self.client.kv_client().get(key, None)).await?;
        Ok(got
            .kvs()
            .first()
            .map(|kv| (kv.mod_revision(), kv.lease(), kv.value().to_vec())))
    }

    async fn lease_alive(&self, lease: i64) -> bool {
        match store::timed(self.client.lease_client().time_to_live(lease, None)).await {
            Ok(r) => r.ttl() > 0,
            Err(_) => false,
        }
    }

    async fn revoke(&self, lease: i64) {
        if let Err(e) = store::timed(self.client.lease_client().revoke(lease)).await {
            tracing::debug!(error = %e, "cannot revoke an unused lease; it lapses");
        }
    }

    /// Keeps the lease alive (every TTL/4), and watches the cut-off deadline: no keepalive
    /// answered for [`AgentConfig::cut_off_after`] cuts the agent off (cutoff.rs); an answer
    /// again, or a lease that lapsed meanwhile re-granted and the health re-claimed, ends it.
    pub(super) async fn liveness_loop(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let period = self.cfg.ttl / 4;
        let wait = period.min(Duration::from_secs(2));
        let check = Duration::from_millis(250);
        let mut keeper = None;
        let mut next = Instant::now() + period;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(check) => {}
            }
            if stopping(&shutdown) {
                return Ok(());
            }
            let silent = lock(&self.answered).elapsed();
            if silent > self.cfg.cut_off_after() && !self.is_cut() {
                self.cut_off(silent).await;
            }
            if Instant::now() < next {
                continue;
            }
            next = Instant::now() + period;
            let lease = self.lease();
            if keeper.is_none() {
                match tokio::time::timeout(wait, self.client.lease_client().keep_alive(lease)).await
                {
                    Ok(Ok(k)) => keeper = Some(k),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %store::short(&e), "cannot open the keepalive stream");
                        if self.lease_lapsed(lease).await {
                            self.lapsed(lease).await?;
                        }
                        continue;
                    }
                    Err(_) => continue,
                }
            }
            let Some((k, stream)) = keeper.as_mut() else {
                continue;
            };
            let sent = Instant::now();
            let answer = tokio::time::timeout(wait, async {
                k.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    *lock(&self.answered) = sent;
                    if self.is_cut() {
                        tracing::info!("etcd answers again; the lease is alive");
                        self.reconnected();
                    }
                }
                Ok(Ok(Some(_))) => {
                    keeper = None;
                    self.lapsed(lease).await?;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    keeper = None;
                    if self.lease_lapsed(lease).await {
                        self.lapsed(lease).await?;
                    }
                }
            }
        }
    }

    /// Whether etcd says the lease is gone (not: whether etcd answers).
    async fn lease_lapsed(&self, lease: i64) -> bool {
        store::timed(self.client.lease_client().time_to_live(lease, None))
            .await
            .is_ok_and(|r| r.ttl() <= 0)
    }

    /// The lease lapsed: past its TTL, so past the cut-off, whose stops come first; then a new
    /// lease and the health key claimed again.
    async fn lapsed(&self, lease: i64) -> Result<(), AgentError> {
        tracing::warn!(lease = format!("{lease:x}"), "the lease lapsed");
        if !self.is_cut() {
            let silent = lock(&self.answered).elapsed();
            self.cut_off(silent).await;
        }
        let usage = self.sample().await;
        self.claim(usage.as_ref()).await?;
        self.reconnected();
        Ok(())
    }

    /// After a cut-off: reads the assignments afresh and reconciles.
    fn reconnected(&self) {
        self.cut.send_replace(false);
        self.relist.notify_one();
        self.poke.notify_one();
    }

    /// Samples usage every `--sample-every` and writes it when it moved past a threshold (and
    /// not sooner than `--report-min-interval` after the last write), or `--report-every`
    /// passed.
    pub(super) async fn usage_loop(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
        first: Option<EngineUsage>,
    ) -> Result<(), AgentError> {
        let mut last = first.unwrap_or_default();
        let mut written = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(self.cfg.sample_every) => {}
            }
            if stopping(&shutdown) {
                return Ok(());
            }
            if self.is_cut() {
                continue;
            }
            let Some(now) = self.sample().await else {
                continue;
            };
            let changed = (now.cpus - last.cpus).abs() > CPUS_THRESHOLD
                || (now.memory_mb - last.memory_mb).abs() > MEMORY_SHARE_THRESHOLD * self.memory_mb
                || now.running != last.running;
            let since = written.elapsed();
            if !((changed && since >= self.cfg.report_min_interval)
                || since >= self.cfg.report_every)
            {
                continue;
            }
            if self.write_health(&now).await {
                last = now;
                written = Instant::now();
            }
        }
    }

    /// Rewrites the health key if it still lives on our lease; whether it was written.
    async fn write_health(&self, usage: &EngineUsage) -> bool {
        let key = self.cfg.keys.health(&self.cfg.engine);
        let lease = self.lease();
        let Ok(value) = serde_json::to_vec(&self.health(Some(usage))) else {
            return false;
        };
        let txn = Txn::new()
            .when(vec![Compare::lease(key.as_str(), CompareOp::Equal, lease)])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        match store::timed(self.client.kv_client().txn(txn)).await {
            Ok(r) if r.succeeded() => true,
            Ok(_) => {
                // The lease lapsed (the liveness loop re-claims it), or someone replaced the key.
                tracing::warn!("the health key is not on our lease any more; usage not written");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the engine's usage");
                false
            }
        }
    }
}
