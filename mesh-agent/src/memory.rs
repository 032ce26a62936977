//! Handing freed memory back to the system.
//!
//! mimalloc keeps the pages a thread freed for that thread to reuse, and
//! purges them (gives them back to the system) only when the thread next
//! allocates past a delay. The agent's big allocations are not like a
//! proxy's: a reload builds a model and snapshot of a whole cluster, a
//! watch decodes pages of a relist, and then those threads may sit idle
//! for a long time with tens of megabytes freed but still counted in the
//! RSS (10,000 services: 172 MB after the first load instead of 155).
//! So the reload thread hands back what it freed after a whole build, and
//! once changes stop (a poll interval without one); the runtime's thread
//! when it goes idle, at most once an [`IDLE_COLLECT_INTERVAL`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often an idle runtime thread collects at most: a busy proxy parks
/// thousands of times a second, and a collection walks the thread's pages.
pub const IDLE_COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// Gives what this thread freed back to the system. Nothing when mimalloc
/// is not the global allocator (the tests): its heaps are empty then.
pub fn return_freed() {
    // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own
    // heaps, and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// [`return_freed`] when a thread parks, at most once an interval (for
/// tokio's `on_thread_park`): the pages a busy proxy uses are not free,
/// and what it frees in a second it faults in again once.
#[derive(Debug)]
pub struct IdleCollector {
    start: Instant,
    /// Milliseconds after `start` of the last collection.
    last: AtomicU64,
}

impl Default for IdleCollector {
    fn default() -> Self {
        IdleCollector { start: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl IdleCollector {
    pub fn parked(&self) {
        if self.due(self.start.elapsed().as_millis() as u64) {
            return_freed();
        }
    }

    /// Whether a thread parking `now` (ms after `start`) collects: the
    /// first to park an interval after the last collection.
    fn due(&self, now: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= IDLE_COLLECT_INTERVAL.as_millis() as u64
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_thread_collects_at_most_once_an_interval() {
        let collector = IdleCollector::default();
        let interval = IDLE_COLLECT_INTERVAL.as_millis() as u64;
        let parks = [0, 10, interval, interval + 10, 2 * interval - 1, 2 * interval, 5 * interval];
        let collected: Vec<u64> = parks.into_iter().filter(|&at| collector.due(at)).collect();
        assert_eq!(collected, [interval, 2 * interval, 5 * interval]);
        collector.parked();
    }
}
