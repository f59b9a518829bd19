//! What went wrong talking to etcd, sorted into what is worth retrying and what is not, each in
//! one line a person can act on.

use std::path::PathBuf;
use std::time::Duration;

use crate::cause::Cause;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach etcd at {endpoints}: {}{hint}", short(.source))]
    Unreachable {
        endpoints: String,
        /// What the failure may mean or what to check, with its leading separator; often empty.
        hint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "etcd at {endpoints} speaks plain http: drop https:// (and --cacert, --cert, --key), \
         or give etcd TLS (its --cert-file and --key-file)"
    )]
    PlainHttp {
        endpoints: String,
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
            | StoreError::PlainHttp { .. }
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

impl StoreError {
    /// The kind of the etcd error behind this one, if etcd (or the way to it) failed.
    pub fn etcd_kind(&self) -> Option<EtcdErrorKind> {
        match self {
            StoreError::Unreachable { source, .. }
            | StoreError::TlsHandshake { source, .. }
            | StoreError::PlainHttp { source, .. }
            | StoreError::TlsSetup { source, .. }
            | StoreError::AuthFailed { source, .. }
            | StoreError::AuthRequired { source }
            | StoreError::Denied { source, .. }
            | StoreError::Etcd(source) => Some(EtcdErrorKind::of(source)),
            StoreError::TlsFile { .. }
            | StoreError::NotPem { .. }
            | StoreError::Config(_)
            | StoreError::NoEndpoints
            | StoreError::Timeout(_) => None,
        }
    }
}

/// What an etcd error means to its caller. Every place that tells etcd's errors apart asks
/// [`EtcdErrorKind::of`]: nothing else reads an error's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdErrorKind {
    /// Nobody answered: no connection, a refused or failed one, or no answer in time.
    Unreachable,
    /// The TLS handshake failed (rustls's own error is among the causes).
    Tls,
    /// The connection was closed or reset under us: etcd restarting, or a TLS etcd refusing
    /// a client certificate (or its lack of one, or a plain-text client) after the handshake.
    Closed,
    /// A member answered that the cluster has no raft leader, or that it just changed: the
    /// member is alive, and nothing can commit (nor anyone take over) until it has one.
    NoLeader,
    /// A member answered that it cannot serve now: the request timed out inside etcd, it is
    /// stopping, the cluster is unhealthy, or it has too many requests.
    Unavailable,
    /// The revision asked for is below etcd's compaction: that history is gone.
    Compacted,
    /// The revision asked for is above etcd's current one.
    FutureRevision,
    /// A transaction with more operations than etcd's `--max-txn-ops` (nothing of it applied).
    TooManyOps,
    /// A request larger than etcd's `--max-request-bytes`.
    RequestTooLarge,
    /// etcd's database is at its quota (`--quota-backend-bytes`): it refuses writes until an
    /// operator compacts, defragments and disarms the alarm.
    NoSpace,
    /// The user's roles do not allow this on that key range.
    PermissionDenied,
    /// A wrong user name or password.
    AuthFailed,
    /// etcd has authentication on and the call named no user.
    AuthRequired,
    /// Credentials for an etcd whose authentication is off.
    AuthNotEnabled,
    /// An auth token etcd no longer knows (it expired, or etcd restarted).
    InvalidToken,
    /// The member is not raft's leader, for a call only the leader serves; or an election
    /// call for a key that no longer leads.
    NotLeader,
    /// A user, role, lease or member of that name or id exists already.
    AlreadyExists,
    /// A user, role, lease or member of that name or id does not exist.
    NotFound,
    /// Anything else: a request etcd refused as malformed, a corrupt cluster, or a failure
    /// the client library made up itself.
    Other,
}

impl EtcdErrorKind {
    /// Sorts an error by its gRPC status code, and by etcd's own words only where etcd gives
    /// the same code to failures that call for different handling (its texts are those of
    /// etcd's `rpctypes`; a status tonic made from a local failure has no `etcdserver:` text).
    pub fn of(e: &etcd_client::Error) -> EtcdErrorKind {
        use EtcdErrorKind as K;
        use tonic::Code;
        // etcd refused our client certificate (or its lack): its alert reaches us during the
        // handshake or, as a closed connection, after it, depending on timing. Both are the
        // same refusal.
        if certificate_refused(e) {
            return K::Closed;
        }
        if find_rustls(e).is_some() {
            return K::Tls;
        }
        if closed_under_us(e) {
            return K::Closed;
        }
        let s = match e {
            etcd_client::Error::GRpcStatus(s) => s,
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                return K::Unreachable;
            }
            // etcd-client's words for a keep-alive reply without the lease.
            etcd_client::Error::LeaseKeepAliveError(m) if m == "lease not found" => {
                return K::NotFound;
            }
            etcd_client::Error::LeaseKeepAliveError(_) => return K::Unreachable,
            _ => return K::Other,
        };
        let m = s.message();
        let etcd_said = |text: &str| m.strip_prefix("etcdserver: ") == Some(text);
        match s.code() {
            Code::Unavailable if etcd_said("no leader") || etcd_said("leader changed") => {
                K::NoLeader
            }
            // etcd's own refusals; tonic's statuses for a failed connection say something else.
            Code::Unavailable if m.starts_with("etcdserver: ") => K::Unavailable,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => K::Unreachable,
            Code::OutOfRange if etcd_said("mvcc: required revision has been compacted") => {
                K::Compacted
            }
            Code::OutOfRange if etcd_said("mvcc: required revision is a future revision") => {
                K::FutureRevision
            }
            Code::ResourceExhausted if etcd_said("mvcc: database space exceeded") => K::NoSpace,
            Code::ResourceExhausted if etcd_said("too many requests") => K::Unavailable,
            Code::InvalidArgument if etcd_said("too many operations in txn request") => {
                K::TooManyOps
            }
            Code::InvalidArgument if etcd_said("request is too large") => K::RequestTooLarge,
            Code::InvalidArgument
                if etcd_said("authentication failed, invalid user ID or password") =>
            {
                K::AuthFailed
            }
            Code::InvalidArgument if etcd_said("user name is empty") => K::AuthRequired,
            Code::FailedPrecondition if etcd_said("authentication is not enabled") => {
                K::AuthNotEnabled
            }
            Code::FailedPrecondition if etcd_said("not leader") => K::NotLeader,
            Code::FailedPrecondition
                if m.starts_with("etcdserver: ")
                    && (m.ends_with(" already exists") || m.ends_with(" already exist")) =>
            {
                K::AlreadyExists
            }
            Code::FailedPrecondition
                if m.starts_with("etcdserver: ") && m.ends_with(" not found") =>
            {
                K::NotFound
            }
            // The election API's refusal of a key that no longer leads (no code of its own).
            Code::Unknown if m == "election: not leader" => K::NotLeader,
            Code::PermissionDenied => K::PermissionDenied,
            Code::Unauthenticated => K::InvalidToken,
            Code::NotFound => K::NotFound,
            _ => K::Other,
        }
    }

    /// Whether trying the same call again later may succeed without anyone changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            EtcdErrorKind::Unreachable
                | EtcdErrorKind::Closed
                | EtcdErrorKind::NoLeader
                | EtcdErrorKind::Unavailable
        )
    }
}

/// How many times a long-running process tries when every try fails for a permanent reason
/// (bad credentials, certificate or settings), before it gives up and exits.
pub const PERMANENT_TRIES: usize = 5;

/// An etcd error in one readable phrase: gRPC statuses carry a debug dump of their cause. A
/// failure on the way to etcd (no connection, a reset, a failed handshake) is said by
/// [`Cause`]; etcd's own refusals in its words.
pub fn short(e: &etcd_client::Error) -> String {
    if let Some(cause) = local_cause(e) {
        return cause.to_string();
    }
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

/// Why the connection failed, for an error that no etcd member said (tonic made the status
/// from a local failure, or the transport or an io call failed).
pub fn local_cause(e: &etcd_client::Error) -> Option<Cause> {
    match e {
        etcd_client::Error::GRpcStatus(s) if !s.message().starts_with("etcdserver: ") => {
            Cause::of(s)
        }
        etcd_client::Error::TransportError(t) => Cause::of(t),
        etcd_client::Error::IoError(io) => Cause::of(io),
        _ => None,
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

/// True when etcd's TLS alert says it refused our certificate, or wanted one: as a rustls
/// error, or in the words a transport error carries when it wraps the alert in its own type.
fn certificate_refused(e: &etcd_client::Error) -> bool {
    use rustls::AlertDescription as A;
    let start: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(t) => t,
        etcd_client::Error::IoError(io) => io,
        _ => return false,
    };
    let mut cur = Some(start);
    while let Some(c) = cur {
        if let Some(rustls::Error::AlertReceived(
            A::BadCertificate | A::CertificateRequired | A::UnknownCA | A::CertificateUnknown,
        )) = as_rustls(c)
        {
            return true;
        }
        let text = c.to_string();
        if [
            "received fatal alert: BadCertificate",
            "received fatal alert: CertificateRequired",
        ]
        .iter()
        .any(|alert| text.contains(alert))
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn etcd_refusing_our_certificate_during_the_handshake_is_the_refusal_it_is_after_it() {
        use rustls::AlertDescription as A;
        let alert =
            |a| etcd_client::Error::IoError(std::io::Error::other(rustls::Error::AlertReceived(a)));
        for a in [A::BadCertificate, A::CertificateRequired] {
            assert_eq!(EtcdErrorKind::of(&alert(a)), EtcdErrorKind::Closed, "{a:?}");
        }
        // Wrapped by the transport in its own type, only its words are left.
        let worded = etcd_client::Error::IoError(std::io::Error::other(
            "transport error: received fatal alert: BadCertificate",
        ));
        assert_eq!(EtcdErrorKind::of(&worded), EtcdErrorKind::Closed);
        // Any other alert is a failed handshake.
        assert_eq!(
            EtcdErrorKind::of(&alert(A::HandshakeFailure)),
            EtcdErrorKind::Tls
        );
    }

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(Status::new(code, message))
    }

    /// etcd's own refusals, code and text as its `rpctypes` sends them, and what tonic and
    /// etcd-client make of failures on the way; with the kind each is.
    const STATUSES: &[(Code, &str, EtcdErrorKind)] = &[
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
            EtcdErrorKind::TooManyOps,
        ),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
            EtcdErrorKind::Compacted,
        ),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
            EtcdErrorKind::FutureRevision,
        ),
        (
            Code::PermissionDenied,
            "etcdserver: permission denied",
            EtcdErrorKind::PermissionDenied,
        ),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
            EtcdErrorKind::AuthFailed,
        ),
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty",
            EtcdErrorKind::AuthRequired,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
            EtcdErrorKind::AuthNotEnabled,
        ),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
            EtcdErrorKind::InvalidToken,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: user name not found",
            EtcdErrorKind::NotFound,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: role name not found",
            EtcdErrorKind::NotFound,
        ),
        (
            Code::NotFound,
            "etcdserver: requested lease not found",
            EtcdErrorKind::NotFound,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
            EtcdErrorKind::AlreadyExists,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
            EtcdErrorKind::AlreadyExists,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
            EtcdErrorKind::AlreadyExists,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: member ID already exist",
            EtcdErrorKind::AlreadyExists,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: not leader",
            EtcdErrorKind::NotLeader,
        ),
        (
            Code::Unknown,
            "election: not leader",
            EtcdErrorKind::NotLeader,
        ),
        (
            Code::Unavailable,
            "etcdserver: no leader",
            EtcdErrorKind::NoLeader,
        ),
        (
            Code::Unavailable,
            "etcdserver: leader changed",
            EtcdErrorKind::NoLeader,
        ),
        (
            Code::Unavailable,
            "etcdserver: request timed out",
            EtcdErrorKind::Unavailable,
        ),
        (
            Code::Unavailable,
            "etcdserver: request timed out, possibly due to previous leader failure",
            EtcdErrorKind::Unavailable,
        ),
        (
            Code::Unavailable,
            "etcdserver: server stopped",
            EtcdErrorKind::Unavailable,
        ),
        (
            Code::Unavailable,
            "etcdserver: unhealthy cluster",
            EtcdErrorKind::Unavailable,
        ),
        (
            Code::ResourceExhausted,
            "etcdserver: too many requests",
            EtcdErrorKind::Unavailable,
        ),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large",
            EtcdErrorKind::RequestTooLarge,
        ),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
            EtcdErrorKind::NoSpace,
        ),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
            EtcdErrorKind::Other,
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
            EtcdErrorKind::Other,
        ),
        (
            Code::DataLoss,
            "etcdserver: corrupt cluster",
            EtcdErrorKind::Other,
        ),
        // tonic's own statuses: no member said anything.
        (
            Code::Unavailable,
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
            EtcdErrorKind::Unreachable,
        ),
        (Code::Unavailable, "", EtcdErrorKind::Unreachable),
        (
            Code::DeadlineExceeded,
            "Timeout expired",
            EtcdErrorKind::Unreachable,
        ),
        (
            Code::Cancelled,
            "operation was canceled",
            EtcdErrorKind::Unreachable,
        ),
        // A decoded message over tonic's limit is out of range too, yet not a compaction.
        (
            Code::OutOfRange,
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
            EtcdErrorKind::Other,
        ),
        // The same words under another code are not etcd's refusal.
        (
            Code::Unknown,
            "etcdserver: too many operations in txn request",
            EtcdErrorKind::Other,
        ),
    ];

    #[test]
    fn every_etcd_error_is_sorted_by_its_code_and_etcds_words() {
        for &(code, message, want) in STATUSES {
            assert_eq!(
                EtcdErrorKind::of(&status(code, message)),
                want,
                "{code:?} {message:?}"
            );
        }
    }

    #[test]
    fn failures_on_the_way_to_etcd_are_sorted_by_their_causes() {
        use EtcdErrorKind as K;
        let io = |kind| std::io::Error::new(kind, "gone");
        let reset = etcd_client::Error::GRpcStatus(Status::from_error(Box::new(io(
            std::io::ErrorKind::ConnectionReset,
        ))));
        assert_eq!(EtcdErrorKind::of(&reset), K::Closed);
        let refused = etcd_client::Error::IoError(io(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(EtcdErrorKind::of(&refused), K::Unreachable);
        let tls = etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(EtcdErrorKind::of(&tls), K::Tls);
        let gone = etcd_client::Error::LeaseKeepAliveError("lease not found".into());
        assert_eq!(EtcdErrorKind::of(&gone), K::NotFound);
        let watch = etcd_client::Error::WatchError("no keep-alive reply within 1s".into());
        assert_eq!(EtcdErrorKind::of(&watch), K::Other);
    }

    #[test]
    fn only_failures_that_may_pass_by_themselves_are_retryable() {
        use EtcdErrorKind as K;
        for k in [K::Unreachable, K::Closed, K::NoLeader, K::Unavailable] {
            assert!(k.is_retryable(), "{k:?}");
        }
        for k in [
            K::TooManyOps,
            K::Compacted,
            K::PermissionDenied,
            K::AuthFailed,
            K::NoSpace,
        ] {
            assert!(!k.is_retryable(), "{k:?}");
        }
        let e = StoreError::Etcd(status(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ));
        assert_eq!(e.etcd_kind(), Some(K::TooManyOps));
        assert_eq!(
            StoreError::Timeout(Duration::from_secs(1)).etcd_kind(),
            None
        );
    }
}
