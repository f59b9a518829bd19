//! The etcd edge: connecting (with exponential backoff and jitter) and paged ranges at one revision.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, SortOrder, SortTarget};

use crate::keys::prefix_end;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach etcd at {endpoints}: {}", short(.source))]
    Unreachable {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("no etcd endpoint given (use --etcd or CITADEL_ETCD)")]
    NoEndpoints,
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
}

/// An etcd error in one readable phrase: gRPC statuses carry a debug dump of their cause.
pub fn short(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) if !s.message().is_empty() => {
            format!("{} ({})", s.message(), s.code().description())
        }
        other => other.to_string(),
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

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // etcd refuses pings closer than its --grpc-keepalive-min-time (5 s by default) with
        // GOAWAY, which would cut every stream on the connection.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
}

async fn connect_once(endpoints: &[String]) -> Result<Client, StoreError> {
    let mut client = Client::connect(endpoints, Some(options()))
        .await
        .map_err(|source| StoreError::Unreachable {
            endpoints: endpoints.join(","),
            source,
        })?;
    // The channel connects lazily: one real call proves etcd answers.
    match tokio::time::timeout(
        CALL_TIMEOUT,
        client.get("/", Some(GetOptions::new().with_keys_only().with_limit(1))),
    )
    .await
    {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(source)) => Err(StoreError::Unreachable {
            endpoints: endpoints.join(","),
            source,
        }),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

/// Connects, retrying with backoff. `give_up_after` bounds the whole attempt (the CLI uses a few
/// seconds); `None` retries until it works (long-running processes), logging every failure.
pub async fn connect(
    endpoints: &[String],
    give_up_after: Option<Duration>,
) -> Result<Client, StoreError> {
    if endpoints.is_empty() {
        return Err(StoreError::NoEndpoints);
    }
    let policy = match give_up_after {
        Some(total) => backoff().with_total_delay(Some(total)),
        None => backoff().without_max_times(),
    };
    (|| connect_once(endpoints))
        .retry(policy)
        .sleep(tokio::time::sleep)
        .notify(|err: &StoreError, after: Duration| {
            tracing::warn!(error = %err, retry_in = ?after, "etcd unreachable, retrying");
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
