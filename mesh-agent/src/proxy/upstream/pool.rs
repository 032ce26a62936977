//! HTTP/1.1 upstream connections, kept per endpoint (plaintext or TLS) for
//! reuse, with the cluster's limits from `connectionPool`: the TCP connect
//! timeout, the HTTP idle timeout, and the requests one connection may
//! carry. A connection goes back to its pool when its response is done
//! with, and is taken out again only when it is ready for another request,
//! so a request never waits behind another one.
//!
//! Two clients share [`IdlePool`]: the direct one (`http1::client`) for
//! requests whose body is known, and hyper's ([`super::hyper_http1`]) for
//! the rest.

use crate::sync::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Istio's defaults: 10 s to connect, idle connections closed after an hour.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often idle connections past their timeout are closed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A cluster's limits on its upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `connectionPool.tcp.connectTimeout`.
    pub connect_timeout: Duration,
    /// `connectionPool.http.idleTimeout`.
    pub idle_timeout: Duration,
    /// `connectionPool.http.maxRequestsPerConnection` (None: unlimited).
    pub max_requests: Option<u32>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { connect_timeout: DEFAULT_CONNECT_TIMEOUT, idle_timeout: DEFAULT_IDLE_TIMEOUT, max_requests: None }
    }
}

/// (endpoint, TLS identity or 0 for plaintext).
pub type Key = (SocketAddr, u64);

/// A connection that can wait in an [`IdlePool`].
pub trait Reusable: Send + 'static {
    /// The peer closed it, or it broke: it can never carry a request again.
    fn is_closed(&self) -> bool;
    /// It can carry a request now (not still finishing the last one).
    fn is_ready(&self) -> bool;
}

struct Idle<C> {
    connection: C,
    since: Instant,
    idle_timeout: Duration,
    /// Requests the connection has carried.
    served: u32,
}

/// Idle upstream connections by endpoint and TLS identity. The newest is
/// taken first (its peer is the least likely to have closed it); those
/// past their idle timeout are closed once a second.
pub struct IdlePool<C> {
    idle: Mutex<HashMap<Key, Vec<Idle<C>>>>,
    sweeping: std::sync::atomic::AtomicBool,
}

impl<C> Default for IdlePool<C> {
    fn default() -> Self {
        Self { idle: Mutex::default(), sweeping: Default::default() }
    }
}

impl<C: Reusable> IdlePool<C> {
    /// The most recently returned connection that is ready for a request,
    /// with the requests it has carried. Closed and expired ones go; one
    /// not ready yet stays for a later checkout.
    pub fn checkout(&self, key: Key) -> Option<(C, u32)> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&key)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let candidate = &list[i];
            if candidate.connection.is_closed() || candidate.since.elapsed() >= candidate.idle_timeout {
                list.swap_remove(i);
            } else if candidate.connection.is_ready() {
                let idle = list.swap_remove(i);
                return Some((idle.connection, idle.served));
            }
        }
        None
    }

    /// Puts a connection back, unless it is closed.
    pub fn checkin(self: &Arc<Self>, key: Key, connection: C, served: u32, idle_timeout: Duration) {
        if connection.is_closed() {
            return;
        }
        let idle = Idle { connection, since: Instant::now(), idle_timeout, served };
        lock(&self.idle).entry(key).or_default().push(idle);
        self.start_sweeping();
    }

    /// Closes idle connections past their idle timeout, once a second.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(pool) = pool.upgrade() else { return };
                lock(&pool.idle).retain(|_, list| {
                    list.retain(|idle| !idle.connection.is_closed() && idle.since.elapsed() < idle.idle_timeout);
                    !list.is_empty()
                });
            }
        });
    }

    /// Idle connections per endpoint, added to `counts`, for status.
    pub fn count_idle(&self, counts: &mut HashMap<SocketAddr, usize>) {
        for ((endpoint, _), list) in lock(&self.idle).iter() {
            *counts.entry(*endpoint).or_default() += list.len();
        }
    }
}

/// Where a connection goes back to when its response is done, and what it
/// has carried so far.
pub struct ReturnTo<C> {
    pool: Weak<IdlePool<C>>,
    key: Key,
    served: u32,
    idle_timeout: Duration,
}

impl<C: Reusable> ReturnTo<C> {
    pub fn new(pool: &Arc<IdlePool<C>>, key: Key, served: u32, idle_timeout: Duration) -> Self {
        Self { pool: Arc::downgrade(pool), key, served, idle_timeout }
    }

    /// Puts the connection back, unless the pool is gone.
    pub fn give_back(self, connection: C) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.key, connection, self.served, self.idle_timeout);
        }
    }
}
