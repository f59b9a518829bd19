//! `citadel agent`: the engine's own agent, from its flags.

use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::agent::{self, AgentConfig};
use crate::keys::Keys;
use crate::model::{EngineId, HostVolume, LaunchPolicy};
use crate::store::EtcdConfig;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e} (e.g. 15s, 500ms, 5m)"))
}

fn host_volume(s: &str) -> Result<HostVolume, String> {
    HostVolume::parse(s)
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The engine this agent runs (default: the host name).
    #[arg(long, value_name = "ID")]
    pub engine: Option<String>,
    /// The Docker daemon to run containers on.
    #[arg(
        long,
        default_value = "unix:///var/run/docker.sock",
        value_name = "ADDR"
    )]
    pub docker: String,
    /// A label for the engine, added to the operator's and the daemon's (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Cpus offered (default: Docker's NCPU).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory offered, MB (default: Docker's MemTotal).
    #[arg(long, value_name = "MB")]
    pub memory: Option<f64>,
    /// Disk offered, MB (default: the size of Docker's data root).
    #[arg(long, value_name = "MB")]
    pub disk: Option<f64>,
    /// The lease's TTL: a silent agent's engine counts as lost after this long.
    #[arg(long, default_value = "15s", value_parser = duration, value_name = "DURATION")]
    pub ttl: Duration,
    /// Write the engine's usage at least this often, changed or not.
    #[arg(long, default_value = "5m", value_parser = duration, value_name = "DURATION")]
    pub report_every: Duration,
    /// Never two usage writes closer than this.
    #[arg(long, default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub report_min_interval: Duration,
    /// Sample Docker's usage this often.
    #[arg(long, default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub sample_every: Duration,
    /// What a stopped container gets between SIGTERM and SIGKILL.
    #[arg(long, default_value = "3s", value_parser = duration, value_name = "DURATION")]
    pub stop_grace: Duration,
    /// Cut off from etcd past TTL − stop-grace − 2s, keep services running (they may then run
    /// twice, here and where the leader places them again).
    #[arg(long)]
    pub keep_services_when_cut_off: bool,
    /// A host path containers here may bind-mount, with anything below it; `:ro` for
    /// read-only mounts only (repeatable).
    #[arg(long = "host-volume", value_parser = host_volume, value_name = "PATH[:ro]")]
    pub host_volumes: Vec<HostVolume>,
    /// Let containers use the host's network.
    #[arg(long)]
    pub allow_host_network: bool,
    /// Let containers join another container's network.
    #[arg(long)]
    pub allow_container_network: bool,
    /// Launches in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_launches: u32,
    /// The host name this agent claims (default: the machine's). Hidden: for tests that play
    /// two hosts on one machine.
    #[arg(long, hide = true, value_name = "NAME")]
    pub host: Option<String>,
}

/// The machine's host name.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".into())
}

pub(super) async fn run_agent(
    args: AgentArgs,
    keys: Keys,
    etcd: EtcdConfig,
) -> Result<(), CliError> {
    let host = args.host.unwrap_or_else(hostname);
    let engine = args.engine.unwrap_or_else(|| host.clone());
    let engine = EngineId::new(engine.clone())
        .map_err(|e| CliError::Usage(format!("--engine {engine:?}: {e}")))?;
    for (flag, v) in [
        ("--cpus", args.cpus),
        ("--memory", args.memory),
        ("--disk", args.disk),
    ] {
        if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Err(CliError::Usage(format!(
                "{flag}: expected a number above 0"
            )));
        }
    }
    for l in &args.labels {
        if l.trim().is_empty() {
            return Err(CliError::Usage("--label: empty".into()));
        }
    }
    let cfg = AgentConfig {
        engine,
        host,
        docker: args.docker,
        labels: args.labels,
        cpus: args.cpus,
        memory: args.memory,
        disk: args.disk,
        ttl: args.ttl,
        report_every: args.report_every,
        report_min_interval: args.report_min_interval,
        sample_every: args.sample_every,
        stop_grace: args.stop_grace,
        keep_services_when_cut_off: args.keep_services_when_cut_off,
        policy: LaunchPolicy {
            host_volumes: args.host_volumes,
            host_network: args.allow_host_network,
            container_network: args.allow_container_network,
        },
        max_launches: args.max_launches as usize,
        keys,
    };
    cfg.check().map_err(CliError::Usage)?;
    Ok(agent::run(cfg, etcd, crate::controller::shutdown_on_signals()).await?)
}
