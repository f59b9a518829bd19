//! citadel: a Docker container scheduler whose registry is etcd.
//!
//! The modules read top-down as the data flow: a request key lands in etcd ([`keys`]), is parsed
//! into the [`model`], mirrored by the watch-fed [`cache`], sorted into work by the ledger the
//! [`manager`] keeps on that mirror, turned into a plan by a pure [`scheduler`], verified and
//! committed by the leader's [`manager`] in fenced batch transactions (leadership from
//! [`election`]), and read back as a decision key. [`controller`] ties one replica together;
//! [`cli`] is the command line. docs/architecture.md names the file of every stage.

pub mod agent;
pub mod bench;
pub mod cache;
pub mod cause;
pub mod cli;
pub mod controller;
pub mod dispatch;
pub mod docker;
pub mod election;
pub mod http;
pub mod invariants;
pub mod keys;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod profile;
pub mod rbac;
pub mod runner;
pub mod scheduler;
pub mod shutdown;
pub mod store;
