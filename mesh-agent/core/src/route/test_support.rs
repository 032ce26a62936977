//! Test helpers: VirtualServices from YAML, requests without sockets.

pub use crate::test_support::vs;

use super::matching::RequestView;
use super::rule::HttpRoute;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The `http` rules of a VirtualService for host `web`; `http` is the YAML
/// list at column 0.
pub fn vs_routes(http: &str) -> Vec<HttpRoute> {
    let indented: String = http.lines().map(|line| format!("  {line}\n")).collect();
    vs(&format!("  hosts: [web]\n  http:\n{indented}")).unwrap().http.to_vec()
}

/// An owned request to build a [`RequestView`] from.
pub struct Req {
    method: Method,
    scheme: String,
    authority: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    port: u16,
}

pub fn request(path: &str) -> Req {
    Req {
        method: Method::GET,
        scheme: "http".into(),
        authority: "web".into(),
        path: path.into(),
        query: None,
        headers: HeaderMap::new(),
        port: 80,
    }
}

impl Req {
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.parse().unwrap();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.into();
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.into();
        self
    }

    pub fn query(mut self, query: &str) -> Self {
        self.query = Some(query.into());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        self
    }

    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            port: self.port,
            source_labels: None,
            source_namespace: None,
        }
    }
}
