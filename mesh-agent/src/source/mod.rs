//! Where the configuration comes from: a directory of YAML ([`files`]) or
//! the API server ([`crate::k8s::KubeSource`]). Both decode objects with
//! `mesh_core::decode`, so they feed the model identically, and both are
//! polled by the reload loop through [`ConfigSource`].

mod contract;
mod files;

pub use contract::{ConfigSource, SourceError, POLL_INTERVAL};
pub use files::FileSource;
