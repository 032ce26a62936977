//! What the agent's readers (the proxy, the admin API, the status writer)
//! see of the configuration: a whole snapshot and how the last reload went,
//! replaced whole by the one writer.

use crate::snapshot::Snapshot;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Replaced whole on every reload.
#[derive(Debug, Default)]
pub struct Published {
    /// What the kernel maps hold.
    pub snapshot: Arc<Snapshot>,
    /// The first snapshot is in the maps.
    pub ready: bool,
    pub reloads: u64,
    pub last_reload: Option<ReloadStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    pub duration_micros: u64,
    /// Set when the reload could not be applied at all (the previous
    /// snapshot keeps serving).
    pub error: Option<String>,
    pub map_upserts: usize,
    pub map_deletes: usize,
}
