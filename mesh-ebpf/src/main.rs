//! Kernel half of the mesh dataplane: socket-level service load balancing.
//!
//! `connect4/6` translate a service address to a backend before the first
//! packet exists, so no packet is ever NATed; `sendmsg/recvmsg` do the same
//! per datagram for unconnected UDP; `getpeername` shows the service address
//! back to the application; `sock_release` gives back the live-connection
//! slot the connect took. Traffic to anything that is not a service passes
//! through untouched, and every decision is counted per CPU. Same-node hops
//! between two sockets of the attached cgroup skip TCP: `sock_ops` files
//! established sockets in a sock hash and pairs both ends of a local
//! connection, and `sk_msg` hands each send straight to the peer socket.
//!
//! One module per hook; what two hooks share lives in a module below both,
//! and no shared module uses a program module, so the modules form no cycle.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

// The programs, one module per hook.
mod connect;
mod getpeername;
mod sk_msg;
mod sock_ops;
mod sock_release;
mod udp;

// What the programs share.
mod addr;
mod balance;
mod live;
mod maps;
mod policy;
mod stats;
mod udp_reverse;
mod verdict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
