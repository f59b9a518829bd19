//! What Docker must be told to start a request's container, checked when the request is parsed.
//!
//! A request Docker would refuse (a bad port binding, restart policy, container name, volume,
//! environment variable or cpuset) is `invalid` at once, whether or not it asks to be launched,
//! instead of failing to start on every engine a leader tries. The Docker edge
//! (`docker::LaunchSpec`) translates what passed these checks, using the same functions.

use super::{Image, Invalid, Port, RestartPolicy};

/// Docker's restart policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartName {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

impl RestartPolicy {
    /// The policy Docker is given: `None` for an empty name (Docker's default, `no`); the retry
    /// count only for `on-failure`.
    pub fn checked(&self) -> Result<Option<(RestartName, Option<i64>)>, String> {
        if self.maximum_retry_count < 0 {
            return Err(format!(
                "maximum_retry {} is negative",
                self.maximum_retry_count
            ));
        }
        let name = match self.name.trim() {
            "" => return Ok(None),
            "no" => RestartName::No,
            "always" => RestartName::Always,
            "unless-stopped" => RestartName::UnlessStopped,
            "on-failure" => RestartName::OnFailure,
            _ => {
                return Err("the name is not no, always, unless-stopped or on-failure".into());
            }
        };
        let retries = (name == RestartName::OnFailure && self.maximum_retry_count > 0)
            .then_some(self.maximum_retry_count);
        Ok(Some((name, retries)))
    }
}

impl Port {
    /// The binding's protocol as Docker names it.
    pub fn checked_proto(&self) -> Result<&'static str, String> {
        match self.proto.trim().to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok("tcp"),
            "udp" => Ok("udp"),
            "sctp" => Ok("sctp"),
            _ => Err("proto is not tcp, udp or sctp".into()),
        }
    }

    /// `(host port, container port)`; a container port of 0 means "the same as the host port",
    /// and a host port of 0 lets Docker pick one.
    pub fn checked_ports(&self) -> Result<(u16, u16), String> {
        let port = |what: &str, v: i64| {
            u16::try_from(v).map_err(|_| format!("{what} {v} is not a port (0-65535)"))
        };
        let host = port("port", self.port)?;
        let container = match port("container_port", self.container_port)? {
            0 => host,
            n => n,
        };
        if container == 0 {
            return Err("neither port nor container_port is set".into());
        }
        Ok((host, container))
    }
}

/// Docker's rule for a container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`) and for a named volume.
pub fn docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Options Docker takes after a volume's container path.
const VOLUME_MODES: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "consistent",
    "cached",
    "delegated",
];

/// `/path` (an anonymous volume), `name:/path[:mode]` (a named one) or `/host:/path[:mode]`;
/// a host path with `..` in it is refused, as no launch policy could ever permit it.
fn check_volume(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => (None, *target, None),
        [source, target] => (Some(*source), *target, None),
        [source, target, mode] => (Some(*source), *target, Some(*mode)),
        _ => {
            return Err("not /path, name:/path or /host:/path[:mode]".into());
        }
    };
    if !target.starts_with('/') {
        return Err("the container path is not absolute".into());
    }
    if let Some(source) = source
        && source.starts_with('/')
        && super::policy::normalise(source).is_err()
    {
        return Err("the host path holds `..`, which is never allowed".into());
    }
    if let Some(source) = source
        && !source.starts_with('/')
        && !docker_name(source)
    {
        return Err("the source is neither an absolute host path nor a volume name".into());
    }
    if let Some(mode) = mode
        && mode.split(',').any(|m| !VOLUME_MODES.contains(&m))
    {
        return Err(format!(
            "unknown mode: the modes are {}",
            VOLUME_MODES.join(", ")
        ));
    }
    Ok(())
}

/// `0-3,5`: cpu numbers and ranges, as Docker's `--cpuset-cpus` takes them.
fn check_cpuset(s: &str) -> Result<(), String> {
    for part in s.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        match (lo.trim().parse::<u32>(), hi.trim().parse::<u32>()) {
            (Ok(lo), Ok(hi)) if lo <= hi => {}
            _ => return Err("not a list of cpus like 0-3,5".into()),
        }
    }
    Ok(())
}

/// A hostname Linux accepts: at most 64 bytes of letters, digits, `-` and `.`.
fn check_hostname(h: &str) -> Result<(), String> {
    if h.len() > 64
        || !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return Err("not a hostname (at most 64 letters, digits, - and .)".into());
    }
    Ok(())
}

/// Checks everything [`Image`] tells Docker. The reason names the field.
pub fn check(image: &Image) -> Result<(), Invalid> {
    let bad = |field: String, why: String| Err(Invalid(format!("{field}: {why}")));
    for (i, p) in image.bind_ports.iter().enumerate() {
        if let Err(why) = p.checked_proto().and_then(|_| p.checked_ports()) {
            return bad(format!("bind_ports[{i}]"), why);
        }
    }
    if let Err(why) = image.restart_policy.checked() {
        return bad("restart_policy".into(), why);
    }
    let name = image.container_name.trim();
    if !name.is_empty() && !docker_name(name.trim_start_matches('/')) {
        return bad(
            "container_name".into(),
            "not a Docker name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)".into(),
        );
    }
    let hostname = image.hostname.trim();
    if !hostname.is_empty()
        && let Err(why) = check_hostname(hostname)
    {
        return bad("hostname".into(), why);
    }
    let cpuset = image.cpuset.trim();
    if !cpuset.is_empty()
        && let Err(why) = check_cpuset(cpuset)
    {
        return bad("cpuset".into(), why);
    }
    for (i, v) in image.volumes.iter().enumerate() {
        if let Err(why) = check_volume(v.trim()) {
            return bad(format!("volumes[{i}]"), why);
        }
    }
    for (k, v) in &image.environment {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return bad(
                super::shown_key("environment", k),
                "a variable name is non-empty, without = or NUL, and its value without NUL".into(),
            );
        }
    }
    for (name, alias) in &image.links {
        if name.trim().is_empty() || alias.trim().is_empty() {
            return bad(
                super::shown_key("links", name),
                "a link names a container and an alias".into(),
            );
        }
    }
    for (field, list) in [("entrypoint", &image.entrypoint), ("args", &image.args)] {
        if let Some(i) = list.iter().position(|a| a.contains('\0')) {
            return bad(format!("{field}[{i}]"), "contains a NUL byte".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(edit: impl FnOnce(&mut Image)) -> Result<(), String> {
        let mut i = Image {
            name: "busybox".into(),
            ..Image::default()
        };
        edit(&mut i);
        check(&i).map_err(|e| e.0)
    }

    #[test]
    fn a_plain_image_passes() {
        assert_eq!(image(|_| {}), Ok(()));
        assert_eq!(
            image(|i| {
                i.volumes = vec![
                    "/data".into(),
                    "pgdata:/var/lib/postgresql".into(),
                    "/srv:/srv:ro".into(),
                    "/a:/b:ro,z".into(),
                ];
                i.cpuset = "0-3,5".into();
                i.hostname = "web-1.local".into();
                i.container_name = "my-cache".into();
                i.restart_policy.name = "on-failure".into();
                i.restart_policy.maximum_retry_count = 3;
            }),
            Ok(())
        );
    }

    type Edit = Box<dyn FnOnce(&mut Image)>;

    #[test]
    fn what_docker_would_refuse_names_the_field() {
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|i| i.restart_policy.name = "sometimes".into()),
                "restart_policy:",
            ),
            (
                Box::new(|i| i.restart_policy.maximum_retry_count = -1),
                "restart_policy:",
            ),
            (
                Box::new(|i| i.container_name = "has space".into()),
                "container_name:",
            ),
            (
                Box::new(|i| i.container_name = "x".into()),
                "container_name:",
            ),
            (Box::new(|i| i.hostname = "a_b".into()), "hostname:"),
            (Box::new(|i| i.cpuset = "3-1".into()), "cpuset:"),
            (Box::new(|i| i.cpuset = "all".into()), "cpuset:"),
            (Box::new(|i| i.volumes = vec!["data".into()]), "volumes[0]:"),
            (
                Box::new(|i| i.volumes = vec!["a:/b:rw:x".into()]),
                "volumes[0]:",
            ),
            (
                Box::new(|i| i.volumes = vec!["/a:/b:fast".into()]),
                "volumes[0]:",
            ),
            (
                Box::new(|i| i.volumes = vec!["bad name:/b".into()]),
                "volumes[0]:",
            ),
            (
                Box::new(|i| i.volumes = vec!["/srv/../:/host".into()]),
                "volumes[0]: the host path holds `..`",
            ),
            (
                Box::new(|i| i.volumes = vec!["/srv:/s".into(), "/a/..:/b:ro".into()]),
                "volumes[1]:",
            ),
            (
                Box::new(|i| {
                    i.environment.insert("A=B".into(), "1".into());
                }),
                "environment: a variable name",
            ),
            (
                Box::new(|i| {
                    i.links.insert("db".into(), " ".into());
                }),
                "links.db:",
            ),
            (
                Box::new(|i| i.entrypoint = vec!["sh".into(), "a\0b".into()]),
                "entrypoint[1]:",
            ),
            (
                Box::new(|i| {
                    i.bind_ports = vec![Port {
                        proto: "tcp".into(),
                        ..Port::default()
                    }]
                }),
                "bind_ports[0]: neither",
            ),
        ];
        for (edit, want) in cases {
            let err = image(edit).expect_err(want);
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }
}
