//! What an engine's containers use, live.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;

use super::*;

/// What one running container uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub container_id: String,
    /// `None` for a container citadel did not launch.
    pub request_id: Option<String>,
    pub image: String,
    pub cpus: f64,
    pub memory_mb: f64,
}

/// What an engine's running containers use, all of them (citadel's or not: all load the
/// engine).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineUsage {
    /// Containers the engine listed as running.
    pub running: usize,
    /// The sum over `samples`, in cpus.
    pub cpus: f64,
    /// The sum over `samples`, in MB.
    pub memory_mb: f64,
    /// One per running container whose stats could be read; a container that stopped or did not
    /// answer in time is left out (and logged), so `samples.len()` may be below `running`.
    pub samples: Vec<Sample>,
}

/// Samples every running container once.
///
/// Stats are asked with `stream=false, one-shot=false`: Docker then waits for a second
/// sample (about a second) and fills `precpu_stats`, which the cpu figure needs (with
/// `one-shot=true`, API 1.41's quick answer, `precpu_stats` is empty). The containers are
/// sampled concurrently, so the call takes about a second whatever their number.
pub async fn usage(docker: &Docker) -> Result<EngineUsage, DockerError> {
    let running = list(docker, false, HashMap::new()).await?;
    let count = running.len();
    let sampled = futures_util::future::join_all(running.into_iter().filter_map(|c| {
        let id = c.id?;
        Some(async move {
            let options = StatsOptions {
                stream: false,
                one_shot: false,
            };
            let mut stats = docker.stats(&id, Some(options));
            match tokio::time::timeout(STATS_TIMEOUT, stats.next()).await {
                Ok(Some(Ok(s))) => Some(Sample {
                    request_id: c
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(REQUEST_LABEL))
                        .cloned(),
                    image: c.image.unwrap_or_default(),
                    cpus: cpus_used(&s),
                    memory_mb: memory_used_bytes(&s) as f64 / (1024.0 * 1024.0),
                    container_id: id,
                }),
                Ok(Some(Err(e))) => {
                    tracing::debug!(container = %id, error = %super::describe(&e), "no stats");
                    None
                }
                Ok(None) => None,
                Err(_) => {
                    tracing::warn!(container = %id, timeout = ?STATS_TIMEOUT, "stats timed out");
                    None
                }
            }
        })
    }))
    .await;
    let samples: Vec<Sample> = sampled.into_iter().flatten().collect();
    Ok(EngineUsage {
        running: count,
        cpus: samples.iter().map(|s| s.cpus).sum(),
        memory_mb: samples.iter().map(|s| s.memory_mb).sum(),
        samples,
    })
}

/// Cpus in use between the two samples, as `docker stats` computes its percentage (÷ 100);
/// 0 when the engine gave no previous sample.
pub(super) fn cpus_used(s: &ContainerStatsResponse) -> f64 {
    let (Some(now), Some(before)) = (&s.cpu_stats, &s.precpu_stats) else {
        return 0.0;
    };
    // A one-shot answer's precpu_stats is zeroed: the delta would be the average since start.
    if before.system_cpu_usage.unwrap_or(0) == 0 {
        return 0.0;
    }
    let total = |c: &bollard::models::ContainerCpuStats| {
        c.cpu_usage
            .as_ref()
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let cpu_delta = total(now).saturating_sub(total(before));
    let system_delta = now
        .system_cpu_usage
        .unwrap_or(0)
        .saturating_sub(before.system_cpu_usage.unwrap_or(0));
    let online = match now.online_cpus {
        Some(n) if n > 0 => u64::from(n),
        _ => now
            .cpu_usage
            .as_ref()
            .and_then(|u| u.percpu_usage.as_ref())
            .map_or(0, |p| p.len() as u64),
    };
    if cpu_delta == 0 || system_delta == 0 {
        return 0.0;
    }
    cpu_delta as f64 / system_delta as f64 * online as f64
}

/// Memory in use less the page cache the kernel can take back, as `docker stats` (20.10)
/// computes it: `total_inactive_file` on cgroup v1, `inactive_file` on v2, else `cache`.
pub(super) fn memory_used_bytes(s: &ContainerStatsResponse) -> u64 {
    let Some(m) = &s.memory_stats else {
        return 0;
    };
    let usage = m.usage.unwrap_or(0);
    let stats = m.stats.as_ref();
    let reclaimable = ["total_inactive_file", "inactive_file", "cache"]
        .iter()
        .find_map(|k| stats.and_then(|s| s.get(*k)).copied())
        .unwrap_or(0);
    usage.saturating_sub(reclaimable)
}
