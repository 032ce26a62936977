//! Waiting for state, and locks that a panicking test leaves usable.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns
/// its last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Locks, ignoring poison: a panicking test must still be cleaned up.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
