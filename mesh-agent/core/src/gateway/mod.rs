//! Istio `Gateway`s without sockets: the objects validated as Istio does
//! ([`validate_gateway`], one server at a time in [`server`]), which
//! VirtualServices bind to which gateway ([`bind`]), and what one gateway
//! process serves ([`GatewayPlan`]: its listeners, the servers on each,
//! and per server the virtual hosts and routes). The gateway process does
//! the IO around these answers.
//!
//! Semantics follow Istio's validation (`pkg/config/validation`) and
//! pilot's gateway handling (`MergeGateways`, `buildGatewayListeners`,
//! `buildGatewayHTTPRouteConfig`); where they differ it is said.

mod bind;
pub mod object;
mod plan;
pub mod server;

pub use bind::{gateway_rules, GatewayRules};
pub use object::{validate_gateway, GatewayModel};
pub use plan::{BoundServer, GatewayPlan, Listener, SkippedServer, VirtualHost};
pub use server::{
    cipher_names, ListenerKind, ServerCertificate, ServerHost, ServerModel, ServerProtocol, ServerTls, ServerTlsMode,
    TlsVersion, SUPPORTED_CIPHER_SUITES,
};

#[cfg(test)]
mod tests;
