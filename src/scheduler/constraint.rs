//! Label constraints, as in Docker Swarm.
//!
//! Engines carry the seed's labels, `key=value` or a bare `key`. A request's `labels` are
//! constraint expressions:
//!
//! | expression        | meaning                                                     |
//! |-------------------|-------------------------------------------------------------|
//! | `key==value`      | the engine has `key` with a matching value                 |
//! | `key!=value`      | the engine has no `key` with a matching value              |
//! | `key==~value`     | soft `==`: preferred, dropped when no engine satisfies it   |
//! | `key!=~value`     | soft `!=`                                                   |
//! | `key`             | the engine has `key`, whatever its value                   |
//!
//! A value is a literal, a glob (`us-*`, `rack-?`) or a regular expression between slashes
//! (`/^eu-(west|north)$/`). Literal and glob matching ignore ASCII case, as Swarm's does.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use regex::{Regex, RegexBuilder};

/// Compiled patterns, by source: requests repeat a few constraints thousands of times, and
/// compiling a regex costs far more than matching one. Bounded: cleared when full, so it holds
/// at most `COMPILED_MAX` patterns of at most [`REGEX_SIZE_LIMIT`] each.
static COMPILED: Mutex<Option<HashMap<String, Regex>>> = Mutex::new(None);
const COMPILED_MAX: usize = 256;

/// The most memory one compiled pattern (and its lazy DFA's cache) may take. Labels are short
/// words: `^eu-(west|north)-\d+$` takes a few KiB. A pattern near the limit compiles in about a
/// millisecond; Unicode classes repeated (`\w{3}`) exceed it and are refused at once.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// The most `/regex/` constraints one request may carry, so that compiling one request's
/// patterns costs at most a few milliseconds, whatever they are.
pub const MAX_REGEX_CONSTRAINTS: usize = 8;

fn compile(pattern: &str) -> Result<Regex, String> {
    let cached = COMPILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|c| c.get(pattern).cloned());
    if let Some(r) = cached {
        return Ok(r);
    }
    // Compiled without the lock: a slow pattern must not hold up other requests' lookups.
    let r = RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => format!(
                "compiles to more than {} KiB (Unicode classes such as \\w are large: \
                 try [a-z0-9_] or (?-u:\\w))",
                REGEX_SIZE_LIMIT / 1024
            ),
            other => regex_rule(&other.to_string()),
        })?;
    let mut cache = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
    let cache = cache.get_or_insert_with(HashMap::new);
    if cache.len() >= COMPILED_MAX {
        cache.clear();
    }
    cache.insert(pattern.to_string(), r.clone());
    Ok(r)
}

/// Why an expression cannot be parsed. The text names the rule, never the expression: it
/// goes into an `invalid` decision, and a reason must not echo what a user wrote back (the
/// caller names the entry, `labels[2]`). Only a suggestion made of plain characters quotes
/// part of it back ([`suggestion`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("no label key: write key==value, key!=value or a key alone")]
    NoKey,
    #[error("the /regular expression/ does not compile: {0}")]
    BadRegex(String),
    #[error("label keys are letters, digits and . _ - / :")]
    BadKey,
    /// `zone=a`: a single `=` is no operator. With the expression as it was meant, when that
    /// is plain enough to show.
    #[error("use ==: {}", match .0 {
        Some(meant) => format!("did you mean {meant}?"),
        None => "key==value (or != for not equal)".to_string(),
    })]
    SingleEquals(Option<String>),
    /// `zone==`: nothing to compare with.
    #[error("the value after {0} is empty: write key{0}value, or the key alone for any value")]
    EmptyValue(&'static str),
}

/// Longest suggestion a reason quotes back.
const MAX_SUGGESTION_BYTES: usize = 64;

/// `key==value`, as `key=value` was probably meant, if every character is plain (a label key,
/// and a value of letters, digits and `. _ - : / * ? ~`) and it is short: only then may an
/// `invalid` reason show it.
fn suggestion(key: &str, value: &str) -> Option<String> {
    let plain = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '*' | '?' | '~')
    };
    let meant = format!("{key}=={value}");
    (valid_key(key)
        && !value.trim_start_matches('~').is_empty()
        && value.chars().all(plain)
        && meant.len() <= MAX_SUGGESTION_BYTES)
        .then_some(meant)
}

/// What the `regex` crate says is wrong with a pattern, without the pattern: the last line of
/// its message (`error: unclosed group`) quotes none of it.
fn regex_rule(message: &str) -> String {
    message
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .filter(|rule| !rule.is_empty())
        .unwrap_or("not a regular expression")
        .to_string()
}

/// An expression that parses but is probably not what was meant: `region==eu-*,disk==ssd`
/// compares `region` with the value `eu-*,disk==ssd`, as a comma does not join constraints.
/// The leader accepts it (a label value may hold `,` and `==`: an engine's label splits at its
/// first `=`), so it is a warning for `submit` and `plan` to print, not an error.
pub fn warning(expr: &str) -> Option<&'static str> {
    let (_, op, _, value) = split(expr.trim());
    let value = value.trim();
    if op == Op::Exists || is_regex_value(value) {
        return None;
    }
    let joins = value.split(',').skip(1).any(|part| {
        let (key, op, _, _) = split(part.trim());
        op != Op::Exists && valid_key(key.trim())
    });
    joins.then_some(
        "a comma does not join constraints, it is taken as part of the value: \
         write one entry per constraint, e.g. [\"region==eu-*\", \"disk==ssd\"]",
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Exists,
}

#[derive(Debug, Clone)]
enum Matcher {
    Any,
    Literal(String),
    Glob(Regex),
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Matcher::Any, _) => true,
            (_, None) => false,
            (Matcher::Literal(l), Some(v)) => l.eq_ignore_ascii_case(v),
            (Matcher::Glob(r) | Matcher::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

/// One parsed constraint expression.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub key: String,
    /// [`key_hash`] of `key`: labels are found by it, so matching compares integers first.
    key_hash: u64,
    pub op: Op,
    pub soft: bool,
    matcher: Matcher,
    /// The expression as written, for reasons shown to people.
    pub expr: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'))
}

/// `key`, the operator, whether it is soft, and the value, of an expression (untrimmed parts).
fn split(text: &str) -> (&str, Op, bool, &str) {
    if let Some((k, v)) = text.split_once("==") {
        match v.strip_prefix('~') {
            Some(v) => (k, Op::Eq, true, v),
            None => (k, Op::Eq, false, v),
        }
    } else if let Some((k, v)) = text.split_once("!=") {
        match v.strip_prefix('~') {
            Some(v) => (k, Op::Ne, true, v),
            None => (k, Op::Ne, false, v),
        }
    } else {
        (text, Op::Exists, false, "")
    }
}

fn is_regex_value(value: &str) -> bool {
    value.len() >= 2 && value.starts_with('/') && value.ends_with('/')
}

/// Whether an expression's value is a `/regex/`, told without compiling it.
pub fn names_regex(expr: &str) -> bool {
    let (_, op, _, value) = split(expr.trim());
    op != Op::Exists && is_regex_value(value.trim())
}

impl Constraint {
    pub fn parse(expr: &str) -> Result<Self, ConstraintError> {
        let text = expr.trim();
        let (key, op, soft, value) = split(text);
        let key = key.trim();
        if op == Op::Exists
            && let Some((k, v)) = key.split_once('=')
        {
            return Err(ConstraintError::SingleEquals(suggestion(
                k.trim(),
                v.trim(),
            )));
        }
        if key.is_empty() {
            return Err(ConstraintError::NoKey);
        }
        if !valid_key(key) {
            return Err(ConstraintError::BadKey);
        }
        // Swarm's name for the implicit label every engine carries with its id.
        let key = if key == "node" { "engine" } else { key };
        let value = value.trim();
        if op != Op::Exists && value.is_empty() {
            return Err(ConstraintError::EmptyValue(match (op, soft) {
                (Op::Eq, false) => "==",
                (Op::Eq, true) => "==~",
                (_, false) => "!=",
                (_, true) => "!=~",
            }));
        }
        let bad = ConstraintError::BadRegex;
        let matcher = if op == Op::Exists {
            Matcher::Any
        } else if is_regex_value(value) {
            Matcher::Regex(compile(&value[1..value.len() - 1]).map_err(bad)?)
        } else if value.contains(['*', '?']) {
            let mut pattern = String::from("(?i)^");
            for c in value.chars() {
                match c {
                    '*' => pattern.push_str(".*"),
                    '?' => pattern.push('.'),
                    c => pattern.push_str(&regex::escape(&c.to_string())),
                }
            }
            pattern.push('$');
            Matcher::Glob(compile(&pattern).map_err(bad)?)
        } else {
            Matcher::Literal(value.to_string())
        };
        Ok(Constraint {
            key_hash: key_hash(key),
            key: key.to_string(),
            op,
            soft,
            matcher,
            expr: text.to_string(),
        })
    }

    /// Whether an engine with these labels satisfies the constraint.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_values(labels.values(self.key_hash, &self.key))
    }

    /// Whether the values an engine has for the key (`None` for a bare key) satisfy it.
    pub fn matches_values<'a>(&self, values: impl Iterator<Item = Option<&'a str>>) -> bool {
        let mut values = values.peekable();
        match self.op {
            Op::Exists => values.peek().is_some(),
            Op::Eq => values.any(|v| self.matcher.matches(v)),
            Op::Ne => !values.any(|v| self.matcher.matches(v)),
        }
    }
}

/// FNV-1a of a label key: stable, and cheap for the short keys labels have.
fn key_hash(key: &str) -> u64 {
    crate::model::fnv1a(key)
}

/// An engine's labels, parsed once: `key=value` or a bare `key` (no value), sorted by the
/// key's hash so that a constraint finds its key comparing integers, not strings (label lookups
/// were the controller's biggest cost).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Vec<(u64, String, Option<String>)>);

impl Labels {
    pub fn parse<S: AsRef<str>>(labels: &[S]) -> Self {
        let mut parsed: Vec<(u64, String, Option<String>)> = labels
            .iter()
            .map(|l| {
                let (k, v) = match l.as_ref().split_once('=') {
                    Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                    None => (l.as_ref().trim().to_string(), None),
                };
                (key_hash(&k), k, v)
            })
            .collect();
        parsed.sort();
        Labels(parsed)
    }

    /// The value of `key`, if the engine has one: the first in sorted order when it has
    /// several, `None` for a bare key or no such key. What a group's spread domain is.
    pub fn value<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.values(key_hash(key), key).flatten().next()
    }

    /// Every value of `key` (`None` for a bare key); empty when the engine has no such key.
    /// A binary search on the hash and a short scan, with no allocation.
    fn values<'a>(&'a self, hash: u64, key: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        let start = self.0.partition_point(|(h, _, _)| *h < hash);
        self.0[start..]
            .iter()
            .take_while(move |(h, _, _)| *h == hash)
            .filter(move |(_, k, _)| k == key)
            .map(|(_, _, v)| v.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(expr: &str, labels: &[&str]) -> bool {
        Constraint::parse(expr)
            .unwrap()
            .matches(&Labels::parse(labels))
    }

    #[test]
    fn equality_inequality_and_presence() {
        assert!(fits("zone==a", &["zone=a", "ssd"]));
        assert!(!fits("zone==a", &["zone=b"]));
        assert!(!fits("zone==a", &["ssd"]));
        assert!(fits("zone!=a", &["zone=b"]));
        assert!(
            fits("zone!=a", &["ssd"]),
            "an engine without the key is not zone a"
        );
        assert!(!fits("zone!=a", &["zone=a"]));
        assert!(fits("ssd", &["ssd"]));
        assert!(fits("zone", &["zone=a"]));
        assert!(!fits("gpu", &["ssd"]));
    }

    #[test]
    fn globs_and_regexes() {
        assert!(fits("region==us-*", &["region=us-east"]));
        assert!(!fits("region==us-*", &["region=eu-west"]));
        assert!(fits("rack==r?", &["rack=r7"]));
        assert!(!fits("rack==r?", &["rack=r17"]));
        assert!(fits("region==/^eu-(west|north)$/", &["region=eu-north"]));
        assert!(!fits("region==/^eu-(west|north)$/", &["region=eu-south"]));
        assert!(fits("region!=/^eu/", &["region=us-east"]));
        assert!(
            fits("zone==A", &["zone=a"]),
            "literal matching ignores case"
        );
        assert!(fits("name==a.b", &["name=a.b"]));
        assert!(
            !fits("name==a.b*", &["name=axb"]),
            "glob escapes regex metacharacters"
        );
    }

    #[test]
    fn a_value_is_the_first_of_its_key_never_a_bare_one() {
        // (labels, the value of zone)
        let cases: [(&[&str], Option<&str>); 5] = [
            (&["zone=a", "ssd"], Some("a")),
            (&["ssd"], None),
            (&["zone"], None),
            (&["zone", "zone=b"], Some("b")),
            (&["zone=c", "zone=b"], Some("b")),
        ];
        for (labels, want) in cases {
            assert_eq!(Labels::parse(labels).value("zone"), want, "{labels:?}");
        }
    }

    #[test]
    fn soft_forms_are_parsed() {
        let c = Constraint::parse("zone==~a").unwrap();
        assert!(c.soft && c.op == Op::Eq);
        let c = Constraint::parse("zone!=~a").unwrap();
        assert!(c.soft && c.op == Op::Ne);
        assert!(!Constraint::parse("zone==a").unwrap().soft);
    }

    #[test]
    fn bad_constraints_are_errors_that_name_the_rule_not_the_expression() {
        // (expression, the error's text)
        let cases = [
            (
                "==a",
                "no label key: write key==value, key!=value or a key alone",
            ),
            (
                "",
                "no label key: write key==value, key!=value or a key alone",
            ),
            ("zone=a", "use ==: did you mean zone==a?"),
            (" zone = a ", "use ==: did you mean zone==a?"),
            ("zone=~a", "use ==: did you mean zone==~a?"),
            ("region=eu-*", "use ==: did you mean region==eu-*?"),
            ("zone=", "use ==: key==value (or != for not equal)"),
            ("zone=<b>x</b>", "use ==: key==value (or != for not equal)"),
            ("zone=a=b", "use ==: key==value (or != for not equal)"),
            (
                "zone==",
                "the value after == is empty: write key==value, or the key alone for any value",
            ),
            (
                "zone!= ",
                "the value after != is empty: write key!=value, or the key alone for any value",
            ),
            (
                "zone==~",
                "the value after ==~ is empty: write key==~value, or the key alone for any value",
            ),
            ("zo ne==a", "label keys are letters, digits and . _ - / :"),
            (
                "zone==/(/",
                "the /regular expression/ does not compile: unclosed group",
            ),
        ];
        for (expr, want) in cases {
            let err = Constraint::parse(expr).unwrap_err();
            assert_eq!(err.to_string(), want, "{expr:?}");
        }
        let long = format!("zone={}", "a".repeat(MAX_SUGGESTION_BYTES));
        assert_eq!(
            Constraint::parse(&long).unwrap_err(),
            ConstraintError::SingleEquals(None),
            "a long value is not quoted back"
        );
        // A regex error quotes its pattern; the reason must not.
        let err = Constraint::parse("zone==/secret(/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn a_comma_followed_by_another_comparison_is_warned_about() {
        // (expression, warned)
        let cases = [
            ("region==eu-*,disk==ssd", true),
            ("region==eu-*, disk!=hdd", true),
            ("zone!=~a,b!=c", true),
            ("region==eu-*,us-*", false),
            ("region==eu-*", false),
            ("tags==a,b", false),
            ("region==/eu,disk==ssd/", false),
            ("gpu", false),
        ];
        for (expr, warned) in cases {
            assert!(
                Constraint::parse(expr).is_ok(),
                "{expr}: the leader accepts it"
            );
            assert_eq!(warning(expr).is_some(), warned, "{expr}");
        }
    }
}
