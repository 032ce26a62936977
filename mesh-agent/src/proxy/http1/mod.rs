//! The proxy's own HTTP/1.1, both directions: the plain-request fast path
//! of the client side ([`server`]) and the direct upstream client for
//! requests whose body is known ([`client`]). What both obey (framing,
//! `Connection` tokens, limits, field spans) lives once, in [`common`];
//! the chunked coding in [`chunked`]. Anything unusual is left to hyper.

pub mod chunked;
pub mod client;
pub mod common;
pub mod server;
