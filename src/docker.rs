//! The Docker edge for placed containers: running a request's container on its engine, finding
//! it again, stopping it, and reading what an engine's containers use.
//!
//! Every container citadel starts carries two labels, `citadel.request=<request id>` and
//! `citadel.engine=<engine id>`, and nothing else of ours. The labels are the only link between
//! etcd and Docker: [`launch`] first [`find`]s the request's container by label, so a launch that
//! was already done (by a deposed leader, or by this one before a crash) is not done twice.
//!
//! [`engine`](crate::engine) connects; this module only borrows the [`Docker`] it returns.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse, ContainerSummary,
    EventMessage, EventMessageTypeEnum, HostConfig, PortBinding, PortMap, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions,
};
use futures_util::{Stream, StreamExt, TryStreamExt};

use crate::model;

/// The label naming the request a container runs; its value is the request id.
pub const REQUEST_LABEL: &str = "citadel.request";
/// The label naming the engine the container was placed on; its value is the engine id.
pub const ENGINE_LABEL: &str = "citadel.engine";
/// How long [`launch`] waits for a missing image to be pulled, unless the spec says otherwise.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long [`usage`] waits for one container's stats (Docker takes about a second per sample).
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("request {request}: cannot be launched: {reason}")]
    Spec { request: String, reason: String },
    #[error("cannot pull image {image}: {message}")]
    Pull { image: String, message: String },
    #[error("cannot create a container from {image}: {message}")]
    Create { image: String, message: String },
    #[error("the container did not start: {message}")]
    Start { message: String },
    #[error("docker {op} failed: {source}")]
    Api {
        op: &'static str,
        #[source]
        source: BollardError,
    },
    #[error("docker {op}: the engine's answer has no {what}")]
    Incomplete {
        op: &'static str,
        what: &'static str,
    },
    #[error("container {id} disappeared while it was being launched")]
    Vanished { id: String },
}

fn api(op: &'static str) -> impl FnOnce(BollardError) -> DockerError {
    move |source| DockerError::Api { op, source }
}

/// The HTTP status of an error the engine answered with.
fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Docker's own words, without bollard's "Docker responded with status code …" wrapping.
fn message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// What to run
// ---------------------------------------------------------------------------------------------

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
    problems: Vec<String>,
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
    fn check(&self) -> Result<(), DockerError> {
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

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (REQUEST_LABEL.to_string(), self.request_id.clone()),
            (ENGINE_LABEL.to_string(), self.engine_id.clone()),
        ])
    }

    /// The body of `POST /containers/create`; pure.
    fn create_body(&self) -> ContainerCreateBody {
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

fn env(vars: &BTreeMap<String, String>) -> Vec<String> {
    vars.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A seed port as a binding (checked by [`model::launch`] when the request was parsed).
fn binding(p: &model::Port) -> Result<Binding, String> {
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
fn restart_policy(p: &model::RestartPolicy) -> Result<Option<RestartPolicy>, String> {
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
fn pull_reference(image: &str) -> (&str, Option<&str>) {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        (image, None)
    } else {
        (image, Some("latest"))
    }
}

// ---------------------------------------------------------------------------------------------
// What runs
// ---------------------------------------------------------------------------------------------

/// A container's state as Docker names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// A state this Docker names and we do not know.
    Other(String),
}

impl State {
    fn parse(s: &str) -> State {
        match s {
            "created" => State::Created,
            "running" => State::Running,
            "paused" => State::Paused,
            "restarting" => State::Restarting,
            "removing" => State::Removing,
            "exited" => State::Exited,
            "dead" => State::Dead,
            other => State::Other(other.to_string()),
        }
    }

    /// Which of a request's twins [`find`] prefers: the one that runs, then one that could.
    fn rank(&self) -> u8 {
        match self {
            State::Running | State::Restarting | State::Paused => 0,
            State::Created => 1,
            State::Exited | State::Dead => 2,
            State::Removing | State::Other(_) => 3,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Restarting => "restarting",
            State::Removing => "removing",
            State::Exited => "exited",
            State::Dead => "dead",
            State::Other(s) => s,
        })
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

fn label_filter(value: String) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![value])])
}

async fn list(
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

fn from_summary(c: ContainerSummary) -> Option<Running> {
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

fn from_inspect(c: ContainerInspectResponse) -> Result<Running, DockerError> {
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
async fn inspect(docker: &Docker, id: &str) -> Result<Option<Running>, DockerError> {
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
pub async fn find(docker: &Docker, request_id: &str) -> Result<Option<Running>, DockerError> {
    let mut found: Vec<(u8, i64, String)> = list(
        docker,
        true,
        label_filter(format!("{REQUEST_LABEL}={request_id}")),
    )
    .await?
    .into_iter()
    .filter_map(|c| {
        let created = c.created.unwrap_or(0);
        let r = from_summary(c)?;
        Some((r.state.rank(), -created, r.id))
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

/// Every container citadel launched on this engine, whatever its state.
pub async fn list_managed(docker: &Docker) -> Result<Vec<Running>, DockerError> {
    let listed = list(docker, true, label_filter(REQUEST_LABEL.to_string())).await?;
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

// ---------------------------------------------------------------------------------------------
// Launching and stopping
// ---------------------------------------------------------------------------------------------

/// Runs the spec's container, once: a container already labelled with this request is
/// returned as it is (started first if it was only created), whatever its state, so a request
/// whose batch container exited is not run again.
///
/// A container that fails to start is removed, so that a retry elsewhere leaves nothing here.
#[tracing::instrument(skip_all, fields(request = %spec.request_id, engine = %spec.engine_id))]
pub async fn launch(docker: &Docker, spec: &LaunchSpec) -> Result<Running, DockerError> {
    spec.check()?;
    if let Some(found) = find(docker, &spec.request_id).await? {
        tracing::debug!(container = %found.id, state = %found.state, "already launched");
        return adopt(docker, found).await;
    }
    ensure_image(docker, &spec.image, spec.pull_timeout).await?;
    let options = CreateContainerOptions {
        name: spec.container_name.clone(),
        ..CreateContainerOptions::default()
    };
    let id = match docker
        .create_container(Some(options), spec.create_body())
        .await
    {
        Ok(created) => {
            for w in created.warnings.iter().filter(|w| !w.is_empty()) {
                tracing::warn!(container = %created.id, warning = %w, "docker create");
            }
            created.id
        }
        // The name is taken: by a twin launch of this same request, or by a stranger.
        Err(e) if status(&e) == Some(409) => match find(docker, &spec.request_id).await? {
            Some(found) => return adopt(docker, found).await,
            None => {
                return Err(DockerError::Create {
                    image: spec.image.clone(),
                    message: message(&e),
                });
            }
        },
        Err(e) => {
            return Err(DockerError::Create {
                image: spec.image.clone(),
                message: message(&e),
            });
        }
    };
    tracing::info!(container = %id, "created");
    start(docker, &id).await
}

/// The name a container gets when the request names none: `citadel-<request id>`, made of
/// what Docker allows in a name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`). A fixed name makes creation
/// atomic: a second launcher racing the first (a leader killed mid-launch, its successor) gets
/// a name conflict and adopts the container, instead of starting a twin. An id that had to be
/// changed to fit gets a hash of the original, so two ids never share a name: FNV-1a (64 bits,
/// offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the id's UTF-8 bytes, its low 32
/// bits in hex. Fixed here rather than Rust's `DefaultHasher`, whose output may change between
/// releases: a leader built by another compiler must find the same name.
pub fn default_name(request_id: &str) -> String {
    let mut name = String::from("citadel-");
    let mut changed = false;
    for c in request_id.chars().take(200) {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            name.push(c);
        } else {
            name.push('-');
            changed = true;
        }
    }
    if changed || request_id.chars().count() > 200 {
        name.push_str(&format!("-{:08x}", model::fnv1a(request_id) as u32));
    }
    name
}

/// A container found for the request: started if it was only created, else as it is.
async fn adopt(docker: &Docker, found: Running) -> Result<Running, DockerError> {
    match found.state {
        State::Created => start(docker, &found.id).await,
        _ => Ok(found),
    }
}

/// Starts a created container and reads it back; removes it if it cannot start.
async fn start(docker: &Docker, id: &str) -> Result<Running, DockerError> {
    if let Err(e) = docker.start_container(id, None).await {
        if let Err(rm) = remove(docker, id).await {
            tracing::warn!(container = %id, error = %rm, "cannot remove a container that did not start");
        }
        return Err(DockerError::Start {
            message: message(&e),
        });
    }
    inspect(docker, id)
        .await?
        .ok_or_else(|| DockerError::Vanished { id: id.to_string() })
}

/// Makes sure the engine has the image, pulling it (within `timeout`) when it does not.
async fn ensure_image(docker: &Docker, image: &str, timeout: Duration) -> Result<(), DockerError> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(e) if status(&e) == Some(404) => {}
        Err(e) => {
            return Err(DockerError::Api {
                op: "inspect image",
                source: e,
            });
        }
    }
    tracing::info!(image, "pulling");
    let (from_image, tag) = pull_reference(image);
    let options = CreateImageOptions {
        from_image: Some(from_image.to_string()),
        tag: tag.map(str::to_string),
        ..CreateImageOptions::default()
    };
    // The progress messages are of no use here; bollard turns an error message into an Err.
    let pull = docker
        .create_image(Some(options), None, None)
        .try_for_each(|_| std::future::ready(Ok(())));
    let failed = |message| DockerError::Pull {
        image: image.to_string(),
        message,
    };
    match tokio::time::timeout(timeout, pull).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(message(&e))),
        Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
    }
}

/// Removes a container and its anonymous volumes, killing it if it runs; a container already
/// gone (or being removed) is no error.
async fn remove(docker: &Docker, id: &str) -> Result<(), BollardError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..RemoveContainerOptions::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
        other => other,
    }
}

/// Stops (SIGTERM, then SIGKILL after `grace`) and removes every container of the request.
/// `Ok(false)` if there was none.
#[tracing::instrument(skip(docker))]
pub async fn stop_and_remove(
    docker: &Docker,
    request_id: &str,
    grace: Duration,
) -> Result<bool, DockerError> {
    let found = list(
        docker,
        true,
        label_filter(format!("{REQUEST_LABEL}={request_id}")),
    )
    .await?;
    if found.is_empty() {
        return Ok(false);
    }
    // Docker answers a stop only once the container is down: the client's timeout (shared by
    // every request) must outlast the grace period.
    let patient = docker
        .clone()
        .with_timeout(docker.timeout().max(grace + Duration::from_secs(30)));
    let options = StopContainerOptions {
        t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
        ..StopContainerOptions::default()
    };
    for id in found.into_iter().filter_map(|c| c.id) {
        // Not running (304) and gone (404) are what we want; any other failure is left to the
        // forced removal, which kills.
        if let Err(e) = patient.stop_container(&id, Some(options.clone())).await
            && status(&e) != Some(404)
        {
            tracing::warn!(container = %id, error = %e, "stop failed; removing by force");
        }
        remove(docker, &id).await.map_err(api("remove container"))?;
        tracing::info!(container = %id, "removed");
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

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
                    tracing::debug!(container = %id, error = %e, "no stats");
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
fn cpus_used(s: &ContainerStatsResponse) -> f64 {
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
fn memory_used_bytes(s: &ContainerStatsResponse) -> u64 {
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

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// What happened to a container (Docker's event `Action`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Start,
    Restart,
    Pause,
    Unpause,
    Kill,
    Stop,
    /// The container's process ended; the event carries the exit code.
    Die,
    Oom,
    Destroy,
    /// Anything else, as Docker wrote it (`exec_start: sh`, `health_status: healthy`, …).
    Other(String),
}

impl Action {
    fn parse(s: &str) -> Action {
        match s {
            "create" => Action::Create,
            "start" => Action::Start,
            "restart" => Action::Restart,
            "pause" => Action::Pause,
            "unpause" => Action::Unpause,
            "kill" => Action::Kill,
            "stop" => Action::Stop,
            "die" => Action::Die,
            "oom" => Action::Oom,
            "destroy" => Action::Destroy,
            other => Action::Other(other.to_string()),
        }
    }
}

/// An event about a container citadel launched.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEvent {
    pub request_id: String,
    pub engine_id: Option<String>,
    pub container_id: String,
    pub action: Action,
    /// Only on [`Action::Die`].
    pub exit_code: Option<i64>,
    /// When the engine says it happened; pass it to [`events_since`] to resume after it.
    pub time: Option<SystemTime>,
}

/// The engine's events about citadel's containers, from now on.
pub fn events(
    docker: &Docker,
) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
    events_since(docker, None)
}

/// The engine's events about citadel's containers, replayed from `since` (Docker keeps the
/// last thousand or so) and then live. `since` is the engine's clock, not ours.
///
/// The stream is lazy: nothing is asked of the engine until it is first polled.
pub fn events_since(
    docker: &Docker,
    since: Option<SystemTime>,
) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + use<> {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![REQUEST_LABEL.to_string()]),
    ]);
    let since = since.map(|t| {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    });
    let options = EventsOptions {
        since,
        filters: Some(filters),
        ..EventsOptions::default()
    };
    docker.events(Some(options)).filter_map(|event| {
        std::future::ready(match event {
            Ok(message) => container_event(message).map(Ok),
            Err(e) => Some(Err(DockerError::Api {
                op: "events",
                source: e,
            })),
        })
    })
}

/// A Docker event as ours; `None` for one that is not about a citadel container.
fn container_event(m: EventMessage) -> Option<ContainerEvent> {
    if m.typ.is_some_and(|t| t != EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let actor = m.actor?;
    let attributes = actor.attributes.unwrap_or_default();
    let action = Action::parse(m.action.as_deref().unwrap_or_default());
    let time = m
        .time_nano
        .and_then(|n| u64::try_from(n).ok())
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
        .or_else(|| {
            let s = u64::try_from(m.time?).ok()?;
            Some(UNIX_EPOCH + Duration::from_secs(s))
        });
    Some(ContainerEvent {
        request_id: attributes.get(REQUEST_LABEL)?.clone(),
        engine_id: attributes.get(ENGINE_LABEL).cloned(),
        container_id: actor.id?,
        exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        action,
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, EventActor};

    fn image() -> model::Image {
        model::Image {
            name: "redis:7".into(),
            entrypoint: vec!["/bin/redis-server".into()],
            args: vec!["--port".into(), "6380".into()],
            environment: BTreeMap::from([
                ("B".to_string(), "2".to_string()),
                ("A".to_string(), "x=y".to_string()),
            ]),
            hostname: "cache".into(),
            domainname: "example.org".into(),
            cpuset: "0-1".into(),
            labels: vec!["zone==a".into(), "disk=ssd".into()],
            bind_ports: vec![
                model::Port {
                    proto: "tcp".into(),
                    host_ip: "127.0.0.1".into(),
                    port: 16380,
                    container_port: 6380,
                },
                model::Port {
                    proto: "UDP".into(),
                    port: 5353,
                    ..model::Port::default()
                },
                model::Port {
                    container_port: 9000,
                    ..model::Port::default()
                },
            ],
            volumes: vec!["/srv/data:/data:ro".into(), "/scratch".into()],
            links: BTreeMap::from([("db".to_string(), "database".to_string())]),
            restart_policy: model::RestartPolicy {
                name: "on-failure".into(),
                maximum_retry_count: 3,
            },
            network_mode: "bridge".into(),
            container_name: "my-cache".into(),
            ..model::Image::default()
        }
    }

    #[test]
    fn spec_translates_every_field_docker_is_told() {
        let spec = LaunchSpec::from_image("r1", "e1", &image(), 500, 64);
        assert!(spec.check().is_ok(), "{:?}", spec.problems);
        let body = spec.create_body();
        let host = body.host_config.clone().expect("host config");

        assert_eq!(body.image.as_deref(), Some("redis:7"));
        assert_eq!(body.entrypoint, Some(vec!["/bin/redis-server".to_string()]));
        assert_eq!(
            body.cmd,
            Some(vec!["--port".to_string(), "6380".to_string()])
        );
        assert_eq!(body.env, Some(vec!["A=x=y".to_string(), "B=2".to_string()]));
        assert_eq!(body.hostname.as_deref(), Some("cache"));
        assert_eq!(body.domainname.as_deref(), Some("example.org"));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(host.binds, Some(vec!["/srv/data:/data:ro".to_string()]));
        assert_eq!(body.volumes, Some(vec!["/scratch".to_string()]));
        assert_eq!(host.links, Some(vec!["db:database".to_string()]));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(
            host.restart_policy,
            Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(3),
            })
        );
        assert_eq!(spec.container_name.as_deref(), Some("my-cache"));
        assert_eq!(host.publish_all_ports, None);
    }

    #[test]
    fn ports_are_bound_and_exposed() {
        let body = LaunchSpec::from_image("r1", "e1", &image(), 500, 64).create_body();
        let bindings = body
            .host_config
            .and_then(|h| h.port_bindings)
            .expect("port bindings");
        let one = |key: &str| {
            bindings
                .get(key)
                .cloned()
                .flatten()
                .unwrap_or_else(|| panic!("{key} is bound"))
        };
        assert_eq!(
            one("6380/tcp"),
            vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some("16380".into()),
            }]
        );
        // A container port of 0 is the host port; a host port of 0 lets Docker pick.
        assert_eq!(
            one("5353/udp"),
            vec![PortBinding {
                host_ip: None,
                host_port: Some("5353".into()),
            }]
        );
        assert_eq!(
            one("9000/tcp"),
            vec![PortBinding {
                host_ip: None,
                host_port: None,
            }]
        );
        assert_eq!(
            body.exposed_ports,
            Some(vec![
                "5353/udp".to_string(),
                "6380/tcp".to_string(),
                "9000/tcp".to_string()
            ])
        );
    }

    #[test]
    fn only_the_two_citadel_labels_are_set_not_the_constraints() {
        let body = LaunchSpec::from_image("r1", "e1", &image(), 500, 64).create_body();
        assert_eq!(
            body.labels,
            Some(HashMap::from([
                (REQUEST_LABEL.to_string(), "r1".to_string()),
                (ENGINE_LABEL.to_string(), "e1".to_string()),
            ]))
        );
    }

    #[test]
    fn default_names_are_docker_names_and_distinct() {
        assert_eq!(default_name("web-1"), "citadel-web-1");
        let odd = default_name("a b:c");
        assert!(odd.starts_with("citadel-a-b-c-"), "{odd}");
        assert_ne!(default_name("a b"), default_name("a:b"));
        // The documented hash, pinned: FNV-1a of "a b" is 0x…04833892.
        assert_eq!(default_name("a b"), "citadel-a-b-04833892");
        assert!(
            default_name(&"x".repeat(253))
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
    }

    #[test]
    fn an_empty_image_leaves_docker_its_defaults() {
        let bare = model::Image {
            name: "busybox".into(),
            ..model::Image::default()
        };
        let spec = LaunchSpec::from_image("r", "e", &bare, 0, 0);
        assert!(spec.check().is_ok());
        let body = spec.create_body();
        let host = body.host_config.clone().expect("host config");
        assert_eq!(spec.container_name.as_deref(), Some("citadel-r"));
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, None);
        assert_eq!(body.env, None);
        assert_eq!(body.exposed_ports, None);
        assert_eq!(host.nano_cpus, None);
        assert_eq!(host.memory, None);
        assert_eq!(host.port_bindings, None);
        assert_eq!(host.restart_policy, None);
        assert_eq!(host.network_mode, None);
    }

    #[test]
    fn what_docker_cannot_be_told_is_refused_naming_the_field() {
        let mut bad = image();
        bad.restart_policy.name = "sometimes".into();
        bad.bind_ports.push(model::Port {
            proto: "icmp".into(),
            port: 1,
            ..model::Port::default()
        });
        bad.bind_ports.push(model::Port::default());
        let spec = LaunchSpec::from_image("r9", "e1", &bad, 500, 64);
        let Err(DockerError::Spec { request, reason }) = spec.check() else {
            panic!("accepted: {spec:?}");
        };
        assert_eq!(request, "r9");
        assert!(reason.contains("restart_policy"), "{reason}");
        assert!(reason.contains("bind_ports[3]"), "{reason}");
        assert!(reason.contains("bind_ports[4]"), "{reason}");

        let nameless = model::Image::default();
        assert!(matches!(
            LaunchSpec::from_image("r", "e", &nameless, 1, 1).check(),
            Err(DockerError::Spec { .. })
        ));
    }

    #[test]
    fn a_bare_image_name_is_pulled_as_latest_not_every_tag() {
        assert_eq!(pull_reference("busybox"), ("busybox", Some("latest")));
        assert_eq!(pull_reference("busybox:1"), ("busybox:1", None));
        assert_eq!(
            pull_reference("registry:5000/team/app"),
            ("registry:5000/team/app", Some("latest"))
        );
        assert_eq!(
            pull_reference("registry:5000/team/app:2"),
            ("registry:5000/team/app:2", None)
        );
        assert_eq!(pull_reference("app@sha256:abc"), ("app@sha256:abc", None));
    }

    fn cpu(total: u64, system: u64) -> ContainerCpuStats {
        ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                ..ContainerCpuUsage::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: Some(4),
            ..ContainerCpuStats::default()
        }
    }

    #[test]
    fn cpus_come_from_the_delta_between_two_samples() {
        // A quarter of the system's time on a 4-cpu system: one cpu.
        let s = ContainerStatsResponse {
            cpu_stats: Some(cpu(3_000, 10_000)),
            precpu_stats: Some(cpu(1_000, 2_000)),
            ..ContainerStatsResponse::default()
        };
        assert!((cpus_used(&s) - 1.0).abs() < 1e-9, "{}", cpus_used(&s));
        // A one-shot answer has no previous sample: no figure rather than a wrong one.
        let one_shot = ContainerStatsResponse {
            cpu_stats: Some(cpu(3_000, 10_000)),
            precpu_stats: Some(ContainerCpuStats::default()),
            ..ContainerStatsResponse::default()
        };
        assert_eq!(cpus_used(&one_shot), 0.0);
        assert_eq!(cpus_used(&ContainerStatsResponse::default()), 0.0);
    }

    #[test]
    fn memory_leaves_out_the_reclaimable_cache() {
        let mem = |stats: &[(&str, u64)]| ContainerStatsResponse {
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(10_000),
                stats: Some(stats.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
                ..ContainerMemoryStats::default()
            }),
            ..ContainerStatsResponse::default()
        };
        let v1 = mem(&[("cache", 4_000), ("total_inactive_file", 3_000)]);
        assert_eq!(memory_used_bytes(&v1), 7_000);
        assert_eq!(memory_used_bytes(&mem(&[("inactive_file", 1_000)])), 9_000);
        assert_eq!(memory_used_bytes(&mem(&[("cache", 4_000)])), 6_000);
        assert_eq!(memory_used_bytes(&mem(&[])), 10_000);
        assert_eq!(memory_used_bytes(&ContainerStatsResponse::default()), 0);
    }

    #[test]
    fn a_die_event_carries_its_request_and_exit_code() {
        let message = EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("c1".into()),
                attributes: Some(HashMap::from([
                    (REQUEST_LABEL.to_string(), "r1".to_string()),
                    (ENGINE_LABEL.to_string(), "e1".to_string()),
                    ("exitCode".to_string(), "3".to_string()),
                ])),
            }),
            time: Some(1),
            time_nano: Some(1_500_000_000),
            ..EventMessage::default()
        };
        let e = container_event(message.clone()).expect("a citadel event");
        assert_eq!(e.request_id, "r1");
        assert_eq!(e.engine_id.as_deref(), Some("e1"));
        assert_eq!(e.container_id, "c1");
        assert_eq!(e.action, Action::Die);
        assert_eq!(e.exit_code, Some(3));
        assert_eq!(e.time, Some(UNIX_EPOCH + Duration::from_millis(1_500)));

        let mut stranger = message;
        if let Some(a) = stranger.actor.as_mut() {
            a.attributes = Some(HashMap::new());
        }
        assert_eq!(container_event(stranger), None);
    }
}
