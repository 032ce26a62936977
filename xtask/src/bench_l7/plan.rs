//! What the bench measures and where: the paths, the loads, the options,
//! and the addresses, ports and CPUs everything uses.

use mesh_tests::NODE_IPV4;

/// The response body size.
pub(super) const BODY_BYTES: usize = 1024;
/// The service in front of the meshed backend pod (`mesh`).
pub(super) const SERVICE_IP: &str = "10.96.0.20";
/// The service in front of the backend pod outside the mesh (`mesh-remote`).
pub(super) const REMOTE_SERVICE_IP: &str = "10.96.0.21";
/// The service whose port speaks HTTP/2 to the meshed backend pod (`bench h2`).
pub(super) const H2_SERVICE_IP: &str = "10.96.0.22";
pub(super) const SERVICE_PORT: u16 = 80;
pub(super) const CLIENT_IP: (&str, &str) = ("10.244.0.2", "fd00:244::2");
pub(super) const BACKEND_IP: (&str, &str) = ("10.244.1.2", "fd00:244::1:2");
pub(super) const MESHED_BACKEND_IP: (&str, &str) = ("10.244.2.2", "fd00:244::2:2");
pub(super) const BACKEND_PORT: u16 = 8080;
/// The meshed backend pod's HTTP/2 (prior knowledge) server (`bench h2`).
pub(super) const H2_BACKEND_PORT: u16 = 8081;
/// CPU of the load generator and the backend; the proxy gets the other.
pub(super) const CLIENT_CPU: usize = 0;
pub(super) const PROXY_CPU: usize = 1;

/// One path a request can take, as `--paths` names it.
#[derive(Clone, Copy, PartialEq)]
pub enum PathKind {
    Direct,
    DirectBpf,
    Mesh,
    /// The mesh path with [`FILLER_SERVICES`] more services configured,
    /// each with a VirtualService: routing must not cost more per request.
    MeshManyServices,
    MeshRemote,
    Nginx,
    Haproxy,
    Envoy,
    /// TLS-terminating ingress: `mesh-agent gateway` on the node.
    Gateway,
    /// nginx terminating the same TLS.
    NginxTls,
}

impl PathKind {
    pub const ALL: [PathKind; 10] = [
        PathKind::Direct,
        PathKind::DirectBpf,
        PathKind::Mesh,
        PathKind::MeshManyServices,
        PathKind::MeshRemote,
        PathKind::Nginx,
        PathKind::Haproxy,
        PathKind::Envoy,
        PathKind::Gateway,
        PathKind::NginxTls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::DirectBpf => "direct+bpf",
            PathKind::Mesh => "mesh",
            PathKind::MeshManyServices => "mesh-10k-services",
            PathKind::MeshRemote => "mesh-remote",
            PathKind::Nginx => "nginx",
            PathKind::Haproxy => "haproxy",
            PathKind::Envoy => "envoy",
            PathKind::Gateway => "gateway",
            PathKind::NginxTls => "nginx-tls",
        }
    }

    /// The scheme the client speaks: the TLS paths terminate HTTPS.
    pub(super) fn scheme(self) -> &'static str {
        match self {
            PathKind::Gateway | PathKind::NginxTls => "https",
            _ => "http",
        }
    }

    /// Parses a `--paths` entry.
    pub fn parse(name: &str) -> Result<PathKind, String> {
        PathKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = PathKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown path {name:?}; one of {}", names.join(", "))
        })
    }

    /// Whether the agent's proxy serves this path.
    pub(super) fn is_mesh(self) -> bool {
        matches!(self, PathKind::Mesh | PathKind::MeshManyServices | PathKind::MeshRemote)
    }

    /// Where the client sends its requests.
    pub(super) fn target(self) -> String {
        match self {
            PathKind::Direct | PathKind::DirectBpf => format!("{}:{BACKEND_PORT}", BACKEND_IP.0),
            PathKind::Mesh | PathKind::MeshManyServices => format!("{SERVICE_IP}:{SERVICE_PORT}"),
            PathKind::MeshRemote => format!("{REMOTE_SERVICE_IP}:{SERVICE_PORT}"),
            PathKind::Nginx => format!("{NODE_IPV4}:18080"),
            PathKind::Haproxy => format!("{NODE_IPV4}:18081"),
            PathKind::Envoy => format!("{NODE_IPV4}:18082"),
            PathKind::Gateway => format!("{NODE_IPV4}:18443"),
            PathKind::NginxTls => format!("{NODE_IPV4}:18444"),
        }
    }
}

/// The services `mesh-10k-services` adds to the mesh's configuration.
pub(super) const FILLER_SERVICES: u32 = 10_000;

/// The load a run applies.
#[derive(Clone, Copy)]
pub(super) enum Load {
    Rate(u32),
    Max,
}

pub(super) fn load_name(load: Load) -> String {
    match load {
        Load::Rate(rate) => format!("{rate} rps"),
        Load::Max => "max".into(),
    }
}

/// The command line of `bench l7`.
pub struct Options {
    pub paths: Vec<PathKind>,
    pub rates: Vec<u32>,
    pub connections: u32,
    pub seconds: u32,
    pub rounds: u32,
}

impl Options {
    /// The loads each path runs, in order: the fixed rates, then the maximum.
    pub(super) fn loads(&self) -> Vec<Load> {
        self.rates.iter().map(|&r| Load::Rate(r)).chain([Load::Max]).collect()
    }
}
