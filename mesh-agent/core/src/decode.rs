//! Objects decoded from what the sources read: YAML files (several
//! documents each, or a `kind: List`) and the API server's JSON. Both go
//! through [`decode_object`], so they feed the model identically. Kinds
//! the agent does not serve are left out; a served kind that does not
//! decode is reported by field, keyed so that its last good version can
//! keep serving.

use crate::api::Resource;
use crate::object::{ObjectKey, Rejection, SourcedObject};
use serde_json::Value;
use std::sync::Arc;

/// One file's documents (or one API object), object by object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFile {
    pub objects: Vec<SourcedObject>,
    /// Objects of a served kind, named, that do not decode.
    pub undecodable: Vec<(ObjectKey, Rejection)>,
    /// Documents that name no object the agent could serve.
    pub problems: Vec<Rejection>,
    /// Objects of kinds the agent does not serve (yet), as `apiVersion`
    /// and `kind`: left alone, as the API server would store them.
    pub ignored: Vec<(String, String)>,
}

/// Parses every document of one file. Only YAML that does not parse fails
/// the whole file (a half-written file must not replace its last good
/// version); any other problem rejects just its object, a document that
/// YAML reads but JSON cannot hold (a key that is not a string, a duplicate
/// key, `.nan`) included, when the document still says which object it is.
pub fn parse_documents(file: &str, text: &str) -> Result<ParsedFile, Vec<Rejection>> {
    // Editors on some systems start UTF-8 files with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parsed = ParsedFile::default();
    match yaml_documents(text) {
        Ok(documents) => documents.into_iter().for_each(|document| decode_object(file, document, &mut parsed)),
        // Read again one document at a time, so that one that does not
        // decode takes only its own object with it.
        Err(whole) => {
            for (line, document) in split_documents(text) {
                match yaml_documents(document) {
                    Ok(values) => values.into_iter().for_each(|value| decode_object(file, value, &mut parsed)),
                    Err(_) => {
                        let Some(identity) = identify(document) else {
                            return Err(vec![Rejection::file(file, format!("YAML does not parse: {whole}"))]);
                        };
                        // Read again behind as many empty lines as precede
                        // it, so that the error says the file's line.
                        let placed = format!("{}{document}", "\n".repeat(line - 1));
                        let error = yaml_documents(&placed).err().map(|e| e.to_string()).unwrap_or_default();
                        reject_document(file, identity, format!("does not decode: {error}"), &mut parsed);
                    }
                }
            }
        }
    }
    Ok(parsed)
}

/// The documents of a YAML stream, split at its `---` lines: a line that
/// starts with `---` and then a space or nothing always starts a document
/// (YAML forbids it inside any scalar at column 0). Directives (`%YAML`)
/// before a marker go with the document it starts. Each comes with the
/// line it starts at (from 1).
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    // Where the lines that only lead up to a document (directives,
    // comments, blank lines) began: they go with the document they precede.
    let mut preamble: Option<(usize, usize)> = None;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let marker =
            line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        let leading = line.starts_with('%') || line.starts_with('#') || line.trim().is_empty();
        if marker {
            let (cut, cut_line) = preamble.unwrap_or((offset, index + 1));
            if cut > start {
                documents.push((start_line, &text[start..cut]));
                (start, start_line) = (cut, cut_line);
            }
            preamble = None;
        } else if leading {
            preamble.get_or_insert((offset, index + 1));
        } else {
            preamble = None;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
}

/// What names an object: all [`identify`] reads of a document.
#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Identity {
    api_version: String,
    kind: String,
    metadata: IdentityMeta,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct IdentityMeta {
    name: String,
    namespace: String,
}

/// Which object a document that does not decode is, read from the fields
/// that name it alone (the rest is skipped unread); None when even those
/// cannot be read.
fn identify(document: &str) -> Option<Identity> {
    // As lenient as the parser goes: only the naming fields matter here.
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::FirstWins,
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    };
    let identity: Identity = serde_saphyr::from_str_with_options(document, options).ok()?;
    (!identity.kind.is_empty() && !identity.metadata.name.is_empty()).then_some(identity)
}

/// A named document that YAML reads but that does not decode: a served
/// kind's object is rejected (its last good version keeps serving), any
/// other kind is left alone as ever.
fn reject_document(file: &str, identity: Identity, message: String, parsed: &mut ParsedFile) {
    let Some((&(kind, ..), _)) = ours(&identity.api_version, &identity.kind) else {
        parsed.ignored.push((identity.api_version, identity.kind));
        return;
    };
    let IdentityMeta { name, namespace } = identity.metadata;
    let namespace = if namespace.is_empty() { "default".to_owned() } else { namespace };
    let key = ObjectKey::new(kind, &namespace, &name);
    let rejection = Rejection {
        file: Some(file.to_owned()),
        kind: kind.to_owned(),
        namespace,
        name,
        field: String::new(),
        message,
    };
    parsed.undecodable.push((key, rejection));
}

/// The documents of a YAML text, as JSON values (empty ones left out).
/// YAML 1.2's core schema, as serde_yaml (the agent's earlier parser) read
/// it: `n`, `no` and `on` are text, not booleans, and so are `0755` and
/// `1_000`. The parser's limits are raised to fit a generated manifest of
/// many thousands of objects (a `kubectl get -o yaml` of every pod); the
/// alias limits that stop "billion laughs" stay. Errors are plain, one
/// line: they end up in logs and status.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
        // Kubernetes objects nest a few dozen levels at most: deeper input
        // is refused early instead of costing time.
        budget: serde_saphyr::budget! {
            max_events: 50_000_000,
            max_documents: 1_000_000,
            max_nodes: 20_000_000,
            max_depth: 64,
            flow_nesting_limit: 64,
        },
    };
    serde_saphyr::from_multiple_with_options(text, options)
}

/// [`parse_documents`], strictly: any problem at all is an error.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<SourcedObject>, Vec<Rejection>> {
    let parsed = parse_documents(file, text)?;
    let mut problems = parsed.problems;
    problems.extend(parsed.undecodable.into_iter().map(|(_, rejection)| rejection));
    if problems.is_empty() {
        Ok(parsed.objects)
    } else {
        Err(problems)
    }
}

/// A kind the agent reads: kind, API group (`""` is core) and versions.
type ServedKind = (&'static str, &'static str, &'static [&'static str]);

/// The kinds the agent reads.
const SERVED_KINDS: [ServedKind; 10] = [
    ("Service", "", &["v1"]),
    ("Pod", "", &["v1"]),
    ("Secret", "", &["v1"]),
    ("EndpointSlice", "discovery.k8s.io", &["v1"]),
    ("DestinationRule", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("VirtualService", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("Gateway", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("ServiceEntry", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("Sidecar", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("WorkloadEntry", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
];

/// The kinds whose objects keep no raw copy ([`SourcedObject::raw`] is
/// null): a last good version is never kept of them across restarts (they
/// are not judged that way, and Secrets do not belong on a disk), and they
/// are most of a large cluster's objects.
pub const NOT_KEPT: [&str; 3] = ["Secret", "Pod", "EndpointSlice"];

/// The served kind `kind` is (or, spelt in another case, is meant as), and
/// whether `api_version` is one it is served as; None for a kind that is
/// not ours (another API group's kind of the same name included).
fn ours(api_version: &str, kind: &str) -> Option<(&'static ServedKind, bool)> {
    let served = SERVED_KINDS
        .iter()
        .find(|(served, ..)| *served == kind)
        .or_else(|| SERVED_KINDS.iter().find(|(served, ..)| served.eq_ignore_ascii_case(kind)))?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let served_version = group == served.1 && served.2.contains(&version);
    if !served_version && is_third_party_group(group) {
        return None;
    }
    Some((served, served_version))
}

/// A group of some third party's API (e.g. Knative's `serving.knative.dev`,
/// which has its own `Service`): its kinds are not ours, whatever their name.
/// The Kubernetes Gateway API (`gateway.networking.k8s.io`) is one too: its
/// `Gateway` is not Istio's.
fn is_third_party_group(group: &str) -> bool {
    group == GATEWAY_API_GROUP || (group.contains('.') && !(group.ends_with(".k8s.io") || group.ends_with("istio.io")))
}

const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

fn api_version_text(group: &str, versions: &[&str]) -> String {
    let full: Vec<String> =
        versions.iter().map(|v| if group.is_empty() { (*v).to_owned() } else { format!("{group}/{v}") }).collect();
    full.join(", ")
}

/// Decodes one object into `parsed`. `origin` is the file it came from, or
/// empty for the API server.
pub fn decode_object(origin: &str, mut value: Value, parsed: &mut ParsedFile) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let text = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
    let api_version = text(&value, "apiVersion");
    let kind = text(&value, "kind");
    if kind == "List" {
        if let Some(Value::Array(items)) = value.get_mut("items").map(Value::take) {
            for item in items {
                decode_object(origin, item, parsed);
            }
        }
        return;
    }
    let metadata = value.get("metadata").unwrap_or(&Value::Null);
    let (namespace, name) = (text(metadata, "namespace"), text(metadata, "name"));
    let namespace = if namespace.is_empty() { "default".to_owned() } else { namespace };
    let reject = |field: &str, message: String| Rejection {
        file: (!origin.is_empty()).then(|| origin.to_owned()),
        kind: kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        field: field.to_owned(),
        message,
    };
    if kind.is_empty() {
        parsed.problems.push(reject("kind", "missing".into()));
        return;
    }
    let Some((&(served_kind, served_group, versions), served_version)) = ours(&api_version, &kind) else {
        parsed.ignored.push((api_version, kind));
        return;
    };
    // A served kind that cannot be read as written: its last good version
    // keeps serving (when it is named, so that it can be found).
    let mut undecodable = |field: &str, message: String| {
        let rejection = reject(field, message);
        if name.is_empty() {
            parsed.problems.push(rejection);
        } else {
            let key = ObjectKey::new(served_kind, &namespace, &name);
            parsed.undecodable.push((key, rejection));
        }
    };
    if kind != served_kind {
        undecodable("kind", format!("{kind:?} is not a kind; kinds are case-sensitive: did you mean {served_kind}?"));
        return;
    }
    if !served_version {
        let expected = api_version_text(served_group, versions);
        let message = if api_version.is_empty() {
            format!("missing; {kind} is served as {expected}")
        } else {
            format!("{kind} is not served as {api_version:?}; use {expected}")
        };
        undecodable("apiVersion", message);
        return;
    }
    // Only the Istio kinds are checked for fields their types lack: what
    // the mesh reads of the Kubernetes kinds is a small part of them.
    let mut unknown_fields = Vec::new();
    // The copy a last good version is kept from across restarts, less
    // what the API server changes without the object changing: a status
    // write (the agent's own, for every Istio object it serves) moves the
    // resourceVersion, and with it kept every one came back as a change
    // and cost a whole rebuild.
    let mut raw = if NOT_KEPT.contains(&served_kind) { Value::Null } else { value.clone() };
    if let Some(object) = raw.as_object_mut() {
        object.remove("status");
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
            metadata.remove("resourceVersion");
        }
    }
    // A value tree always serializes.
    let raw = serde_json::value::to_raw_value(&raw).expect("a JSON value serializes");
    let decoded = match served_kind {
        "Service" => decode(value).map(Resource::Service),
        "Pod" => decode(value).map(Resource::Pod),
        "EndpointSlice" => decode(value).map(Resource::EndpointSlice),
        "VirtualService" => decode_noting_unknown(value, &mut unknown_fields).map(Resource::VirtualService),
        "Gateway" => decode_noting_unknown(value, &mut unknown_fields).map(Resource::Gateway),
        "ServiceEntry" => decode_noting_unknown(value, &mut unknown_fields).map(Resource::ServiceEntry),
        "Sidecar" => decode_noting_unknown(value, &mut unknown_fields).map(Resource::Sidecar),
        "WorkloadEntry" => decode_noting_unknown(value, &mut unknown_fields).map(Resource::WorkloadEntry),
        "Secret" => decode(value).map(Resource::Secret),
        "DestinationRule" => decode_noting_unknown(value, &mut unknown_fields).map(Resource::DestinationRule),
        other => Err(("kind".to_owned(), format!("{other} has no decoder (a bug: it is listed as served)"))),
    };
    match decoded {
        Ok(resource) if resource.metadata().name.is_empty() => {
            parsed.problems.push(reject("metadata.name", "missing".into()))
        }
        Ok(resource) => parsed.objects.push(SourcedObject {
            file: origin.to_owned(),
            resource: Arc::new(resource),
            unknown_fields,
            raw: Arc::from(raw),
        }),
        Err((field, message)) => undecodable(&field, message),
    }
}

/// Decodes into `T`, naming the field that does not fit.
fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(path_error)
}

/// [`decode`], also noting in `unknown` every field of the input that `T`
/// does not have (serde would drop it without a word). Fields the API
/// server sets on every object (`apiVersion`, `kind`, `status`, the rest
/// of `metadata`) are not noted.
fn decode_noting_unknown<T: serde::de::DeserializeOwned>(
    value: Value,
    unknown: &mut Vec<String>,
) -> Result<T, (String, String)> {
    let mut note = |path: serde_ignored::Path<'_>| {
        let field = field_path(&path);
        let top = field.split(['.', '[']).next().unwrap_or_default();
        if !matches!(top, "apiVersion" | "kind" | "metadata" | "status") {
            unknown.push(field);
        }
    };
    serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note)).map_err(path_error)
}

fn path_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> (String, String) {
    let field = e.path().to_string();
    let message = e.into_inner().to_string();
    (if field == "." { String::new() } else { field }, message)
}

/// A path as rejections write it: `spec.http[0].route`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deeply_nested_input_is_refused_fast() {
        for text in ["[".repeat(200_000), "{a: ".repeat(50_000), "- ".repeat(100_000)] {
            let started = std::time::Instant::now();
            assert!(parse_file("deep.yaml", &text).is_err());
            assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
        }
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_accepted() {
        let text = "\u{feff}apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n";
        assert_eq!(parse_file("bom.yaml", text).unwrap().len(), 1);
    }

    use super::*;

    #[test]
    fn parses_several_documents_and_lists() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  status: {podIP: 10.244.0.5}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: ignored}\n";
        let objects = parse_file("f.yaml", text).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].resource.kind(), "Service");
        assert_eq!(objects[1].resource.metadata().name, "p");
    }

    #[test]
    fn yaml_that_does_not_parse_fails_the_file_with_its_place() {
        let problems = parse_documents("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n  broken: [\n")
            .expect_err("not YAML");
        let shown = problems[0].to_string();
        assert!(shown.starts_with("x.yaml: YAML does not parse: "), "{shown}");
        assert!(shown.contains("line"), "says where: {shown}");
        assert!(!shown.contains('\n'), "one line: {shown}");
    }

    #[test]
    fn plain_scalars_read_as_yaml_1_2_core() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {country: no, flag: n, mode: on, perm: 0755, n: 1_000}\n";
        let objects = parse_file("p.yaml", text).unwrap();
        let labels = &objects[0].resource.metadata().labels;
        let shown: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(shown, [("country", "no"), ("flag", "n"), ("mode", "on"), ("n", "1_000"), ("perm", "0755")]);
    }

    #[test]
    fn a_generated_manifest_of_thousands_of_objects_is_read() {
        let pods: String = (0..5000)
            .map(|i| format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {{app: web}}}}\nstatus: {{podIP: 10.244.{}.{}}}\n", i / 250, i % 250))
            .collect();
        assert_eq!(parse_file("pods.yaml", &pods).unwrap().len(), 5000);
    }

    #[test]
    fn aliases_are_read_and_duplicate_keys_refused() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: &l {app: web}, annotations: *l}\n";
        assert_eq!(parse_file("p.yaml", text).unwrap()[0].resource.metadata().labels["app"], "web");
        let twice = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, name: q}\n";
        assert!(parse_file("p.yaml", twice).is_err(), "a duplicate key is refused");
    }

    #[test]
    fn a_document_json_cannot_hold_rejects_only_its_object() {
        let good = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 10.96.0.1}\n";
        let cases = [
            ("a duplicate key", "metadata: {name: b, namespace: x, name: c}\n"),
            ("a key that is a list", "metadata: {name: b, namespace: x}\nspec: {? [a, b] : x}\n"),
            ("a key that is a map", "metadata: {name: b, namespace: x}\nspec: {? {a: 1} : x}\n"),
            ("a null key", "metadata: {name: b, namespace: x}\nspec: {~: x}\n"),
            ("a NaN", "metadata: {name: b, namespace: x}\nspec: {a: .nan}\n"),
            ("a bad merge", "metadata: {name: b, namespace: x}\nspec: {<<: [1]}\n"),
        ];
        for (case, bad) in cases {
            let text = format!("{good}---\napiVersion: v1\nkind: Service\n{bad}---\n{good}");
            let text = text.replacen("name: a", "name: z", 1);
            let parsed = parse_documents("f.yaml", &text).unwrap_or_else(|e| panic!("{case}: the whole file: {e:?}"));
            let names: Vec<&str> = parsed.objects.iter().map(|o| o.resource.metadata().name.as_str()).collect();
            assert_eq!(names, ["z", "a"], "{case}: the others are read");
            let (key, rejection) = &parsed.undecodable[0];
            assert_eq!(key, &ObjectKey::new("Service", "x", "b"), "{case}");
            // Its own lines (8 and 9), as the file numbers them.
            let line = ["at line 8", "at line 9"].iter().any(|l| rejection.message.contains(l));
            assert!(line, "{case}: {}", rejection.message);
        }
        // Directives lead their document; a kind spelt in another case is
        // still ours; the line is still the file's.
        let text = format!("%YAML 1.2\n---\n{good}---\napiVersion: v1\nkind: service\nmetadata: {{name: b, namespace: x}}\nspec: {{~: x}}\n");
        let parsed = parse_documents("f.yaml", &text).unwrap();
        assert_eq!(parsed.objects.len(), 1);
        let (key, rejection) = &parsed.undecodable[0];
        assert_eq!(key, &ObjectKey::new("Service", "x", "b"));
        assert!(rejection.message.contains("at line 11"), "{}", rejection.message);
        // A document that does not even say what it is fails the file.
        let unnamed = format!("{good}---\nkind: Service\nmetadata: {{namespace: x}}\nspec: {{~: x}}\n");
        assert!(parse_documents("f.yaml", &unnamed).is_err());
    }

    #[test]
    fn a_bad_field_is_named_with_file_kind_and_object() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec:\n  ports:\n  - port: eighty\n";
        let problems = parse_file("svc.yaml", text).unwrap_err();
        let shown = problems[0].to_string();
        assert!(shown.contains("svc.yaml"), "{shown}");
        assert!(shown.contains("Service ns/a"), "{shown}");
        assert!(shown.contains("spec.ports[0].port"), "{shown}");
        assert!(shown.contains("invalid type: string \"eighty\", expected i64"), "{shown}");
    }

    #[test]
    fn a_wrongly_typed_field_rejects_only_its_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec:\n  ports:\n  - port: eighty\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
        let parsed = parse_documents("svc.yaml", text).unwrap();
        assert_eq!(parsed.objects.len(), 1, "the pod is read");
        assert!(parsed.problems.is_empty());
        let (key, rejection) = &parsed.undecodable[0];
        assert_eq!(key, &ObjectKey { kind: "Service".into(), namespace: "ns".into(), name: "a".into() });
        assert_eq!(rejection.field, "spec.ports[0].port");
        // A document that names no object is a problem of its own.
        let parsed = parse_documents("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {}\n---\nfoo: bar\n").unwrap();
        let fields: Vec<&str> = parsed.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "kind"]);
    }

    #[test]
    fn served_kinds_with_the_wrong_case_or_api_version_are_rejected() {
        let cases = [
            ("networking.istio.io/v1", "Destinationrule", "kind", "did you mean DestinationRule"),
            ("v1", "service", "kind", "did you mean Service"),
            ("v1", "DestinationRule", "apiVersion", "networking.istio.io/v1, networking.istio.io/v1beta1"),
            ("networking.istio.io/v2", "DestinationRule", "apiVersion", "not served as \"networking.istio.io/v2\""),
            ("security.istio.io/v1", "DestinationRule", "apiVersion", "use networking.istio.io/v1"),
            ("", "DestinationRule", "apiVersion", "missing"),
            ("v1", "EndpointSlice", "apiVersion", "use discovery.k8s.io/v1"),
            ("discovery.k8s.io/v1beta1", "EndpointSlice", "apiVersion", "use discovery.k8s.io/v1"),
            ("apps/v1", "Service", "apiVersion", "use v1"),
            ("v2", "Pod", "apiVersion", "use v1"),
            ("networking.istio.io/v1", "Virtualservice", "kind", "did you mean VirtualService"),
            (
                "networking.istio.io/v2",
                "VirtualService",
                "apiVersion",
                "use networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
            ),
        ];
        for (api_version, kind, field, message) in cases {
            let text = format!("apiVersion: '{api_version}'\nkind: {kind}\nmetadata: {{name: web, namespace: shop}}\n");
            let parsed = parse_documents("k.yaml", &text).unwrap();
            assert!(parsed.objects.is_empty(), "{text}");
            let (key, rejection) = parsed.undecodable.first().unwrap_or_else(|| panic!("{text}: not rejected"));
            assert_eq!(key.kind.to_ascii_lowercase(), kind.to_ascii_lowercase(), "keyed by the served kind");
            assert_eq!(rejection.field, field, "{text}");
            assert!(rejection.message.contains(message), "{text}: {}", rejection.message);
            assert_eq!(rejection.kind, kind, "named as written");
        }
        // Another API's kind of the same name is not ours: skipped.
        let knative = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: web}\n";
        let parsed = parse_documents("k.yaml", knative).unwrap();
        assert!(parsed.objects.is_empty() && parsed.undecodable.is_empty() && parsed.problems.is_empty());
        assert_eq!(parsed.ignored, [("serving.knative.dev/v1".to_owned(), "Service".to_owned())]);
        // The Kubernetes Gateway API's Gateway is not Istio's.
        let gateway_api = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: web}\n";
        let parsed = parse_documents("k.yaml", gateway_api).unwrap();
        assert!(parsed.objects.is_empty() && parsed.undecodable.is_empty() && parsed.problems.is_empty());
        assert_eq!(parsed.ignored.len(), 1);
    }

    #[test]
    fn gateways_are_read_in_every_served_version() {
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let text = format!("apiVersion: networking.istio.io/{version}\nkind: Gateway\nmetadata: {{name: gw, namespace: shop}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['*']\n    futureField: 1\n");
            let objects = parse_file("gw.yaml", &text).unwrap();
            let Resource::Gateway(gateway) = &*objects[0].resource else { panic!("{version}") };
            assert_eq!(gateway.spec.servers[0].port.as_ref().unwrap().number, 80, "{version}");
            assert_eq!(objects[0].unknown_fields, ["spec.servers[0].futureField"], "{version}");
        }
        let typo = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: eighty}\n";
        let parsed = parse_documents("gw.yaml", typo).unwrap();
        assert_eq!(parsed.undecodable[0].1.field, "spec.servers[0].port.number");
    }

    #[test]
    fn virtual_services_are_read_in_every_served_version() {
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let text = format!("apiVersion: networking.istio.io/{version}\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hosts: [web]\n  http:\n  - route: [{{destination: {{host: web}}, weight: 100}}]\n    futureField: ignored\n");
            let objects = parse_file("vs.yaml", &text).unwrap();
            let Resource::VirtualService(vs) = &*objects[0].resource else { panic!("{version}") };
            assert_eq!(vs.spec.http[0].route[0].weight, Some(100), "{version}");
            assert_eq!(objects[0].unknown_fields, ["spec.http[0].futureField"], "{version}");
        }
        let typo = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route: [{destination: {host: web}, weight: ten}]\n";
        let parsed = parse_documents("vs.yaml", typo).unwrap();
        assert_eq!(parsed.undecodable[0].1.field, "spec.http[0].route[0].weight");
    }

    fn objects_unknown(text: &str) -> Vec<String> {
        parse_file("x.yaml", text).unwrap().remove(0).unknown_fields
    }

    #[test]
    fn an_object_whose_status_or_resource_version_moved_is_the_same_object() {
        let object = |rv: &str, status: &str| {
            let text = format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: shop, generation: 2, resourceVersion: '{rv}'}}\nspec: {{host: web}}\nstatus: {{observedGeneration: {status}}}\n"
            );
            parse_file("", &text).unwrap().remove(0)
        };
        assert!(object("7", "1") == object("8", "2"), "a status write is no change");
        assert!(!object("8", "2").raw.get().contains("resourceVersion"));
    }

    #[test]
    fn fields_the_istio_types_lack_are_noted_by_path() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop, uid: abc, resourceVersion: '7', annotations: {a: b}}\nspec:\n  host: web\n  hots: typo\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {loadBalancer: {simple: RANDOM, colour: red}}\nstatus: {conditions: []}\n";
        assert_eq!(objects_unknown(text), ["spec.hots", "spec.subsets[0].trafficPolicy.loadBalancer.colour"]);
        // Kubernetes kinds are not checked: the mesh reads a small part of them.
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n";
        assert!(objects_unknown(pod).is_empty());
    }
}
