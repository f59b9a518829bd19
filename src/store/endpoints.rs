//! Keeping calls off etcd members that stopped answering.
//!
//! etcd-client balances calls over every endpoint it was given, dead or alive: with one member
//! killed, a call in three went to it and failed, and a member frozen (SIGSTOP) made its calls
//! wait out their timeout. So every endpoint is probed on its own, every second, with a short
//! timeout and `require_leader` (a member cut off from its quorum is as useless as a dead one).
//! One that fails twice in a row is set aside: taken out of the client's balancer, and probed again with
//! backoff; once it answers it is put back. The last endpoint is never set aside: with none
//! answering, calls keep trying and fail on their own timeouts.
//!
//! One-shot commands probe once, before they connect, and connect to the members that answered
//! ([`answering`], from [`super::connect`]).

use std::collections::BTreeMap;
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{EtcdConfig, backoff, options};

/// How often each endpoint in use is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take: a member slower than this is as good as gone for a while.
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

/// A client of its own for one member: what must reach that member, and no other.
async fn member_client(etcd: &EtcdConfig, endpoint: &str) -> Option<Client> {
    let one = EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        ..etcd.clone()
    };
    let opts = options(&one).ok()?.with_require_leader(true);
    let connect = Client::connect([endpoint], Some(opts));
    tokio::time::timeout(PROBE_TIMEOUT, connect)
        .await
        .ok()?
        .ok()
}

/// Whether one member answers a status call, through a client of its own.
async fn probe(client: &mut Option<Client>, etcd: &EtcdConfig, endpoint: &str) -> bool {
    if client.is_none() {
        *client = member_client(etcd, endpoint).await;
    }
    let Some(c) = client.as_mut() else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, c.status()).await,
        Ok(Ok(_))
    )
}

/// Every member, each through a client of its own: for the few calls that must not wait for
/// the balancer to learn which member stopped answering (a leader's lease renewal).
pub struct Members {
    etcd: EtcdConfig,
    clients: tokio::sync::Mutex<BTreeMap<String, Client>>,
}

impl Members {
    pub fn new(etcd: &EtcdConfig) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Members {
            etcd: etcd.clone(),
            clients: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.etcd.endpoints
    }

    /// Member `endpoint`'s own client, connected on first use.
    pub async fn client(&self, endpoint: &str) -> Option<Client> {
        if let Some(c) = self.clients.lock().await.get(endpoint) {
            return Some(c.clone());
        }
        let c = member_client(&self.etcd, endpoint).await?;
        self.clients
            .lock()
            .await
            .insert(endpoint.to_string(), c.clone());
        Some(c)
    }

    /// Forgets a member's client after it failed: its connection may be stuck.
    pub async fn forget(&self, endpoint: &str) {
        self.clients.lock().await.remove(endpoint);
    }
}

/// The endpoints that answer a probe now (all of them when none does: let the call fail with
/// its own error then).
pub async fn answering(etcd: &EtcdConfig) -> Vec<String> {
    if etcd.endpoints.len() < 2 {
        return etcd.endpoints.clone();
    }
    let probes = etcd.endpoints.iter().map(|ep| async move {
        let mut client = None;
        probe(&mut client, etcd, ep).await.then(|| ep.clone())
    });
    let alive: Vec<String> = futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    if alive.is_empty() {
        etcd.endpoints.clone()
    } else {
        alive
    }
}

/// Probes in a row a member in use must fail before it is set aside: one slow answer on a busy
/// machine is no reason to send everything elsewhere.
const FAILURES_TO_SET_ASIDE: u32 = 2;

/// One endpoint's standing.
struct Member {
    client: Option<Client>,
    /// Probes failed in a row while in use.
    failed: u32,
    /// `Some` while set aside: when to probe it next, and the delays after that.
    aside: Option<(Instant, backon::ExponentialBackoff)>,
}

/// Probes every endpoint of a long-running process's `client` until `shutdown`, setting aside
/// those that fail and putting them back once they answer (see the module's notes).
pub async fn supervise(client: Client, etcd: EtcdConfig, mut shutdown: watch::Receiver<bool>) {
    if etcd.endpoints.len() < 2 {
        return;
    }
    let mut members: BTreeMap<String, Member> = etcd
        .endpoints
        .iter()
        .map(|ep| {
            (
                ep.clone(),
                Member {
                    client: None,
                    failed: 0,
                    aside: None,
                },
            )
        })
        .collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        // Probe those in use, and those set aside whose time has come, together.
        let due: Vec<String> = members
            .iter()
            .filter(|(_, m)| m.aside.as_ref().is_none_or(|(at, _)| *at <= now))
            .map(|(ep, _)| ep.clone())
            .collect();
        let mut probes = Vec::new();
        for ep in &due {
            let mut c = members.get_mut(ep).and_then(|m| m.client.take());
            let etcd = &etcd;
            probes.push(async move {
                let ok = probe(&mut c, etcd, ep).await;
                (ep.clone(), c, ok)
            });
        }
        for (ep, c, ok) in futures_util::future::join_all(probes).await {
            let in_use = members.values().filter(|m| m.aside.is_none()).count();
            let Some(m) = members.get_mut(&ep) else {
                continue;
            };
            m.client = c;
            m.failed = if ok { 0 } else { m.failed + 1 };
            match (ok, m.aside.is_some()) {
                (true, true) => {
                    if let Err(e) = client.add_endpoint(&ep).await {
                        tracing::warn!(endpoint = %ep, error = %super::short(&e), "cannot put an etcd endpoint back");
                        continue;
                    }
                    m.aside = None;
                    tracing::info!(endpoint = %ep, "etcd member answers again: back in use");
                }
                (false, false) if in_use > 1 && m.failed >= FAILURES_TO_SET_ASIDE => {
                    if let Err(e) = client.remove_endpoint(&ep).await {
                        tracing::warn!(endpoint = %ep, error = %super::short(&e), "cannot set an etcd endpoint aside");
                        continue;
                    }
                    // A fresh client for the next probe: the old connection may be stuck.
                    m.client = None;
                    let mut delays = backoff()
                        .with_min_delay(Duration::from_millis(500))
                        .with_max_delay(Duration::from_secs(10))
                        .without_max_times()
                        .build();
                    let next = delays.next().unwrap_or(PROBE_EVERY);
                    m.aside = Some((Instant::now() + next, delays));
                    tracing::warn!(endpoint = %ep, "etcd member does not answer: set aside");
                }
                (false, true) => {
                    m.client = None;
                    if let Some((at, delays)) = m.aside.as_mut() {
                        *at = Instant::now() + delays.next().unwrap_or(Duration::from_secs(10));
                    }
                }
                _ => {}
            }
        }
    }
}
