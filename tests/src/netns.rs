//! Entering a test's network namespaces.

use crate::sys;
use anyhow::{Context, Result};
use std::path::Path;

/// Runs `f` on a fresh thread inside the network namespace at `netns` (the
/// calling thread never changes namespace). Sockets made there keep it.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            sys::setns_net(netns).with_context(|| format!("setns {}", netns.display()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
