//! How to reach etcd: endpoints, TLS files and credentials, from flags or the environment.

use std::path::PathBuf;

use super::StoreError;

/// How to reach etcd. Built once (by the command line, or a test) and handed to everything
/// that connects: controllers, one-shot commands, the bench and the processes it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` (all alike); a bare `HOST:PORT` is https when
    /// `tls` is set, as with etcdctl.
    pub endpoints: Vec<String>,
    /// Set for https endpoints; `None` is plain http.
    pub tls: Option<TlsConfig>,
    /// A user and password (etcd's `Authenticate`). A client certificate alone also
    /// authenticates when etcd runs with `--client-cert-auth`: etcd takes its CN as the user.
    pub auth: Option<Credentials>,
}

/// The TLS files, as paths: they are read at every connection attempt, so that an error names
/// the flag and the file, and a renewed file is picked up by the next attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA bundle the server's certificate must chain to (`--cacert`); the system's bundle
    /// when `None`, as etcdctl does.
    pub cacert: Option<PathBuf>,
    /// A client certificate and its key (`--cert`, `--key`), if etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A user name and password; the password never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where Debian (and most Linux systems) keep the system's CA bundle: the roots an https
/// endpoint is checked against when no `--cacert` is given, as etcdctl does.
pub(super) const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The environment variables a child `citadel` reads its connection from (see
/// [`EtcdConfig::pass_to_child`]); the etcdctl ones are fallbacks the CLI also reads.
pub const ENV_VARS: [&str; 11] = [
    "CITADEL_ETCD",
    "CITADEL_ETCD_CACERT",
    "CITADEL_ETCD_CERT",
    "CITADEL_ETCD_KEY",
    "CITADEL_ETCD_USER",
    "CITADEL_ETCD_PASSWORD",
    "ETCDCTL_CACERT",
    "ETCDCTL_CERT",
    "ETCDCTL_KEY",
    "ETCDCTL_USER",
    "ETCDCTL_PASSWORD",
];

impl EtcdConfig {
    /// Plain endpoints: no TLS, no credentials.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            auth: None,
        }
    }

    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// The endpoints as one string, for messages.
    pub fn endpoints_str(&self) -> String {
        self.endpoints.join(",")
    }

    /// Checks that the settings fit together; a mistake here is never worth a retry.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::NoEndpoints);
        }
        for e in &self.endpoints {
            check_endpoint(e).map_err(|why| StoreError::Config(format!("--etcd {e}: {why}")))?;
        }
        let https = self.endpoints.iter().filter(|e| e.starts_with("https://"));
        let http = self.endpoints.iter().find(|e| e.starts_with("http://"));
        if let (Some(http), Some(https)) = (http, https.clone().next()) {
            return Err(StoreError::Config(format!(
                "endpoints {http} and {https} mix http and https; etcd serves clients one way"
            )));
        }
        if let (Some(_), Some(http)) = (&self.tls, http) {
            // Only the TLS settings ask for TLS here: with etcdctl's habit a --cacert
            // given to an http:// endpoint would be ignored, and a secret sent in clear.
            return Err(StoreError::Config(format!(
                "--cacert, --cert and --key are for TLS, but {http} is plain http: use https://"
            )));
        }
        if let Some(c) = &self.auth
            && c.user.is_empty()
        {
            return Err(StoreError::Config("--user: the user name is empty".into()));
        }
        Ok(())
    }

    /// True when the endpoints speak TLS.
    pub(super) fn uses_tls(&self) -> bool {
        self.tls.is_some() || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Hands this configuration to a child `citadel` through its environment. Inherited
    /// connection variables are removed first, so the child sees exactly this configuration,
    /// and the password stays off the command line (`ps` shows arguments to every user).
    pub fn pass_to_child(&self, cmd: &mut std::process::Command) {
        for var in ENV_VARS {
            cmd.env_remove(var);
        }
        cmd.env("CITADEL_ETCD", self.endpoints_str());
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.cacert {
                cmd.env("CITADEL_ETCD_CACERT", ca);
            }
            if let Some((cert, key)) = &tls.identity {
                cmd.env("CITADEL_ETCD_CERT", cert);
                cmd.env("CITADEL_ETCD_KEY", key);
            }
        }
        if let Some(c) = &self.auth {
            cmd.env("CITADEL_ETCD_USER", &c.user);
            cmd.env("CITADEL_ETCD_PASSWORD", &c.password);
        }
    }
}

/// Checks that an endpoint is `http://HOST:PORT`, `https://HOST:PORT` or a bare `HOST:PORT`
/// (a path after it is allowed, as etcdctl does): anything else would fail later as a name
/// that does not resolve, far from the typo.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = match endpoint.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "unknown scheme {scheme:?}: use http://HOST:PORT or https://HOST:PORT"
            ));
        }
        None => endpoint,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:2379`.
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err("an IPv6 address needs its closing ]".into()),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("no host: write http://HOST:PORT or https://HOST:PORT".into());
    }
    match port {
        Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        Some(p) if !p.is_empty() => Err(format!("port {p:?} is not a port number (1-65535)")),
        _ => Err(format!(
            "no port: write {}{host}:PORT (etcd's client port is 2379 by default)",
            endpoint
                .split_once("://")
                .map_or("", |(scheme, _)| &endpoint[..scheme.len() + 3])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_before_connecting() {
        let mixed = EtcdConfig::new(vec!["http://a:1".into(), "https://b:2".into()]);
        assert!(mixed.check().expect_err("mixed").is_permanent());
        let tls_on_http = EtcdConfig::new(vec!["http://a:1".into()]).with_tls(TlsConfig {
            cacert: Some("/ca.pem".into()),
            identity: None,
        });
        assert!(
            tls_on_http
                .check()
                .expect_err("TLS on http")
                .to_string()
                .contains("use https://")
        );
        assert!(matches!(
            EtcdConfig::default().check(),
            Err(StoreError::NoEndpoints)
        ));
        let https = EtcdConfig::new(vec!["https://a:1".into()]);
        assert!(https.check().is_ok() && https.uses_tls());
    }

    #[test]
    fn an_endpoint_is_http_or_https_with_a_host_and_a_port() {
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd.example:2379/",
            "127.0.0.1:2379",
            "http://[::1]:2379",
        ] {
            assert_eq!(check_endpoint(good), Ok(()), "{good}");
        }
        // (endpoint, what the one line says)
        let cases = [
            ("htp://127.0.0.1:2379", "unknown scheme \"htp\""),
            ("unix:///run/etcd.sock", "unknown scheme \"unix\""),
            ("http://127.0.0.1", "no port: write http://127.0.0.1:PORT"),
            ("http://:2379", "no host"),
            ("http://", "no host"),
            ("https://h:99999", "port \"99999\" is not a port number"),
            ("http://[::1", "closing ]"),
        ];
        for (bad, why) in cases {
            let e = EtcdConfig::new(vec![bad.into()]).check().expect_err(bad);
            assert!(e.is_permanent(), "{bad}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("--etcd {bad}: ")) && text.contains(why),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn a_child_gets_exactly_these_settings_and_no_password_in_its_arguments() {
        let cfg = EtcdConfig::new(vec!["https://a:1".into(), "https://b:2".into()])
            .with_tls(TlsConfig {
                cacert: Some("/ca.pem".into()),
                identity: Some(("/c.pem".into(), "/k.pem".into())),
            })
            .with_auth("ctl", "s3cret");
        let mut cmd = std::process::Command::new("true");
        cmd.env("ETCDCTL_USER", "someone-else");
        cfg.pass_to_child(&mut cmd);
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                let s = |o: &std::ffi::OsStr| o.to_string_lossy().into_owned();
                (s(k), v.map(s))
            })
            .collect();
        let get = |k: &str| {
            envs.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(
            get("CITADEL_ETCD").as_deref(),
            Some("https://a:1,https://b:2")
        );
        assert_eq!(get("CITADEL_ETCD_CERT").as_deref(), Some("/c.pem"));
        assert_eq!(get("CITADEL_ETCD_PASSWORD").as_deref(), Some("s3cret"));
        assert_eq!(get("ETCDCTL_USER"), None, "the inherited one is removed");
        assert_eq!(cmd.get_args().count(), 0);
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "Debug shows the password"
        );
    }
}
