//! Running programs from a test: the real binary (one-shot, to its end) and others (openssl, the
//! docker CLI). Every run a test awaits is bounded, and panics saying what it ran.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

/// The real binary, as cargo built it for the tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_citadel");
/// Bound on one command a test runs to its end.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the real binary (`citadel --etcd ENDPOINT ARGS…`, no standard input) to its end;
/// returns its exit code and its output.
pub fn cli(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("--etcd")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run citadel");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// `citadel ARGS…` with `env`, and none of the connection variables of the test's own
/// environment (nor RUST_LOG: one-shot commands then print only their error); no standard
/// input, killed if dropped.
pub fn citadel_cmd<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for var in citadel::store::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.env_remove("RUST_LOG")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs [`citadel_cmd`] to its end, bounded by [`CMD_TIMEOUT`].
pub async fn citadel<S: AsRef<OsStr> + Debug>(args: &[S], env: &[(&str, &str)]) -> Output {
    let run = citadel_cmd(args, env).output();
    timeout(CMD_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("citadel {args:?} took over {CMD_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run citadel: {e}"))
}

/// Runs `program ARGS…` in `dir` to its end, bounded by [`CMD_TIMEOUT`], whatever its exit
/// status.
pub async fn run_in(dir: &Path, program: &str, args: &[&str]) -> Output {
    let run = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    timeout(CMD_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} took over {CMD_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
}

/// [`run_in`] the root directory.
pub async fn run(program: &str, args: &[&str]) -> Output {
    run_in(Path::new("/"), program, args).await
}

/// [`run_in`], and the command must succeed.
pub async fn run_ok_in(dir: &Path, program: &str, args: &[&str]) -> Output {
    let out = run_in(dir, program, args).await;
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        text(&out.stderr)
    );
    out
}

/// `docker [-H addr] ARGS…` to its end, bounded; the system daemon when `addr` is `None`.
pub async fn docker_output(addr: Option<&str>, args: &[&str]) -> Output {
    let mut all = Vec::new();
    if let Some(addr) = addr {
        all.extend(["-H", addr]);
    }
    all.extend_from_slice(args);
    run("docker", &all).await
}

/// Like [`docker_output`], but the call must succeed; returns trimmed stdout.
pub async fn docker(addr: Option<&str>, args: &[&str]) -> String {
    let out = docker_output(addr, args).await;
    assert!(
        out.status.success(),
        "docker {args:?} on {addr:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// Seconds since the epoch, as `docker events --since` takes them.
pub fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

/// Asserts, from the daemon's own event stream since `since` (epoch seconds), that request
/// `first`'s container died before request `then`'s started.
pub async fn assert_died_before_started(addr: Option<&str>, since: u64, first: &str, then: &str) {
    let (since, until) = (since.to_string(), (epoch_secs() + 1).to_string());
    let events = docker(
        addr,
        &[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=container",
            "--format",
            "{{json .}}",
        ],
    )
    .await;
    let at = |request: &str, action: &str| -> u64 {
        events
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["Action"] == action && v["Actor"]["Attributes"]["citadel.request"] == request
            })
            .filter_map(|v| v["timeNano"].as_u64())
            .min()
            .unwrap_or_else(|| panic!("no {action} of {request} in:\n{events}"))
    };
    assert!(
        at(first, "die") <= at(then, "start"),
        "{first} was still running when {then} started:\n{events}"
    );
}

/// NCPU and MemTotal (in whole MB) as the system daemon's own CLI reports them.
pub fn docker_info() -> (f64, f64) {
    let out = std::process::Command::new("docker")
        .args(["info", "--format", "{{.NCPU}} {{.MemTotal}}"])
        .output()
        .expect("the docker CLI runs");
    assert!(out.status.success(), "docker info: {}", text(&out.stderr));
    let info = text(&out.stdout);
    let mut parts = info.split_whitespace();
    let ncpu: f64 = parts.next().and_then(|v| v.parse().ok()).expect("NCPU");
    let mem: f64 = parts.next().and_then(|v| v.parse().ok()).expect("MemTotal");
    (ncpu, (mem / (1024.0 * 1024.0)).floor())
}

/// Bytes as text (lossy UTF-8).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `body` to a request file `name` in `dir`; returns its path.
pub fn request_file(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write the request");
    path.to_string_lossy().into_owned()
}

/// One HTTP GET over a fresh connection (the replicas' status pages speak plain HTTP/1.1):
/// its status code and body, or why there is none within 10 s.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const REQUEST: Duration = Duration::from_secs(10);
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of headers in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(REQUEST, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path}: no answer within {REQUEST:?}")))
}

/// What an error line or a log must never show: Rust's Debug dumps of library errors, and
/// bollard's words for any failed connection.
pub const DUMPS: [&str; 7] = [
    "tonic::",
    "Error(",
    "Status {",
    "Os {",
    "Custom {",
    "ConnectError(",
    "hyper legacy client",
];

/// Panics, naming `what`, if `text` holds a raw error dump.
pub fn assert_no_dump(text: &str, what: &str) {
    for dump in DUMPS {
        assert!(!text.contains(dump), "{what}: a raw error dump:\n{text}");
    }
}

/// A one-shot command refused: a non-zero exit and exactly one line on stderr, which names
/// `cause` and dumps no library error. Returns that line.
pub fn assert_one_line(out: &Output, what: &str, cause: &str) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} should fail; it printed:\n{}{stderr}",
        text(&out.stdout)
    );
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected:\n{stderr}");
    assert!(
        lines[0].starts_with("citadel: error: ") && lines[0].contains(cause),
        "{what}: expected {cause:?} in:\n{stderr}"
    );
    assert_no_dump(&stderr, what);
    lines[0].to_string()
}
