//! Test helpers shared by the proxy's rooms.

use mesh_core::decode::parse_file;
use mesh_core::model::Model;
use mesh_core::snapshot::{compile, Snapshot};

/// The snapshot the agent compiles from `text` (YAML documents), which
/// must all be accepted.
pub fn snapshot_of(text: &str) -> Snapshot {
    let objects = parse_file("t.yaml", text).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    let model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    compile(&model, "cluster.local")
}
