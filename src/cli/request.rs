//! `citadel submit`, `status`, `release` and `profile`: a user's requests.

use std::io::Read;
use std::time::{Duration, SystemTime};

use clap::Args;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;

use super::follow::{Follow, KeyWatch};
use super::output::{OutputArgs, age, json, json_line, outln, write_line};
use super::{CliError, request_id, timed};
use crate::keys::{Key, Keys};
use crate::model::{ContainerState, Decision, RequestId, Run, RunReport, Status};

/// `submit --wait`'s exit codes past 0 (placed, or running) and 1 (any other error); clap's
/// usage errors are 2.
pub const EXIT_UNSCHEDULABLE: i32 = 3;
pub const EXIT_INVALID: i32 = 4;
pub const EXIT_FAILED: i32 = 5;
pub const EXIT_TIMEOUT: i32 = 6;

/// The exit codes, as `--help` states them.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 done (submit --wait: placed, or running with \
--wait=running); 1 an error (etcd unreachable, refused, bad file, …); 2 a usage error; \
3 unschedulable; 4 invalid; 5 failed (its container could not start, or its engine was lost); \
6 --wait timed out.";

/// What `submit --wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    /// The decision: placed (exit 0) or not (3, 4).
    Placed,
    /// The container running on its engine (a leader with --docker; the request asks for
    /// `"launch": true`, or the leader runs with --launch).
    Running,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The request: a JSON file, or - for standard input.
    #[arg(value_name = "FILE|-")]
    pub file: String,
    /// Request id (default: a new UUID).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Wait for the decision (placed, the default) or for the container to run, print the
    /// decision, and exit with a code that says how it went (see below).
    #[arg(
        long,
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "placed",
        value_name = "placed|running"
    )]
    pub wait: Option<WaitFor>,
    /// How long --wait waits, in seconds (then exit 6).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// Write N members of one group (1 to 1000) from FILE, as ID-0 … ID-(N-1), each with
    /// "group" set (FILE's own, else ID): all in one etcd transaction, each only if absent.
    /// Past 120 members (or 1 MiB) they are written in several transactions, and a member that
    /// already exists takes back those written before it. With --wait, waits for every member
    /// and prints each decision on a line of its own.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=super::replicas::MAX_REPLICAS)
    )]
    pub replicas: Option<u16>,
    /// Replace the request under --id if there is one (as `kubectl apply` does): written in one
    /// transaction that compares the request's revision with the one just read, so a writer
    /// who changed it meanwhile is not overwritten silently. A placed request is then released
    /// and decided again: it may land on another engine, or be unschedulable.
    #[arg(long, requires = "id", conflicts_with = "replicas")]
    pub replace: bool,
    /// With --replace: only if the request is still at this revision (`status` shows it);
    /// 0 for "only if absent".
    #[arg(long, requires = "replace", value_name = "REV")]
    pub if_revision: Option<i64>,
    /// Output format: table (the id; with --wait, the decision in lines as `status` prints
    /// it) or json (the id and revision written; with --wait, the decision) [default: the
    /// id; with --wait, the decision as JSON]. Not with --replicas, which prints the ids, or
    /// with --wait one decision as JSON a line.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        value_name = "FORMAT",
        conflicts_with = "replicas"
    )]
    pub output: Option<super::output::Format>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The request's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print it again whenever the request or its decision changes (an etcd watch), until
    /// Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A request's bytes: from a file, or from standard input for `-`.
pub(super) fn read_input(file: &str) -> Result<Vec<u8>, CliError> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Usage(format!("reading standard input: {e}")))?;
        Ok(buf)
    } else {
        std::fs::read(file).map_err(|e| CliError::Usage(format!("{file}: {e}")))
    }
}

pub(super) async fn submit(client: &Client, keys: &Keys, a: SubmitArgs) -> Result<(), CliError> {
    let raw = read_input(&a.file)?;
    if let Some(n) = a.replicas {
        return super::replicas::submit(client, keys, &a, raw, usize::from(n)).await;
    }
    let id = submit_id(a.id.as_deref())?;
    validate(&id, &raw)?;
    let written = write_request(client, keys, &id, raw, &a).await?;
    let rev = written.request_revision;
    let Some(wait) = a.wait else {
        return print_written(&written, a.output);
    };
    let timeout = Duration::from_secs(a.timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let (decision, done) = wait_decision(client, keys, &id, rev, wait, deadline, timeout).await?;
    print_waited(&id, &decision, a.output)?;
    done
}

/// What `submit` wrote, as `-o json` prints it.
#[derive(Debug, Serialize)]
struct Written {
    id: String,
    /// The request's revision now: its decision answers this one.
    request_revision: i64,
    /// With --replace: the revision it replaced (`None`: there was none).
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced_revision: Option<i64>,
}

/// Writes request `id`: only if absent, or with --replace over the revision read (or given
/// with --if-revision), in one transaction that compares it.
async fn write_request(
    client: &Client,
    keys: &Keys,
    id: &RequestId,
    raw: Vec<u8>,
    a: &SubmitArgs,
) -> Result<Written, CliError> {
    let key = keys.request(id);
    let mut kv = client.kv_client();
    // The revision the write compares on: 0 is "absent" (etcd's mod revision of no key).
    let seen = match (a.replace, a.if_revision) {
        (false, _) => 0,
        (true, Some(rev)) => rev,
        (true, None) => timed(kv.get(key.as_str(), None))
            .await?
            .kvs()
            .first()
            .map_or(0, |kv| kv.mod_revision()),
    };
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            seen,
        )])
        .and_then(vec![TxnOp::put(key.clone(), raw, None)])
        .or_else(vec![TxnOp::get(key, None)]);
    let resp = timed(kv.txn(txn)).await?;
    if !resp.succeeded() {
        let now = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .and_then(|g| g.kvs().first().map(|kv| kv.mod_revision()));
        return Err(CliError::Usage(match (a.replace, now) {
            (false, _) => format!(
                "request {id} already exists; use --replace to replace it, release it first, or \
                 pick another --id"
            ),
            (true, Some(now)) if a.if_revision.is_some() => format!(
                "request {id} is at revision {now}, not {seen}: someone changed it; nothing was \
                 written (citadel status {id})"
            ),
            (true, Some(now)) => format!(
                "request {id} changed while it was replaced (revision {now}, read {seen}): \
                 another writer; nothing was written, try again"
            ),
            (true, None) => format!(
                "request {id} was released while it was replaced; nothing was written, try again"
            ),
        }));
    }
    Ok(Written {
        id: id.to_string(),
        request_revision: resp.header().map_or(0, |h| h.revision()),
        replaced_revision: (seen > 0).then_some(seen),
    })
}

/// `submit` without --wait: the id alone (for scripts), or what was written with `-o json`.
fn print_written(w: &Written, o: Option<super::output::Format>) -> Result<(), CliError> {
    if o == Some(super::output::Format::Json) {
        return json(w);
    }
    outln!("{}", w.id);
    Ok(())
}

/// `submit --wait`'s decision: JSON unless `-o table|wide` asks for lines as `status` prints.
fn print_waited(
    id: &RequestId,
    d: &Decision,
    o: Option<super::output::Format>,
) -> Result<(), CliError> {
    use super::output::Format;
    match o {
        None | Some(Format::Json) => json(d),
        Some(f) => print_status(
            &StatusReport {
                id: id.to_string(),
                request_revision: Some(d.request_revision),
                status: d.status.to_string(),
                decision: Some(d.clone()),
            },
            OutputArgs { output: f },
            false,
        ),
    }
}

/// The id a submit writes under: `--id`, or a new UUID.
pub(super) fn submit_id(id: Option<&str>) -> Result<RequestId, CliError> {
    match id {
        Some(id) => request_id(id),
        None => request_id(&uuid::Uuid::new_v4().to_string()),
    }
}

/// How a decision ends a `submit --wait`: `None` while there is more to wait for.
fn outcome(d: &Decision, wait: WaitFor) -> Option<Result<(), CliError>> {
    let not = |code: i32| {
        Some(Err(CliError::Decided {
            code,
            // A reason may quote a multi-line message (a regex's): the error is one line.
            message: format!("{}: {}", d.status, super::one_line(&d.reason)),
        }))
    };
    let running = d
        .run
        .as_ref()
        .and_then(|r| r.state.as_ref())
        .is_some_and(|s| *s == ContainerState::Running);
    match d.status {
        Status::Unschedulable | Status::Preempted => not(EXIT_UNSCHEDULABLE),
        Status::Invalid => not(EXIT_INVALID),
        Status::Failed | Status::Lost => not(EXIT_FAILED),
        // A batch container that ran to its end.
        Status::Exited => Some(Ok(())),
        Status::Placed if wait == WaitFor::Placed || running => Some(Ok(())),
        // Placed but not yet running, or being placed again after a failed start.
        Status::Placed | Status::Pending => None,
    }
}

/// Waits for a decision on request revision `rev` that ends the wait (see [`outcome`]),
/// watching from that revision, until `deadline` (`timeout` from when the wait began, as the
/// message on running out says it); returns it with how it ends the command.
pub(super) async fn wait_decision(
    client: &Client,
    keys: &Keys,
    id: &RequestId,
    rev: i64,
    wait: WaitFor,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(Decision, Result<(), CliError>), CliError> {
    let key = keys.decision(id);
    let wait_for = async {
        // Both watches ride out etcd restarts (see `follow::KeyWatch`).
        let mut decisions = KeyWatch::new(client, key.clone(), rev);
        // An engine's agent reports the container at `runs/<engine>/<id>`: followed once the
        // decision names an engine with an agent (any report on it then counts).
        let mut runs: Option<(String, KeyWatch)> = None;
        let mut last: Option<Decision> = None;
        let mut report: Option<RunReport> = None;
        loop {
            let run_event = async {
                match runs.as_mut() {
                    Some((_, s)) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                values = decisions.next() => {
                    for value in values? {
                        if let Ok(d) = serde_json::from_slice::<Decision>(&value)
                            && d.request_revision >= rev
                        {
                            last = Some(d);
                        }
                    }
                }
                values = run_event => {
                    for value in values? {
                        report = serde_json::from_slice(&value).ok();
                    }
                }
            }
            let Some(d) = &last else { continue };
            let engine = d.resource.as_ref().map(|r| r.id.clone());
            if wait == WaitFor::Running
                && let Some(engine) = engine
                && runs.as_ref().is_none_or(|(e, _)| *e != engine)
                && let Ok(eid) = crate::model::EngineId::new(&engine)
            {
                runs = Some((engine, KeyWatch::new(client, keys.run(&eid, id), rev)));
                report = None;
            }
            let mut shown = d.clone();
            if let Some(r) = &report {
                merge_report(&mut shown, r);
            }
            if let Some(done) = outcome(&shown, wait) {
                return Ok((shown, done));
            }
        }
    };
    let what = match wait {
        WaitFor::Placed => "no decision",
        WaitFor::Running => {
            "no running container (an engine's agent, or a leader with --docker, runs one for a \
             request with \"launch\": true, or every request with --launch)"
        }
    };
    tokio::time::timeout_at(deadline, wait_for)
        .await
        .map_err(|_| CliError::Decided {
            code: EXIT_TIMEOUT,
            message: format!(
                "{what} for {id} within {timeout:?}: is a controller running? (citadel status {id})"
            ),
        })?
}

/// A request's current standing, as `status` prints it.
#[derive(Debug, Serialize)]
pub(super) struct StatusReport {
    id: String,
    /// The request's mod revision (`None`: the request is gone, its decision not yet).
    request_revision: Option<i64>,
    /// `queued` while no decision is for the request's current revision.
    status: String,
    /// The newest decision, whichever revision it is for.
    pub(super) decision: Option<Decision>,
}

/// Reads the request and its decision in one transaction.
pub(super) async fn read_status(
    client: &Client,
    keys: &Keys,
    id: &RequestId,
) -> Result<(StatusReport, i64), CliError> {
    let txn = Txn::new().and_then(vec![
        TxnOp::get(keys.request(id), None),
        TxnOp::get(keys.decision(id), None),
    ]);
    let resp = timed(client.kv_client().txn(txn)).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let request = gets.next().and_then(|g| g.kvs().first().cloned());
    let decision = gets.next().and_then(|g| g.kvs().first().cloned());
    if request.is_none() && decision.is_none() {
        return Err(CliError::Usage(format!("no request {id}")));
    }
    let decision = match decision {
        Some(d) => Some(
            serde_json::from_slice::<Decision>(d.value())
                .map_err(|e| CliError::Usage(format!("decision for {id} is unreadable: {e}")))?,
        ),
        None => None,
    };
    let mut decision = decision;
    if let Some(d) = decision.as_mut()
        && let Some(engine) = d.resource.as_ref().map(|r| r.id.clone())
        && let Ok(engine) = crate::model::EngineId::new(engine)
    {
        // A role made before agents existed may not read reports: the decision alone, then.
        match timed(client.kv_client().get(keys.run(&engine, id), None)).await {
            Ok(got) => {
                if let Some(r) = got
                    .kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice::<RunReport>(kv.value()).ok())
                {
                    merge_report(d, &r);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the agent's report"),
        }
    }
    let request_revision = request.map(|r| r.mod_revision());
    let status = match (&decision, request_revision) {
        (Some(d), Some(r)) if d.request_revision == r => d.status.to_string(),
        (Some(d), None) => format!("{} (request deleted: being released)", d.status),
        _ => "queued".to_string(),
    };
    let report = StatusReport {
        id: id.to_string(),
        request_revision,
        status,
        decision,
    };
    Ok((report, revision))
}

pub(super) fn print_status(r: &StatusReport, o: OutputArgs, stream: bool) -> Result<(), CliError> {
    if o.json() {
        return if stream { json_line(r) } else { json(r) };
    }
    let mut lines = vec![
        format!("request   {}", r.id),
        format!("status    {}", r.status),
    ];
    if let Some(rev) = r.request_revision {
        lines.push(format!("revision  {rev}"));
    }
    if let Some(d) = &r.decision {
        if r.request_revision != Some(d.request_revision) {
            lines.push(format!(
                "decision  for revision {} (a new one is coming)",
                d.request_revision
            ));
        }
        if let Some(res) = &d.resource {
            lines.push(format!("engine    {} ({})", res.id, res.addr));
        }
        if !d.reason.is_empty() {
            lines.push(format!("reason    {}", d.reason));
        }
        lines.push(format!(
            "decided   {} by {}{}",
            age(&d.decided_at, SystemTime::now()),
            d.decided_by,
            if o.wide() {
                format!(" at {}", d.decided_at)
            } else {
                String::new()
            }
        ));
        if let Some(run) = &d.run {
            let state = run
                .state
                .as_ref()
                .map_or("-".to_string(), ToString::to_string);
            let short: String = run.container_id.chars().take(12).collect();
            lines.push(format!("container {state} {short} {}", run.container_name));
        }
        if o.wide() {
            lines.push(format!("request   {}", d.container.get()));
        }
    }
    write_line(&lines.join("\n"));
    Ok(())
}

pub(super) async fn status(client: &Client, keys: &Keys, a: StatusArgs) -> Result<(), CliError> {
    let id = request_id(&a.id)?;
    if !a.watch {
        let (report, _) = read_status(client, keys, &id).await?;
        return print_status(&report, a.output, false);
    }
    let mut follow = Follow::new(client, keys);
    while let Some((report, revision)) = follow.read(|| read_status(client, keys, &id)).await? {
        print_status(&report, a.output, true)?;
        let mine =
            |k: &Key| matches!(k, Key::Request(r) | Key::Decision(r) | Key::Run(_, r) if *r == id);
        if !follow.changed(revision + 1, mine).await? {
            break;
        }
    }
    Ok(())
}

pub(super) async fn release(
    client: &Client,
    keys: &Keys,
    id: &str,
    output: super::output::DoneArgs,
) -> Result<(), CliError> {
    let id = request_id(id)?;
    let mut kv = client.kv_client();
    let deleted = timed(kv.delete(keys.request(&id), None)).await?.deleted();
    if deleted == 0 {
        return Err(CliError::Usage(format!("no request {id}")));
    }
    output.print(&super::output::Done {
        what: "request",
        id: id.as_str(),
        action: "released",
        message: format!(
            "released {id}: the leader frees its reservation and removes its decision"
        ),
    })
}

/// Learned usage per image: the table of [`crate::profile::show`], or every profile as JSON.
pub(super) async fn profile(
    client: &Client,
    keys: &Keys,
    image: Option<&str>,
    o: OutputArgs,
) -> Result<(), CliError> {
    if !o.json() {
        write_line(&crate::profile::show(client, keys, image).await?);
        return Ok(());
    }
    let kvs = match image {
        None => {
            crate::store::range_all(client, &keys.profiles(), 500)
                .await?
                .0
        }
        Some(image) => timed(client.kv_client().get(keys.profile(image), None))
            .await?
            .kvs()
            .to_vec(),
    };
    let profiles: Vec<crate::profile::ImageProfile> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    json(&profiles)
}

/// What an engine's agent reported of the container, shown in the decision's `run` as a
/// leader with `--docker` records it (the agent's report is the record: the leader writes no
/// decision for a container that started).
pub(super) fn merge_report(d: &mut Decision, r: &RunReport) {
    if d.resource.as_ref().is_none_or(|res| res.id != r.engine) {
        return;
    }
    let run = d.run.get_or_insert_with(Run::default);
    run.engine = r.engine.clone();
    if r.failed() {
        return;
    }
    run.container_id = r.container_id.clone();
    run.container_name = r.container_name.clone();
    run.state = r.state.clone();
    run.exit_code = r.exit_code;
    run.ports = r.ports.clone();
    run.updated_at = r.updated_at.clone();
}

/// Checks a request as the leader will ([`crate::scheduler::prepare`]: its fields,
/// constraints and affinity), so that what the leader would decide `invalid` is refused before
/// it is written, in the leader's words; prints a warning to stderr for each expression that is
/// accepted but probably not what was meant.
pub(super) fn validate(
    id: &RequestId,
    raw: &[u8],
) -> Result<std::sync::Arc<crate::scheduler::Prepared>, CliError> {
    let prepared = crate::scheduler::prepare(id, raw).map_err(|e| CliError::Decided {
        code: EXIT_INVALID,
        message: format!("invalid request: {}", super::one_line(&e.to_string())),
    })?;
    for w in prepared.warnings() {
        warn_line(&w);
    }
    Ok(prepared)
}

/// `citadel: warning: …` on stderr.
pub(super) fn warn_line(text: &str) {
    use std::io::Write as _;
    // stderr gone: nothing more to say.
    let _ = writeln!(std::io::stderr(), "citadel: warning: {text}");
}
