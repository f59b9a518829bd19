//! The etcd edge: how to reach etcd ([`EtcdConfig`]: endpoints, TLS, credentials), connecting
//! (with exponential backoff and jitter, telling errors worth retrying from configuration
//! mistakes), and paged ranges at one revision.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    SortOrder, SortTarget, TlsOptions, Txn, TxnOp,
};

use tonic::Code;

use crate::keys::prefix_end;

/// How to reach etcd. Built once (by the command line, or a test) and handed to everything
/// that connects: controllers, one-shot commands, the bench and the processes it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` (all alike); a bare `HOST:PORT` is https when
    /// `tls` is set, as with etcdctl.
    pub endpoints: Vec<String>,
    /// Set for https endpoints; `None` is plain http.
    pub tls: Option<TlsConfig>,
    /// A user and password (etcd's `Authenticate`). A client certificate alone also
    /// authenticates when etcd runs with `--client-cert-auth`: etcd takes its CN as the user.
    pub auth: Option<Credentials>,
}

/// The TLS files, as paths: they are read at every connection attempt, so that an error names
/// the flag and the file, and a renewed file is picked up by the next attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA bundle the server's certificate must chain to (`--cacert`); the system's bundle
    /// when `None`, as etcdctl does.
    pub cacert: Option<PathBuf>,
    /// A client certificate and its key (`--cert`, `--key`), if etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A user name and password; the password never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where Debian (and most Linux systems) keep the system's CA bundle: the roots an https
/// endpoint is checked against when no `--cacert` is given, as etcdctl does.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The environment variables a child `citadel` reads its connection from (see
/// [`EtcdConfig::pass_to_child`]); the etcdctl ones are fallbacks the CLI also reads.
pub const ENV_VARS: [&str; 11] = [
    "CITADEL_ETCD",
    "CITADEL_ETCD_CACERT",
    "CITADEL_ETCD_CERT",
    "CITADEL_ETCD_KEY",
    "CITADEL_ETCD_USER",
    "CITADEL_ETCD_PASSWORD",
    "ETCDCTL_CACERT",
    "ETCDCTL_CERT",
    "ETCDCTL_KEY",
    "ETCDCTL_USER",
    "ETCDCTL_PASSWORD",
];

impl EtcdConfig {
    /// Plain endpoints: no TLS, no credentials.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            auth: None,
        }
    }

    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// The endpoints as one string, for messages.
    pub fn endpoints_str(&self) -> String {
        self.endpoints.join(",")
    }

    /// Checks that the settings fit together; a mistake here is never worth a retry.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::NoEndpoints);
        }
        let https = self.endpoints.iter().filter(|e| e.starts_with("https://"));
        let http = self.endpoints.iter().find(|e| e.starts_with("http://"));
        if let (Some(http), Some(https)) = (http, https.clone().next()) {
            return Err(StoreError::Config(format!(
                "endpoints {http} and {https} mix http and https; etcd serves clients one way"
            )));
        }
        if let (Some(_), Some(http)) = (&self.tls, http) {
            // Only the TLS settings ask for TLS here: with etcdctl's habit a --cacert
            // given to an http:// endpoint would be ignored, and a secret sent in clear.
            return Err(StoreError::Config(format!(
                "--cacert, --cert and --key are for TLS, but {http} is plain http: use https://"
            )));
        }
        if let Some(c) = &self.auth
            && c.user.is_empty()
        {
            return Err(StoreError::Config("--user: the user name is empty".into()));
        }
        Ok(())
    }

    /// True when the endpoints speak TLS.
    fn uses_tls(&self) -> bool {
        self.tls.is_some() || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Hands this configuration to a child `citadel` through its environment. Inherited
    /// connection variables are removed first, so the child sees exactly this configuration,
    /// and the password stays off the command line (`ps` shows arguments to every user).
    pub fn pass_to_child(&self, cmd: &mut std::process::Command) {
        for var in ENV_VARS {
            cmd.env_remove(var);
        }
        cmd.env("CITADEL_ETCD", self.endpoints_str());
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.cacert {
                cmd.env("CITADEL_ETCD_CACERT", ca);
            }
            if let Some((cert, key)) = &tls.identity {
                cmd.env("CITADEL_ETCD_CERT", cert);
                cmd.env("CITADEL_ETCD_KEY", key);
            }
        }
        if let Some(c) = &self.auth {
            cmd.env("CITADEL_ETCD_USER", &c.user);
            cmd.env("CITADEL_ETCD_PASSWORD", &c.password);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach etcd at {endpoints}: {}{hint}", short(.source))]
    Unreachable {
        endpoints: String,
        /// What the failure may mean, with its leading separator; often empty.
        hint: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("TLS handshake with {endpoints} failed: {reason}")]
    TlsHandshake {
        endpoints: String,
        reason: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{flag} {}: {}", .path.display(), io_reason(.source))]
    TlsFile {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: no PEM {what} in it", .path.display())]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("TLS settings refused: {reason}")]
    TlsSetup {
        reason: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd refused the credentials for user {user:?}: {}", status_message(.source))]
    AuthFailed {
        user: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "etcd requires authentication: give --user NAME[:PASSWORD] (or CITADEL_ETCD_USER), or a \
         client certificate (--cert, --key) whose CN names a user ({})",
        status_message(.source)
    )]
    AuthRequired {
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "etcd refused {access} access to {prefix} ({}): a controller needs readwrite on the whole \
         prefix (role citadel-controller; see `citadel rbac`)",
        status_message(.source)
    )]
    Denied {
        access: &'static str,
        prefix: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("no etcd endpoint given (use --etcd or CITADEL_ETCD)")]
    NoEndpoints,
    #[error("etcd: {}", short(.0))]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// A mistake in the settings or credentials, which retrying will not fix by itself (unless
    /// someone fixes it meanwhile: a long-running process tries [`PERMANENT_TRIES`] times).
    /// Everything else (refused connections, timeouts, an etcd without a leader) may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } | StoreError::Etcd(_) | StoreError::Timeout(_) => false,
            StoreError::TlsHandshake { .. }
            | StoreError::TlsFile { .. }
            | StoreError::NotPem { .. }
            | StoreError::TlsSetup { .. }
            | StoreError::AuthFailed { .. }
            | StoreError::AuthRequired { .. }
            | StoreError::Denied { .. }
            | StoreError::Config(_)
            | StoreError::NoEndpoints => true,
        }
    }
}

/// How many times a long-running process tries when every try fails for a permanent reason
/// (bad credentials, certificate or settings), before it gives up and exits.
pub const PERMANENT_TRIES: usize = 5;

/// An etcd error in one readable phrase: gRPC statuses carry a debug dump of their cause.
pub fn short(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            // A status made from a local failure (no connection, a failed handshake) says
            // little in its message; its innermost cause says what happened.
            let cause = innermost(s).filter(|c| !s.message().contains(c.as_str()));
            match (s.message().is_empty(), cause) {
                (false, None) => format!("{} ({})", s.message(), s.code().description()),
                (false, Some(c)) => format!("{}: {c}", s.message()),
                (true, Some(c)) => c,
                (true, None) => s.code().description().to_string(),
            }
        }
        etcd_client::Error::TransportError(t) => match innermost(t) {
            Some(c) => format!("transport error: {c}"),
            None => "transport error".to_string(),
        },
        other => other.to_string(),
    }
}

/// The message of a gRPC status alone (etcd's own words), else [`short`].
fn status_message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) if !s.message().is_empty() => s
            .message()
            .strip_prefix("etcdserver: ")
            .unwrap_or(s.message())
            .to_string(),
        other => short(other),
    }
}

/// The last cause in an error's chain, in its own words: io errors hide their inner error from
/// `source()`, so the walk looks inside them too.
fn innermost(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut last = None;
    let mut cur = e.source();
    while let Some(c) = cur {
        if let Some(rustls) = as_rustls(c) {
            return Some(rustls.to_string());
        }
        last = Some(c.to_string());
        cur = c.source();
    }
    last
}

/// The rustls error somewhere in this error or its causes, if TLS is what failed.
fn find_rustls(e: &etcd_client::Error) -> Option<rustls::Error> {
    let start: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(t) => t,
        etcd_client::Error::IoError(io) => io,
        _ => return None,
    };
    let mut cur = Some(start);
    while let Some(c) = cur {
        if let Some(r) = as_rustls(c) {
            return Some(r.clone());
        }
        cur = c.source();
    }
    None
}

/// True when the connection was closed or reset under us: what a TLS 1.3 client sees when the
/// server refuses its certificate (or its lack of one) after the handshake, since the
/// server's alert arrives while the client is already writing, and what a TLS server does
/// with a plain-text client.
fn closed_under_us(e: &etcd_client::Error) -> bool {
    let start: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(t) => t,
        _ => return false,
    };
    let mut cur = Some(start);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        // hyper's own words for a connection that ended before its answer.
        if c.to_string().contains("connection closed") {
            return true;
        }
        cur = c.source();
    }
    false
}

fn as_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    e.downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// An io error's text without its `(os error N)` tail: the user wants the reason.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// How long one call may take before we call etcd unreachable (watches and campaigns excepted).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One etcd call, bounded by [`CALL_TIMEOUT`]: no call of a long-running process may hang on a
/// member that stopped answering.
pub async fn timed<T>(
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))?
        .map_err(StoreError::Etcd)
}

/// The largest list page or watch response we accept. tonic's default is 4 MiB, which 2,000
/// keys of 2 KiB already exceed, and etcd sends up to 2 GiB: a larger limit costs nothing
/// until a response is that large, and a smaller one would leave a cache unable to ever list.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// The backoff every retry loop uses: exponential from 100 ms to 5 s, with jitter.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
}

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

impl Pem {
    fn name(self) -> &'static str {
        match self {
            Pem::Certificate => "certificate",
            Pem::PrivateKey => "private key",
        }
    }

    /// Whether `text` holds one (a key may be PKCS#8, RSA or EC: `-----BEGIN … PRIVATE KEY-----`).
    fn found_in(self, text: &str) -> bool {
        match self {
            Pem::Certificate => text.contains("-----BEGIN CERTIFICATE-----"),
            Pem::PrivateKey => text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----"),
        }
    }
}

/// Reads a PEM file named by `flag`, and checks it holds what it should: rustls would skip
/// anything else silently, and the handshake would then fail far from the cause.
fn read_pem(flag: &'static str, path: &Path, want: Pem) -> Result<Vec<u8>, StoreError> {
    let bytes = std::fs::read(path).map_err(|source| StoreError::TlsFile {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    if !want.found_in(&String::from_utf8_lossy(&bytes)) {
        return Err(StoreError::NotPem {
            flag,
            path: path.to_path_buf(),
            what: want.name(),
        });
    }
    Ok(bytes)
}

fn tls_options(tls: &TlsConfig) -> Result<TlsOptions, StoreError> {
    let ca = match &tls.cacert {
        Some(path) => read_pem("--cacert", path, Pem::Certificate)?,
        None => read_pem(
            "--cacert (none given; the system's bundle)",
            Path::new(SYSTEM_CA_BUNDLE),
            Pem::Certificate,
        )?,
    };
    let mut opts = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = &tls.identity {
        let cert = read_pem("--cert", cert, Pem::Certificate)?;
        let key = read_pem("--key", key, Pem::PrivateKey)?;
        opts = opts.identity(Identity::from_pem(cert, key));
    }
    Ok(opts)
}

fn options(etcd: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // etcd refuses pings closer than its --grpc-keepalive-min-time (5 s by default) with
        // GOAWAY, which would cut every stream on the connection.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if etcd.uses_tls() {
        let tls = etcd.tls.clone().unwrap_or_default();
        opts = opts.with_tls(tls_options(&tls)?);
    }
    if let Some(c) = &etcd.auth {
        // etcd's tokens expire (`--auth-token-ttl`, 300 s of disuse by default) and vanish
        // when etcd restarts; a replica may sit idle far longer. etcd-client then
        // authenticates again and repeats the refused call once.
        opts = opts
            .with_user(c.user.clone(), c.password.clone())
            .with_auto_token_refresh(true);
    }
    Ok(opts)
}

/// Sorts a failed call into what went wrong: TLS, credentials, or (the rest) reachability.
fn classify(etcd: &EtcdConfig, source: etcd_client::Error) -> StoreError {
    tracing::debug!(error = ?source, "etcd call failed");
    let endpoints = etcd.endpoints_str();
    if let Some(reason) = find_rustls(&source) {
        return StoreError::TlsHandshake {
            endpoints,
            reason: reason.to_string(),
            source,
        };
    }
    if closed_under_us(&source) {
        if etcd.uses_tls() {
            let reason = match etcd.tls.as_ref().and_then(|t| t.identity.as_ref()) {
                Some((cert, _)) => format!(
                    "etcd closed the connection: it refused the client certificate --cert {} \
                     (signed by a CA etcd does not trust, expired, or not for client use)",
                    cert.display()
                ),
                None => "etcd closed the connection: it wants a client certificate (--cert and \
                         --key)"
                    .to_string(),
            };
            return StoreError::TlsHandshake {
                endpoints,
                reason,
                source,
            };
        }
        // Perhaps etcd restarting, so this stays worth a retry; but perhaps TLS.
        return StoreError::Unreachable {
            endpoints,
            hint: " (if etcd serves TLS, use https:// and --cacert)",
            source,
        };
    }
    if let etcd_client::Error::GRpcStatus(s) = &source {
        let msg = s.message();
        if msg.contains("authentication failed") || msg.contains("user name not found") {
            let user = etcd
                .auth
                .as_ref()
                .map(|c| c.user.clone())
                .unwrap_or_default();
            return StoreError::AuthFailed { user, source };
        }
        if msg.contains("user name is empty") {
            return StoreError::AuthRequired { source };
        }
    }
    StoreError::Unreachable {
        endpoints,
        hint: "",
        source,
    }
}

/// etcd's answer to `Authenticate` while its authentication is off.
fn auth_is_off(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("authentication is not enabled"))
}

async fn open(etcd: &EtcdConfig) -> Result<Client, StoreError> {
    let opts = options(etcd)?;
    // With credentials, this already authenticates: a wrong password fails here.
    match Client::connect(&etcd.endpoints, Some(opts)).await {
        Ok(c) => Ok(c),
        Err(e) if auth_is_off(&e) => {
            // Credentials for an etcd that does not check them (yet: `citadel rbac --apply
            // --enable-auth` connects as root before it turns authentication on).
            tracing::warn!("etcd has authentication off; connecting without credentials");
            let plain = EtcdConfig {
                auth: None,
                ..etcd.clone()
            };
            Client::connect(&plain.endpoints, Some(options(&plain)?))
                .await
                .map_err(|e| setup_or_classify(&plain, e))
        }
        Err(e) => Err(setup_or_classify(etcd, e)),
    }
}

/// `Client::connect` only sends a byte when it authenticates, and that fails as a gRPC status:
/// a transport error there is the TLS settings themselves, refused before any connection.
fn setup_or_classify(etcd: &EtcdConfig, e: etcd_client::Error) -> StoreError {
    if !matches!(e, etcd_client::Error::TransportError(_)) {
        return classify(etcd, e);
    }
    let identity = etcd.tls.as_ref().and_then(|t| t.identity.as_ref());
    let reason = match (find_rustls(&e), identity) {
        (Some(rustls::Error::InconsistentKeys(_)), Some((cert, key))) => format!(
            "--key {} is not the key of --cert {}",
            key.display(),
            cert.display()
        ),
        (Some(r), _) => r.to_string(),
        (None, _) => short(&e),
    };
    StoreError::TlsSetup { reason, source: e }
}

async fn connect_once(etcd: &EtcdConfig) -> Result<Client, StoreError> {
    let mut client = open(etcd).await?;
    // The channel connects lazily: one real call proves etcd answers, and (unlike `Status`,
    // which etcd answers anyone) that it takes our credentials.
    match tokio::time::timeout(
        CALL_TIMEOUT,
        client.get("/", Some(GetOptions::new().with_keys_only().with_limit(1))),
    )
    .await
    {
        Ok(Ok(_)) => Ok(client),
        // Authenticated, only not allowed to read "/": what a role limited to a prefix is.
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == Code::PermissionDenied => {
            Ok(client)
        }
        Ok(Err(e)) => Err(classify(etcd, e)),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

/// Runs `op` with backoff until it succeeds. Transient failures are retried for
/// `give_up_after` (`None`: forever, logging each). A permanent one ends a one-shot run
/// (`give_up_after` set) at once, and a long-running one after [`PERMANENT_TRIES`] tries:
/// a certificate may be being renewed, or a password set, but not forever.
pub async fn retry<T, F, Fut>(give_up_after: Option<Duration>, op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let policy = match give_up_after {
        Some(total) => backoff().with_total_delay(Some(total)),
        None => backoff().without_max_times(),
    };
    let permanent = AtomicUsize::new(0);
    op.retry(policy)
        .sleep(tokio::time::sleep)
        .when(|e: &StoreError| {
            if !e.is_permanent() {
                return true;
            }
            give_up_after.is_none()
                && permanent.fetch_add(1, Ordering::Relaxed) + 1 < PERMANENT_TRIES
        })
        .notify(|err: &StoreError, after: Duration| {
            tracing::warn!(error = %err, retry_in = ?after, "etcd call failed, retrying");
        })
        .await
}

/// Connects, retrying with backoff (see [`retry`] for how long). `give_up_after` bounds the
/// whole attempt (the CLI uses a few seconds); `None` suits long-running processes.
pub async fn connect(
    etcd: &EtcdConfig,
    give_up_after: Option<Duration>,
) -> Result<Client, StoreError> {
    etcd.check()?;
    retry(give_up_after, || connect_once(etcd)).await
}

/// Checks that the client may read and write everything under `root` (a controller's needs),
/// so that a replica with the wrong role stops with one line instead of retrying its list
/// forever. The write check is a transaction whose compare never holds: etcd checks the
/// permissions of both branches before it evaluates the compare, so nothing is written.
pub async fn check_access(
    client: &Client,
    root: &str,
    give_up_after: Option<Duration>,
) -> Result<(), StoreError> {
    let denied = |access: &'static str, source: etcd_client::Error| match &source {
        etcd_client::Error::GRpcStatus(s) if s.code() == Code::PermissionDenied => {
            StoreError::Denied {
                access,
                prefix: root.to_string(),
                source,
            }
        }
        _ => StoreError::Etcd(source),
    };
    retry(give_up_after, || async {
        let mut kv = client.kv_client();
        let read = GetOptions::new()
            .with_range(prefix_end(root))
            .with_count_only();
        tokio::time::timeout(CALL_TIMEOUT, kv.get(root, Some(read)))
            .await
            .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))?
            .map_err(|e| denied("read", e))?;
        // A version is never negative: the put below is checked, never done.
        let probe = format!("{root}leader/access-check");
        let txn = Txn::new()
            .when(vec![Compare::version(probe.clone(), CompareOp::Less, 0)])
            .and_then(vec![TxnOp::put(probe, "", None)]);
        tokio::time::timeout(CALL_TIMEOUT, kv.txn(txn))
            .await
            .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))?
            .map_err(|e| denied("write", e))?;
        Ok(())
    })
    .await
}

/// Every key under `prefix` at one revision, fetched in pages so that a large registry is never
/// one response. Returns the keys and the revision they were read at.
pub async fn range_all(
    client: &Client,
    prefix: &str,
    page: i64,
) -> Result<(Vec<KeyValue>, i64), StoreError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let end = prefix_end(prefix);
    let mut out = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = tokio::time::timeout(CALL_TIMEOUT * 4, kv.get(from.clone(), Some(opts)))
            .await
            .map_err(|_| StoreError::Timeout(CALL_TIMEOUT * 4))??;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let more = resp.more();
        let kvs = resp.kvs();
        if let Some(last) = kvs.last() {
            // The next page starts just after the last key: append a zero byte.
            from = last.key().to_vec();
            from.push(0);
        }
        out.extend_from_slice(kvs);
        if !more || kvs.is_empty() {
            return Ok((out, revision));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_file_error_names_the_flag_and_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("ca.pem");
        let e = read_pem("--cacert", &missing, Pem::Certificate).expect_err("missing");
        assert_eq!(
            e.to_string(),
            format!("--cacert {}: No such file or directory", missing.display())
        );
        assert!(e.is_permanent());
        let not_pem = dir.path().join("key.pem");
        std::fs::write(&not_pem, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let e = read_pem("--key", &not_pem, Pem::PrivateKey).expect_err("a certificate");
        assert_eq!(
            e.to_string(),
            format!("--key {}: no PEM private key in it", not_pem.display())
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_before_connecting() {
        let mixed = EtcdConfig::new(vec!["http://a:1".into(), "https://b:2".into()]);
        assert!(mixed.check().expect_err("mixed").is_permanent());
        let tls_on_http = EtcdConfig::new(vec!["http://a:1".into()]).with_tls(TlsConfig {
            cacert: Some("/ca.pem".into()),
            identity: None,
        });
        assert!(
            tls_on_http
                .check()
                .expect_err("TLS on http")
                .to_string()
                .contains("use https://")
        );
        assert!(matches!(
            EtcdConfig::default().check(),
            Err(StoreError::NoEndpoints)
        ));
        let https = EtcdConfig::new(vec!["https://a:1".into()]);
        assert!(https.check().is_ok() && https.uses_tls());
    }

    #[test]
    fn a_child_gets_exactly_these_settings_and_no_password_in_its_arguments() {
        let cfg = EtcdConfig::new(vec!["https://a:1".into(), "https://b:2".into()])
            .with_tls(TlsConfig {
                cacert: Some("/ca.pem".into()),
                identity: Some(("/c.pem".into(), "/k.pem".into())),
            })
            .with_auth("ctl", "s3cret");
        let mut cmd = std::process::Command::new("true");
        cmd.env("ETCDCTL_USER", "someone-else");
        cfg.pass_to_child(&mut cmd);
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                let s = |o: &std::ffi::OsStr| o.to_string_lossy().into_owned();
                (s(k), v.map(s))
            })
            .collect();
        let get = |k: &str| {
            envs.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(
            get("CITADEL_ETCD").as_deref(),
            Some("https://a:1,https://b:2")
        );
        assert_eq!(get("CITADEL_ETCD_CERT").as_deref(), Some("/c.pem"));
        assert_eq!(get("CITADEL_ETCD_PASSWORD").as_deref(), Some("s3cret"));
        assert_eq!(get("ETCDCTL_USER"), None, "the inherited one is removed");
        assert_eq!(cmd.get_args().count(), 0);
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "Debug shows the password"
        );
    }
}
