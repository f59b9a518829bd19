//! Leader election on etcd's election API.
//!
//! A replica grants a lease and starts its keep-alive *before* it campaigns, and keeps it running
//! beside the campaign and the leadership. Leadership is the campaign key: every leader write
//! compares that key's create revision ([`crate::store::fence::Fence`]), so a deposed leader's
//! writes are refused by etcd itself.
//!
//! The lease is lost ([`Lease::lost`]) when etcd says so (a keep-alive reply with no TTL left), or
//! when no member has answered at all for twice the TTL (this replica is cut off: others may have
//! taken over, so it stops acting on its own; its writes were refused by their fence all along, and
//! its runner starts nothing without a confirmed leadership, so waiting the second TTL costs
//! nothing and spares a needless hand-over when a reconnection is slow). A keep-alive stream that
//! breaks (its member died, or lost its raft leader) is opened again on another member, with
//! backoff, for as long as the lease may still be alive: one dead member is no reason to hand over.
//! While etcd has no leader it can neither expire the lease nor let anyone else win, so the leader
//! waits.
//!
//! It owns the lease, the campaign and the fence's key. It may not write outside `leader/` (its own
//! key, and impostor keys it deletes), nor decide anything: the manager and the runner act on the
//! leadership it hands them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::keys::Keys;
use crate::model::{LeaderInfo, Resignation, now_rfc3339};
use crate::store::endpoints::Members;
use crate::store::fence::Fence;
use crate::store::{self, CALL_TIMEOUT};

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd: {}", store::short(.0))]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease was lost before the campaign finished")]
    LeaseLost,
    #[error("shutting down")]
    Shutdown,
    #[error("etcd's campaign reply had no leader key")]
    NoLeaderKey,
    #[error("cannot write the candidate's description: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(
        "another replica runs with --id {id}: its election key {key} is renewed (lease {lease:x}); give each replica its own --id"
    )]
    DuplicateId { id: String, key: String, lease: i64 },
}

impl ElectionError {
    /// etcd did not answer, or could not serve just now: it may yet, by itself.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ElectionError::Timeout(_) => true,
            ElectionError::Etcd(e) => store::EtcdErrorKind::of(e).is_retryable(),
            _ => false,
        }
    }
}

/// A lease with its keep-alive task. Dropping it stops the keep-alive (the lease then expires).
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
    /// Set by [`campaign`]: the campaign key, and what to write on withdrawing from it.
    campaigned: std::sync::Mutex<Option<Withdrawal>>,
}

/// How a candidate withdraws cleanly: its campaign key deleted together with a marker that
/// says so (see [`Keys::resigned`]).
#[derive(Debug, Clone)]
struct Withdrawal {
    key: String,
    marker: String,
    id: String,
}

impl Lease {
    /// Grants a lease and starts keeping it alive (every ttl/3).
    pub async fn grant(client: &Client, ttl: i64) -> Result<Lease, ElectionError> {
        Self::grant_with(client, ttl, None).await
    }

    /// [`Lease::grant`], with every member reachable directly: when the keep-alive stream
    /// breaks, the lease is renewed on each member at once, without waiting for the balancer
    /// to stop choosing a member that froze.
    pub async fn grant_with(
        client: &Client,
        ttl: i64,
        members: Option<Arc<Members>>,
    ) -> Result<Lease, ElectionError> {
        let mut lc = client.lease_client();
        let granted = timeout(lc.grant(ttl, None)).await?;
        let id = granted.id();
        let ttl = granted.ttl().max(1);
        let opened = timeout(lc.keep_alive(id)).await?;
        let (tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(client.clone(), members, opened, id, ttl, tx));
        Ok(Lease {
            id,
            ttl,
            lost,
            task,
            campaigned: std::sync::Mutex::new(None),
        })
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Takes up again a lease this replica held before etcd stopped answering (it gave the
    /// lease up as lost, or could not revoke it): etcd pauses every lease's clock while it is
    /// down and restarts it whole when it is back, so the lease, and the campaign key on it,
    /// usually survive. `Ok(None)`: etcd says it has expired (or never knew it: a restore from
    /// a snapshot), and a new one is granted at once instead of waiting for anything.
    pub async fn resume(
        client: &Client,
        id: i64,
        members: Option<Arc<Members>>,
    ) -> Result<Option<Lease>, ElectionError> {
        let mut lc = client.lease_client();
        // etcd-client renews once to open the keeper, and says a lease etcd no longer has
        // "not found".
        let (mut keeper, mut replies) = match timeout(lc.keep_alive(id)).await {
            Ok(opened) => opened,
            Err(ElectionError::Etcd(e))
                if store::EtcdErrorKind::of(&e) == store::EtcdErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        timeout(keeper.keep_alive()).await?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, replies.message())
            .await
            .map_err(|_| ElectionError::Timeout(CALL_TIMEOUT))??;
        let ttl = match reply {
            Some(r) if r.ttl() > 0 => r.ttl(),
            _ => return Ok(None),
        };
        let (tx, lost) = watch::channel(false);
        let opened = (keeper, replies);
        let task = tokio::spawn(keep_alive(client.clone(), members, opened, id, ttl, tx));
        Ok(Some(Lease {
            id,
            ttl,
            lost,
            task,
            campaigned: std::sync::Mutex::new(None),
        }))
    }

    /// Stops the keep-alive and revokes the lease, which deletes the campaign key at once:
    /// the next candidate is elected without waiting for the TTL. A candidate deletes its key
    /// first, with the resignation marker in the same transaction, so that whoever watches
    /// tells this from a lease that expired (a replica killed or cut off). Hands the lease's id
    /// back when etcd could not be told: the caller takes it up again, or replaces it, once etcd
    /// answers ([`Lease::resume`]), rather than leave its key to block the election for a TTL.
    pub async fn revoke(self, client: &Client) -> Result<(), i64> {
        self.task.abort();
        let lease = format!("{:x}", self.id);
        let withdrawal = self
            .campaigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(w) = withdrawal {
            self.resign(client, &w).await;
        }
        match timeout(client.lease_client().revoke(self.id)).await {
            Ok(_) => {
                tracing::info!(lease = %lease, "lease revoked");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(lease = %lease, error = %e, "cannot revoke the lease now; taking it up again or replacing it once etcd answers");
                Err(self.id)
            }
        }
    }
}

impl Lease {
    /// Deletes the campaign key, if it is still this lease's, with the marker beside it.
    async fn resign(&self, client: &Client, w: &Withdrawal) {
        let lease = format!("{:x}", self.id);
        let marker = Resignation {
            lease: lease.clone(),
            id: w.id.clone(),
            at: now_rfc3339(),
        };
        let value = match serde_json::to_vec(&marker) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the resignation marker");
                return;
            }
        };
        let txn = Txn::new()
            .when(vec![Compare::lease(
                w.key.clone(),
                CompareOp::Equal,
                self.id,
            )])
            .and_then(vec![
                TxnOp::put(w.marker.clone(), value, None),
                TxnOp::delete(w.key.clone(), None),
            ]);
        match timeout(client.kv_client().txn(txn)).await {
            Ok(r) if r.succeeded() => tracing::info!(lease = %lease, "resigned from the election"),
            Ok(_) => {} // the key is gone already: nothing to resign from
            Err(e) => {
                tracing::warn!(lease = %lease, error = %e, "could not resign; the lease ends it")
            }
        }
    }

    /// Remembers the campaign key for a clean withdrawal (see [`Lease::revoke`]).
    fn campaigning(&self, keys: &Keys, id: &str) {
        let w = Withdrawal {
            key: format!("{}/{:x}", keys.leader(), self.id),
            marker: keys.resigned(),
            id: id.to_string(),
        };
        *self
            .campaigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(w);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps a lease alive until it is lost (see [`KeepAlive`]).
async fn keep_alive(
    client: Client,
    members: Option<Arc<Members>>,
    opened: (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream),
    id: i64,
    ttl: i64,
    lost: watch::Sender<bool>,
) {
    let mut k = KeepAlive::new(client, members, opened, id, ttl);
    k.run().await;
    let _ = lost.send(true);
}

/// One lease's keep-alive: a stream to one member, renewed every third of the TTL. A stream
/// that breaks or goes silent is opened again on another member, and meanwhile the lease is
/// renewed on every member directly. The lease is lost when etcd says it expired, or when no
/// member has answered for twice its TTL.
struct KeepAlive {
    client: Client,
    members: Option<Arc<Members>>,
    stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    id: i64,
    period: Duration,
    cut_off: Duration,
    /// When a member last answered anything about this lease (a reply, or "no leader").
    heard: tokio::time::Instant,
    /// Why the stream last failed, while it does.
    failing: Option<String>,
    delays: backon::ExponentialBackoff,
    lease: String,
}

/// What one renewal came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    Kept,
    Expired,
    Failed,
}

impl KeepAlive {
    fn new(
        client: Client,
        members: Option<Arc<Members>>,
        opened: (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream),
        id: i64,
        ttl: i64,
    ) -> Self {
        let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
        KeepAlive {
            client,
            members,
            stream: Some(opened),
            id,
            period,
            cut_off: Duration::from_secs(2 * ttl as u64),
            heard: tokio::time::Instant::now(),
            failing: None,
            delays: Self::backoff(period),
            lease: format!("{id:x}"),
        }
    }

    fn backoff(period: Duration) -> backon::ExponentialBackoff {
        store::backoff()
            .with_max_delay(period.min(store::MAX_RETRY_DELAY))
            .without_max_times()
            .build()
    }

    /// Returns once the lease is lost.
    async fn run(&mut self) {
        loop {
            if self.heard.elapsed() > self.cut_off {
                let why = self.failing.take().unwrap_or_else(|| "no answer".into());
                tracing::warn!(lease = %self.lease, reason = %why, "lease lost: no etcd member has answered for twice its TTL");
                return;
            }
            if self.stream.is_none() && !self.open().await {
                tokio::time::sleep(self.delays.next().unwrap_or(self.period)).await;
                continue;
            }
            match self.renew().await {
                Renewal::Kept => tokio::time::sleep(self.period).await,
                Renewal::Expired => {
                    if !self.kept_elsewhere().await {
                        tracing::warn!(lease = %self.lease, "lease lost: etcd says it expired");
                        return;
                    }
                }
                Renewal::Failed => {
                    if self.renew_on_every_member().await == Renewal::Expired {
                        tracing::warn!(lease = %self.lease, "lease lost: etcd says it expired");
                        return;
                    }
                    tokio::time::sleep(self.delays.next().unwrap_or(self.period)).await;
                }
            }
        }
    }

    /// Opens the stream again, within a keep-alive period, not a whole call timeout: a member
    /// that froze holds the opening as long as it is allowed to.
    async fn open(&mut self) -> bool {
        let mut leases = self.client.lease_client();
        let opening = tokio::time::timeout(self.period, leases.keep_alive(self.id));
        match opening
            .await
            .map_err(|_| ElectionError::Timeout(self.period))
            .and_then(|r| r.map_err(ElectionError::Etcd))
        {
            Ok(s) => {
                self.stream = Some(s);
                true
            }
            Err(e) => {
                if matches!(&e, ElectionError::Etcd(e) if answered(e)) {
                    self.heard = tokio::time::Instant::now();
                }
                self.failing = Some(e.to_string());
                false
            }
        }
    }

    /// One renewal over the stream.
    async fn renew(&mut self) -> Renewal {
        let Some((keeper, replies)) = &mut self.stream else {
            return Renewal::Failed;
        };
        let reply = match keeper.keep_alive().await {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(self.period, replies.message()).await {
                Ok(r) => r,
                Err(_) => Err(etcd_client::Error::WatchError(format!(
                    "no keep-alive reply within {:?}",
                    self.period
                ))),
            },
        };
        let why = match reply {
            Ok(Some(resp)) if resp.ttl() > 0 => {
                self.heard = tokio::time::Instant::now();
                if let Some(why) = self.failing.take() {
                    tracing::info!(lease = %self.lease, after = %why, "lease kept alive again");
                }
                self.delays = Self::backoff(self.period);
                return Renewal::Kept;
            }
            Ok(Some(_)) => return Renewal::Expired,
            Ok(None) => "keep-alive stream closed".to_string(),
            Err(e) => {
                if answered(&e) {
                    self.heard = tokio::time::Instant::now();
                }
                store::short(&e)
            }
        };
        if self.failing.is_none() {
            tracing::warn!(lease = %self.lease, reason = %why, "keep-alive failed; opening it again on another member");
        }
        self.failing = Some(why);
        self.stream = None;
        Renewal::Failed
    }

    /// Whether another member renews a lease the stream's member said had expired. A member
    /// that was frozen and has just woken can answer from its own stale view before it learns
    /// that another leads. If the lease is really gone, so is the election key, and the leader
    /// steps down on that too.
    async fn kept_elsewhere(&mut self) -> bool {
        let Some(members) = &self.members else {
            return false;
        };
        match renew_directly(members, self.id, self.period).await {
            Some(left) if left > 0 => {
                tracing::warn!(lease = %self.lease, left,
                    "a member said the lease expired, another renewed it: kept");
                self.heard = tokio::time::Instant::now();
                self.stream = None;
                true
            }
            _ => false,
        }
    }

    /// While the stream is down, renews the lease on every member directly.
    async fn renew_on_every_member(&mut self) -> Renewal {
        let Some(members) = &self.members else {
            return Renewal::Failed;
        };
        match renew_directly(members, self.id, self.period).await {
            Some(left) if left > 0 => {
                self.heard = tokio::time::Instant::now();
                Renewal::Kept
            }
            Some(_) => Renewal::Expired,
            None => Renewal::Failed,
        }
    }
}

/// Renews the lease on every member at once, each through a client of its own, waiting at most
/// `wait`: the TTL left, as the first member that renewed it says (0: etcd says it expired),
/// or `None` when none could.
async fn renew_directly(members: &Members, id: i64, wait: Duration) -> Option<i64> {
    let renewals = members.endpoints().iter().map(|ep| async move {
        let renewed = async {
            let c = members.client(ep).await?;
            let mut lc = c.lease_client();
            let (mut keeper, mut replies) = tokio::time::timeout(wait, lc.keep_alive(id))
                .await
                .ok()?
                .ok()?;
            keeper.keep_alive().await.ok()?;
            let reply = tokio::time::timeout(wait, replies.message())
                .await
                .ok()?
                .ok()??;
            Some(reply.ttl())
        }
        .await;
        if renewed.is_none() {
            members.forget(ep).await;
        }
        renewed
    });
    let answers: Vec<i64> = futures_util::future::join_all(renewals)
        .await
        .into_iter()
        .flatten()
        .collect();
    answers
        .iter()
        .copied()
        .find(|t| *t > 0)
        .or(answers.first().copied())
}

/// Whether an error is etcd answering (it has no leader, or its leader changed), rather than
/// nobody answering: a member that says so is alive, and no one can take over meanwhile.
fn answered(e: &etcd_client::Error) -> bool {
    store::EtcdErrorKind::of(e) == store::EtcdErrorKind::NoLeader
}

async fn timeout<T>(
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ElectionError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| ElectionError::Timeout(CALL_TIMEOUT))?
        .map_err(ElectionError::Etcd)
}

/// A won election.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub fence: Fence,
    /// The campaign value (this replica's `LeaderInfo`, with `leads_since`), rewritten by the
    /// leader's barrier.
    pub value: Vec<u8>,
    /// etcd's revision when the campaign returned: every write of earlier leaders is at or
    /// below it, so the cache must reach it before this leader plans anything.
    pub elected_at: i64,
}

/// Who campaigns, as its election key tells the others (with when it began).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidate {
    /// The replica's id.
    pub id: String,
    /// Informational (`--addr`; empty: its status page's URL, see [`Candidate::shown_addr`]).
    pub addr: String,
    /// Where it serves its status page (IP:PORT), if it serves one.
    pub status: Option<String>,
    /// Its build's version, and the request fields it understands (see [`LeaderInfo`]).
    pub version: Option<String>,
    pub request_fields: Vec<String>,
}

impl Candidate {
    /// A candidate known by its id alone.
    pub fn new(id: impl Into<String>) -> Candidate {
        Candidate {
            id: id.into(),
            ..Candidate::default()
        }
    }
}

impl Candidate {
    /// What the election key gives as its address: `--addr`, or else its status page's URL
    /// (`http://IP:PORT/`; a wildcard listener is named by the host's name), so that the
    /// others' tables say where to look.
    pub fn shown_addr(&self) -> String {
        if !self.addr.is_empty() {
            return self.addr.clone();
        }
        let Some(status) = &self.status else {
            return String::new();
        };
        match status.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => match hostname() {
                Some(host) => format!("http://{host}:{}/", a.port()),
                None => format!("http://{a}/"),
            },
            _ => format!("http://{status}/"),
        }
    }

    /// The election key's value: this candidate, campaigning since `since`, leading since
    /// `leads_since` once it has won.
    fn value(&self, since: &str, leads_since: Option<String>) -> Result<Vec<u8>, ElectionError> {
        serde_json::to_vec(&LeaderInfo {
            id: self.id.clone(),
            addr: self.shown_addr(),
            since: since.to_string(),
            leads_since,
            status: self.status.clone(),
            version: self.version.clone(),
            request_fields: self.request_fields.clone(),
        })
        .map_err(ElectionError::Encode)
    }
}

/// This host's name, for a listener on every address.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/etc/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Campaigns under `<prefix>/leader` until elected, the lease is lost, or shutdown.
///
/// The key is written with when the campaign began; once won, the value the leader's barrier
/// writes ([`Leadership::value`]) also says when leadership began (`leads_since`), which is
/// what "leads since" shows: a standby may campaign for hours before it leads.
pub async fn campaign(
    client: &Client,
    keys: &Keys,
    me: &Candidate,
    lease: &Lease,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Leadership, ElectionError> {
    let since = now_rfc3339();
    let value = me.value(&since, None)?;
    lease.campaigning(keys, &me.id);
    let mut ec = client.election_client();
    let resp = tokio::select! {
        r = ec.campaign(keys.leader(), value, lease.id) => r?,
        _ = lease.lost() => return Err(ElectionError::LeaseLost),
        _ = shutdown.wait_for(|s| *s) => return Err(ElectionError::Shutdown),
    };
    let elected_at = resp.header().map(|h| h.revision()).unwrap_or(0);
    let leader = resp.leader().ok_or(ElectionError::NoLeaderKey)?;
    Ok(Leadership {
        fence: Fence {
            key: leader.key().to_vec(),
            rev: leader.rev(),
        },
        value: me.value(&since, Some(now_rfc3339()))?,
        elected_at,
    })
}

/// How often a starting replica reads the lease of an election key that bears its id.
const DUPLICATE_POLL: Duration = Duration::from_millis(500);

/// Refuses to start a second replica under an id that a running one campaigns with.
///
/// An election key with the same id is either a running replica's, or one a replica left
/// when it was killed (its lease outlives it by up to its TTL). One read cannot tell them
/// apart, the lease's renewals can: a running replica renews it every third of its TTL, a
/// killed one's runs down to expiry. So the start waits, at most the lease's TTL, saying so:
/// a renewed lease is a duplicate ([`ElectionError::DuplicateId`]: the replica exits), an
/// expired one is a restart, which goes on (a restart under a killed leader's key could not
/// lead before that key expired anyway). Two replicas started at the same instant can both
/// pass; [`watch_candidates`] then reports them.
pub async fn refuse_duplicate(
    client: &Client,
    keys: &Keys,
    id: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ElectionError> {
    let prefix = format!("{}/", keys.leader());
    let resp = timeout(client.kv_client().get(
        prefix.as_str(),
        Some(etcd_client::GetOptions::new().with_prefix()),
    ))
    .await?;
    let same: Vec<(String, i64)> = resp
        .kvs()
        .iter()
        .filter(|kv| kv.lease() != 0)
        .filter(|kv| serde_json::from_slice::<LeaderInfo>(kv.value()).is_ok_and(|i| i.id == id))
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect();
    for (key, lease) in same {
        let mut leases = client.lease_client();
        let first = timeout(leases.time_to_live(lease, None)).await?;
        if first.ttl() < 0 {
            continue;
        }
        let mut left = first.ttl();
        tracing::warn!(key = %key, lease = %format!("{lease:x}"), ttl_left_s = left,
            fix = %format!("etcdctl lease revoke {lease:x}"),
            "an election key bears this replica's --id: waiting for its lease to expire (a killed replica's) or be renewed (a running one's, then this one exits)");
        let until = tokio::time::Instant::now()
            + Duration::from_secs(first.granted_ttl().max(1) as u64)
            + DUPLICATE_POLL * 2;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DUPLICATE_POLL) => {}
                _ = shutdown.wait_for(|s| *s) => return Err(ElectionError::Shutdown),
            }
            let now = timeout(leases.time_to_live(lease, None)).await?.ttl();
            if now < 0 {
                tracing::info!(key = %key, "the key with this replica's --id expired: a killed replica's; going on");
                break;
            }
            if now > left || tokio::time::Instant::now() > until {
                return Err(ElectionError::DuplicateId {
                    id: id.to_string(),
                    key,
                    lease,
                });
            }
            left = now;
        }
    }
    Ok(())
}

/// How often every replica looks at the election's keys for ones that block it.
const CANDIDATES_EVERY: Duration = Duration::from_secs(2);
/// A lease this far from expiry that nobody renews is reported: shorter ones end soon anyway.
const REPORT_LEFT_SECS: i64 = 10;

/// Watches the election's keys, on every replica, for the two that block every election:
///
/// - a key without a lease (`etcdctl put …/leader/x …` by hand). etcd's election API always
///   attaches its candidate's lease, so such a key is never a candidate; yet every campaign
///   waits behind it forever. It is deleted, with a compare on its create revision and on its
///   lack of a lease, and the deletion is logged.
/// - the leading key held by a lease nobody renews (a replica killed with a long
///   `--lease-ttl`, or a lease granted by hand): nobody can lead until it expires. It is
///   reported with its remaining time and the command that ends it now; not revoked, since a
///   lease may be someone's who is only slow.
///
/// A replica's own keep-alive renews its lease every third of its TTL, so a renewed lease
/// never has less than about two thirds of it left.
pub async fn watch_candidates(
    client: Client,
    cache: Arc<Cache>,
    mut shutdown: watch::Receiver<bool>,
) {
    let keys = cache.keys().clone();
    let mut reported: HashSet<i64> = HashSet::new();
    let mut reported_ids: HashSet<Vec<i64>> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CANDIDATES_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let candidates = cache.read().leader_keys();
        for (suffix, k) in candidates.iter().filter(|(_, k)| k.lease == 0) {
            let key = format!("{}/{suffix}", keys.leader());
            tracing::error!(key = %key, create_revision = k.create_revision,
                "an election key without a lease blocks every election: deleting it (etcd's election API never writes one)");
            let txn = Txn::new()
                .when(vec![
                    Compare::create_revision(key.clone(), CompareOp::Equal, k.create_revision),
                    Compare::lease(key.clone(), CompareOp::Equal, 0),
                ])
                .and_then(vec![TxnOp::delete(key.clone(), None)]);
            match store::timed(client.kv_client().txn(txn)).await {
                Ok(r) if r.succeeded() => {
                    tracing::warn!(key = %key, "deleted the election key without a lease")
                }
                Ok(_) => {} // changed or gone meanwhile
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot delete the election key without a lease")
                }
            }
        }
        report_same_ids(&candidates, &mut reported_ids);
        let Some((suffix, leading)) = candidates.iter().find(|(_, k)| k.lease != 0) else {
            continue;
        };
        if reported.contains(&leading.lease) {
            continue;
        }
        let Ok(ttl) = store::timed(client.lease_client().time_to_live(leading.lease, None)).await
        else {
            continue;
        };
        let (left, granted) = (ttl.ttl(), ttl.granted_ttl());
        if left > REPORT_LEFT_SECS && left < granted * 2 / 3 - 1 {
            reported.insert(leading.lease);
            let holder = leading
                .info
                .as_ref()
                .map_or("(not a citadel replica)".to_string(), |i| i.id.clone());
            tracing::error!(
                key = %format!("{}/{suffix}", keys.leader()),
                holder = %holder,
                lease = %format!("{:x}", leading.lease),
                expires_in_s = left,
                granted_ttl_s = granted,
                fix = %format!("etcdctl lease revoke {:x}", leading.lease),
                "the leading election key's lease is not renewed: no replica can lead until it expires"
            );
        }
    }
}

/// Reports, once per set of leases, candidates that campaign under one id (replicas started
/// at the same instant with the same `--id`: each passed [`refuse_duplicate`]).
fn report_same_ids(
    candidates: &[(String, crate::cache::LeaderKey)],
    reported: &mut HashSet<Vec<i64>>,
) {
    let mut by_id: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for (_, k) in candidates.iter().filter(|(_, k)| k.lease != 0) {
        if let Some(info) = &k.info {
            by_id.entry(info.id.as_str()).or_default().push(k.lease);
        }
    }
    for (id, leases) in by_id.into_iter().filter(|(_, l)| l.len() > 1) {
        let hex: Vec<String> = leases.iter().map(|l| format!("{l:x}")).collect();
        if reported.insert(leases) {
            tracing::error!(id = %id, leases = %hex.join(","),
                "two replicas campaign with the same --id: give each its own (restart one with another --id)");
        }
    }
}
