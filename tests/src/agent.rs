//! The agent process under test and a tiny HTTP client for its admin API.

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::system;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `mesh-agent run ...` (or `mesh-agent gateway ...`).
pub(crate) struct Agent {
    child: Child,
}

/// Where and how to run the agent.
pub(crate) struct AgentSpec<'a> {
    pub bin: PathBuf,
    /// Its command line (`run ...` or `gateway ...`).
    pub args: Vec<OsString>,
    /// The agent's own cgroup (see `Names::agent_cgroup`).
    pub own_cgroup: &'a Path,
    /// Its admin API, asked for `/readyz`.
    pub admin: SocketAddr,
    pub log: &'a Path,
    /// Network namespace to run the agent in (the node); None: the caller's.
    pub netns: Option<PathBuf>,
}

impl Agent {
    /// Spawns `mesh-agent` as `spec` says (its arguments, cgroup, netns and
    /// log), and waits until its admin API's `GET /readyz` answers 200.
    pub fn start(spec: &AgentSpec<'_>) -> Result<Agent> {
        let mut agent = Agent::spawn(spec)?;
        match agent.wait_ready(spec.admin, spec.netns.as_deref()) {
            Ok(()) => Ok(agent),
            Err(e) => {
                agent.kill();
                Err(e.context(format!("agent log tail:\n{}", log_tail(spec.log, 40))))
            }
        }
    }

    /// Spawns `mesh-agent` as `spec` says, without waiting for it.
    pub fn spawn(spec: &AgentSpec<'_>) -> Result<Agent> {
        if !spec.bin.exists() {
            bail!(
                "agent binary {} not found (build it with `cargo build -p mesh-agent` or set MESH_AGENT_BIN)",
                spec.bin.display()
            );
        }
        Ok(Agent { child: spawn(spec)? })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (20 s) until the admin API at `admin` says ready.
    pub fn wait_ready(&mut self, admin: SocketAddr, netns: Option<&Path>) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = anyhow!("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("agent exited before becoming ready: {status}");
            }
            match http_get_in(netns, admin, "/readyz") {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = anyhow!("/readyz answered {code}: {body}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last.context(format!("agent not ready within {READY_TIMEOUT:?}")))
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let mut exited = None;
        crate::sync::wait_until(grace, || {
            exited = self.child.try_wait().ok().flatten();
            exited.is_some()
        });
        if let Some(status) = exited {
            return Ok(status);
        }
        eprintln!("mesh-tests: agent ignored SIGTERM for {grace:?}, killing it");
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// SIGKILL and reap: an agent crash, as far as the kernel can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(spec: &AgentSpec<'_>) -> Result<Child> {
    let mut log = OpenOptions::new().create(true).append(true).open(spec.log).context("opening agent log")?;
    writeln!(log, "==== mesh-tests: {} {:?}", spec.bin.display(), spec.args)?;

    if !spec.own_cgroup.exists() {
        system::create_cgroup(spec.own_cgroup)?;
    }
    let procs = CString::new(spec.own_cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    let mut cmd = Command::new(&spec.bin);
    // Plain-text log: tracing-subscriber honours NO_COLOR.
    cmd.args(&spec.args).env("NO_COLOR", "1").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // In its own cgroup before exec, so a crashed test's agent can be found
    // and killed with cgroup.kill by the next run.
    let netns = match &spec.netns {
        Some(path) => Some(File::open(path).with_context(|| format!("opening {}", path.display()))?),
        None => None,
    };
    unsafe {
        cmd.pre_exec(move || {
            system::join_cgroup_pre_exec(&procs)?;
            // setns only: /sys and bpffs stay as they are (`ip netns exec`
            // would remount /sys and hide both).
            if let Some(netns) = &netns {
                if libc::setns(std::os::fd::AsRawFd::as_raw_fd(netns), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    cmd.spawn().with_context(|| format!("spawning {}", spec.bin.display()))
}

/// The last `lines` lines of a log file ("" if there is none).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// [`http_get`] from inside network namespace `netns` (None: here).
pub fn http_get_in(netns: Option<&Path>, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    match netns {
        Some(netns) => crate::netns::in_netns(netns, || http_get(addr, path))?,
        None => http_get(addr, path),
    }
}

/// A one-shot `GET path` (HTTP/1.1, `Connection: close`); returns the status
/// code and the body (chunked bodies are decoded).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| format!("reading GET {path} from {addr}"))?;
    parse_response(&raw).with_context(|| format!("GET {path} from {addr}"))
}

fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("incomplete response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { decode_chunked(body)? } else { body.to_string() };
    Ok((status, body))
}

fn decode_chunked(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(|| anyhow!("bad chunk header"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or_else(|| anyhow!("short chunk"))?;
        out.push_str(chunk);
        body = rest[size..].strip_prefix("\r\n").ok_or_else(|| anyhow!("chunk without CRLF"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain).unwrap(), (200, "ok".to_string()));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n ready\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (503, "not ready".to_string()));
    }
}
