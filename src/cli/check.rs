//! `citadel check`: the invariants, read from etcd.

use std::time::Duration;

use clap::Args;
use etcd_client::Client;

use super::CliError;
use super::output::{ReportFormat, outln};
use crate::keys::Keys;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The controllers' --overcommit: capacity is multiplied by it.
    #[arg(long, default_value_t = 1.0)]
    pub overcommit: f64,
    /// On a live cluster requests wait for their decision for a moment: look again for up to
    /// this many seconds before reporting what is still unsettled (0: report the first look).
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ReportFormat::Table)]
    pub output: ReportFormat,
}

pub(super) async fn check(client: &Client, keys: &Keys, a: CheckArgs) -> Result<(), CliError> {
    if !(a.overcommit.is_finite() && a.overcommit > 0.0) {
        return Err(CliError::Usage(format!(
            "--overcommit {}: expected a number greater than 0",
            a.overcommit
        )));
    }
    let settle = Duration::try_from_secs_f64(a.settle.max(0.0))
        .map_err(|e| CliError::Usage(format!("--settle {}: {e}", a.settle)))?;
    let deadline = tokio::time::Instant::now() + settle;
    let report = loop {
        let report = crate::invariants::check_etcd(client, keys, a.overcommit).await?;
        let clean = report.violations() + report.unsettled() == 0;
        if clean || tokio::time::Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let findings = report.findings();
    if a.output == ReportFormat::Json {
        super::output::json(&report)?;
    } else {
        outln!(
            "revision {}: {} engines, {} requests, {} decisions ({} placed, {} unschedulable, {} preempted, {} invalid, {} pending, {} ended)",
            report.revision,
            report.engines,
            report.requests,
            report.decided,
            report.placed,
            report.unschedulable,
            report.preempted,
            report.invalid,
            report.pending,
            report.ended
        );
        if findings.is_empty() {
            outln!("ok: no engine over capacity, no port bound twice, every request decided");
        }
        for (kind, detail) in &findings {
            outln!("{kind}: {detail}");
        }
    }
    match findings.len() {
        0 => Ok(()),
        n => Err(CliError::Findings(n)),
    }
}
