//! Not a test: how long each stage of a full load takes at 10,000
//! services (run with `--ignored --nocapture`, in release).

use mesh_core::decode::parse_file;
use mesh_core::model::Model;
use mesh_core::snapshot::compile;
use std::fmt::Write;
use std::time::Instant;

#[test]
#[ignore]
fn stages_of_a_full_load_at_10000_services() {
    let mut yaml = String::new();
    for i in 0..10_000u32 {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec: {{clusterIP: {ip}, ports: [{{name: tcp, port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: tcp, port: 8080}}]\nendpoints: [{{addresses: [10.244.1.2]}}, {{addresses: [10.244.2.2]}}]\n---\n"
        );
    }
    let t = Instant::now();
    let objects = parse_file("bench.yaml", &yaml).unwrap();
    let parsed = t.elapsed();
    let t = Instant::now();
    let model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
    let built = t.elapsed();
    let t = Instant::now();
    let snapshot = compile(&model, "cluster.local");
    let compiled = t.elapsed();
    let t = Instant::now();
    let again = Model::build(&objects, vec![], &model, "cluster.local");
    let rebuilt = t.elapsed();
    println!(
        "yaml {} KB: parse {parsed:?}, model {built:?}, compile {compiled:?} ({} frontends), model again {rebuilt:?} ({} services)",
        yaml.len() / 1024,
        snapshot.frontends.len(),
        again.services.len()
    );
}
