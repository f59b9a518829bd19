//! The etcd edge: how to reach etcd ([`EtcdConfig`]: endpoints, TLS, credentials), connecting
//! (with exponential backoff and jitter, telling errors worth retrying from configuration
//! mistakes), keeping a long-running client off members that stopped answering
//! ([`endpoints`]), paged ranges at one revision, a watch that resumes where it broke
//! ([`watch`]), and the leader's fenced writes ([`fence`]).
//!
//! Nothing above this module speaks gRPC: it hands out a connected [`etcd_client::Client`] and
//! bounds every call ([`timed`]). What an etcd error means is [`EtcdErrorKind::of`]'s to say:
//! nothing else reads an error's text.
//!
//! It may not parse a value or know what a request, decision or engine is: the modules above
//! bring their keys and bytes.

mod config;
mod connect;
pub mod endpoints;
mod error;
pub mod fence;
mod range;
pub mod watch;

use std::time::Duration;

use backon::ExponentialBuilder;

pub use config::*;
pub use connect::*;
pub use error::*;
pub use range::*;

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

/// The longest a retry loop waits between two tries, before jitter (which adds up to as much
/// again): about a second at most. etcd answers again the moment it is back, and every loop on
/// the way to a decision (the watch, the lease, the campaign, the leader's writes) retries, so
/// the first decision after etcd returns waits for the slowest of them. A few calls a second
/// per replica cost an etcd that is down nothing.
pub const MAX_RETRY_DELAY: Duration = Duration::from_millis(600);

/// The backoff every retry loop uses: exponential from 100 ms to [`MAX_RETRY_DELAY`], with
/// jitter.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_RETRY_DELAY)
        .with_factor(2.0)
        .with_jitter()
}
