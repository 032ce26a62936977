//! `redirect` and `directResponse`: rules the proxy answers itself.

use super::matching::RequestView;
use crate::api::{HttpDirectResponse, HttpRedirect};
use crate::field::Path;
use crate::field::{parse_port, FieldError};
use serde::Serialize;

/// Istio's limit on a direct response body: it travels in the config.
pub const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectPolicy {
    /// Replaces the path (and the query, if it has one).
    pub uri: Option<String>,
    /// Replaces the host, port included (the request's port is dropped).
    pub authority: Option<String>,
    pub port: RedirectPort,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// 301 unless `redirectCode` says otherwise.
    pub status: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPort {
    /// Whatever the authority carries (see [`RedirectPolicy::response`]).
    Keep,
    Fixed(u16),
    /// `derivePort: FROM_PROTOCOL_DEFAULT`: no port, i.e. 80 or 443.
    FromProtocolDefault,
    /// `derivePort: FROM_REQUEST_PORT`: the port the client connected to.
    FromRequestPort,
}

impl RedirectPolicy {
    /// The status and `Location` for `request`, keeping what the policy
    /// does not replace, as Envoy builds it: the request's host keeps its
    /// port unless a port is set, or the scheme changes and the port was
    /// the old scheme's default; the query stays unless `uri` has its own.
    pub fn response(&self, request: &RequestView<'_>) -> (u16, String) {
        let scheme = self.scheme.as_deref().unwrap_or(request.scheme);
        let mut host = match &self.authority {
            Some(authority) => authority.clone(),
            None => {
                let (host, port) = split_port(request.authority);
                let default_port = match request.scheme {
                    "https" => Some("443"),
                    "http" => Some("80"),
                    _ => None,
                };
                let scheme_changed = !scheme.eq_ignore_ascii_case(request.scheme);
                if port.is_some() && scheme_changed && port == default_port {
                    host.to_owned()
                } else {
                    request.authority.to_owned()
                }
            }
        };
        let port = match self.port {
            RedirectPort::Keep => None,
            RedirectPort::Fixed(port) => Some(port),
            RedirectPort::FromRequestPort => Some(request.port),
            RedirectPort::FromProtocolDefault => {
                host = split_port(&host).0.to_owned();
                None
            }
        };
        if let Some(port) = port {
            host = format!("{}:{port}", split_port(&host).0);
        }
        let path_and_query = match (&self.uri, request.query) {
            (Some(uri), _) if uri.contains('?') => uri.clone(),
            (Some(uri), Some(query)) => format!("{uri}?{query}"),
            (Some(uri), None) => uri.clone(),
            (None, Some(query)) => format!("{}?{query}", request.path),
            (None, None) => request.path.to_owned(),
        };
        (self.status, format!("{scheme}://{host}{path_and_query}"))
    }
}

/// `host:port` as (host, Some(port)); IPv6 literals keep their brackets.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            (host, Some(port))
        }
        _ => (authority, None),
    }
}

pub(crate) fn compile_redirect(at: &Path, spec: &HttpRedirect) -> Result<RedirectPolicy, FieldError> {
    let text = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let (uri, authority, scheme) = (text(&spec.uri), text(&spec.authority), text(&spec.scheme));
    if let Some(scheme) = scheme.as_deref().filter(|s| *s != "http" && *s != "https") {
        return Err(FieldError::new(at.field("scheme"), format!("{scheme:?} is not http or https")));
    }
    // Port 0 is proto3's "unset"; Envoy ignores a 0 port redirect too.
    let port = match (spec.port.filter(|p| *p != 0), spec.derive_port.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(at.field("derivePort"), "set only one of port and derivePort"))
        }
        (Some(port), None) => RedirectPort::Fixed(parse_port(&at.field("port"), port)?),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => RedirectPort::FromProtocolDefault,
        (None, Some("FROM_REQUEST_PORT")) => RedirectPort::FromRequestPort,
        (None, Some(other)) => {
            return Err(FieldError::new(
                at.field("derivePort"),
                format!("{other:?} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
            ))
        }
        (None, None) => RedirectPort::Keep,
    };
    if uri.is_none() && authority.is_none() && scheme.is_none() && port == RedirectPort::Keep {
        return Err(at.error("must set uri, authority, scheme or port"));
    }
    let status = match spec.redirect_code {
        None | Some(0) => 301,
        Some(code) => u16::try_from(code)
            .ok()
            .filter(|c| (300..=399).contains(c))
            .ok_or_else(|| FieldError::new(at.field("redirectCode"), format!("{code} is not a 3xx redirect code")))?,
    };
    Ok(RedirectPolicy { uri, authority, port, scheme, status })
}

/// A direct response's status and body.
pub(crate) fn compile_direct_response(at: &Path, spec: &HttpDirectResponse) -> Result<(u16, bytes::Bytes), FieldError> {
    let status = u16::try_from(spec.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or_else(|| FieldError::new(at.field("status"), format!("{} is not in 200-599", spec.status)))?;
    let (field, body) = match spec.body.as_ref().map(|b| (b.string.as_ref(), b.bytes.as_ref())) {
        None | Some((None, None)) => ("body", Vec::new()),
        Some((Some(text), None)) => ("body.string", text.as_bytes().to_vec()),
        Some((None, Some(encoded))) => (
            "body.bytes",
            decode_base64(encoded).ok_or_else(|| FieldError::new(at.field("body.bytes"), "is not base64"))?,
        ),
        Some((Some(_), Some(_))) => return Err(FieldError::new(at.field("body"), "set only one of string and bytes")),
    };
    if body.len() > MAX_DIRECT_RESPONSE_BODY {
        return Err(FieldError::new(
            at.field(field),
            format!("is {} bytes; a direct response body must be under 1 MiB", body.len()),
        ));
    }
    Ok((status, body.into()))
}

/// Protobuf JSON `bytes`: standard or URL-safe base64, padding optional.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.trim_end_matches('=').bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut word = 0u32;
        for (i, digit) in chunk.iter().enumerate() {
            word |= u32::from(value(*digit)?) << (18 - 6 * i);
        }
        out.extend_from_slice(&word.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::rule::RouteAction;
    use crate::route::test_support::{request, vs, Req};

    fn redirect(block: &str) -> Result<RedirectPolicy, FieldError> {
        let spec = format!("  hosts: [web]\n  http:\n  - redirect: {block}\n");
        vs(&spec).map(|model| match &model.http[0].action {
            RouteAction::Redirect(policy) => policy.clone(),
            other => panic!("{other:?}"),
        })
    }

    fn location(block: &str, req: Req) -> (u16, String) {
        redirect(block).unwrap().response(&req.view())
    }

    #[test]
    fn redirect_keeps_what_it_does_not_replace() {
        let req = || request("/old").authority("web.shop:8080").query("a=1");
        assert_eq!(location("{uri: /new}", req()), (301, "http://web.shop:8080/new?a=1".into()));
        assert_eq!(location("{uri: '/new?b=2'}", req()).1, "http://web.shop:8080/new?b=2", "its own query wins");
        assert_eq!(
            location("{authority: example.com, redirectCode: 302}", req()),
            (302, "http://example.com/old?a=1".into())
        );
        assert_eq!(location("{scheme: https}", req()).1, "https://web.shop:8080/old?a=1", "a non-default port stays");
        assert_eq!(location("{port: 9090}", req()).1, "http://web.shop:9090/old?a=1");
        assert_eq!(location("{derivePort: FROM_PROTOCOL_DEFAULT, scheme: https}", req()).1, "https://web.shop/old?a=1");
        assert_eq!(location("{derivePort: FROM_REQUEST_PORT, uri: /x}", req().port(81)).1, "http://web.shop:81/x?a=1");
    }

    #[test]
    fn a_scheme_change_drops_the_old_default_port() {
        let req = request("/").authority("web:80");
        assert_eq!(location("{scheme: https}", req).1, "https://web/");
        let req = request("/").authority("[fd00::1]:80");
        assert_eq!(location("{scheme: https, redirectCode: 308}", req), (308, "https://[fd00::1]/".into()));
        let req = request("/p").authority("[fd00::1]");
        assert_eq!(location("{port: 8443}", req).1, "http://[fd00::1]:8443/p");
    }

    #[test]
    fn invalid_redirects_are_named() {
        let cases = [
            ("{uri: /x, redirectCode: 200}", "spec.http[0].redirect.redirectCode"),
            ("{uri: /x, redirectCode: 400}", "spec.http[0].redirect.redirectCode"),
            ("{scheme: ftp}", "spec.http[0].redirect.scheme"),
            ("{port: 70000}", "spec.http[0].redirect.port"),
            ("{port: 0}", "spec.http[0].redirect"),
            ("{derivePort: SOMETIMES}", "spec.http[0].redirect.derivePort"),
            ("{}", "spec.http[0].redirect"),
        ];
        for (block, field) in cases {
            assert_eq!(redirect(block).unwrap_err().field, field, "{block}");
        }
    }

    fn direct(block: &str) -> Result<RouteAction, FieldError> {
        let spec = format!("  hosts: [web]\n  http:\n  - directResponse: {block}\n");
        vs(&spec).map(|model| model.http[0].action.clone())
    }

    #[test]
    fn direct_responses_carry_status_and_body() {
        let text = direct("{status: 503, body: {string: unavailable}}").unwrap();
        assert_eq!(text, RouteAction::DirectResponse { status: 503, body: "unavailable".into() });
        let bytes = direct("{status: 200, body: {bytes: aGVsbG8gd29ybGQ=}}").unwrap();
        assert_eq!(bytes, RouteAction::DirectResponse { status: 200, body: "hello world".into() });
        let empty = direct("{status: 204}").unwrap();
        assert_eq!(empty, RouteAction::DirectResponse { status: 204, body: bytes::Bytes::new() });
        assert_eq!(decode_base64("_-8").unwrap(), [0xFF, 0xEF], "URL-safe, unpadded");
        assert_eq!(decode_base64("").unwrap(), Vec::<u8>::new());
        assert!(decode_base64("a").is_none() && decode_base64("a*==").is_none());
    }

    #[test]
    fn invalid_direct_responses_are_named() {
        let big = "x".repeat(MAX_DIRECT_RESPONSE_BODY + 1);
        let cases = [
            ("{status: 700}".to_owned(), "spec.http[0].directResponse.status"),
            ("{status: 200, body: {bytes: '***'}}".to_owned(), "spec.http[0].directResponse.body.bytes"),
            (format!("{{status: 200, body: {{string: {big}}}}}"), "spec.http[0].directResponse.body.string"),
            ("{status: 200, body: {string: a, bytes: YQ==}}".to_owned(), "spec.http[0].directResponse.body"),
        ];
        for (block, field) in cases {
            assert_eq!(direct(&block).unwrap_err().field, field, "{}", &block[..block.len().min(60)]);
        }
        let limit = "x".repeat(MAX_DIRECT_RESPONSE_BODY);
        assert!(direct(&format!("{{status: 200, body: {{string: {limit}}}}}")).is_ok(), "1 MiB exactly is fine");
    }
}
