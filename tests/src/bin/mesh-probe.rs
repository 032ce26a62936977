//! mesh-probe: the test client. Runs inside a test's cgroup and a pod's
//! network namespace and prints one JSON object on stdout.
//!
//! ```text
//! mesh-probe [--cgroup DIR] [--netns PATH] tcp  --target HOST:PORT [--count N] [--sources IP,..] [--requests-per-conn K] [--pace-micros U] [--progress-every N]
//! mesh-probe [--cgroup DIR] [--netns PATH] hold --target HOST:PORT [--count N]
//! mesh-probe [--cgroup DIR] [--netns PATH] http-hold --target HOST:PORT [--count N]
//! mesh-probe [--cgroup DIR] [--netns PATH] udp  --target HOST:PORT [--count N] [--connected]
//! mesh-probe [--cgroup DIR] [--netns PATH] serve-http --listen HOST:PORT --name NAME
//! mesh-probe [--cgroup DIR] [--netns PATH] raw  --target HOST:PORT --send TEXT [--then TEXT] [--half-close]
//! mesh-probe [--cgroup DIR] [--netns PATH] grpc --target HOST:PORT [--count N] [--mode ping-pong|client-stream|server-stream]
//! mesh-probe [--cgroup DIR] [--netns PATH] tls-keep --target HOST:PORT --sni NAME --ca PEM
//! mesh-probe [--cgroup DIR] [--netns PATH] exec PROGRAM [ARGS..]
//! mesh-probe [--cgroup DIR] [--netns PATH] exec-stream PROGRAM [ARGS..]
//! ```
//!
//! Errors are counted by errno name (`ECONNREFUSED`, `ENETUNREACH`, `EPERM`,
//! ...); a receive timeout is `EAGAIN`, a connect timeout `ETIMEDOUT`, a peer
//! that closes before replying `EOF`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mesh_tests::sys;
use serde_json::{json, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_READ_TIMEOUT: Duration = Duration::from_secs(5);
const UDP_RECV_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST: &[u8] = b"hello\n";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-probe: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let mut args = args.into_iter().peekable();
    let (mut cgroup, mut netns) = (None, None);
    while let Some(global) = args.next_if(|a| a == "--cgroup" || a == "--netns") {
        let value = args.next().ok_or_else(|| anyhow!("{global} needs a value"))?;
        if global == "--cgroup" {
            cgroup = Some(value)
        } else {
            netns = Some(value)
        }
    }
    // Cgroup first, then namespace, both while single-threaded and before any
    // socket exists: a socket takes its cgroup at creation. (setns into a
    // network namespace leaves mounts alone, so the cgroup tree stays
    // reachable either way; `ip netns exec` would hide it.)
    if let Some(dir) = cgroup {
        join_cgroup(&dir)?;
    }
    if let Some(path) = netns {
        sys::setns_net(Path::new(&path)).with_context(|| format!("setns {path}"))?;
    }
    let command = args.next().ok_or_else(|| anyhow!("missing subcommand (tcp, hold, udp)"))?;
    if command == "exec" {
        return exec(args.collect());
    }
    if command == "exec-stream" {
        // Becomes the program (in the cgroup and namespace joined above):
        // its output streams as it comes, for a test that watches it.
        let args: Vec<String> = args.collect();
        let (program, rest) = args.split_first().ok_or_else(|| anyhow!("exec-stream needs a program"))?;
        let error = std::os::unix::process::CommandExt::exec(std::process::Command::new(program).args(rest));
        return Err(error).with_context(|| format!("executing {program}"));
    }
    let opts = Opts::parse(args)?;
    match command.as_str() {
        "tcp" => tcp(&opts),
        "hold" => hold(&opts),
        "http-hold" => http_hold(&opts),
        "udp" => udp(&opts),
        "reconnect" => reconnect(&opts),
        "http" => http(&opts),
        "raw" => raw(&opts),
        "h2" => h2(&opts),
        "tls" => tls(&opts),
        "tls-keep" => tls_keep(&opts),
        "serve-http" => serve_http(&opts),
        "grpc" => grpc(&opts),
        other => bail!("unknown subcommand {other:?}"),
    }
}

fn join_cgroup(dir: &str) -> Result<()> {
    let procs = Path::new(dir).join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).with_context(|| format!("joining {}", procs.display()))
}

/// `--name value` options and `--flag` switches after the subcommand.
struct Opts {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Opts {
    const FLAGS: &'static [&'static str] = &["--connected", "--grpc", "--half-close"];
    const VALUES: &'static [&'static str] = &[
        "--target",
        "--count",
        "--sources",
        "--requests-per-conn",
        "--pace-micros",
        "--progress-every",
        "--path",
        "--method",
        "--headers",
        "--parallel",
        "--send",
        "--then",
        "--mode",
        "--pause-ms",
        "--read-ms",
        "--sni",
        "--ca",
        "--listen",
        "--name",
    ];

    fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts> {
        let mut opts = Opts { values: HashMap::new(), flags: Vec::new() };
        while let Some(arg) = args.next() {
            if Self::FLAGS.contains(&arg.as_str()) {
                opts.flags.push(arg);
            } else if Self::VALUES.contains(&arg.as_str()) {
                let value = args.next().ok_or_else(|| anyhow!("{arg} needs a value"))?;
                opts.values.insert(arg, value);
            } else {
                bail!("unknown option {arg:?}");
            }
        }
        Ok(opts)
    }

    fn target(&self) -> Result<SocketAddr> {
        let target = self.values.get("--target").ok_or_else(|| anyhow!("--target HOST:PORT is required"))?;
        target.parse().with_context(|| format!("bad --target {target:?} (use 1.2.3.4:80 or [fd00::1]:80)"))
    }

    fn number(&self, name: &str, default: u64) -> Result<u64> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().with_context(|| format!("bad {name} {v:?}")),
        }
    }

    fn sources(&self) -> Result<Vec<IpAddr>> {
        let Some(list) = self.values.get("--sources") else {
            return Ok(Vec::new());
        };
        list.split(',').map(|s| s.trim().parse().with_context(|| format!("bad source {s:?}"))).collect()
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

/// Outcome counts shared by all subcommands.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
    backends: BTreeMap<String, u64>,
}

impl Tally {
    fn success(&mut self, backend: &str) {
        self.ok += 1;
        *self.backends.entry(backend.to_string()).or_default() += 1;
    }

    fn error(&mut self, e: &io::Error) {
        *self.errors.entry(sys::io_error_name(e)).or_default() += 1;
    }
}

fn emit(value: &Value) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

fn tcp(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    let requests = opts.number("--requests-per-conn", 1)?.max(1);
    let sources = opts.sources()?;
    // Optional pause between connections, to spread a run over time.
    let pace = Duration::from_micros(opts.number("--pace-micros", 0)?);
    // A `{"progress": N}` line every this many connections (0: none), so a
    // test can act at a point of a long run rather than after a time.
    let progress_every = opts.number("--progress-every", 0)?;
    let mut tally = Tally::default();
    let mut per_source = BTreeMap::new();
    let mut peer = None;
    let started = Instant::now();
    for i in 0..count as usize {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        match sys::tcp_connect(target, source.map(|ip| SocketAddr::new(ip, 0)), CONNECT_TIMEOUT) {
            Ok(stream) => {
                if peer.is_none() {
                    peer = stream.peer_addr().ok().map(|a| a.to_string());
                }
                match converse(&stream, requests) {
                    Ok(backend) => {
                        tally.success(&backend);
                        if let Some(ip) = source {
                            per_source.insert(ip.to_string(), backend);
                        }
                    }
                    Err(e) => tally.error(&e),
                }
                // RST on close: no TIME_WAIT, so large counts do not run out of ports.
                let _ = sys::set_linger_zero(&stream);
            }
            Err(e) => tally.error(&e),
        }
        if progress_every > 0 && (i as u64 + 1).is_multiple_of(progress_every) {
            emit(&json!({ "progress": i + 1 }))?;
        }
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    let micros_per_conn = started.elapsed().as_secs_f64() * 1e6 / count.max(1) as f64;
    emit(&json!({
        "ok": tally.ok,
        "errors": tally.errors,
        "backends": tally.backends,
        "per_source": per_source,
        "peer": peer,
        "micros_per_conn": micros_per_conn,
    }))
}

/// `requests` request/reply rounds on one connection; returns the backend
/// name. Replies naming different backends on one connection are an error.
fn converse(stream: &TcpStream, requests: u64) -> io::Result<String> {
    stream.set_read_timeout(Some(TCP_READ_TIMEOUT))?;
    let mut reader = BufReader::with_capacity(256, stream);
    let mut backend: Option<String> = None;
    for _ in 0..requests {
        let mut writer = stream;
        writer.write_all(REQUEST)?;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let name = line.trim_end().to_string();
        match &backend {
            Some(first) if *first != name => return Err(io::Error::other("MIXED_BACKENDS")),
            Some(_) => {}
            None => backend = Some(name),
        }
    }
    Ok(backend.unwrap_or_default())
}

fn hold(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    let mut tally = Tally::default();
    let mut held = Vec::new();
    for _ in 0..count {
        let opened = sys::tcp_connect(target, None, CONNECT_TIMEOUT).and_then(|s| Ok((converse(&s, 1)?, s)));
        match opened {
            Ok((backend, stream)) => {
                tally.success(&backend);
                held.push(stream);
            }
            Err(e) => tally.error(&e),
        }
    }
    emit(&json!({"held": held.len(), "backends": tally.backends, "errors": tally.errors}))?;
    // Hold until the test closes our stdin (or dies, which closes it too).
    // Each `ping` line sends one more request on every held connection and
    // reports which backends answered: proof the connections still work.
    for line in io::stdin().lock().lines() {
        if line?.trim() != "ping" {
            continue;
        }
        let mut pinged = Tally::default();
        for stream in &held {
            match converse(stream, 1) {
                Ok(backend) => pinged.success(&backend),
                Err(e) => pinged.error(&e),
            }
        }
        emit(&json!({"ok": pinged.ok, "backends": pinged.backends, "errors": pinged.errors}))?;
    }
    drop(held);
    Ok(())
}

/// `count` HTTP/1.1 keep-alive connections, each left idle after one
/// request and its response; held until stdin closes. Prints
/// `{"held": N, "errors": {..}}` once they are all open.
fn http_hold(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    raise_open_files_limit();
    let request = format!("GET / HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let sources = opts.sources()?;
    let mut tally = Tally::default();
    let mut held = Vec::new();
    for i in 0..count {
        // Round the sources (`--sources`): each holds a port range's worth.
        let source = (!sources.is_empty()).then(|| SocketAddr::new(sources[i as usize % sources.len()], 0));
        let opened = sys::tcp_connect(target, source, CONNECT_TIMEOUT).and_then(|stream| {
            stream.set_read_timeout(Some(TCP_READ_TIMEOUT))?;
            let mut reader = BufReader::new(stream);
            reader.get_mut().write_all(request.as_bytes())?;
            let response = read_http_response(&mut reader)?;
            // The stream alone: the reader's buffer is not held per connection.
            Ok((response.status, reader.into_inner()))
        });
        match opened {
            Ok((status, reader)) => {
                tally.success(&status.to_string());
                held.push(reader);
            }
            Err(e) => tally.error(&e),
        }
    }
    emit(&json!({"held": held.len(), "statuses": tally.backends, "errors": tally.errors}))?;
    for line in io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}

/// As many open files as root may have (else the hard limit): one per
/// held connection.
fn raise_open_files_limit() {
    let wide = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers; the limit raised, else read and cur raised.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wide) != 0 && libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `count` HTTP/1.1 requests over keep-alive connections (a new one when
/// the server closes). `--headers "a: b, c: d"`. Reports statuses, the
/// backend (`x-backend`) of each 2xx, and the whole first response.
fn http(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    let path = opts.values.get("--path").cloned().unwrap_or_else(|| "/".into());
    let method = opts.values.get("--method").cloned().unwrap_or_else(|| "GET".into());
    let extra: String = opts
        .values
        .get("--headers")
        .map(|h| h.split(',').map(|kv| format!("{}\r\n", kv.trim())).collect())
        .unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {target}\r\n{extra}Content-Length: 0\r\n\r\n");
    // `--parallel N`: N clients at once, each on its own connection.
    let parallel = opts.number("--parallel", 1)?.max(1);
    let started = Instant::now();
    let workers: Vec<_> = (0..parallel)
        .map(|i| {
            let request = request.clone();
            let share = count / parallel + u64::from(i < count % parallel);
            std::thread::spawn(move || http_worker(target, share, &request))
        })
        .collect();
    let mut tally = Tally::default();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = Value::Null;
    for worker in workers {
        let (t, s, f) = worker.join().map_err(|_| anyhow!("http worker panicked"))??;
        tally.ok += t.ok;
        for (k, v) in t.errors {
            *tally.errors.entry(k).or_default() += v;
        }
        for (k, v) in t.backends {
            *tally.backends.entry(k).or_default() += v;
        }
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        if first.is_null() {
            first = f;
        }
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / count.max(1) as f64;
    emit(&json!({
        "ok": tally.ok,
        "errors": tally.errors,
        "status": statuses,
        "backends": tally.backends,
        "first": first,
        "micros_per_request": micros,
    }))
}

type HttpTally = (Tally, BTreeMap<String, u64>, Value);

fn http_worker(target: SocketAddr, count: u64, request: &str) -> Result<HttpTally> {
    let mut tally = Tally::default();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = Value::Null;
    let mut conn: Option<BufReader<TcpStream>> = None;
    for _ in 0..count {
        if conn.is_none() {
            match sys::tcp_connect(target, None, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(TCP_READ_TIMEOUT))?;
                    conn = Some(BufReader::new(stream));
                }
                Err(e) => {
                    tally.error(&e);
                    continue;
                }
            }
        }
        let reader = conn.as_mut().expect("connected above");
        let exchanged = reader.get_mut().write_all(request.as_bytes()).and_then(|_| read_http_response(reader));
        match exchanged {
            Ok(response) => {
                *statuses.entry(response.status.to_string()).or_default() += 1;
                if response.headers.get("x-envoy-overloaded").is_some_and(|v| v == "true") {
                    *statuses.entry("overloaded".into()).or_default() += 1;
                }
                if (200..300).contains(&response.status) {
                    tally.success(response.headers.get("x-backend").map(String::as_str).unwrap_or("?"));
                }
                if first.is_null() {
                    first = json!({"status": response.status, "headers": response.headers, "body": response.body});
                }
                if response.close {
                    conn = None;
                }
            }
            Err(e) => {
                tally.error(&e);
                conn = None;
            }
        }
    }
    Ok((tally, statuses, first))
}

struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
    close: bool,
}

/// One response: status line, headers (lowercased), a Content-Length or
/// chunked body.
fn read_http_response(reader: &mut impl BufRead) -> io::Result<HttpResponse> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(io::ErrorKind::InvalidData)?;
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    let close = headers.get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned(), close })
}

/// `count` requests over one HTTP/2 connection (prior knowledge). With
/// `--grpc`, each is a unary gRPC call (a length-prefixed message,
/// `content-type: application/grpc`) and the `grpc-status` trailer is
/// reported.
fn h2(opts: &Opts) -> Result<()> {
    use http_body_util::BodyExt;
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    let grpc = opts.flag("--grpc");
    let path =
        opts.values
            .get("--path")
            .cloned()
            .unwrap_or_else(|| if grpc { "/shop.Reviews/Get".into() } else { "/".into() });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(target).await?;
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(connection);
        let mut tally = Tally::default();
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        let mut grpc_statuses: BTreeMap<String, u64> = BTreeMap::new();
        let mut first = Value::Null;
        for _ in 0..count {
            let body = if grpc { mesh_tests::h2::grpc_frame(b"hello") } else { bytes::Bytes::new() };
            let mut request = hyper::Request::builder()
                .method(if grpc { "POST" } else { "GET" })
                .uri(format!("http://{target}{path}"));
            if grpc {
                request = request.header("content-type", "application/grpc").header("te", "trailers");
            }
            let request = request.body(mesh_tests::h2::OneShotBody::new(body, None))?;
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(e) => {
                    tally.error(&io::Error::other(e.to_string()));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let backend = response.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
            let headers: BTreeMap<String, String> = response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            let collected = response.into_body().collect().await?;
            let grpc_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            *statuses.entry(status.to_string()).or_default() += 1;
            if let Some(code) = &grpc_status {
                *grpc_statuses.entry(code.clone()).or_default() += 1;
            }
            if (200..300).contains(&status) {
                tally.success(&backend);
            }
            if first.is_null() {
                first = json!({"status": status, "headers": headers, "grpc_status": grpc_status});
            }
        }
        emit(&json!({
            "ok": tally.ok,
            "errors": tally.errors,
            "status": statuses,
            "grpc_status": grpc_statuses,
            "backends": tally.backends,
            "first": first,
        }))
    })
}

/// `count` HTTPS requests with server name `--sni`, verified against the CA
/// in `--ca`: one TLS connection each. Reports the backends that answered.
fn tls(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    let (sni, config) = tls_client(opts)?;
    let mut tally = Tally::default();
    for _ in 0..count {
        let exchange = || -> Result<String> {
            let name = rustls::pki_types::ServerName::try_from(sni.clone())?;
            let connection = rustls::ClientConnection::new(config.clone(), name)?;
            let stream = sys::tcp_connect(target, None, CONNECT_TIMEOUT)?;
            stream.set_read_timeout(Some(TCP_READ_TIMEOUT))?;
            let mut tls = rustls::StreamOwned::new(connection, stream);
            write!(tls, "GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            // A peer that closes without close_notify still gave its answer.
            let _ = io::Read::read_to_string(&mut tls, &mut response);
            let backend = response
                .lines()
                .find_map(|l| l.strip_prefix("x-backend: "))
                .ok_or_else(|| anyhow!("no x-backend in {response:?}"))?;
            Ok(backend.trim().to_owned())
        };
        match exchange() {
            Ok(backend) => tally.success(&backend),
            Err(e) => tally.error(&io::Error::other(e.to_string())),
        }
    }
    emit(&json!({"ok": tally.ok, "errors": tally.errors, "backends": tally.backends}))
}

/// Sends `--send` on one connection (the two characters `\n` in it become
/// CRLF), optionally pausing `--pause-ms` after it, and reports what came
/// back until the server closed or 5 s passed: for malformed or slow clients.
fn raw(opts: &Opts) -> Result<()> {
    let target = opts.target()?;
    let payload = opts.values.get("--send").cloned().unwrap_or_default().replace("\\n", "\r\n");
    let pause = Duration::from_millis(opts.number("--pause-ms", 0)?);
    let mut stream = sys::tcp_connect(target, None, CONNECT_TIMEOUT)?;
    let read_for = Duration::from_millis(opts.number("--read-ms", 5000)?);
    stream.set_read_timeout(Some(read_for))?;
    let started = Instant::now();
    stream.write_all(payload.as_bytes())?;
    if let Some(then) = opts.values.get("--then") {
        // The rest goes when the test says so (a line on stdin).
        io::stdin().lock().read_line(&mut String::new())?;
        stream.write_all(then.replace("\\n", "\r\n").as_bytes())?;
    }
    if opts.flag("--half-close") {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    let mut response = Vec::new();
    // A blocking read on a socket the short-circuit holds (a sockmap) can
    // return EAGAIN before its timeout when the socket is woken by something
    // other than data (its own FIN acknowledged, after a half-close): the
    // kernel's tcp_bpf_recvmsg waits for one wakeup only. Read again, as a
    // client that polls does; the count shows how often it happened.
    let mut spurious_eagain = 0u32;
    let closed = loop {
        match io::Read::read_to_end(&mut stream, &mut response) {
            Ok(_) => break true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && started.elapsed() < read_for => spurious_eagain += 1,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break false,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break true,
            Err(e) => return Err(e.into()),
        }
    };
    emit(&json!({
        "response": String::from_utf8_lossy(&response),
        "closed_by_server": closed,
        "millis": started.elapsed().as_millis() as u64,
        "spurious_eagain": spurious_eagain,
    }))
}

/// Two keep-alive GETs on one TLS connection, the second once a line
/// arrives on stdin (the test changes something meanwhile): prints a JSON
/// line after each with the status and the `x-backend` of the answer.
fn tls_keep(opts: &Opts) -> Result<()> {
    let target = opts.target()?;
    let (sni, config) = tls_client(opts)?;
    let name = rustls::pki_types::ServerName::try_from(sni.clone())?;
    let connection = rustls::ClientConnection::new(config, name)?;
    let stream = sys::tcp_connect(target, None, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(TCP_READ_TIMEOUT))?;
    let mut tls = BufReader::new(rustls::StreamOwned::new(connection, stream));
    for round in 0..2 {
        if round == 1 {
            io::stdin().lock().read_line(&mut String::new())?;
        }
        write!(tls.get_mut(), "GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n")?;
        let response = read_http_response(&mut tls)?;
        emit(&json!({"status": response.status, "backend": response.headers.get("x-backend")}))?;
    }
    Ok(())
}

/// The server name (`--sni`) and a client configuration that verifies
/// against the CA in `--ca`.
fn tls_client(opts: &Opts) -> Result<(String, std::sync::Arc<rustls::ClientConfig>)> {
    use rustls::pki_types::pem::PemObject;
    let sni = opts.values.get("--sni").cloned().ok_or_else(|| anyhow!("--sni is required"))?;
    let ca = opts.values.get("--ca").cloned().ok_or_else(|| anyhow!("--ca is required"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca)? {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((sni, std::sync::Arc::new(config)))
}

/// Ping-pong on one gRPC bidirectional stream with a real gRPC client
/// (tonic): each message waits for the reply to the one before.
fn grpc(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 3)? as usize);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let wait = Duration::from_secs(5);
    let mode = opts.values.get("--mode").map(String::as_str).unwrap_or("ping-pong");
    let replies = runtime.block_on(async {
        match mode {
            "ping-pong" => mesh_tests::grpc::ping_pong(target, count, wait).await,
            "client-stream" => mesh_tests::grpc::client_stream(target, count, wait).await,
            "server-stream" => mesh_tests::grpc::server_stream(target, count, wait).await,
            other => Err(anyhow!("unknown --mode {other:?}")),
        }
    })?;
    emit(&json!({"replies": replies}))
}

/// Runs a program inside the pod (a real client: curl, say); prints its
/// exit code and output.
fn exec(args: Vec<String>) -> Result<()> {
    let (program, rest) = args.split_first().ok_or_else(|| anyhow!("exec needs a program"))?;
    let out = std::process::Command::new(program).args(rest).output().with_context(|| format!("running {program}"))?;
    emit(&json!({
        "code": out.status.code(),
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
    }))
}

/// `count` connect() calls on ONE TCP socket, as a client that retries a
/// refused connect without a new socket does. Prints the outcomes.
fn reconnect(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    let domain = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let fd = sys::cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let (ss, len) = sys::sockaddr_from(&target);
    let mut tally = Tally::default();
    for _ in 0..count {
        match sys::cvt(unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) }) {
            Ok(_) => tally.success("connected"),
            Err(e) => tally.error(&e),
        }
    }
    unsafe { libc::close(fd) };
    emit(&json!({"ok": tally.ok, "errors": tally.errors}))
}

fn udp(opts: &Opts) -> Result<()> {
    let (target, count) = (opts.target()?, opts.number("--count", 1)?);
    let connected = opts.flag("--connected");
    let socket = UdpSocket::bind(sys::unspecified_like(&target)).context("binding UDP socket")?;
    socket.set_read_timeout(Some(UDP_RECV_TIMEOUT))?;
    let mut tally = Tally::default();
    let mut reply_from = None;
    if connected {
        if let Err(e) = socket.connect(target) {
            // Every exchange would fail the same way; count them all.
            for _ in 0..count {
                tally.error(&e);
            }
            return emit_udp(&tally, None);
        }
    }
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        match exchange(&socket, target, connected, &mut buf) {
            Ok((len, from)) => {
                tally.success(String::from_utf8_lossy(&buf[..len]).trim_end());
                reply_from = reply_from.or(Some(from));
            }
            Err(e) => tally.error(&e),
        }
    }
    // `--then TARGET`: one more exchange from the same socket, to another
    // address; where its reply seemed to come from is `then_reply_from`.
    let then = match opts.values.get("--then") {
        Some(then) => {
            let then: SocketAddr = then.parse().with_context(|| format!("bad --then {then:?}"))?;
            exchange(&socket, then, false, &mut buf).ok().map(|(_, from)| from.to_string())
        }
        None => None,
    };
    emit(&json!({
        "ok": tally.ok,
        "errors": tally.errors,
        "backends": tally.backends,
        "reply_from": reply_from.map(|a| a.to_string()),
        "then_reply_from": then,
    }))
}

/// One datagram out, one back: (reply length, address the reply came from
/// as recvfrom saw it, or getpeername when connected).
fn exchange(
    socket: &UdpSocket,
    target: SocketAddr,
    connected: bool,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    if connected {
        socket.send(REQUEST)?;
        let len = socket.recv(buf)?;
        Ok((len, socket.peer_addr()?))
    } else {
        socket.send_to(REQUEST, target)?;
        socket.recv_from(buf)
    }
}

fn emit_udp(tally: &Tally, reply_from: Option<SocketAddr>) -> Result<()> {
    emit(&json!({
        "ok": tally.ok,
        "errors": tally.errors,
        "backends": tally.backends,
        "reply_from": reply_from.map(|a| a.to_string()),
    }))
}

/// An HTTP/1.1 keep-alive server on `--listen` whose replies name it
/// (`x-backend` and the body are `--name`): a backend pod's process inside
/// the test's cgroup, i.e. a meshed pod, which the test process's own
/// server threads cannot be. Prints `{"listening": ADDR}` once bound and
/// serves until its stdin closes.
fn serve_http(opts: &Opts) -> Result<()> {
    let listen = opts.values.get("--listen").ok_or_else(|| anyhow!("--listen HOST:PORT is required"))?;
    let listen: SocketAddr = listen.parse().with_context(|| format!("bad --listen {listen:?}"))?;
    let name = opts.values.get("--name").cloned().unwrap_or_else(|| "probe".into());
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    emit(&json!({"listening": listen.to_string()}))?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || answer_http(&stream, &name));
        }
    });
    io::copy(&mut io::stdin().lock(), &mut io::sink())?;
    Ok(())
}

/// Answers each request on `stream` with 200 and `name`, until the client
/// closes or asks to.
fn answer_http(stream: &TcpStream, name: &str) -> io::Result<()> {
    let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-backend: {name}\r\n\r\n{name}", name.len());
    let mut reader = BufReader::new(stream);
    while let Some(request) = mesh_tests::read_http_head(&mut reader)? {
        io::copy(&mut (&mut reader).take(request.content_length), &mut io::sink())?;
        let mut writer = stream;
        writer.write_all(response.as_bytes())?;
        if request.close {
            break;
        }
    }
    Ok(())
}
