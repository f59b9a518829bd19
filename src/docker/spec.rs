//! What to run: a placed request translated, once, into what Docker is told.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
};

use crate::model;

use super::*;

/// A host port binding: `container_port/proto` published on `host_ip:host_port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Binding {
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    /// Empty: every interface.
    pub host_ip: String,
    /// 0: Docker picks a free port.
    pub host_port: u16,
}

impl Binding {
    /// Docker's key for the container side, `80/tcp`.
    fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.proto)
    }
}

/// Everything [`launch`] needs, translated once from a placed request's [`model::Image`].
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub request_id: String,
    pub engine_id: String,
    /// The cluster's key prefix, labelled [`CLUSTER_LABEL`] (`None`: no such label).
    pub cluster: Option<String>,
    /// The image reference as the user wrote it (`name[:tag]` or `name@digest`).
    pub image: String,
    /// `None`: Docker names the container.
    pub container_name: Option<String>,
    /// `None`: the image's own.
    pub entrypoint: Option<Vec<String>>,
    /// `None`: the image's own.
    pub cmd: Option<Vec<String>>,
    /// `K=V`, sorted by key.
    pub env: Vec<String>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// cpus × 10⁹; `None` when the request names no cpus.
    pub nano_cpus: Option<i64>,
    /// Bytes; `None` when the request names no memory.
    pub memory_bytes: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub ports: Vec<Binding>,
    /// `host:container[:ro]` bind mounts, as Docker's `Binds` takes them.
    pub binds: Vec<String>,
    /// Bare container paths: anonymous volumes (`Volumes`), as `docker run -v /path` makes them.
    pub volumes: Vec<String>,
    /// `container:alias`.
    pub links: Vec<String>,
    pub restart: Option<RestartPolicy>,
    pub network_mode: Option<String>,
    /// The seed's `publish`: every port the image exposes gets a host port Docker picks.
    pub publish_all_ports: bool,
    pub pull_timeout: Duration,
    /// What the image asked for that Docker cannot be told. Kept rather than failed on, so that
    /// building a spec stays infallible and [`launch`] refuses it before any I/O.
    pub(super) problems: Vec<String>,
}

impl LaunchSpec {
    /// Translates a placed request; pure. `cpus_milli` and `memory_mb` are the request's checked
    /// amounts ([`model::Request::cpus`] and [`model::Request::memory`]); 0 sets no limit.
    ///
    /// The image's `labels` are scheduling constraints, not container labels: the container gets
    /// only [`REQUEST_LABEL`] and [`ENGINE_LABEL`].
    pub fn from_image(
        request_id: &str,
        engine_id: &str,
        image: &model::Image,
        cpus_milli: u64,
        memory_mb: u64,
    ) -> LaunchSpec {
        let mut problems = Vec::new();
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
        let non_empty_vec = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());

        let nano_cpus = match cpus_milli
            .checked_mul(1_000_000)
            .and_then(|n| i64::try_from(n).ok())
        {
            Some(0) => None,
            Some(n) => Some(n),
            None => {
                problems.push(format!(
                    "cpus: {cpus_milli} millicpus is too many for Docker"
                ));
                None
            }
        };
        let memory_bytes = match memory_mb
            .checked_mul(1024 * 1024)
            .and_then(|n| i64::try_from(n).ok())
        {
            Some(0) => None,
            Some(n) => Some(n),
            None => {
                problems.push(format!("memory: {memory_mb} MB is too much for Docker"));
                None
            }
        };

        let mut ports = Vec::new();
        for (i, p) in image.bind_ports.iter().enumerate() {
            match binding(p) {
                Ok(b) => ports.push(b),
                Err(why) => problems.push(format!("bind_ports[{i}]: {why}")),
            }
        }

        let (binds, volumes) = image.volumes.iter().cloned().partition(|v| v.contains(':'));

        let restart = match restart_policy(&image.restart_policy) {
            Ok(r) => r,
            Err(why) => {
                problems.push(format!("restart_policy: {why}"));
                None
            }
        };

        LaunchSpec {
            request_id: request_id.to_string(),
            engine_id: engine_id.to_string(),
            cluster: None,
            image: image.name.trim().to_string(),
            container_name: Some(
                non_empty(&image.container_name).unwrap_or_else(|| default_name(request_id)),
            ),
            entrypoint: non_empty_vec(&image.entrypoint),
            cmd: non_empty_vec(&image.args),
            env: env(&image.environment),
            hostname: non_empty(&image.hostname),
            domainname: non_empty(&image.domainname),
            nano_cpus,
            memory_bytes,
            cpuset_cpus: non_empty(&image.cpuset),
            ports,
            binds,
            volumes,
            links: image
                .links
                .iter()
                .map(|(name, alias)| format!("{name}:{alias}"))
                .collect(),
            restart,
            network_mode: non_empty(&image.network_mode),
            publish_all_ports: image.publish,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            problems,
        }
    }

    /// Refuses, before any I/O, a spec Docker could not be told.
    pub(super) fn check(&self) -> Result<(), DockerError> {
        let reason = if self.image.is_empty() {
            "no image".to_string()
        } else if !self.problems.is_empty() {
            self.problems.join("; ")
        } else {
            return Ok(());
        };
        Err(DockerError::Spec {
            request: self.request_id.clone(),
            reason,
        })
    }

    /// Whose container this is: its engine and cluster labels.
    pub fn owner(&self) -> Owner {
        Owner::new(&self.engine_id, self.cluster.as_deref())
    }

    /// The same spec, labelled as launched by the cluster under `prefix`.
    pub fn in_cluster(mut self, prefix: &str) -> Self {
        self.cluster = Some(prefix.to_string());
        self
    }

    fn labels(&self) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (REQUEST_LABEL.to_string(), self.request_id.clone()),
            (ENGINE_LABEL.to_string(), self.engine_id.clone()),
        ]);
        if let Some(c) = &self.cluster {
            labels.insert(CLUSTER_LABEL.to_string(), c.clone());
        }
        labels
    }

    /// The body of `POST /containers/create`; pure.
    pub(super) fn create_body(&self) -> ContainerCreateBody {
        let mut port_bindings = PortMap::new();
        for b in &self.ports {
            port_bindings
                .entry(b.key())
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: (!b.host_ip.is_empty()).then(|| b.host_ip.clone()),
                    host_port: (b.host_port != 0).then(|| b.host_port.to_string()),
                });
        }
        let mut exposed: Vec<String> = port_bindings.keys().cloned().collect();
        exposed.sort();
        let some_vec = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());

        ContainerCreateBody {
            image: Some(self.image.clone()),
            entrypoint: self.entrypoint.clone(),
            cmd: self.cmd.clone(),
            env: some_vec(&self.env),
            hostname: self.hostname.clone(),
            domainname: self.domainname.clone(),
            labels: Some(self.labels()),
            exposed_ports: some_vec(&exposed),
            volumes: some_vec(&self.volumes),
            host_config: Some(HostConfig {
                nano_cpus: self.nano_cpus,
                memory: self.memory_bytes,
                cpuset_cpus: self.cpuset_cpus.clone(),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                publish_all_ports: self.publish_all_ports.then_some(true),
                binds: some_vec(&self.binds),
                links: some_vec(&self.links),
                restart_policy: self.restart.clone(),
                network_mode: self.network_mode.clone(),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }
}

pub(super) fn env(vars: &BTreeMap<String, String>) -> Vec<String> {
    vars.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A seed port as a binding (checked by [`model::launch`] when the request was parsed).
pub(super) fn binding(p: &model::Port) -> Result<Binding, String> {
    let proto = p.checked_proto()?;
    let (host_port, container_port) = p.checked_ports()?;
    Ok(Binding {
        container_port,
        proto: proto.to_string(),
        host_ip: p.host_ip.trim().to_string(),
        host_port,
    })
}

/// The seed's policy as Docker's (checked by [`model::launch`] when the request was parsed).
pub(super) fn restart_policy(p: &model::RestartPolicy) -> Result<Option<RestartPolicy>, String> {
    use model::launch::RestartName;
    Ok(p.checked()?.map(|(name, retries)| RestartPolicy {
        name: Some(match name {
            RestartName::No => RestartPolicyNameEnum::NO,
            RestartName::Always => RestartPolicyNameEnum::ALWAYS,
            RestartName::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
            RestartName::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        }),
        maximum_retry_count: retries,
    }))
}

/// `fromImage` and `tag` for a pull. Without a tag the API pulls *every* tag of the repository,
/// so a bare name gets `latest`, as `docker pull` does.
pub(super) fn pull_reference(image: &str) -> (&str, Option<&str>) {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        (image, None)
    } else {
        (image, Some("latest"))
    }
}
