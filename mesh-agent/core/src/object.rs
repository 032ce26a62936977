//! Objects as the sources deliver them, before validation: each with the
//! file it came from ([`SourcedObject`]), keyed by kind, namespace and name
//! ([`ObjectKey`]), and the problems met on the way ([`Rejection`]), all of
//! one load in a [`SourceBatch`]. The model is built from a batch.

use crate::api::Resource;
use crate::field::FieldError;
use serde::Serialize;
use std::fmt;

/// An object together with the file (or source) it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcedObject {
    /// Empty for objects from the API server.
    pub file: String,
    pub resource: Resource,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
}
