//! Kubernetes objects the API-server tests serve, as JSON: in namespace
//! `shop`, port 80 to target port 8080 (named `main`).

use serde_json::{json, Value};

/// Service `name` in `shop` at cluster IP `ip`.
pub fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"clusterIP": ip, "ports": [{"name": "main", "port": 80, "targetPort": 8080}]}})
}

/// The IPv4 EndpointSlice of `service` with one endpoint per address.
pub fn slice(service: &str, addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> = addresses.iter().map(|a| json!({"addresses": [a]})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-v4"), "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": [{"name": "main", "port": 8080}], "endpoints": endpoints})
}
