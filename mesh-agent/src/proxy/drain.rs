//! Graceful shutdown of the proxy ([`Drain`]): on SIGTERM the listeners
//! stop accepting, each connection finishes the request it is serving and
//! then closes (HTTP/1.1 with `Connection: close` on that response, HTTP/2
//! with GOAWAY), and the agent waits until none is left or the drain
//! timeout passes. An idle HTTP/1.1 keep-alive connection stays open for
//! its next request (closing it would race a request already on its way)
//! and is closed when the drain ends, as Envoy's drain does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The drain signal and the count of open client connections.
pub struct Drain {
    signal: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { signal: watch::channel(false).0, open: Arc::default(), idle: Arc::default() }
    }
}

/// A connection's hold on the drain: counted open until dropped, and told
/// when to finish.
pub struct Held {
    signal: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl Drain {
    /// Counts a connection open for as long as the returned value lives.
    pub fn hold(&self) -> Held {
        self.open.fetch_add(1, Ordering::SeqCst);
        Held { signal: self.signal.subscribe(), open: self.open.clone(), idle: self.idle.clone() }
    }

    /// A receiver of the signal, for accept loops.
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// Tells every listener and connection to finish.
    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    /// Open client connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open, or `timeout`; true when drained.
    pub async fn finished(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

impl Held {
    /// Whether the proxy is draining.
    pub fn draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once the proxy starts draining.
    pub async fn started(&mut self) {
        draining(&mut self.signal).await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Resolves once `signal` says drain (never, if its sender is gone first).
pub async fn draining(signal: &mut watch::Receiver<bool>) {
    if signal.wait_for(|draining| *draining).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finished_waits_for_the_last_connection() {
        let drain = Drain::default();
        let held = drain.hold();
        assert!(!held.draining());
        drain.start();
        assert!(held.draining());
        assert!(!drain.finished(Duration::from_millis(20)).await, "one is still open");
        let waiting = tokio::spawn(async move { drain.finished(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiting.await.unwrap(), "drained once it closed");
    }
}
