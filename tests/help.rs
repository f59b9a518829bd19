//! The help and the usage errors of the real binary: each command's own flags first, the
//! global ones (how to reach etcd, the prefix, the log format) under their own heading, and a
//! usage error that shows what the command requires, not every flag given. The unit tests in
//! `src/cli/mod.rs` check every subcommand; these check what a user sees.

mod common;

use common::{BIN, text};

/// `citadel ARGS…`, no standard input: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_remove("CITADEL_ETCD")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run citadel");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The line of `help` that lists `flag`, by its index.
fn line_of(help: &str, flag: &str) -> usize {
    help.lines()
        .position(|l| l.trim_start().starts_with(&format!("{flag} <")))
        .unwrap_or_else(|| panic!("{flag} not listed:\n{help}"))
}

/// etcd's `--key` and `--cert` sat between `engine add`'s `--label` and `--tls-cert`.
#[test]
fn engine_add_help_lists_the_etcd_flags_apart_from_its_own() {
    let (code, help, err) = run(&["engine", "add", "--help"]);
    assert_eq!(code, 0, "{err}");
    let heading = help
        .lines()
        .position(|l| l.starts_with("Global options"))
        .unwrap_or_else(|| panic!("no heading for the global options:\n{help}"));
    for own in ["--addr", "--label", "--tls-cert", "--tls-key", "--cpus"] {
        assert!(line_of(&help, own) < heading, "{own}:\n{help}");
    }
    for global in [
        "--etcd", "--key", "--cert", "--cacert", "--prefix", "--user",
    ] {
        assert!(line_of(&help, global) > heading, "{global}:\n{help}");
    }
}

/// Without `--addr`, clap's usage line listed every flag given (`--cpus <N> --memory <MB>
/// --etcd …`) as if it were required.
#[test]
fn a_missing_addr_shows_only_what_engine_add_requires() {
    let (code, _, err) = run(&[
        "engine",
        "add",
        "e1",
        "--cpus",
        "4",
        "--memory",
        "1000",
        "--etcd",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("--addr <ADDR>"), "{err}");
    let usage: Vec<&str> = err.lines().filter(|l| l.starts_with("Usage:")).collect();
    assert_eq!(
        usage,
        ["Usage: citadel engine add [OPTIONS] --addr <ADDR> <ID>"],
        "{err}"
    );
}
