//! One controller replica: a warm cache always, the cluster manager while it leads.
//!
//! ```text
//! connect ─▶ cache (watch, always) ─▶ loop { lease + keep-alive ─▶ campaign ─▶ lead ─▶ step down }
//! ```
//!
//! On shutdown the replica revokes its lease, which deletes its campaign key: if it led, the next
//! replica in line is elected at once instead of after the lease's TTL.
//!
//! It owns one replica's lifecycle and shutdown; it holds no scheduling or etcd logic of its own.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::cache::{Books, Cache, HealthPolicy};
use crate::dispatch::{Dispatch, DispatchConfig};
use crate::election::{self, Candidate, ElectionError, Lease};
use crate::http::{self, HttpError, Listen};
use crate::keys::Keys;
use crate::manager::Rewriter;
use crate::manager::{Ledger, Manager, ManagerConfig, StepDown};
use crate::metrics::Metrics;
use crate::runner::{Runner, RunnerConfig};
use crate::shutdown::stopping;
use crate::store::{self, EtcdConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// etcd refused us for good (credentials, certificates, roles): the replica exits.
    #[error(transparent)]
    Etcd(#[from] StoreError),
    /// The HTTP surface cannot listen where it was told (`--listen`).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Another running replica campaigns with this one's `--id`.
    #[error(transparent)]
    DuplicateId(ElectionError),
}

/// The controller's default `--nice`: on a machine it shares with etcd, a leader that yields the
/// cpu to etcd places more (every user's put waits on etcd; the leader only batches more).
pub const DEFAULT_NICE: i32 = 5;

/// Lowers the priority of the calling thread, and of every thread it starts from now on, by
/// `by` (Unix nice). Lowering one's own priority needs no privilege.
pub fn lower_priority(by: i32) -> std::io::Result<()> {
    if by == 0 {
        return Ok(());
    }
    rustix::process::nice(by)
        .map(|_| ())
        .map_err(std::io::Error::from)
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
    /// hook(http): where to serve the status page, `/metrics`, `/healthz` and `/readyz`
    /// (`--listen`; `None`: nowhere). The address taken goes in the replica's election key.
    pub listen: Option<Listen>,
    /// hook(http): host names the HTTP surface answers to besides IP addresses and localhost
    /// (`--http-allow-host`).
    pub http_allow_hosts: http::AllowedHosts,
    /// hook(http): this replica's metrics, fed by its manager, runner and election.
    pub metrics: Arc<Metrics>,
}

impl ControllerConfig {
    /// This replica as its election key tells the others, with the status page `http` serves.
    fn candidate(&self, http: Option<&http::Server>) -> Candidate {
        Candidate {
            id: self.manager.replica.to_string(),
            addr: self.addr.clone(),
            status: http.map(|h| h.local_addr().to_string()),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            request_fields: crate::model::known_request_fields()
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    /// The cluster manager this replica leads with, feeding its metrics (hook(http)).
    fn manager(&self, client: &Client, cache: &Arc<Cache>, books: &Books<Ledger>) -> Manager {
        Manager::new(
            client.clone(),
            cache.clone(),
            books.clone(),
            self.manager.clone(),
        )
        .with_metrics(self.metrics.clone())
    }
}

/// Runs a replica until `shutdown` turns true. An unreachable etcd is retried with backoff for
/// as long as it takes (etcd may come back). What retrying cannot fix, credentials,
/// certificates or a role that etcd refuses, ends the replica with an error after a few tries
/// ([`store::PERMANENT_TRIES`]), for its supervisor to see.
pub async fn run(
    cfg: ControllerConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    let (cache, books) = replica_cache(&cfg);
    run_with_cache(cfg, cache, books, shutdown).await
}

/// A replica's cache, with the ledger its manager keeps on it (every replica keeps one, so
/// the one that wins an election has its work at hand).
pub fn replica_cache(cfg: &ControllerConfig) -> (Arc<Cache>, Books<Ledger>) {
    Cache::with_listener(cfg.keys.clone(), cfg.overcommit, Ledger::new(cfg.policy))
}

/// [`run`], on a cache the caller made with [`replica_cache`] (and may read: it is the
/// replica's view).
pub async fn run_with_cache(
    cfg: ControllerConfig,
    cache: Arc<Cache>,
    books: Books<Ledger>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    let span = tracing::info_span!("replica", id = %cfg.manager.replica);
    run_replica(cfg, cache, books, shutdown)
        .instrument(span)
        .await
}

async fn run_replica(
    cfg: ControllerConfig,
    cache: Arc<Cache>,
    books: Books<Ledger>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    tracing::info!(etcd = %cfg.etcd.endpoints_str(), prefix = cfg.keys.prefix(), "starting");
    let mut http = serve(&cfg, &cache, &shutdown).await?; // hook(http)
    let me = cfg.candidate(http.as_ref());
    let Some(client) = connect(&cfg, &mut shutdown).await? else {
        return Ok(());
    };
    // hook(election): a second replica under a running one's --id is refused.
    match election::refuse_duplicate(&client, &cfg.keys, &me.id, &mut shutdown).await {
        Ok(()) | Err(ElectionError::Shutdown) => {}
        Err(e @ ElectionError::DuplicateId { .. }) => {
            tracing::error!(error = %e, "refusing to start");
            return Err(ControllerError::DuplicateId(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for another replica with this --id; going on")
        }
    }
    // Calls stay off members that stop answering, and go back to them once they do.
    let endpoints = tokio::spawn(
        store::endpoints::supervise(client.clone(), cfg.etcd.clone(), shutdown.clone())
            .in_current_span(),
    );
    if let Some(http) = &mut http {
        http.probe(&client, &cfg.keys, &cfg.metrics); // hook(http)
    }
    // The lease is renewed on every member directly when its stream breaks.
    let members = (cfg.etcd.endpoints.len() > 1).then(|| store::endpoints::Members::new(&cfg.etcd));
    let mut watcher = Watcher::start(&cache, &client, &shutdown);
    let candidates = tokio::spawn(
        election::watch_candidates(client.clone(), cache.clone(), shutdown.clone())
            .in_current_span(),
    );
    let manager = cfg.manager(&client, &cache, &books);
    let mut delays = store::backoff().without_max_times().build();
    // A lease given up while etcd did not answer: taken up again, or replaced, once it does.
    let mut stale: Option<i64> = None;
    // The cache says when etcd went back in time (a restore): elect again on the new history.
    let mut rewinds = cache.rewinds();

    while !stopping(&shutdown) {
        if watcher.died() {
            // Never campaign, nor lead, on a cache that no longer follows etcd.
            let d = delays.next().unwrap_or(store::MAX_RETRY_DELAY);
            sleep_or_shutdown(d, &mut shutdown).await;
            watcher = Watcher::start(&cache, &client, &shutdown);
            continue;
        }
        rewinds.borrow_and_update();
        let lease = match take_lease(&client, &cfg, members.clone(), &mut stale).await {
            Ok(l) => l,
            Err(e) => {
                let d = delays.next().unwrap_or(store::MAX_RETRY_DELAY);
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
        let won = tokio::select! {
            won = election::campaign(&client, &cfg.keys, &me, &lease, &mut shutdown) => won,
            _ = watcher.wait_dead() => {
                stale = lease.revoke(&client).await.err();
                continue;
            }
            _ = rewinds.changed() => {
                tracing::warn!("etcd went back in time while campaigning: campaigning again");
                stale = lease.revoke(&client).await.err();
                continue;
            }
        };
        match won {
            Ok(leadership) => {
                delays = store::backoff().without_max_times().build();
                let hands = Hands {
                    cfg: &cfg,
                    client: &client,
                    cache: &cache,
                    books: &books,
                    manager: &manager,
                };
                hands
                    .lead(
                        &leadership,
                        &lease,
                        &mut watcher,
                        &mut rewinds,
                        &mut shutdown,
                    )
                    .await;
                stale = lease.revoke(&client).await.err();
            }
            Err(ElectionError::Shutdown) => {
                // Logged; a lease etcd was not told of expires on its own.
                let _ = lease.revoke(&client).await;
            }
            Err(e) => {
                let d = delays.next().unwrap_or(store::MAX_RETRY_DELAY);
                tracing::warn!(error = %e, retry_in = ?d, "campaign failed");
                stale = lease.revoke(&client).await.err();
                sleep_or_shutdown(d, &mut shutdown).await;
            }
        }
    }
    watcher.stop().await;
    if let Err(e) = candidates.await {
        tracing::error!(error = %e, "the election watch task failed");
    }
    if let Err(e) = endpoints.await {
        tracing::error!(error = %e, "the endpoint supervisor failed");
    }
    if let Some(http) = http {
        http.stop().await; // hook(http)
    }
    tracing::info!("stopped");
    Ok(())
}

/// The lease to campaign on: the one given up while etcd did not answer (`stale`), if etcd
/// still keeps it (its campaign key then still stands, and this replica keeps its place, or its
/// leadership, without waiting for anything), else a new one at once.
async fn take_lease(
    client: &Client,
    cfg: &ControllerConfig,
    members: Option<Arc<store::endpoints::Members>>,
    stale: &mut Option<i64>,
) -> Result<Lease, ElectionError> {
    if let Some(id) = *stale {
        let lease = format!("{id:x}");
        match Lease::resume(client, id, members.clone()).await {
            Ok(Some(kept)) => {
                *stale = None;
                tracing::info!(lease = %lease, "etcd answers again and still keeps the lease: taking it up again");
                return Ok(kept);
            }
            Ok(None) => {
                *stale = None;
                tracing::info!(lease = %lease, "the lease given up has expired: granting a new one");
            }
            // etcd still away: the lease may yet be taken up again once it answers.
            Err(e) if e.is_unreachable() => return Err(e),
            // Anything else would refuse it for good: a new lease, not a retry forever.
            Err(e) => {
                *stale = None;
                tracing::warn!(lease = %lease, error = %e, "cannot take the lease given up again: granting a new one");
            }
        }
    }
    Lease::grant_with(client, cfg.lease_ttl, members).await
}

/// hook(http): the replica's HTTP surface, where `--listen` says (`None`: nowhere). Served
/// before etcd is reached, so that /readyz can say why it is not ready.
async fn serve(
    cfg: &ControllerConfig,
    cache: &Arc<Cache>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<http::Server>, ControllerError> {
    cfg.metrics.observe(cache);
    let Some(listen) = cfg.listen else {
        return Ok(None);
    };
    let surface = http::Surface {
        replica: cfg.manager.replica.to_string(),
        cache: cache.clone(),
        metrics: cfg.metrics.clone(),
        etcd: cfg.etcd.endpoints_str(),
        allowed_hosts: cfg.http_allow_hosts.clone(),
        client: Arc::default(),
    };
    Ok(Some(
        http::Server::start(listen, surface, shutdown.clone()).await?,
    ))
}

/// Connects and checks the role's access; `None` when shutdown came first.
async fn connect(
    cfg: &ControllerConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Client>, ControllerError> {
    let connect = async {
        let client = store::connect(&cfg.etcd, None).await?;
        // A replica whose role cannot read and write the prefix would otherwise retry its
        // list, or its campaign, forever.
        store::check_access(&client, cfg.keys.root(), None).await?;
        Ok::<_, StoreError>(client)
    };
    tokio::select! {
        c = connect => match c {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::error!(error = %e, "cannot use etcd; giving up");
                Err(e.into())
            }
        },
        _ = shutdown.wait_for(|s| *s) => Ok(None),
    }
}

/// What a replica leads with.
struct Hands<'a> {
    cfg: &'a ControllerConfig,
    client: &'a Client,
    cache: &'a Arc<Cache>,
    books: &'a Books<Ledger>,
    manager: &'a Manager,
}

impl Hands<'_> {
    /// Leads until a reason to step down: the manager's loop, the runner beside it with
    /// `--docker` (it returns only when etcd refused its fence), and the cache's watch task
    /// (a leader never plans on a frozen view).
    async fn lead(
        &self,
        leadership: &election::Leadership,
        lease: &Lease,
        watcher: &mut Watcher,
        rewinds: &mut watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> StepDown {
        let metrics = &self.cfg.metrics;
        metrics.set_leader(true); // hook(http)
        tracing::info!(
            key = %String::from_utf8_lossy(&leadership.fence.key),
            fence = leadership.fence.rev,
            "elected leader"
        );
        // The agents' side: their reports and losses, on every leader (agents need no flag).
        let writer = Rewriter {
            client: self.client.clone(),
            books: self.books.clone(),
            keys: self.cfg.keys.clone(),
            fence: leadership.fence.clone(),
            fenced: watch::channel(false).0,
            metrics: metrics.clone(),
        };
        let launch_tries = self
            .cfg
            .docker
            .as_ref()
            .map_or(RunnerConfig::default().launch_tries, |rc| rc.launch_tries);
        let dispatch = Dispatch::new(self.cache.clone(), writer, DispatchConfig { launch_tries });
        let lead = async {
            let lead = async {
                tokio::select! {
                    why = self.manager.lead(leadership, lease, shutdown) => why,
                    _ = dispatch.run() => StepDown::Fenced,
                }
            };
            match &self.cfg.docker {
                None => lead.await,
                Some(rc) => {
                    let runner = Runner::new(
                        self.client.clone(),
                        self.cache.clone(),
                        self.books.clone(),
                        leadership.fence.clone(),
                        rc.clone(),
                    )
                    .with_metrics(metrics.clone()); // hook(http)
                    tokio::select! {
                        why = lead => why,
                        _ = runner.run() => StepDown::Fenced,
                    }
                }
            }
        };
        let why = tokio::select! {
            why = lead => why,
            _ = watcher.wait_dead() => StepDown::WatcherDied,
            _ = rewinds.changed() => StepDown::EtcdRewound,
        };
        metrics.set_leader(false); // hook(http)
        match why {
            StepDown::Shutdown => tracing::info!("resigning: shutting down"),
            other => tracing::warn!(reason = %other, "stepped down"),
        }
        why
    }
}

/// The cache's watch task, supervised: a task that ends before shutdown (it panicked) is
/// noticed at once, so the replica steps down instead of leading on a frozen view.
struct Watcher {
    /// `None` once it has ended and been awaited.
    task: Option<JoinHandle<()>>,
    shutdown: watch::Receiver<bool>,
}

impl Watcher {
    fn start(cache: &Arc<Cache>, client: &Client, shutdown: &watch::Receiver<bool>) -> Watcher {
        let task = tokio::spawn(
            cache
                .clone()
                .run(client.clone(), shutdown.clone())
                .in_current_span(),
        );
        Watcher {
            task: Some(task),
            shutdown: shutdown.clone(),
        }
    }

    /// Whether the task ended although nobody asked it to.
    fn died(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished()) && !stopping(&self.shutdown)
    }

    /// Resolves once the task has ended before shutdown, logging why; pends forever otherwise.
    async fn wait_dead(&mut self) {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let ended = task.await;
        self.task = None;
        if stopping(&self.shutdown) {
            return std::future::pending().await;
        }
        match ended {
            Err(e) => tracing::error!(error = %e, "the cache's watch task failed; restarting it"),
            Ok(()) => tracing::error!("the cache's watch task ended; restarting it"),
        }
    }

    async fn stop(self) {
        if let Some(task) = self.task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the cache's watch task failed");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_task_that_dies_is_noticed_and_one_stopped_on_shutdown_is_not() {
        let (stop, shutdown) = watch::channel(false);
        let mut dead = Watcher {
            task: Some(tokio::spawn(async { panic!("the watch task dies") })),
            shutdown: shutdown.clone(),
        };
        tokio::time::timeout(Duration::from_secs(10), dead.wait_dead())
            .await
            .expect("a dead watch task is noticed");
        assert!(dead.died());

        let mut stopped = Watcher {
            task: Some(tokio::spawn(async {})),
            shutdown,
        };
        stop.send_replace(true);
        assert!(!stopped.died(), "ended on shutdown: not a death");
        let pending = tokio::time::timeout(Duration::from_millis(200), stopped.wait_dead()).await;
        assert!(
            pending.is_err(),
            "a watch task stopped on shutdown is not reported"
        );
        stopped.stop().await;
    }
}
