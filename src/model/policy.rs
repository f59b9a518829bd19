//! The launch policy: what a request may ask of the host its container runs on.
//!
//! By default nothing beyond an ordinary container: no host path bind-mounted (the Docker socket
//! least of all), no host network, no other container's network namespace. The request language
//! has no field for privileged mode, capabilities, devices or the host's pid and ipc namespaces,
//! and the launcher never sets them. An engine's agent may permit more ([`LaunchPolicy`], from its
//! own flags); its engine record advertises that, the scheduler places such requests only there,
//! and the agent checks again before it launches.

use super::{HostVolume, Image, LaunchPolicy};

/// Where Docker's API socket usually lives: binding it (or a folder above it) hands the
/// container root on the host.
pub const DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

/// One thing a request asks of its host beyond an ordinary container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    /// A bind mount of a host path (normalised), read-only or not.
    HostPath { path: String, read_only: bool },
    /// `network_mode: "host"`.
    HostNetwork,
    /// `network_mode: "container:<name>"`.
    ContainerNetwork,
}

impl std::fmt::Display for Privilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Privilege::HostPath { path, read_only } => {
                let ro = if *read_only { " (read-only)" } else { "" };
                if reaches_docker_socket(path) {
                    write!(f, "host path {path}{ro}, which holds the Docker socket")
                } else {
                    write!(f, "host path {path}{ro}")
                }
            }
            Privilege::HostNetwork => f.write_str("the host's network"),
            Privilege::ContainerNetwork => f.write_str("another container's network"),
        }
    }
}

/// What `image` asks of its host beyond an ordinary container; an error for a host path no
/// engine could ever permit (`..` in it).
pub fn privileges(image: &Image) -> Result<Vec<Privilege>, String> {
    let mut out = Vec::new();
    for v in &image.volumes {
        let v = v.trim();
        let mut parts = v.split(':');
        let (Some(source), Some(_target)) = (parts.next(), parts.next()) else {
            continue; // an anonymous volume
        };
        if !source.starts_with('/') {
            continue; // a named volume
        }
        let read_only = parts
            .next()
            .is_some_and(|mode| mode.split(',').any(|m| m == "ro"));
        out.push(Privilege::HostPath {
            path: normalise(source)?,
            read_only,
        });
    }
    let mode = image.network_mode.trim();
    if mode.eq_ignore_ascii_case("host") {
        out.push(Privilege::HostNetwork);
    } else if mode
        .get(..10)
        .is_some_and(|p| p.eq_ignore_ascii_case("container:"))
    {
        out.push(Privilege::ContainerNetwork);
    }
    Ok(out)
}

/// `/a//b/./c/` → `/a/b/c`; `..` is refused (it could climb out of any declared path).
pub fn normalise(path: &str) -> Result<String, String> {
    let mut out = String::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("host path {path:?}: `..` is never allowed")),
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` is the Docker socket or a folder that holds it.
fn reaches_docker_socket(path: &str) -> bool {
    DOCKER_SOCKETS.iter().any(|s| covers(path, s))
}

/// Whether `outer` is `inner` or a folder above it (both normalised).
fn covers(outer: &str, inner: &str) -> bool {
    outer == "/"
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl LaunchPolicy {
    /// Why this engine may not run `image`, or `Ok`.
    pub fn permits(&self, image: &Image) -> Result<(), String> {
        for p in privileges(image)? {
            if !self.permits_one(&p) {
                return Err(format!("{p} is not allowed by the engine's launch policy"));
            }
        }
        Ok(())
    }

    /// Whether this engine lets a container have `p`.
    pub fn permits_one(&self, p: &Privilege) -> bool {
        match p {
            Privilege::HostNetwork => self.host_network,
            Privilege::ContainerNetwork => self.container_network,
            Privilege::HostPath { path, read_only } => {
                self.host_volumes.iter().any(|v| v.grants(path, *read_only))
            }
        }
    }
}

impl HostVolume {
    /// Whether this declared volume lets a container mount `path`. The Docker socket, and any
    /// folder above it, only when declared as exactly that path.
    fn grants(&self, path: &str, read_only: bool) -> bool {
        let Ok(declared) = normalise(&self.path) else {
            return false;
        };
        if self.read_only && !read_only {
            return false;
        }
        if reaches_docker_socket(path) {
            return declared == path;
        }
        covers(&declared, path)
    }

    /// `PATH[:ro]`, as `citadel agent --host-volume` takes it.
    pub fn parse(s: &str) -> Result<HostVolume, String> {
        let (path, read_only) = match s.rsplit_once(':') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            _ => (s, false),
        };
        if !path.starts_with('/') {
            return Err(format!("host volume {s:?}: the path must be absolute"));
        }
        Ok(HostVolume {
            path: normalise(path)?,
            read_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(volumes: &[&str], network: &str) -> Image {
        Image {
            name: "busybox".into(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            network_mode: network.into(),
            ..Image::default()
        }
    }

    fn vol(s: &str) -> HostVolume {
        HostVolume::parse(s).unwrap()
    }

    #[test]
    fn by_default_only_ordinary_containers_run() {
        let none = LaunchPolicy::default();
        // (volumes, network_mode, allowed by default)
        let cases: &[(&[&str], &str, bool)] = &[
            (&[], "", true),
            (&["/data"], "", true), // anonymous volume
            (&["cache:/data", "logs:/l:ro"], "bridge", true), // named volumes
            (&["/:/host"], "", false), // the escape
            (&["/var/run/docker.sock:/s"], "", false),
            (&["/etc:/etc:ro"], "", false),
            (&[], "host", false),
            (&[], "HOST", false),
            (&[], "container:web", false),
            (&[], "none", true),
        ];
        for (volumes, network, ok) in cases {
            let got = none.permits(&image(volumes, network));
            assert_eq!(got.is_ok(), *ok, "{volumes:?} {network:?}: {got:?}");
        }
        let why = none.permits(&image(&["/:/host"], "")).unwrap_err();
        assert!(why.contains("host path /"), "{why}");
    }

    #[test]
    fn a_declared_host_volume_permits_itself_and_below_and_nothing_else() {
        let p = LaunchPolicy {
            host_volumes: vec![vol("/srv/data"), vol("/etc/ssl:ro")],
            ..LaunchPolicy::default()
        };
        let cases: &[(&str, bool)] = &[
            ("/srv/data:/d", true),
            ("/srv/data/sub/:/d", true),
            ("/srv//data/./x:/d", true),
            ("/srv/database:/d", false), // a sibling with the same start
            ("/srv:/d", false),
            ("/srv/data/../../:/d", false),
            ("/etc/ssl:/s:ro", true),
            ("/etc/ssl:/s", false), // declared read-only
            ("/etc/ssl/certs:/s:ro,z", true),
            ("/:/host", false),
        ];
        for (v, ok) in cases {
            assert_eq!(p.permits(&image(&[v], "")).is_ok(), *ok, "{v}");
        }
    }

    #[test]
    fn the_docker_socket_only_when_declared_as_itself() {
        let above = LaunchPolicy {
            host_volumes: vec![vol("/var")],
            ..LaunchPolicy::default()
        };
        assert!(above.permits(&image(&["/var/lib/x:/x"], "")).is_ok());
        assert!(
            above
                .permits(&image(&["/var/run/docker.sock:/s"], ""))
                .is_err()
        );
        assert!(above.permits(&image(&["/var/run:/r"], "")).is_err());
        let root = LaunchPolicy {
            host_volumes: vec![vol("/")],
            ..LaunchPolicy::default()
        };
        assert!(root.permits(&image(&["/:/host"], "")).is_ok());
        assert!(root.permits(&image(&["/run/docker.sock:/s"], "")).is_err());
        let exact = LaunchPolicy {
            host_volumes: vec![vol("/var/run/docker.sock")],
            ..LaunchPolicy::default()
        };
        assert!(
            exact
                .permits(&image(&["/var/run/docker.sock:/s"], ""))
                .is_ok()
        );
    }

    #[test]
    fn networks_need_their_own_flags() {
        let host = LaunchPolicy {
            host_network: true,
            ..LaunchPolicy::default()
        };
        assert!(host.permits(&image(&[], "host")).is_ok());
        assert!(host.permits(&image(&[], "container:x")).is_err());
        assert!(HostVolume::parse("relative").is_err());
        assert!(HostVolume::parse("/a/../b").is_err());
    }
}
