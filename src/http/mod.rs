//! The operator's HTTP surface (`controller --listen`), served by every replica, leader or not,
//! from its own cache:
//!
//! ```text
//! GET /            the status page (static HTML, CSS and JS built in: no CDN, no build step)
//! GET /api/state   what the page shows, as JSON (see `api.rs`)
//! GET /metrics     Prometheus text (see `crate::metrics`)
//! GET /healthz     200 while etcd answers this replica's probe, else 503 and why
//! GET /readyz      200 once the cache has listed etcd and follows its watch, else 503 and why
//! ```
//!
//! Every answer first checks the request's `Host` against DNS rebinding (see `host.rs`): an
//! IP address, `localhost`, or a name given with `--http-allow-host`; else 421.
//!
//! The server starts before the replica reaches etcd, so that `/readyz` can say why it is not
//! ready yet, and stops with the replica's shutdown signal. Liveness comes from a probe of its
//! own: an idle cluster's watch stays silent, and a silently dropped connection looks open,
//! so only a call that must come back proves etcd answers.
//!
//! It may not write to etcd: every page and probe reads the replica's cache or asks etcd a
//! read-only question.

mod api;
mod host;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use etcd_client::{Client, GetOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::cache::{Cache, Stage};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::store;

pub use api::ApiState;
pub use host::AllowedHosts;

/// `--listen`'s default: loopback only, as etcd's own client port defaults to.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// Without `--listen`, how many ports after the default's a replica tries while the ones
/// before are taken (other replicas on the same host), before it takes any free one.
pub const SPARE_PORTS: u16 = 9;

/// Where the HTTP surface listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Here or nowhere: a port taken is an error (`--listen` given).
    Exactly(SocketAddr),
    /// Here, or while its port is taken the first free one of the next [`SPARE_PORTS`], or
    /// else one the system picks (no `--listen`: several replicas on one host each serve).
    FirstFree(SocketAddr),
}

impl Listen {
    /// The address asked for (its first choice), as errors name it.
    pub fn addr(self) -> SocketAddr {
        match self {
            Listen::Exactly(a) | Listen::FirstFree(a) => a,
        }
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Listen {
        Listen::Exactly(addr)
    }
}
/// How often the replica asks etcd whether it answers.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd is called unreachable once no probe has succeeded for this long (three probes).
const STALE_AFTER: Duration = Duration::from_secs(6);
/// How long a stopping server may take to finish the requests it is answering.
const DRAIN: Duration = Duration::from_secs(5);

const PAGE: &str = include_str!("status.html");
const STYLE: &str = include_str!("status.css");
const SCRIPT: &str = include_str!("status.js");

/// The page's own files only: a string from etcd that ever reached the DOM as markup still
/// could not run a script or load anything.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--listen {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// What every handler reads: this replica's cache and metrics.
#[derive(Clone)]
pub struct Surface {
    pub replica: String,
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    /// etcd's endpoints, for messages.
    pub etcd: String,
    /// The host names answered besides IP addresses and `localhost` (`--http-allow-host`).
    pub allowed_hosts: AllowedHosts,
    /// The replica's etcd client once it has one (set by [`Server::probe`]), with which the
    /// status API reads the recent decisions' times, and the times read so far.
    pub client: Arc<api::DecisionTimes>,
}

/// The running server, and the etcd probe once the replica has a client. Dropped without
/// [`Server::stop`] (the replica gave up early), both end at once: a replica that stopped
/// must not go on answering for itself.
pub struct Server {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    probe: Option<JoinHandle<()>>,
    shutdown: watch::Receiver<bool>,
    /// The surface's client slot, filled by [`Server::probe`].
    client: Arc<api::DecisionTimes>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for task in [&self.task, &self.probe].into_iter().flatten() {
            task.abort();
        }
    }
}

impl Server {
    /// Binds `listen` and serves until `shutdown` turns true. A port that cannot be had is an
    /// error now, before the replica does anything else.
    pub async fn start(
        listen: impl Into<Listen>,
        surface: Surface,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Server, HttpError> {
        let listen = listen.into();
        let listener = bind(listen).await?;
        let local = listener
            .local_addr()
            .map_err(|e| bind_error(listen.addr(), e))?;
        tracing::info!(addr = %local, url = %format!("http://{local}/"),
            "http: serving the status page, /metrics, /healthz and /readyz");
        let client = surface.client.clone();
        let app = router(surface);
        let mut stop = shutdown.clone();
        let task = tokio::spawn(
            async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    // A dropped sender means nobody can ask any more: stop too.
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "http: the server failed");
                }
            }
            .in_current_span(),
        );
        Ok(Server {
            addr: local,
            task: Some(task),
            probe: None,
            shutdown,
            client,
        })
    }

    /// The address it listens on (the port chosen, for `--listen …:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts probing etcd through the replica's `client` (for `/healthz`, and etcd's revision
    /// for the cache's lag).
    pub fn probe(&mut self, client: &Client, keys: &Keys, metrics: &Arc<Metrics>) {
        self.client.set_client(client); // the first client stays
        self.probe = Some(tokio::spawn(
            probe_etcd(
                client.clone(),
                keys.clone(),
                metrics.clone(),
                self.shutdown.clone(),
            )
            .in_current_span(),
        ));
    }

    /// Waits for the server to stop (it stops with the shutdown signal), at most a few
    /// seconds: a client that keeps its request open does not keep the replica up.
    pub async fn stop(mut self) {
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(DRAIN, &mut task).await.is_err()
        {
            tracing::warn!("http: requests still open after {DRAIN:?}; closing them");
            task.abort();
        }
        if let Some(probe) = self.probe.take() {
            probe.abort();
            let _ = probe.await;
        }
    }
}

/// The listener for `listen`: its address, or for [`Listen::FirstFree`] the first free port
/// from there on, then any. Only a port taken moves it on; any other failure is an error.
async fn bind(listen: Listen) -> Result<TcpListener, HttpError> {
    let first = match listen {
        Listen::Exactly(addr) => {
            return TcpListener::bind(addr)
                .await
                .map_err(|e| bind_error(addr, e));
        }
        Listen::FirstFree(addr) => addr,
    };
    let last = first.port().saturating_add(SPARE_PORTS);
    for port in first.port()..=last {
        let addr = SocketAddr::new(first.ip(), port);
        match TcpListener::bind(addr).await {
            Ok(listener) if port == first.port() => return Ok(listener),
            Ok(listener) => {
                tracing::info!(wanted = %first, "http: the default port is taken (another replica on this host?); serving on the next free one");
                return Ok(listener);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(bind_error(addr, e)),
        }
    }
    let listener = TcpListener::bind(SocketAddr::new(first.ip(), 0))
        .await
        .map_err(|e| bind_error(first, e))?;
    tracing::info!(wanted = %first, tried_up_to = last, "http: the default port and the next ones are taken; serving on one the system picked");
    Ok(listener)
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> HttpError {
    HttpError::Bind {
        addr,
        reason: match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "address already in use (give another --listen, or --listen '' to serve nothing)"
                    .into()
            }
            _ => io_reason(&e),
        },
    }
}

fn router(surface: Surface) -> Router {
    let hosts = surface.allowed_hosts.clone();
    Router::new()
        .route("/", get(page))
        .route("/status.css", get(style))
        .route("/status.js", get(script))
        .route("/api/state", get(api_state))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(hosts, host::check))
        .with_state(surface)
}

/// A response with the headers every answer carries: nothing cached (each read is the
/// replica's view now), and no content sniffing.
fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn page() -> Response {
    let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.into());
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    r
}

async fn style() -> Response {
    respond(StatusCode::OK, "text/css; charset=utf-8", STYLE.into())
}

async fn script() -> Response {
    respond(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        SCRIPT.into(),
    )
}

async fn api_state(State(s): State<Surface>) -> Response {
    let mut state = api::state(&s);
    s.client.fill(&mut state, s.cache.keys()).await;
    match serde_json::to_string(&state) {
        Ok(json) => respond(StatusCode::OK, "application/json", json),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot encode the state: {e}\n"),
        ),
    }
}

async fn metrics(State(s): State<Surface>) -> Response {
    match s.metrics.encode() {
        Ok(text) => respond(StatusCode::OK, Metrics::CONTENT_TYPE, text),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

async fn healthz(State(s): State<Surface>) -> Response {
    verdict(health(&s))
}

async fn readyz(State(s): State<Surface>) -> Response {
    verdict(readiness(&s))
}

async fn not_found() -> Response {
    respond(
        StatusCode::NOT_FOUND,
        TEXT,
        "not found: try /, /api/state, /metrics, /healthz or /readyz\n".into(),
    )
}

fn verdict((ok, reason): (bool, String)) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, TEXT, format!("{reason}\n"))
}

/// Whether etcd answers this replica, and a one-line reason.
pub fn health(s: &Surface) -> (bool, String) {
    let seen = s.metrics.etcd_seen();
    match (seen.last_ok, seen.error) {
        (Some(t), _) if t.elapsed() <= STALE_AFTER => {
            (true, format!("ok: etcd answered {} ago", ago(t.elapsed())))
        }
        (Some(t), error) => (
            false,
            format!(
                "etcd has not answered for {}: {}",
                ago(t.elapsed()),
                error.unwrap_or_else(|| "no answer yet".into())
            ),
        ),
        (None, Some(e)) => (false, format!("etcd not reached yet: {e}")),
        (None, None) => (
            false,
            format!("etcd not reached yet (connecting to {})", s.etcd),
        ),
    }
}

/// Whether the cache holds a whole view and follows etcd (a standby is ready too: its warm
/// cache is what lets it take over at once), and a one-line reason.
pub fn readiness(s: &Surface) -> (bool, String) {
    let f = s.cache.progress().followed();
    let rev = s.cache.revision();
    let for_ = ago(f.since.elapsed());
    let not = |why: String| (false, format!("not ready: {why}"));
    match (f.stage, f.listed) {
        (Stage::Following, true) => match health(s) {
            (true, _) => {
                let role = if s.metrics.is_leader() {
                    "leader"
                } else {
                    "standby"
                };
                (
                    true,
                    format!("ready: {role}, its cache follows etcd at revision {rev}"),
                )
            }
            (false, why) => not(why),
        },
        (Stage::Starting, _) | (Stage::Following, false) => {
            not("the cache has not listed etcd yet".into())
        }
        (Stage::Listing, false) => not(format!(
            "the cache is listing every key for the first time ({for_} so far)"
        )),
        (Stage::Listing, true) => not(format!(
            "the cache is listing again (its watch was compacted or cancelled) for {for_}"
        )),
        (Stage::Broken(e), false) => not(format!("the cache cannot list etcd ({for_}): {e}")),
        (Stage::Broken(e), true) => not(format!(
            "the cache's watch broke {for_} ago ({e}); it resumes from revision {}",
            rev + 1
        )),
    }
}

/// Asks etcd every [`PROBE_EVERY`] for the number of election keys: a linearizable read, so an
/// answer proves a quorum and this replica's credentials, and its header gives etcd's revision.
async fn probe_etcd(
    client: Client,
    keys: Keys,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let candidates = format!("{}/", keys.leader());
    loop {
        let options = GetOptions::new().with_prefix().with_count_only();
        let mut kv = client.kv_client();
        match tokio::time::timeout(PROBE_TIMEOUT, kv.get(candidates.as_str(), Some(options))).await
        {
            Ok(Ok(r)) => metrics.etcd_answered(r.header().map_or(0, |h| h.revision())),
            Ok(Err(e)) => metrics.etcd_failed(store::short(&e)),
            Err(_) => metrics.etcd_failed(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// A duration as a person reads an age: "0.4s", "12s", "3m 5s", "2h 10m".
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..10 => format!("{:.1}s", d.as_secs_f64()),
        10..120 => format!("{s}s"),
        120..7200 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// An io error's text without its `(os error N)` tail.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica's surface that has not reached etcd yet.
    fn surface() -> Surface {
        Surface {
            replica: "r".into(),
            cache: Cache::new(Keys::default(), 1.0),
            metrics: Arc::default(),
            etcd: "http://127.0.0.1:2379".into(),
            allowed_hosts: AllowedHosts::default(),
            client: Arc::default(),
        }
    }

    #[test]
    fn ages_read_as_a_person_says_them() {
        assert_eq!(ago(Duration::from_millis(400)), "0.4s");
        assert_eq!(ago(Duration::from_secs(12)), "12s");
        assert_eq!(ago(Duration::from_secs(185)), "3m 5s");
        assert_eq!(ago(Duration::from_secs(7800)), "2h 10m");
    }

    #[tokio::test]
    async fn a_port_in_use_is_one_line_naming_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let surface = surface();
        let (_stop, shutdown) = watch::channel(false);
        let e = match Server::start(addr, surface, shutdown).await {
            Ok(_) => panic!("bound a port in use"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            e,
            format!(
                "--listen {addr}: address already in use (give another --listen, or --listen '' to serve nothing)"
            )
        );
    }

    /// Without `--listen`, a taken port moves the replica on to the next free one; `--listen`
    /// given holds it to its address (see `a_port_in_use_is_one_line_naming_the_flag`).
    #[tokio::test]
    async fn a_default_port_taken_moves_on_to_a_free_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let surface = surface();
        let (stop, shutdown) = watch::channel(false);
        let server = Server::start(Listen::FirstFree(addr), surface, shutdown)
            .await
            .expect("a free port");
        let served = server.local_addr();
        assert_ne!(served, addr);
        assert_eq!(served.ip(), addr.ip());
        tokio::net::TcpStream::connect(served)
            .await
            .expect("it serves there");
        stop.send_replace(true);
        server.stop().await;
    }

    #[tokio::test]
    async fn before_etcd_answers_the_replica_is_neither_healthy_nor_ready() {
        let surface = surface();
        let (ok, why) = health(&surface);
        assert!(!ok);
        assert_eq!(
            why,
            "etcd not reached yet (connecting to http://127.0.0.1:2379)"
        );
        let (ok, why) = readiness(&surface);
        assert!(!ok);
        assert_eq!(why, "not ready: the cache has not listed etcd yet");
        surface.metrics.etcd_answered(5);
        assert!(health(&surface).0);
    }
}
