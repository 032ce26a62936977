//! `proxyProtocol`: send a PROXY protocol header (v1 text or v2 binary)
//! at the start of each connection to the destination.

use crate::api;
use crate::field::{FieldError, Path};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ProxyProtocol {
    #[default]
    V1,
    V2,
}

pub fn validate_proxy_protocol(at: &Path, proxy_protocol: &api::ProxyProtocol) -> Result<ProxyProtocol, FieldError> {
    match proxy_protocol.version.as_deref() {
        None | Some("V1") => Ok(ProxyProtocol::V1),
        Some("V2") => Ok(ProxyProtocol::V2),
        Some(other) => {
            Err(FieldError::new(at.field("version"), format!("unknown version {other:?}; expected V1 or V2")))
        }
    }
}
