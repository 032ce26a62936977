//! `tunnel`: carry the connection to the destination inside an HTTP
//! CONNECT (or POST) tunnel to `targetHost:targetPort`, validated as
//! Istio's `validateTunnelSettings` does.

use crate::api;
use crate::field::{parse_port, FieldError, Path};
use crate::host::{top_label_all_digits, validate_host_name};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tunnel {
    pub protocol: TunnelProtocol,
    /// An FQDN or an IP address.
    pub target_host: String,
    pub target_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TunnelProtocol {
    Connect,
    Post,
}

pub fn validate_tunnel(at: &Path, tunnel: &api::TunnelSettings) -> Result<Tunnel, FieldError> {
    let protocol = match tunnel.protocol.as_deref() {
        None | Some("") | Some("CONNECT") => TunnelProtocol::Connect,
        Some("POST") => TunnelProtocol::Post,
        Some(other) => {
            return Err(FieldError::new(
                at.field("protocol"),
                format!("unknown protocol {other:?}; expected CONNECT or POST"),
            ))
        }
    };
    let host = tunnel.target_host.as_str();
    if host.is_empty() {
        return Err(FieldError::new(at.field("targetHost"), "required"));
    }
    // Istio's ValidateFQDN or ValidateIPAddress: no wildcard, and a name's
    // top-level label is not all digits.
    if host.parse::<std::net::IpAddr>().is_err() {
        if host.contains('*') || top_label_all_digits(host) {
            return Err(FieldError::new(at.field("targetHost"), format!("{host:?} is not an FQDN or IP address")));
        }
        validate_host_name(&at.field("targetHost"), host)?;
    }
    Ok(Tunnel {
        protocol,
        target_host: host.to_owned(),
        target_port: parse_port(&at.field("targetPort"), tunnel.target_port)?,
    })
}
