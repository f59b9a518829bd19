//! Reading everything under a prefix at one revision, in pages.

use etcd_client::{Client, GetOptions, KeyValue, SortOrder, SortTarget};

use super::{CALL_TIMEOUT, MAX_RESPONSE_BYTES, StoreError};
use crate::keys::prefix_end;

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
