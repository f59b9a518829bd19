//! README's commands against the real command line: every `citadel …` line in a `sh` block
//! parses as it stands, and every `--flag` in the synopsis (the `text` block of "Command line")
//! is a flag of the command it is written after. A renamed flag or command fails here.

use clap::{CommandFactory, Parser};

use citadel::cli::Cli;

const README: &str = include_str!("../README.md");

/// The code blocks of `lang`, each as its lines.
fn blocks(lang: &str) -> Vec<Vec<&'static str>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in README.lines() {
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
        .position(|w| w == "citadel" || w.ends_with("release/citadel"))?;
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
    let mut checked = 0;
    let mut failed = Vec::new();
    for block in blocks("sh") {
        for line in commands(&block) {
            let Some(args) = citadel_args(&line) else {
                continue;
            };
            checked += 1;
            let argv = std::iter::once("citadel".to_string()).chain(args);
            if let Err(e) = Cli::try_parse_from(argv) {
                failed.push(format!("{}\n  {}", line.trim(), e.kind()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "README lines that do not parse:\n{}",
        failed.join("\n")
    );
    assert!(checked >= 20, "only {checked} citadel command lines found");
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
    let synopsis: Vec<&str> = blocks("text")
        .into_iter()
        .find(|b| b.iter().any(|l| l.starts_with("citadel controller")))
        .expect("the synopsis block");
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
