//! End to end with the real binary: three controller replicas, a real etcd, leaders killed.
//!
//! Figures (hand-over times) are printed, never asserted: this machine is shared and noisy.
//! Run with `cargo test --test e2e -- --nocapture` to see them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use citadel::invariants::{self, Report};
use citadel::keys::Keys;
use citadel::model::{Decision, Status};
use citadel_testkit::child::Signal;
use citadel_testkit::etcd::EtcdProcess;
use common::{cli, decision, put_request};
use etcd_client::Client;
use serde_json::json;
use tempfile::TempDir;

mod common;

const LEASE_TTL: &str = "2";

/// A controller replica process (the real binary); SIGKILLed when dropped.
type Replica = common::ReplicaProcess;

/// The nice value of every thread of `pid` ("self" for this process).
fn nice_of(pid: &str) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            // After the command name: state is field 3, nice field 19.
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// Time from `since` until request `id` is decided by someone other than `old_leader`.
async fn time_to_decision(
    client: &Client,
    keys: &Keys,
    id: &str,
    old_leader: &str,
    since: Instant,
    timeout: Duration,
) -> Duration {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(d) = decision(client, keys, id).await {
            assert_ne!(d.decided_by, old_leader, "the stopped leader decided {id}");
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{id} not decided within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `i`th request of a load: about 38 of the 40 cpus the ten engines have, nearly full, so
/// verification matters; some batch, some binding a port, some with a label constraint.
fn load_request(i: usize) -> String {
    let cpus = [0.05, 0.1, 0.2, 0.4][i % 4];
    let memory = [64, 128, 256, 512][i % 4];
    let kind = if i.is_multiple_of(3) {
        "batch"
    } else {
        "service"
    };
    let mut extra = json!({"image": format!("busybox:{i}"), "type": kind});
    if i.is_multiple_of(10) {
        extra["bind_ports"] = json!([{"port": 8000 + (i % 3)}]);
    }
    if i.is_multiple_of(7) {
        extra["labels"] = json!(["zone==a"]);
    }
    common::request_json(cpus, memory, extra)
}

/// Every request has exactly one decision, for its current revision, and invariants 1-2 hold.
async fn assert_all_decided(client: &Client, keys: &Keys, revisions: &BTreeMap<String, i64>) {
    common::wait_all_decided(client, keys, revisions, Duration::from_secs(30)).await;
    let report = common::assert_invariants(client, keys).await;
    assert_eq!(
        report.decided,
        revisions.len(),
        "one decision per request: {report:#?}"
    );
}

/// One test's world: a real etcd, the replicas (the real binary) and what was submitted.
/// Fields drop in order: the replicas (SIGKILLed), their logs, etcd.
struct Cluster {
    replicas: Vec<Replica>,
    dir: TempDir,
    client: Client,
    keys: Keys,
    /// Every request submitted, with its current revision.
    revisions: BTreeMap<String, i64>,
    etcd: EtcdProcess,
}

impl Cluster {
    /// A fresh etcd, no replica yet.
    async fn new() -> Cluster {
        let etcd = common::start_etcd().await;
        Cluster {
            replicas: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            client: common::connect(&etcd).await,
            keys: Keys::default(),
            revisions: BTreeMap::new(),
            etcd,
        }
    }

    fn ep(&self) -> String {
        self.etcd.endpoint()
    }

    /// Starts `replica-1` … `replica-N` with a lease of [`LEASE_TTL`].
    fn start_replicas(&mut self, n: usize) {
        let ep = self.ep();
        for i in 1..=n {
            self.replicas.push(Replica::start(
                &ep,
                &format!("replica-{i}"),
                self.dir.path(),
                &["--lease-ttl", LEASE_TTL],
            ));
        }
    }

    /// `citadel engine add ID --addr ADDR --cpus CPUS --memory MB [--label LABEL]` succeeds.
    fn engine_add(&self, id: &str, addr: &str, cpus: &str, memory: &str, label: Option<&str>) {
        let mut args = vec![
            "engine", "add", id, "--addr", addr, "--cpus", cpus, "--memory", memory,
        ];
        if let Some(label) = label {
            args.extend(["--label", label]);
        }
        let (code, _, stderr) = cli(&self.ep(), &args);
        assert_eq!(code, 0, "engine add: {stderr}");
    }

    /// Ten engines of 4 cpus and 8 GB, in zones a and b by turns, registered with the CLI.
    fn register_ten_engines_with_the_cli(&self) {
        for i in 0..10 {
            let zone = if i % 2 == 0 { "zone=a" } else { "zone=b" };
            let (id, addr) = (format!("engine-{i}"), format!("tcp://127.0.2.{i}:2375"));
            self.engine_add(&id, &addr, "4", "8192", Some(zone));
        }
    }

    /// Every replica yields the cpu to etcd (`--nice`, 5 by default), in all of its threads.
    fn every_replica_is_niced_in_all_its_threads(&self) {
        let want = (nice_of("self")[0] + 5).min(19);
        for r in &self.replicas {
            let nice = nice_of(&r.child.id().to_string());
            assert!(
                nice.len() > 1 && nice.iter().all(|n| *n == want),
                "{}: {nice:?}",
                r.id
            );
        }
    }

    /// Writes request `id` and records its revision.
    async fn submit(&mut self, id: &str, body: String) {
        let rev = put_request(&self.client, &self.keys, id, body).await;
        self.revisions.insert(id.to_string(), rev);
    }

    /// Submits `req-NNN` for every `i` of `load`.
    async fn submit_load(&mut self, load: std::ops::Range<usize>) {
        for i in load {
            self.submit(&format!("req-{i:03}"), load_request(i)).await;
        }
    }

    /// The index of replica `id`.
    fn replica(&self, id: &str) -> usize {
        self.replicas
            .iter()
            .position(|r| r.id == id)
            .expect("the leader is a replica")
    }

    /// SIGKILLs the leader with 100 more requests behind a probe; the probe's decision, by
    /// another replica, tells how long the cluster was headless. Returns the killed leader and
    /// that time.
    async fn sigkill_the_leader_mid_load(&mut self) -> (String, Duration) {
        let first = common::wait_leader(&self.client, &self.keys, Duration::from_secs(20)).await;
        let victim = self.replica(&first);
        let killed_at = Instant::now();
        self.replicas[victim].signal(Signal::KILL);
        let probe = "probe-after-sigkill";
        self.submit(probe, load_request(1)).await;
        self.submit_load(100..200).await;
        let after_kill = self
            .time_to_decision(probe, &first, killed_at, Duration::from_secs(30))
            .await;
        assert!(self.replicas[victim].wait_exit(Duration::from_secs(5)));
        self.replicas.remove(victim);
        (first, after_kill)
    }

    /// SIGTERMs the new leader (not `first`): it resigns, so the last replica takes over at once,
    /// and it exits cleanly. Returns the time to the next decision.
    async fn sigterm_the_next_leader_which_resigns(&mut self, first: &str) -> Duration {
        let second = common::leader_id(&self.client, &self.keys)
            .await
            .expect("a leader after the kill");
        assert_ne!(second, first);
        let victim = self.replica(&second);
        let termed_at = Instant::now();
        self.replicas[victim].signal(Signal::TERM);
        let probe = "probe-after-sigterm";
        self.submit(probe, load_request(2)).await;
        let after_term = self
            .time_to_decision(probe, &second, termed_at, Duration::from_secs(30))
            .await;
        assert!(
            self.replicas[victim].wait_exit(Duration::from_secs(10)),
            "SIGTERM must stop the replica cleanly"
        );
        let log = self.replicas[victim].log();
        assert!(
            log.contains("lease revoked"),
            "a terminated leader resigns:\n{log}"
        );
        self.replicas.remove(victim);
        after_term
    }

    async fn time_to_decision(
        &self,
        id: &str,
        old_leader: &str,
        since: Instant,
        timeout: Duration,
    ) -> Duration {
        time_to_decision(&self.client, &self.keys, id, old_leader, since, timeout).await
    }

    /// Every request submitted has exactly one decision, for its current revision, and
    /// invariants 1-2 hold.
    async fn all_decided_once(&self) {
        assert_all_decided(&self.client, &self.keys, &self.revisions).await;
    }

    async fn report(&self) -> Report {
        invariants::check_etcd(&self.client, &self.keys, 1.0)
            .await
            .expect("read etcd")
    }

    /// Most requests fit; prints the hand-over times.
    async fn most_requests_are_placed(&self, after_kill: Duration, after_term: Duration) {
        let report = self.report().await;
        println!(
            "e2e: {} requests, {} placed, {} unschedulable, {} invalid; hand-over after SIGKILL {} ms, \
             after SIGTERM {} ms (lease TTL {LEASE_TTL} s)",
            self.revisions.len(),
            report.placed,
            report.unschedulable,
            report.invalid,
            after_kill.as_millis(),
            after_term.as_millis()
        );
        assert!(report.placed > 150, "most requests fit: {report:?}");
    }

    /// What one engine holds, as an operator lists it: one row per request placed there; and
    /// `engine rm` refuses an engine that holds placements.
    async fn engine_show_lists_what_engine_0_holds_and_rm_refuses_it(&self) {
        let mut on_engine_0 = Vec::new();
        for id in self.revisions.keys() {
            if let Some(d) = decision(&self.client, &self.keys, id).await
                && d.status == Status::Placed
                && d.resource.as_ref().is_some_and(|r| r.id == "engine-0")
            {
                on_engine_0.push(id.clone());
            }
        }
        assert!(!on_engine_0.is_empty(), "spread uses every engine");
        let (code, shown, _) = cli(&self.ep(), &["engine", "show", "engine-0"]);
        assert_eq!(code, 0, "{shown}");
        assert!(
            shown.contains(&format!("reserved by {} request(s)", on_engine_0.len())),
            "{shown}"
        );
        for id in &on_engine_0 {
            assert!(
                shown.lines().any(|l| l.starts_with(&format!("{id} "))),
                "{id} in:\n{shown}"
            );
        }
        let (code, _, stderr) = cli(&self.ep(), &["engine", "rm", "engine-0"]);
        assert_ne!(code, 0, "an engine that holds placements stays");
        assert!(stderr.contains("still holds"), "{stderr}");
    }

    /// Submits `id` and waits until it is placed; returns its decision.
    async fn submit_and_see_it_placed(&mut self, id: &str) -> Decision {
        self.submit(id, load_request(4)).await;
        let d = common::wait_decision(&self.client, &self.keys, id, Duration::from_secs(20)).await;
        assert_eq!(d.status, Status::Placed);
        d
    }

    /// SIGSTOPs the leader that decided `d`; while it sleeps its lease expires, and the other
    /// replica takes over and decides `id`. Returns the paused replica and the time until then.
    async fn pause_the_leader_and_see_another_decide(
        &mut self,
        d: &Decision,
        id: &str,
    ) -> (usize, Duration) {
        let paused = self.replica(&d.decided_by);
        self.replicas[paused].signal(Signal::STOP);
        self.submit(id, load_request(4)).await;
        let old = self.replicas[paused].id.clone();
        let other = self
            .time_to_decision(id, &old, Instant::now(), Duration::from_secs(30))
            .await;
        (paused, other)
    }

    /// SIGCONTs replica `paused` and waits until it has woken up, tried, and noticed it no
    /// longer leads.
    async fn resume_it_and_see_it_step_down(&self, paused: usize) {
        let paused = &self.replicas[paused];
        paused.signal(Signal::CONT);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = paused.log();
            if log.contains("stepped down") || log.contains("lease lost") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the paused leader never stepped down:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Request `id` was decided by someone else than replica `deposed`.
    async fn decided_by_another_than(&self, id: &str, deposed: usize) {
        let d = decision(&self.client, &self.keys, id)
            .await
            .unwrap_or_else(|| panic!("{id} decided"));
        assert_ne!(
            d.decided_by, self.replicas[deposed].id,
            "the deposed leader must not decide"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_place_200_requests_across_leader_kills() {
    let mut c = Cluster::new().await;
    c.start_replicas(3);
    c.register_ten_engines_with_the_cli();
    c.every_replica_is_niced_in_all_its_threads();
    c.submit_load(0..100).await;
    let (first, after_kill) = c.sigkill_the_leader_mid_load().await;
    c.all_decided_once().await;
    let after_term = c.sigterm_the_next_leader_which_resigns(&first).await;
    c.all_decided_once().await;
    c.most_requests_are_placed(after_kill, after_term).await;
    c.engine_show_lists_what_engine_0_holds_and_rm_refuses_it()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_deposed_and_its_writes_are_refused() {
    let mut c = Cluster::new().await;
    c.start_replicas(2);
    c.engine_add("e1", "tcp://h:1", "2", "1000", None);
    let a = c.submit_and_see_it_placed("a").await;
    let (paused, other) = c.pause_the_leader_and_see_another_decide(&a, "b").await;
    c.resume_it_and_see_it_step_down(paused).await;
    c.submit("c", load_request(4)).await;
    c.all_decided_once().await;
    c.decided_by_another_than("c", paused).await;
    println!(
        "e2e: a paused leader's successor decided after {} ms",
        other.as_millis()
    );
}

/// Steady, bounded load: `count` requests one every `pace`, every 7th rewritten and every 11th
/// deleted a little later. Returns each live request's final revision.
async fn load(client: Client, keys: Keys, count: usize, pace: Duration) -> BTreeMap<String, i64> {
    let mut live = BTreeMap::new();
    for i in 0..count {
        let id = format!("load-{i:04}");
        live.insert(
            id.clone(),
            put_request(&client, &keys, &id, load_request(i)).await,
        );
        if i >= 3 && (i - 3).is_multiple_of(7) {
            let again = format!("load-{:04}", i - 3);
            let body = load_request(i + 1);
            live.insert(
                again.clone(),
                put_request(&client, &keys, &again, body).await,
            );
        }
        if i >= 5 && (i - 5).is_multiple_of(11) {
            let gone = format!("load-{:04}", i - 5);
            common::delete_key(&client, keys.request(&common::rid(&gone))).await;
            live.remove(&gone);
        }
        tokio::time::sleep(pace).await;
    }
    live
}

/// The faults of the hostile-input issue, planted one after another beside a load.
impl Cluster {
    /// A moment for the leader to meet each fault before the next.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    /// A request of heavy regexes, one nested too deep, a misspelt field; their ids.
    async fn plant_hostile_requests(&self) -> Vec<&'static str> {
        let heavy: Vec<String> = (0..150)
            .map(|i| format!("zone!=/^(\\w|\\d){{{}}}x{i}$/", 60 + i % 7))
            .collect();
        let hostile = [
            (
                "hostile-regex",
                serde_json::json!({"image":"x","cpus":0.1,"memory":1,"type":"service","labels":heavy})
                    .to_string(),
            ),
            (
                "hostile-deep",
                format!(
                    r#"{{"image":"x","cpus":0.1,"memory":1,"type":"service","user_data":{{"d":{}1{}}}}}"#,
                    "[".repeat(5000),
                    "]".repeat(5000)
                ),
            ),
            (
                "hostile-typo",
                r#"{"image":"x","cpus":0.1,"memory":1,"type":"service","lables":["zone==b"]}"#
                    .to_string(),
            ),
        ];
        for (id, body) in &hostile {
            put_request(&self.client, &self.keys, id, body.as_str()).await;
        }
        Self::settle().await;
        hostile.iter().map(|(id, _)| *id).collect()
    }

    /// `too-big`, unschedulable, then rewritten and still unschedulable.
    async fn plant_a_rewrite_that_stays_unschedulable(&self) {
        let big = r#"{"image":"big","cpus":64,"memory":1,"type":"service"}"#;
        put_request(&self.client, &self.keys, "too-big", big).await;
        Self::settle().await;
        let bigger = big.replace("\"big\"", "\"bigger\"");
        put_request(&self.client, &self.keys, "too-big", bigger).await;
        Self::settle().await;
    }

    /// Every decision deleted by an operator's slip.
    async fn delete_every_decision(&self) {
        self.client
            .kv_client()
            .delete(
                self.keys.decisions(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("del --prefix decisions/");
        Self::settle().await;
    }

    fn impostor(&self) -> String {
        format!("{}/impostor", self.keys.leader())
    }

    /// An election key without a lease.
    async fn plant_an_election_key_without_a_lease(&self) {
        common::put_raw(&self.client, self.impostor(), "{}").await;
        Self::settle().await;
    }

    /// An engine deleted under its placements, another shrunk by hand.
    async fn delete_an_engine_and_shrink_another(&self) {
        common::delete_key(&self.client, self.keys.engine(&common::eid("e0"))).await;
        Self::settle().await;
        common::put_engine(&self.client, &self.keys, "e1", 1.0, 8192.0, &["zone=b"]).await;
        Self::settle().await;
    }

    /// The leader SIGKILLed; it exits.
    async fn sigkill_the_leader(&mut self) {
        let first = common::leader_id(&self.client, &self.keys)
            .await
            .expect("a leader");
        let victim = self.replica(&first);
        self.replicas[victim].signal(Signal::KILL);
        assert!(self.replicas[victim].wait_exit(Duration::from_secs(5)));
        self.replicas.remove(victim);
    }

    /// `citadel check` (letting the cluster settle) finds nothing.
    fn citadel_check_finds_nothing(&self) {
        let (code, stdout, stderr) = cli(&self.ep(), &["check", "--settle", "30"]);
        assert_eq!(code, 0, "citadel check:\n{stdout}{stderr}");
    }

    /// Each hostile request has an `invalid` decision; adds them to `want`.
    async fn hostile_requests_are_invalid(
        &self,
        hostile: &[&str],
        want: &mut BTreeMap<String, i64>,
    ) {
        for id in hostile {
            let d = decision(&self.client, &self.keys, id)
                .await
                .expect("decided");
            assert_eq!(d.status, Status::Invalid, "{id}: {d:?}");
            want.insert(id.to_string(), d.request_revision);
        }
    }

    /// The rewrite of `too-big` has its own decision: unschedulable.
    async fn the_rewrite_has_its_own_decision(&self) {
        let d = decision(&self.client, &self.keys, "too-big")
            .await
            .expect("decided");
        assert_eq!(d.status, Status::Unschedulable);
        assert_eq!(
            Some(d.request_revision),
            common::get(&self.client, &self.keys.request(&common::rid("too-big")))
                .await
                .map(|g| g.mod_revision),
            "the rewrite has its own decision"
        );
    }

    async fn the_election_key_without_a_lease_is_gone(&self) {
        assert!(
            common::get(&self.client, &self.impostor()).await.is_none(),
            "the election key without a lease is gone"
        );
    }

    /// No violation nor unsettled request, and a request key for each of `want` and `too-big`.
    async fn every_live_request_is_settled(&self, want: &BTreeMap<String, i64>) {
        let report = self.report().await;
        assert_eq!(report.violations() + report.unsettled(), 0, "{report:#?}");
        assert_eq!(report.requests, want.len() + 1, "{report:#?}");
    }

    fn every_remaining_replica_logged_starting(&self) {
        for r in &self.replicas {
            assert!(r.log().contains("starting"), "{}", r.id);
        }
    }
}

/// Three replicas under load while each fault of the hostile-input issue is planted in turn: a
/// request of heavy regexes, one nested too deep, a misspelt field, a rewrite that stays
/// unschedulable, every decision deleted, an election key without a lease, an engine deleted
/// under its placements and one shrunk by hand, and the leader SIGKILLed. Afterwards `citadel
/// check` finds nothing: every live request has exactly one decision for its current revision,
/// no engine is over capacity, no port bound twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_load_survive_every_planted_fault() {
    let mut c = Cluster::new().await;
    for i in 0..6 {
        let zone = if i % 2 == 0 { "zone=a" } else { "zone=b" };
        common::put_engine(&c.client, &c.keys, &format!("e{i}"), 4.0, 8192.0, &[zone]).await;
    }
    c.start_replicas(3);
    let pace = Duration::from_millis(15);
    let loader = tokio::spawn(load(c.client.clone(), c.keys.clone(), 300, pace));

    let hostile = c.plant_hostile_requests().await;
    c.plant_a_rewrite_that_stays_unschedulable().await;
    c.delete_every_decision().await;
    c.plant_an_election_key_without_a_lease().await;
    c.delete_an_engine_and_shrink_another().await;
    c.sigkill_the_leader().await;

    let mut want = tokio::time::timeout(Duration::from_secs(60), loader)
        .await
        .expect("the load ends")
        .expect("the load task");
    c.citadel_check_finds_nothing();
    c.hostile_requests_are_invalid(&hostile, &mut want).await;
    c.the_rewrite_has_its_own_decision().await;
    c.the_election_key_without_a_lease_is_gone().await;
    c.every_live_request_is_settled(&want).await;
    c.every_remaining_replica_logged_starting();
}

/// The leader compacts etcd's history on its timer once the history it would drop (values
/// overwritten, keys deleted) is worth a scan of the keys alive, in a task of its own:
/// requests keep being decided meanwhile, and its cache, whose watch may fall behind a
/// compaction, loses nothing. A history of keys created, which a compaction would scan and
/// drop nothing of, is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_history_while_it_keeps_deciding() {
    let etcd = common::start_etcd().await;
    let client = common::connect(&etcd).await;
    let keys = Keys::default();
    common::put_engine(&client, &keys, "e1", 64.0, 65_536.0, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = common::ReplicaProcess::start(
        &etcd.endpoint(),
        "compactor",
        dir.path(),
        &["--compact-every", "1", "--compact-retain", "20"],
    );
    // 120 requests and their decisions: 241 keys alive, every revision of them a key
    // created, so nothing a compaction would drop.
    let mut revisions = Vec::new();
    for i in 0..120 {
        revisions.push(put_request(&client, &keys, &format!("r-{i:03}"), load_request(i)).await);
    }
    for i in 0..120 {
        let id = format!("r-{i:03}");
        common::wait_decision_where(&client, &keys, &id, common::WAIT, "decided", |_| true).await;
    }
    let middle = revisions[60];
    let readable = |rev: i64| {
        let client = client.clone();
        async move {
            let at = client
                .kv_client()
                .get("/", Some(etcd_client::GetOptions::new().with_revision(rev)))
                .await;
            !matches!(at, Err(e) if e.to_string().contains("compacted"))
        }
    };
    // The compactor looked at the whole history, with every key alive, and put it off.
    common::wait_until("the leader put a compaction off", common::WAIT, || async {
        replica
            .log()
            .lines()
            .filter(|l| l.contains("compaction put off"))
            .filter_map(|l| {
                l.split("alive=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .any(|alive| alive >= 241)
    })
    .await;
    assert!(
        readable(middle).await,
        "a history of creates was compacted: {}",
        replica.log()
    );
    // Half the requests deleted: each request key and its decision (the leader releases it)
    // die, value and tombstone: 240 dead revisions against 121 keys alive.
    for i in 0..60 {
        client
            .kv_client()
            .delete(keys.request(&common::rid(&format!("r-{i:03}"))), None)
            .await
            .expect("delete");
    }
    common::wait_until("the leader compacted", common::WAIT, || async {
        !readable(middle).await
    })
    .await;
    // Logged once the compaction is physical and its call has returned: after the revision
    // became unreadable, which is what was waited for above.
    let logged = tokio::time::timeout(common::WAIT, async {
        while !replica.log().contains("compacted etcd history") {
            tokio::time::sleep(common::POLL).await;
        }
    })
    .await;
    assert!(logged.is_ok(), "{}", replica.log());
    for i in 60..120 {
        let id = format!("r-{i:03}");
        common::wait_decision_where(&client, &keys, &id, common::WAIT, "decided", |_| true).await;
    }
    put_request(&client, &keys, "after", load_request(1)).await;
    common::wait_decision_where(&client, &keys, "after", common::WAIT, "placed", |d| {
        d.status == Status::Placed
    })
    .await;
    common::assert_invariants(&client, &keys).await;
}
