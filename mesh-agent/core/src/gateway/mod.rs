//! STUB (replaced by the real module from branch i14-core): the interface
//! the gateway process is written against.
#![allow(dead_code, unused_variables)]

use crate::model::Model;
use crate::route::{HttpRoute, TcpRoute, TlsRoute};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq)]
pub struct GatewayModel {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<ServerModel>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerModel {
    pub port: u16,
    pub port_name: String,
    pub protocol: ServerProtocol,
    pub hosts: Vec<ServerHost>,
    pub bind: Option<IpAddr>,
    pub name: Option<String>,
    pub tls: Option<ServerTls>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerProtocol {
    Http,
    Https,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost {
    pub namespace: Option<String>,
    pub host: String,
}

impl ServerHost {
    pub fn matches(&self, host: &str) -> bool {
        unimplemented!()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerTls {
    pub https_redirect: bool,
    pub mode: ServerTlsMode,
    pub certificate: Option<ServerCertificate>,
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<TlsVersion>,
    pub max_protocol_version: Option<TlsVersion>,
    pub cipher_suites: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerCertificate {
    Files { cert: String, key: String, ca: Option<String> },
    Secret { namespace: String, name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

#[derive(Clone, Debug, Default)]
pub struct GatewayPlan {
    pub listeners: Vec<Listener>,
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub port: u16,
    pub bind: Option<IpAddr>,
    pub kind: ListenerKind,
    pub servers: Vec<BoundServer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Http,
    TerminatedTls,
    Passthrough,
    Tcp,
}

#[derive(Clone, Debug)]
pub struct BoundServer {
    pub gateway_namespace: String,
    pub gateway_name: String,
    pub server: ServerModel,
    pub virtual_hosts: Vec<VirtualHost>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
}

#[derive(Clone, Debug)]
pub struct VirtualHost {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub routes: Vec<HttpRoute>,
}

impl GatewayPlan {
    pub fn compile(model: &Model, labels: &BTreeMap<String, String>, cluster_domain: &str) -> GatewayPlan {
        unimplemented!()
    }
}

impl Listener {
    pub fn server_for_sni(&self, sni: Option<&str>) -> Option<&BoundServer> {
        unimplemented!()
    }

    pub fn route<'a>(
        &'a self,
        server: Option<&'a BoundServer>,
        host: &str,
    ) -> Option<(&'a BoundServer, &'a VirtualHost)> {
        unimplemented!()
    }
}
