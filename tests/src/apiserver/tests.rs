//! Scenario tests: kube's own clients and watchers against the server,
//! in-process and over HTTP.

use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper::http::{header, Request};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::FakeApiServer;

const WAIT: Duration = Duration::from_secs(5);

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn services() -> ApiResource {
    resource("", "v1", "Service", "services")
}

fn service(name: &str, namespace: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"ports": [{"port": port}]},
    })
}

fn api_code(error: &kube::Error) -> Option<(u16, String)> {
    match error {
        kube::Error::Api(status) => Some((status.code, status.reason.clone())),
        _ => None,
    }
}

fn rv_of(object: &DynamicObject) -> u64 {
    object.metadata.resource_version.as_deref().and_then(|rv| rv.parse().ok()).expect("resourceVersion")
}

/// "Init", "InitApply a", "Apply a@port", "Delete a", "InitDone".
fn describe(event: &Event<DynamicObject>) -> String {
    let port = |o: &DynamicObject| o.data.pointer("/spec/ports/0/port").map(|p| format!("@{p}")).unwrap_or_default();
    let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
    match event {
        Event::Init => "Init".into(),
        Event::InitApply(o) => format!("InitApply {}{}", name(o), port(o)),
        Event::InitDone => "InitDone".into(),
        Event::Apply(o) => format!("Apply {}{}", name(o), port(o)),
        Event::Delete(o) => format!("Delete {}", name(o)),
    }
}

async fn next<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next()).await.expect("stream stalled").expect("stream ended")
}

/// The next `n` watcher events, described; panics on a watcher error.
async fn take_events<S>(stream: &mut S, n: usize) -> Vec<String>
where
    S: Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Unpin,
{
    let mut out = Vec::new();
    for _ in 0..n {
        match next(stream).await {
            Ok(event) => out.push(describe(&event)),
            Err(e) => panic!("watcher error after {out:?}: {e}"),
        }
    }
    out
}

/// No watcher event for a moment (bookmarks are absorbed by the watcher).
async fn assert_quiet<S, T: std::fmt::Debug>(stream: &mut S)
where
    S: Stream<Item = T> + Unpin,
{
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await {
        panic!("unexpected item {item:?}");
    }
}

#[tokio::test]
async fn list_get_create_replace_delete() {
    let server = FakeApiServer::new();
    server.apply(service("a", "default", 80));
    server.apply(service("b", "other", 81));
    let api = Api::<DynamicObject>::namespaced_with(server.client("test"), "default", &services());

    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let a = &list.items[0];
    assert_eq!(a.metadata.name.as_deref(), Some("a"));
    assert!(a.types.is_none(), "list items carry no apiVersion/kind");
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    assert_eq!(list.metadata.resource_version.as_deref(), Some("102"));

    let got = api.get("a").await.unwrap();
    assert_eq!(got.types.as_ref().map(|t| t.kind.as_str()), Some("Service"));
    assert_eq!(api_code(&api.get("nope").await.unwrap_err()), Some((404, "NotFound".into())));
    assert!(api.get_opt("nope").await.unwrap().is_none());

    // Create: 201, then AlreadyExists.
    let c = DynamicObject::new("c", &services()).within("default").data(json!({"spec": {"ports": [{"port": 82}]}}));
    let created = api.create(&PostParams::default(), &c).await.unwrap();
    assert_eq!(rv_of(&created), 103);
    assert_eq!(
        api_code(&api.create(&PostParams::default(), &c).await.unwrap_err()),
        Some((409, "AlreadyExists".into()))
    );

    // Replace: a stale resourceVersion conflicts, the current one wins;
    // generation moves with spec only.
    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    stale.data["spec"]["ports"][0]["port"] = json!(83);
    let err = api.replace("c", &PostParams::default(), &stale).await.unwrap_err();
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));
    let mut fresh = created.clone();
    fresh.data["spec"]["ports"][0]["port"] = json!(83);
    let replaced = api.replace("c", &PostParams::default(), &fresh).await.unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    assert_eq!(replaced.metadata.creation_timestamp, created.metadata.creation_timestamp);
    fresh.metadata.resource_version = replaced.metadata.resource_version.clone();
    fresh.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    let relabelled = api.replace("c", &PostParams::default(), &fresh).await.unwrap();
    assert_eq!(relabelled.metadata.generation, Some(2));
    let mut missing = fresh.clone();
    missing.metadata.name = Some("gone".into());
    assert_eq!(
        api_code(&api.replace("gone", &PostParams::default(), &missing).await.unwrap_err()).map(|c| c.0),
        Some(404)
    );

    // Delete answers the object; then it is gone everywhere.
    let deleted = api.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left());
    assert!(server.get("v1", "Service", Some("default"), "c").is_none());
    assert_eq!(api_code(&api.delete("c", &DeleteParams::default()).await.unwrap_err()).map(|c| c.0), Some(404));

    // Cluster-wide list sees both namespaces.
    let all = Api::<DynamicObject>::all_with(server.client("test"), &services());
    let names: Vec<_> =
        all.list(&ListParams::default()).await.unwrap().items.into_iter().map(|o| o.metadata.name).collect();
    assert_eq!(names, [Some("a".to_string()), Some("b".to_string())]);

    let requests = server.requests();
    assert!(requests.iter().all(|(who, _, _)| who == "test"));
    assert!(requests.contains(&("test".into(), "GET".into(), "/api/v1/namespaces/default/services/a".into())));
}

#[tokio::test]
async fn lists_are_paged_at_their_first_pages_revision() {
    let server = FakeApiServer::new();
    for name in ["a", "b", "c", "d", "e"] {
        server.apply(service(name, "default", 80));
    }
    let api = Api::<DynamicObject>::all_with(server.client("test"), &services());
    let names = |list: &kube::core::ObjectList<DynamicObject>| -> Vec<String> {
        list.items.iter().map(|o| o.metadata.name.clone().unwrap()).collect()
    };
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first), ["a", "b"]);
    let token = first.metadata.continue_.clone().expect("more to come");
    // A change after the first page is not in the next ones: they are of
    // the first page's revision, as the API server's are.
    server.apply(service("bb", "default", 80));
    let second = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&second), ["c", "d"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let token = second.metadata.continue_.clone().expect("one more");
    let third = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&third), ["e"]);
    assert!(third.metadata.continue_.is_none(), "the last page");

    // kube-rs's watcher lists page by page and sees every object.
    let config = watcher::Config::default().page_size(2);
    let mut events = watcher::watcher(api, config).boxed();
    let mut listed = Vec::new();
    loop {
        match next(&mut events).await.unwrap() {
            Event::InitApply(object) => listed.push(object.metadata.name.unwrap()),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(listed, ["a", "b", "bb", "c", "d", "e"]);
}

#[tokio::test]
async fn status_patches_touch_status_only() {
    let server = FakeApiServer::new();
    let vs = resource("networking.istio.io", "v1", "VirtualService", "virtualservices");
    server.apply(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "r", "namespace": "mesh"},
        "spec": {"hosts": ["r"]},
        "status": {"conditions": [], "observedGeneration": 0},
    }));
    let api = Api::<DynamicObject>::namespaced_with(server.client("agent"), "mesh", &vs);
    let patch = json!({"spec": {"hosts": ["evil"]}, "status": {"observedGeneration": 1, "mesh": {"ok": true}}});
    let patched = api.patch_status("r", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(patched.data["spec"], json!({"hosts": ["r"]}), "spec is not patched through /status");
    assert_eq!(patched.data["status"], json!({"conditions": [], "observedGeneration": 1, "mesh": {"ok": true}}));
    assert_eq!(patched.metadata.generation, Some(1));

    // null deletes a key (RFC 7386); apply patches merge too.
    let patch2 = json!({"status": {"mesh": null}});
    api.patch_status("r", &PatchParams::apply("agent"), &Patch::Apply(&patch2)).await.unwrap();
    let stored = server.get("networking.istio.io/v1", "VirtualService", Some("mesh"), "r").unwrap();
    assert_eq!(stored["status"], json!({"conditions": [], "observedGeneration": 1}));

    // A resourceVersion in the patch is a precondition.
    let stale = json!({"metadata": {"resourceVersion": "1"}, "status": {"x": 1}});
    let err = api.patch_status("r", &PatchParams::default(), &Patch::Merge(&stale)).await.unwrap_err();
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));
    let err = api.patch_status("nope", &PatchParams::default(), &Patch::Merge(&patch2)).await.unwrap_err();
    assert_eq!(api_code(&err).map(|c| c.0), Some(404));

    let patches = server.status_patches();
    assert_eq!(patches.len(), 4);
    assert_eq!(
        patches[0],
        (
            "agent".to_string(),
            "/apis/networking.istio.io/v1/namespaces/mesh/virtualservices/r/status".to_string(),
            patch
        )
    );

    // A patch of the main resource changes spec (and generation) but not status.
    let main = json!({"spec": {"hosts": ["r", "s"]}, "status": {"observedGeneration": 99}});
    let patched = api.patch("r", &PatchParams::default(), &Patch::Merge(&main)).await.unwrap();
    assert_eq!(patched.data["spec"]["hosts"], json!(["r", "s"]));
    assert_eq!(patched.data["status"]["observedGeneration"], json!(1));
    assert_eq!(patched.metadata.generation, Some(2));
    // JSON patches are not supported: 415, not a silent misapply.
    let json_patch = Patch::Json::<()>(Default::default());
    assert_eq!(
        api_code(&api.patch("r", &PatchParams::default(), &json_patch).await.unwrap_err()).map(|c| c.0),
        Some(415)
    );
}

#[tokio::test]
async fn lease_get_create_replace() {
    let server = FakeApiServer::new();
    let leases = resource("coordination.k8s.io", "v1", "Lease", "leases");
    let api = Api::<DynamicObject>::namespaced_with(server.client("agent-1"), "mesh-system", &leases);
    assert!(api.get_opt("leader").await.unwrap().is_none());
    let lease = DynamicObject::new("leader", &leases)
        .within("mesh-system")
        .data(json!({"spec": {"holderIdentity": "agent-1", "leaseDurationSeconds": 15}}));
    let created = api.create(&PostParams::default(), &lease).await.unwrap();

    // Two contenders replace from the same read: the second conflicts.
    let mut mine = api.get("leader").await.unwrap();
    let mut theirs = mine.clone();
    mine.data["spec"]["renewTime"] = json!("2025-01-01T00:00:00.000000Z");
    theirs.data["spec"]["holderIdentity"] = json!("agent-2");
    let renewed = api.replace("leader", &PostParams::default(), &mine).await.unwrap();
    assert!(rv_of(&renewed) > rv_of(&created));
    let err = api.replace("leader", &PostParams::default(), &theirs).await.unwrap_err();
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));
    let stored = server.get("coordination.k8s.io/v1", "Lease", Some("mesh-system"), "leader").unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "agent-1");
    assert_eq!(
        server.requests().iter().map(|(_, m, _)| m.as_str()).collect::<Vec<_>>(),
        ["GET", "POST", "GET", "PUT", "PUT"]
    );
}

#[tokio::test]
async fn selectors() {
    let server = FakeApiServer::new();
    let pods = resource("", "v1", "Pod", "pods");
    for (name, ns, node, tier) in [("p1", "a", "n1", "web"), ("p2", "a", "n2", "db"), ("p3", "b", "n1", "web")] {
        server.apply(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"tier": tier, "app": "x"}},
            "spec": {"nodeName": node},
        }));
    }
    let all = Api::<DynamicObject>::all_with(server.client("t"), &pods);
    let names = |lp: ListParams| {
        let all = all.clone();
        async move {
            let list = all.list(&lp).await.unwrap();
            list.items.into_iter().filter_map(|o| o.metadata.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(names(ListParams::default().fields("spec.nodeName=n1")).await, ["p1", "p3"]);
    assert_eq!(names(ListParams::default().fields("metadata.namespace=a,spec.nodeName!=n1")).await, ["p2"]);
    assert_eq!(names(ListParams::default().fields("metadata.name=p3")).await, ["p3"]);
    assert_eq!(names(ListParams::default().labels("tier=web,app=x")).await, ["p1", "p3"]);
    assert_eq!(names(ListParams::default().labels("tier in (db, cache)")).await, ["p2"]);
    assert_eq!(names(ListParams::default().labels("tier!=web")).await, ["p2"]);
    assert_eq!(names(ListParams::default().labels("!app")).await, Vec::<String>::new());
    let err = all.list(&ListParams::default().labels("tier in (web")).await.unwrap_err();
    assert_eq!(api_code(&err).map(|c| c.0), Some(400));
}

#[tokio::test]
async fn watcher_follows_resumes_and_relists() {
    let server = FakeApiServer::new();
    server.apply(service("a", "default", 80));
    server.apply(service("b", "default", 80));
    server.apply(service("x", "elsewhere", 80));
    let api = Api::<DynamicObject>::namespaced_with(server.client("watcher"), "default", &services());
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();

    assert_eq!(take_events(&mut stream, 4).await, ["Init", "InitApply a@80", "InitApply b@80", "InitDone"]);
    server.apply(service("a", "default", 81));
    server.apply(service("c", "default", 80));
    server.apply(service("x", "elsewhere", 81));
    assert!(server.delete("v1", "Service", Some("default"), "b"));
    assert_eq!(take_events(&mut stream, 3).await, ["Apply a@81", "Apply c@80", "Delete b"]);
    assert_quiet(&mut stream).await;

    // A dropped stream resumes from the last resourceVersion: what changed
    // meanwhile arrives once, nothing is repeated, no relist.
    server.drop_watches();
    server.apply(service("a", "default", 82));
    server.delete("v1", "Service", Some("default"), "c");
    assert_eq!(take_events(&mut stream, 2).await, ["Apply a@82", "Delete c"]);
    assert_quiet(&mut stream).await;

    // Disconnected while history is compacted away: 410, then a relist
    // that no longer has the deleted object.
    server.drop_watches();
    server.delete("v1", "Service", Some("default"), "a");
    server.apply(service("d", "default", 80));
    server.compact();
    match next(&mut stream).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 watch error, got {:?}", other.map(|e| describe(&e))),
    }
    assert_eq!(take_events(&mut stream, 3).await, ["Init", "InitApply d@80", "InitDone"]);
    server.apply(service("d", "default", 81));
    assert_eq!(take_events(&mut stream, 1).await, ["Apply d@81"]);

    // The watcher lists once per (re)list and watches with bookmarks.
    let requests = server.requests();
    let lists = requests.iter().filter(|(_, _, p)| !p.contains("watch=")).count();
    assert_eq!(lists, 2, "{requests:#?}");
    let watch = requests.iter().find(|(_, _, p)| p.contains("watch=true")).unwrap();
    assert!(watch.2.contains("allowWatchBookmarks=true"), "{watch:?}");
}

#[tokio::test]
async fn raw_watch_bookmarks_timeout_and_rv_zero() {
    let server = FakeApiServer::new();
    server.apply(service("a", "default", 80));
    let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &services());
    let current = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

    // timeoutSeconds is honoured; idle watches get bookmarks at the current RV.
    let started = std::time::Instant::now();
    let mut stream = api.watch(&WatchParams::default().timeout(2), &current).await.unwrap().boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, current);
            assert_eq!(b.types.kind, "Service");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    while tokio::time::timeout(WAIT, stream.next()).await.expect("watch outlived its timeout").is_some() {}
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(4), "{took:?}");

    // resourceVersion=0 starts with the current state as ADDED events.
    let mut stream = api.watch(&WatchParams::default().disable_bookmarks(), "0").await.unwrap().boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Added(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("a"));
            assert_eq!(o.types.map(|t| t.kind), Some("Service".into()), "watch objects carry their kind");
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
    // An old RV after compaction: one ERROR 410 event, then the end.
    server.apply(service("a", "default", 81));
    server.compact();
    let mut stream = api.watch(&WatchParams::default(), &current).await.unwrap().boxed();
    match next(&mut stream).await {
        Ok(WatchEvent::Error(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(next_none(&mut stream).await);
    // An Exact list of the compacted revision is 410 too; NotOlderThan is served.
    let lp = ListParams::default().at(&current).matching(kube::api::VersionMatch::Exact);
    assert_eq!(api_code(&api.list(&lp).await.unwrap_err()).map(|c| c.0), Some(410));
    let lp = ListParams::default().at(&current).matching(kube::api::VersionMatch::NotOlderThan);
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
}

async fn next_none<S: Stream + Unpin>(stream: &mut S) -> bool {
    tokio::time::timeout(WAIT, stream.next()).await.expect("stream stalled").is_none()
}

#[tokio::test]
async fn streaming_list_watcher() {
    let server = FakeApiServer::new();
    server.apply(service("a", "default", 80));
    let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &services());
    let mut stream = watcher::watcher(api, watcher::Config::default().streaming_lists()).boxed();
    assert_eq!(take_events(&mut stream, 3).await, ["Init", "InitApply a@80", "InitDone"]);
    server.apply(service("b", "default", 80));
    assert_eq!(take_events(&mut stream, 1).await, ["Apply b@80"]);
    assert!(server.requests().iter().all(|(_, _, p)| p.contains("watch=true")));
}

#[tokio::test]
async fn metadata_watcher_gets_partial_objects() {
    let server = FakeApiServer::new();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "default", "labels": {"k": "v"}},
        "data": {"key": "c2VjcmV0"},
    });
    server.apply(secret.clone());
    let secrets = resource("", "v1", "Secret", "secrets");
    let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &secrets);
    #[allow(deprecated)] // kube 5 prefers Api<PartialObjectMeta<K>>; same requests.
    let mut stream = watcher::metadata_watcher(api, watcher::Config::default()).boxed();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(next(&mut stream).await.unwrap());
    }
    match &events[1] {
        Event::InitApply(meta) => {
            assert_eq!(meta.metadata.name.as_deref(), Some("s"));
            assert_eq!(meta.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
        }
        other => panic!("expected InitApply, got {other:?}"),
    }
    server.apply(secret);
    match next(&mut stream).await.unwrap() {
        Event::Apply(meta) => assert_eq!(meta.metadata.labels.unwrap()["k"], "v"),
        other => panic!("expected Apply, got {other:?}"),
    }

    // The raw answers hold metadata only (no secret data).
    let meta_api = Api::<PartialObjectMeta<DynamicObject>>::namespaced_with(server.client("t"), "default", &secrets);
    let list = meta_api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.types.kind, "PartialObjectMetadataList");
    let got = meta_api.get("s").await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("s"));
    let request = Request::get("/api/v1/namespaces/default/secrets")
        .header(header::ACCEPT, "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
        .body(Vec::new())
        .unwrap();
    let raw: Value = serde_json::from_str(&server.client("t").request_text(request).await.unwrap()).unwrap();
    assert_eq!(raw["kind"], "PartialObjectMetadataList");
    assert_eq!(raw["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(raw["items"][0]["metadata"]["labels"], json!({"k": "v"}));
    assert!(raw["items"][0].get("data").is_none(), "{raw}");
}

#[tokio::test]
async fn unavailable_gives_503_and_ends_watches() {
    let server = FakeApiServer::new();
    server.apply(service("a", "default", 80));
    let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &services());
    let mut stream = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(next(&mut stream).await, Ok(WatchEvent::Added(_))));
    server.set_unavailable(true);
    assert!(next_none(&mut stream).await);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), Some((503, "ServiceUnavailable".into())));
    server.set_unavailable(false);
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn serves_http_through_a_kubeconfig() {
    let server = FakeApiServer::new();
    server.apply(service("a", "default", 80));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = server.serve(listener);

    let dir = std::env::temp_dir().join(format!("fake-apiserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = FakeApiServer::write_kubeconfig(&dir, addr).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();

    let api = Api::<DynamicObject>::default_namespaced_with(client, &services());
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    // A watch streams over chunked HTTP/1.1 and ends on drop_watches().
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    server.apply(service("b", "default", 80));
    match next(&mut stream).await.unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    server.drop_watches();
    assert!(next_none(&mut stream).await);
    assert_eq!(api_code(&api.get("nope").await.unwrap_err()).map(|c| c.0), Some(404));

    let requests = server.requests();
    assert!(requests.iter().all(|(who, _, _)| who == "http"));
    assert_eq!(requests[0].2, "/api/v1/namespaces/default/services?");
    task.abort();
}

#[tokio::test]
async fn bad_requests_get_status_answers() {
    let server = FakeApiServer::new();
    let client = server.client("t");
    let send = |method: &str, uri: &str, body: &str| {
        let request = Request::builder().method(method).uri(uri).body(body.as_bytes().to_vec()).unwrap();
        let client = client.clone();
        async move {
            match client.request_text(request).await {
                Ok(text) => (200, text),
                Err(e) => (api_code(&e).map_or(0, |c| c.0), String::new()),
            }
        }
    };
    assert_eq!(send("GET", "/api/v1/nodes", "").await.0, 404);
    assert_eq!(send("GET", "/apis/networking.istio.io/v9/gateways", "").await.0, 404);
    assert_eq!(send("GET", "/api/v1/services/a", "").await.0, 404);
    assert_eq!(send("POST", "/api/v1/namespaces/default/services", "{not json").await.0, 400);
    assert_eq!(send("POST", "/api/v1/namespaces/default/services", r#"{"kind":"Pod"}"#).await.0, 400);
    assert_eq!(send("POST", "/api/v1/namespaces/default/services", r#"{"metadata":{}}"#).await.0, 422);
    assert_eq!(send("GET", "/api/v1/services?watch=true&timeoutSeconds=x", "").await.0, 400);
    assert_eq!(send("GET", "/api/v1/services?resourceVersion=abc", "").await.0, 400);
    let (code, text) =
        send("POST", "/api/v1/namespaces/default/services", r#"{"metadata":{"generateName":"svc-"}}"#).await;
    assert_eq!(code, 200, "kube maps 201 to Ok");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert!(created["metadata"]["name"].as_str().unwrap().starts_with("svc-"));
    assert_eq!(created["kind"], "Service");
}

#[tokio::test]
async fn version_and_status_routes() {
    let server = FakeApiServer::new();
    let client = server.client("t");
    assert_eq!(client.apiserver_version().await.unwrap().minor, "33");
    // Leases have no /status subresource.
    let request = Request::get("/apis/coordination.k8s.io/v1/namespaces/a/leases/l/status").body(Vec::new()).unwrap();
    assert_eq!(api_code(&client.request_text(request).await.unwrap_err()).map(|c| c.0), Some(404));
}

#[tokio::test]
async fn http_watch_is_released_when_the_client_goes_away() {
    let server = FakeApiServer::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = server.serve(listener);
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let api = Api::<DynamicObject>::default_namespaced_with(kube::Client::try_from(config).unwrap(), &services());
    let stream = api.watch(&WatchParams::default(), "0").await.unwrap();
    assert_eq!(server.inner.wake.receiver_count(), 1);
    drop(stream);
    // Noticed at the latest when the next bookmark cannot be written.
    let deadline = Instant::now() + WAIT;
    while server.inner.wake.receiver_count() > 0 {
        assert!(Instant::now() < deadline, "the watch outlived its client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}
