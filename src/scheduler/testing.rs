//! What the scheduler's tests build their engines and requests with: one engine-view builder
//! and one request builder (and their few variants), so that every stage's tests mean the same
//! by "an engine with 4 cpus".

use super::{EngineView, Prepared, Strategy, schedule};
use crate::model::{Engine, EngineId, EngineSpec, HostPort, Image, Proto, Request, RequestId};

/// An engine registered as `citadel engine add` would, as the scheduler sees it.
pub(crate) fn engine(id: &str, cpus: f64, memory: f64, labels: &[&str]) -> EngineView {
    let wire = Engine {
        id: id.into(),
        addr: format!("tcp://{id}:2375"),
        cpus,
        memory,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        ..Engine::default()
    };
    let spec = EngineSpec::parse(
        &EngineId::new(id).unwrap(),
        serde_json::to_string(&wire).unwrap().as_bytes(),
    )
    .unwrap();
    EngineView::new(&spec, 1.0)
}

/// An [`engine`] in scheduling class `class`. The cache gives engines labelled alike one class;
/// a fleet built by hand says which.
pub(crate) fn engine_in_class(
    id: &str,
    cpus: f64,
    memory: f64,
    labels: &[&str],
    class: u32,
) -> EngineView {
    let mut v = engine(id, cpus, memory, labels);
    v.class = class;
    v
}

/// The image of a request as a user would write it: `labels` are its constraints, `ports` the
/// tcp host ports it binds. Tests that need more (affinity, disk) set it on this.
pub(crate) fn image(cpus: f64, memory: f64, labels: &[&str], ports: &[u16]) -> Image {
    Image {
        name: "img".into(),
        cpus: Some(cpus),
        memory: Some(memory),
        kind: "service".into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        bind_ports: ports.iter().map(|p| tcp(*p).to_port()).collect(),
        ..Image::default()
    }
}

/// A request of [`image`], checked as the model checks one.
pub(crate) fn request(cpus: f64, memory: f64, labels: &[&str], ports: &[u16]) -> Request {
    Request::from_image(image(cpus, memory, labels, ports)).unwrap()
}

/// A [`request`] binding no port, with `affinity` (`request!=web-*`, `image==redis*`).
pub(crate) fn request_with_affinity(
    cpus: f64,
    memory: f64,
    labels: &[&str],
    affinity: &[&str],
) -> Request {
    Request::from_image(Image {
        affinity: affinity.iter().map(|s| s.to_string()).collect(),
        ..image(cpus, memory, labels, &[])
    })
    .unwrap()
}

/// A [`request`], prepared as the scheduler takes it.
pub(crate) fn prepared(cpus: f64, memory: f64, labels: &[&str], ports: &[u16]) -> Prepared {
    Prepared::new(request(cpus, memory, labels, ports)).unwrap()
}

/// Schedules `r` with seed 1 over every engine and reserves it where it goes: the index, or
/// the unschedulable reason.
pub(crate) fn place(r: &Request, engines: &mut [EngineView], s: Strategy) -> Result<usize, String> {
    let p = Prepared::new(r.clone()).map_err(|e| e.to_string())?;
    let plan = schedule(&p, engines, s, 1, usize::MAX).map_err(|u| u.reason)?;
    let e = &mut engines[plan.engine];
    e.reserve(r.cpus, r.memory, &r.ports);
    Ok(plan.engine)
}

/// A tcp host port.
pub(crate) fn tcp(port: u16) -> HostPort {
    HostPort {
        proto: Proto::Tcp,
        port,
    }
}

/// Records request `id` of `image` as placed on `e` (what affinity reads), reserving nothing.
pub(crate) fn tenant(e: &mut EngineView, id: &str, image: &str) {
    let held = crate::model::Held {
        cpus: crate::model::Millicpus(0),
        memory: crate::model::MemoryMb(0),
        disk: crate::model::DiskMb(0),
        ports: Vec::new(),
        image: image.into(),
        rank: crate::model::Rank::default(),
    };
    std::sync::Arc::make_mut(&mut e.tenants).insert(
        RequestId::new(id).unwrap(),
        crate::scheduler::Tenant {
            held,
            revision: 0,
            decision: 1,
        },
    );
}

/// A placement's standing: `priority`, preemptible or not, in no group.
pub(crate) fn rank(priority: i32, preemptible: bool) -> crate::model::Rank {
    crate::model::Rank {
        priority,
        preemptible,
        ..crate::model::Rank::default()
    }
}

/// Places request `id` on `e` as a settled tenant (its decision written, at `revision`, the
/// revision of the request it answers): `millicpus`, `memory` MB and the tcp `ports` reserved,
/// with standing `rank`.
pub(crate) fn occupy(
    e: &mut EngineView,
    id: &str,
    millicpus: u64,
    memory: u64,
    ports: &[u16],
    rank: crate::model::Rank,
    revision: i64,
) {
    let held = crate::model::Held {
        cpus: crate::model::Millicpus(millicpus),
        memory: crate::model::MemoryMb(memory),
        disk: crate::model::DiskMb(0),
        ports: ports.iter().map(|p| tcp(*p)).collect(),
        image: "img".into(),
        rank,
    };
    let id = RequestId::new(id).unwrap();
    e.hold_at(&id, &held, revision);
    std::sync::Arc::make_mut(&mut e.tenants)
        .get_mut(&id)
        .unwrap()
        .decision = revision.max(1);
}

/// A [`prepared`] request of `priority`.
pub(crate) fn prepared_at(
    priority: i32,
    cpus: f64,
    memory: f64,
    labels: &[&str],
    ports: &[u16],
) -> Prepared {
    let mut r = request(cpus, memory, labels, ports);
    r.priority = priority;
    Prepared::new(r).unwrap()
}
