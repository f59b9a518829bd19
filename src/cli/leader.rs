//! `citadel leader`: who leads, and the other candidates of the election. The leader is the
//! candidate with the lowest create revision under `leader/` whose key has a lease (etcd's
//! election API writes every campaign key on its candidate's lease).
//!
//! In `-o json`, a lease is a string in hex, as `etcdctl lease` prints and takes it: lease ids
//! run past 2^53, which a JSON number read as a double (jq, JavaScript) would round.

use std::time::SystemTime;

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use serde::{Serialize, Serializer};

use super::output::{OutputArgs, add_row, age, json, outln, print_table, table};
use super::{CliError, timed};
use crate::keys::Keys;
use crate::model::LeaderInfo;

/// One campaign key.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateRow {
    /// The key's last segment (the lease, in hex).
    pub key: String,
    /// The replica's id, when the value names one.
    pub id: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// Where it serves its status page (IP:PORT), when it says (older replicas do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Its build's version, when it says (older replicas do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it began campaigning (RFC 3339).
    pub since: String,
    /// When it began leading (RFC 3339), as the leader writes it once it has won (absent for
    /// the others, and for a leader of a release before the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leads_since: Option<String>,
    /// In hex, as a string; "0": no lease (not written by the election API; it blocks every
    /// election).
    #[serde(serialize_with = "hex")]
    pub lease: i64,
    /// Seconds left on its lease, and the lease's TTL (`None`: the lease is gone or unknown).
    pub lease_ttl_left: Option<i64>,
    pub lease_ttl: Option<i64>,
    pub create_revision: i64,
    /// The key's mod revision: a leader rewrites its key when it wins (its barrier), so for
    /// the leader this is the revision since which it leads.
    pub mod_revision: i64,
    pub leads: bool,
}

/// The election, as `leader -o json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Election {
    /// etcd's revision when it was read.
    pub revision: i64,
    pub leader: Option<CandidateRow>,
    pub candidates: Vec<CandidateRow>,
}

/// Reads every campaign key, lowest create revision first, with each lease's time left.
pub async fn election(client: &Client, keys: &Keys) -> Result<Election, CliError> {
    let prefix = format!("{}/", keys.leader());
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let resp = timed(client.kv_client().get(prefix.as_str(), Some(opts))).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut candidates = Vec::new();
    for kv in resp.kvs() {
        let info: Option<LeaderInfo> = serde_json::from_slice(kv.value()).ok();
        let (left, ttl) = if kv.lease() == 0 {
            (None, None)
        } else {
            match timed(client.lease_client().time_to_live(kv.lease(), None)).await {
                Ok(t) if t.ttl() >= 0 => (Some(t.ttl()), Some(t.granted_ttl())),
                _ => (None, None),
            }
        };
        candidates.push(CandidateRow {
            key: String::from_utf8_lossy(kv.key())
                .trim_start_matches(prefix.as_str())
                .to_string(),
            id: info.as_ref().map(|i| i.id.clone()),
            addr: info.as_ref().map(|i| i.addr.clone()).unwrap_or_default(),
            status: info.as_ref().and_then(|i| i.status.clone()),
            version: info.as_ref().and_then(|i| i.version.clone()),
            leads_since: info.as_ref().and_then(|i| i.leads_since.clone()),
            since: info.map(|i| i.since).unwrap_or_default(),
            lease: kv.lease(),
            lease_ttl_left: left,
            lease_ttl: ttl,
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            leads: false,
        });
    }
    let leader = candidates.iter().position(|c| c.lease != 0);
    if let Some(i) = leader {
        candidates[i].leads = true;
    }
    Ok(Election {
        revision,
        leader: leader.map(|i| candidates[i].clone()),
        candidates,
    })
}

/// The one line `ls` and `leader` begin with.
pub fn leader_line(e: &Election, now: SystemTime) -> String {
    let Some(l) = &e.leader else {
        return "leader: none (no controller is running, or none has won yet)".to_string();
    };
    let ttl = match (l.lease_ttl_left, l.lease_ttl) {
        (Some(left), Some(ttl)) => format!(", {left}s of {ttl}s left"),
        _ => String::new(),
    };
    // A leader of a release before `leads_since` says only when it began campaigning.
    let since = match &l.leads_since {
        Some(t) => format!("leads since {} (revision {})", age(t, now), l.mod_revision),
        None => format!(
            "leads since revision {}, campaigning since {}",
            l.mod_revision,
            age(&l.since, now)
        ),
    };
    format!(
        "leader: {} (lease {:x}{ttl}), {since}; {} candidate(s)",
        l.id.as_deref().unwrap_or("?"),
        l.lease,
        e.candidates.len()
    )
}

/// A lease id as `etcdctl` writes it, in a JSON string.
fn hex<S: Serializer>(lease: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{lease:x}"))
}

pub(super) async fn leader(client: &Client, keys: &Keys, o: OutputArgs) -> Result<(), CliError> {
    let e = election(client, keys).await?;
    if o.json() {
        return json(&e);
    }
    let now = SystemTime::now();
    outln!("{}", leader_line(&e, now));
    if e.candidates.is_empty() {
        return Ok(());
    }
    let mut header = vec![
        "REPLICA",
        "VERSION",
        "LEADS",
        "LEASE",
        "TTL LEFT",
        "SINCE",
        "CREATED AT REV",
        "STATUS PAGE",
    ];
    if o.wide() {
        header.extend(["ADDR", "KEY"]);
    }
    let mut t = table(&header);
    for c in &e.candidates {
        let mut row = vec![
            c.id.clone().unwrap_or_else(|| "?".into()),
            c.version.clone().unwrap_or_else(|| "-".into()),
            if c.leads { "yes" } else { "no" }.to_string(),
            if c.lease == 0 {
                "none".to_string()
            } else {
                format!("{:x}", c.lease)
            },
            c.lease_ttl_left
                .map_or_else(|| "-".to_string(), |s| format!("{s}s")),
            // The leader's row: since it leads; the others': since they campaign.
            age(c.leads_since.as_deref().unwrap_or(&c.since), now),
            c.create_revision.to_string(),
            c.status
                .as_ref()
                .map_or_else(|| "-".to_string(), |a| format!("http://{a}/")),
        ];
        if o.wide() {
            row.extend([
                if c.addr.is_empty() {
                    "-".into()
                } else {
                    c.addr.clone()
                },
                c.key.clone(),
            ]);
        }
        add_row(&mut t, row);
    }
    print_table(&t);
    Ok(())
}
