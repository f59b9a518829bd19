//! One controller replica: a warm cache always, the cluster manager while it leads.
//!
//! ```text
//! connect ─▶ cache (watch, always) ─▶ loop { lease + keep-alive ─▶ campaign ─▶ lead ─▶ step down }
//! ```
//!
//! On shutdown the replica revokes its lease, which deletes its campaign key: if it led, the next
//! replica in line is elected at once instead of after the lease's TTL.

use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::watch;
use tracing::Instrument;

use crate::cache::{Cache, HealthPolicy, stopping};
use crate::election::{self, ElectionError, Lease};
use crate::keys::Keys;
use crate::manager::{Manager, ManagerConfig, StepDown};
use crate::runner::{Runner, RunnerConfig};
use crate::store::{self, EtcdConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// etcd refused us for good (credentials, certificates, roles): the replica exits.
    #[error(transparent)]
    Etcd(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How to reach etcd; the Docker side's writes share this replica's client.
    pub etcd: EtcdConfig,
    pub keys: Keys,
    pub manager: ManagerConfig,
    /// Shown in the leader key; informational.
    pub addr: String,
    pub lease_ttl: i64,
    pub overcommit: f64,
    /// Contact the engines while leading (`--docker`).
    pub docker: Option<RunnerConfig>,
    pub policy: HealthPolicy,
}

/// Runs a replica until `shutdown` turns true. An unreachable etcd is retried with backoff for
/// as long as it takes (etcd may come back). What retrying cannot fix, credentials,
/// certificates or a role that etcd refuses, ends the replica with an error after a few tries
/// ([`store::PERMANENT_TRIES`]), for its supervisor to see.
pub async fn run(
    cfg: ControllerConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    let span = tracing::info_span!("replica", id = %cfg.manager.replica);
    run_replica(cfg, shutdown).instrument(span).await
}

async fn run_replica(
    cfg: ControllerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    let replica = cfg.manager.replica.clone();
    tracing::info!(etcd = %cfg.etcd.endpoints_str(), prefix = cfg.keys.prefix(), "starting");
    let connect = async {
        let client = store::connect(&cfg.etcd, None).await?;
        // A replica whose role cannot read and write the prefix would otherwise retry its
        // list, or its campaign, forever.
        store::check_access(&client, cfg.keys.root(), None).await?;
        Ok::<_, StoreError>(client)
    };
    let client = tokio::select! {
        c = connect => match c {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot use etcd; giving up");
                return Err(e.into());
            }
        },
        _ = shutdown.wait_for(|s| *s) => return Ok(()),
    };
    let cache = Cache::new(cfg.keys.clone(), cfg.overcommit);
    cache.lock().set_policy(cfg.policy);
    let watcher = tokio::spawn(
        cache
            .clone()
            .run(client.clone(), shutdown.clone())
            .in_current_span(),
    );
    let manager = Manager::new(client.clone(), cache.clone(), cfg.manager.clone());
    let mut delays = store::backoff().without_max_times().build();

    while !stopping(&shutdown) {
        let lease = match Lease::grant(&client, cfg.lease_ttl).await {
            Ok(l) => l,
            Err(e) => {
                let d = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?d, "cannot grant a lease");
                sleep_or_shutdown(d, &mut shutdown).await;
                continue;
            }
        };
        tracing::info!(
            lease = format!("{:x}", lease.id),
            ttl = lease.ttl,
            "campaigning"
        );
        let won = election::campaign(
            &client,
            &cfg.keys,
            &replica,
            &cfg.addr,
            &lease,
            &mut shutdown,
        )
        .await;
        match won {
            Ok(leadership) => {
                delays = store::backoff().without_max_times().build();
                tracing::info!(
                    key = %String::from_utf8_lossy(&leadership.fence.key),
                    fence = leadership.fence.rev,
                    "elected leader"
                );
                let lead = manager.lead(&leadership, &lease, &mut shutdown);
                let why = match &cfg.docker {
                    None => lead.await,
                    Some(rc) => {
                        // The runner lives exactly as long as this leadership.
                        let runner = Runner::new(
                            client.clone(),
                            cache.clone(),
                            leadership.fence.clone(),
                            rc.clone(),
                        );
                        tokio::select! {
                            why = lead => why,
                            _ = runner.run() => StepDown::Shutdown,
                        }
                    }
                };
                match why {
                    StepDown::Shutdown => tracing::info!("resigning: shutting down"),
                    other => tracing::warn!(reason = ?other, "stepped down"),
                }
                lease.revoke(&client).await;
            }
            Err(ElectionError::Shutdown) => lease.revoke(&client).await,
            Err(e) => {
                let d = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?d, "campaign failed");
                lease.revoke(&client).await;
                sleep_or_shutdown(d, &mut shutdown).await;
            }
        }
    }
    let _ = watcher.await;
    tracing::info!("stopped");
    Ok(())
}

async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

/// A shutdown signal that turns true on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
                        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        let _ = tx.send(true);
    });
    rx
}
