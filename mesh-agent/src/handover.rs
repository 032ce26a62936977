//! Listener handover between the running agent of a node and its successor
//! (an upgrade, a restart), so that no connection is refused in between:
//! the listening sockets themselves move (`SCM_RIGHTS` over a Unix socket
//! beside the instance lock), as HAProxy's and Envoy's hot restarts do.
//!
//! The exchange, one line each way at a time:
//! 1. the successor connects and says `take`;
//! 2. the running agent sends its listeners' addresses (JSON) with their
//!    descriptors, stops writing the maps and lets the instance lock go,
//!    then says `released`;
//! 3. the successor takes the lock, loads, serves on the same sockets, and
//!    says `serving` (or closes: it failed);
//! 4. the old agent drains, and waits to be stopped.
//!
//! Both accept on the shared sockets between 2 and 4, so connections queue
//! on them and none is refused; the kernel's proxy-listener map keeps
//! pointing at the same sockets throughout.

use sendfd::{RecvWithFd, SendWithFd};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most listeners an agent hands over (proxy v4/v6, admin, health).
const MAX_LISTENERS: usize = 8;
/// How long the successor waits for the running agent to let the lock go.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("handover with the running agent: {0}")]
    Exchange(#[source] std::io::Error),
    #[error("handover with the running agent: it sent {0:?}")]
    Protocol(String),
    #[error("handover: the listener list: {0}")]
    Listeners(#[from] serde_json::Error),
}

/// The handover socket of the instance pinned at `bpffs`.
pub fn socket_path(bpffs: &Path) -> PathBuf {
    crate::dataplane::instance_file(bpffs, "handover")
}

/// What the successor got from the agent it replaces.
pub struct Inherited {
    listeners: HashMap<SocketAddr, std::net::TcpListener>,
    old: UnixStream,
}

/// As the successor: takes the listeners over from the agent running at
/// `path`, and returns once it has let the instance lock go. None when no
/// agent answers there (the first start on the node).
pub fn take_over(path: &Path) -> Result<Option<Inherited>, HandoverError> {
    let mut old = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(source) => return Err(HandoverError::Socket { path: path.to_owned(), source }),
    };
    old.set_read_timeout(Some(RELEASE_TIMEOUT)).map_err(HandoverError::Exchange)?;
    old.write_all(b"take\n").map_err(HandoverError::Exchange)?;
    let mut bytes = [0u8; 4096];
    let mut raw = [0 as std::os::fd::RawFd; MAX_LISTENERS];
    let (length, count) = old.recv_with_fd(&mut bytes, &mut raw).map_err(HandoverError::Exchange)?;
    // Owned at once, so they close if anything below fails.
    // SAFETY: the kernel just installed these descriptors in this process.
    let fds: Vec<OwnedFd> = raw[..count].iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    let text = std::str::from_utf8(&bytes[..length]).map_err(|_| HandoverError::Protocol("non-UTF-8".into()))?;
    let addrs: Vec<SocketAddr> = serde_json::from_str(text.trim_end())?;
    if addrs.len() != fds.len() {
        return Err(HandoverError::Protocol(format!("{} addresses with {} descriptors", addrs.len(), fds.len())));
    }
    let listeners = addrs.into_iter().zip(fds).map(|(addr, fd)| (addr, std::net::TcpListener::from(fd))).collect();
    expect_line(&old, "released")?;
    Ok(Some(Inherited { listeners, old }))
}

impl Inherited {
    /// The inherited listener on `addr`, for the runtime of the caller.
    pub fn take(&mut self, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
        let listener = self.listeners.remove(&addr)?;
        listener.set_nonblocking(true).ok()?;
        tokio::net::TcpListener::from_std(listener).ok()
    }

    /// Tells the old agent this one serves: it drains, and waits to be stopped.
    pub fn serving(mut self) {
        for addr in self.listeners.keys() {
            tracing::warn!(%addr, "an inherited listener is no longer wanted; closing it");
        }
        if let Err(error) = self.old.write_all(b"serving\n") {
            tracing::warn!(%error, "the agent handed over from is gone");
        }
    }
}

/// The running agent's side: offers its listeners to a successor.
pub struct Offer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// The socket file bound at `path`, removed at drop if still there.
    inode: Option<(u64, u64)>,
    /// Copies of the listening descriptors: handed over as they are.
    listeners: Vec<(SocketAddr, OwnedFd)>,
}

impl Offer {
    /// Listens at `path` (replacing what a predecessor left there) to hand
    /// `listeners` over. The copies are held until the offer drops.
    pub fn new(path: &Path, listeners: &[&tokio::net::TcpListener]) -> Result<Offer, HandoverError> {
        let error = |source| HandoverError::Socket { path: path.to_owned(), source };
        let copies = listeners
            .iter()
            .map(|listener| Ok((listener.local_addr()?, listener.as_fd().try_clone_to_owned()?)))
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(error)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(error)?;
        let inode = std::fs::metadata(path).ok().map(|file| (file.dev(), file.ino()));
        Ok(Offer { listener, path: path.to_owned(), inode, listeners: copies })
    }

    /// Waits for a successor that asks, and sends it the listeners.
    pub async fn successor(&self) -> Successor {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "handover accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let listeners: Vec<(SocketAddr, OwnedFd)> =
                self.listeners.iter().filter_map(|(addr, fd)| Some((*addr, fd.try_clone().ok()?))).collect();
            let sent = tokio::task::spawn_blocking(move || send_listeners(stream, &listeners)).await;
            match sent {
                Ok(Ok(successor)) => return successor,
                Ok(Err(error)) => tracing::warn!(%error, "a handover that did not complete"),
                Err(error) => tracing::warn!(%error, "the handover task failed"),
            }
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        // Only our own socket file: a successor may have bound its own there.
        let now = std::fs::metadata(&self.path).ok().map(|file| (file.dev(), file.ino()));
        if now.is_some() && now == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The successor, once it has the listeners.
pub struct Successor {
    stream: UnixStream,
}

impl Successor {
    /// Says the lock is free: the successor goes on loading.
    pub fn released(&mut self) -> Result<(), HandoverError> {
        self.stream.write_all(b"released\n").map_err(HandoverError::Exchange)
    }

    /// Waits until the successor serves; an error when it is gone, or
    /// takes longer than `timeout`.
    pub async fn serving(self, timeout: Duration) -> Result<(), HandoverError> {
        let stream = self.stream;
        let waited = tokio::task::spawn_blocking(move || {
            stream.set_read_timeout(Some(timeout)).map_err(HandoverError::Exchange)?;
            expect_line(&stream, "serving")
        });
        waited.await.map_err(|error| HandoverError::Exchange(std::io::Error::other(error)))?
    }
}

fn send_listeners(
    stream: tokio::net::UnixStream,
    listeners: &[(SocketAddr, OwnedFd)],
) -> Result<Successor, HandoverError> {
    let stream = stream.into_std().map_err(HandoverError::Exchange)?;
    stream.set_nonblocking(false).map_err(HandoverError::Exchange)?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(HandoverError::Exchange)?;
    expect_line(&stream, "take")?;
    let addrs: Vec<SocketAddr> = listeners.iter().map(|(addr, _)| *addr).collect();
    let mut message = serde_json::to_vec(&addrs)?;
    message.push(b'\n');
    let fds: Vec<_> = listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    stream.send_with_fd(&message, &fds).map_err(HandoverError::Exchange)?;
    Ok(Successor { stream })
}

/// Reads one line from `stream`, a byte at a time (a buffered reader
/// would swallow what follows), and checks it.
fn expect_line(mut stream: &UnixStream, expected: &str) -> Result<(), HandoverError> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).map_err(HandoverError::Exchange)? == 1 && byte[0] != b'\n' && line.len() < 64 {
        line.push(byte[0]);
    }
    if line != expected.as_bytes() {
        return Err(HandoverError::Protocol(String::from_utf8_lossy(&line).into_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_move_to_the_successor_and_keep_their_queued_connections() {
        let dir = std::env::temp_dir().join(format!("mesh-handover-test-{}", std::process::id()));
        let path = dir.join("agent.handover");
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let offer = Offer::new(&path, &[&proxy]).unwrap();
        assert!(take_over(&dir.join("nobody.handover")).unwrap().is_none(), "nobody to take over from");

        // A connection queued before the handover is accepted after it.
        let queued = std::net::TcpStream::connect(addr).unwrap();
        let successor_path = path.clone();
        let successor = std::thread::spawn(move || take_over(&successor_path).unwrap().expect("an agent answers"));
        let mut old = offer.successor().await;
        old.released().unwrap();
        let mut inherited = tokio::task::spawn_blocking(move || successor.join().unwrap()).await.unwrap();
        drop(proxy);
        drop(offer);
        let listener = inherited.take(addr).expect("the proxy listener was handed over");
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), queued.local_addr().unwrap());
        inherited.serving();
        old.serving(Duration::from_secs(5)).await.expect("the successor said it serves");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_successor_that_dies_before_serving_is_told_apart() {
        let dir = std::env::temp_dir().join(format!("mesh-handover-gone-{}", std::process::id()));
        let path = dir.join("agent.handover");
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let offer = Offer::new(&path, &[&proxy]).unwrap();
        let successor_path = path.clone();
        let successor = std::thread::spawn(move || take_over(&successor_path).unwrap().expect("an agent answers"));
        let mut old = offer.successor().await;
        old.released().unwrap();
        // It took the listeners, then went away without serving.
        drop(tokio::task::spawn_blocking(move || successor.join().unwrap()).await.unwrap());
        assert!(old.serving(Duration::from_secs(5)).await.is_err(), "gone is not serving");
        drop(offer);
        assert!(!path.exists(), "the offer's socket file goes with it");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
