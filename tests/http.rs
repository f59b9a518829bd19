//! The operator's HTTP surface against a real etcd: /metrics during a load, /readyz and /healthz
//! through a cut network, the status page rendered by headless Chromium, and the real binary's
//! --listen (a port in use, a clean stop).
//!
//! `cargo test --test http -- --ignored status_page_screenshot` writes docs/status-page.png.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use citadel::cache::Cache;
use citadel::keys::Keys;
use citadel_testkit::etcd::EtcdProcess;
use common::*;
use etcd_client::Client;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Bound on one Chromium run.
const BROWSER: Duration = Duration::from_secs(120);

/// A free loopback address: bound, then released for the replica to bind.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address")
}

/// An in-process replica that serves its HTTP surface.
struct Served {
    addr: SocketAddr,
    replica: Replica,
}

impl Served {
    fn start(endpoint: &str, id: &str) -> Served {
        let addr = free_addr();
        Served {
            addr,
            replica: Replica::start_serving(endpoint, id, addr),
        }
    }

    fn cache(&self) -> &Cache {
        &self.replica.cache
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.addr, path).await
    }

    /// Waits (bounded) until `path` answers `status`; returns the body.
    async fn wait_status(&self, path: &str, status: u16) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.get(path).await;
            if let Ok((s, body)) = &got
                && *s == status
            {
                return body.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer {status} within {WAIT:?}; last: {got:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the replica to stop and waits (bounded) until it has.
    async fn stop(self) {
        self.replica.stop().await;
    }
}

/// A series' value in Prometheus text (`name{labels}` exactly as written).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

async fn scrape(r: &Served) -> String {
    match r.get("/metrics").await {
        Ok((200, text)) => text,
        other => panic!("/metrics: {other:?}"),
    }
}

/// How many requests the load writes, from [`LOADERS`] clients.
const N: usize = 300;
const LOADERS: usize = 4;
/// The series that counts placements.
const PLACED: &str = "citadel_decisions_total{status=\"placed\"}";

/// The metrics test's world: eight engines of 4 cpus and 8 GB in zone a, a leader `r1` and a
/// standby `r2`, both serving HTTP.
/// Fields drop in order: the replicas, then etcd.
struct Metered {
    leader: Served,
    standby: Served,
    engines: Vec<String>,
    client: Client,
    keys: Keys,
    etcd: EtcdProcess,
}

impl Metered {
    /// The engines, then `r1`, ready and leading, then `r2`, ready.
    async fn start() -> Metered {
        let etcd = start_etcd().await;
        let client = connect(&etcd).await;
        let keys = keys();
        let engines: Vec<String> = (1..=8).map(|n| format!("engine-{n}")).collect();
        for e in &engines {
            put_engine(&client, &keys, e, 4.0, 8192.0, &["zone=a"]).await;
        }
        let leader = Served::start(&etcd.endpoint(), "r1");
        leader.wait_status("/readyz", 200).await;
        wait_until("r1 leads", WAIT, || async {
            leader_id(&client, &keys).await.as_deref() == Some("r1")
        })
        .await;
        let standby = Served::start(&etcd.endpoint(), "r2");
        standby.wait_status("/readyz", 200).await;
        Metered {
            leader,
            standby,
            engines,
            client,
            keys,
            etcd,
        }
    }

    /// `citadel_leader` is 1 on r1, and no placement is counted yet.
    async fn the_leader_says_it_leads_and_has_decided_nothing(&self) {
        wait_until("r1's metrics say it leads", WAIT, || async {
            metric(&scrape(&self.leader).await, "citadel_leader") == Some(1.0)
        })
        .await;
        let before = scrape(&self.leader).await;
        assert_eq!(metric(&before, PLACED), None, "nothing decided yet");
    }

    /// [`N`] requests from [`LOADERS`] clients, the leader scraped all along; waits until every
    /// one is decided. Returns the scrapes taken during the load.
    async fn load_while_scraping_the_leader(&self) -> Vec<String> {
        let mut loaders = Vec::new();
        for c in 0..LOADERS {
            let (client, keys) = (self.client.clone(), self.keys.clone());
            loaders.push(tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in (c..N).step_by(LOADERS) {
                    let id = format!("load-{i:03}");
                    let rev = put_request(
                        &client,
                        &keys,
                        &id,
                        request_json(0.1, 64, serde_json::json!({})),
                    )
                    .await;
                    revs.push((id, rev));
                }
                revs
            }));
        }
        let mut mid_scrapes = Vec::new();
        while loaders.iter().any(|l| !l.is_finished()) {
            mid_scrapes.push(scrape(&self.leader).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut want = BTreeMap::new();
        for l in loaders {
            want.extend(l.await.expect("loader"));
        }
        wait_all_decided(&self.client, &self.keys, &want, WAIT * 3).await;
        assert!(!mid_scrapes.is_empty(), "scraped during the load");
        mid_scrapes
    }

    /// The counters are bumped as each commit returns: waits (bounded) until the leader counts
    /// all [`N`] placements. Returns that scrape.
    async fn the_leader_counts_every_placement(&self) -> String {
        let mut after = scrape(&self.leader).await;
        let deadline = Instant::now() + WAIT;
        while metric(&after, PLACED).unwrap_or(0.0) < N as f64 {
            assert!(
                Instant::now() < deadline,
                "placed never reached {N}:\n{after}"
            );
            tokio::time::sleep(POLL).await;
            after = scrape(&self.leader).await;
        }
        after
    }

    /// Every replica reads its own cache: waits until the standby counts every placement, and
    /// it says it does not lead. Returns its scrape.
    async fn the_standby_counts_every_placement_and_does_not_lead(&self) -> String {
        wait_until("the standby has seen every placement", WAIT, || async {
            metric(
                &scrape(&self.standby).await,
                "citadel_requests{status=\"placed\"}",
            ) == Some(N as f64)
        })
        .await;
        let standby_text = scrape(&self.standby).await;
        assert_eq!(must(&standby_text, "citadel_leader"), 0.0);
        standby_text
    }

    /// A replica's scrape names every engine, with its capacity, and the engines together
    /// reserve what the load asked for.
    fn every_engine_is_named_with_what_it_holds(&self, text: &str) {
        let mut reserved = 0.0;
        for e in &self.engines {
            let l = format!("{{engine=\"{e}\"}}");
            assert_eq!(must(text, &format!("citadel_engine_cpus{l}")), 4.0);
            assert_eq!(
                must(text, &format!("citadel_engine_memory_bytes{l}")),
                8192.0 * 1024.0 * 1024.0
            );
            reserved += must(text, &format!("citadel_engine_reserved_cpus{l}"));
            must(text, &format!("citadel_engine_reserved_memory_bytes{l}"));
        }
        assert!(
            (reserved - N as f64 * 0.1).abs() < 1e-6,
            "the engines reserve {reserved} cpus"
        );
    }

    /// Stops the standby, then the leader, then etcd.
    async fn stop(self) {
        self.standby.stop().await;
        self.leader.stop().await;
        drop(self.etcd);
    }
}

/// No scrape during the load counted more than the end; the end counts each placement,
/// transaction and first decision once, and a single list of the cache.
fn the_counters_only_grew_and_count_the_load_once(mid_scrapes: &[String], after: &str) {
    for mid in mid_scrapes {
        assert!(metric(mid, PLACED).unwrap_or(0.0) <= must(after, PLACED));
    }
    assert_eq!(must(after, PLACED), N as f64);
    assert_eq!(
        must(after, "citadel_placements_total{scheduler=\"spread\"}"),
        N as f64
    );
    let txns = must(after, "citadel_transactions_total{outcome=\"committed\"}");
    assert!(
        (1.0..=N as f64).contains(&txns),
        "{txns} transactions for {N} placements"
    );
    assert_eq!(must(after, "citadel_transaction_operations_count"), txns);
    assert!(must(after, "citadel_transaction_operations_sum") >= N as f64);
    assert!(must(after, "citadel_commit_latency_seconds_count") >= txns);
    assert_eq!(
        must(after, "citadel_decision_latency_seconds_count"),
        N as f64,
        "each request's first decision is timed"
    );
    assert_eq!(must(after, "citadel_requests{status=\"placed\"}"), N as f64);
    assert_eq!(must(after, "citadel_queued_requests"), 0.0);
    assert!(must(after, "citadel_leadership_changes_total") >= 1.0);
    assert_eq!(must(after, "citadel_cache_lists_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_under_a_load_and_name_every_engine_on_every_replica() {
    let w = Metered::start().await;
    w.the_leader_says_it_leads_and_has_decided_nothing().await;
    let mid_scrapes = w.load_while_scraping_the_leader().await;
    let after = w.the_leader_counts_every_placement().await;
    the_counters_only_grew_and_count_the_load_once(&mid_scrapes, &after);
    let standby = w
        .the_standby_counts_every_placement_and_does_not_lead()
        .await;
    w.every_engine_is_named_with_what_it_holds(&after);
    w.every_engine_is_named_with_what_it_holds(&standby);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_health_follow_the_cache_through_a_cut_network() {
    let etcd = start_etcd().await;
    let proxy = Proxy::start(&etcd).await;
    proxy.cut();
    let r = Served::start(&proxy.endpoint(), "r1");

    // Up before etcd is reached, and saying why it is not ready.
    let body = r.wait_status("/readyz", 503).await;
    assert_eq!(body, "not ready: the cache has not listed etcd yet\n");
    let body = r.wait_status("/healthz", 503).await;
    assert!(body.starts_with("etcd not reached yet"), "{body}");
    let (status, state) = r.get("/api/state").await.expect("api/state");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    assert_eq!(state["replica"]["ready"], false);

    proxy.heal();
    let body = r.wait_status("/readyz", 200).await;
    assert!(body.starts_with("ready: "), "{body}");
    let body = r.wait_status("/healthz", 200).await;
    assert!(body.starts_with("ok: etcd answered"), "{body}");
    assert!(r.cache().lists() >= 1);

    // A cut: the watch breaks and the probe goes unanswered.
    proxy.cut();
    let body = r.wait_status("/readyz", 503).await;
    assert!(body.starts_with("not ready: "), "{body}");
    let body = r.wait_status("/healthz", 503).await;
    assert!(body.starts_with("etcd has not answered for "), "{body}");

    proxy.heal();
    r.wait_status("/readyz", 200).await;
    r.wait_status("/healthz", 200).await;

    // It stops with the replica, and the port is free again.
    let addr = r.addr;
    r.stop().await;
    wait_until("the port is closed", WAIT, || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

/// The headless browser, installed by scripts/install-deps.sh if missing; `None` only when it
/// cannot be had at all.
fn chromium() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let find = || {
                ["chromium", "chromium-browser"].iter().find_map(|name| {
                    std::env::var_os("PATH").and_then(|paths| {
                        std::env::split_paths(&paths)
                            .map(|dir| dir.join(name))
                            .find(|p| p.is_file())
                    })
                })
            };
            if let Some(p) = find() {
                return Some(p);
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
            eprintln!("chromium is missing: running {}", script.display());
            let installed = std::process::Command::new("bash")
                .arg(&script)
                .status()
                .is_ok_and(|s| s.success());
            let found = find();
            if found.is_none() {
                eprintln!(
                    "SKIPPED: chromium is not installed and {} could not install it (installed: {installed})",
                    script.display()
                );
            }
            found
        })
        .clone()
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=…`); returns
/// its standard output.
async fn chromium_run(chromium: &Path, url: &str, mode: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a profile dir");
    let out = timeout(
        BROWSER,
        tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(mode)
            .arg(url)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("chromium did not finish within {BROWSER:?}"))
    .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Text as Chromium's DOM dump writes it inside an element.
fn in_dom(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(">{escaped}<")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_engine_and_why_a_request_is_refused() {
    let Some(chromium) = chromium() else {
        return;
    };
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let hostile = "note=<img src=x onerror=document.title='pwned'>";
    let engines = ["north-1", "north-2", "south-1", "south-2"];
    for (i, e) in engines.iter().enumerate() {
        let labels: &[&str] = if i == 0 {
            &["zone=n", hostile]
        } else {
            &["zone=n"]
        };
        put_engine(&client, &keys, e, 2.0, 4096.0, labels).await;
    }
    let r = Served::start(&etcd.endpoint(), "r1");
    r.wait_status("/readyz", 200).await;
    wait_until("r1 leads", WAIT, || async {
        leader_id(&client, &keys).await.as_deref() == Some("r1")
    })
    .await;
    for i in 0..6 {
        put_request(
            &client,
            &keys,
            &format!("web-{i}"),
            request_json(0.5, 256, serde_json::json!({})),
        )
        .await;
    }
    put_request(
        &client,
        &keys,
        "too-big",
        request_json(64.0, 64, serde_json::json!({})),
    )
    .await;
    put_request(
        &client,
        &keys,
        "typo",
        request_json(0.1, 16, serde_json::json!({"lables": ["zone==n"]})),
    )
    .await;
    let refused = wait_decision(&client, &keys, "too-big", WAIT).await;
    assert_eq!(refused.status, citadel::model::Status::Unschedulable);
    let invalid = wait_decision(&client, &keys, "typo", WAIT).await;
    for i in 0..6 {
        wait_decision(&client, &keys, &format!("web-{i}"), WAIT).await;
    }
    // The leader's own page reads its cache: wait until it holds all eight decisions.
    wait_until("the leader's cache holds every decision", WAIT, || async {
        let state = r.cache().read();
        state.recent_decisions(100).len() == 8
    })
    .await;

    let dom = chromium_run(&chromium, &r.url("/"), &["--dump-dom"]).await;
    assert!(
        dom.contains("id=\"engines\""),
        "not the status page:\n{dom}"
    );
    for e in engines {
        assert!(dom.contains(&in_dom(e)), "engine {e} is not shown:\n{dom}");
    }
    for (id, reason) in [("too-big", &refused.reason), ("typo", &invalid.reason)] {
        assert!(dom.contains(&in_dom(id)), "{id} is not shown:\n{dom}");
        assert!(
            dom.contains(&in_dom(reason)),
            "{id}'s reason {reason:?} is not shown:\n{dom}"
        );
    }
    assert!(dom.contains(&in_dom("unschedulable")));
    assert!(
        dom.contains(&in_dom(hostile)),
        "the hostile label is shown as text:\n{dom}"
    );
    assert!(!dom.contains("<img"), "a label became markup:\n{dom}");
    assert!(
        !dom.contains("<title>pwned"),
        "a label ran a script:\n{dom}"
    );
    assert!(dom.contains(&in_dom("r1")), "the leader is named");
    r.stop().await;
}

/// The `title` of the element whose class is `class`, and its text, from a DOM dump: the
/// first such element after `after`.
fn titled<'a>(dom: &'a str, after: &str, class: &str) -> Option<(&'a str, &'a str)> {
    let from = dom.find(after)?;
    let rest = &dom[from..];
    let at = rest.find(&format!("class=\"{class}\""))?;
    let tag = &rest[at..];
    let end = tag.find('>')?;
    let title = tag[..end].split("title=\"").nth(1)?.split('"').next()?;
    let text = tag[end + 1..].split('<').next()?;
    Some((title, text))
}

/// The page showed ISO times where the CLI shows ages, no decision's time, and kept its LEADER
/// badge and numbers, not greyed, while etcd was down. Now: ages with the time as their title
/// (the leader's since it leads, each decision's `decided_at`), and with etcd stopped for
/// real, a greyed page, a stale role and a banner saying since when; all back once etcd is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_ages_and_greys_while_etcd_is_stopped() {
    let Some(chromium) = chromium() else {
        return;
    };
    let mut etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 2.0, 4096.0, &[]).await;
    let r = Served::start(&etcd.endpoint(), "r1");
    r.wait_status("/readyz", 200).await;
    wait_until("r1 leads", WAIT, || async {
        leader_id(&client, &keys).await.as_deref() == Some("r1")
    })
    .await;
    put_request(
        &client,
        &keys,
        "web-1",
        request_json(0.5, 256, serde_json::json!({})),
    )
    .await;
    let decided = wait_decision(&client, &keys, "web-1", WAIT).await;
    wait_until("the cache holds the decision", WAIT, || async {
        r.cache().read().recent_decisions(10).len() == 1
    })
    .await;
    let leads_since = wait_until_some("the leader says since when it leads", || async {
        let (_, body) = r.get("/api/state").await.ok()?;
        let state: serde_json::Value = serde_json::from_str(&body).ok()?;
        state["candidates"][0]["leads_since"]
            .as_str()
            .map(String::from)
    })
    .await;

    let dom = chromium_run(&chromium, &r.url("/"), &["--dump-dom"]).await;
    let (title, text) = titled(&dom, "leads since", "since")
        .unwrap_or_else(|| panic!("no age of the leadership:\n{dom}"));
    assert_eq!(title, leads_since, "{dom}");
    assert!(text.ends_with(" ago"), "an age, not a time: {text:?}");
    let (title, text) = titled(&dom, "id=\"recent\"", "decided")
        .unwrap_or_else(|| panic!("no decision time:\n{dom}"));
    assert_eq!(title, decided.decided_at, "{dom}");
    assert!(text.ends_with(" ago"), "an age, not a time: {text:?}");
    assert!(
        !dom.contains(&in_dom(&decided.decided_at)),
        "an ISO time as text:\n{dom}"
    );
    assert!(!dom.contains("<body class=\"stale\""), "{dom}");
    assert!(dom.contains(&in_dom("leader")), "{dom}");

    // etcd stops for real: every number is as of its last answer.
    etcd.stop().await;
    r.wait_status("/healthz", 503).await;
    let dom = chromium_run(&chromium, &r.url("/"), &["--dump-dom"]).await;
    assert!(dom.contains("<body class=\"stale\""), "not greyed:\n{dom}");
    assert!(
        dom.contains("class=\"role stale\""),
        "the role is not stale:\n{dom}"
    );
    assert!(
        !dom.contains("class=\"role leader\""),
        "still a LEADER badge:\n{dom}"
    );
    assert!(
        dom.contains("etcd unreachable: the numbers below are stale, as of its last answer at "),
        "no banner saying since when:\n{dom}"
    );

    etcd.restart().await.expect("etcd starts again");
    r.wait_status("/healthz", 200).await;
    let dom = chromium_run(&chromium, &r.url("/"), &["--dump-dom"]).await;
    assert!(
        !dom.contains("<body class=\"stale\""),
        "still greyed:\n{dom}"
    );
    assert!(!dom.contains("class=\"role stale\""), "{dom}");
    r.stop().await;
}

/// Polls `f` (bounded by [`WAIT`]) until it gives something.
async fn wait_until_some<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not {what} within {WAIT:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Writes docs/status-page.png from a realistic cluster: 8 engines with health keys (one
/// silent), a load of placements, one unschedulable and one invalid request, and a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/status-page.png; run by hand"]
async fn status_page_screenshot() {
    let Some(chromium) = chromium() else {
        return;
    };
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"];
    for n in 1..=8 {
        let id = format!("node-{n:02}");
        let zone = format!("zone={}", zones[n % 3]);
        let mut labels = vec![zone.as_str(), "pool=general"];
        if n % 4 == 0 {
            labels = vec![zone.as_str(), "pool=gpu", "gpu=a100"];
        }
        if n == 3 {
            labels.push("ssd");
        }
        let (cpus, memory) = if n % 4 == 0 {
            (32.0, 131072.0)
        } else {
            (16.0, 65536.0)
        };
        put_engine(&client, &keys, &id, cpus, memory, &labels).await;
    }
    let leader = Served::start(&etcd.endpoint(), "replica-1");
    leader.wait_status("/readyz", 200).await;
    wait_until("replica-1 leads", WAIT, || async {
        leader_id(&client, &keys).await.as_deref() == Some("replica-1")
    })
    .await;
    let standby = Served::start(&etcd.endpoint(), "replica-2");
    standby.wait_status("/readyz", 200).await;

    let mut want = BTreeMap::new();
    let images = ["nginx:1.27", "redis:7", "api:2.3.1", "worker:2.3.1"];
    for i in 0..140 {
        let cpus = [0.25, 0.5, 1.0, 2.0][i % 4];
        let memory = [256, 512, 1024, 4096][(i / 4) % 4];
        let id = format!("{}-{i:03}", ["web", "cache", "api", "worker"][i % 4]);
        let kind = if i % 4 == 3 { "batch" } else { "service" };
        let body = request_json(
            cpus,
            memory,
            serde_json::json!({"image": images[i % 4], "type": kind}),
        );
        want.insert(id.clone(), put_request(&client, &keys, &id, body).await);
    }
    let big = serde_json::json!({"image": "trainer:5", "cpus": 48, "memory": 262144,
        "type": "batch", "labels": ["gpu==a100"]});
    want.insert(
        "train-llm".into(),
        put_request(&client, &keys, "train-llm", big.to_string()).await,
    );
    let typo = r#"{"image": "redis:7", "cpus": 0.5, "memory": 512, "type": "service", "lables": ["zone==eu-west-1a"]}"#;
    want.insert(
        "cache-eu".into(),
        put_request(&client, &keys, "cache-eu", typo).await,
    );
    wait_all_decided(&client, &keys, &want, WAIT * 3).await;
    // What a leader running --docker writes: live use, seconds ago; node-07 is silent.
    for n in (1..=8).filter(|n| *n != 7) {
        let id = format!("node-{n:02}");
        let at = SystemTime::now() - Duration::from_millis(400 * n as u64);
        let health = serde_json::json!({
            "engine": id,
            "last_contact": humantime::format_rfc3339_millis(at).to_string(),
            "cpus_used": 1.5 + n as f64 * 0.7,
            "memory_used_mb": 6000.0 + n as f64 * 2100.0,
            "containers_running": 10 + n,
            "checked_by": "replica-1",
        });
        put_raw(&client, keys.health(&eid(&id)), health.to_string()).await;
    }
    wait_until("the leader's cache has the health keys", WAIT, || async {
        leader.cache().read().health(&eid("node-08")).is_some()
    })
    .await;

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
    chromium_run(
        &chromium,
        &leader.url("/"),
        &[
            &format!("--screenshot={}", out.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    assert!(out.is_file(), "no screenshot at {}", out.display());
    eprintln!("wrote {}", out.display());
    standby.stop().await;
    leader.stop().await;
}

/// The real binary: a port in use is one line and exit 1 at start; `--listen 127.0.0.1:0`
/// logs the port it took, serves, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_port_in_use_and_serves_until_sigterm() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    for (listen, want) in [
        (
            addr.to_string(),
            format!(
                "citadel: error: --listen {addr}: address already in use (give another --listen, or --listen '' to serve nothing)"
            ),
        ),
        (
            "localhost".to_string(),
            "citadel: error: --listen localhost: expected IP:PORT, e.g. 127.0.0.1:9090 or 0.0.0.0:9090 ('' serves nothing)".to_string(),
        ),
    ] {
        let run = citadel_cmd(
            &["--etcd", "http://127.0.0.1:9", "controller", "--listen", &listen],
            &[("RUST_LOG", "warn")],
        )
        .output();
        let out = timeout(WAIT, run)
            .await
            .expect("exits at once")
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end(), want, "one line");
    }
    drop(taken);

    let etcd = start_etcd().await;
    let mut child = citadel_cmd(
        &["--etcd", &etcd.endpoint(), "controller", "--id", "bin-1"],
        &[("RUST_LOG", "info")],
    )
    .args(["--listen", "127.0.0.1:0", "--nice", "0"])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("start the controller");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let find = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("url=http://").nth(1) {
                let hostport = rest.trim_end_matches(|c: char| c == '/' || c.is_whitespace());
                return hostport.parse::<SocketAddr>().ok();
            }
        }
        None
    };
    let served = timeout(WAIT, find)
        .await
        .expect("the address is logged")
        .expect("a url= line with an address");
    // Keep draining its log, so that it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((200, body)) = http_get(served, "/readyz").await {
            assert!(body.starts_with("ready: leader"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the binary never got ready");
        tokio::time::sleep(POLL).await;
    }
    let (status, page) = http_get(served, "/").await.expect("the page");
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"status.js\""), "{page}");
    let (status, _) = http_get(served, "/nowhere").await.expect("an answer");
    assert_eq!(status, 404);

    let pid = child.id().expect("a pid");
    citadel_testkit::child::signal(pid, citadel_testkit::child::Signal::TERM).expect("SIGTERM");
    let status = timeout(WAIT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(served).await.is_err(), "still listening");
    drain.abort();
}

/// One GET over a fresh connection with the `Host` header given: its status code and body.
async fn get_as_host(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf).into_owned()
    };
    let text = timeout(WAIT, exchange).await.expect("an answer in time");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_string())
}

/// The real binary answers only requests whose Host is an IP address, localhost, or a name
/// given with --http-allow-host: a page of another name (DNS rebinding) gets 421 and one line,
/// on every path. Before, every Host was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_hosts_it_was_not_told_of() {
    let etcd = start_etcd().await;
    let addr = free_addr();
    let listen = addr.to_string();
    let mut child = citadel_cmd(
        &["--etcd", &etcd.endpoint(), "controller", "--id", "host-1"],
        &[("RUST_LOG", "warn")],
    )
    .args(["--listen", &listen, "--nice", "0"])
    .args(["--http-allow-host", "status.example"])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("start the controller");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the binary never listened");
        tokio::time::sleep(POLL).await;
    }
    let port = addr.port();
    for path in ["/", "/api/state", "/metrics", "/nowhere"] {
        for host in ["evil.example", &format!("evil.example:{port}")] {
            let (status, body) = get_as_host(addr, path, host).await;
            assert_eq!(status, 421, "{host} {path}: {body}");
            assert_eq!(body.trim().lines().count(), 1, "one line: {body}");
            assert!(body.contains("--http-allow-host"), "{body}");
            assert!(!body.contains("evil"), "the host is not echoed: {body}");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "status.example".to_string(),
        format!("STATUS.example:{port}"),
    ] {
        let (status, body) = get_as_host(addr, "/metrics", &host).await;
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains("citadel_"), "{host}: {body}");
    }
    let out = citadel_cmd(
        &[
            "--etcd",
            &etcd.endpoint(),
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--http-allow-host",
            "a:9090",
        ],
        &[],
    )
    .output();
    let out = timeout(WAIT, out).await.expect("exits").expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .trim()
            .starts_with("citadel: error: --http-allow-host \"a:9090\""),
        "{stderr}"
    );
    let _ = child.start_kill();
    let _ = timeout(WAIT, child.wait()).await;
}
