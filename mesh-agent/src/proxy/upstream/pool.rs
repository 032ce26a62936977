//! HTTP/1.1 upstream connections, kept per endpoint (plaintext or TLS) for
//! reuse, with the cluster's limits from `connectionPool`: the TCP connect
//! timeout, the HTTP idle timeout, the requests one connection may carry,
//! and how long it may live (`tcp.maxConnectionDuration`: past it, a
//! connection is not reused; the request it carries finishes). A connection goes back to its pool when its response is done
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
    /// `connectionPool.tcp.maxConnectionDuration` (None: unlimited).
    pub max_duration: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_requests: None,
            max_duration: None,
        }
    }
}

/// What one connection has done so far: the requests it has carried and
/// when it was opened. A fresh connection starts with
/// [`Lease::default`]; each request takes [`Lease::next`].
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub served: u32,
    opened: Instant,
}

impl Default for Lease {
    fn default() -> Self {
        Self { served: 0, opened: Instant::now() }
    }
}

impl Lease {
    /// The lease with one more request carried.
    pub fn next(self) -> Self {
        Self { served: self.served + 1, ..self }
    }

    /// Whether the connection may carry no new request, by its age.
    fn expired(&self, max_duration: Option<Duration>, now: Instant) -> bool {
        max_duration.is_some_and(|max| now.duration_since(self.opened) >= max)
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
    max_duration: Option<Duration>,
    lease: Lease,
}

impl<C: Reusable> Idle<C> {
    /// Closed, idle too long, or too old: never to be used again.
    fn is_spent(&self, now: Instant) -> bool {
        self.connection.is_closed()
            || now.duration_since(self.since) >= self.idle_timeout
            || self.lease.expired(self.max_duration, now)
    }
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
    /// with its lease. Closed, idle-expired and too old ones go; one not
    /// ready yet stays for a later checkout.
    pub fn checkout(&self, key: Key) -> Option<(C, Lease)> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&key)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let candidate = &list[i];
            if candidate.is_spent(now) {
                list.swap_remove(i);
            } else if candidate.connection.is_ready() {
                let idle = list.swap_remove(i);
                return Some((idle.connection, idle.lease));
            }
        }
        None
    }

    /// Puts a connection back, unless it is closed or past
    /// `limits.max_duration` (dropping it closes it).
    pub fn checkin(self: &Arc<Self>, key: Key, connection: C, lease: Lease, limits: &ConnectionLimits) {
        let idle = Idle {
            connection,
            since: Instant::now(),
            idle_timeout: limits.idle_timeout,
            max_duration: limits.max_duration,
            lease,
        };
        if idle.is_spent(idle.since) {
            return;
        }
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
                let now = Instant::now();
                lock(&pool.idle).retain(|_, list| {
                    list.retain(|idle| !idle.is_spent(now));
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
    lease: Lease,
    limits: ConnectionLimits,
}

impl<C: Reusable> ReturnTo<C> {
    pub fn new(pool: &Arc<IdlePool<C>>, key: Key, lease: Lease, limits: ConnectionLimits) -> Self {
        Self { pool: Arc::downgrade(pool), key, lease, limits }
    }

    /// Puts the connection back, unless the pool is gone.
    pub fn give_back(self, connection: C) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.key, connection, self.lease, &self.limits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that is always open and ready.
    struct Open;

    impl Reusable for Open {
        fn is_closed(&self) -> bool {
            false
        }

        fn is_ready(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn a_connection_past_its_maximum_duration_is_not_reused() {
        let pool = Arc::new(IdlePool::<Open>::default());
        let key: Key = ("10.0.0.1:80".parse().unwrap(), 0);
        let limits = ConnectionLimits { max_duration: Some(Duration::from_secs(60)), ..Default::default() };
        let young = Lease::default().next();
        pool.checkin(key, Open, young, &limits);
        let (_, lease) = pool.checkout(key).expect("young enough");
        assert_eq!(lease.served, 1);

        let opened = Instant::now().checked_sub(Duration::from_secs(61)).expect("the clock is past a minute");
        let old = Lease { served: 3, opened };
        pool.checkin(key, Open, old, &limits);
        assert!(pool.checkout(key).is_none(), "too old to go back in the pool");
        pool.checkin(key, Open, old, &ConnectionLimits::default());
        let aged = Lease { opened: opened - Duration::from_secs(1), ..old };
        assert!(!aged.expired(None, Instant::now()), "no maximum, no expiry");
        assert!(aged.expired(Some(Duration::from_secs(60)), Instant::now()));
        // Kept without a maximum; a later checkout under one is a new pool
        // entry's business, so this one is served.
        assert_eq!(pool.checkout(key).map(|(_, lease)| lease.served), Some(3));
    }
}
