//! Low-level socket and namespace helpers shared by the harness and `mesh-probe`.
//!
//! std has no bind-before-connect, no listen backlog, no SO_LINGER and no
//! setns, so these few calls go through libc.

use std::fs::File;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

/// Turns a libc return value into an `io::Result`, reading errno on -1.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Moves the calling thread into the network namespace bound at `path`
/// (e.g. `/var/run/netns/<name>`). Only this thread changes namespace.
pub fn setns_net(path: &Path) -> io::Result<()> {
    let ns = File::open(path)?;
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}

/// Short, stable name for an errno, as tests compare against it.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EAGAIN => "EAGAIN",
        libc::EPIPE => "EPIPE",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EINVAL => "EINVAL",
        libc::ENOENT => "ENOENT",
        _ => return format!("errno_{code}"),
    };
    name.to_string()
}

/// Name of an I/O error for the probe's `errors` map: the errno name when
/// there is one, `EOF` when the peer closed before replying.
pub fn io_error_name(e: &io::Error) -> String {
    if let Some(code) = e.raw_os_error() {
        return errno_name(code);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "EOF".to_string(),
        io::ErrorKind::TimedOut => "ETIMEDOUT".to_string(),
        io::ErrorKind::WouldBlock => "EAGAIN".to_string(),
        _ => e.to_string(),
    }
}

/// A socket address in the kernel's representation.
pub fn sockaddr_from(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn family(addr: &SocketAddr) -> libc::c_int {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// The wildcard address of the same family as `addr`, port 0.
pub fn unspecified_like(addr: &SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into()
    }
}

fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr_from(addr);
    cvt(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) })?;
    Ok(())
}

fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    cvt(unsafe { libc::setsockopt(fd, level, opt, &value as *const _ as *const libc::c_void, len) })?;
    Ok(())
}

/// A TCP listener on `addr` with an explicit backlog: std uses 128, which
/// drops SYNs under connect bursts and shows up as 1 s outliers.
pub fn tcp_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let fd = cvt(unsafe { libc::socket(family(&addr), libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // Owned from here on, so every error path closes the fd.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    bind(fd, &addr)?;
    cvt(unsafe { libc::listen(fd, backlog) })?;
    Ok(listener)
}

/// Connects to `target` within `timeout`, optionally from `source` (port 0).
/// The returned stream is blocking.
pub fn tcp_connect(target: SocketAddr, source: Option<SocketAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    let fd = cvt(unsafe { libc::socket(family(&target), flags, 0) })?;
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Some(source) = source {
        if source.port() == 0 {
            // The port is picked at connect, for this destination: a bind
            // alone would need a port no other socket of the address holds.
            let on: libc::c_int = 1;
            let size = mem::size_of::<libc::c_int>() as libc::socklen_t;
            let option = &on as *const libc::c_int as *const libc::c_void;
            cvt(unsafe { libc::setsockopt(fd, libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT, option, size) })?;
        }
        bind(fd, &source)?;
    }
    let (ss, len) = sockaddr_from(&target);
    match cvt(unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) }) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => wait_connected(fd, timeout)?,
        Err(e) => return Err(e),
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn wait_connected(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    let ready = loop {
        match cvt(unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if ready == 0 {
        return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
    }
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut err as *mut _ as *mut libc::c_void, &mut len)
    })?;
    match err {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// SO_LINGER 0: close sends RST instead of leaving the port in TIME_WAIT,
/// so tens of thousands of connects do not run out of ports.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let len = mem::size_of::<libc::linger>() as libc::socklen_t;
    cvt(unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            len,
        )
    })?;
    Ok(())
}

/// Waits until one of `fds` is readable or `timeout` passes; returns the
/// indexes of the readable ones (empty on timeout or EINTR).
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout.as_millis() as libc::c_int) };
    if ret == -1 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(Vec::new()) } else { Err(e) };
    }
    Ok(pfds.iter().enumerate().filter(|(_, p)| p.revents != 0).map(|(i, _)| i).collect())
}
