//! kubectl's and nomad's habits in the command line, end to end: the real binary against a real
//! etcd, with a controller replica in process. Replacing a request (`submit --replace`), one
//! request (`requests show`, `requests rm`), `-o json` on every command that changes
//! something, the completion of ids, `ls`'s counts, `engine add`'s scheme, `engine show` on a
//! drained engine, and what `install-deps.sh --demo` installs.

use std::path::Path;
use std::process::Command;

use citadel::model::{Decision, Status};
use serde_json::{Value, json};

mod common;
use common::*;

/// `citadel ARGS -o json`'s stdout as one JSON document; panics naming the command otherwise.
fn json_of(ep: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = cli(ep, &all);
    assert_eq!(code, 0, "{all:?}: {err}");
    assert!(err.is_empty(), "{all:?}: {err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{all:?}: not one JSON document: {e}\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_replace_decides_the_new_request_and_refuses_a_stale_writer() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    put_engine(&client, &keys(), "e1", 2.0, 1024.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let small = request_file(dir.path(), "s.json", &request_json(0.5, 64, json!({})));
    let big = request_file(dir.path(), "b.json", &request_json(1.5, 64, json!({})));
    let huge = request_file(dir.path(), "h.json", &request_json(8.0, 64, json!({})));

    let (code, _, err) = cli(&ep, &["submit", &small, "--id", "web-1", "--wait"]);
    assert_eq!(code, 0, "{err}");
    // Without --replace, the error says how to replace it.
    let (code, _, err) = cli(&ep, &["submit", &big, "--id", "web-1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists; use --replace"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // Replaced: a new revision, decided again, the old reservation released.
    let was = get(&client, &keys().request(&rid("web-1")))
        .await
        .expect("web-1")
        .mod_revision;
    let written = json_of(&ep, &["submit", &big, "--id", "web-1", "--replace"]);
    assert_eq!(written["id"], json!("web-1"), "{written}");
    assert_eq!(written["replaced_revision"], json!(was), "{written}");
    let now = written["request_revision"].as_i64().expect("a revision");
    assert!(now > was, "{written}");
    let d = wait_decision_where(&client, &keys(), "web-1", WAIT, "the new revision", |d| {
        d.request_revision == now
    })
    .await;
    assert_eq!(d.status, Status::Placed, "{d:?}");
    assert_eq!(d.reservation.as_ref().map(|r| r.cpus), Some(1.5), "{d:?}");

    // --wait on a replace waits for the new revision's decision, in the format asked.
    let (code, out, err) = cli(
        &ep,
        &[
            "submit",
            &huge,
            "--id",
            "web-1",
            "--replace",
            "--wait",
            "-o",
            "table",
        ],
    );
    assert_eq!(code, 3, "unschedulable: {out}{err}");
    assert!(out.contains("status    unschedulable"), "{out}");

    // A writer who read an older revision is refused, and nothing is written.
    let before = revision(&client).await;
    let (code, _, err) = cli(
        &ep,
        &[
            "submit",
            &small,
            "--id",
            "web-1",
            "--replace",
            "--if-revision",
            &was.to_string(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("not {was}: someone changed it")),
        "{err}"
    );
    assert_eq!(revision(&client).await, before, "nothing written");
    // --replace of a request that is not there writes it.
    let (code, out, err) = cli(&ep, &["submit", &small, "--id", "web-2", "--replace"]);
    assert_eq!((code, out.trim()), (0, "web-2"), "{err}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_show_and_rm_name_one_request() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    put_engine(&client, &keys(), "e1", 2.0, 1024.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    let ep = etcd.endpoint();
    for (id, cpus) in [("a", 0.5), ("b", 0.5), ("huge", 64.0)] {
        put_request(&client, &keys(), id, request_json(cpus, 64, json!({}))).await;
        wait_decision(&client, &keys(), id, WAIT).await;
    }

    let (code, out, err) = cli(&ep, &["requests", "show", "a"]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "status    placed",
        "engine    e1",
        "decided   ",
        "by r1",
        "asked     {",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let (_, out, _) = cli(&ep, &["requests", "show", "huge"]);
    assert!(out.contains("reason    0/1 engines fit"), "{out}");
    let shown = json_of(&ep, &["requests", "show", "a"]);
    assert_eq!(shown["status"], json!("placed"), "{shown}");
    assert_eq!(shown["request"]["cpus"], json!(0.5), "{shown}");
    assert_eq!(shown["decision"]["resource"]["id"], json!("e1"), "{shown}");
    let (code, _, err) = cli(&ep, &["requests", "show", "nope"]);
    assert_eq!((code, err.trim()), (1, "citadel: error: no request nope"));

    // Several at once; an unknown one is one line and exit 1, the others are released.
    let (code, out, err) = cli(&ep, &["requests", "rm", "a", "nope", "b"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.trim(), "citadel: error: no request nope");
    assert_eq!(out.lines().count(), 2, "{out}");
    for id in ["a", "b"] {
        assert!(
            get(&client, &keys().request(&rid(id))).await.is_none(),
            "{id}"
        );
    }
    let gone = json_of(&ep, &["requests", "rm", "huge"]);
    assert_eq!(
        gone,
        json!([{"what": "request", "id": "huge", "action": "released",
        "message": "released huge: the leader frees its reservation and removes its decision"}])
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_change_something_print_json_alone_with_o_json() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = request_file(dir.path(), "r.json", &request_json(0.5, 64, json!({})));
    let add = [
        "engine",
        "add",
        "e1",
        "--addr",
        "tcp://127.0.0.1:2375",
        "--cpus",
        "2",
        "--memory",
        "512",
    ];
    let mut replace = add.to_vec();
    replace.push("--replace");
    for (args, action) in [
        (&add[..], "registered"),
        (&replace[..], "replaced"),
        (&["engine", "cordon", "e1"][..], "cordoned"),
        (&["engine", "uncordon", "e1"], "uncordoned"),
        (&["engine", "drain", "e1"], "drained"),
        (&["engine", "rm", "e1"], "removed"),
    ] {
        let done = json_of(&ep, args);
        assert_eq!(done["action"], json!(action), "{args:?}: {done}");
        assert_eq!(done["id"], json!("e1"), "{args:?}: {done}");
    }
    let submitted = json_of(&ep, &["submit", &file, "--id", "r1"]);
    assert_eq!(submitted["id"], json!("r1"), "{submitted}");
    let done = json_of(&ep, &["release", "r1"]);
    assert_eq!(done["action"], json!("released"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_offers_the_ids_in_etcd() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    put_engine(&client, &keys(), "e1", 2.0, 1024.0, &[]).await;
    put_engine(&client, &keys(), "e2", 2.0, 1024.0, &[]).await;
    for id in ["web-1", "web-2", "db-1"] {
        put_request(&client, &keys(), id, request_json(0.5, 64, json!({}))).await;
    }
    let ep = etcd.endpoint();
    let (_, out, _) = cli(&ep, &["__complete", "requests"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["db-1", "web-1", "web-2"]);
    let (_, out, _) = cli(&ep, &["__complete", "engines"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["e1", "e2"]);
    // Nothing, quietly, when etcd does not answer: a shell's completion never prints an error.
    let (code, out, err) = cli("http://127.0.0.1:1", &["__complete", "requests"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));

    // The bash script, as a shell loads it, with `citadel` on PATH and CITADEL_ETCD set.
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let complete_with = |words: &str, etcd: &str| -> String {
        let script = format!(
            "source <(citadel completions bash)\n\
             COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             _citadel_ids citadel\n\
             [[ ${{#COMPREPLY[@]}} -eq 0 ]] || printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("PATH", &path)
            .env("CITADEL_ETCD", etcd)
            .output()
            .expect("bash");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let complete = |words: &str| complete_with(words, &ep);
    assert_eq!(complete("citadel status web-"), "web-1\nweb-2\n");
    assert_eq!(complete("citadel requests rm web-1 d"), "db-1\n");
    assert_eq!(complete("citadel engine cordon ''"), "e1\ne2\n");
    // The global flags on the line count, as they would for the command.
    let elsewhere = "http://127.0.0.1:1";
    assert_eq!(complete_with("citadel engine show e", elsewhere), "");
    assert_eq!(
        complete_with(&format!("citadel --etcd {ep} engine show e"), elsewhere),
        "e1\ne2\n"
    );
    // Elsewhere, clap's own completion: subcommands.
    assert!(complete("citadel requests ''").contains("show"));
    for shell in ["zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run");
        let script = text(&out.stdout);
        assert!(script.contains("citadel __complete requests"), "{shell}");
        assert!(script.contains("citadel __complete engines"), "{shell}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_counts_placements_apart_from_running_containers() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    put_engine(&client, &keys(), "e1", 4.0, 4096.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    for id in ["a", "b", "c"] {
        put_request(&client, &keys(), id, request_json(0.5, 64, json!({}))).await;
        let d: Decision = wait_decision(&client, &keys(), id, WAIT).await;
        assert_eq!(d.status, Status::Placed);
    }
    let ep = etcd.endpoint();
    // Placed, and no leader runs with --docker: nothing runs.
    let (code, out, err) = cli(&ep, &["ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("3 placement(s) of 1 image(s), 0 container(s) running"),
        "{out}"
    );
    let ls = json_of(&ep, &["ls"]);
    assert_eq!(ls["containers_running"], json!(0), "{ls}");
    assert_eq!(ls["cluster"]["container_count"], json!(3), "{ls}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_add_refuses_an_address_without_a_scheme() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let ep = etcd.endpoint();
    let before = revision(&client).await;
    let (code, _, err) = cli(
        &ep,
        &[
            "engine",
            "add",
            "e1",
            "--addr",
            "127.0.0.1:2375",
            "--cpus",
            "2",
            "--memory",
            "512",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("did you mean tcp://127.0.0.1:2375?"), "{err}");
    assert_eq!(revision(&client).await, before, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_show_says_drained_apart_from_cordoned() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    put_engine(&client, &keys(), "e1", 2.0, 1024.0, &[]).await;
    let ep = etcd.endpoint();
    let show = || cli(&ep, &["engine", "show", "e1"]).1;
    assert!(!show().contains("cordoned"), "{}", show());
    let (code, _, err) = cli(&ep, &["engine", "cordon", "e1"]);
    assert_eq!(code, 0, "{err}");
    let out = show();
    assert!(out.contains("\ncordoned: takes no new placement"), "{out}");
    let (code, _, err) = cli(&ep, &["engine", "drain", "e1"]);
    assert_eq!(code, 0, "{err}");
    let out = show();
    assert!(
        out.contains("\ndrained: cordoned (takes no new placement) and its services moved"),
        "{out}"
    );
    assert!(!out.contains("\ncordoned:"), "{out}");
    let shown = json_of(&ep, &["engine", "show", "e1"]);
    assert_eq!(shown["engine"]["state"], json!("drained"), "{shown}");
}

/// `install-deps.sh` in a PATH where nothing it looks for is found, saying what it would
/// install.
fn would_install(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let cargo = dir.path().join("cargo");
    std::fs::write(&cargo, "#!/bin/sh\n").expect("a cargo");
    let mut perms = std::fs::metadata(&cargo).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&cargo, perms).expect("chmod");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
    let out = Command::new("/bin/bash")
        .arg(script)
        .args(args)
        .env("PATH", dir.path())
        .output()
        .expect("bash");
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn install_deps_demo_installs_only_what_the_demo_needs() {
    let demo = would_install(&["--demo", "--dry-run"]);
    for needed in ["etcd-server", "etcd-client", "protobuf-compiler"] {
        assert!(demo.contains(needed), "{needed}: {demo}");
    }
    assert!(
        !demo.contains("chromium") && !demo.contains("openssl"),
        "{demo}"
    );
    // test.sh's call, without --demo, installs what the tests need too.
    let all = would_install(&["--dry-run"]);
    assert!(all.contains("chromium") && all.contains("openssl"), "{all}");
}
