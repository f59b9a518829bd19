//! The machinery only citadel's tests run, as child processes they own:
//!
//! - [`etcd`]: etcd members beyond the one `citadel bench` starts for itself. A single member
//!   that serves TLS, demands client certificates, and is killed, paused and restarted on its
//!   data; and clusters of several members. Both build on the product's own starter
//!   (`citadel::bench::etcd`) rather than a copy of it.
//! - [`dockerd`]: extra Docker daemons beside the system one, each an engine of its own.
//! - [`child`]: one lifecycle for every child process here: signals, pause and resume, a
//!   graceful stop, always reaped.
//!
//! None of it ships: citadel's library and binary do not depend on this crate; only its tests
//! (a dev-dependency) do.

pub mod child;
pub mod dockerd;
pub mod etcd;
