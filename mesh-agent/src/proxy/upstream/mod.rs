//! Talking to upstream endpoints: connecting ([`connect`], with TLS
//! origination configured by [`tls`]), keeping idle HTTP/1.1 connections
//! ([`pool`]) for our direct client and hyper's ([`hyper_http1`]), the
//! multiplexed HTTP/2 connections per endpoint ([`http2`]) and a request's
//! exchange on one ([`http2_exchange`]), and the [`dialer`] that sends
//! each try over the right one. Failures are [`error::UpstreamError`].

pub mod connect;
pub mod dialer;
pub mod error;
pub mod http2;
pub mod http2_exchange;
pub mod hyper_http1;
pub mod pool;
pub mod tls;
