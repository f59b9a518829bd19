//! The machinery citadel's tests (and its benchmark's own etcd) run on: real etcd members and
//! extra Docker daemons as child processes, with one lifecycle ([`child::ChildProcess`]).
//! None of it ships in citadel's library.

pub mod child;
pub mod dockerd;
pub mod etcd;
