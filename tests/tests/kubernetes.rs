//! The API-server source and the status writer against a fake API server
//! that holds the HTTP conversation a real one has (list, watch events,
//! bookmarks, 410 Gone, dropped streams), reached through kube-rs's
//! mock-service client. No kernel needed: these check the model the agent
//! builds and the status it writes; `kubernetes_kernel.rs` drives the maps.

use mesh_agent::k8s::{watched_kinds, KubeSource, LeaseTiming, StatusWriter};
use mesh_agent::source::{ConfigSource, FileSource, POLL_INTERVAL};
use mesh_core::model::Model;
use mesh_core::object::SourceBatch;
use mesh_core::published::Published;
use mesh_core::snapshot::compile;
use mesh_tests::apiserver::FakeApiServer;
use mesh_tests::wait_until;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DOMAIN: &str = "cluster.local";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn service(name: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}})
}

fn slice(service: &str, pods: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(pod, ip)| json!({"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-1"), "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
}

fn pod(name: &str, node: &str, ip: &str, version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web", "version": version}},
           "spec": {"nodeName": node, "containers": [{"name": "app", "image": "web"}]},
           "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn rule() -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
           "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                {"name": "v2", "labels": {"version": "v2"}}]}})
}

fn virtual_service(name: &str, subset: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": subset}}]}]}})
}

/// The objects most tests serve: one HTTP service over two pods, a rule
/// with two subsets, a VirtualService, and one that names a subset that
/// does not exist (rejected).
fn objects(second_pod_node: &str) -> Vec<Value> {
    vec![
        service("web", "10.96.0.10", 80),
        slice("web", &[("web-1", "10.244.1.2"), ("web-2", "10.244.2.2")]),
        pod("web-1", "node-a", "10.244.1.2", "v1"),
        pod("web-2", second_pod_node, "10.244.2.2", "v2"),
        rule(),
        virtual_service("web", "v2"),
        virtual_service("broken", "v9"),
    ]
}

/// Polls until the source has a batch (every kind listed, something new).
fn next_batch(source: &mut dyn ConfigSource) -> SourceBatch {
    let mut batch = None;
    wait_until(Duration::from_secs(10), || {
        batch = source.poll().unwrap();
        batch.is_some()
    });
    batch.expect("no batch from the source within 10 s")
}

fn model_of(batch: &SourceBatch) -> Model {
    Model::from_batch(batch, &Model::default(), DOMAIN)
}

/// The model of the first batch (within 10 s) for which `wanted` holds.
fn model_when(source: &mut dyn ConfigSource, wanted: impl Fn(&Model) -> bool) -> Model {
    let mut last = None;
    let found = wait_until(Duration::from_secs(10), || {
        let Some(batch) = source.poll().unwrap() else { return false };
        let model = model_of(&batch);
        let done = wanted(&model);
        last = Some(model);
        done
    });
    let model = last.expect("no batch from the source within 10 s");
    assert!(found, "no such model within 10 s; the last: {:?}", model.services.keys().collect::<Vec<_>>());
    model
}

fn list_requests(server: &FakeApiServer, plural: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|(_, method, path)| {
            method == "GET" && path.split('?').next().is_some_and(|p| p.ends_with(plural)) && !path.contains("watch=")
        })
        .count()
}

#[test]
fn objects_appear_change_and_vanish_and_remote_pods_are_known_by_their_labels() {
    let runtime = runtime();
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    for object in objects("node-b") {
        server.apply(object);
    }
    let mut source = KubeSource::start(server.client("agent"), watched_kinds(Some("node-a")), runtime.handle());

    let model = model_of(&next_batch(&mut source));
    assert_eq!(model.services.len(), 1);
    assert_eq!(model.virtual_services.len(), 1, "the broken one is rejected: {:?}", model.rejections);
    let rejection = model.rejections.iter().find(|r| r.name == "broken").expect("broken is rejected");
    assert!(rejection.field.contains("subset"), "{rejection}");
    assert_eq!(rejection.file, None, "objects from the API server have no file");
    // This node's pod comes with its address; the other node's with its
    // labels only, and its endpoint still gets them through its targetRef.
    let local = &model.pods[&("shop".into(), "web-1".into())];
    let remote = &model.pods[&("shop".into(), "web-2".into())];
    assert_eq!(local.ips.len(), 1);
    assert!(remote.ips.is_empty(), "only labels are watched for other nodes' pods");
    assert_eq!(remote.labels["version"], "v2");
    let snapshot = compile(&model, DOMAIN);
    let versions: Vec<&str> =
        snapshot.services[0].backends.iter().map(|b| b.labels.get("version").map_or("", |v| v.as_str())).collect();
    assert_eq!(versions, ["v1", "v2"]);

    // A change: the next batch has it.
    server.apply(service("web", "10.96.0.10", 81));
    let model = model_of(&next_batch(&mut source));
    assert_eq!(model.services[&("shop".into(), "web".into())].ports[0].port, 81);

    // Deletions: gone from the model and from what the maps would hold.
    assert!(server.delete("networking.istio.io/v1", "VirtualService", Some("shop"), "web"));
    assert!(server.delete("v1", "Service", Some("shop"), "web"));
    let model = model_when(&mut source, |m| m.services.is_empty() && m.virtual_services.is_empty());
    let snapshot = compile(&model, DOMAIN);
    assert!(snapshot.frontends.is_empty() && snapshot.slots.is_empty(), "nothing stale stays");
    assert_eq!(source.poll().unwrap().map(|b| b.objects.len()), None, "no batch without a change");
}

#[test]
fn a_dropped_watch_resumes_and_a_410_relists_with_nothing_lost_or_left_over() {
    let runtime = runtime();
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    for object in objects("node-a") {
        server.apply(object);
    }
    let mut source = KubeSource::start(server.client("agent"), watched_kinds(Some("node-a")), runtime.handle());
    next_batch(&mut source);
    assert_eq!(list_requests(&server, "/services"), 1);

    // A stream that breaks resumes from its last resourceVersion: the
    // object made meanwhile arrives, and nothing is listed again.
    server.drop_watches();
    server.apply(service("late", "10.96.0.11", 80));
    let model = model_of(&next_batch(&mut source));
    assert!(model.services.contains_key(&("shop".into(), "late".into())));
    assert_eq!(list_requests(&server, "/services"), 1, "resumed, not relisted");

    // The API server goes away; meanwhile `late` is deleted, `later` made,
    // and the history compacted: the watch gets 410 Gone and relists, and
    // the relist replaces the kind whole.
    server.set_unavailable(true);
    // The Services' watch itself must have noticed (another kind's error
    // says nothing of it): else it could still see `later` arrive live.
    let failing = || source.store().state().kinds.iter().any(|k| k.name == "Service" && k.error.is_some());
    assert!(wait_until(Duration::from_secs(10), failing), "the Services' watch never noticed");
    assert!(server.delete("v1", "Service", Some("shop"), "late"));
    server.apply(service("later", "10.96.0.12", 80));
    server.compact();
    server.set_unavailable(false);
    let model = model_when(&mut source, |m| m.services.contains_key(&("shop".into(), "later".into())));
    let names: Vec<&str> = model.services.keys().map(|(_, name)| name.as_str()).collect();
    assert_eq!(names, ["later", "web"], "the deleted one is gone, the new one is there");
    assert!(list_requests(&server, "/services") >= 2, "relisted after 410");
    // The errors met while the server was away clear once each watch is back.
    let healthy = || {
        let state = source.store().state();
        state.synced && state.kinds.iter().all(|k| k.error.is_none())
    };
    assert!(wait_until(Duration::from_secs(10), healthy), "{:?}", source.store().state());
}

#[test]
fn the_file_source_and_the_api_source_build_the_same_model() {
    let runtime = runtime();
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    let dir = std::env::temp_dir().join(format!("mesh-same-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut yaml = String::new();
    for object in objects("node-a") {
        server.apply(object.clone());
        yaml.push_str(&serde_saphyr::to_string(&object).unwrap());
        yaml.push_str("---\n");
    }
    std::fs::write(dir.join("objects.yaml"), yaml).unwrap();

    let mut files = FileSource::new(&dir);
    let from_files = model_of(&files.poll().unwrap().expect("a first batch"));
    let mut api = KubeSource::start(server.client("agent"), watched_kinds(Some("node-a")), runtime.handle());
    let from_api = model_of(&next_batch(&mut api));
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(from_files.services, from_api.services);
    assert_eq!(from_files.endpoint_slices, from_api.endpoint_slices);
    // The API server gives each pod a UID; the files have none.
    let without_uid = |model: &Model| {
        let pods = model.pods.values().cloned();
        pods.map(|pod| mesh_core::model::PodModel { uid: None, ..pod }).collect::<Vec<_>>()
    };
    assert_eq!(without_uid(&from_files), without_uid(&from_api));
    assert_eq!(from_files.destination_rules, from_api.destination_rules);
    assert_eq!(from_files.virtual_services, from_api.virtual_services);
    let without_file = |model: &Model| {
        model.rejections.iter().map(|r| (r.kind.clone(), r.name.clone(), r.field.clone())).collect::<Vec<_>>()
    };
    assert_eq!(without_file(&from_files), without_file(&from_api));
    assert_eq!(from_files.rejections.len(), 1);
    assert_eq!(from_files.services.len(), 1);
    assert_eq!(compile(&from_files, DOMAIN).services, compile(&from_api, DOMAIN).services);
}

/// The condition a status patch carried.
fn condition(body: &Value) -> (String, String, String) {
    let c = &body["status"]["conditions"][0];
    let text = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
    assert_eq!(c["type"], "Reconciled");
    (text("status"), text("reason"), text("message"))
}

#[test]
fn status_is_written_by_the_lease_holder_only_and_taken_over_when_it_dies() {
    let runtime = runtime();
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    for object in objects("node-a") {
        server.apply(object);
    }
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                        "metadata": {"name": "default", "namespace": "shop"}, "spec": {}}));
    // Served, with a field that is not honoured: a warning in its status.
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": {"name": "mtls", "namespace": "shop"},
                        "spec": {"host": "db", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}}));
    let mut source = KubeSource::start(server.client("watch"), watched_kinds(Some("node-a")), runtime.handle());
    let model = model_of(&next_batch(&mut source));
    let snapshot = compile(&model, DOMAIN);
    let published = Arc::new(Published { snapshot: Arc::new(snapshot), ready: true, reloads: 1, last_reload: None });
    let (_publisher, receiver) = tokio::sync::watch::channel(published);
    let timing = LeaseTiming { duration: Duration::from_secs(1), renew_every: Duration::from_millis(200) };
    let writer = |identity: &str| {
        StatusWriter::new(
            server.client(identity),
            "mesh-system".into(),
            identity.into(),
            timing.clone(),
            source.store(),
            receiver.clone(),
        )
    };
    let lease = || server.get("coordination.k8s.io/v1", "Lease", Some("mesh-system"), "mesh-agent-status");
    let first = runtime.spawn(writer("agent-a").run());
    assert!(wait_until(Duration::from_secs(10), || lease().is_some()), "agent-a made no lease");
    let second = runtime.spawn(writer("agent-b").run());

    let patched = |name: &str| {
        server
            .status_patches()
            .into_iter()
            .filter(|(_, path, _)| path.contains(&format!("/{name}/status")))
            .collect::<Vec<_>>()
    };
    let all_written = wait_until(Duration::from_secs(10), || {
        [
            "virtualservices/web",
            "virtualservices/broken",
            "destinationrules/web",
            "destinationrules/mtls",
            "sidecars/default",
        ]
        .iter()
        .all(|name| !patched(name).is_empty())
    });
    assert!(all_written, "patches: {:?}", server.status_patches());
    let holder = |server: &FakeApiServer| {
        let lease = server.get("coordination.k8s.io/v1", "Lease", Some("mesh-system"), "mesh-agent-status");
        lease.and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned)).expect("a lease holder")
    };
    let leader = holder(&server);
    let writers: std::collections::BTreeSet<String> =
        server.status_patches().into_iter().map(|(identity, ..)| identity).collect();
    assert_eq!(writers, [leader.clone()].into(), "only the lease holder writes status");

    let (_, _, body) = &patched("virtualservices/web")[0];
    assert_eq!(condition(body).0, "True");
    assert_eq!(body["status"]["observedGeneration"], 1);
    let (status, reason, message) = condition(&patched("virtualservices/broken")[0].2);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Rejected"));
    assert!(message.contains("subset") && message.contains("v9"), "{message}");
    let (status, reason, message) = condition(&patched("sidecars/default")[0].2);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Rejected"));
    assert!(message.contains("empty"), "a Sidecar is validated as Istio does: {message}");
    // A warning leaves the object accepted, and is listed as istiod lists
    // its analysis messages.
    let (_, _, body) = &patched("destinationrules/mtls")[0];
    assert_eq!(condition(body).0, "True");
    let messages = &body["status"]["validationMessages"];
    assert_eq!(messages[0]["level"], "WARNING", "{body}");
    assert_eq!(messages[0]["type"]["name"], "FieldNotHonoured", "{body}");
    let description = messages[0]["description"].as_str().unwrap_or_default();
    assert!(description.starts_with("spec.trafficPolicy.tls.mode: ISTIO_MUTUAL: "), "{description}");
    assert!(patched("destinationrules/web")[0].2["status"]["validationMessages"].is_null());
    let stored = server.get("networking.istio.io/v1", "DestinationRule", Some("shop"), "mtls").unwrap();
    assert_eq!(stored["status"]["validationMessages"][0]["level"], "WARNING", "{stored}");
    // Stored on the object, as kubectl shows it.
    let stored = server.get("networking.istio.io/v1", "VirtualService", Some("shop"), "broken").unwrap();
    assert_eq!(stored["status"]["conditions"][0]["reason"], "Rejected");

    // Unchanged objects are not written again: the holder renews (and
    // reconciles) twice more, and writes nothing.
    let count = server.status_patches().len();
    let renewed = || lease().map(|l| l["spec"]["renewTime"].clone());
    let mut renewals = 0;
    let mut last = renewed();
    let twice = wait_until(Duration::from_secs(10), || {
        let now = renewed();
        if now != last {
            renewals += 1;
            last = now;
        }
        renewals >= 2
    });
    assert!(twice, "the lease was not renewed");
    assert_eq!(server.status_patches().len(), count, "no rewrites without a change");

    // The holder dies: the other agent takes the Lease over within its
    // duration and writes the status of what comes next.
    let (dead, survivor) = if leader == "agent-a" { (first, "agent-b") } else { (second, "agent-a") };
    dead.abort();
    server.apply(virtual_service("fresh", "v1"));
    let taken_over = wait_until(Duration::from_secs(10), || {
        patched("virtualservices/fresh").iter().any(|(identity, ..)| identity == survivor)
    });
    assert!(taken_over, "patches: {:?}", server.status_patches());
    assert_eq!(holder(&server), survivor);
}

#[test]
fn nothing_is_served_before_the_first_complete_sync_and_a_burst_is_coalesced() {
    let runtime = runtime();
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    server.set_unavailable(true);
    let mut source = KubeSource::start(server.client("agent"), watched_kinds(Some("node-a")), runtime.handle());
    // Every watch has tried and failed: still nothing is served.
    let all_failed = || source.store().state().kinds.iter().filter(|k| !k.synced).all(|k| k.error.is_some());
    assert!(wait_until(Duration::from_secs(10), all_failed), "{:?}", source.store().state());
    assert!(source.poll().unwrap().is_none(), "no batch before every kind has listed");
    let state = source.store().state();
    assert!(!state.synced && state.kinds.iter().any(|k| k.error.is_some()), "{state:?}");
    server.set_unavailable(false);
    let first = next_batch(&mut source);
    assert!(first.objects.is_empty());

    // 2,000 Services in a burst, polled as the reload loop polls (every
    // 200 ms): a handful of batches, not one per event, and the last has all.
    let burst = {
        let server = server.clone();
        std::thread::spawn(move || {
            for i in 0..2000 {
                server.apply(service(&format!("s{i}"), &format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250), 80));
            }
        })
    };
    let started = Instant::now();
    let mut batches = 0;
    let mut last = 0;
    while last < 2000 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(POLL_INTERVAL);
        if let Some(batch) = source.poll().unwrap() {
            batches += 1;
            last = batch.objects.len();
        }
    }
    burst.join().unwrap();
    assert_eq!(last, 2000);
    let polls = started.elapsed().as_millis() / POLL_INTERVAL.as_millis() + 1;
    assert!(batches as u128 <= polls && batches < 100, "{batches} batches for 2,000 events over {polls} polls");
}

#[test]
fn only_the_secrets_that_rules_name_are_watched() {
    let runtime = runtime();
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    for object in objects("node-a") {
        server.apply(object);
    }
    let secret = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"},
               "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "ca.crt": "Y2E="}})
    };
    server.apply(secret("web-client"));
    server.apply(secret("unrelated"));
    let mut source = KubeSource::start(server.client("agent"), watched_kinds(Some("node-a")), runtime.handle());
    let model = model_of(&next_batch(&mut source));
    assert!(model.secrets.is_empty(), "no rule names a secret yet");

    let mut with_tls = rule();
    with_tls["spec"]["trafficPolicy"] = json!({"tls": {"mode": "MUTUAL", "credentialName": "web-client"}});
    server.apply(with_tls);
    let model = model_when(&mut source, |m| !m.secrets.is_empty());
    let names: Vec<&str> = model.secrets.keys().map(|(_, name)| name.as_str()).collect();
    assert_eq!(names, ["web-client"]);
    assert_eq!(model.secrets[&("shop".into(), "web-client".into())].data["tls.key"], b"key");
    let secret_requests: Vec<String> =
        server.requests().into_iter().map(|(_, _, path)| path).filter(|p| p.contains("secrets")).collect();
    assert!(!secret_requests.is_empty());
    for path in &secret_requests {
        assert!(path.starts_with("/api/v1/namespaces/shop/secrets?"), "namespaced: {path}");
        assert!(path.contains("fieldSelector=metadata.name%3Dweb-client"), "by name: {path}");
    }
    let state = source.store().state();
    assert!(state.kinds.iter().any(|k| k.name == "Secret (1 named)" && k.objects == 1), "{state:?}");

    // A rotation reaches the model; dropping the reference drops the secret.
    let mut rotated = secret("web-client");
    rotated["data"]["tls.key"] = json!("bmV3");
    server.apply(rotated);
    let model = model_of(&next_batch(&mut source));
    assert_eq!(model.secrets[&("shop".into(), "web-client".into())].data["tls.key"], b"new");
    server.apply(rule());
    model_when(&mut source, |m| m.secrets.is_empty());
}
