//! The `Host` check against DNS rebinding: a web page the operator's browser opens elsewhere
//! may point a name of its own at this replica's address, and read the status page, /api and
//! /metrics as if they were that site's. Its requests then carry that name in `Host`. Only an
//! IP literal, `localhost`, or a name the operator allows (`--http-allow-host`) is answered;
//! anything else gets 421 and one line.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{TEXT, respond};

/// The names besides IP literals and `localhost` this replica answers to, lowercase, without
/// a trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    /// From `--http-allow-host` (repeatable): host names, without a port.
    pub fn new(names: &[String]) -> Result<AllowedHosts, String> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let n = normal(name.trim());
            let fits = !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !fits {
                return Err(format!(
                    "--http-allow-host {name:?}: expected a host name, without a port \
                     (status.example.com)"
                ));
            }
            out.push(n);
        }
        Ok(AllowedHosts(out.into()))
    }

    /// Whether a request whose `Host` header is `host` (`NAME`, `NAME:PORT`, `[V6]:PORT`) may
    /// be answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // `[::1]:9090`: the address between the brackets.
            Some(v6) => match v6.split_once(']') {
                Some((addr, _)) => return addr.parse::<std::net::Ipv6Addr>().is_ok(),
                None => return false,
            },
            None => match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                Some(_) => return false,
                None => host,
            },
        };
        let name = normal(name);
        name.parse::<IpAddr>().is_ok() || name == "localhost" || self.0.contains(&name)
    }
}

/// A host name as compared: lowercase, without the trailing dot of a fully qualified name.
fn normal(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The middleware: answers 421 to a request that names a host this replica does not answer
/// to, in its `Host` header or its absolute URI. A request without either (HTTP/1.0) names
/// none, and is answered: a rebinding browser always names one.
pub(super) async fn check(
    State(hosts): State<AllowedHosts>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().map_err(|_| ()));
    let uri = request.uri().authority().map(|a| Ok(a.as_str()));
    for named in [header, uri].into_iter().flatten() {
        if !named.is_ok_and(|h| hosts.allows(h)) {
            tracing::debug!(host = ?named, "http: refused a request for another host name");
            return refused();
        }
    }
    next.run(request).await
}

fn refused() -> Response {
    respond(
        StatusCode::MISDIRECTED_REQUEST,
        TEXT,
        "this replica answers only to IP addresses, localhost and the names given with \
         --http-allow-host\n"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_localhost_and_allowed_names_are_answered() {
        let hosts = AllowedHosts::new(&["Status.Example.com".into()]).expect("a name");
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "10.1.2.3:80",
            "[::1]:9090",
            "[fe80::1]",
            "localhost",
            "LOCALHOST:9090",
            "localhost.:9090",
            "status.example.com",
            "status.example.com.:9090",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "status.example.com.evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[::1",
            "[not-v6]:9090",
            "127.0.0.1:port",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        assert!(!AllowedHosts::default().allows("status.example.com"));
        for bad in ["", "a:9090", "a/b", " "] {
            assert!(AllowedHosts::new(&[bad.into()]).is_err(), "{bad:?}");
        }
    }
}
