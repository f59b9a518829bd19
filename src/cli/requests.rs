//! `citadel requests ls`: every request with where it stands and why, filtered by status,
//! engine or image, so an operator finds what is unschedulable or failed. `--watch` prints it
//! again whenever a request or a decision changes.

use std::collections::HashMap;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use etcd_client::Client;
use serde::Serialize;

use super::follow::Follow;
use super::output::{
    OutputArgs, add_row, age, id_cell, json, json_line, outln, print_table, table,
};
use super::{CliError, trim};
use crate::cache::Standing;
use crate::keys::{Key, Keys};
use crate::model::Decision;

/// Pages of this many keys when reading every request and decision.
const PAGE: i64 = 1000;

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// List requests with their status, engine, image, age and reason.
    Ls(RequestsLsArgs),
    /// One request: what was asked, its decision (status, engine, reason), who decided it and
    /// how long ago, its container.
    Show(RequestsShowArgs),
    /// Release requests (as `release`): each is deleted; the leader frees its reservation and
    /// removes its decision. An id that is not there is an error (exit 1); the others are
    /// released all the same.
    Rm(RequestsRmArgs),
}

#[derive(Debug, Args)]
pub struct RequestsShowArgs {
    /// The request's id.
    #[arg(value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RequestsRmArgs {
    /// The requests' ids.
    #[arg(value_name = "ID", required = true, num_args = 1..)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub output: super::output::DoneArgs,
}

#[derive(Debug, Args)]
pub struct RequestsLsArgs {
    /// Only requests that stand here; comma-separated for several.
    #[arg(long, value_name = "STATUS", value_delimiter = ',', value_enum)]
    pub status: Vec<StandingArg>,
    /// Only requests whose decision names this engine.
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Only requests for this image.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Print the list again whenever a request or a decision changes (an etcd watch), until
    /// Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--status`: a standing, by the name a listing prints for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandingArg(pub Standing);

impl clap::ValueEnum for StandingArg {
    fn value_variants<'a>() -> &'a [Self] {
        use crate::model::Status as S;
        const ALL: [StandingArg; 9] = [
            StandingArg(Standing::Queued),
            StandingArg(Standing::Decided(S::Placed)),
            StandingArg(Standing::Decided(S::Unschedulable)),
            StandingArg(Standing::Decided(S::Preempted)),
            StandingArg(Standing::Decided(S::Invalid)),
            StandingArg(Standing::Decided(S::Pending)),
            StandingArg(Standing::Decided(S::Failed)),
            StandingArg(Standing::Decided(S::Exited)),
            StandingArg(Standing::Decided(S::Lost)),
        ];
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name()))
    }
}

/// One request, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RequestListing {
    pub id: String,
    /// The status of the decision on its current revision, or `queued`.
    pub status: &'static str,
    pub engine: Option<String>,
    pub image: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub request_revision: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub decided_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub decided_by: String,
    pub cpus: Option<f64>,
    pub memory: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Listing {
    /// etcd's revision the requests were read at.
    revision: i64,
    requests: Vec<RequestListing>,
}

/// Every request and its current decision.
async fn read(client: &Client, keys: &Keys) -> Result<Listing, CliError> {
    let (requests, revision) = crate::store::range_all(client, &keys.requests(), PAGE).await?;
    let (decisions, _) = crate::store::range_all(client, &keys.decisions(), PAGE).await?;
    let mut decided: HashMap<String, Decision> = HashMap::new();
    for kv in &decisions {
        if let Some(Key::Decision(id)) = keys.parse(kv.key())
            && let Ok(d) = serde_json::from_slice::<Decision>(kv.value())
        {
            decided.insert(id.to_string(), d);
        }
    }
    let mut rows = Vec::with_capacity(requests.len());
    for kv in &requests {
        let Some(Key::Request(id)) = keys.parse(kv.key()) else {
            continue;
        };
        let value: Option<serde_json::Value> = serde_json::from_slice(kv.value()).ok();
        let field = |name: &str| value.as_ref().and_then(|v| v.get(name));
        let image = field("image")
            .or_else(|| field("name"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let d = decided
            .remove(id.as_str())
            .filter(|d| d.request_revision == kv.mod_revision());
        let standing = d
            .as_ref()
            .map_or(Standing::Queued, |d| Standing::Decided(d.status));
        let (cpus, memory) = match d.as_ref().and_then(|d| d.reservation.as_ref()) {
            Some(r) => (Some(r.cpus), Some(r.memory)),
            None => (None, None),
        };
        rows.push(RequestListing {
            id: id.to_string(),
            status: standing.name(),
            engine: d
                .as_ref()
                .and_then(|d| d.resource.as_ref().map(|r| r.id.clone())),
            image,
            reason: d.as_ref().map(|d| d.reason.clone()).unwrap_or_default(),
            request_revision: kv.mod_revision(),
            decided_at: d.as_ref().map(|d| d.decided_at.clone()).unwrap_or_default(),
            decided_by: d.map(|d| d.decided_by).unwrap_or_default(),
            cpus,
            memory,
        });
    }
    // What needs a look first, then by id.
    let rank = |s: &str| Standing::ORDER.iter().position(|o| o.name() == s);
    rows.sort_by(|a, b| rank(a.status).cmp(&rank(b.status)).then(a.id.cmp(&b.id)));
    Ok(Listing {
        revision,
        requests: rows,
    })
}

impl RequestsLsArgs {
    fn keeps(&self, r: &RequestListing) -> bool {
        (self.status.is_empty() || self.status.iter().any(|s| s.0.name() == r.status))
            && self
                .engine
                .as_ref()
                .is_none_or(|e| r.engine.as_ref() == Some(e))
            && self
                .image
                .as_ref()
                .is_none_or(|i| r.image.as_ref() == Some(i))
    }
}

pub(super) async fn ls(client: &Client, keys: &Keys, a: RequestsLsArgs) -> Result<(), CliError> {
    if !a.watch {
        let mut listing = read(client, keys).await?;
        listing.requests.retain(|r| a.keeps(r));
        return print(&listing, &a);
    }
    let mut follow = Follow::new(client, keys);
    while let Some(mut listing) = follow.read(|| read(client, keys)).await? {
        listing.requests.retain(|r| a.keeps(r));
        print(&listing, &a)?;
        let matters = |k: &Key| matches!(k, Key::Request(_) | Key::Decision(_));
        if !follow.changed(listing.revision + 1, matters).await? {
            break;
        }
    }
    Ok(())
}

fn print(listing: &Listing, a: &RequestsLsArgs) -> Result<(), CliError> {
    if a.output.json() {
        // One document per line while watching: each change is one line to read.
        return if a.watch {
            json_line(listing)
        } else {
            json(listing)
        };
    }
    if a.watch {
        outln!("at revision {}:", listing.revision);
    }
    if listing.requests.is_empty() {
        outln!("no requests (at revision {})", listing.revision);
        return Ok(());
    }
    let wide = a.output.wide();
    let mut header = vec!["REQUEST", "STATUS", "ENGINE", "IMAGE", "DECIDED", "REASON"];
    if wide {
        header.extend(["CPUS", "MEMORY MB", "REQ REV", "DECIDED BY"]);
    }
    let now = SystemTime::now();
    let mut t = table(&header);
    let dash = |s: Option<&String>| s.cloned().unwrap_or_else(|| "-".into());
    for r in &listing.requests {
        let mut row = vec![
            id_cell(&r.id, wide),
            r.status.to_string(),
            dash(r.engine.as_ref()),
            dash(r.image.as_ref()),
            age(&r.decided_at, now),
            if r.reason.is_empty() {
                "-".into()
            } else {
                r.reason.clone()
            },
        ];
        if wide {
            row.extend([
                r.cpus.map_or_else(|| "-".into(), trim),
                r.memory.map_or_else(|| "-".into(), trim),
                r.request_revision.to_string(),
                if r.decided_by.is_empty() {
                    "-".into()
                } else {
                    r.decided_by.clone()
                },
            ]);
        }
        add_row(&mut t, row);
    }
    print_table(&t);
    Ok(())
}

/// What `requests show -o json` prints: `status`'s report and the request as it stands.
#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    status: super::request::StatusReport,
    /// The request as written: its JSON, or its text when it is not JSON (`None`: released).
    request: Option<serde_json::Value>,
}

/// `requests show ID`: `status`, with the request as written, in every format.
pub(super) async fn show(
    client: &Client,
    keys: &Keys,
    a: RequestsShowArgs,
) -> Result<(), CliError> {
    let id = super::request_id(&a.id)?;
    let (status, _) = super::request::read_status(client, keys, &id).await?;
    let got = super::timed(client.kv_client().get(keys.request(&id), None)).await?;
    let raw = got
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    let request = raw.as_ref().map(|text| {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.clone()))
    });
    if a.output.json() {
        return json(&Shown { status, request });
    }
    // The decision's copy of the request is not shown: the request as it stands is.
    let table = OutputArgs {
        output: super::output::Format::Table,
    };
    super::request::print_status(&status, table, false)?;
    if let Some(d) = status.decision.as_ref().filter(|_| a.output.wide()) {
        outln!("decided   at {}", d.decided_at);
    }
    match raw {
        // As written, on one line, and no control character reaches the terminal.
        Some(r) => {
            let printable: String = r
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            outln!("asked     {}", super::one_line(&printable));
        }
        None => outln!("asked     - (released)"),
    }
    Ok(())
}

/// `requests rm ID...`: releases each; one line per id released, then one error naming the
/// ids that were not there.
pub(super) async fn rm(client: &Client, keys: &Keys, a: RequestsRmArgs) -> Result<(), CliError> {
    // Every id's form is checked before anything is deleted.
    let ids = a
        .ids
        .iter()
        .map(|id| super::request_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let mut missing = Vec::new();
    let mut done = Vec::new();
    for id in &ids {
        let deleted = super::timed(client.kv_client().delete(keys.request(id), None))
            .await?
            .deleted();
        if deleted == 0 {
            missing.push(id.to_string());
            continue;
        }
        let message =
            format!("released {id}: the leader frees its reservation and removes its decision");
        let what = super::output::Done {
            what: "request",
            id: id.as_str(),
            action: "released",
            message,
        };
        if a.output.output == super::output::ReportFormat::Table {
            a.output.print(&what)?;
        }
        done.push(serde_json::to_value(&what).map_err(|e| CliError::Usage(e.to_string()))?);
    }
    if a.output.output == super::output::ReportFormat::Json {
        json(&done)?;
    }
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(CliError::Usage(format!("no request {one}"))),
        many => Err(CliError::Usage(format!("no requests {}", many.join(", ")))),
    }
}
