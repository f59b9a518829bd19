//! Throwaway certificate authorities for the tests, made with `openssl` in a temporary
//! directory: a server certificate for 127.0.0.1 and client certificates, whose CN names the
//! etcd user (etcd's `--client-cert-auth`) or just the client (a Docker engine's
//! `--tlsverify`).

use std::path::{Path, PathBuf};

use citadel_testkit::etcd::{EtcdOptions, EtcdProcess, EtcdTls};

use super::commands::run_ok_in;

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One CA, named `name`; its files live in `dir`, prefixed with the name.
pub struct Ca {
    dir: PathBuf,
    name: String,
    pub cert: PathBuf,
    key: PathBuf,
}

/// Runs openssl in `dir` (bounded); it must succeed.
async fn openssl(dir: &Path, args: &[&str]) {
    run_ok_in(dir, "openssl", args).await;
}

impl Ca {
    /// A new self-signed CA, valid for 2 days.
    pub async fn new(dir: &Path, name: &str) -> Ca {
        let cert = dir.join(format!("{name}-ca.pem"));
        let key = dir.join(format!("{name}-ca-key.pem"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} test CA"),
                "-keyout",
                path(&key),
                "-out",
                path(&cert),
            ],
        )
        .await;
        Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert,
            key,
        }
    }

    /// A certificate signed by this CA, with `ext` as its extensions.
    async fn issue(&self, who: &str, cn: &str, ext: &str) -> Pair {
        let f = |suffix: &str| self.dir.join(format!("{}-{who}{suffix}", self.name));
        let (cert, key, csr, extfile) = (f(".pem"), f("-key.pem"), f(".csr"), f(".ext"));
        std::fs::write(&extfile, ext).expect("write the extensions file");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                path(&key),
                "-out",
                path(&csr),
            ],
        )
        .await;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                path(&csr),
                "-CA",
                path(&self.cert),
                "-CAkey",
                path(&self.key),
                "-CAcreateserial",
                "-extfile",
                path(&extfile),
                "-out",
                path(&cert),
            ],
        )
        .await;
        Pair { cert, key }
    }

    /// etcd's certificate for 127.0.0.1. It allows client use too: etcd's own gateway, and
    /// the harness's readiness probe, present it as a client.
    pub async fn server(&self) -> Pair {
        self.issue(
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .await
    }

    /// A client certificate whose CN is `user`.
    pub async fn client(&self, user: &str) -> Pair {
        self.issue(user, user, "extendedKeyUsage=clientAuth\n")
            .await
    }
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A single etcd serving TLS with `server`'s certificate and requiring a client certificate
/// signed by `ca` (`--client-cert-auth`).
pub async fn etcd_requiring_client_certs(ca: &Ca, server: &Pair) -> EtcdProcess {
    EtcdProcess::start_with(EtcdOptions {
        tls: Some(EtcdTls {
            ca: ca.cert.clone(),
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_cert_auth: true,
        }),
        ..EtcdOptions::default()
    })
    .await
    .expect("start etcd with TLS")
}
