//! What the model and the snapshot of a cluster hold per service, counted
//! by the allocator: the agent's memory at 10,000 services is mostly these
//! (`cargo xtask bench scale` prints its RSS). A budget: a change that
//! needs more per service raises it on purpose, not by accident.

use mesh_core::decode::{decode_object, ParsedFile};
use mesh_core::model::Model;
use mesh_core::object::{ObjectKey, SourceBatch, SourcedObject};
use mesh_core::snapshot::{compile_owned, Snapshot};
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes asked for and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator as it came; the count
// is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const SERVICES: u32 = 2_000;
/// The model and snapshot of one service as below (a port, ten endpoints,
/// a DestinationRule and a VirtualService for every tenth): 5.1 KB now;
/// 6.1 KB when the persistent maps' nodes were left half empty.
const BUDGET_PER_SERVICE: usize = 5_500;

/// Service `i`'s EndpointSlice: ten endpoints, one more when `extra`.
fn slice(i: u32, extra: bool) -> Value {
    let endpoints: Vec<Value> = (0..10 + u32::from(extra))
        .map(|e| json!({"addresses": [Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i * 16 + e).to_string()]}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{i}"), "namespace": "bench",
                        "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
}

/// Service `i` with its slice, and its rules for every tenth.
fn service(i: u32) -> Vec<Value> {
    let name = format!("svc-{i}");
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i).to_string();
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
               "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        slice(i, false),
    ];
    if i.is_multiple_of(10) {
        objects.push(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"host": name, "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                                                    "connectionPool": {"tcp": {"maxConnections": 100}}}}}));
        objects.push(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"hosts": [name], "http": [
                {"match": [{"headers": {"x-canary": {"exact": "1"}}}], "timeout": "2s", "route": [{"destination": {"host": name}}]},
                {"route": [{"destination": {"host": name}}]}]}}));
    }
    objects
}

fn decode(value: Value) -> SourcedObject {
    let mut parsed = ParsedFile::default();
    decode_object("", value, &mut parsed);
    assert!(parsed.problems.is_empty() && parsed.undecodable.is_empty(), "{:?}", parsed.problems);
    parsed.objects.pop().expect("one object")
}

/// Loads `batch` after `previous` as the agent's reload loop does: the
/// model built from the previous one, compiled from the previous snapshot.
fn reload(batch: &SourceBatch, previous: &Snapshot) -> Snapshot {
    let model = Model::from_batch(batch, &previous.model, "cluster.local");
    compile_owned(model, Some(previous), "cluster.local")
}

#[test]
fn the_model_and_snapshot_of_a_service_stay_within_budget_and_do_not_grow_with_changes() {
    let mut objects: Vec<SourcedObject> = (0..SERVICES).flat_map(service).map(decode).collect();
    let slice_at = |objects: &[SourcedObject], i: u32| {
        let name = format!("svc-{i}");
        objects.iter().position(|o| o.resource.kind() == "EndpointSlice" && o.resource.metadata().name == name)
    };
    let slices: Vec<usize> = (0..SERVICES).map(|i| slice_at(&objects, i).expect("a slice")).collect();
    let before = live();
    let mut snapshot = {
        let batch = SourceBatch { objects: objects.clone(), ..Default::default() };
        reload(&batch, &Snapshot::default())
    };
    // The batch's copies of the objects are gone; the model shares the rest.
    let loaded = live() - before;
    let per_service = loaded / SERVICES as usize;
    println!("model and snapshot: {per_service} bytes a service");
    assert!(per_service < BUDGET_PER_SERVICE, "{per_service} bytes a service (budget {BUDGET_PER_SERVICE})");

    // Bursts of changes, to a quarter of the slices each: the first four
    // add an endpoint to every service, the next four take it away again,
    // and so on. After eight bursts and after sixteen, the same endpoints:
    // the same memory.
    let mut after = Vec::new();
    for round in 0..16 {
        let extra = (round / 4) % 2 == 0;
        let mut changed = BTreeSet::new();
        for k in 0..SERVICES / 4 {
            let i = (round % 4) * SERVICES / 4 + k;
            objects[slices[i as usize]] = decode(slice(i, extra));
            changed.insert(ObjectKey::new("EndpointSlice", "bench", &format!("svc-{i}")));
        }
        let batch = SourceBatch { objects: objects.clone(), changed: Some(changed), ..Default::default() };
        snapshot = reload(&batch, &snapshot);
        drop(batch);
        after.push(live() - before);
        // Every service with its extra endpoint, then every one without.
        let endpoints = match round % 8 {
            3 => 11,
            7 => 10,
            _ => continue,
        };
        assert_eq!(snapshot.slots.len(), (SERVICES * endpoints) as usize, "after burst {round}");
    }
    println!("after bursts: {after:?} bytes");
    let (eighth, sixteenth) = (after[7], after[15]);
    assert!(sixteenth <= eighth + eighth / 50, "grew with changes: {eighth} -> {sixteenth} bytes");
}
