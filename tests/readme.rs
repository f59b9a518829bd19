//! The documentation against the real command line, and against itself. The pages are
//! README.md, BENCHMARKS.md and every `docs/*.md`, read as they are on disk:
//!
//! - every `citadel …` line in a `sh` block parses as it stands;
//! - every `--flag` in the synopsis (the `text` block of `docs/cli.md` whose lines start with
//!   `citadel controller`, …) is a flag of the command it is written after;
//! - every relative link leads to a file of the repository (never outside it), and to a
//!   heading of that page when it names one; README links every page under `docs/`.
//!
//! A renamed flag or command, or a moved section, fails here.
//!
//! And README's walkthrough, run as written against a real etcd: every command of its `sh`
//! blocks runs (the controller in the background, as its `&` says), exits 0, and every
//! citadel command shows something.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use clap::{CommandFactory, Parser};

use citadel::cli::Cli;

mod common;

/// One page: its path from the repository's root, and its text.
struct Page {
    path: String,
    text: String,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, BENCHMARKS.md and `docs/*.md`, in that order.
fn pages() -> Vec<Page> {
    let mut paths = vec!["README.md".to_string(), "BENCHMARKS.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| {
            e.expect("a docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(root().join(&path))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            Page { path, text }
        })
        .collect()
}

/// The code blocks of `lang` in `text`, each as its lines.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let fence = line.trim_start();
        match (&mut current, fence.strip_prefix("```")) {
            (None, Some(tag)) if tag.trim() == lang => current = Some(Vec::new()),
            (Some(_), Some("")) => out.extend(current.take()),
            (Some(lines), None) => lines.push(line),
            _ => {}
        }
    }
    out
}

/// The lines of `text` outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
        } else if !inside {
            out.push(line);
        }
    }
    out
}

/// A block's lines with `\` continuations joined and ` # comments` dropped.
fn commands(block: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block {
        let line = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    out
}

/// The arguments after the `citadel` word of a shell line, up to a pipe, `&`, `;` or a
/// redirection; `None` when the line does not run citadel.
fn citadel_args(line: &str) -> Option<Vec<String>> {
    let words = shlex::split(line)?;
    let at = words
        .iter()
        .position(|w| !w.contains('=') && w.rsplit('/').next() == Some("citadel"))?;
    let args = words[at + 1..]
        .iter()
        .take_while(|w| !matches!(w.as_str(), "|" | "&" | "&&" | ";" | ">" | "2>&1"))
        .filter(|w| !w.starts_with('>'))
        .cloned()
        .collect();
    Some(args)
}

#[test]
fn every_citadel_command_line_in_a_sh_block_parses() {
    let mut checked: HashMap<String, usize> = HashMap::new();
    let mut failed = Vec::new();
    for page in pages() {
        for block in blocks(&page.text, "sh") {
            for line in commands(&block) {
                let Some(args) = citadel_args(&line) else {
                    continue;
                };
                *checked.entry(page.path.clone()).or_default() += 1;
                let argv = std::iter::once("citadel".to_string()).chain(args);
                if let Err(e) = Cli::try_parse_from(argv) {
                    failed.push(format!("{}: {}\n  {}", page.path, line.trim(), e.kind()));
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "command lines that do not parse:\n{}",
        failed.join("\n")
    );
    let readme = checked.get("README.md").copied().unwrap_or(0);
    assert!(
        readme >= 8,
        "only {readme} citadel command lines in README's walkthrough"
    );
    let all: usize = checked.values().sum();
    assert!(
        all >= 20,
        "only {all} citadel command lines found: {checked:?}"
    );
}

/// The long flags of `cmd`, with the global ones.
fn longs(cmd: &clap::Command, globals: &[String]) -> Vec<String> {
    let mut all: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    all.extend(globals.iter().cloned());
    all.push("--help".into());
    all
}

#[test]
fn every_flag_in_the_synopsis_exists() {
    let mut root = Cli::command();
    root.build();
    let globals = longs(&root, &[]);
    let mut checked = 0;
    let mut wrong = Vec::new();
    // The synopsis: lines that start with `citadel `, and the indented lines after each.
    let pages = pages();
    let found: Vec<(&str, Vec<&str>)> = pages
        .iter()
        .flat_map(|p| {
            blocks(&p.text, "text")
                .into_iter()
                .map(|b| (p.path.as_str(), b))
        })
        .filter(|(_, b)| b.iter().any(|l| l.starts_with("citadel controller")))
        .collect();
    let [(page, synopsis)] = found.as_slice() else {
        panic!(
            "one synopsis block expected, found {:?}",
            found.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    };
    assert_eq!(*page, "docs/cli.md", "the synopsis lives in docs/cli.md");
    let mut current: Option<(String, Vec<String>)> = None;
    for line in synopsis {
        let code = line.split(" #").next().unwrap_or_default();
        if let Some(rest) = code.strip_prefix("citadel ") {
            // The command path: words that name subcommands.
            let mut cmd = &root;
            let mut path = Vec::new();
            for word in rest.split_whitespace() {
                match cmd.find_subcommand(word) {
                    Some(sub) => {
                        cmd = sub;
                        path.push(word);
                    }
                    None => break,
                }
            }
            assert!(!path.is_empty(), "no command in: {line}");
            current = Some((path.join(" "), longs(cmd, &globals)));
        }
        let Some((name, known)) = &current else {
            continue;
        };
        for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            if word.starts_with("--") && word.len() > 2 {
                checked += 1;
                if !known.iter().any(|k| k == word) {
                    wrong.push(format!("citadel {name}: {word}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "flags in the synopsis that do not exist: {wrong:#?}"
    );
    assert!(checked >= 40, "only {checked} flags found in the synopsis");
}

/// A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' | '-' => Some('-'),
            '_' => Some('_'),
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings (a repeated heading gets `-1`, `-2`, …).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_default();
        out.push(match *n {
            0 => base.clone(),
            n => format!("{base}-{n}"),
        });
        *n += 1;
    }
    out
}

/// The targets of a line's links and images, outside inline code.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 1 {
            continue;
        }
        let mut rest = part;
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let Some(end) = tail.find(')') else { break };
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

/// `path` made plain (`a/./b/../c` is `a/c`); `None` when it climbs out of the repository.
fn normal(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[test]
fn every_link_leads_to_a_page_and_heading_of_the_repository() {
    let pages = pages();
    let by_path: HashMap<&str, &Page> = pages.iter().map(|p| (p.path.as_str(), p)).collect();
    let mut wrong = Vec::new();
    let mut from_readme = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let dir = Path::new(&page.path).parent().unwrap_or(Path::new(""));
        for line in prose(&page.text) {
            for target in link_targets(line) {
                if target.starts_with("https://") || target.starts_with("http://") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let resolved = if file.is_empty() {
                    Some(PathBuf::from(&page.path))
                } else {
                    normal(&dir.join(file))
                };
                let Some(resolved) = resolved else {
                    wrong.push(format!("{}: {target}: outside the repository", page.path));
                    continue;
                };
                let name = resolved.to_string_lossy().into_owned();
                if !root().join(&resolved).exists() {
                    wrong.push(format!("{}: {target}: no such file {name}", page.path));
                    continue;
                }
                if page.path == "README.md" {
                    from_readme.push(name.clone());
                }
                if let Some(anchor) = anchor {
                    match by_path.get(name.as_str()) {
                        Some(to) if anchors(&to.text).iter().any(|a| a == anchor) => {}
                        Some(_) => wrong.push(format!("{}: {target}: no such heading", page.path)),
                        None => wrong.push(format!("{}: {target}: not a page", page.path)),
                    }
                }
            }
        }
    }
    for page in pages.iter().filter(|p| p.path.starts_with("docs/")) {
        if !from_readme.contains(&page.path) {
            wrong.push(format!("README.md does not link {}", page.path));
        }
    }
    assert!(wrong.is_empty(), "links that lead nowhere: {wrong:#?}");
    assert!(checked >= 10, "only {checked} relative links found");
}

/// README's section `heading`, up to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &text[start + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

/// Runs `line` with bash in `dir`, `citadel` first on PATH and `CITADEL_ETCD` set, to its end
/// (killed, and panicking, after [`common::WAIT`] times three); its exit code and stdout.
/// Runs a command that follows etcd until stopped: waits (bounded) for its first line of output,
/// then sends SIGTERM and expects a clean exit. Returns what it printed.
fn run_follower(line: &str, dir: &Path, env: &[(&str, String)]) -> String {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("exec {line}"))
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(common::WAIT * 3);
    citadel_testkit::child::signal(child.id(), rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + common::WAIT * 3;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{line}: still running after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{line}: exited {status} on SIGTERM");
    let mut out = first.unwrap_or_default();
    out.extend(rx.try_iter().map(|l| format!("\n{l}")));
    out
}

fn run_line(line: &str, dir: &Path, env: &[(&str, String)]) -> (Option<i32>, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let deadline = std::time::Instant::now() + common::WAIT * 3;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running: {line}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_run_as_written_shows_something_at_every_step() {
    let etcd = common::start_etcd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = Path::new(common::BIN)
        .parent()
        .expect("the binary's directory");
    let env = [
        (
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        ("CITADEL_ETCD", etcd.endpoint()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let walkthrough = section(&readme, "## From nothing to a placed container, by hand");
    let mut background = Vec::new();
    let mut ran = 0;
    let mut silent = Vec::new();
    for block in blocks(walkthrough, "sh") {
        for line in commands(&block) {
            let line = line.trim();
            // The test's own etcd stands for step 1's, and CITADEL_ETCD is set already.
            if line.is_empty() || line.starts_with("etcd ") || line.starts_with("export ") {
                continue;
            }
            let args = citadel_args(line);
            // `events` follows etcd until Ctrl-C: it must show the recent past first, then
            // stop cleanly on SIGTERM.
            if args
                .as_ref()
                .is_some_and(|a| a.first().is_some_and(|c| c == "events"))
            {
                let shown = run_follower(line, dir.path(), &env);
                assert!(!shown.trim().is_empty(), "{line} showed nothing");
                ran += 1;
                continue;
            }
            if let Some(cmd) = line.strip_suffix('&') {
                let child = tokio::process::Command::new("bash")
                    .arg("-c")
                    .arg(format!("exec {cmd}"))
                    .current_dir(dir.path())
                    .envs(env.iter().map(|(k, v)| (*k, v)))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn");
                background.push(citadel_testkit::child::ChildProcess::new(child));
                continue;
            }
            let (code, out, err) = run_line(line, dir.path(), &env);
            assert_eq!(code, Some(0), "{line}: {out}{err}");
            ran += 1;
            if args.is_some() && out.trim().is_empty() {
                silent.push(line.to_string());
            }
        }
    }
    for mut child in background {
        assert!(
            child.is_running(),
            "a background command of the walkthrough exited"
        );
        child.stop(std::time::Duration::from_secs(10)).await;
    }
    assert!(
        silent.is_empty(),
        "walkthrough steps that show nothing: {silent:#?}"
    );
    assert!(ran >= 12, "only {ran} walkthrough commands ran");
}
