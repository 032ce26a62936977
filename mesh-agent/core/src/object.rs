//! Objects as the sources deliver them, before validation: each with the
//! file it came from ([`SourcedObject`]), keyed by kind, namespace and name
//! ([`ObjectKey`]), and the problems met on the way ([`Rejection`]), all of
//! one load in a [`SourceBatch`]. The model is built from a batch. An
//! object that serves but has fields set that it does not honour carries a
//! [`Warning`] for each.

use crate::api::Resource;
use crate::field::FieldError;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;

/// An object together with the file (or source) it came from.
#[derive(Clone, Debug)]
pub struct SourcedObject {
    /// Empty for objects from the API server.
    pub file: String,
    /// Shared by every copy (the source's store, a batch, the model's last
    /// good versions): a copy of the object costs a count, not a clone.
    pub resource: std::sync::Arc<Resource>,
    /// Fields present in the input that the API types do not have (so
    /// serde dropped them), as paths such as `spec.http[0].futureField`.
    /// Kept with the object so that a last good version keeps its own.
    pub unknown_fields: Vec<String>,
    /// The object as it came (less its `status` and `managedFields`), so
    /// that a last good version can be kept across restarts: as JSON text,
    /// a fraction of the memory of a value tree.
    pub raw: std::sync::Arc<serde_json::value::RawValue>,
}

impl PartialEq for SourcedObject {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file
            && self.resource == other.resource
            && self.unknown_fields == other.unknown_fields
            && self.raw.get() == other.raw.get()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectKey { kind: kind.to_owned(), namespace: namespace.to_owned(), name: name.to_owned() }
    }

    pub fn of(resource: &Resource) -> Self {
        let meta = resource.metadata();
        Self {
            kind: resource.kind().to_owned(),
            namespace: meta.namespace_or_default().to_owned(),
            name: meta.name.clone(),
        }
    }
}

/// Why an object (or a whole file) is not served as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Rejection {
    pub file: Option<String>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The offending field as a path, e.g. `spec.subsets[0].labels`.
    pub field: String,
    pub message: String,
}

impl Rejection {
    /// A problem of a whole file (its YAML does not parse, say).
    pub fn file(file: &str, message: String) -> Self {
        Self {
            file: Some(file.to_owned()),
            kind: String::new(),
            namespace: String::new(),
            name: String::new(),
            field: String::new(),
            message,
        }
    }

    /// A field of `object` that does not validate.
    pub fn object(object: &SourcedObject, error: FieldError) -> Self {
        let key = ObjectKey::of(&object.resource);
        Self {
            // Objects from the API server come from no file.
            file: (!object.file.is_empty()).then(|| object.file.clone()),
            kind: key.kind,
            namespace: key.namespace,
            name: key.name,
            field: error.field,
            message: error.message,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if !self.kind.is_empty() {
            write!(f, "{} {}/{}: ", self.kind, self.namespace, self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a field of a served object is not honoured as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum WarningReason {
    /// An Istio field the mesh does not (yet) do what Istio does for.
    NotHonoured,
    /// Not a field of the kind at all (a typo, or a newer API's field).
    UnknownField,
}

/// A field of an accepted object that is set but not honoured: the object
/// serves, and `message` says what happens instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Warning {
    pub file: Option<String>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The field as a path, e.g. `spec.trafficPolicy.tunnel`.
    pub field: String,
    pub message: String,
    pub reason: WarningReason,
}

impl Warning {
    pub fn object(object: &SourcedObject, field: String, message: String, reason: WarningReason) -> Self {
        let key = ObjectKey::of(&object.resource);
        Self {
            file: (!object.file.is_empty()).then(|| object.file.clone()),
            kind: key.kind,
            namespace: key.namespace,
            name: key.name,
            field,
            message,
            reason,
        }
    }

    /// The object the warning is about.
    pub fn key(&self) -> ObjectKey {
        ObjectKey { kind: self.kind.clone(), namespace: self.namespace.clone(), name: self.name.clone() }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        write!(f, "{} {}/{}: {}: {}", self.kind, self.namespace, self.name, self.field, self.message)
    }
}

/// The objects of one load of a source, plus the problems met on the way.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub objects: Vec<SourcedObject>,
    /// Objects present but not decodable: the model keeps serving their
    /// last accepted version and reports the rejection.
    pub undecodable: Vec<(ObjectKey, Rejection)>,
    /// Problems that belong to no servable object (a file whose YAML does
    /// not parse, a document without kind or name).
    pub rejections: Vec<Rejection>,
    /// The objects that changed since the source's previous batch (added,
    /// changed or gone), when the source knows (the API server's watches);
    /// None: any may have.
    pub changed: Option<BTreeSet<ObjectKey>>,
}
