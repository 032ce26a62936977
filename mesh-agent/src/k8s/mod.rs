//! The Kubernetes side of the agent: the Istio CRD types (and the manifests
//! generated from them), the API-server config source, and the status
//! conditions written back by the holder of a Lease.

pub mod conditions;
pub mod crd;
pub mod watch;

pub use conditions::{LeaseTiming, StatusWriter};
pub use watch::{gateway_watched_kinds, watched_kinds, KubeSource, KubeStore, SourceState};

use mesh_core::locality::Locality;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig { path: std::path::PathBuf, source: kube::config::KubeconfigError },
    #[error("Kubernetes client configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig` when given, else as kubectl finds one: the
/// in-cluster service account, `KUBECONFIG`, or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| ClientError::Kubeconfig { path: path.to_owned(), source };
            let file = kube::config::Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(file, &Default::default()).await.map_err(error)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Every (API group, resource, verb) the agent uses, cluster-wide, and in
/// its own namespace: what `deploy/rbac.yaml` must grant, exactly.
pub fn required_permissions() -> (Permissions, Permissions) {
    let mut cluster = Permissions::new();
    for kind in watched_kinds(Some("any")) {
        for verb in ["get", "list", "watch"] {
            cluster.insert((kind.group.into(), kind.plural.into(), verb.into()));
        }
    }
    // Secrets are watched one by one, by name (a field selector), but RBAC
    // cannot scope list/watch to names not known in advance.
    for verb in ["get", "list", "watch"] {
        cluster.insert(("".into(), "secrets".into(), verb.into()));
    }
    for kind in watch::ISTIO_KINDS {
        cluster.insert((kind.group.into(), format!("{}/status", kind.plural), "patch".into()));
    }
    // Its own Node, once, for its locality.
    cluster.insert(("".into(), "nodes".into(), "get".into()));
    let namespaced = ["get", "create", "update"]
        .into_iter()
        .map(|verb| ("coordination.k8s.io".into(), "leases".into(), verb.into()))
        .collect();
    (cluster, namespaced)
}

pub type Permissions = std::collections::BTreeSet<(String, String, String)>;

/// What a gateway reads cluster-wide (its Secrets are read in its own
/// namespace only, through a Role).
pub fn gateway_required_permissions() -> Permissions {
    let mut cluster = Permissions::new();
    for kind in gateway_watched_kinds() {
        for verb in ["get", "list", "watch"] {
            cluster.insert((kind.group.into(), kind.plural.into(), verb.into()));
        }
    }
    cluster
}

/// The locality of Node `name`, from its labels
/// (`topology.kubernetes.io/region` and `zone`, Istio's
/// `topology.istio.io/subzone`); None when it has neither region nor zone.
pub async fn node_locality(client: &kube::Client, name: &str) -> Result<Option<Locality>, kube::Error> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let node = nodes.get(name).await?;
    let labels = node.metadata.labels.unwrap_or_default();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    let locality = Locality {
        region: label("topology.kubernetes.io/region"),
        zone: label("topology.kubernetes.io/zone"),
        subzone: label("topology.istio.io/subzone"),
    };
    Ok((!locality.region.is_empty() || !locality.zone.is_empty()).then_some(locality))
}
