//! Connecting: TLS and credentials as etcd-client takes them, one real call to prove etcd
//! answers, and retries with backoff that give up on what retrying cannot fix.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::Retryable;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp,
};

use super::*;
use crate::cause::Cause;
use crate::keys::prefix_end;

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

pub(super) fn options(etcd: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // etcd refuses pings closer than its --grpc-keepalive-min-time (5 s by default) with
        // GOAWAY, which would cut every stream on the connection.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        // A member cut off from its quorum refuses at once ("no leader") instead of holding
        // the call or the watch: it goes to a member that can answer.
        .with_require_leader(true);
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
    match EtcdErrorKind::of(&source) {
        EtcdErrorKind::Tls => StoreError::TlsHandshake {
            endpoints,
            reason: find_rustls(&source).map_or_else(|| short(&source), |r| r.to_string()),
            source,
        },
        // A TLS hello answered by closing the connection, before any handshake: what an etcd
        // serving plain http does (an etcd refusing our certificate answers the hello, and
        // says so by an alert or by closing the connection once the handshake is done).
        EtcdErrorKind::Closed
            if etcd.uses_tls() && local_cause(&source) == Some(Cause::HandshakeEof) =>
        {
            StoreError::PlainHttp { endpoints, source }
        }
        EtcdErrorKind::Closed if etcd.uses_tls() => {
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
            StoreError::TlsHandshake {
                endpoints,
                reason,
                source,
            }
        }
        // Perhaps etcd restarting, so this stays worth a retry; but perhaps TLS.
        EtcdErrorKind::Closed => StoreError::Unreachable {
            endpoints,
            hint: " (if etcd serves TLS, use https:// and --cacert)".into(),
            source,
        },
        // Authenticating as a user etcd does not have is a wrong name, as a wrong password.
        EtcdErrorKind::AuthFailed | EtcdErrorKind::NotFound => {
            let user = etcd
                .auth
                .as_ref()
                .map(|c| c.user.clone())
                .unwrap_or_default();
            StoreError::AuthFailed { user, source }
        }
        EtcdErrorKind::AuthRequired => StoreError::AuthRequired { source },
        _ => StoreError::Unreachable {
            hint: match local_cause(&source).map(|c| c.hint("etcd")) {
                Some(h) if !h.is_empty() => format!(": {h}"),
                _ => String::new(),
            },
            endpoints,
            source,
        },
    }
}

/// etcd's answer to `Authenticate` while its authentication is off.
fn auth_is_off(e: &etcd_client::Error) -> bool {
    EtcdErrorKind::of(e) == EtcdErrorKind::AuthNotEnabled
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
        Ok(Err(e)) if EtcdErrorKind::of(&e) == EtcdErrorKind::PermissionDenied => Ok(client),
        Ok(Err(e)) => Err(plain_http_or(etcd, classify(etcd, e)).await),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

/// A TLS connection etcd closed, told apart for sure: a plain-http etcd closes (or resets) the
/// connection on a TLS hello, and so may one refusing a client certificate, depending on
/// timing (a reset looks the same in both). Only when that is the failure, one plain HTTP request to each endpoint asks which.
async fn plain_http_or(etcd: &EtcdConfig, err: StoreError) -> StoreError {
    match err {
        StoreError::TlsHandshake {
            endpoints,
            reason,
            source,
        } if EtcdErrorKind::of(&source) == EtcdErrorKind::Closed => {
            for endpoint in &etcd.endpoints {
                if speaks_plain_http(endpoint).await {
                    return StoreError::PlainHttp { endpoints, source };
                }
            }
            StoreError::TlsHandshake {
                endpoints,
                reason,
                source,
            }
        }
        other => other,
    }
}

/// Whether `endpoint` answers a plain HTTP `GET /version` as etcd does (bounded: one second in
/// all). A TLS server answers it with a 400 that names no etcd.
async fn speaks_plain_http(endpoint: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    let hostport = hostport.split('/').next().unwrap_or(hostport);
    let limit = Duration::from_secs(1);
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(hostport).await.ok()?;
        let request =
            format!("GET /version HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 1024];
        let mut n = 0;
        while n < buf.len() {
            match conn.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(answer.starts_with("HTTP/1.") && answer.contains("etcdserver"))
    };
    matches!(tokio::time::timeout(limit, ask).await, Ok(Some(true)))
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
    if give_up_after.is_some() && etcd.endpoints.len() > 1 {
        // A one-shot command: only the members that answer now, so that a dead one costs it
        // nothing. A long-running process keeps them all, and `endpoints::supervise` sets
        // aside those that stop answering.
        let alive = EtcdConfig {
            endpoints: super::endpoints::answering(etcd).await,
            ..etcd.clone()
        };
        return retry(give_up_after, || connect_once(&alive)).await;
    }
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
    let denied = |access: &'static str, source: etcd_client::Error| match EtcdErrorKind::of(&source)
    {
        EtcdErrorKind::PermissionDenied => StoreError::Denied {
            access,
            prefix: root.to_string(),
            source,
        },
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
}
