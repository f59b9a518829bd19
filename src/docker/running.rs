//! What runs: the containers citadel started, as an engine reports them.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::ListContainersOptions;

use super::*;

pub use crate::model::ContainerState as State;

/// Which of a request's twins [`find`] prefers: the one that runs, then one that could.
fn rank(state: &State) -> u8 {
    match state {
        State::Running | State::Restarting | State::Paused => 0,
        State::Created => 1,
        State::Exited | State::Dead => 2,
        _ => 3,
    }
}

/// A container citadel launched, as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub image: String,
    pub request_id: String,
    pub engine_id: Option<String>,
    pub state: State,
    /// Set once the container has exited (or died).
    pub exit_code: Option<i64>,
    /// The ports published on the host (with the host port Docker chose, if it chose), sorted.
    pub ports: Vec<Binding>,
}

/// Whose containers an operation may touch: citadel's, labelled with one engine and, when it
/// is named, one cluster ([`ENGINE_LABEL`], [`CLUSTER_LABEL`]). A leader always names its
/// cluster: a container of another cluster on a shared engine, or one labelled for another
/// engine (a record pointing two engines at one daemon), is never listed, found nor stopped
/// as its own, whatever request it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub engine: String,
    /// The key prefix; `None` (a tool, a test) matches containers of any cluster or none.
    pub cluster: Option<String>,
}

impl Owner {
    pub fn new(engine: &str, cluster: Option<&str>) -> Owner {
        Owner {
            engine: engine.to_string(),
            cluster: cluster.map(str::to_string),
        }
    }

    /// Docker's filter for this owner's containers of `request` (`None`: of any request).
    /// Docker matches a container only if it has every label listed.
    pub(super) fn filter(&self, request: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![
            match request {
                Some(r) => format!("{REQUEST_LABEL}={r}"),
                None => REQUEST_LABEL.to_string(),
            },
            format!("{ENGINE_LABEL}={}", self.engine),
        ];
        if let Some(c) = &self.cluster {
            labels.push(format!("{CLUSTER_LABEL}={c}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }
}

pub(super) async fn list(
    docker: &Docker,
    all: bool,
    filters: HashMap<String, Vec<String>>,
) -> Result<Vec<ContainerSummary>, DockerError> {
    let options = ListContainersOptions {
        all,
        filters: Some(filters),
        ..ListContainersOptions::default()
    };
    docker
        .list_containers(Some(options))
        .await
        .map_err(api("list containers"))
}

pub(super) fn from_summary(c: ContainerSummary) -> Option<Running> {
    let labels = c.labels.unwrap_or_default();
    let mut ports: Vec<Binding> = c
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(Binding {
                container_port: p.private_port,
                proto: p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into()),
                host_ip: p.ip.unwrap_or_default(),
                host_port: p.public_port?,
            })
        })
        .collect();
    ports.sort();
    ports.dedup();
    Some(Running {
        id: c.id?,
        name: c
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        image: c.image.unwrap_or_default(),
        request_id: labels.get(REQUEST_LABEL).cloned().unwrap_or_default(),
        engine_id: labels.get(ENGINE_LABEL).cloned(),
        state: State::parse(&c.state.map(|s| s.to_string()).unwrap_or_default()),
        exit_code: None,
        ports,
    })
}

pub(super) fn from_inspect(c: ContainerInspectResponse) -> Result<Running, DockerError> {
    let id = c.id.ok_or(DockerError::Incomplete {
        op: "inspect container",
        what: "Id",
    })?;
    let config = c.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let state = c.state.unwrap_or_default();
    let status = State::parse(&state.status.map(|s| s.to_string()).unwrap_or_default());
    let exit_code = matches!(status, State::Exited | State::Dead)
        .then_some(state.exit_code)
        .flatten();
    let mut ports = Vec::new();
    let published = c.network_settings.and_then(|n| n.ports).unwrap_or_default();
    for (key, bindings) in published {
        let Some((port, proto)) = key.split_once('/') else {
            continue;
        };
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.unwrap_or_default() {
            let Some(host_port) = b.host_port.and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            ports.push(Binding {
                container_port,
                proto: proto.to_string(),
                host_ip: b.host_ip.unwrap_or_default(),
                host_port,
            });
        }
    }
    ports.sort();
    Ok(Running {
        id,
        name: c
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        image: config.image.unwrap_or_default(),
        request_id: labels.get(REQUEST_LABEL).cloned().unwrap_or_default(),
        engine_id: labels.get(ENGINE_LABEL).cloned(),
        state: status,
        exit_code,
        ports,
    })
}

/// Inspects one container; `None` if it is gone.
pub(super) async fn inspect(docker: &Docker, id: &str) -> Result<Option<Running>, DockerError> {
    match docker.inspect_container(id, None).await {
        Ok(c) => from_inspect(c).map(Some),
        Err(e) if status(&e) == Some(404) => Ok(None),
        Err(e) => Err(DockerError::Api {
            op: "inspect container",
            source: e,
        }),
    }
}

/// The container running `request_id` on this engine, whatever its state.
///
/// Two launchers racing can leave twins; this returns the one that runs (else one that was
/// created, else one that exited; the newest first) and [`stop_and_remove`] removes them all.
pub async fn find(
    docker: &Docker,
    owner: &Owner,
    request_id: &str,
) -> Result<Option<Running>, DockerError> {
    let mut found: Vec<(u8, i64, String)> = list(docker, true, owner.filter(Some(request_id)))
        .await?
        .into_iter()
        .filter_map(|c| {
            let created = c.created.unwrap_or(0);
            let r = from_summary(c)?;
            Some((rank(&r.state), -created, r.id))
        })
        .collect();
    found.sort();
    // The list is a snapshot: a container may be removed before it is inspected.
    for (_, _, id) in found {
        if let Some(r) = inspect(docker, &id).await? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Every container `owner` launched on this engine, whatever its state.
pub async fn list_managed(docker: &Docker, owner: &Owner) -> Result<Vec<Running>, DockerError> {
    let listed = list(docker, true, owner.filter(None)).await?;
    let mut out = Vec::with_capacity(listed.len());
    for r in listed.into_iter().filter_map(from_summary) {
        // The list has no exit codes: only an inspect of the ones that stopped reads them.
        if matches!(r.state, State::Exited | State::Dead) {
            out.extend(inspect(docker, &r.id).await?);
        } else {
            out.push(r);
        }
    }
    Ok(out)
}
