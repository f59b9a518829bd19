//! An extra Docker daemon running as a child process beside the system one.
//!
//! Used by tests and local tooling that need several engines on one machine:
//! [`DockerdProcess::start`] puts everything the daemon owns in a fresh
//! temporary directory (data root, exec root, pid file, API socket, config
//! file, engine key and log), spawns `dockerd` and waits until `GET /_ping`
//! on its socket answers `OK`. Each daemon starts its own containerd under
//! its exec root rather than sharing the system one, so killing it loses
//! exactly what a real engine host would lose, and nothing of it is left in
//! another daemon's containerd namespaces.
//!
//! The daemon has no bridge and touches no iptables: its containers run with
//! `--network none` (only loopback) or `--network host`. Naming no network,
//! or `bridge`, also yields loopback only rather than an error. Its
//! containers live in a cgroup parent of their own, which is how a killed
//! daemon's containers are found again.
//!
//! [`DockerdProcess::kill`] simulates a lost engine: dockerd dies with
//! SIGKILL, its containerd follows (dockerd starts it with a parent-death
//! signal), but the containers keep running under their shims, as they would
//! on a real host. Dropping a [`DockerdProcess`] force-removes the containers
//! of a live daemon and stops it, then sweeps what a killed one left behind
//! (container processes, shims, cgroups, mounts, shim sockets) and removes
//! the directory.
//!
//! With [`DockerdOptions::tls`] the daemon also serves its API over TLS
//! (`--tlsverify`) at [`DockerdProcess::tls_addr`], `https://127.0.0.1:PORT`
//! in the machine's network namespace: the harness binds that TCP listener
//! itself, before the daemon moves into its own namespace, and hands it over
//! as systemd socket activation does (fd 3, `LISTEN_FDS`, `LISTEN_PID`,
//! `-H fd://`). A socket belongs to the namespace it was created in, so no
//! forwarder is needed and `docker0` is not touched.
//!
//! Needs root, like any dockerd.

#![cfg(target_os = "linux")]

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::child::ChildProcess;
use tokio::time::{Instant, sleep, timeout};

/// How long to wait for a freshly spawned dockerd to answer `/_ping`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`DockerdProcess::stop`] waits after SIGTERM before SIGKILL.
/// dockerd itself gives running containers their stop timeout (10 s by
/// default) plus 5 s before it gives up on them.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Delay between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Per-call bound on one request to the daemon's API socket.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-call bound on force-removing one container while dropping.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on `docker save | docker load` in [`DockerdProcess::load_image`].
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on killing a dead daemon's leftover processes and cgroups.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Number of dockerd log lines included in errors.
const LOG_TAIL_LINES: usize = 40;
/// Longest accepted daemon name; it is part of every path the daemon uses.
const MAX_NAME_LEN: usize = 24;
/// A unix socket path must fit `sockaddr_un.sun_path` (108 bytes) with its NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Errors from starting an extra dockerd or loading an image into it.
#[derive(Debug, thiserror::Error)]
pub enum DockerdProcessError {
    /// The name is empty, too long or has characters other than ASCII
    /// letters, digits, `-` and `_`.
    #[error("invalid dockerd name {name:?}: use 1 to 24 ASCII letters, digits, '-' or '_'")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The dockerd binary could not be found.
    #[error("dockerd binary `{binary}` not found; install it with `apt-get install docker.io`")]
    NotInstalled {
        /// The binary that was looked for (a name searched in `PATH`, or a path).
        binary: String,
    },
    /// One of the daemon's unix sockets would not fit a socket address.
    #[error(
        "socket path {} is longer than {MAX_SOCKET_PATH} bytes; point TMPDIR at a shorter directory",
        path.display()
    )]
    PathTooLong {
        /// The offending path.
        path: PathBuf,
    },
    /// Spawning the dockerd process failed.
    #[error("failed to spawn dockerd")]
    Spawn(#[source] io::Error),
    /// dockerd exited before it became ready (not root, a flag it rejects, …).
    #[error("dockerd exited before becoming ready ({status}); last dockerd log lines:\n{log_tail}")]
    Exited {
        /// The exit status, as displayed by the OS.
        status: String,
        /// The last lines of the dockerd log.
        log_tail: String,
    },
    /// dockerd did not answer `/_ping` within 30 s.
    #[error("dockerd did not become ready within 30 s; last dockerd log lines:\n{log_tail}")]
    NotReady {
        /// The last lines of the dockerd log.
        log_tail: String,
    },
    /// The `docker` CLI, needed to copy images, could not be run.
    #[error("failed to run the docker CLI")]
    DockerCli(#[source] io::Error),
    /// `docker save IMAGE | docker -H ADDR load` failed.
    #[error("copying image {image} into {addr} failed: {stderr}")]
    LoadImage {
        /// The image being copied.
        image: String,
        /// The daemon it was copied into.
        addr: String,
        /// What the failing `docker` command printed on stderr.
        stderr: String,
    },
    /// `docker save | docker load` took longer than 120 s.
    #[error("copying image {image} into {addr} did not finish within 120 s")]
    LoadTimeout {
        /// The image being copied.
        image: String,
        /// The daemon it was copied into.
        addr: String,
    },
    /// Filesystem error while preparing the daemon's directory.
    #[error("dockerd process I/O error")]
    Io(#[from] io::Error),
}

/// Options for [`DockerdProcess::start_with`].
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// The dockerd binary; `dockerd` from `PATH` (or `/usr/sbin/dockerd`)
    /// when `None`.
    pub binary: Option<PathBuf>,
    /// If set, passed as `--storage-driver` (e.g. `"vfs"` where overlayfs is
    /// unavailable); dockerd picks one itself when `None` (overlay2 here).
    pub storage_driver: Option<String>,
    /// If set, the daemon also serves its API over TLS, requiring client
    /// certificates signed by `ca`, at [`DockerdProcess::tls_addr`].
    pub tls: Option<DockerdTls>,
}

/// The daemon side of [`DockerdOptions::tls`]: PEM files, as dockerd's
/// `--tlscacert`, `--tlscert` and `--tlskey` take them.
#[derive(Debug, Clone)]
pub struct DockerdTls {
    /// The CA that client certificates must be signed by.
    pub ca: PathBuf,
    /// The server certificate (its SANs must cover `127.0.0.1`).
    pub cert: PathBuf,
    /// The server certificate's private key.
    pub key: PathBuf,
}

/// One extra dockerd listening on a unix socket in its own temporary directory.
#[derive(Debug)]
pub struct DockerdProcess {
    // Field order matters for `Drop`: `drop` stops the child and sweeps
    // mounts first, then the temp dir is removed.
    child: ChildProcess,
    /// The port of the TLS listener on 127.0.0.1, with [`DockerdOptions::tls`].
    tls_port: Option<u16>,
    spec: Spec,
    _dir: TempDir,
}

/// Where one daemon keeps its things, all derived from its directory.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    binary: PathBuf,
    opts: DockerdOptions,
    dir: PathBuf,
    /// The cgroup (relative to each hierarchy's root) its containers go under.
    cgroup_parent: String,
}

impl DockerdProcess {
    /// Starts an extra dockerd with default options. `name` (ASCII letters,
    /// digits, `-`, `_`; at most 24) appears in its directory, cgroup and logs.
    pub async fn start(name: &str) -> Result<Self, DockerdProcessError> {
        Self::start_with(name, DockerdOptions::default()).await
    }

    /// Starts an extra dockerd with the given options and waits until its
    /// API answers.
    pub async fn start_with(name: &str, opts: DockerdOptions) -> Result<Self, DockerdProcessError> {
        validate_name(name)?;
        let binary = resolve_binary(opts.binary.as_deref())?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("citadel-dockerd-{name}-"))
            .tempdir()?;
        let spec = Spec::new(name, binary, opts, dir.path());
        spec.check_socket_paths()?;
        spec.write_config()?;

        // Bound here, in the machine's network namespace; dockerd inherits it.
        let tls_listener = match &spec.opts.tls {
            Some(_) => Some(std::net::TcpListener::bind(("127.0.0.1", 0))?),
            None => None,
        };
        let tls_port = match &tls_listener {
            Some(listener) => Some(listener.local_addr()?.port()),
            None => None,
        };

        let started = Instant::now();
        let spawned = spec.spawn_and_wait(tls_listener.as_ref()).await;
        // dockerd has its own copy now.
        drop(tls_listener);
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                // A daemon that got halfway may have mounted things already.
                spec.sweep();
                return Err(err);
            }
        };
        let process = DockerdProcess {
            child: ChildProcess::new(child),
            tls_port,
            spec,
            _dir: dir,
        };
        tracing::debug!(
            name,
            pid = process.pid(),
            addr = %process.addr(),
            log = %process.log_path().display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dockerd started"
        );
        Ok(process)
    }

    /// The daemon's address as `docker -H` and bollard take it: `unix:///…/docker.sock`.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.spec.socket().display())
    }

    /// With [`DockerdOptions::tls`], the daemon's TLS address in the
    /// machine's network namespace: `https://127.0.0.1:PORT`.
    pub fn tls_addr(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// The name given to [`DockerdProcess::start`].
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The OS process id of dockerd.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The daemon's `--data-root` (inside its temporary directory).
    pub fn data_root(&self) -> PathBuf {
        self.spec.data_root()
    }

    /// The daemon's log (its stderr, and its containerd's).
    pub fn log_path(&self) -> PathBuf {
        self.spec.log_path()
    }

    /// Kills dockerd with SIGKILL and reaps it: the engine is lost. Its
    /// containerd dies with it; its containers keep running until this value
    /// is dropped. No-op if it is not running.
    pub async fn kill(&mut self) {
        self.child.kill().await;
        tracing::debug!(name = %self.spec.name, pid = self.pid(), "dockerd killed");
    }

    /// Stops dockerd with SIGTERM, waits up to 20 s for it to exit, then
    /// falls back to SIGKILL. dockerd stops its running containers on the way
    /// out, each within its stop timeout (10 s by default): a container whose
    /// main process ignores SIGTERM makes this take that long. No-op if it is
    /// not running.
    pub async fn stop(&mut self) {
        if !self.child.stop(STOP_TIMEOUT).await {
            tracing::debug!(
                pid = self.pid(),
                "dockerd ignored SIGTERM for 20 s, killed it"
            );
        }
    }

    /// Copies `image` from the daemon the `docker` CLI talks to by default
    /// (the system one, unless `DOCKER_HOST` says otherwise) into this one:
    /// `docker save IMAGE | docker -H ADDR load`, bounded by 120 s.
    pub async fn load_image(&self, image: &str) -> Result<(), DockerdProcessError> {
        let addr = self.addr();
        let mut save = Command::new("docker")
            .arg("save")
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(DockerdProcessError::DockerCli)?;
        let archive: Stdio = save
            .stdout
            .take()
            .expect("stdout is piped")
            .try_into()
            .map_err(DockerdProcessError::DockerCli)?;
        let load = Command::new("docker")
            .arg("-H")
            .arg(&addr)
            .arg("load")
            .stdin(archive)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(DockerdProcessError::DockerCli)?;

        // On timeout both futures are dropped, and with them (kill_on_drop)
        // both processes.
        let both = async { tokio::join!(save.wait_with_output(), load.wait_with_output()) };
        let (saved, loaded) =
            timeout(LOAD_TIMEOUT, both)
                .await
                .map_err(|_| DockerdProcessError::LoadTimeout {
                    image: image.to_owned(),
                    addr: addr.clone(),
                })?;
        for output in [saved, loaded] {
            let output = output.map_err(DockerdProcessError::DockerCli)?;
            if !output.status.success() {
                return Err(DockerdProcessError::LoadImage {
                    image: image.to_owned(),
                    addr,
                    stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
        }
        tracing::debug!(name = %self.spec.name, image, "image loaded");
        Ok(())
    }
}

impl Drop for DockerdProcess {
    fn drop(&mut self) {
        if self.child.is_running() {
            // Without containers dockerd shuts down in about a second; with them it would
            // wait out each one's stop timeout.
            remove_all_containers(&self.spec.socket());
        }
        self.child.stop_blocking(STOP_TIMEOUT);
        self.spec.sweep();
    }
}

impl Spec {
    fn new(name: &str, binary: PathBuf, opts: DockerdOptions, dir: &Path) -> Self {
        // The temp dir's own name is unique, so it makes a unique cgroup too.
        let cgroup_parent = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("citadel-dockerd-{name}"));
        Spec {
            name: name.to_owned(),
            binary,
            opts,
            dir: dir.to_path_buf(),
            cgroup_parent,
        }
    }

    fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    fn config_file(&self) -> PathBuf {
        self.dir.join("daemon.json")
    }

    /// The socket of the containerd this dockerd starts for itself.
    fn containerd_socket(&self) -> PathBuf {
        self.exec_root().join("containerd").join("containerd.sock")
    }

    fn check_socket_paths(&self) -> Result<(), DockerdProcessError> {
        // The longest socket dockerd and its containerd create.
        let longest = self
            .exec_root()
            .join("containerd")
            .join("containerd-debug.sock");
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(DockerdProcessError::PathTooLong { path: longest });
        }
        Ok(())
    }

    /// Writes the daemon's own config file. Without `--config-file` dockerd
    /// reads /etc/docker/daemon.json, whose `data-root` clashes with ours
    /// ("specified both as a flag and in the configuration file"). Without a
    /// key path of its own it reuses /etc/docker/key.json, and `docker info`
    /// would report the system daemon's engine ID.
    fn write_config(&self) -> io::Result<()> {
        let config = serde_json::json!({
            "deprecated-key-path": self.dir.join("key.json"),
        });
        std::fs::write(self.config_file(), format!("{config}\n"))
    }

    /// Spawns dockerd and waits until its API answers. On failure the child
    /// has been killed and reaped.
    async fn spawn_and_wait(
        &self,
        tls_listener: Option<&std::net::TcpListener>,
    ) -> Result<Child, DockerdProcessError> {
        let mut child = self.spawn(tls_listener)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(DockerdProcessError::Exited {
                        status: status.to_string(),
                        log_tail: log_tail(&self.log_path()),
                    });
                }
                Ok(None) => {}
                Err(err) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(DockerdProcessError::Io(err));
                }
            }
            if ping(&self.socket()).await {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(DockerdProcessError::NotReady {
                    log_tail: log_tail(&self.log_path()),
                });
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    fn spawn(
        &self,
        tls_listener: Option<&std::net::TcpListener>,
    ) -> Result<Child, DockerdProcessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let stdout = log.try_clone()?;

        // A network namespace of its own: a dockerd started with `--bridge=none` deletes any
        // `docker0` in its namespace, and in the machine's that is the system daemon's bridge.
        // `unshare` execs dockerd, so the pid stays dockerd's.
        let mut cmd = Command::new("unshare");
        cmd.arg("--net").arg("--");
        if tls_listener.is_some() {
            // Socket activation wants LISTEN_PID to be dockerd's own pid: a
            // shell learns it and execs dockerd.
            cmd.arg("sh")
                .arg("-c")
                .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
                .env("LISTEN_FDS", "1")
                .env_remove("LISTEN_FDNAMES");
        }
        cmd.arg(&self.binary);
        // dockerd still honours these legacy variables over its defaults.
        cmd.env_remove("DOCKER_DRIVER").env_remove("DOCKER_TMPDIR");
        cmd.arg("--config-file")
            .arg(self.config_file())
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--bridge=none")
            .arg("--iptables=false")
            .arg("--ip6tables=false")
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent);
        if let Some(driver) = &self.opts.storage_driver {
            cmd.arg("--storage-driver").arg(driver);
        }
        if let (Some(listener), Some(tls)) = (tls_listener, &self.opts.tls) {
            use std::os::fd::AsRawFd;
            cmd.arg("-H")
                .arg("fd://")
                .arg("--tlsverify")
                .arg("--tlscacert")
                .arg(&tls.ca)
                .arg("--tlscert")
                .arg(&tls.cert)
                .arg("--tlskey")
                .arg(&tls.key);
            let fd = listener.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and
            // only makes async-signal-safe system calls on a descriptor the
            // parent keeps open until `spawn` returns.
            unsafe {
                cmd.pre_exec(move || sys::pass_as_fd3(fd));
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);

        cmd.spawn().map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                DockerdProcessError::NotInstalled {
                    binary: self.binary.display().to_string(),
                }
            } else {
                DockerdProcessError::Spawn(err)
            }
        })
    }

    /// Cleans up after a daemon that is no longer running, whichever way it
    /// ended: kills its containers' processes and their shims, removes its
    /// cgroups, unmounts everything under its directory and removes the shim
    /// sockets its containerd put in /run/containerd/s. Everything is found
    /// through this daemon's own directory, cgroup and containerd socket, so
    /// no other daemon is touched. Even a graceful stop leaves something: the
    /// empty cgroup parent, and `exec/netns/default` still mounted once a
    /// container used the host network. Best effort and bounded.
    fn sweep(&self) {
        let deadline = std::time::Instant::now() + SWEEP_TIMEOUT;
        let shim_sockets = shim_sockets(&self.exec_root());
        let cgroups: Vec<PathBuf> = cgroup_mounts()
            .into_iter()
            .map(|root| root.join(&self.cgroup_parent))
            .filter(|dir| dir.is_dir())
            .collect();

        // Containers first (killing a pid namespace's init kills the rest of
        // it), then the shims that would otherwise wait forever for their
        // dead containerd.
        let mut killed = 0;
        loop {
            let pids: Vec<u32> = cgroups.iter().flat_map(|dir| cgroup_pids(dir)).collect();
            if pids.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                // A pid read from cgroup.procs a moment ago could in theory
                // have been reused since; pids are allocated sequentially, so
                // the window is far too small to matter in tests.
                if sys::signal(pid, sys::Signal::KILL).is_ok() {
                    killed += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in shim_pids(&self.containerd_socket()) {
            if sys::signal(pid, sys::Signal::KILL).is_ok() {
                killed += 1;
            }
        }
        for dir in &cgroups {
            remove_cgroup_tree(dir, deadline);
        }
        let unmounted = unmount_under(&self.dir);
        for socket in &shim_sockets {
            let _ = std::fs::remove_file(socket);
        }
        if killed > 0 || unmounted > 0 {
            tracing::debug!(
                name = %self.name,
                killed,
                unmounted,
                "swept what a stopped dockerd left behind"
            );
        }
    }
}

/// Force-removes every container of a live daemon, bounded per call.
fn remove_all_containers(socket: &Path) {
    let Ok((200, body)) =
        api_request_blocking(socket, "GET", "/containers/json?all=1", PROBE_TIMEOUT)
    else {
        return;
    };
    let Ok(containers) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return;
    };
    for id in containers.iter().filter_map(|c| c["Id"].as_str()) {
        let path = format!("/containers/{id}?force=1&v=1");
        if let Err(err) = api_request_blocking(socket, "DELETE", &path, REMOVE_TIMEOUT) {
            tracing::debug!(id, %err, "could not remove container before stopping dockerd");
        }
    }
}

fn validate_name(name: &str) -> Result<(), DockerdProcessError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(DockerdProcessError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Finds the dockerd binary: an explicit path is used as is, a bare name
/// (and the default `dockerd`) is searched in `PATH`, then in /usr/sbin,
/// which is where Debian puts it and not every `PATH` includes.
fn resolve_binary(binary: Option<&Path>) -> Result<PathBuf, DockerdProcessError> {
    let wanted = binary.unwrap_or(Path::new("dockerd"));
    let not_installed = || DockerdProcessError::NotInstalled {
        binary: wanted.display().to_string(),
    };
    if wanted.components().count() > 1 || wanted.is_absolute() {
        return if is_executable(wanted) {
            Ok(wanted.to_path_buf())
        } else {
            Err(not_installed())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(wanted))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(not_installed)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// An HTTP/1.0 request without a body: the server closes the connection
/// after the response, so reading to the end yields all of it.
fn request_bytes(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.0\r\nHost: docker\r\n\r\n").into_bytes()
}

/// Splits a raw HTTP response into its status code and body.
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let header_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_line = std::str::from_utf8(&raw[..header_end])
        .ok()?
        .lines()
        .next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, raw[header_end + 4..].to_vec()))
}

/// `GET /_ping`; true when the daemon answers `200 OK`.
async fn ping(socket: &Path) -> bool {
    let probe = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(&request_bytes("GET", "/_ping")).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(response)
    };
    match timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(raw)) => matches!(parse_response(&raw), Some((200, body)) if body == b"OK"),
        _ => false,
    }
}

/// One blocking API call, bounded by `limit` for each read and write.
fn api_request_blocking(
    socket: &Path,
    method: &str,
    path: &str,
    limit: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    stream.write_all(&request_bytes(method, path))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| io::Error::other("malformed HTTP response from dockerd"))
}

/// The mount points of every cgroup hierarchy (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

/// Every pid in a cgroup and its descendants.
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for child in subdirs(dir) {
        pids.extend(cgroup_pids(&child));
    }
    pids
}

/// Removes a cgroup and its descendants, deepest first. A cgroup whose last
/// process is still dying is busy for a moment, so retry until `deadline`.
fn remove_cgroup_tree(dir: &Path, deadline: std::time::Instant) {
    for child in subdirs(dir) {
        remove_cgroup_tree(&child, deadline);
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) if std::time::Instant::now() >= deadline => {
                tracing::warn!(cgroup = %dir.display(), %err, "could not remove cgroup");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The shims serving the containerd at `containerd_socket`: processes named
/// `containerd-shim*` started with `-address <containerd_socket>`.
fn shim_pids(containerd_socket: &Path) -> Vec<u32> {
    let wanted = containerd_socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let program = Path::new(std::ffi::OsStr::from_bytes(args.first()?));
            let is_shim = program
                .file_name()?
                .as_encoded_bytes()
                .starts_with(b"containerd-shim");
            let serves_ours = args
                .windows(2)
                .any(|pair| pair[0] == b"-address" && pair[1] == wanted);
            (is_shim && serves_ours).then_some(pid)
        })
        .collect()
}

/// The sockets of this containerd's task shims, which live outside the exec
/// root (/run/containerd/s/<hash>) and are only removed by a shim that exits
/// cleanly. containerd records each in the task's `address` file.
fn shim_sockets(exec_root: &Path) -> Vec<PathBuf> {
    let tasks = exec_root
        .join("containerd")
        .join("daemon")
        .join("io.containerd.runtime.v2.task");
    subdirs(&tasks)
        .iter()
        .flat_map(|namespace| subdirs(namespace))
        .filter_map(|task| std::fs::read_to_string(task.join("address")).ok())
        .filter_map(|addr| addr.trim().strip_prefix("unix://").map(PathBuf::from))
        .filter(|path| path.starts_with("/run/containerd/s/"))
        .collect()
}

/// Lazily unmounts every mount at or below `dir`, innermost first; returns
/// how many were unmounted.
fn unmount_under(dir: &Path) -> usize {
    let mut unmounted = 0;
    // A lazy unmount of a parent also detaches what is below it, so a few
    // rounds always suffice.
    for _ in 0..3 {
        let under: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|point| point.starts_with(dir))
            .collect();
        if under.is_empty() {
            break;
        }
        // mountinfo lists a mount after the one it sits on.
        for point in under.iter().rev() {
            match sys::unmount_detached(point) {
                Ok(()) => unmounted += 1,
                Err(err) => {
                    tracing::debug!(mount = %point.display(), %err, "unmount failed")
                }
            }
        }
    }
    unmounted
}

/// One line of /proc/self/mountinfo, reduced to what the sweep needs.
struct Mount {
    mount_point: PathBuf,
    fs_type: String,
}

fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(parse_mountinfo_line)
        .collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`: the
/// fifth field is the mount point, the first after `-` the filesystem type.
fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let mount_point = fields.nth(4)?;
    let fs_type = fields.skip_while(|f| *f != "-").nth(1)?;
    Some(Mount {
        mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(mount_point))),
        fs_type: fs_type.to_owned(),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The system calls the harness needs beyond `std`, through rustix.
mod sys {
    use std::io;
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
    use std::path::Path;

    pub use crate::child::{Signal, signal};

    /// Makes `fd` the child's descriptor 3, kept across exec: the first socket-activation
    /// descriptor. Only async-signal-safe calls: it runs between fork and exec.
    pub fn pass_as_fd3(fd: RawFd) -> io::Result<()> {
        const FD3: RawFd = 3;
        // SAFETY: `fd` is open in the child (the listener the parent bound), and 3 is free
        // for us to take: stdio has been set up in 0 to 2.
        let source = unsafe { BorrowedFd::borrow_raw(fd) };
        if fd == FD3 {
            // dup2 onto itself does nothing: clear FD_CLOEXEC directly.
            return rustix::io::fcntl_setfd(source, rustix::io::FdFlags::empty())
                .map_err(io::Error::from);
        }
        // SAFETY: descriptor 3 is ours to replace; the OwnedFd is forgotten, never closed,
        // so the child keeps it across exec (dup2's copy has no FD_CLOEXEC).
        let mut target = unsafe { OwnedFd::from_raw_fd(FD3) };
        let result = rustix::io::dup2(source, &mut target).map_err(io::Error::from);
        std::mem::forget(target);
        result
    }

    /// `umount2(path, MNT_DETACH)`: detaches now, frees when no longer busy.
    pub fn unmount_detached(path: &Path) -> io::Result<()> {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).map_err(io::Error::from)
    }
}

/// The last [`LOG_TAIL_LINES`] lines of the dockerd log; empty if unreadable.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read(path).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// The local image the Docker tests launch, built on the system daemon once per process by
/// `scripts/test-image.sh` (Debian's busybox-static and `docker import`: no registry is needed).
pub fn test_image() -> Result<String, String> {
    static IMAGE: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-image.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .output()
                .map_err(|e| format!("run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "test-image.sh: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last().map(str::trim) {
                Some(image) if !image.is_empty() => Ok(image.to_string()),
                _ => Err("test-image.sh printed no image name".into()),
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image() -> String {
        super::test_image().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `docker -H addr ARGS…`, bounded; returns trimmed stdout.
    async fn docker(addr: &str, args: &[&str]) -> String {
        let run = Command::new("docker")
            .arg("-H")
            .arg(addr)
            .args(args)
            .kill_on_drop(true)
            .output();
        let output = timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("docker {args:?} took over 30 s"))
            .expect("run the docker CLI");
        assert!(
            output.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `GET /info` on a daemon socket, as JSON.
    fn info(socket: &Path) -> serde_json::Value {
        let (status, body) =
            api_request_blocking(socket, "GET", "/info", PROBE_TIMEOUT).expect("GET /info");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("JSON info")
    }

    /// Running, and not a zombie waiting for init to reap it.
    fn is_alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
    }

    fn mounts_under(dir: &Path) -> Vec<PathBuf> {
        mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(dir))
            .collect()
    }

    #[test]
    fn names_outside_the_safe_alphabet_are_rejected() {
        for bad in [
            "",
            "a/b",
            "with space",
            "ünï",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(
                matches!(
                    validate_name(bad),
                    Err(DockerdProcessError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        for good in ["a", "engine-1", "E_2", &"x".repeat(MAX_NAME_LEN)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let line = "47 43 0:39 / /tmp/a\\040b/merged rw,relatime shared:3 - overlay overlay rw";
        let mount = parse_mountinfo_line(line).expect("parses");
        assert_eq!(mount.mount_point, Path::new("/tmp/a b/merged"));
        assert_eq!(mount.fs_type, "overlay");
        let no_optional = "25 1 0:22 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids";
        assert_eq!(
            parse_mountinfo_line(no_optional).expect("parses").fs_type,
            "cgroup"
        );
    }

    #[tokio::test]
    async fn missing_binary_is_not_installed() {
        let err = DockerdProcess::start_with(
            "missing",
            DockerdOptions {
                binary: Some("/nonexistent/dockerd".into()),
                ..DockerdOptions::default()
            },
        )
        .await
        .expect_err("no such binary");
        assert!(
            matches!(err, DockerdProcessError::NotInstalled { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn starts_as_a_separate_engine_in_its_own_dirs() {
        let dockerd = DockerdProcess::start("separate")
            .await
            .expect("start dockerd");
        assert_eq!(
            dockerd.addr(),
            format!("unix://{}", dockerd.spec.socket().display())
        );
        assert!(ping(&dockerd.spec.socket()).await);

        let ours = info(&dockerd.spec.socket());
        let system = info(Path::new("/var/run/docker.sock"));
        assert_eq!(ours["DockerRootDir"].as_str(), dockerd.data_root().to_str());
        assert_ne!(ours["ID"], system["ID"], "an engine ID of its own");
        assert_eq!(ours["Containers"], 0);
        assert!(ours["NCPU"].as_u64().is_some_and(|n| n > 0));
        assert!(ours["MemTotal"].as_u64().is_some_and(|n| n > 0));
    }

    #[tokio::test]
    async fn stop_shuts_down_gracefully() {
        let mut dockerd = DockerdProcess::start("graceful")
            .await
            .expect("start dockerd");
        let socket = dockerd.spec.socket();
        dockerd.stop().await;
        assert!(!ping(&socket).await);
        let log = log_tail(&dockerd.log_path());
        assert!(log.contains("Daemon shutdown complete"), "log: {log}");
        assert!(mounts_under(&dockerd.spec.dir).is_empty());
        // Stopping twice is harmless.
        dockerd.stop().await;
    }

    #[tokio::test]
    async fn drop_after_kill_sweeps_containers_shims_cgroups_and_mounts() {
        let image = test_image();
        let mut dockerd = DockerdProcess::start("swept").await.expect("start dockerd");
        dockerd
            .load_image(&image)
            .await
            .expect("load the test image");
        let addr = dockerd.addr();
        let id = docker(
            &addr,
            &["run", "-d", "--network", "none", &image, "sleep", "300"],
        )
        .await;
        let container_pid: u32 = docker(&addr, &["inspect", "-f", "{{.State.Pid}}", &id])
            .await
            .parse()
            .expect("a pid");
        let spec = dockerd.spec.clone();
        let shims = shim_pids(&spec.containerd_socket());
        let sockets = shim_sockets(&spec.exec_root());
        let cgroups: Vec<PathBuf> = cgroup_mounts()
            .into_iter()
            .map(|root| root.join(&spec.cgroup_parent))
            .filter(|dir| dir.is_dir())
            .collect();
        assert_eq!(shims.len(), 1, "one shim for one container");
        assert_eq!(sockets.len(), 1, "one shim socket");
        assert!(!cgroups.is_empty());
        assert!(cgroup_pids(&cgroups[0]).contains(&container_pid));

        dockerd.kill().await;
        assert!(
            !ping(&spec.socket()).await,
            "a killed daemon does not answer"
        );
        assert!(is_alive(container_pid), "its container outlives it");
        assert!(!mounts_under(&spec.dir).is_empty());

        drop(dockerd);
        assert!(!is_alive(container_pid), "container process killed");
        for shim in shims {
            assert!(!is_alive(shim), "shim {shim} killed");
        }
        for cgroup in &cgroups {
            assert!(!cgroup.exists(), "{} removed", cgroup.display());
        }
        for socket in &sockets {
            assert!(!socket.exists(), "{} removed", socket.display());
        }
        assert!(mounts_under(&spec.dir).is_empty());
        assert!(!spec.dir.exists());
    }

    #[tokio::test]
    async fn drop_of_a_live_daemon_removes_its_containers_without_waiting() {
        let image = test_image();
        let dockerd = DockerdProcess::start("live").await.expect("start dockerd");
        dockerd
            .load_image(&image)
            .await
            .expect("load the test image");
        let addr = dockerd.addr();
        // `sleep` as a container's init ignores SIGTERM: a plain shutdown
        // would wait out its 10 s stop timeout.
        let id = docker(
            &addr,
            &["run", "-d", "--network", "none", &image, "sleep", "300"],
        )
        .await;
        let container_pid: u32 = docker(&addr, &["inspect", "-f", "{{.State.Pid}}", &id])
            .await
            .parse()
            .expect("a pid");
        let spec = dockerd.spec.clone();

        let started = std::time::Instant::now();
        drop(dockerd);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "drop took {:?}",
            started.elapsed()
        );
        assert!(!is_alive(container_pid));
        assert!(shim_pids(&spec.containerd_socket()).is_empty());
        assert!(mounts_under(&spec.dir).is_empty());
        assert!(!spec.dir.exists());
        for root in cgroup_mounts() {
            assert!(!root.join(&spec.cgroup_parent).exists());
        }
    }

    #[tokio::test]
    async fn loading_a_missing_image_is_a_clear_error() {
        let dockerd = DockerdProcess::start("noimage")
            .await
            .expect("start dockerd");
        let err = dockerd
            .load_image("citadel-test/does-not-exist:0")
            .await
            .expect_err("no such image");
        match &err {
            DockerdProcessError::LoadImage { image, stderr, .. } => {
                assert_eq!(image, "citadel-test/does-not-exist:0");
                assert!(!stderr.is_empty(), "{err}");
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
}
