use super::events::*;
use super::launch::*;
use super::spec::*;
use super::usage::*;
use super::*;
use crate::model;
use bollard::models::{
    ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerStatsResponse, EventActor,
    EventMessage, EventMessageTypeEnum, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

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
