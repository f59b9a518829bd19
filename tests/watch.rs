//! The commands that keep running (`events`, `status --watch`, `requests ls --watch`,
//! `submit --wait`) ride out etcd: restarted for real (SIGTERM and SIGKILL, then started again
//! on its data dir and port), and compacted past the revision they watch. And `events` reads
//! as an operator needs it: the last events first, each at the time its revision recorded, and
//! leadership told as it changed (a resignation apart from a lease that expired).
//!
//! Real etcd, the real binary, real signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use citadel_testkit::child::Signal;
use citadel_testkit::etcd::EtcdProcess;
use serde_json::{Value, json};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_citadel");

/// A running `citadel` command whose output is read line by line, stdout and stderr apart.
struct Following {
    child: Child,
    lines: mpsc::Receiver<String>,
    notes: mpsc::Receiver<String>,
}

fn reader(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Following {
    fn start(endpoint: &str, args: &[&str]) -> Following {
        let mut child = Command::new(BIN)
            .arg("--etcd")
            .arg(endpoint)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn citadel");
        let lines = reader(child.stdout.take().expect("stdout"));
        let notes = reader(child.stderr.take().expect("stderr"));
        Following {
            child,
            lines,
            notes,
        }
    }

    /// Rewrites an engine `marker` until this `events` shows it: from then on its watch is in
    /// place (bounded by [`WAIT`]).
    async fn until_watching(&self, client: &etcd_client::Client, keys: &citadel::keys::Keys) {
        let deadline = Instant::now() + WAIT;
        for n in 1.. {
            put_engine(client, keys, "marker", 1.0, 64.0 + f64::from(n), &[]).await;
            if self
                .lines
                .recv_timeout(Duration::from_millis(500))
                .is_ok_and(|l| l.contains("marker"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "events never showed a change");
        }
    }

    /// Lines until one satisfies `want`, within `timeout`; panics with what it saw (and what
    /// the command said on stderr) otherwise.
    fn until(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return (line, seen),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        let notes: Vec<String> = self.notes.try_iter().collect();
        panic!(
            "no such line within {timeout:?}; saw:\n{}\nstderr:\n{}",
            seen.join("\n"),
            notes.join("\n")
        );
    }

    /// Every line printed within `quiet` of the last one (bounded by a count).
    fn settle(&self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            match self.lines.recv_timeout(quiet) {
                Ok(line) => out.push(line),
                Err(_) => break,
            }
        }
        out
    }

    /// What it said on stderr so far.
    fn notes(&self) -> Vec<String> {
        self.notes.try_iter().collect()
    }

    /// Sends `sig` and waits (bounded) for it to exit 0.
    fn stop(mut self, sig: Signal) {
        citadel_testkit::child::signal(self.child.id(), sig).expect("signal");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let notes: Vec<String> = self.notes.try_iter().collect();
                assert_eq!(
                    status.code(),
                    Some(0),
                    "exits cleanly on {sig:?}; stderr:\n{}",
                    notes.join("\n")
                );
                return;
            }
            assert!(Instant::now() < deadline, "still running after {sig:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An engine and a replica; one request placed.
async fn cluster(etcd: &EtcdProcess) -> (etcd_client::Client, Replica) {
    let client = connect(etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 8.0, 8192.0, &[]).await;
    let replica = Replica::start(etcd, "r1");
    put_request(&client, &keys, "first", request_json(0.5, 64, json!({}))).await;
    wait_decision(&client, &keys, "first", WAIT).await;
    (client, replica)
}

fn json_of(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Restarts etcd on its data dir and port: gracefully (SIGTERM) or killed (SIGKILL).
async fn restart(etcd: &mut EtcdProcess, hard: bool) {
    if hard {
        etcd.kill().await;
    }
    etcd.restart().await.expect("etcd starts again on its data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_status_watch_go_on_through_etcd_restarts() {
    let mut etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    let events = Following::start(&ep, &["events", "--tail", "0", "-o", "json"]);
    let status = Following::start(&ep, &["status", "first", "--watch", "-o", "json"]);
    let listing = Following::start(&ep, &["requests", "ls", "--watch"]);
    status.until(WAIT, |l| l.contains("\"status\":\"placed\""));
    listing.until(WAIT, |l| l.starts_with("first "));
    events.until_watching(&client, &keys).await;

    for (round, hard) in [(1, false), (2, true)] {
        restart(&mut etcd, hard).await;
        // A new decision after etcd is back: `events` prints it...
        let id = format!("after-{round}");
        put_request(&client, &keys, &id, request_json(0.5, 64, json!({}))).await;
        let (line, _) = events.until(WAIT, |l| l.contains(&format!("\"{id}\"")));
        let e = json_of(&line);
        assert_eq!(e["type"], json!("decision"), "{e}");
        assert_eq!(e["action"], json!("placed"), "{e}");
        // ... and `status --watch` the new revision of its request.
        let rev = put_request(&client, &keys, "first", request_json(0.25, 64, json!({}))).await;
        status.until(WAIT, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["request_revision"] == json!(rev))
        });
        listing.until(WAIT, |l| l.starts_with(&format!("{id} ")));
    }
    // Each said, in a line, that etcd was away and that it answers again.
    for (what, f) in [("events", &events), ("status", &status)] {
        let notes = f.notes();
        assert!(
            notes.iter().any(|n| n.contains("etcd is away")),
            "{what}: {notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("etcd answers again")),
            "{what}: {notes:?}"
        );
    }
    events.stop(Signal::TERM);
    status.stop(Signal::TERM);
    listing.stop(Signal::INT);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_outlasts_an_etcd_restart() {
    let mut etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 8.0, 8192.0, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = request_file(dir.path(), "r.json", &request_json(0.5, 64, json!({})));
    // No controller yet: the wait is on while etcd restarts.
    let mut waiting = Command::new(BIN)
        .args(["--etcd", &etcd.endpoint(), "submit", &file, "--id", "w1"])
        .args(["--wait", "--timeout", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn submit");
    wait_until("the request is written", WAIT, || async {
        get(&client, &keys.request(&rid("w1"))).await.is_some()
    })
    .await;
    restart(&mut etcd, true).await;
    let replica = Replica::start(&etcd, "r1");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = waiting.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "submit --wait still waiting");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = waiting.wait_with_output().expect("output");
    assert_eq!(
        status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("\"placed\""),
        "{}",
        text(&out.stdout)
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_compacted_past_its_revision_reads_again_and_goes_on() {
    let mut etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    let events = Following::start(&ep, &["events", "--tail", "1"]);
    let status = Following::start(&ep, &["status", "first", "--watch", "-o", "json"]);
    events.until(WAIT, |l| l.contains(" decision placed first "));
    status.until(WAIT, |l| l.contains("\"status\":\"placed\""));
    // Frozen, they keep their streams and miss what follows: etcd restarted (their streams
    // are dead), new decisions, and the history of them compacted away.
    citadel_testkit::child::signal(events.child.id(), Signal::STOP).expect("stop");
    citadel_testkit::child::signal(status.child.id(), Signal::STOP).expect("stop");
    restart(&mut etcd, true).await;
    put_request(&client, &keys, "missed", request_json(0.5, 64, json!({}))).await;
    wait_decision(&client, &keys, "missed", WAIT).await;
    let rev = put_request(&client, &keys, "first", request_json(0.25, 64, json!({}))).await;
    wait_decision_where(
        &client,
        &keys,
        "first",
        WAIT,
        "the new revision decided",
        |d| d.request_revision == rev,
    )
    .await;
    let now = revision(&client).await;
    client
        .kv_client()
        .compact(now, None)
        .await
        .expect("compact");
    citadel_testkit::child::signal(events.child.id(), Signal::CONT).expect("cont");
    citadel_testkit::child::signal(status.child.id(), Signal::CONT).expect("cont");

    // `status --watch` reads the request again: its new revision.
    status.until(WAIT, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["request_revision"] == json!(rev))
    });
    // `events` goes on from the oldest revision etcd keeps, and shows what comes next.
    put_request(&client, &keys, "later", request_json(0.5, 64, json!({}))).await;
    events.until(WAIT, |l| l.contains(" decision placed later "));
    let notes = events.notes();
    assert!(
        notes.iter().any(|n| n.contains("compacted its history")),
        "{notes:?}"
    );
    events.stop(Signal::TERM);
    status.stop(Signal::TERM);

    // `--since` a compacted revision starts from the oldest one kept, saying so.
    let since = Following::start(&ep, &["events", "--since", "1"]);
    since.until(WAIT, |l| l.contains(" decision placed later "));
    assert!(
        since.notes().iter().any(|n| n.contains("compacted")),
        "says where it starts"
    );
    since.stop(Signal::INT);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_the_last_ones_first_each_at_the_time_it_was_written() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let keys = keys();
    for i in 0..12 {
        let id = format!("r{i:02}");
        put_request(&client, &keys, &id, request_json(0.1, 16, json!({}))).await;
        wait_decision(&client, &keys, &id, WAIT).await;
    }
    let ep = etcd.endpoint();
    // Nothing happens meanwhile: what it prints first is history.
    let tail = Following::start(&ep, &["events", "-o", "json"]);
    let shown = tail.settle(Duration::from_secs(3));
    assert_eq!(shown.len(), 10, "the last 10 by default: {shown:#?}");
    let last = json_of(shown.last().expect("one"));
    assert_eq!(last["id"], json!("r11"), "the latest last: {last}");
    tail.stop(Signal::TERM);
    let two = Following::start(&ep, &["events", "--tail", "2"]);
    let shown = two.settle(Duration::from_secs(3));
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(shown[0].contains(" decision placed r10 "), "{shown:#?}");
    two.stop(Signal::TERM);

    // Replayed from the start, every event has the time its revision recorded, in order;
    // the engines, whose values record none, say so instead of the time of the replay.
    let since = Following::start(&ep, &["events", "--since", "1", "-o", "json"]);
    let replayed: Vec<Value> = since
        .settle(Duration::from_secs(3))
        .iter()
        .map(|l| json_of(l))
        .collect();
    since.stop(Signal::TERM);
    let engine = replayed
        .iter()
        .find(|e| e["type"] == json!("engine"))
        .expect("the engine's event");
    assert_eq!(engine["time"], Value::Null, "{engine}");
    let times: Vec<&str> = replayed.iter().filter_map(|e| e["time"].as_str()).collect();
    assert!(times.len() >= 14, "{replayed:#?}");
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "in order");
    let text = Following::start(&ep, &["events", "--since", "1"]);
    text.until(WAIT, |l| l.starts_with("- engine added engine=e1"));
    text.stop(Signal::INT);
    let _ = client;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_events_tell_a_killed_leader_from_one_that_resigned() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let events = Following::start(&ep, &["events", "--tail", "0"]);
    events.until_watching(&client, &keys).await;
    let ttl = ["--lease-ttl", "2"];
    let mut one = ReplicaProcess::start(&ep, "one", dir.path(), &ttl);
    events.until(WAIT, |l| l.contains(" leader leads one"));
    let two = ReplicaProcess::start(&ep, "two", dir.path(), &ttl);
    events.until(WAIT, |l| l.contains(" leader campaign two"));

    // Killed: its lease expires, and the next candidate leads.
    one.signal(Signal::KILL);
    assert!(one.wait_exit(WAIT), "one exits");
    let (gone, _) = events.until(WAIT, |l| l.contains(" leader expired one"));
    assert!(gone.contains("was leading"), "{gone}");
    let (next, _) = events.until(WAIT, |l| l.contains(" leader leads two"));
    assert!(next.contains("after one's lease expired"), "{next}");

    // Stopped: it resigns, and says so.
    let mut two = two;
    let _three = ReplicaProcess::start(&ep, "three", dir.path(), &ttl);
    events.until(WAIT, |l| l.contains(" leader campaign three"));
    two.signal(Signal::TERM);
    assert!(two.wait_exit(WAIT), "two exits");
    let (gone, _) = events.until(WAIT, |l| l.contains(" leader resigned two"));
    assert!(gone.contains("was leading"), "{gone}");
    assert!(
        !gone.starts_with("- "),
        "a resignation records its time: {gone}"
    );
    let (next, _) = events.until(WAIT, |l| l.contains(" leader leads three"));
    assert!(next.contains("after two resigned"), "{next}");
    events.stop(Signal::TERM);

    // The marker is no key a reader acts on: the registry stays consistent.
    assert_invariants(&client, &keys).await;
    assert!(
        get(&client, &keys.resigned()).await.is_some(),
        "the marker is written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_on_when_the_member_they_watch_through_is_lost() {
    init_tracing();
    let mut cluster = citadel_testkit::etcd::EtcdCluster::start(3)
        .await
        .expect("start 3 members");
    let endpoints = cluster.endpoints();
    let cfg = citadel::store::EtcdConfig::new(endpoints.clone());
    let client = connect_with(&cfg).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 8.0, 8192.0, &[]).await;
    let replica = Replica::start_etcd_config(cfg, "r1");
    let all = endpoints.join(",");
    let events = Following::start(&all, &["events", "--tail", "0", "-o", "json"]);

    events.until_watching(&client, &keys).await;
    // Each member in turn is killed (so the one its stream went through is, too), and the
    // events go on; the member comes back before the next is killed.
    for i in 0..cluster.len() {
        cluster.kill(i).await;
        let id = format!("without-m{i}");
        // The test's own client may try the dead member first: it tries again.
        let key = keys.request(&rid(&id));
        let body = request_json(0.1, 16, json!({}));
        let deadline = Instant::now() + WAIT;
        while let Err(e) = client
            .kv_client()
            .put(key.as_str(), body.as_str(), None)
            .await
        {
            assert!(Instant::now() < deadline, "etcd never took {id}: {e}");
            tokio::time::sleep(POLL).await;
        }
        events.until(WAIT, |l| l.contains(&format!("\"{id}\"")));
        cluster
            .restart(i, true)
            .await
            .expect("the member comes back");
    }
    events.stop(Signal::TERM);
    replica.stop().await;
}

/// etcd's count of watchers it serves from its backend because they fell behind.
async fn slow_watchers(etcd: &EtcdProcess) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = etcd.endpoint().trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("ask");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_slow_watcher_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("etcd reports its slow watchers")
}

/// The cache reads its watch on a task of its own: while applying is held up (here, a reader
/// holding the cache's lock, as a large map growing under it would), etcd keeps handing the
/// events over, the watch stays among those etcd serves from memory, and nothing is lost once
/// applying goes on. (Read one by one by the applier, the same writes made etcd put the watch
/// among its slow watchers, served from its backend, which slows every write.)
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_cache_held_up_applying_stays_among_etcds_synced_watchers() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = citadel::keys::Keys::default();
    let cache = citadel::cache::Cache::new(keys.clone(), 1.0);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(cache.clone().run(client.clone(), shutdown));
    let first = put_request(&client, &keys, "first", request_json(1.0, 1, json!({}))).await;
    assert!(cache.wait_for(first, WAIT).await, "the cache follows etcd");
    assert_eq!(slow_watchers(&etcd).await, 0.0);

    // Applying held up: the lock taken on a thread of its own until told to let go.
    let (held_tx, held) = std::sync::mpsc::channel::<()>();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let holder = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let _read = cache.read();
            let _ = held_tx.send(());
            let _ = go.recv();
        })
    };
    held.recv().expect("the lock is held");
    // The writes go over a connection of their own: the watch's, unread, may fill its window.
    let client = connect(&etcd).await;
    // 4,000 writes of 1 KB, one response each: more than etcd's buffer of 128 responses per
    // watch stream and gRPC's windows hold, fewer than the reader takes ahead (16,384).
    let value = request_json(1.0, 1, json!({ "labels": ["x".repeat(1_000)] }));
    let mut last = 0;
    for i in 0..4_000 {
        last = put_request(&client, &keys, &format!("r-{i:04}"), value.clone()).await;
    }
    let slow = slow_watchers(&etcd).await;
    go_tx.send(()).expect("let go");
    holder.join().expect("the holder");
    assert_eq!(
        slow, 0.0,
        "the cache's watch fell behind while applying was held up"
    );
    assert!(cache.wait_for(last, WAIT).await, "the cache catches up");
    assert_eq!(
        cache
            .read()
            .request_counts()
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>(),
        4_001
    );
    let _ = stop.send(true);
    task.await.expect("the cache's task");
}
