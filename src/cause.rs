//! Why a connection failed, read from an error's chain of causes: the one classifier both
//! network edges use, etcd's ([`crate::store`]) and Docker's ([`crate::docker`]).
//!
//! The libraries on the way (tonic, hyper, hyper-util, rustls, bollard) wrap a failed
//! connection in layers whose own words say little ("transport error", "client error
//! (Connect)") or dump Debug structs. What happened is the innermost io error (or the rustls
//! error) of the chain: refused, timed out, no route, a name that does not resolve, a reset,
//! a TLS handshake the other side ended without a word. [`Cause::of`] finds it; its `Display`
//! is the phrase a message puts after "cannot reach … at ADDR:".

use std::error::Error;
use std::io::ErrorKind;

/// What ended a connection, as a person would say it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// Nothing listens on that port (or a firewall rejects it).
    Refused,
    /// No answer in time (the host is down, or a firewall drops the packets).
    TimedOut,
    /// The host or its network is unreachable from here.
    NoRoute,
    /// No such file: a unix socket that is not there.
    NoSocket,
    /// This user may not open it (a unix socket's permissions).
    PermissionDenied,
    /// The host name does not resolve; the resolver's words.
    Dns(String),
    /// The other side reset or aborted the connection.
    Reset,
    /// The other side closed the connection during our TLS handshake without answering it:
    /// what a server that does not speak TLS (plain http) does with a TLS client hello.
    HandshakeEof,
    /// The other side closed the connection after it was made.
    Closed,
    /// The TLS handshake failed, in rustls's words.
    Tls(rustls::Error),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Refused => f.write_str("connection refused"),
            Cause::TimedOut => f.write_str("connection timed out"),
            Cause::NoRoute => f.write_str("no route to the host"),
            Cause::NoSocket => f.write_str("no such socket"),
            Cause::PermissionDenied => f.write_str("permission denied"),
            Cause::Dns(why) => write!(f, "the host name does not resolve ({why})"),
            Cause::Reset => f.write_str("connection reset"),
            Cause::HandshakeEof => {
                f.write_str("the TLS handshake got no answer: the server closed the connection")
            }
            Cause::Closed => f.write_str("connection closed"),
            Cause::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// The resolver's words for a name it cannot resolve (std's `ToSocketAddrs`, which hyper-util
/// and tonic resolve with); its io error has no kind of its own.
const DNS_FAILURE: &str = "failed to lookup address information";

impl Cause {
    /// The innermost cause in `e`'s chain that says why a connection failed, if any does.
    /// io errors hide their inner error from `source()`, so the walk looks inside them too.
    pub fn of(e: &(dyn Error + 'static)) -> Option<Cause> {
        let mut found = None;
        let mut cur = Some(e);
        while let Some(c) = cur {
            if let Some(cause) = Self::here(c) {
                found = Some(cause);
            }
            // An io error's `source()` is its inner error's source: the inner one itself
            // would be skipped.
            cur = match c
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => Some(inner as &(dyn Error + 'static)),
                None => c.source(),
            };
        }
        found
    }

    /// What this one error of a chain says by itself.
    fn here(c: &(dyn Error + 'static)) -> Option<Cause> {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(Cause::Tls(r.clone()));
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Self::of_io(io);
        }
        // hyper's own words for a connection that ended before its answer.
        c.to_string()
            .contains("connection closed")
            .then_some(Cause::Closed)
    }

    fn of_io(io: &std::io::Error) -> Option<Cause> {
        let text = io.to_string();
        Some(match io.kind() {
            ErrorKind::ConnectionRefused => Cause::Refused,
            ErrorKind::TimedOut => Cause::TimedOut,
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Cause::NoRoute,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                Cause::Reset
            }
            // tokio-rustls's words for an end of stream before the handshake completed.
            ErrorKind::UnexpectedEof if text.contains("handshake") => Cause::HandshakeEof,
            ErrorKind::UnexpectedEof => Cause::Closed,
            ErrorKind::NotFound => Cause::NoSocket,
            ErrorKind::PermissionDenied => Cause::PermissionDenied,
            _ if text.starts_with(DNS_FAILURE) => {
                let why = text
                    .strip_prefix(DNS_FAILURE)
                    .map(|rest| rest.trim_start_matches([':', ' ']))
                    .filter(|rest| !rest.is_empty())
                    .unwrap_or("no such host");
                Cause::Dns(why.to_string())
            }
            _ => return None,
        })
    }

    /// What to check, after the cause, for a server at an address the user gave: "is it
    /// listening there?" and the like. Empty when the cause says it all.
    pub fn hint(&self, server: &str) -> String {
        match self {
            Cause::Refused => format!("is {server} listening on that address and port?"),
            Cause::TimedOut | Cause::NoRoute => {
                "is the host up, and does a firewall let this machine reach it?".to_string()
            }
            Cause::Dns(_) => "is the host name right?".to_string(),
            Cause::NoSocket => format!("is {server} running, and is that its socket?"),
            Cause::PermissionDenied => {
                format!("may this user open {server}'s socket (its group)?")
            }
            Cause::Reset | Cause::HandshakeEof | Cause::Closed | Cause::Tls(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping `inner` as its source, with words of its own that say little.
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapper(#[source] Box<dyn Error + Send + Sync>);

    #[test]
    fn the_innermost_io_error_says_what_happened() {
        let io = |kind, text: &str| std::io::Error::new(kind, text.to_string());
        let cases = [
            (
                io(ErrorKind::ConnectionRefused, "Connection refused"),
                Cause::Refused,
            ),
            (io(ErrorKind::TimedOut, "timed out"), Cause::TimedOut),
            (io(ErrorKind::HostUnreachable, "no route"), Cause::NoRoute),
            (io(ErrorKind::ConnectionReset, "reset"), Cause::Reset),
            (
                io(ErrorKind::UnexpectedEof, "tls handshake eof"),
                Cause::HandshakeEof,
            ),
            (io(ErrorKind::UnexpectedEof, "early eof"), Cause::Closed),
            (
                io(
                    ErrorKind::Other,
                    "failed to lookup address information: Name or service not known",
                ),
                Cause::Dns("Name or service not known".into()),
            ),
        ];
        for (inner, want) in cases {
            let wrapped = Wrapper(Box::new(Wrapper(Box::new(inner))));
            assert_eq!(Cause::of(&wrapped), Some(want));
        }
        let unrelated = Wrapper(Box::new(io(ErrorKind::InvalidInput, "bad")));
        assert_eq!(Cause::of(&unrelated), None);
        // rustls's error hides inside an io error, out of `source()`'s reach.
        let tls = Wrapper(Box::new(std::io::Error::new(
            ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert!(matches!(Cause::of(&tls), Some(Cause::Tls(_))));
        assert_eq!(Cause::Refused.to_string(), "connection refused");
    }
}
