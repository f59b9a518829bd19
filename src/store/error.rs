//! What went wrong talking to etcd, sorted into what is worth retrying and what is not, each in
//! one line a person can act on.

use std::path::PathBuf;
use std::time::Duration;

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
pub(super) fn find_rustls(e: &etcd_client::Error) -> Option<rustls::Error> {
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
pub(super) fn closed_under_us(e: &etcd_client::Error) -> bool {
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
