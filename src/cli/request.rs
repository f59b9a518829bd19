//! `citadel submit`, `status` and `release`: a user's requests.

use std::io::Read;
use std::time::Duration;

use clap::Args;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};

use super::{CliError, request_id, timed};
use crate::keys::Keys;
use crate::model::{Decision, Request, RequestId, Status};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A JSON file, or - for standard input.
    pub file: String,
    /// Request id (default: a new UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// Wait for the decision and print it; exit 0 if placed, 2 if not.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

pub(super) async fn submit(client: &Client, keys: &Keys, a: SubmitArgs) -> Result<(), CliError> {
    let raw = if a.file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Usage(format!("reading standard input: {e}")))?;
        buf
    } else {
        std::fs::read(&a.file).map_err(|e| CliError::Usage(format!("{}: {e}", a.file)))?
    };
    if let Err(e) = Request::parse(&raw) {
        return Err(CliError::Usage(format!("invalid request: {e}")));
    }
    let id = match a.id {
        Some(id) => request_id(&id)?,
        None => request_id(&uuid::Uuid::new_v4().to_string())?,
    };
    let key = keys.request(&id);
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key, raw, None)]);
    let mut kv = client.kv_client();
    let resp = timed(kv.txn(txn)).await?;
    if !resp.succeeded() {
        return Err(CliError::Usage(format!(
            "request {id} already exists; release it first or pick another --id"
        )));
    }
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    if !a.wait {
        println!("{id}");
        return Ok(());
    }
    let decision = wait_decision(client, keys, &id, rev, Duration::from_secs(a.timeout)).await?;
    print_decision(&decision)
}

/// Waits for a decision on request revision `rev`, watching from that revision.
async fn wait_decision(
    client: &Client,
    keys: &Keys,
    id: &RequestId,
    rev: i64,
    timeout: Duration,
) -> Result<Decision, CliError> {
    let key = keys.decision(id);
    let wait = async {
        let mut stream = client
            .watch_client()
            .watch(
                key.clone(),
                Some(WatchOptions::new().with_start_revision(rev)),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            for ev in resp.events() {
                if let Some(kv) = ev.kv()
                    && let Ok(d) = serde_json::from_slice::<Decision>(kv.value())
                    && d.request_revision >= rev
                {
                    return Ok(d);
                }
            }
        }
        Err(CliError::Usage(
            "watch ended before a decision arrived".into(),
        ))
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| {
        CliError::Usage(format!(
            "no decision for {id} within {timeout:?}: is a controller running? (citadel status {id})"
        ))
    })?
}

fn print_decision(d: &Decision) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(d).map_err(|e| CliError::Usage(e.to_string()))?
    );
    match d.status {
        Status::Placed => Ok(()),
        other => Err(CliError::NotPlaced(format!("{other}: {}", d.reason))),
    }
}

pub(super) async fn status(client: &Client, keys: &Keys, id: &str) -> Result<(), CliError> {
    let id = request_id(id)?;
    let mut kv = client.kv_client();
    let txn = Txn::new().and_then(vec![
        TxnOp::get(keys.request(&id), None),
        TxnOp::get(keys.decision(&id), None),
    ]);
    let resp = timed(kv.txn(txn)).await?;
    let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let request = gets.next().and_then(|g| g.kvs().first().cloned());
    let decision = gets.next().and_then(|g| g.kvs().first().cloned());
    match (request, decision) {
        (None, None) => Err(CliError::Usage(format!("no request {id}"))),
        (Some(r), None) => {
            println!("{id}: pending (request revision {})", r.mod_revision());
            Ok(())
        }
        (r, Some(d)) => {
            let d: Decision = serde_json::from_slice(d.value())
                .map_err(|e| CliError::Usage(format!("decision for {id} is unreadable: {e}")))?;
            if let Some(r) = r
                && r.mod_revision() != d.request_revision
            {
                println!(
                    "{id}: pending (request revision {}; the decision below is for revision {})",
                    r.mod_revision(),
                    d.request_revision
                );
            }
            // `status` reports; only `submit --wait` turns "not placed" into an exit code.
            print_decision(&d).or_else(|e| match e {
                CliError::NotPlaced(_) => Ok(()),
                e => Err(e),
            })
        }
    }
}

pub(super) async fn release(client: &Client, keys: &Keys, id: &str) -> Result<(), CliError> {
    let id = request_id(id)?;
    let mut kv = client.kv_client();
    let deleted = timed(kv.delete(keys.request(&id), None)).await?.deleted();
    if deleted == 0 {
        return Err(CliError::Usage(format!("no request {id}")));
    }
    println!("released {id}: the leader frees its reservation and removes its decision");
    Ok(())
}
