//! A small authoritative DNS server for tests: A and AAAA answers from a
//! table the test changes while it runs, each with the TTL it is given.
//! Other questions, and names not in the table, get an empty answer
//! (NOERROR, no records). UDP only, one datagram per query.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// A running server; stops when dropped.
pub struct DnsServer {
    records: Arc<Mutex<BTreeMap<String, Vec<IpAddr>>>>,
    ttl: Arc<AtomicU64>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Answers `name` (no trailing dot) with `addresses` from now on.
    pub fn set(&self, name: &str, addresses: &[IpAddr]) {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_ascii_lowercase(), addresses.to_vec());
    }

    /// The TTL of every answer from now on, in seconds.
    pub fn set_ttl(&self, seconds: u32) {
        self.ttl.store(u64::from(seconds), Ordering::Relaxed);
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn start(netns: &Path, addr: SocketAddr) -> Result<DnsServer> {
    let socket = crate::netns::in_netns(netns, || UdpSocket::bind(addr))?.with_context(|| format!("binding {addr}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let records = Arc::new(Mutex::new(BTreeMap::new()));
    let ttl = Arc::new(AtomicU64::new(60));
    let queries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (records, ttl, queries, stop) = (records.clone(), ttl.clone(), queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                let Ok((length, from)) = socket.recv_from(&mut buffer) else { continue };
                let table = records.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(reply) = answer(&buffer[..length], &table, ttl.load(Ordering::Relaxed) as u32) {
                    queries.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(&reply, from);
                }
            }
        })
    };
    Ok(DnsServer { records, ttl, queries, stop, thread: Some(thread) })
}

/// The reply to one query, or None for what is not a query.
fn answer(query: &[u8], table: &BTreeMap<String, Vec<IpAddr>>, ttl: u32) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let length = *query.get(at)? as usize;
        at += 1;
        if length == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + length)?).to_ascii_lowercase());
        at += length;
    }
    let question_end = at + 4;
    let kind = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let name = labels.join(".");
    let records: Vec<&IpAddr> = (table.get(&name).into_iter().flatten())
        .filter(|ip| (kind == TYPE_A && ip.is_ipv4()) || (kind == TYPE_AAAA && ip.is_ipv6()))
        .collect();
    let mut reply = query.get(..question_end)?.to_vec();
    reply[2] = 0x84 | (query[2] & 0x01); // a response, authoritative, RD echoed
    reply[3] = 0x00; // NOERROR
    reply[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    reply[8..12].fill(0);
    for ip in records {
        reply.extend_from_slice(&[0xc0, 12]); // the question's name
        let (kind, data) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        reply.extend_from_slice(&kind.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&ttl.to_be_bytes());
        reply.extend_from_slice(&(data.len() as u16).to_be_bytes());
        reply.extend_from_slice(&data);
    }
    Some(reply)
}
