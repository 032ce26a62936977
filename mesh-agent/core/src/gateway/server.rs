//! One `server` of a Gateway: its port and protocol, the hosts it exposes
//! and its TLS settings, checked as Istio's `validateServer`,
//! `validateServerPort`, `validateServerBind` and `validateTLSOptions` do.

use crate::api::{self, ServerTlsSettings};
use crate::field::{parse_port, FieldError, Path};
use crate::host::{host_specificity, is_istio_label, validate_host_name};
use serde::Serialize;
use std::net::IpAddr;

/// A server as the gateway serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerModel {
    pub port: u16,
    pub port_name: String,
    pub protocol: ServerProtocol,
    pub hosts: Vec<ServerHost>,
    /// The address to listen on; None: the gateway's own listen address.
    pub bind: Option<IpAddr>,
    pub name: Option<String>,
    pub tls: Option<ServerTls>,
}

/// `port.protocol`. Istio's other names are served as the nearest of
/// these (with a warning): `GRPC-WEB` as HTTP, `MONGO`, `REDIS` and
/// `MYSQL` as TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ServerProtocol {
    Http,
    Https,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl ServerProtocol {
    /// Istio's `IsHTTP`: plaintext HTTP of some version (HTTP/1.1 or h2c).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }

    /// Istio's `IsTLS`: the server needs `tls`.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Https => "HTTPS",
            Self::Http2 => "HTTP2",
            Self::Grpc => "GRPC",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }

    /// Istio's `protocol.Parse` (any case), narrowed to what a gateway
    /// serves. The second value says the name was served as another.
    pub fn parse(text: &str) -> Option<(ServerProtocol, bool)> {
        let protocol = match text.to_ascii_uppercase().as_str() {
            "HTTP" => (Self::Http, false),
            "HTTPS" => (Self::Https, false),
            "HTTP2" => (Self::Http2, false),
            "GRPC" => (Self::Grpc, false),
            "TCP" => (Self::Tcp, false),
            "TLS" => (Self::Tls, false),
            "GRPC-WEB" => (Self::Http, true),
            "MONGO" | "REDIS" | "MYSQL" => (Self::Tcp, true),
            _ => return None,
        };
        Some(protocol)
    }
}

/// One entry of `hosts`: `[namespace/]dnsName`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerHost {
    /// The namespace whose VirtualServices may bind: None for any (`*/` or
    /// no prefix); `./` is the Gateway's namespace.
    pub namespace: Option<String>,
    /// Lowercase, without a trailing dot: `*`, `*.example.com` or a name.
    pub host: String,
}

impl ServerHost {
    /// Whether a request for `host` (no port; any case) is for this entry:
    /// `*` takes every name, `*.example.com` any longer name ending in
    /// `.example.com` (not `example.com` itself), as Envoy's domains and
    /// server names do.
    pub fn matches(&self, host: &str) -> bool {
        host_specificity(&self.host, host).is_some()
    }

    /// Whether a VirtualService in `namespace` may bind to this entry.
    pub fn admits_namespace(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    /// 301 to https for every request (HTTP servers).
    pub https_redirect: bool,
    pub mode: ServerTlsMode,
    /// None for the modes that use none (PASSTHROUGH, AUTO_PASSTHROUGH,
    /// ISTIO_MUTUAL) and on HTTP servers.
    pub certificate: Option<ServerCertificate>,
    /// Client certificates must carry one of these (MUTUAL modes).
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<TlsVersion>,
    pub max_protocol_version: Option<TlsVersion>,
    /// As written (OpenSSL names, Envoy's `[a|b]` groups split).
    pub cipher_suites: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

impl ServerTlsMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "PASSTHROUGH" => Self::Passthrough,
            "SIMPLE" => Self::Simple,
            "MUTUAL" => Self::Mutual,
            "AUTO_PASSTHROUGH" => Self::AutoPassthrough,
            "ISTIO_MUTUAL" => Self::IstioMutual,
            "OPTIONAL_MUTUAL" => Self::OptionalMutual,
            _ => return None,
        })
    }

    /// The TLS bytes are relayed, not terminated.
    pub fn is_passthrough(self) -> bool {
        matches!(self, Self::Passthrough | Self::AutoPassthrough)
    }

    /// Client certificates are asked for (required, or optional).
    pub fn verifies_clients(self) -> bool {
        matches!(self, Self::Mutual | Self::OptionalMutual | Self::IstioMutual)
    }
}

/// Where a terminating server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ServerCertificate {
    /// `serverCertificate`, `privateKey` and (MUTUAL modes) `caCertificates`.
    Files { cert: String, key: String, ca: Option<String> },
    /// `credentialName`: a Secret in the Gateway's namespace (`tls.crt`,
    /// `tls.key`, `ca.crt`, or `cert`, `key`, `cacert`).
    Secret { namespace: String, name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSV1_0")]
    V1_0,
    #[serde(rename = "TLSV1_1")]
    V1_1,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

impl TlsVersion {
    /// `TLS_AUTO` is None: the gateway's default.
    fn parse(field: &str, text: &str) -> Result<Option<Self>, FieldError> {
        Ok(Some(match text {
            "TLS_AUTO" => return Ok(None),
            "TLSV1_0" => Self::V1_0,
            "TLSV1_1" => Self::V1_1,
            "TLSV1_2" => Self::V1_2,
            "TLSV1_3" => Self::V1_3,
            other => {
                return Err(FieldError::new(
                    field,
                    format!("unknown TLS version {other:?}; expected TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3"),
                ))
            }
        }))
    }
}

/// How the gateway serves a server's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerKind {
    /// Plaintext HTTP/1.1 and h2c.
    Http,
    /// HTTPS: TLS terminated, then HTTP (ALPN h2 or http/1.1).
    TerminatedTls,
    /// TLS routed by SNI with `tls` routes, the bytes relayed unchanged.
    Passthrough,
    /// Plain TCP with `tcp` routes.
    Tcp,
    /// A `TLS` server that terminates (SIMPLE, MUTUAL): TLS terminated,
    /// then relayed as TCP with `tcp` routes, as Istio does.
    TerminatedTcp,
    /// A listener whose TLS servers are not all of one kind (say HTTPS
    /// SIMPLE and TLS PASSTHROUGH on 443): the server the SNI picks says
    /// ([`BoundServer::kind`](super::BoundServer)).
    MixedTls,
}

impl ListenerKind {
    /// A TLS handshake (its SNI at least) comes first.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::TerminatedTls | Self::Passthrough | Self::TerminatedTcp | Self::MixedTls)
    }
}

impl ServerModel {
    /// How this server's connections are served. HTTPS with PASSTHROUGH is
    /// passed through, as Istio does.
    pub fn kind(&self) -> ListenerKind {
        let passthrough = self.tls.as_ref().is_some_and(|tls| tls.mode.is_passthrough());
        match self.protocol {
            p if p.is_http() => ListenerKind::Http,
            ServerProtocol::Https if passthrough => ListenerKind::Passthrough,
            ServerProtocol::Https => ListenerKind::TerminatedTls,
            ServerProtocol::Tls if passthrough => ListenerKind::Passthrough,
            ServerProtocol::Tls => ListenerKind::TerminatedTcp,
            _ => ListenerKind::Tcp,
        }
    }

    /// How closely this server's hosts cover `name`; see [`ServerHost::matches`].
    pub fn host_specificity(&self, name: &str) -> Option<usize> {
        self.hosts.iter().filter_map(|h| host_specificity(&h.host, name)).max()
    }

    pub fn https_redirect(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.https_redirect)
    }
}

/// Cipher suites the gateway's TLS library offers (TLS 1.2; TLS 1.3 has
/// its own fixed set), by the OpenSSL names Istio and Envoy use.
pub const SUPPORTED_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// Envoy's `[a|b]` equal-preference groups, flattened.
pub fn cipher_names(suites: &[String]) -> Vec<String> {
    suites
        .iter()
        .flat_map(|s| s.trim_start_matches('[').trim_end_matches(']').split('|'))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A proto3 string: empty is unset.
pub(crate) fn set(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|t| !t.is_empty())
}

/// `spec.servers[i]` of a Gateway in `namespace`.
pub(crate) fn validate_server(at: &Path, server: &api::Server, namespace: &str) -> Result<ServerModel, FieldError> {
    let port = server.port.as_ref().ok_or_else(|| FieldError::new(at.field("port"), "required"))?;
    let port_at = at.child("port");
    let number = parse_port(&port_at.field("number"), port.number)?;
    let protocol_text = set(&port.protocol).ok_or_else(|| FieldError::new(port_at.field("protocol"), "required"))?;
    let (protocol, _) = ServerProtocol::parse(protocol_text).ok_or_else(|| {
        FieldError::new(
            port_at.field("protocol"),
            format!(
                "{protocol_text:?} is not a protocol a gateway serves; expected HTTP, HTTPS, HTTP2, GRPC, TCP or TLS"
            ),
        )
    })?;
    let port_name = set(&port.name).ok_or_else(|| FieldError::new(port_at.field("name"), "required"))?.to_owned();
    if port.target_port.is_some_and(|p| p > 0) {
        return Err(FieldError::new(port_at.field("targetPort"), "has no effect on Gateways (Istio refuses it)"));
    }
    let bind = match set(&server.bind) {
        None => None,
        Some(unix) if unix.starts_with("unix://") => {
            return Err(FieldError::new(at.field("bind"), "Unix domain sockets are not supported; bind an IP address"))
        }
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| FieldError::new(at.field("bind"), format!("{ip:?} is not an IP address")))?,
        ),
    };
    if server.hosts.is_empty() {
        return Err(FieldError::new(at.field("hosts"), "required: at least one host"));
    }
    let hosts = (server.hosts.iter().enumerate())
        .map(|(j, host)| parse_server_host(&format!("{}[{j}]", at.field("hosts")), host, namespace))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match &server.tls {
        None if protocol.is_tls() => {
            return Err(FieldError::new(at.field("tls"), format!("required for {} servers", protocol.as_str())))
        }
        None => None,
        Some(tls) => Some(validate_tls(&at.child("tls"), tls, protocol, namespace)?),
    };
    Ok(ServerModel { port: number, port_name, protocol, hosts, bind, name: set(&server.name).map(str::to_owned), tls })
}

/// Istio's `ValidateNamespaceSlashWildcardHostname` for gateways.
fn parse_server_host(field: &str, text: &str, namespace: &str) -> Result<ServerHost, FieldError> {
    let (prefix, host) = match text.split_once('/') {
        Some((prefix, host)) => (Some(prefix), host),
        None => (None, text),
    };
    let namespace = match prefix {
        None | Some("*") => None,
        Some(".") => Some(namespace.to_owned()),
        Some(ns) if is_istio_label(ns) => Some(ns.to_owned()),
        Some(ns) => {
            return Err(FieldError::new(
                field,
                format!("{ns:?} is not a namespace (`*/`, `./` or a namespace name before the host)"),
            ))
        }
    };
    validate_host_name(field, host)?;
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    Ok(ServerHost { namespace, host })
}

/// Istio's `validateTLSOptions`, and what `tls` may be for the protocol.
fn validate_tls(
    at: &Path,
    tls: &ServerTlsSettings,
    protocol: ServerProtocol,
    namespace: &str,
) -> Result<ServerTls, FieldError> {
    let mode = match set(&tls.mode) {
        None => ServerTlsMode::Passthrough,
        Some(text) => ServerTlsMode::parse(text).ok_or_else(|| {
            FieldError::new(
                at.field("mode"),
                format!(
                    "unknown TLS mode {text:?}; expected PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, \
                     ISTIO_MUTUAL or OPTIONAL_MUTUAL"
                ),
            )
        })?,
    };
    let (cert, key, ca) = (set(&tls.server_certificate), set(&tls.private_key), set(&tls.ca_certificates));
    let credential = set(&tls.credential_name);
    let crl = set(&tls.ca_crl);
    // Only `httpsRedirect` on a plaintext HTTP server: its mode stays the
    // default PASSTHROUGH and it names no files.
    if !protocol.is_tls() {
        if !protocol.is_http() {
            return Err(at.error(format!("{} servers take no TLS settings; use TLS or HTTPS", protocol.as_str())));
        }
        let files = [("serverCertificate", cert), ("privateKey", key), ("caCertificates", ca)];
        let named = files.iter().find(|(_, value)| value.is_some()).map(|(field, _)| *field);
        if let Some(field) = (!mode.is_passthrough()).then_some("mode").or(named) {
            return Err(FieldError::new(
                at.field(field),
                "plaintext HTTP servers take only httpsRedirect; use HTTPS to terminate TLS",
            ));
        }
    }
    let min_protocol_version = match set(&tls.min_protocol_version) {
        Some(text) => TlsVersion::parse(&at.field("minProtocolVersion"), text)?,
        None => None,
    };
    let max_protocol_version = match set(&tls.max_protocol_version) {
        Some(text) => TlsVersion::parse(&at.field("maxProtocolVersion"), text)?,
        None => None,
    };
    if let (Some(min), Some(max)) = (min_protocol_version, max_protocol_version) {
        if min > max {
            return Err(FieldError::new(
                at.field("minProtocolVersion"),
                format!("{min:?} is above maxProtocolVersion {max:?}"),
            ));
        }
    }
    let mode_name = set(&tls.mode).unwrap_or("PASSTHROUGH");
    let certificate = match mode {
        _ if !protocol.is_tls() => None,
        ServerTlsMode::IstioMutual => {
            let named = [
                ("serverCertificate", cert),
                ("privateKey", key),
                ("caCertificates", ca),
                ("credentialName", credential),
            ];
            if let Some((field, _)) = named.iter().find(|(_, value)| value.is_some()) {
                return Err(FieldError::new(
                    at.field(field),
                    "ISTIO_MUTUAL uses the mesh's own certificates: it takes no certificate, key, CA or credentialName",
                ));
            }
            None
        }
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => None,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            if crl.is_some() && credential.is_some() {
                return Err(FieldError::new(
                    at.field("caCrl"),
                    "cannot be combined with credentialName (put the CRL in the credential)",
                ));
            }
            if crl.is_some() && mode == ServerTlsMode::Simple {
                return Err(FieldError::new(at.field("caCrl"), "SIMPLE verifies no client certificates"));
            }
            match credential {
                Some(name) => {
                    Some(ServerCertificate::Secret { namespace: namespace.to_owned(), name: name.to_owned() })
                }
                None => {
                    let needs = |field: &str, value: Option<&str>| -> Result<String, FieldError> {
                        value.map(str::to_owned).ok_or_else(|| {
                            FieldError::new(
                                at.field(field),
                                format!("required for {mode_name} (or name a Secret with credentialName)"),
                            )
                        })
                    };
                    let cert = needs("serverCertificate", cert)?;
                    let key = needs("privateKey", key)?;
                    let ca = match mode {
                        ServerTlsMode::Simple => None,
                        _ => Some(needs("caCertificates", ca)?),
                    };
                    Some(ServerCertificate::Files { cert, key, ca })
                }
            }
        }
    };
    Ok(ServerTls {
        https_redirect: tls.https_redirect.unwrap_or(false),
        mode,
        certificate,
        subject_alt_names: tls.subject_alt_names.clone(),
        min_protocol_version,
        max_protocol_version,
        cipher_suites: cipher_names(&tls.cipher_suites),
    })
}
