//! Validation results written back to each Istio object's
//! `status.conditions` (type `Reconciled`), and the fields it sets that are
//! not honoured as `status.validationMessages` (level `WARNING`, as istiod
//! writes its analysis messages), by one agent of the cluster: the
//! holder of the `coordination.k8s.io` Lease `mesh-agent-status` in the
//! agents' namespace. Every agent competes for it; the holder renews it, and
//! another takes it over once it has seen no renewal for a lease duration
//! (measured on its own clock, as client-go does, so clock skew between
//! nodes does not matter).

use super::watch::{KubeStore, ISTIO_KINDS};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use mesh_core::object::{ObjectKey, Warning, WarningReason};
use mesh_core::published::Published;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const LEASE_NAME: &str = "mesh-agent-status";

#[derive(Clone, Debug)]
pub struct LeaseTiming {
    /// How long a holder's claim lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews and the others look.
    pub renew_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self { duration: Duration::from_secs(15), renew_every: Duration::from_secs(5) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("lease {namespace}/{LEASE_NAME}: {source}")]
    Lease { namespace: String, source: kube::Error },
}

/// The condition an object gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The condition for one Istio object, from the snapshot's rejections.
pub fn condition_for(key: &ObjectKey, published: &Published) -> Reconciled {
    if !super::watch::ISTIO_KINDS.iter().any(|kind| kind.kind == key.kind) {
        return Reconciled {
            accepted: false,
            reason: "Unsupported",
            message: format!("mesh-agent does not implement {} yet; this object has no effect", key.kind),
        };
    }
    let problems: Vec<String> = published
        .snapshot
        .rejections
        .iter()
        .filter(|r| r.kind == key.kind && r.namespace == key.namespace && r.name == key.name)
        .map(|r| if r.field.is_empty() { r.message.clone() } else { format!("{}: {}", r.field, r.message) })
        .collect();
    if problems.is_empty() {
        // A Gateway is applied by the gateway processes its selector picks.
        let message = if key.kind == "Gateway" {
            "accepted; applied by the gateway workloads its selector picks"
        } else {
            "applied to the dataplane"
        };
        Reconciled { accepted: true, reason: "Accepted", message: message.into() }
    } else {
        Reconciled { accepted: false, reason: "Rejected", message: problems.join("; ") }
    }
}

/// One entry of `status.validationMessages`, in istiod's shape (`level`,
/// `type`), with the field and what happens instead as `description`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValidationMessage {
    pub level: &'static str,
    #[serde(rename = "type")]
    pub type_: MessageType,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageType {
    pub code: &'static str,
    pub name: &'static str,
}

impl ValidationMessage {
    fn of(warning: &Warning) -> Self {
        // Codes of the mesh's own (istiod's are IST0xxx).
        let (code, name) = match warning.reason {
            WarningReason::NotHonoured => ("MESH0001", "FieldNotHonoured"),
            WarningReason::UnknownField => ("MESH0002", "UnknownField"),
        };
        ValidationMessage {
            level: "WARNING",
            type_: MessageType { code, name },
            description: format!("{}: {}", warning.field, warning.message),
        }
    }
}

/// The warnings of one object that serves, as validation messages.
pub fn validation_messages_for(key: &ObjectKey, published: &Published) -> Vec<ValidationMessage> {
    (published.snapshot.model.warnings.iter())
        .filter(|w| w.kind == key.kind && w.namespace == key.namespace && w.name == key.name)
        .map(ValidationMessage::of)
        .collect()
}

/// The `status` merge patch for one object. No messages clear any written
/// before (`null` removes the key).
/// The status patch: our `Reconciled` condition beside the conditions of
/// other types that `current` (the object as read) holds, so another
/// controller's conditions survive; with `current`'s resourceVersion, so a
/// write that races another one fails (409) instead of dropping its
/// conditions.
fn status_patch(
    generation: Option<i64>,
    condition: &Reconciled,
    transition: &str,
    messages: &[ValidationMessage],
    current: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut conditions: Vec<serde_json::Value> = (current)
        .and_then(|object| object["status"]["conditions"].as_array())
        .map(|all| all.iter().filter(|c| c["type"] != RECONCILED).cloned().collect())
        .unwrap_or_default();
    conditions.push(serde_json::json!({
        "type": RECONCILED,
        "status": if condition.accepted { "True" } else { "False" },
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }));
    let mut patch = serde_json::json!({
        "status": {
            "observedGeneration": generation,
            "conditions": conditions,
            "validationMessages": if messages.is_empty() { None } else { Some(messages) },
        }
    });
    if let Some(version) = current.and_then(|object| object["metadata"]["resourceVersion"].as_str()) {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    patch
}

const RECONCILED: &str = "Reconciled";

/// What was last written for an object: generation, condition, its
/// messages, when the condition last flipped, and the uid of the object
/// it was written to (one deleted and made again under the same name is
/// another object, written afresh).
type Written = (Option<i64>, Reconciled, Vec<ValidationMessage>, String, Option<String>);

/// Competes for the Lease and, while holding it, keeps the conditions of
/// every Istio object in the store up to date.
pub struct StatusWriter {
    client: kube::Client,
    namespace: String,
    identity: String,
    timing: LeaseTiming,
    store: KubeStore,
    published: watch::Receiver<Arc<Published>>,
    leading: Arc<AtomicBool>,
    /// The holder and renewal last seen, and when (on our clock).
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// What this agent last wrote per object.
    written: HashMap<ObjectKey, Written>,
}

impl StatusWriter {
    pub fn new(
        client: kube::Client,
        namespace: String,
        identity: String,
        timing: LeaseTiming,
        store: KubeStore,
        published: watch::Receiver<Arc<Published>>,
    ) -> Self {
        Self {
            client,
            namespace,
            identity,
            timing,
            store,
            published,
            leading: Arc::default(),
            observed: None,
            written: HashMap::new(),
        }
    }

    /// True while this agent holds the Lease (for status).
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }

    pub async fn run(mut self) {
        loop {
            let leading = match self.claim().await {
                Ok(leading) => leading,
                Err(error) => {
                    tracing::warn!(%error, "status lease unavailable");
                    false
                }
            };
            if leading != self.leading.swap(leading, Ordering::Relaxed) {
                tracing::info!(identity = %self.identity, leading, "status writer lease changed hands");
                // A new holder cannot know what the last one wrote.
                self.written.clear();
            }
            if leading {
                self.write_conditions().await;
            }
            // Renew on schedule; while leading, also write on a new snapshot.
            let next = tokio::time::sleep(self.timing.renew_every);
            tokio::pin!(next);
            loop {
                tokio::select! {
                    _ = &mut next => break,
                    changed = self.published.changed(), if leading => {
                        if changed.is_err() { return; }
                        self.write_conditions().await;
                    }
                }
            }
        }
    }

    /// Takes or renews the Lease; true when this agent holds it.
    async fn claim(&mut self) -> Result<bool, StatusError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let lease_error = |source| StatusError::Lease { namespace: self.namespace.clone(), source };
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = api.get_opt(LEASE_NAME).await.map_err(lease_error)? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return conflict_is_false(api.create(&PostParams::default(), &lease).await).map_err(lease_error);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let observed = (spec.holder_identity.clone(), spec.renew_time.clone());
        let unchanged_since = match &self.observed {
            Some((holder, renew, at)) if (holder, renew) == (&observed.0, &observed.1) => *at,
            _ => Instant::now(),
        };
        self.observed = Some((observed.0.clone(), observed.1.clone(), unchanged_since));
        let held_by_me = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration =
            spec.lease_duration_seconds.map(|s| Duration::from_secs(s.max(1) as u64)).unwrap_or(self.timing.duration);
        let expired =
            spec.holder_identity.as_deref().is_none_or(str::is_empty) || unchanged_since.elapsed() >= duration;
        if !held_by_me && !expired {
            return Ok(false);
        }
        let (acquired, transitions) = match held_by_me {
            true => (spec.acquire_time.clone().unwrap_or(now.clone()), spec.lease_transitions.unwrap_or(0)),
            false => (now.clone(), spec.lease_transitions.unwrap_or(0) + 1),
        };
        lease.spec = Some(self.spec(acquired, now, transitions));
        // The resourceVersion makes this a compare-and-swap: of two agents
        // taking over at once, one gets 409.
        conflict_is_false(api.replace(LEASE_NAME, &PostParams::default(), &lease).await).map_err(lease_error)
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Patches the status of every Istio object whose condition or
    /// generation changed since this agent last wrote it.
    async fn write_conditions(&mut self) {
        let published = self.published.borrow().clone();
        if !published.ready || !self.leading.load(Ordering::Relaxed) {
            return;
        }
        // A watch that is down (or relisting) leaves the snapshot stale:
        // status written from it could say what is no longer true.
        let watches = self.store.state();
        // A kind the server does not serve is empty, not failing; Secrets
        // only feed TLS, not what status says.
        let failing = |kind: &super::watch::KindState| {
            kind.error.is_some() && !kind.not_served && !kind.name.starts_with("Secret")
        };
        if !watches.synced || watches.kinds.iter().any(failing) {
            tracing::debug!("a watch is not synced; status waits");
            return;
        }
        let mut claimed = std::time::Instant::now();
        for kind in &ISTIO_KINDS {
            let resource: ApiResource = kind.api_resource();
            for (key, latest_generation, uid) in self.store.istio_objects(kind.kind) {
                // A long pass (thousands of objects) keeps renewing, and
                // stops if the Lease went to another agent meanwhile.
                if claimed.elapsed() >= self.timing.renew_every {
                    claimed = std::time::Instant::now();
                    if !self.claim().await.unwrap_or(false) {
                        self.leading.store(false, Ordering::Relaxed);
                        self.written.clear();
                        return;
                    }
                }
                let condition = condition_for(&key, &published);
                // Accepted: the generation that serves (a newer one may not
                // have compiled yet). Rejected: the one the reasons are about.
                let generation = match condition.accepted {
                    true => published.snapshot.model.served_generation(&key).or(latest_generation),
                    false => latest_generation,
                };
                let messages = validation_messages_for(&key, &published);
                let previous = self.written.get(&key).filter(|(.., written_to)| *written_to == uid);
                if previous.is_some_and(|(g, c, m, ..)| (g, c, m) == (&generation, &condition, &messages)) {
                    continue;
                }
                let flipped =
                    previous.is_none_or(|(_, c, ..)| (c.accepted, c.reason) != (condition.accepted, condition.reason));
                let transition = match previous {
                    Some((_, _, _, at, _)) if !flipped => at.clone(),
                    _ => Timestamp::now().to_string(),
                };
                let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &key.namespace, &resource);
                // Read, merge, write; a race with another writer (409) is
                // read again, once. The object is read through its own
                // resource, which carries the status too: the ClusterRole
                // grants `get` there and only `patch` on `/status`.
                let mut outcome = None;
                for _ in 0..2 {
                    let current = match api.get(&key.name).await {
                        Ok(object) => serde_json::to_value(object).ok(),
                        Err(error) => {
                            outcome = Some(Err(error));
                            break;
                        }
                    };
                    let body = status_patch(generation, &condition, &transition, &messages, current.as_ref());
                    let written = api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body)).await;
                    let raced = matches!(&written, Err(kube::Error::Api(status)) if status.code == 409);
                    outcome = Some(written.map(drop));
                    if !raced {
                        break;
                    }
                }
                match outcome {
                    Some(Ok(())) => drop(self.written.insert(key, (generation, condition, messages, transition, uid))),
                    // Deleted since the store saw it: nothing to report on.
                    Some(Err(kube::Error::Api(status))) if status.code == 404 => {
                        tracing::debug!(kind = %key.kind, namespace = %key.namespace, name = %key.name, "gone before its status was written")
                    }
                    Some(Err(error)) => {
                        tracing::warn!(kind = %key.kind, namespace = %key.namespace, name = %key.name, %error, "status not written")
                    }
                    None => {}
                }
            }
        }
        // Objects that are gone need nothing more.
        let present: std::collections::HashSet<ObjectKey> = ISTIO_KINDS
            .iter()
            .flat_map(|kind| self.store.istio_objects(kind.kind).into_iter().map(|(key, ..)| key))
            .collect();
        self.written.retain(|key, _| present.contains(key));
    }
}

/// A write that lost a race (409 Conflict / AlreadyExists) means another
/// agent holds the Lease.
fn conflict_is_false<T>(result: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::decode::parse_file;
    use mesh_core::model::Model;
    use mesh_core::snapshot::compile;

    fn published(text: &str) -> Published {
        let objects = parse_file("", text).unwrap();
        let model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
        Published { snapshot: Arc::new(compile(&model, "cluster.local")), ready: true, reloads: 1, last_reload: None }
    }

    fn key(kind: &str, name: &str) -> ObjectKey {
        ObjectKey { kind: kind.into(), namespace: "shop".into(), name: name.into() }
    }

    #[test]
    fn warnings_go_to_validation_messages_and_leave_the_condition_accepted() {
        let published = published(concat!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: mtls, namespace: shop}\n",
            "spec:\n  host: web\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, colour: red}\n",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: plain, namespace: shop}\n",
            "spec:\n  host: db\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n",
        ));
        let mtls = key("DestinationRule", "mtls");
        let condition = condition_for(&mtls, &published);
        assert_eq!((condition.accepted, condition.reason), (true, "Accepted"));
        let messages = validation_messages_for(&mtls, &published);
        let body = status_patch(Some(3), &condition, "2026-01-01T00:00:00Z", &messages, None);
        let written = &body["status"]["validationMessages"];
        assert_eq!(written.as_array().map(Vec::len), Some(2), "{body}");
        assert_eq!(written[0]["level"], "WARNING");
        assert_eq!(written[0]["type"], serde_json::json!({"code": "MESH0001", "name": "FieldNotHonoured"}));
        let description = written[0]["description"].as_str().unwrap();
        assert!(description.starts_with("spec.trafficPolicy.tls.mode: ISTIO_MUTUAL: "), "{description}");
        assert_eq!(written[1]["type"]["name"], "UnknownField");
        assert_eq!(
            written[1]["description"],
            "spec.trafficPolicy.colour: not a field of DestinationRule in networking.istio.io/v1; ignored"
        );
        assert_eq!(body["status"]["conditions"][0]["status"], "True");
        assert_eq!(body["status"]["observedGeneration"], 3);
        // No warnings: the key is cleared rather than left as it was.
        let plain = key("DestinationRule", "plain");
        assert!(validation_messages_for(&plain, &published).is_empty());
        let body = status_patch(None, &condition_for(&plain, &published), "t", &[], None);
        assert!(body["status"].as_object().unwrap()["validationMessages"].is_null(), "{body}");
    }

    #[test]
    fn another_controllers_conditions_are_kept_and_a_race_is_caught() {
        let current = serde_json::json!({
            "metadata": {"name": "web", "resourceVersion": "42"},
            "status": {"conditions": [
                {"type": "Reconciled", "status": "False", "reason": "Rejected"},
                {"type": "Ready", "status": "True", "reason": "ByOtherController"},
            ]},
        });
        let condition = Reconciled { accepted: true, reason: "Accepted", message: "applied".into() };
        let body = status_patch(Some(2), &condition, "t", &[], Some(&current));
        let conditions = body["status"]["conditions"].as_array().unwrap();
        let kinds: Vec<(&str, &str)> =
            conditions.iter().map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap())).collect();
        assert_eq!(kinds, [("Ready", "True"), ("Reconciled", "True")], "ours replaced, theirs kept");
        assert_eq!(body["metadata"]["resourceVersion"], "42", "a write that raced another fails instead");
    }

    #[test]
    fn gateways_are_reconciled_and_kinds_not_implemented_are_unsupported() {
        let gateway = |name: &str, protocol: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: {protocol}}}\n    hosts: ['*']\n")
        };
        let published = published(&[gateway("good", "HTTP"), gateway("bad", "HTTPX")].concat());
        let good = condition_for(&key("Gateway", "good"), &published);
        assert_eq!((good.accepted, good.reason), (true, "Accepted"));
        let bad = condition_for(&key("Gateway", "bad"), &published);
        assert_eq!((bad.accepted, bad.reason), (false, "Rejected"));
        assert!(bad.message.starts_with("spec.servers[0].port.protocol: \"HTTPX\""), "{}", bad.message);
        let condition = condition_for(&key("EnvoyFilter", "x"), &published);
        assert_eq!((condition.accepted, condition.reason), (false, "Unsupported"));
    }
}
