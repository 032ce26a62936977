//! Locking shared state whose every writer keeps it consistent.

/// Locks a mutex whose holder may have panicked: the data is still the
/// last consistent state the agent wrote (every writer keeps it so).
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
