//! mesh-agent: the per-node half of a kernel-accelerated service mesh.
//!
//! Data spine: a source ([`source`]: a directory of YAML, or the API server
//! through [`k8s`]) → the validated model and the compiled snapshot (the
//! `mesh-core` crate: pure, no IO) → the kernel maps, written by diff
//! ([`dataplane`]) and the L7 [`proxy`]; [`agent`] runs the reload loop
//! that joins them, and [`admin`] serves what the kernel holds and counts.
//!
//! Layers, each importing only from itself and the ones below (checked by
//! `cargo xtask layers`, part of `cargo xtask test`):
//!
//! 0. `mesh-core` (its own crate), [`sync`] and [`memory`];
//! 1. [`source`], [`k8s`], [`dns`] (the resolver of DNS ServiceEntries),
//!    [`workloads`] (pod cgroups), [`state`] (the last good configuration
//!    kept on the node), [`dataplane`], [`proxy`];
//! 2. [`agent`], [`handover`] (listeners passed to a successor agent);
//! 3. [`report`], [`admin`]; then the binaries.

pub mod admin;
pub mod agent;
pub mod dataplane;
pub mod dns;
pub mod handover;
pub mod k8s;
pub mod memory;
pub mod proxy;
pub mod report;
pub mod source;
pub mod state;
pub mod sync;
pub mod workloads;
