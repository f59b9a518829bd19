//! The `citadel` command line: one file per command group.
//!
//! `mod.rs` holds the global flags, the commands, the one-line errors with their exit codes,
//! and the dispatch; the groups are `controller` (a replica), `engine` (add, rm), `engine_ls`
//! (`ls`, `engine ls`, `engine show`), `maintenance` (engine cordon, uncordon, drain), `volume`
//! (ls, rm), `request` (submit, status, release, profile), `replicas` (`submit --replicas`),
//! `requests` (ls, show, rm), `leader`, `events`, `plan` (a dry run of the scheduler), `check` and
//! `completions` (shell completions with ids from etcd, the man page). `output` is how they all print (`-o table|wide|json`, tables, a closed pipe), and
//! `follow` how the commands that keep running watch etcd and stop.
//!
//! It is the only module that prints for a person and exits; nothing else in the library calls
//! into it (`rbac` is handed its printer). It writes to etcd only what a command is for.

mod agent;
mod check;
mod completions;
mod controller;
mod engine;
mod engine_ls;
mod events;
mod follow;
mod leader;
mod maintenance;
pub(crate) mod output;
mod plan;
mod replicas;
mod request;
mod requests;
mod volume;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::keys::Keys;
use crate::model::{EngineId, RequestId};
use crate::store::{self, CALL_TIMEOUT, EtcdConfig, StoreError, TlsConfig};
pub use agent::AgentArgs;
pub use check::CheckArgs;
pub use controller::ControllerArgs;
pub use engine::{EngineAddArgs, EngineCommand};
pub use events::EventsArgs;
pub use output::{Format, OutputArgs};
pub use plan::PlanArgs;
pub use request::{StatusArgs, SubmitArgs, WaitFor};
pub use requests::{RequestsCommand, RequestsLsArgs};

#[derive(Debug, Parser)]
#[command(
    name = "citadel",
    version,
    about = "A Docker container scheduler whose registry is etcd",
    after_help = request::EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the process's command line, or exits as clap does (help, version, usage errors with
/// code 2), with one change: a usage error's `Usage:` line is the command's own, naming what it
/// requires, where clap's would also repeat every flag given, as if it were required.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => own_usage(e, &args).exit(),
    }
}

/// `e` with the usage of the (sub)command that `args` name.
fn own_usage(mut e: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    if e.get(ContextKind::Usage).is_none() {
        return e;
    }
    let mut cmd = Cli::command();
    cmd.build();
    // Each word that names a subcommand of the one reached so far goes one level down.
    for word in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if word == "--" {
            break;
        }
        if let Some(sub) = cmd.find_subcommand(word).cloned() {
            cmd = sub;
        }
    }
    e.insert(
        ContextKind::Usage,
        ContextValue::StyledStr(cmd.render_usage()),
    );
    e
}

/// The help heading of the global flags.
pub const GLOBAL_HEADING: &str = "Global options (etcd, prefix, logs)";

/// `--log-format text|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The flags every command takes (how to reach etcd, the prefix, the log format), listed apart
/// from each command's own in its help.
#[derive(Debug, Args)]
#[command(next_help_heading = GLOBAL_HEADING)]
pub struct Global {
    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379; `bench` starts its own].
    #[arg(
        long,
        global = true,
        env = "CITADEL_ETCD",
        value_delimiter = ',',
        value_name = "URL[,URL…]"
    )]
    pub etcd: Option<Vec<String>>,
    /// Key prefix everything lives under.
    #[arg(
        long,
        global = true,
        env = "CITADEL_PREFIX",
        default_value = "/citadel",
        value_name = "PREFIX"
    )]
    pub prefix: String,
    /// Log format of long-running commands.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// The CA bundle etcd's server certificate must chain to, for https:// endpoints (else
    /// the system's bundle) [also read from ETCDCTL_CACERT].
    #[arg(long, global = true, env = "CITADEL_ETCD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// A client certificate, for an etcd that asks for one (`--client-cert-auth`; its CN is
    /// then the etcd user) [also read from ETCDCTL_CERT].
    #[arg(long, global = true, env = "CITADEL_ETCD_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key [also read from ETCDCTL_KEY].
    #[arg(long, global = true, env = "CITADEL_ETCD_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The etcd user, as NAME or NAME:PASSWORD (as etcdctl's --user) [also read from
    /// ETCDCTL_USER].
    #[arg(
        long,
        global = true,
        env = "CITADEL_ETCD_USER",
        hide_env_values = true,
        value_name = "NAME[:PASSWORD]"
    )]
    pub user: Option<String>,
    /// The etcd user's password; --user is then the name as given [also read from
    /// ETCDCTL_PASSWORD]. Prefer the environment: arguments show in `ps`.
    #[arg(
        long,
        global = true,
        env = "CITADEL_ETCD_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
}

impl Global {
    /// The connection settings every command uses, from the flags, citadel's variables, and
    /// then etcdctl's.
    pub fn etcd_config(&self) -> Result<EtcdConfig, CliError> {
        self.etcd_config_with(|var| std::env::var(var).ok())
    }

    /// As [`Self::etcd_config`], with etcdctl's variables looked up by `env`. They count when
    /// citadel's own flag and variable are not set, so that one environment serves both
    /// tools; empty counts as unset, as clap does for citadel's variables.
    pub fn etcd_config_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EtcdConfig, CliError> {
        let etcdctl_env = |var: &str| env(var).filter(|v| !v.is_empty());
        let path = |flag: &Option<PathBuf>, var: &str| {
            flag.clone().or_else(|| etcdctl_env(var).map(PathBuf::from))
        };
        let cacert = path(&self.cacert, "ETCDCTL_CACERT");
        let identity = match (
            path(&self.cert, "ETCDCTL_CERT"),
            path(&self.key, "ETCDCTL_KEY"),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(CliError::Usage(format!(
                    "--cert {} needs its --key",
                    cert.display()
                )));
            }
            (None, Some(key)) => {
                return Err(CliError::Usage(format!(
                    "--key {} needs its --cert",
                    key.display()
                )));
            }
        };
        let tls =
            (cacert.is_some() || identity.is_some()).then_some(TlsConfig { cacert, identity });
        let endpoints = self.etcd.clone().unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            vec![format!("{scheme}://127.0.0.1:2379")]
        });
        let user = self.user.clone().or_else(|| etcdctl_env("ETCDCTL_USER"));
        // etcdctl's rules: with a password given apart, --user is the name as it stands;
        // without one, --user is NAME:PASSWORD. etcdctl's variable comes last of all: a
        // password written into --user is citadel's own setting. A password without a user
        // is ignored.
        let auth = match (user, self.password.clone()) {
            (None, _) => None,
            (Some(name), Some(password)) => Some((name, password)),
            (Some(user), None) => match (user.split_once(':'), etcdctl_env("ETCDCTL_PASSWORD")) {
                (Some((name, password)), _) => Some((name.to_string(), password.to_string())),
                (None, Some(password)) => Some((user, password)),
                (None, None) => {
                    return Err(CliError::Usage(format!(
                        "--user {user}: no password; give --user {user}:PASSWORD, --password or \
                         CITADEL_ETCD_PASSWORD (a client certificate needs no --user)"
                    )));
                }
            },
        };
        let mut cfg = EtcdConfig::new(endpoints);
        cfg.tls = tls;
        if let Some((name, password)) = auth {
            cfg = cfg.with_auth(name, password);
        }
        cfg.check()?;
        Ok(cfg)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a controller replica (leader election, scheduling, commits).
    Controller(ControllerArgs),
    /// Run an engine's agent on its host: registers the engine from Docker, keeps it alive on
    /// a lease, runs what the leader assigns it and reports back.
    Agent(AgentArgs),
    /// Register, list and remove Docker engines.
    #[command(subcommand)]
    Engine(EngineCommand),
    /// Submit a request (a JSON file, or - for standard input).
    #[command(after_help = request::EXIT_CODES_HELP)]
    Submit(SubmitArgs),
    /// Show the decision for a request.
    Status(StatusArgs),
    /// Who leads, the cluster's totals (the seed's ClusterInfo) and a table of engines.
    Ls(OutputArgs),
    /// Release a request: deletes it; the leader frees its reservation and removes its decision.
    Release {
        /// The request's id.
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        output: output::DoneArgs,
    },
    /// Learned usage per image: requested against observed p50/p95 cpu and memory (recorded
    /// by a leader running with --docker).
    Profile {
        /// One image (default: every image observed).
        #[arg(value_name = "IMAGE")]
        image: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Find requests by where they stand (unschedulable, failed, …), with their reasons.
    #[command(subcommand)]
    Requests(RequestsCommand),
    /// Who leads: the candidate with the lowest create revision under the leader prefix, its
    /// lease, since when it leads, and the other candidates.
    Leader(OutputArgs),
    /// A stream of decisions, engine and health changes as they happen (an etcd watch), one
    /// line each, or one JSON object each with -o json. Stops on Ctrl-C, SIGTERM or a closed
    /// pipe.
    Events(EventsArgs),
    /// A dry run: where a request would go now, and why each engine would be ruled out or
    /// how it scores. Reads etcd once and writes nothing.
    Plan(PlanArgs),
    /// Shell completions on stdout: `citadel completions bash > /etc/bash_completion.d/citadel`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on stdout: `citadel man | man -l -`.
    Man,
    /// The ids shell completion offers, one a line (called by the completion scripts).
    #[command(name = "__complete", hide = true)]
    Complete {
        /// What to list.
        #[arg(value_enum)]
        kind: completions::IdKind,
    },
    /// Named volumes: where each lives (ls), and forgetting one (rm).
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Measure placements/s and latency against etcd's own put rate (starts its own etcd
    /// unless --etcd is given; then it works under a fresh prefix and removes it after).
    Bench(crate::bench::BenchArgs),
    /// Check the invariants on etcd's contents: no engine over capacity, no host port bound
    /// twice, one current decision per request, none without its request, no placement on a
    /// missing engine. Exits 1 if anything is found.
    Check(CheckArgs),
    /// Least-privilege etcd roles and users for citadel under --prefix: prints the etcdctl
    /// commands, or creates them with --apply (as an etcd admin, given by the global flags).
    Rbac(crate::rbac::RbacArgs),
}

/// A CLI failure: printed as one line, exit code 1 (`submit --wait` has codes of its own, see
/// [`request::EXIT_CODES_HELP`]; clap's usage errors exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("etcd: {}", store::short(.0))]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Rbac(#[from] crate::rbac::RbacError),
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error("{0}")]
    Usage(String),
    /// `submit --wait` ended otherwise than asked: the exit code says how.
    #[error("{message}")]
    Decided { code: i32, message: String },
    #[error("check: {0} finding(s)")]
    Findings(usize),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Decided { code, .. } => *code,
            _ => 1,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    // Neither needs etcd, nor its settings.
    match cli.command {
        Command::Completions { shell } => return completions::completions(shell),
        Command::Man => return completions::man(),
        _ => {}
    }
    let keys = Keys::new(&cli.global.prefix).map_err(|e| CliError::Usage(e.to_string()))?;
    let bench_own_etcd = cli.global.etcd.is_none();
    // Built once, here, and handed to everything that connects.
    let etcd = match (&cli.command, bench_own_etcd) {
        // The bench's own etcd is plain and local: settings meant for another etcd (say,
        // etcdctl's variables) do not apply to it.
        (Command::Bench(_), true) => EtcdConfig::default(),
        _ => cli.global.etcd_config()?,
    };
    match cli.command {
        Command::Controller(args) => controller::run_controller(args, keys, etcd).await,
        Command::Agent(args) => agent::run_agent(args, keys, etcd).await,
        Command::Rbac(args) => crate::rbac::run(args, &keys, &etcd, output::write_line)
            .await
            .map_err(Into::into),
        Command::Bench(args) => bench(args, bench_own_etcd, etcd).await,
        Command::Complete { kind } => completions::ids(&etcd, &keys, kind).await,
        command => {
            let client = store::connect(&etcd, Some(Duration::from_secs(5))).await?;
            one_shot(&client, &keys, command).await
        }
    }
}

async fn bench(
    args: crate::bench::BenchArgs,
    own_etcd: bool,
    etcd: EtcdConfig,
) -> Result<(), CliError> {
    let json = args.json();
    if args.quality {
        let rows = crate::bench::quality::measure_all(args.seed);
        if json {
            output::json_line(&rows)?;
        } else {
            output::write_line(crate::bench::quality::table(&rows).trim_end());
        }
        return Ok(());
    }
    let result = crate::bench::run(args, (!own_etcd).then_some(etcd))
        .await
        .map_err(|e| CliError::Usage(format!("bench: {e}")))?;
    output::write_line(&crate::bench::render_table(&result));
    if json {
        output::json_line(&result)?;
    }
    let violations = result.violations();
    if violations > 0 {
        return Err(CliError::Usage(format!(
            "bench: {violations} invariant violation(s)"
        )));
    }
    Ok(())
}

/// The commands that connect, do one thing (or follow etcd until stopped), and exit.
async fn one_shot(
    client: &etcd_client::Client,
    keys: &Keys,
    command: Command,
) -> Result<(), CliError> {
    match command {
        Command::Engine(EngineCommand::Add(a)) => engine::engine_add(client, keys, a).await,
        Command::Engine(EngineCommand::Ls(o)) => engine_ls::ls(client, keys, false, o).await,
        Command::Ls(o) => engine_ls::ls(client, keys, true, o).await,
        Command::Engine(EngineCommand::Show { id, output }) => {
            engine_ls::engine_show(client, keys, &id, output).await
        }
        Command::Engine(EngineCommand::Rm { id, force, output }) => {
            engine::engine_rm(client, keys, &id, force, output).await
        }
        Command::Engine(EngineCommand::Cordon { id, output }) => {
            maintenance::set(client, keys, &id, maintenance::Maintenance::Cordon, output).await
        }
        Command::Engine(EngineCommand::Uncordon { id, output }) => {
            maintenance::set(
                client,
                keys,
                &id,
                maintenance::Maintenance::Uncordon,
                output,
            )
            .await
        }
        Command::Engine(EngineCommand::Drain { id, output }) => {
            maintenance::set(client, keys, &id, maintenance::Maintenance::Drain, output).await
        }
        Command::Volume(cmd) => volume::run(client, keys, cmd).await,
        Command::Submit(a) => request::submit(client, keys, a).await,
        Command::Status(a) => request::status(client, keys, a).await,
        Command::Release { id, output } => request::release(client, keys, &id, output).await,
        Command::Check(a) => check::check(client, keys, a).await,
        Command::Profile { image, output } => {
            request::profile(client, keys, image.as_deref(), output).await
        }
        Command::Requests(RequestsCommand::Ls(a)) => requests::ls(client, keys, a).await,
        Command::Requests(RequestsCommand::Show(a)) => requests::show(client, keys, a).await,
        Command::Requests(RequestsCommand::Rm(a)) => requests::rm(client, keys, a).await,
        Command::Leader(o) => leader::leader(client, keys, o).await,
        Command::Events(a) => events::events(client, keys, a).await,
        Command::Plan(a) => plan::plan(client, keys, a).await,
        Command::Controller(_)
        | Command::Agent(_)
        | Command::Bench(_)
        | Command::Rbac(_)
        | Command::Completions { .. }
        | Command::Complete { .. }
        | Command::Man => Err(CliError::Usage("not a one-shot command".into())),
    }
}

fn engine_id(id: &str) -> Result<EngineId, CliError> {
    EngineId::new(id).map_err(|e| CliError::Usage(format!("engine id: {e}")))
}

fn request_id(id: &str) -> Result<RequestId, CliError> {
    RequestId::new(id).map_err(|e| CliError::Usage(format!("request id: {e}")))
}

/// `text` on one line: a reason may quote a multi-line message (a regex's), and an error is
/// one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn trim(v: f64) -> String {
    let v = if v.abs() < 0.0005 { 0.0 } else { v };
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

async fn timed<T>(fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, CliError> {
    Ok(tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))??)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Credentials;

    /// The connection settings of a command line, with `env` as etcdctl's variables.
    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<EtcdConfig, CliError> {
        let mut argv = vec!["citadel"];
        argv.extend_from_slice(args);
        argv.push("ls");
        let cli = Cli::try_parse_from(argv).expect("parses");
        cli.global.etcd_config_with(|var| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        })
    }

    fn creds(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials {
            user: user.into(),
            password: password.into(),
        })
    }

    /// Every flag with a fixed set of values is an enum clap parses: a wrong value is refused
    /// before anything runs, with the values it takes.
    #[test]
    fn flags_with_fixed_values_refuse_others_and_list_them() {
        let refused = |argv: &[&str]| {
            let e = Cli::try_parse_from(argv).expect_err("a wrong value");
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{e}");
            e.to_string()
        };
        let e = refused(&["citadel", "leader", "-o", "yaml"]);
        assert!(e.contains("[possible values: table, wide, json]"), "{e}");
        let e = refused(&["citadel", "check", "-o", "wide"]);
        assert!(e.contains("[possible values: table, json]"), "{e}");
        let e = refused(&["citadel", "--log-format", "xml", "ls"]);
        assert!(e.contains("[possible values: text, json]"), "{e}");
        let e = refused(&["citadel", "submit", "r.json", "--wait=started"]);
        assert!(e.contains("[possible values: placed, running]"), "{e}");
        let e = refused(&["citadel", "requests", "ls", "--status", "placed,done"]);
        assert!(
            e.contains(
                "[possible values: queued, placed, unschedulable, preempted, invalid, pending, failed, exited, lost]"
            ),
            "{e}"
        );

        let cli = Cli::try_parse_from(["citadel", "--log-format", "json", "check", "-o", "json"])
            .expect("parses");
        assert_eq!(cli.global.log_format, LogFormat::Json);
        assert!(matches!(cli.command, Command::Check(a) if a.output == output::ReportFormat::Json));
        let cli = Cli::try_parse_from(["citadel", "requests", "ls", "--status", "queued,lost"])
            .expect("parses");
        let Command::Requests(requests::RequestsCommand::Ls(a)) = cli.command else {
            panic!("requests ls");
        };
        let names: Vec<&str> = a.status.iter().map(|s| s.0.name()).collect();
        assert_eq!(names, ["queued", "lost"]);
    }

    /// Every subcommand, with the words that reach it (`["engine", "add"]`).
    fn every_subcommand() -> Vec<(Vec<String>, clap::Command)> {
        use clap::CommandFactory;
        fn walk(path: &[String], cmd: &clap::Command, out: &mut Vec<(Vec<String>, clap::Command)>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let mut p = path.to_vec();
                p.push(sub.get_name().to_string());
                out.push((p.clone(), sub.clone()));
                walk(&p, sub, out);
            }
        }
        let mut root = Cli::command();
        root.build();
        let mut out = Vec::new();
        walk(&[], &root, &mut out);
        out
    }

    const GLOBAL_FLAGS: [&str; 8] = [
        "--etcd",
        "--prefix",
        "--log-format",
        "--cacert",
        "--cert",
        "--key",
        "--user",
        "--password",
    ];

    /// Every command's help lists its own flags first, and the global ones apart, under their
    /// own heading (etcd's `--key` next to `engine add --label` misled).
    #[test]
    fn every_help_lists_the_global_flags_under_their_own_heading() {
        let all = every_subcommand();
        assert!(all.len() > 20, "{}", all.len());
        for (path, mut cmd) in all {
            let help = cmd.render_long_help().to_string();
            let heading = format!("{GLOBAL_HEADING}:");
            let (own, global) = help
                .split_once(&heading)
                .unwrap_or_else(|| panic!("{path:?}: no {heading}\n{help}"));
            let flag_lines = |text: &str, flag: &str| {
                text.lines()
                    .filter(|l| l.trim_start().starts_with(&format!("{flag} <")))
                    .count()
            };
            for flag in GLOBAL_FLAGS {
                assert_eq!(
                    flag_lines(own, flag),
                    0,
                    "{path:?}: {flag} among its own\n{help}"
                );
                assert_eq!(flag_lines(global, flag), 1, "{path:?}: {flag}\n{help}");
            }
        }
    }

    /// A usage error names what the command requires, not every flag given as well.
    #[test]
    fn a_usage_error_shows_only_what_is_required() {
        for (path, _) in every_subcommand() {
            let mut argv: Vec<std::ffi::OsString> = vec!["citadel".into()];
            argv.extend(path.iter().map(Into::into));
            argv.extend([
                "--prefix".into(),
                "/p".into(),
                "--log-format".into(),
                "json".into(),
            ]);
            let Err(e) = Cli::try_parse_from(&argv) else {
                continue;
            };
            if e.kind() != clap::error::ErrorKind::MissingRequiredArgument {
                continue;
            }
            let text = own_usage(e, &argv).to_string();
            let usage = text
                .lines()
                .find(|l| l.starts_with("Usage:"))
                .unwrap_or_else(|| panic!("{path:?}: no usage\n{text}"));
            assert!(
                usage.starts_with(&format!("Usage: citadel {}", path.join(" "))),
                "{usage}"
            );
            assert!(
                !usage.contains("--prefix") && !usage.contains("--log-format"),
                "{path:?}: {usage}"
            );
        }
    }

    /// `--status` takes every standing a listing can print.
    #[test]
    fn status_filter_takes_every_standing() {
        use clap::ValueEnum;
        for standing in crate::cache::Standing::ORDER {
            assert!(
                requests::StandingArg::value_variants().contains(&requests::StandingArg(standing)),
                "{standing:?}"
            );
        }
    }

    #[test]
    fn user_takes_a_password_as_etcdctl_does() {
        let c = config(&["--user", "alice:s3:cret"], &[]).expect("config");
        assert_eq!(c.auth, creds("alice", "s3:cret"));
        // With --password apart, --user is the name as it stands.
        let c = config(&["--user", "a:b", "--password", "pw"], &[]).expect("config");
        assert_eq!(c.auth, creds("a:b", "pw"));
        let e = config(&["--user", "alice"], &[]).expect_err("no password");
        assert!(e.to_string().contains("--user alice: no password"), "{e}");
        // A password without a user is ignored, as etcdctl does.
        assert_eq!(
            config(&["--password", "pw"], &[]).expect("config").auth,
            None
        );
    }

    #[test]
    fn etcdctl_variables_fill_in_what_citadel_is_not_told() {
        let env = [
            ("ETCDCTL_CACERT", "/e/ca.pem"),
            ("ETCDCTL_CERT", "/e/c.pem"),
            ("ETCDCTL_KEY", "/e/k.pem"),
            ("ETCDCTL_USER", "bob"),
            ("ETCDCTL_PASSWORD", "pw"),
        ];
        let c = config(&["--etcd", "https://h:2379"], &env).expect("config");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.cacert, Some(PathBuf::from("/e/ca.pem")));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/e/c.pem"), PathBuf::from("/e/k.pem")))
        );
        assert_eq!(c.auth, creds("bob", "pw"));
        // citadel's own flags win.
        let c = config(
            &[
                "--etcd",
                "https://h:2379",
                "--cacert",
                "/c/ca.pem",
                "--user",
                "x:y",
            ],
            &env,
        )
        .expect("config");
        assert_eq!(c.tls.expect("tls").cacert, Some(PathBuf::from("/c/ca.pem")));
        assert_eq!(c.auth, creds("x", "y"));
    }

    #[test]
    fn tls_settings_pick_the_default_scheme_and_refuse_plain_endpoints() {
        let c = config(&["--cacert", "/c/ca.pem"], &[]).expect("config");
        assert_eq!(c.endpoints, ["https://127.0.0.1:2379"]);
        assert_eq!(
            config(&[], &[]).expect("config").endpoints,
            ["http://127.0.0.1:2379"]
        );
        let e = config(&["--etcd", "http://h:2379", "--cacert", "/c/ca.pem"], &[])
            .expect_err("TLS files for plain http");
        assert!(e.to_string().contains("use https://"), "{e}");
        let e = config(&["--cert", "/c/c.pem"], &[]).expect_err("a cert without its key");
        assert!(e.to_string().contains("needs its --key"), "{e}");
    }
}
