//! The operator's command line, end to end: the real binary against a real etcd, with a
//! controller replica in process. Output formats, exit codes, the commands that follow etcd
//! (`events`, `--watch`), the dry run (`plan`), and a reader that goes away (a closed pipe).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use citadel::model::{Decision, Status};
use citadel_testkit::child::Signal;
use citadel_testkit::etcd::EtcdProcess;
use etcd_client::Client;
use serde_json::{Value, json};

mod common;
use common::*;

/// Starts the real binary against `endpoint`, its stdout and stderr piped.
fn spawn(endpoint: &str, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("--etcd")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn citadel")
}

/// Waits (bounded by [`WAIT`]) for `child` to exit; kills it and panics naming `what` if not.
fn exit_of(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("still running: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three engines (e1 zone=a 4 cpus, e2 zone=b 4 cpus, e3 zone=a 1 cpu), a replica, and three
/// requests decided: `ok` placed, `huge` unschedulable, `badre` invalid (a bad regex).
async fn cluster(etcd: &EtcdProcess) -> (Client, Replica) {
    let client = connect(etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &["zone=a"]).await;
    put_engine(&client, &keys, "e2", 4.0, 4096.0, &["zone=b"]).await;
    put_engine(&client, &keys, "e3", 1.0, 1024.0, &["zone=a"]).await;
    let replica = Replica::start(etcd, "r1");
    put_request(&client, &keys, "ok", request_json(1.0, 64, json!({}))).await;
    put_request(&client, &keys, "huge", request_json(64.0, 64, json!({}))).await;
    let bad = request_json(1.0, 64, json!({"labels": ["zone==/(/"]}));
    put_request(&client, &keys, "badre", bad).await;
    for (id, status) in [
        ("ok", Status::Placed),
        ("huge", Status::Unschedulable),
        ("badre", Status::Invalid),
    ] {
        wait_decision_where(&client, &keys, id, WAIT, "its decision", |d| {
            d.status == status
        })
        .await;
    }
    (client, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_command_prints_json_alone_with_o_json() {
    let etcd = start_etcd().await;
    let (_client, replica) = cluster(&etcd).await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = request_file(dir.path(), "p.json", &request_json(1.0, 64, json!({})));
    let commands: Vec<Vec<&str>> = vec![
        vec!["ls"],
        vec!["engine", "ls"],
        vec!["engine", "show", "e1"],
        vec!["status", "ok"],
        vec!["profile"],
        vec!["leader"],
        vec!["requests", "ls"],
        vec!["plan", &plan],
        vec!["volume", "ls"],
    ];
    for command in commands {
        let mut args = command.clone();
        args.extend(["-o", "json"]);
        let (code, out, err) = cli(&ep, &args);
        assert_eq!(code, 0, "{command:?}: {err}");
        let parsed: Result<Value, _> = serde_json::from_str(&out);
        assert!(
            parsed.is_ok(),
            "{command:?}: stdout is not one JSON document:\n{out}"
        );
        assert!(err.is_empty(), "{command:?}: {err}");
    }
    let (_, out, _) = cli(&ep, &["ls", "-o", "json"]);
    let ls: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(ls["cluster"]["engine_count"], json!(3), "{ls:#}");
    assert_eq!(ls["election"]["leader"]["id"], json!("r1"), "{ls:#}");
    assert_eq!(ls["engines"].as_array().map(Vec::len), Some(3), "{ls:#}");

    // The tables say the same in their own words.
    let (_, out, _) = cli(&ep, &["ls"]);
    assert!(out.starts_with("leader: r1 "), "{out}");
    let (_, out, _) = cli(&ep, &["engine", "ls", "-o", "wide"]);
    let e1 = out
        .lines()
        .find(|l| l.starts_with("e1 "))
        .expect("a row for e1");
    assert!(
        e1.contains("zone=a") && e1.contains("tcp://e1.test:2375"),
        "{out}"
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_the_command_quietly() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    for i in 0..50 {
        put_engine(&client, &keys(), &format!("e{i:02}"), 2.0, 1024.0, &[]).await;
    }
    // `citadel ls | head -1`: a pipe whose reading end is closed before anything is written.
    // The commands that follow etcd stop too, in a cluster where nothing happens (no write
    // would tell them).
    for args in [
        &["ls"][..],
        &["engine", "ls"],
        &["leader"],
        &["ls", "-o", "json"],
        &["events"],
        &["requests", "ls", "--watch"],
    ] {
        let mut child = spawn(&etcd.endpoint(), args);
        drop(child.stdout.take());
        let status = exit_of(&mut child, &format!("{args:?} after its reader went away"));
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut err).expect("stderr");
        }
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: quiet, no panic: {err}");
    }
    // And through a real `head -1`, as an operator types it.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {BIN} --etcd {} ls | head -1",
            etcd.endpoint()
        ))
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_exits_with_a_code_per_outcome() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    put_engine(&client, &keys(), "e1", 2.0, 1024.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let small = request_file(dir.path(), "s.json", &request_json(0.5, 64, json!({})));
    let huge = request_file(dir.path(), "h.json", &request_json(8.0, 64, json!({})));
    let bad_re = request_json(0.5, 64, json!({"labels": ["zone==/(/"]}));
    let bad_re = request_file(dir.path(), "r.json", &bad_re);
    let typo = request_file(dir.path(), "t.json", r#"{"image":"x","cpus":"many"}"#);

    let (code, out, err) = cli(&ep, &["submit", &small, "--id", "a", "--wait"]);
    assert_eq!(code, 0, "placed: {err}");
    let d: Decision = serde_json::from_str(&out).expect("the decision");
    assert_eq!(d.status, Status::Placed);
    let (code, _, err) = cli(&ep, &["submit", &small, "--id", "b", "--wait=placed"]);
    assert_eq!(code, 0, "placed: {err}");
    let (code, _, err) = cli(&ep, &["submit", &huge, "--id", "c", "--wait"]);
    assert_eq!(code, 3, "unschedulable: {err}");
    assert!(
        err.starts_with("citadel: error: unschedulable: 0/1 engines fit"),
        "{err}"
    );
    // Invalid as the leader decides it (a regex that does not compile), and as submit
    // refuses it before writing anything.
    let (code, _, err) = cli(&ep, &["submit", &bad_re, "--id", "d", "--wait"]);
    assert_eq!(code, 4, "invalid: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let (code, _, err) = cli(&ep, &["submit", &typo, "--id", "e", "--wait"]);
    assert_eq!(code, 4, "invalid: {err}");
    assert!(get(&client, &keys().request(&rid("e"))).await.is_none());
    // No leader runs with --docker: nothing ever runs.
    let (code, _, err) = cli(
        &ep,
        &[
            "submit",
            &small,
            "--id",
            "f",
            "--wait=running",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(code, 6, "timeout: {err}");
    // Usage errors stay clap's.
    let (code, _, _) = cli(&ep, &["submit", &small, "--wait=soon"]);
    assert_eq!(code, 2);
    replica.stop().await;
}

/// The mod revision of request `id`, and its JSON; panics if it is absent.
async fn member(client: &Client, id: &str) -> (i64, Value) {
    let got = get(client, &keys().request(&rid(id)))
        .await
        .unwrap_or_else(|| panic!("no request {id}"));
    let value = serde_json::from_slice(&got.value).expect("json");
    (got.mod_revision, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_replicas_writes_one_group_all_or_nothing() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let template = request_file(dir.path(), "t.json", &request_json(0.5, 64, json!({})));

    let (code, out, err) = cli(&ep, &["submit", &template, "--id", "x", "--replicas", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["x-0", "x-1", "x-2"]);
    let mut revisions = Vec::new();
    for id in ["x-0", "x-1", "x-2"] {
        let (rev, value) = member(&client, id).await;
        assert_eq!(value["group"], json!("x"), "{id}: {value}");
        assert_eq!(value["cpus"], json!(0.5), "{id}: {value}");
        revisions.push(rev);
    }
    assert!(
        revisions.iter().all(|r| *r == revisions[0]),
        "one transaction: {revisions:?}"
    );

    // Again under the same id: refused whole, naming a member, and nothing more written.
    let before = revision(&client).await;
    let (code, _, err) = cli(&ep, &["submit", &template, "--id", "x", "--replicas", "3"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("request x-0 already exists"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(revision(&client).await, before, "nothing written");

    // A gang larger than the replicas could never be placed by them: a usage error.
    let gang = request_json(0.5, 64, json!({"group": "g", "group_min": 5}));
    let gang = request_file(dir.path(), "g.json", &gang);
    let (code, _, err) = cli(&ep, &["submit", &gang, "--id", "y", "--replicas", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("group_min is 5"), "{err}");
    assert_eq!(revision(&client).await, before, "nothing written");
    // Its own group is kept.
    let (code, _, err) = cli(&ep, &["submit", &gang, "--id", "y", "--replicas", "5"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(member(&client, "y-4").await.1["group"], json!("g"));
    for n in ["0", "1001"] {
        let (code, _, _) = cli(&ep, &["submit", &template, "--replicas", n]);
        assert_eq!(code, 2, "--replicas {n}");
    }

    // Past one transaction's worth: several, and one member already there takes back the rest.
    put_request(&client, &keys(), "z-125", request_json(0.5, 64, json!({}))).await;
    let (code, _, err) = cli(
        &ep,
        &["submit", &template, "--id", "z", "--replicas", "130"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("request z-125 already exists; nothing was written"),
        "{err}"
    );
    for id in ["z-0", "z-119", "z-129"] {
        assert!(
            get(&client, &keys().request(&rid(id))).await.is_none(),
            "{id}"
        );
    }
    let (code, out, err) = cli(
        &ep,
        &["submit", &template, "--id", "w", "--replicas", "130"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 130);
    let first = member(&client, "w-0").await.0;
    assert_eq!(member(&client, "w-119").await.0, first);
    assert_ne!(member(&client, "w-120").await.0, first);
    assert_eq!(member(&client, "w-129").await.1["group"], json!("w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_replicas_wait_waits_for_every_member() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    put_engine(&client, &keys(), "e1", 2.0, 1024.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let gang = request_json(0.5, 64, json!({"group_min": 3}));
    let gang = request_file(dir.path(), "g.json", &gang);
    let (code, out, err) = cli(
        &ep,
        &["submit", &gang, "--id", "g", "--replicas", "3", "--wait"],
    );
    assert_eq!(code, 0, "{err}");
    let decisions: Vec<Decision> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a decision per line"))
        .collect();
    assert_eq!(decisions.len(), 3, "{out}");
    let ids: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["id"].clone())
        .collect();
    assert_eq!(ids, [json!("g-0"), json!("g-1"), json!("g-2")], "{out}");
    assert!(
        decisions.iter().all(|d| d.status == Status::Placed),
        "{out}"
    );
    // Two more of a cpu each: 0.5 is left, so the gang never fits.
    let big = request_json(1.0, 64, json!({"group_min": 2, "group_timeout": 1}));
    let big = request_file(dir.path(), "b.json", &big);
    let (code, out, err) = cli(
        &ep,
        &["submit", &big, "--id", "b", "--replicas", "2", "--wait"],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("2 of 2 members not placed"), "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_ls_finds_requests_by_status_engine_and_image() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let other = request_json(0.5, 64, json!({"image": "redis", "labels": ["zone==b"]}));
    put_request(&client, &keys(), "on-e2", other).await;
    wait_decision(&client, &keys(), "on-e2", WAIT).await;
    let ep = etcd.endpoint();
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["requests", "ls", "-o", "json"];
        all.extend_from_slice(args);
        let (code, out, err) = cli(&ep, &all);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("json");
        let mut ids: Vec<String> = v["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&[]), ["badre", "huge", "ok", "on-e2"]);
    assert_eq!(ids(&["--status", "unschedulable"]), ["huge"]);
    assert_eq!(
        ids(&["--status", "unschedulable,invalid"]),
        ["badre", "huge"]
    );
    assert_eq!(ids(&["--engine", "e2"]), ["on-e2"]);
    assert_eq!(ids(&["--image", "redis"]), ["on-e2"]);
    assert_eq!(ids(&["--image", "busybox", "--status", "placed"]), ["ok"]);
    // The table names the reasons, what needs a look first.
    let (_, out, _) = cli(&ep, &["requests", "ls"]);
    let first = out.lines().nth(1).expect("a row");
    assert!(
        first.starts_with("huge ") && first.contains("insufficient cpus"),
        "{out}"
    );
    replica.stop().await;
}

/// A child whose stdout lines arrive on a channel, read by a thread of their own.
struct Following {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Following {
    fn start(endpoint: &str, args: &[&str]) -> Following {
        let mut child = spawn(endpoint, args);
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Following { child, lines }
    }

    /// Lines until one satisfies `want`, within `timeout`.
    fn until(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no such line within {timeout:?}; saw:\n{}", seen.join("\n"));
    }

    /// Sends `sig` and waits (bounded) for a clean exit.
    fn stop(mut self, sig: Signal) {
        citadel_testkit::child::signal(self.child.id(), sig).expect("signal");
        let status = exit_of(&mut self.child, &format!("after {sig:?}"));
        assert_eq!(status.code(), Some(0), "exits cleanly on {sig:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_a_decision_made_while_they_run() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    let events = Following::start(&ep, &["events", "-o", "json"]);
    // Until it shows an engine change, its watch may not be in place yet: change one, boundedly.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        put_engine(&client, &keys, "marker", 1.0, 64.0 + f64::from(n), &[]).await;
        match events.lines.recv_timeout(Duration::from_millis(500)) {
            Ok(line) if line.contains("\"marker\"") => break,
            _ => assert!(
                Instant::now() < deadline,
                "events never showed an engine change"
            ),
        }
    }
    put_request(&client, &keys, "late", request_json(0.5, 64, json!({}))).await;
    let line = events.until(WAIT, |l| l.contains("\"late\""));
    let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(event["type"], json!("decision"), "{event}");
    assert_eq!(event["action"], json!("placed"), "{event}");
    assert!(
        event["engine"].is_string() && event["time"].is_string(),
        "{event}"
    );
    assert_eq!(event["container"]["image"], json!("busybox"), "{event}");
    events.stop(Signal::TERM);

    // From a past revision, as one line each; Ctrl-C ends it.
    let text = Following::start(&ep, &["events", "--since", "1"]);
    let line = text.until(WAIT, |l| l.contains(" decision placed late "));
    assert!(line.contains("engine="), "{line}");
    text.stop(Signal::INT);
    let _ = client;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_again_when_a_decision_changes() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    let status = Following::start(&ep, &["status", "ok", "--watch", "-o", "json"]);
    let first = status.until(WAIT, |l| l.contains("\"status\":\"placed\""));
    let was: Value = serde_json::from_str(&first).expect("json");
    let listing = Following::start(&ep, &["requests", "ls", "--watch", "--status", "placed"]);
    listing.until(WAIT, |l| l.starts_with("ok "));
    // A new revision of the request, too big for any engine now.
    let rev = put_request(&client, &keys, "ok", request_json(64.0, 64, json!({}))).await;
    let line = status.until(WAIT, |l| l.contains("\"status\":\"unschedulable\""));
    let now: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(now["request_revision"], json!(rev), "{now}");
    assert_ne!(now["request_revision"], was["request_revision"]);
    listing.until(WAIT, |l| l.starts_with("no requests"));
    status.stop(Signal::INT);
    listing.stop(Signal::TERM);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_explains_every_engine_and_writes_nothing() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let body = request_json(2.0, 64, json!({"labels": ["zone==a"]}));
    let file = request_file(dir.path(), "p.json", &body);
    let before = revision(&client).await;
    let (code, out, err) = cli(&ep, &["plan", &file]);
    assert_eq!(code, 0, "{err}");
    let row = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{out}"))
            .to_string()
    };
    assert!(row("e2").contains("ruled out: constraint zone==a"), "{out}");
    assert!(row("e3").contains("ruled out: insufficient cpus"), "{out}");
    assert!(row("e1").contains("fits, chosen"), "{out}");
    assert!(out.contains("would place p on e1 (spread"), "{out}");

    let (code, out, _) = cli(&ep, &["plan", &file, "-o", "json"]);
    assert_eq!(code, 0);
    let plan: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(plan["engine"], json!("e1"), "{plan:#}");
    // Unschedulable: exit 3, as submit --wait says it.
    let huge = request_file(dir.path(), "h.json", &request_json(64.0, 64, json!({})));
    let (code, out, _) = cli(&ep, &["plan", &huge]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("would be unschedulable: 0/3 engines fit"),
        "{out}"
    );
    assert_eq!(revision(&client).await, before, "plan wrote nothing");
    assert!(get(&client, &keys().request(&rid("plan"))).await.is_none());
    replica.stop().await;
}

#[test]
fn completions_and_man_page_are_printed() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("citadel") && text.contains("requests"),
            "{shell}: {text}"
        );
    }
    let out = Command::new(BIN).arg("man").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH citadel"),
        "{text}"
    );
    // The exit codes are in --help.
    let out = Command::new(BIN)
        .args(["submit", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("3 unschedulable") && help.contains("6 --wait timed out"),
        "{help}"
    );
}
