//! Backend servers that run as threads of the test process.
//!
//! The sockets are created by a thread inside the pod's network namespace
//! and keep that namespace; the serving threads themselves can live anywhere.
//! Being sockets of the test process, they are not in the test cgroup, like
//! real backends in other pods.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::sync::lock;
use crate::sys;

/// How often serving loops look at their stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const BACKLOG: i32 = 4096;
const CONN_STACK: usize = 128 * 1024;

/// What a TCP server speaks on each connection.
#[derive(Clone, Copy)]
pub(crate) enum TcpProto {
    /// Answers every line with `<pod name>\n` until EOF.
    Lines,
    /// HTTP/1.1 with keep-alive; the body is the pod name.
    Http,
}

/// A running backend server. Stops when dropped (or when its `TestEnv` drops).
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    addrs: Vec<SocketAddr>,
    stop: AtomicBool,
    accepted: AtomicU64,
    live: AtomicU64,
    /// HTTP requests answered.
    requests: AtomicU64,
    /// Per `/fail-first/<n>/<key>` key: how many times it was asked.
    failures: Mutex<HashMap<String, u64>>,
    /// Clones of the open connections, so stopping can shut them down and
    /// wake the threads blocked reading them.
    conns: Mutex<HashMap<u64, TcpStream>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Connections accepted so far (TCP), or datagrams received (UDP).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// HTTP requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections open right now (always 0 for UDP).
    pub fn live(&self) -> u64 {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// The addresses the server listens on (the pod's IPv4 and IPv6).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.shared.addrs
    }

    /// Stops serving and closes all connections; idempotent.
    pub fn stop(&self) {
        self.shared.stop();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn new(addrs: Vec<SocketAddr>) -> Arc<Shared> {
        Arc::new(Shared {
            addrs,
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            live: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            thread: Mutex::new(None),
        })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // The serving thread sees the flag within POLL_INTERVAL and closes
        // its connections before it returns.
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
    }
}

/// Servers of one `TestEnv`, stopped when it drops (their sockets would
/// otherwise keep the pod namespaces alive).
#[derive(Default)]
pub(crate) struct Registry {
    servers: Mutex<Vec<Weak<Shared>>>,
}

impl Registry {
    fn register(&self, shared: &Arc<Shared>) {
        let mut servers = lock(&self.servers);
        servers.retain(|s| s.strong_count() > 0);
        servers.push(Arc::downgrade(shared));
    }

    pub fn stop_all(&self) {
        let servers: Vec<_> = lock(&self.servers).drain(..).collect();
        for server in servers.iter().filter_map(Weak::upgrade) {
            server.stop();
        }
    }
}

/// Starts a TCP server on `addrs`, sockets created inside `netns`.
pub(crate) fn start_tcp(
    registry: &Registry,
    netns: &Path,
    addrs: Vec<SocketAddr>,
    reply: &str,
    proto: TcpProto,
) -> Result<Server> {
    let listeners = crate::netns::in_netns(netns, || -> io::Result<Vec<TcpListener>> {
        addrs.iter().map(|a| sys::tcp_listener(*a, BACKLOG)).collect()
    })?
    .with_context(|| format!("listening on {addrs:?}"))?;
    for l in &listeners {
        l.set_nonblocking(true)?;
    }
    let shared = Shared::new(addrs);
    let reply: Arc<str> = Arc::from(reply);
    let loop_shared = shared.clone();
    let handle = thread::Builder::new()
        .name("mesh-tcp-server".into())
        .spawn(move || accept_loop(&listeners, &loop_shared, &reply, proto))?;
    Ok(finish(registry, shared, handle))
}

/// Starts a UDP server on `addrs`, sockets created inside `netns`.
pub(crate) fn start_udp(registry: &Registry, netns: &Path, addrs: Vec<SocketAddr>, reply: &str) -> Result<Server> {
    let sockets = crate::netns::in_netns(netns, || -> io::Result<Vec<UdpSocket>> {
        addrs.iter().map(UdpSocket::bind).collect()
    })?
    .with_context(|| format!("binding UDP {addrs:?}"))?;
    for s in &sockets {
        s.set_nonblocking(true)?;
    }
    let shared = Shared::new(addrs);
    let reply = reply.as_bytes().to_vec();
    let loop_shared = shared.clone();
    let handle = thread::Builder::new()
        .name("mesh-udp-server".into())
        .spawn(move || udp_loop(&sockets, &loop_shared, &reply))?;
    Ok(finish(registry, shared, handle))
}

fn finish(registry: &Registry, shared: Arc<Shared>, handle: JoinHandle<()>) -> Server {
    *lock(&shared.thread) = Some(handle);
    registry.register(&shared);
    Server { shared }
}

fn accept_loop(listeners: &[TcpListener], shared: &Arc<Shared>, reply: &Arc<str>, proto: TcpProto) {
    let fds: Vec<_> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let workers = Workers::new();
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(ready) = sys::poll_readable(&fds, POLL_INTERVAL) else {
            break;
        };
        for i in ready {
            // Drain the accept queue: a burst of connects should not wait a
            // poll round per connection.
            while let Ok((stream, _)) = listeners[i].accept() {
                next_id += 1;
                if let Err(e) = start_conn(&workers, shared, next_id, stream, reply.clone(), proto) {
                    eprintln!("mesh-tests: server connection: {e}");
                }
            }
        }
    }
    close_all(shared);
    // Dropping `workers` ends the idle worker threads.
}

fn start_conn(
    workers: &Workers,
    shared: &Arc<Shared>,
    id: u64,
    stream: TcpStream,
    reply: Arc<str>,
    proto: TcpProto,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // Registered by the accept thread itself before a worker runs it, so
    // close_all (run by the same thread) cannot miss a connection.
    lock(&shared.conns).insert(id, stream.try_clone()?);
    shared.accepted.fetch_add(1, Ordering::SeqCst);
    shared.live.fetch_add(1, Ordering::SeqCst);
    let conn_shared = shared.clone();
    let started = workers.run(Box::new(move || {
        let _ = match proto {
            TcpProto::Lines => serve_lines(stream, reply.as_bytes()),
            TcpProto::Http => serve_http(stream, reply.as_bytes(), &conn_shared),
        };
        conn_done(&conn_shared, id);
    }));
    if started.is_err() {
        conn_done(shared, id);
    }
    started
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that serve one connection at a time, reused when idle: spawning
/// a thread per connection doubled the cost of a short connection, while
/// held connections still each get their own thread.
struct Workers {
    /// Workers waiting for a job and not yet promised one.
    idle: Arc<AtomicUsize>,
    jobs: mpsc::Sender<Job>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
}

impl Workers {
    fn new() -> Workers {
        let (jobs, queue) = mpsc::channel();
        Workers { idle: Arc::default(), jobs, queue: Arc::new(Mutex::new(queue)) }
    }

    fn run(&self, job: Job) -> io::Result<()> {
        // Claiming an idle worker before sending means every queued job has
        // a waiting worker, so a job never waits behind held connections.
        if self.idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.jobs.send(job).expect("the queue lives as long as Workers");
            return Ok(());
        }
        let (idle, queue) = (self.idle.clone(), self.queue.clone());
        thread::Builder::new().name("mesh-conn".into()).stack_size(CONN_STACK).spawn(move || {
            job();
            loop {
                idle.fetch_add(1, Ordering::SeqCst);
                // Err once Workers (the only sender) is dropped.
                let Ok(job) = lock(&queue).recv() else { return };
                job();
            }
        })?;
        Ok(())
    }
}

fn conn_done(shared: &Shared, id: u64) {
    lock(&shared.conns).remove(&id);
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

/// Shuts down every open connection and waits (briefly) for the handler
/// threads to notice.
fn close_all(shared: &Shared) {
    for stream in lock(&shared.conns).values() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    crate::sync::wait_until(Duration::from_secs(2), || shared.live.load(Ordering::SeqCst) == 0);
}

fn serve_lines(stream: TcpStream, name: &[u8]) -> io::Result<()> {
    let mut reply = name.to_vec();
    reply.push(b'\n');
    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        (&stream).write_all(&reply)?;
    }
}

/// An HTTP/1.1 keep-alive backend whose body is the pod name. It echoes
/// what the proxy sent (`x-seen-*` headers) and behaves by path:
/// `/status/<code>` answers that code, `/delay/<ms>` answers after a pause,
/// `/fail-first/<n>/<key>` answers 503 to the first n requests for a key,
/// `/shadow-delay/<ms>` pauses mirrored requests only; a request with
/// `x-test-fail-pod: <this pod>` gets 503; `/upgrade` switches to an echo
/// protocol (101).
fn serve_http(stream: TcpStream, body: &[u8], shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(&stream);
    while let Some(request) = read_http_head(&mut reader)? {
        io::copy(&mut (&mut reader).take(request.content_length), &mut io::sink())?;
        if request.path == "/upgrade" {
            // Switch to an echo protocol: whatever comes next comes back.
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nx-backend: {}\r\n\r\n",
                String::from_utf8_lossy(body)
            );
            (&stream).write_all(head.as_bytes())?;
            shared.requests.fetch_add(1, Ordering::SeqCst);
            return io::copy(&mut reader, &mut (&stream)).map(|_| ());
        }
        let status = behave(&request, &String::from_utf8_lossy(body), shared);
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let connection = if request.close { "Connection: close\r\n" } else { "" };
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}x-backend: {}\r\nx-seen-path: {}\r\n",
            if status == 200 { "OK" } else { "Status" },
            body.len(),
            String::from_utf8_lossy(body),
            request.path,
        );
        for (name, value) in &request.echo {
            head.push_str(&format!("x-seen-{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        (&stream).write_all(&[head.as_bytes(), body].concat())?;
        if request.close {
            break;
        }
    }
    Ok(())
}

/// The status a path asks for (sleeping first for `/delay/<ms>`, and for
/// `/shadow-delay/<ms>` only when the request is a mirror's: its Host ends
/// in `-shadow`).
fn behave(request: &HttpRequest, pod: &str, shared: &Shared) -> u16 {
    let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let header = |wanted: &str| request.echo.iter().find(|(name, _)| name == wanted).map(|(_, v)| v.as_str());
    let host = header("host").unwrap_or("");
    // `x-test-fail-pod: <name>`: that pod answers 503, the others serve.
    if header("x-test-fail-pod") == Some(pod) {
        return 503;
    }
    match parts.as_slice() {
        ["shadow-delay", ms, ..] => {
            if host.split(':').next().unwrap_or("").ends_with("-shadow") {
                thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            }
            200
        }
        ["status", code, ..] => code.parse().unwrap_or(200),
        ["delay", ms, ..] => {
            thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            200
        }
        ["fail-first", n, key, ..] => {
            let mut failures = lock(&shared.failures);
            let seen = failures.entry((*key).to_owned()).or_default();
            *seen += 1;
            if *seen <= n.parse().unwrap_or(0) {
                503
            } else {
                200
            }
        }
        _ => 200,
    }
}

/// A request head as the test servers read it.
pub struct HttpRequest {
    pub path: String,
    pub content_length: u64,
    /// The client asked to close after this response (or speaks HTTP/1.0).
    pub close: bool,
    /// Request headers echoed back: host, request id, attempt count and
    /// every `x-test-*` header.
    pub echo: Vec<(String, String)>,
}

/// Reads a request head; `None` on a clean EOF between requests.
pub fn read_http_head(reader: &mut impl BufRead) -> io::Result<Option<HttpRequest>> {
    let mut request = HttpRequest { path: String::new(), content_length: 0, close: false, echo: Vec::new() };
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return if first { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        let trimmed = line.trim_end();
        if first {
            // HTTP/1.0 closes after one response unless asked otherwise;
            // not worth tracking keep-alive for it.
            request.close = trimmed.ends_with("HTTP/1.0");
            request.path = trimmed.split_whitespace().nth(1).unwrap_or("/").to_owned();
            first = false;
            continue;
        }
        if trimmed.is_empty() {
            return Ok(Some(request));
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                request.content_length = value.parse().unwrap_or(0);
            } else if name == "connection" && value.eq_ignore_ascii_case("close") {
                request.close = true;
            }
            if matches!(name.as_str(), "host" | "x-request-id" | "x-envoy-attempt-count") || name.starts_with("x-test-")
            {
                request.echo.push((name, value.to_owned()));
            }
        }
    }
}

fn udp_loop(sockets: &[UdpSocket], shared: &Shared, reply: &[u8]) {
    let fds: Vec<_> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let mut buf = [0u8; 2048];
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(ready) = sys::poll_readable(&fds, POLL_INTERVAL) else {
            break;
        };
        for i in ready {
            while let Ok((_, from)) = sockets[i].recv_from(&mut buf) {
                // Counted before replying: a client that has its reply must
                // already see the count.
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = sockets[i].send_to(reply, from);
            }
        }
    }
}
