//! `citadel submit --replicas N FILE`: N members of one group from one template, written all or
//! nothing, each only if absent, and waited for together with `--wait`.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use futures_util::StreamExt;

use serde::Serialize;

use super::output::{json_line, outln};
use super::request::{EXIT_INVALID, SubmitArgs, WaitFor, submit_id, wait_decision};
use super::{CliError, request_id, timed};
use crate::keys::Keys;
use crate::manager::MAX_TXN_BYTES;
use crate::model::{Decision, Request, RequestId};

/// The most members one `--replicas` writes.
pub const MAX_REPLICAS: i64 = 1000;
/// Members per transaction: under etcd's default `--max-txn-ops` (128), which bounds the
/// compares and the puts alike.
const MEMBERS_PER_TXN: usize = 120;
/// Members waited for at once with `--wait` (one watch each).
const WAITS_AT_ONCE: usize = 64;
/// A usage error that is not the argument parser's: what it exits with.
const EXIT_USAGE: i32 = 2;

pub(super) async fn submit(
    client: &Client,
    keys: &Keys,
    a: &SubmitArgs,
    raw: Vec<u8>,
    n: usize,
) -> Result<(), CliError> {
    let id = submit_id(a.id.as_deref())?;
    let value = member_value(&raw, &id)?;
    // Refused before anything is written, as submit refuses one request.
    let prepared = super::request::validate(&id, &value)?;
    let request = &prepared.request;
    if let Some(group) = &request.group
        && group.min > n
    {
        return Err(CliError::Decided {
            code: EXIT_USAGE,
            message: format!(
                "--replicas {n}: the request's group_min is {}, so these replicas alone could \
                 never place group {}",
                group.min, group.name
            ),
        });
    }
    let members = (0..n)
        .map(|k| request_id(&format!("{id}-{k}")))
        .collect::<Result<Vec<_>, _>>()?;
    let revisions = write(client, keys, &members, &value).await?;
    let Some(wait) = a.wait else {
        for m in &members {
            outln!("{m}");
        }
        return Ok(());
    };
    let timeout = Duration::from_secs(a.timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    // In member order, a bounded number of watches open at once; one deadline for them all.
    let mut waits = futures_util::stream::iter(members.iter().zip(revisions))
        .map(|(m, rev)| async move {
            (
                m,
                wait_decision(client, keys, m, rev, wait, deadline, timeout).await,
            )
        })
        .buffered(WAITS_AT_ONCE);
    let mut worst: Option<(i32, String)> = None;
    let mut missed = 0;
    while let Some((m, waited)) = waits.next().await {
        let ended = match waited {
            Ok((decision, done)) => {
                json_line(&Member {
                    id: m.as_str(),
                    decision: &decision,
                })?;
                done
            }
            Err(e) => Err(e),
        };
        if let Err(e) = ended {
            missed += 1;
            let code = e.exit_code();
            if worst.as_ref().is_none_or(|(w, _)| rank(code) > rank(*w)) {
                worst = Some((code, format!("{m}: {e}")));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((code, what)) => Err(CliError::Decided {
            code,
            message: format!(
                "{missed} of {n} members not {}; the worst: {what}",
                match wait {
                    WaitFor::Placed => "placed",
                    WaitFor::Running => "running",
                }
            ),
        }),
    }
}

/// A member's decision as `--wait` prints it: the decision, with the member's id first.
#[derive(Serialize)]
struct Member<'a> {
    id: &'a str,
    #[serde(flatten)]
    decision: &'a Decision,
}

/// How bad an exit code is: an error (1) above all, then the higher code.
fn rank(code: i32) -> i32 {
    if code == 1 { i32::MAX } else { code }
}

/// A member's value: the template as written when it names its group, else with `"group"`
/// set to `id`, added in front so every other byte stays as written.
fn member_value(raw: &[u8], id: &RequestId) -> Result<Vec<u8>, CliError> {
    let invalid = |message: String| CliError::Decided {
        code: EXIT_INVALID,
        message: format!("invalid request: {message}"),
    };
    let template = match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(o)) => o,
        // Not an object: refused with the words submit refuses it with.
        _ => {
            return Err(invalid(Request::parse(raw).err().map_or_else(
                || "request must be a JSON object".to_string(),
                |e| e.to_string(),
            )));
        }
    };
    let name = serde_json::to_string(id.as_str()).map_err(|e| invalid(e.to_string()))?;
    match template.get("group") {
        // Its own group (or a bad one, which validation names).
        Some(g) if !g.is_null() => Ok(raw.to_vec()),
        // `"group": null`: set in place (re-serialised).
        Some(_) => {
            let mut template = template;
            template.insert("group".into(), id.as_str().into());
            serde_json::to_vec(&template).map_err(|e| invalid(e.to_string()))
        }
        None => {
            let open = raw
                .iter()
                .position(|b| *b == b'{')
                .ok_or_else(|| invalid("request must be a JSON object".into()))?;
            let comma = if template.is_empty() { "" } else { "," };
            let mut value = Vec::with_capacity(raw.len() + name.len() + 10);
            value.extend_from_slice(&raw[..=open]);
            value.extend_from_slice(format!("\"group\":{name}{comma}").as_bytes());
            value.extend_from_slice(&raw[open + 1..]);
            Ok(value)
        }
    }
}

/// Writes every member, each only if absent: in one transaction when they fit in one, else in
/// several, taking back what was written if a later one is refused. Returns each member's
/// revision.
async fn write(
    client: &Client,
    keys: &Keys,
    members: &[RequestId],
    value: &[u8],
) -> Result<Vec<i64>, CliError> {
    let longest = members.last().map_or(0, |m| keys.request(m).len());
    let per_txn = (MAX_TXN_BYTES / (value.len() + longest)).clamp(1, MEMBERS_PER_TXN);
    let mut kv = client.kv_client();
    let mut written: Vec<(&[RequestId], i64)> = Vec::new();
    for chunk in members.chunks(per_txn) {
        let chunk_keys: Vec<String> = chunk.iter().map(|m| keys.request(m)).collect();
        let txn = Txn::new()
            .when(
                chunk_keys
                    .iter()
                    .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                chunk_keys
                    .iter()
                    .map(|k| TxnOp::put(k.clone(), value.to_vec(), None))
                    .collect::<Vec<_>>(),
            )
            .or_else(
                chunk_keys
                    .iter()
                    .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only())))
                    .collect::<Vec<_>>(),
            );
        let resp = match timed(kv.txn(txn)).await {
            Ok(resp) => resp,
            Err(e) => {
                let left = take_back(client, keys, &written).await;
                return Err(left_behind(e.to_string(), left));
            }
        };
        if resp.succeeded() {
            written.push((chunk, resp.header().map_or(0, |h| h.revision())));
            continue;
        }
        let existing = chunk
            .iter()
            .zip(resp.op_responses())
            .find(|(_, r)| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()))
            .map_or_else(|| "a member".to_string(), |(m, _)| format!("request {m}"));
        let left = take_back(client, keys, &written).await;
        let message = format!("{existing} already exists");
        return Err(if left.is_empty() {
            CliError::Usage(format!(
                "{message}; nothing was written: release it first or pick another --id"
            ))
        } else {
            left_behind(message, left)
        });
    }
    Ok(written
        .iter()
        .flat_map(|(chunk, rev)| std::iter::repeat_n(*rev, chunk.len()))
        .collect())
}

/// The error of a write that stopped part way, naming the members it could not take back.
fn left_behind(message: String, left: Vec<RequestId>) -> CliError {
    if left.is_empty() {
        return CliError::Usage(format!("{message}; nothing was written"));
    }
    let first = &left[0];
    CliError::Usage(format!(
        "{message}; {} member(s) written before it are left (from {first}): release them",
        left.len()
    ))
}

/// Deletes the chunks written, each only while none of its members changed since; returns the
/// members left behind.
async fn take_back(
    client: &Client,
    keys: &Keys,
    written: &[(&[RequestId], i64)],
) -> Vec<RequestId> {
    let mut kv = client.kv_client();
    let mut left = Vec::new();
    for (chunk, rev) in written {
        let chunk_keys: Vec<String> = chunk.iter().map(|m| keys.request(m)).collect();
        let txn = Txn::new()
            .when(
                chunk_keys
                    .iter()
                    .map(|k| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                chunk_keys
                    .iter()
                    .map(|k| TxnOp::delete(k.clone(), None))
                    .collect::<Vec<_>>(),
            );
        match timed(kv.txn(txn)).await {
            Ok(resp) if resp.succeeded() => {}
            _ => left.extend(chunk.iter().cloned()),
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(raw: &str) -> String {
        let id = RequestId::new("web").expect("id");
        String::from_utf8(member_value(raw.as_bytes(), &id).expect("a member")).expect("utf-8")
    }

    #[test]
    fn a_member_is_the_template_with_its_group_and_every_other_byte_as_written() {
        assert_eq!(
            member(r#" {"cpus": 1.50, "image": "x"}"#),
            r#" {"group":"web","cpus": 1.50, "image": "x"}"#
        );
        assert_eq!(member("{ }"), r#"{"group":"web" }"#);
        let own = r#"{"group": "g", "cpus": 1.0}"#;
        assert_eq!(member(own), own);
        let null: serde_json::Value =
            serde_json::from_str(&member(r#"{"group": null, "cpus": 1}"#)).expect("json");
        assert_eq!(null["group"], "web");
        let id = RequestId::new("web").expect("id");
        assert!(member_value(b"[1]", &id).is_err());
        assert!(member_value(b"{", &id).is_err());
    }
}
