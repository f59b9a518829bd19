//! Leader election on etcd's election API.
//!
//! A replica grants a lease and starts its keep-alive *before* it campaigns, and keeps it running
//! beside the campaign and the leadership. The first failed keep-alive flips [`Lease::lost`], and
//! the leader stops writing at once. Leadership is the campaign key: every leader write compares
//! that key's create revision ([`Fence`]), so a deposed leader's writes are refused by etcd itself.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::keys::Keys;
use crate::model::{LeaderInfo, now_rfc3339};
use crate::store::CALL_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease was lost before the campaign finished")]
    LeaseLost,
    #[error("shutting down")]
    Shutdown,
    #[error("etcd's campaign reply had no leader key")]
    NoLeaderKey,
}

/// What every leader write is fenced on: `create_revision(key) == rev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub rev: i64,
}

impl Fence {
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev)
    }
}

/// A lease with its keep-alive task. Dropping it stops the keep-alive (the lease then expires).
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Lease {
    /// Grants a lease and starts keeping it alive (every ttl/3).
    pub async fn grant(client: &Client, ttl: i64) -> Result<Lease, ElectionError> {
        let mut lc = client.lease_client();
        let granted = timeout(lc.grant(ttl, None)).await?;
        let id = granted.id();
        let ttl = granted.ttl().max(1);
        let (keeper, stream) = timeout(lc.keep_alive(id)).await?;
        let (tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(keeper, stream, id, ttl, tx));
        Ok(Lease {
            id,
            ttl,
            lost,
            task,
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

    /// Stops the keep-alive and revokes the lease, which deletes the campaign key at once:
    /// the next candidate is elected without waiting for the TTL.
    pub async fn revoke(self, client: &Client) {
        self.task.abort();
        match timeout(client.lease_client().revoke(self.id)).await {
            Ok(_) => tracing::info!(lease = format!("{:x}", self.id), "lease revoked"),
            Err(e) => tracing::warn!(error = %e, "could not revoke lease; it expires on its own"),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(
    mut keeper: etcd_client::LeaseKeeper,
    mut stream: etcd_client::LeaseKeepAliveStream,
    id: i64,
    ttl: i64,
    lost: watch::Sender<bool>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    loop {
        let reason = match keeper.keep_alive().await {
            Err(e) => Some(format!("keep-alive send failed: {e}")),
            Ok(()) => match tokio::time::timeout(period, stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => None,
                Ok(Ok(Some(_))) => Some("lease expired".to_string()),
                Ok(Ok(None)) => Some("keep-alive stream closed".to_string()),
                Ok(Err(e)) => Some(format!("keep-alive failed: {e}")),
                Err(_) => Some(format!("no keep-alive reply within {period:?}")),
            },
        };
        if let Some(reason) = reason {
            tracing::warn!(lease = format!("{id:x}"), %reason, "lease lost");
            let _ = lost.send(true);
            return;
        }
        tokio::time::sleep(period).await;
    }
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
    /// The campaign value (this replica's `LeaderInfo`), rewritten by the leader's barrier.
    pub value: Vec<u8>,
    /// etcd's revision when the campaign returned: every write of earlier leaders is at or
    /// below it, so the cache must reach it before this leader plans anything.
    pub elected_at: i64,
}

/// Campaigns under `<prefix>/leader` until elected, the lease is lost, or shutdown.
pub async fn campaign(
    client: &Client,
    keys: &Keys,
    replica: &str,
    addr: &str,
    lease: &Lease,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Leadership, ElectionError> {
    let value = serde_json::to_vec(&LeaderInfo {
        id: replica.to_string(),
        addr: addr.to_string(),
        since: now_rfc3339(),
    })
    .unwrap_or_default();
    let mut ec = client.election_client();
    let resp = tokio::select! {
        r = ec.campaign(keys.leader(), value.clone(), lease.id) => r?,
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
        value,
        elected_at,
    })
}
