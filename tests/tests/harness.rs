//! Smoke tests of the harness alone (no agent). Need root; without it they
//! fail rather than skip, so a CI that lost root does not go green.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mesh_tests::{in_netns, read_json_line, wait_until, Pod, TestEnv};
use serde_json::Value;

const TCP_PORT: u16 = 8080;
const HTTP_PORT: u16 = 8081;
const UDP_PORT: u16 = 5353;

fn two_pods(env: &TestEnv) -> (Pod, Pod) {
    let a = env.add_pod("pod-a", "10.244.1.2", "fd00:244::1:2");
    let b = env.add_pod("pod-b", "10.244.2.2", "fd00:244::2:2");
    (a, b)
}

fn tcp_target(ip: impl std::fmt::Display, v6: bool) -> String {
    if v6 {
        format!("[{ip}]:{TCP_PORT}")
    } else {
        format!("{ip}:{TCP_PORT}")
    }
}

/// Everything a dropped env must have removed.
struct Footprint {
    paths: Vec<PathBuf>,
}

impl Footprint {
    fn of(env: &TestEnv, pods: &[&Pod]) -> Footprint {
        let mut paths = vec![
            env.cgroup_path().to_path_buf(),
            env.pin_dir().to_path_buf(),
            env.config_dir().to_path_buf(),
            env.node_netns_path(),
        ];
        paths.extend(pods.iter().map(|p| p.netns_path()));
        Footprint { paths }
    }

    fn assert_gone(&self) {
        for path in &self.paths {
            assert!(!path.exists(), "{} survived the drop", path.display());
        }
    }
}

#[test]
fn pods_reach_each_other_over_tcp_and_udp() {
    let env = TestEnv::new("pods_reach_each_other").expect("test env");
    let (a, b) = two_pods(&env);
    // Stands in for the agent's pins: Drop must remove the tree from bpffs.
    std::fs::create_dir_all(env.pin_dir().join("maps")).expect("pin dir on bpffs");
    let footprint = Footprint::of(&env, &[&a, &b]);
    let tcp = b.serve_tcp(TCP_PORT);
    let udp = b.serve_udp(UDP_PORT);

    for target in [tcp_target(b.ipv4(), false), tcp_target(b.ipv6(), true)] {
        let out = env.probe(&a, &["tcp", "--target", &target, "--count", "3", "--requests-per-conn", "2"]).unwrap();
        assert_eq!(out["ok"], 3, "{out}");
        assert_eq!(out["backends"]["pod-b"], 3, "{out}");
        assert_eq!(out["peer"], target.as_str(), "{out}");
        assert!(out["micros_per_conn"].as_f64().unwrap() > 0.0, "{out}");
    }
    assert_eq!(tcp.accepted(), 6);
    assert!(wait_until(Duration::from_secs(2), || tcp.live() == 0), "live {}", tcp.live());

    let from_a = format!("{},{}", a.ipv4(), "127.0.0.1");
    let out = env.probe(&a, &["tcp", "--target", &tcp_target(b.ipv4(), false), "--count", "2", "--sources", &from_a]);
    let out = out.unwrap();
    // 127.0.0.1 cannot reach another pod; the pod address can.
    assert_eq!(out["per_source"][a.ipv4().to_string()], "pod-b", "{out}");
    assert_eq!(out["ok"], 1, "{out}");

    for (target, connected) in [
        (format!("{}:{UDP_PORT}", b.ipv4()), false),
        (format!("[{}]:{UDP_PORT}", b.ipv6()), false),
        (format!("{}:{UDP_PORT}", b.ipv4()), true),
        (format!("[{}]:{UDP_PORT}", b.ipv6()), true),
    ] {
        let mut args = vec!["udp", "--target", &target, "--count", "3"];
        if connected {
            args.push("--connected");
        }
        let out = env.probe(&a, &args).unwrap();
        assert_eq!(out["ok"], 3, "{out}");
        assert_eq!(out["backends"]["pod-b"], 3, "{out}");
        assert_eq!(out["reply_from"], target.as_str(), "{out}");
    }
    assert_eq!(udp.accepted(), 12);

    drop(env);
    footprint.assert_gone();
}

#[test]
fn untranslated_service_addresses_are_unreachable() {
    let env = TestEnv::new("untranslated_unreachable").expect("test env");
    let (a, _b) = two_pods(&env);
    for target in ["10.96.0.10:80", "[fd00:96::10]:80"] {
        let out = env.probe(&a, &["tcp", "--target", target, "--count", "2"]).unwrap();
        assert_eq!(out["ok"], 0, "{out}");
        assert_eq!(out["errors"]["ENETUNREACH"], 2, "{out}");
        assert_eq!(out["peer"], Value::Null, "{out}");
        let out = env.probe(&a, &["udp", "--target", target, "--count", "1"]).unwrap();
        assert_eq!(out["errors"]["ENETUNREACH"], 1, "{out}");
    }
    let out = env.probe(&a, &["tcp", "--target", "10.244.2.2:9", "--count", "1"]).unwrap();
    assert_eq!(out["errors"]["ECONNREFUSED"], 1, "{out}");
}

#[test]
fn probe_runs_in_the_test_cgroup() {
    let env = TestEnv::new("probe_in_cgroup").expect("test env");
    let (a, b) = two_pods(&env);
    let tcp = b.serve_tcp(TCP_PORT);
    let mut hold = env.spawn_probe(&a, &["hold", "--target", &tcp_target(b.ipv4(), false), "--count", "5"]);
    let line = read_json_line(&mut hold).unwrap();
    assert_eq!(line["held"], 5, "{line}");
    assert_eq!(line["backends"]["pod-b"], 5, "{line}");
    assert_eq!(tcp.live(), 5);

    let procs = std::fs::read_to_string(env.cgroup_path().join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), hold.id().to_string(), "cgroup.procs");

    drop(hold.stdin.take());
    assert!(hold.wait().unwrap().success());
    assert!(wait_until(Duration::from_secs(2), || tcp.live() == 0), "live {}", tcp.live());
    assert_eq!(tcp.accepted(), 5);
}

#[test]
fn http_server_keeps_connections_alive() {
    let env = TestEnv::new("http_keepalive").expect("test env");
    let (a, b) = two_pods(&env);
    let http = b.serve_http(HTTP_PORT);
    let target = SocketAddr::from((b.ipv6(), HTTP_PORT));
    let bodies = in_netns(&a.netns_path(), || -> std::io::Result<Vec<String>> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        let mut reader = BufReader::new(&stream);
        let mut bodies = Vec::new();
        for _ in 0..3 {
            (&stream).write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")?;
            bodies.push(read_http_body(&mut reader)?);
        }
        Ok(bodies)
    })
    .unwrap()
    .unwrap();
    assert_eq!(bodies, ["pod-b"; 3]);
    assert_eq!(http.accepted(), 1, "one keep-alive connection");
}

fn read_http_body(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8(body).unwrap())
}

#[test]
fn parallel_envs_with_the_same_addresses_are_independent() {
    let envs: Vec<_> = (0..2).map(|_| TestEnv::new("parallel_envs").expect("test env")).collect();
    let pods: Vec<_> = envs
        .iter()
        .enumerate()
        .map(|(i, env)| {
            let client = env.add_pod("client", "10.244.1.2", "fd00:244::1:2");
            let server = env.add_pod(&format!("server-{i}"), "10.244.2.2", "fd00:244::2:2");
            (client, server)
        })
        .collect();
    let _servers: Vec<_> = pods.iter().map(|(_, server)| server.serve_tcp(TCP_PORT)).collect();
    for (env, (client, server)) in envs.iter().zip(&pods) {
        let out = env.probe(client, &["tcp", "--target", &tcp_target(server.ipv4(), false)]).unwrap();
        assert_eq!(out["backends"][server.name()], 1, "{out}");
    }
}

/// Runs in a child process started by `leftovers_of_a_crashed_run_are_removed`:
/// builds an env and is killed before Drop runs. A no-op otherwise.
#[test]
fn crash_helper() {
    if std::env::var_os("MESH_TEST_CRASH_HELPER").is_none() {
        return;
    }
    let env = TestEnv::new("crashed_run").expect("test env");
    let pod = env.add_pod("pod", "10.244.1.2", "fd00:244::1:2");
    std::fs::create_dir(env.pin_dir()).unwrap();
    let paths = Footprint::of(&env, &[&pod]).paths;
    println!("FOOTPRINT {}", serde_json::to_string(&paths).unwrap());
    std::io::stdout().flush().unwrap();
    // SIGKILL: no Drop, no unwinding, no core file.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[test]
fn leftovers_of_a_crashed_run_are_removed() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_helper", "--nocapture", "--test-threads=1"])
        .env("MESH_TEST_CRASH_HELPER", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "helper should have been killed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let footprint = stdout
        .lines()
        .find_map(|l| l.split_once("FOOTPRINT ").map(|(_, json)| json))
        .unwrap_or_else(|| panic!("no footprint in helper output:\n{stdout}"));
    let paths: Vec<PathBuf> = serde_json::from_str(footprint).unwrap();
    for path in &paths {
        assert!(path.exists(), "crash left no {}", path.display());
    }
    let _env = TestEnv::new("crashed_run").expect("test env");
    Footprint { paths }.assert_gone();
}
