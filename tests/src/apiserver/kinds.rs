//! The served kinds, and the key an object is stored under.

/// One served resource type.
pub(super) struct Kind {
    pub(super) group: &'static str,
    version: &'static str,
    pub(super) kind: &'static str,
    pub(super) plural: &'static str,
    /// Has a `/status` subresource: then writes to the main resource keep
    /// the stored status, as on a real server.
    pub(super) status_subresource: bool,
}

impl Kind {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural[.group]`, as in the API server's messages.
    pub(super) fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Every served kind; all are namespaced.
pub(super) const KINDS: &[Kind] = &[
    Kind { group: "", version: "v1", kind: "Service", plural: "services", status_subresource: true },
    Kind { group: "", version: "v1", kind: "Pod", plural: "pods", status_subresource: true },
    Kind { group: "", version: "v1", kind: "Secret", plural: "secrets", status_subresource: false },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        status_subresource: false,
    },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "VirtualService",
        plural: "virtualservices",
        status_subresource: true,
    },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "DestinationRule",
        plural: "destinationrules",
        status_subresource: true,
    },
    Kind { group: "networking.istio.io", version: "v1", kind: "Gateway", plural: "gateways", status_subresource: true },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "ServiceEntry",
        plural: "serviceentries",
        status_subresource: true,
    },
    Kind { group: "networking.istio.io", version: "v1", kind: "Sidecar", plural: "sidecars", status_subresource: true },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "WorkloadEntry",
        plural: "workloadentries",
        status_subresource: true,
    },
    Kind { group: "coordination.k8s.io", version: "v1", kind: "Lease", plural: "leases", status_subresource: false },
];

pub(super) fn kind_by_type(api_version: &str, kind: &str) -> Option<usize> {
    KINDS.iter().position(|k| k.kind == kind && k.api_version() == api_version)
}

pub(super) fn kind_by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    KINDS.iter().position(|k| k.group == group && k.version == version && k.plural == plural)
}

/// (index in [`KINDS`], namespace, name).
pub(super) type Key = (usize, String, String);

/// The key of the object of that type, namespace ("default" if none) and name.
pub(super) fn key_of(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Key> {
    Some((kind_by_type(api_version, kind)?, namespace.unwrap_or("default").to_string(), name.to_string()))
}
