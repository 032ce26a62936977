//! mesh-agent: the per-node half of a kernel-accelerated service mesh.
//!
//! Data spine: [`source`] (a directory of Kubernetes YAML, or the API server
//! through [`k8s`]) → [`model`]
//! (validated, with last-good fallback) → [`snapshot`] (the exact kernel map
//! contents) → [`dataplane`] (map writes by [`diff`]); [`admin`] serves what
//! the kernel holds and counts.

pub mod admin;
pub mod agent;
pub mod dataplane;
pub mod diff;
pub mod k8s;
pub mod maglev;
pub mod model;
pub mod policy;
pub mod proxy;
pub mod resources;
pub mod route;
pub mod snapshot;
pub mod source;
pub mod status;

/// Locks a mutex whose holder may have panicked: the data is still the
/// last consistent state the agent wrote (every writer keeps it so).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Default admin address (Envoy's admin port).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";
