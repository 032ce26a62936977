//! The async backends' common frame: a thread of the test process with
//! its own single-threaded runtime, serving connections accepted on a
//! listener bound inside a pod's network namespace, until it is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};

/// A running backend thread; stops (and is joined) when dropped.
pub struct Background {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` inside `netns` and runs `serve(stream)` on a task of its
/// own for every connection accepted there.
pub(crate) fn spawn<S, F>(netns: &Path, addr: SocketAddr, serve: S) -> Result<Background>
where
    S: Fn(tokio::net::TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let listener = crate::netns::in_netns(netns, || std::net::TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        // Local tasks: a connection's future need not be Send.
        let tasks = tokio::task::LocalSet::new();
        tasks.block_on(&runtime, async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let accept = async {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    tokio::task::spawn_local(serve(stream));
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stopped => {}
            }
        });
    });
    Ok(Background { stop: Some(stop), thread: Some(thread) })
}
