//! An HTTP/1.1 backend that records every request as its bytes arrive, and
//! reads bodies as a simple server does: by Content-Length, else (with
//! `Transfer-Encoding: chunked`) the raw chunks to the last one, else none
//! (as Python's wsgiref, which never reads chunked bodies). A request with
//! `Expect: 100-continue` gets `100 Continue` first. Each answer is
//! `received <n>`, n the body bytes read; the first request for a path
//! under `/fail-once/` is answered 503 instead (after its body is read).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::background::Background;

/// One request as the backend saw it so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The head as sent, with its line ends.
    pub head: String,
    /// The body bytes as they came (chunk framing included).
    pub body: Vec<u8>,
    /// The body has ended and the answer went out.
    pub answered: bool,
}

impl Seen {
    /// The request target of the head's request line ("" if it has none).
    pub fn path(&self) -> &str {
        self.head.split_whitespace().nth(1).unwrap_or("")
    }

    /// The value of the head's `name` field (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// A running recorder; stops when dropped.
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    _serving: Background,
}

impl Recorder {
    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub(crate) fn start(netns: &Path, addr: SocketAddr) -> Result<Recorder> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let serving = crate::background::spawn(netns, addr, move |stream| {
        let log = log.clone();
        async move {
            let _ = record(stream, log).await;
        }
    })?;
    Ok(Recorder { seen, _serving: serving })
}

/// How the body of a recorded request ends.
enum BodyEnd {
    Length(usize),
    LastChunk,
}

async fn record(mut stream: tokio::net::TcpStream, log: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end);
        let request = Seen { head, ..Seen::default() };
        let end = match (request.header("content-length"), request.header("transfer-encoding")) {
            (Some(length), _) => BodyEnd::Length(length.parse().unwrap_or(0)),
            (None, Some(coding)) if coding.to_ascii_lowercase().ends_with("chunked") => BodyEnd::LastChunk,
            _ => BodyEnd::Length(0),
        };
        let expects = request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let index = {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.push(request);
            log.len() - 1
        };
        if expects {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let mut body = Vec::new();
        loop {
            let done = match end {
                BodyEnd::Length(length) => body.len() >= length,
                BodyEnd::LastChunk => body.ends_with(b"0\r\n\r\n"),
            };
            if done {
                break;
            }
            if buffer.is_empty() {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let take = match end {
                BodyEnd::Length(length) => (length - body.len()).min(buffer.len()),
                BodyEnd::LastChunk => buffer.len(),
            };
            let part: Vec<u8> = buffer.drain(..take).collect();
            body.extend_from_slice(&part);
            log.lock().unwrap_or_else(|e| e.into_inner())[index].body.extend_from_slice(&part);
        }
        let text = format!("received {}", body.len());
        let path = {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            let mine = log[index].path().to_owned();
            let first = log[..index].iter().all(|earlier| earlier.path() != mine);
            (mine, first)
        };
        let status = if path.0.starts_with("/fail-once/") && path.1 { "503 Service Unavailable" } else { "200 OK" };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{text}", text.len());
        stream.write_all(answer.as_bytes()).await?;
        log.lock().unwrap_or_else(|e| e.into_inner())[index].answered = true;
    }
}
