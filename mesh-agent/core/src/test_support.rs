//! Test helpers shared across the crate: Istio objects from YAML, validated
//! the way the model validates them.

use crate::api::Resource;
use crate::decode::parse_file;
use crate::destination_rule::{validate_destination_rule, DestinationRuleModel};
use crate::field::FieldError;
use crate::route::{validate_virtual_service, VirtualServiceModel};

/// The one object of a `kind` in namespace `shop` whose `spec:` body is
/// `spec` (indented by two spaces).
fn object(kind: &str, name: &str, spec: &str) -> Resource {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
    );
    let mut objects = parse_file("t.yaml", &text).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    (*objects.remove(0).resource).clone()
}

/// Validates a VirtualService `shop/vs` whose `spec:` body is `spec`.
pub fn vs(spec: &str) -> Result<VirtualServiceModel, FieldError> {
    let Resource::VirtualService(object) = object("VirtualService", "vs", spec) else { unreachable!() };
    validate_virtual_service(&object, "cluster.local")
}

/// Validates a DestinationRule `shop/r` whose `spec:` body is `spec`.
pub fn rule(spec: &str) -> Result<DestinationRuleModel, FieldError> {
    let Resource::DestinationRule(object) = object("DestinationRule", "r", spec) else { unreachable!() };
    validate_destination_rule(&object, "cluster.local")
}
