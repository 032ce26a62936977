//! What a source owes the reload loop: whole batches on demand.

use mesh_core::object::SourceBatch;
use std::path::PathBuf;
use std::time::Duration;

/// How often a source is polled: changes apply within a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading config directory {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
}

/// Where the configuration comes from.
pub trait ConfigSource: Send {
    /// What changed since the last call, as a whole batch; `Ok(None)` when
    /// nothing did, or before the source's first complete sync.
    fn poll(&mut self) -> Result<Option<SourceBatch>, SourceError>;

    /// Waits up to `timeout` for something to poll; true when woken by a
    /// change before it. A source that cannot tell (a directory, polled)
    /// just waits.
    fn wait(&mut self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }

    /// How many changes the source has seen so far (a count that only
    /// grows; 0 for a source that cannot tell): still growing while the
    /// reload loop gathers a burst means the burst goes on.
    fn changes_seen(&self) -> u64 {
        0
    }
}
