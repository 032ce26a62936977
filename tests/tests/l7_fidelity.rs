//! Requests reach the backend as the client framed them, through the node
//! proxy with Istio's default retry policy on: bodies stream (a gRPC
//! ping-pong with a real gRPC client and server, a slow chunked upload),
//! keep their Content-Length or transfer codings, `Expect: 100-continue`
//! works with curl, and requests that cannot be forwarded as sent (Host
//! missing or repeated, CONNECT) are answered at once.

use mesh_tests::recorder::{Recorder, Seen};
use mesh_tests::{read_json_line, wait_until, Pod, TestEnv};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

const VIP: &str = "10.96.0.30";
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;

/// A client pod and one backend pod behind service `files` (an HTTP port
/// and a gRPC port), with a VirtualService so that both go through the
/// proxy. Its routes set no retry policy (Istio's default applies) except
/// for `/fail-once/`, which retries 5xx.
struct World {
    env: TestEnv,
    client: Pod,
    _backend: Pod,
}

const CONFIG: &str = concat!(
    "apiVersion: v1\nkind: Service\nmetadata: {name: files, namespace: shop}\nspec:\n  clusterIP: 10.96.0.30\n",
    "  ports:\n  - {name: http, port: 8080, targetPort: 8080}\n  - {name: grpc, port: 9090, targetPort: 9090}\n",
    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
    "metadata: {name: files-1, namespace: shop, labels: {kubernetes.io/service-name: files}}\n",
    "addressType: IPv4\nports: [{name: http, port: 8080}, {name: grpc, port: 9090}]\n",
    "endpoints:\n- addresses: [10.244.1.2]\n",
    "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: files, namespace: shop}\n",
    "spec:\n  hosts: [files]\n  http:\n",
    "  - match: [{uri: {prefix: /fail-once/}}]\n    retries: {attempts: 2, retryOn: 5xx}\n",
    "    route: [{destination: {host: files}}]\n",
    "  - route: [{destination: {host: files}}]\n",
);

impl World {
    fn new(test: &str) -> World {
        let env = TestEnv::new(test).expect("test env");
        let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
        let backend = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
        World { env, client, _backend: backend }
    }

    fn start(&self) {
        self.env.write_config("files.yaml", CONFIG).unwrap();
        self.env.start_agent_on_node(&["--access-log"]).unwrap();
    }

    fn probe(&self, args: &[&str]) -> Value {
        self.env.probe(&self.client, args).unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", self.env.agent_log()))
    }

    /// Sends `request` (each line end becomes CRLF) on a new connection to
    /// the HTTP port and returns what came back.
    fn raw(&self, request: &str, extra: &[&str]) -> Value {
        let target = format!("{VIP}:{HTTP_PORT}");
        let request = crlf(request);
        let mut args = vec!["raw", "--target", &target, "--send", &request, "--read-ms", "3000"];
        args.extend_from_slice(extra);
        self.probe(&args)
    }

    /// Runs curl in the client pod; its stdout.
    fn curl(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", "curl", "-sS", "--max-time", "10"];
        all.extend_from_slice(args);
        let out = self.probe(&all);
        assert_eq!(out["code"], 0, "curl {args:?}: {out}");
        out["stdout"].as_str().unwrap_or_default().to_owned()
    }
}

/// `text` with its line ends as `mesh-probe raw` takes CRLF (`\n`).
fn crlf(text: &str) -> String {
    text.replace('\n', "\\n")
}

fn response(out: &Value) -> &str {
    out["response"].as_str().unwrap_or_default()
}

/// The requests `recorder` saw for `path`.
fn seen_at(recorder: &Recorder, path: &str) -> Vec<Seen> {
    recorder.seen().into_iter().filter(|seen| seen.path() == path).collect()
}

#[test]
fn grpc_ping_pong_and_streaming_go_through_under_the_default_retry_policy() {
    let world = World::new("fidelity_grpc");
    let server = world._backend.serve_grpc(GRPC_PORT);
    world.start();
    // Each message goes only after the reply to the one before: a proxy
    // that held the request body back for a replay copy would never
    // deliver the first.
    let out = world.probe(&["grpc", "--target", &format!("{VIP}:{GRPC_PORT}"), "--count", "5"]);
    let replies: Vec<&str> = out["replies"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(replies, ["pong:ping-0", "pong:ping-1", "pong:ping-2", "pong:ping-3", "pong:ping-4"], "{out}");
    // Client streaming (all sent, then the replies) and server streaming.
    let target = format!("{VIP}:{GRPC_PORT}");
    let out = world.probe(&["grpc", "--target", &target, "--count", "3", "--mode", "client-stream"]);
    assert_eq!(out["replies"], serde_json::json!(["pong:up-0", "pong:up-1", "pong:up-2"]), "{out}");
    let out = world.probe(&["grpc", "--target", &target, "--count", "4", "--mode", "server-stream"]);
    assert_eq!(out["replies"], serde_json::json!(["1/4", "2/4", "3/4", "4/4"]), "{out}");
    assert_eq!(server.streams(), 3, "one call each, none retried");
    let status = world.env.admin_json("/status");
    assert!(status["kernel_counters"]["connect_captured"].as_u64().unwrap() >= 1, "through the proxy: {status}");
}

#[test]
fn a_slow_chunked_upload_reaches_the_backend_as_it_is_sent_and_codings_are_kept() {
    let world = World::new("fidelity_chunked");
    let recorder = world._backend.serve_recorder(HTTP_PORT);
    world.start();
    let target = format!("{VIP}:{HTTP_PORT}");
    let head = "POST /upload HTTP/1.1\nhost: files\ntransfer-encoding: chunked\nconnection: close\n\n5\nhello\n";
    let mut upload = world.env.spawn_probe(
        &world.client,
        &["raw", "--target", &target, "--send", &crlf(head), "--then", &crlf("0\n\n"), "--read-ms", "5000"],
    );
    // The head and the first chunk are at the backend while the client
    // still holds its last chunk back.
    let first_chunk_arrived = wait_until(Duration::from_secs(10), || {
        seen_at(&recorder, "/upload").first().is_some_and(|seen| seen.body.ends_with(b"hello\r\n"))
    });
    assert!(first_chunk_arrived, "seen: {:?}\nagent log:\n{}", recorder.seen(), world.env.agent_log());
    assert!(!seen_at(&recorder, "/upload")[0].answered);
    upload.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = read_json_line(&mut upload).unwrap();
    assert!(response(&out).starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    let seen = &seen_at(&recorder, "/upload")[0];
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"), "{seen:?}");
    assert_eq!(seen.body, b"5\r\nhello\r\n0\r\n\r\n", "{seen:?}");

    // A coding besides chunked goes on as sent.
    let out = world.raw(
        "POST /gzip HTTP/1.1\nhost: files\ntransfer-encoding: gzip, chunked\nconnection: close\n\n3\nabc\n0\n\n",
        &[],
    );
    assert!(response(&out).starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    let seen = &seen_at(&recorder, "/gzip")[0];
    assert_eq!(seen.header("transfer-encoding"), Some("gzip, chunked"), "{seen:?}");
    assert!(seen.header("content-length").is_none(), "{seen:?}");
}

#[test]
fn bodies_keep_their_content_length_and_curl_expect_100_continue_works() {
    let world = World::new("fidelity_length");
    let recorder = world._backend.serve_recorder(HTTP_PORT);
    world.start();
    // Past the 64 KiB replay copy: this body streams with no copy.
    let file = world.env.scratch("upload.bin");
    std::fs::write(&file, vec![b'x'; 100_000]).unwrap();
    let data = format!("@{}", file.display());
    let url = |path: &str| format!("http://{VIP}:{HTTP_PORT}{path}");

    let text = world.curl(&["-H", "Expect: 100-continue", "--data-binary", &data, &url("/expect")]);
    assert_eq!(text, "received 100000");
    let seen = &seen_at(&recorder, "/expect")[0];
    assert_eq!(seen.header("content-length"), Some("100000"), "never re-framed as chunked: {seen:?}");
    assert!(seen.header("transfer-encoding").is_none(), "{seen:?}");

    // curl without Expect, and a small body that has it.
    let text = world.curl(&["-H", "Expect:", "--data-binary", &data, &url("/plain")]);
    assert_eq!(text, "received 100000");
    let text = world.curl(&["-H", "Expect: 100-continue", "--data-binary", "small", &url("/small")]);
    assert_eq!(text, "received 5");
    assert_eq!(seen_at(&recorder, "/small")[0].header("content-length"), Some("5"));

    // HTTP/2 from the client, HTTP/1.1 to the backend: the declared length stays.
    let text = world.curl(&["--http2-prior-knowledge", "--data-binary", &data, &url("/h2")]);
    assert_eq!(text, "received 100000");
    let seen = &seen_at(&recorder, "/h2")[0];
    assert_eq!(seen.header("content-length"), Some("100000"), "{seen:?}");

    // A streamed body within the copy is sent again on retry, whole.
    let text = world.curl(&["-H", "transfer-encoding: chunked", "--data-binary", "again", &url("/fail-once/small")]);
    assert_eq!(text, "received 15");
    let tries = seen_at(&recorder, "/fail-once/small");
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(tries[0].body, tries[1].body);
    // One past it is tried once, and the skipped retry is counted.
    let out = world.probe(&[
        "exec",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        &data,
        &url("/fail-once/big"),
    ]);
    assert_eq!(out["stdout"], "503", "{out}");
    assert_eq!(seen_at(&recorder, "/fail-once/big").len(), 1);
    let (_, metrics) = world.env.admin_get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mesh_request_retries_skipped_total{")
                && l.contains("request_body_over_retry_buffer")),
        "{metrics}"
    );
}

#[test]
fn host_rules_connect_and_a_half_closed_client() {
    let world = World::new("fidelity_host");
    let recorder = world._backend.serve_recorder(HTTP_PORT);
    world.start();
    let two_hosts = world.raw("GET /two HTTP/1.1\nhost: files\nhost: evil\nconnection: close\n\n", &[]);
    assert!(response(&two_hosts).starts_with("HTTP/1.1 400 "), "{two_hosts}");
    let no_host = world.raw("GET /none HTTP/1.1\nconnection: close\n\n", &[]);
    assert!(response(&no_host).starts_with("HTTP/1.1 400 "), "{no_host}");
    let absolute = world.raw("GET http://evil/abs HTTP/1.1\nhost: files\nconnection: close\n\n", &[]);
    assert!(response(&absolute).starts_with("HTTP/1.1 400 "), "{absolute}");
    // CONNECT is refused at once, and the connection closed.
    let connect = world.raw("CONNECT files:443 HTTP/1.1\nhost: files:443\n\n", &[]);
    assert!(response(&connect).starts_with("HTTP/1.1 405 "), "{connect}");
    assert_eq!(connect["closed_by_server"], true, "{connect}");
    assert!(connect["millis"].as_u64().unwrap() < 2000, "{connect}");
    // A client that half-closes after a complete request gets its answer.
    let half = world.raw("POST /half HTTP/1.1\nhost: files\ncontent-length: 2\n\nhi", &["--half-close"]);
    assert!(response(&half).starts_with("HTTP/1.1 200 OK\r\n"), "{half}");
    assert!(response(&half).ends_with("received 2"), "{half}");
    let paths: Vec<String> = recorder.seen().iter().map(|s| s.path().to_owned()).collect();
    assert_eq!(paths, ["/half"], "refused requests never reach the backend");

    // A chunked body that breaks midway is the client's fault: 400, and
    // neither a retry nor a mark against the upstream.
    let broken = world.raw("POST /broken HTTP/1.1\nhost: files\ntransfer-encoding: chunked\n\n5\nhello\nzz\n", &[]);
    assert!(response(&broken).starts_with("HTTP/1.1 400 "), "{broken}");
    // The client's answer can come before the backend has logged the head.
    let reached = wait_until(Duration::from_secs(5), || !seen_at(&recorder, "/broken").is_empty());
    assert!(reached, "the request's head went upstream");
    assert_eq!(seen_at(&recorder, "/broken").len(), 1, "tried once");
}
