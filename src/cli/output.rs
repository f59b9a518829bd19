//! How the command line prints: `-o table|wide|json`, tables sized to the terminal (comfy-table),
//! ages instead of absolute times, and stdout writes that end the process quietly when the
//! reader goes away (`citadel ls | head -1`).
//!
//! Every line a command prints for a person goes through [`write_line`] (or the `outln!`
//! macro): never `println!`, which panics on a closed pipe.

use std::io::Write;
use std::time::SystemTime;

use clap::Args;
use comfy_table::{ContentArrangement, Row, Table, presets};
use serde::Serialize;

use super::CliError;

/// What a read command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A table that fits the terminal: long ids truncated, ages instead of times.
    #[default]
    Table,
    /// The table with more columns (addresses, labels, …) and ids in full.
    Wide,
    /// One JSON document on stdout (a stream of one object per line for `events`), nothing else.
    Json,
}

/// What a command that prints one report prints: `-o table|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportFormat {
    #[default]
    Table,
    Json,
}

/// `-o table|wide|json`, shared by every read command.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Output format: table, wide (more columns) or json (JSON alone on stdout).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, value_name = "FORMAT")]
    pub output: Format,
}

impl OutputArgs {
    pub fn json(self) -> bool {
        self.output == Format::Json
    }

    pub fn wide(self) -> bool {
        self.output == Format::Wide
    }
}

/// `-o table|json` of a command that changes something (`engine add`, `release`, …).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct DoneArgs {
    /// Output format: table (a sentence) or json (one object: what, id, action, message).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ReportFormat::Table, value_name = "FORMAT")]
    pub output: ReportFormat,
}

/// What a command that changes something did, as `-o json` prints it.
#[derive(Debug, Serialize)]
pub struct Done<'a> {
    /// `engine`, `request` or `volume`.
    pub what: &'a str,
    pub id: &'a str,
    /// `registered`, `replaced`, `removed`, `cordoned`, `released`, …
    pub action: &'a str,
    /// The sentence the table format prints.
    pub message: String,
}

impl DoneArgs {
    /// Prints `done`: its sentence, or the object with `-o json`.
    pub fn print(self, done: &Done<'_>) -> Result<(), CliError> {
        match self.output {
            ReportFormat::Json => json(done),
            ReportFormat::Table => {
                write_line(&done.message);
                Ok(())
            }
        }
    }
}

/// Prints `$fmt…` and a newline on stdout through [`write_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(&format!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes `text` and a newline to stdout, and flushes. A reader that went away (a closed pipe)
/// ends the process with exit 0, as `head` expects; any other failure to write ends it with 1.
pub fn write_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // stderr may be gone too: nothing more to say then.
        let _ = writeln!(std::io::stderr(), "citadel: error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Prints `value` as pretty JSON, alone.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Usage(e.to_string()))?;
    write_line(&text);
    Ok(())
}

/// Prints `value` as one JSON line (for streams).
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string(value).map_err(|e| CliError::Usage(e.to_string()))?;
    write_line(&text);
    Ok(())
}

/// Ids longer than this are cut in a table (`wide` shows them whole).
pub const ID_WIDTH: usize = 36;

/// A borderless table with `header`, as `docker ps` prints: columns shrink to the terminal's
/// width (when stdout is one) and a row never wraps; cut cells end with `…`.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_truncation_indicator("…")
        .set_header(header.iter().copied());
    // Flush left, two blanks between columns.
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t
}

/// Adds a row that never wraps.
pub fn add_row<I, C>(t: &mut Table, cells: I)
where
    I: IntoIterator<Item = C>,
    C: Into<comfy_table::Cell>,
{
    let mut row = Row::from(cells);
    row.max_height(1);
    t.add_row(row);
}

/// Prints a table, without the padding comfy-table leaves at each line's end.
pub fn print_table(t: &Table) {
    let text: Vec<String> = t
        .lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    write_line(&text.join("\n"));
}

/// `id`, cut to [`ID_WIDTH`] characters (ending in `…`) unless `wide`. An id with a control
/// character or whitespace (a key written by hand: never scheduled) is shown quoted and
/// escaped, so it cannot break the table or the terminal.
pub fn id_cell(id: &str, wide: bool) -> String {
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return format!("{id:?}");
    }
    if wide || id.chars().count() <= ID_WIDTH {
        return id.to_string();
    }
    let mut s: String = id.chars().take(ID_WIDTH - 1).collect();
    s.push('…');
    s
}

/// How long ago an RFC 3339 time was, as a person reads it: `3s ago`, `5m ago`, `2h ago`,
/// `4d ago`; `-` when it is empty or unreadable, `now` when it is in the future.
pub fn age(rfc3339: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "-".to_string();
    };
    let Ok(d) = now.duration_since(then) else {
        return "now".to_string();
    };
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Labels as one cell: `zone=a,ssd`, or `-`.
pub fn labels_cell(labels: &[String]) -> String {
    if labels.is_empty() {
        "-".to_string()
    } else {
        labels.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_read_as_a_person_says_them() {
        let then = humantime::parse_rfc3339("2026-11-28T00:00:00Z").unwrap();
        let at = |s: u64| age("2026-11-28T00:00:00Z", then + Duration::from_secs(s));
        assert_eq!(at(3), "3s ago");
        assert_eq!(at(125), "2m ago");
        assert_eq!(at(7200), "2h ago");
        assert_eq!(at(3 * 86_400 + 5), "3d ago");
        assert_eq!(age("", then), "-");
        assert_eq!(age("yesterday", then), "-");
        assert_eq!(age("2026-11-28T00:00:09.5Z", then), "now");
    }

    #[test]
    fn long_ids_are_cut_unless_wide() {
        let long = "x".repeat(60);
        let cut = id_cell(&long, false);
        assert_eq!(cut.chars().count(), ID_WIDTH);
        assert!(cut.ends_with('…'));
        assert_eq!(id_cell(&long, true), long);
        assert_eq!(id_cell("web-1", false), "web-1");
        assert_eq!(id_cell("e\u{0}1\n", false), r#""e\01\n""#);
    }

    #[test]
    fn a_table_has_no_borders_and_no_trailing_blanks() {
        let mut t = table(&["A", "B"]);
        t.force_no_tty();
        add_row(&mut t, ["one", "1"]);
        let lines: Vec<String> = t.lines().map(|l| l.trim_end().to_string()).collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["one", "1"]
        );
    }
}
