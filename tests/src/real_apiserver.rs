//! A real Kubernetes API server (kube-apiserver v1.28 over etcd, on
//! loopback) for the tests the in-process fake cannot stand in for:
//! server-side validation, RBAC on every verb, the status subresource,
//! Leases and outages. `cargo xtask test` prepares both binaries and passes
//! their paths in `MESH_KUBE_APISERVER` and `MESH_ETCD`.
//!
//! No controller-manager runs: tests make EndpointSlices themselves and
//! mint ServiceAccount tokens through the TokenRequest API, so an agent
//! runs with exactly its ClusterRole's rights.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{pinned_kind, ApiResource, Scope};
use serde_json::Value;

use crate::sync::lock;
use crate::tls::{make_pki, Pki};
use crate::{free_port, wait_until};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_TOKEN: &str = "mesh-tests-admin-token";
/// Where Service cluster IPs come from (the tests' Services use 10.96/16).
pub const SERVICE_RANGE: &str = "10.96.0.0/16";
/// The field manager of everything the tests apply.
const MANAGER: &str = "mesh-tests";

/// etcd and kube-apiserver, stopped (and their files removed) on drop.
pub struct RealApiServer {
    dir: PathBuf,
    port: u16,
    etcd: Mutex<Child>,
    apiserver: Mutex<Option<Child>>,
    runtime: tokio::runtime::Runtime,
    admin: kube::Client,
    /// Each kind as the server serves it, once looked up.
    kinds: Mutex<std::collections::HashMap<(String, String), (ApiResource, Scope)>>,
}

fn binary(var: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
        anyhow!(
            "{var} is not set: run the suite with `cargo xtask test`, which prepares kube-apiserver and etcd, \
             or set MESH_KUBE_APISERVER and MESH_ETCD to their binaries"
        )
    })?;
    if !path.is_file() {
        bail!("{var}={} is not a file", path.display());
    }
    Ok(path)
}

impl RealApiServer {
    /// Starts etcd and kube-apiserver with files in a temporary directory
    /// named after `name` (a test's), and waits until the API server is
    /// ready (60 s).
    pub fn start(name: &str) -> Result<RealApiServer> {
        let dir = &std::env::temp_dir().join(format!("mesh-tests-apiserver-{name}-{}", std::process::id()));
        remove_leftovers(name);
        // Both checked before anything starts; kube-apiserver's path is read
        // again at each (re)start.
        binary("MESH_KUBE_APISERVER")?;
        let etcd_bin = binary("MESH_ETCD")?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let pki = make_pki(&dir.join("pki"), &["127.0.0.1", "localhost"])?;
        // kube-apiserver signs tokens with the private key and checks them
        // with the public one (it reads no public key out of a private one).
        let sa_key = rcgen::KeyPair::generate()?;
        let sa_keys = (dir.join("pki").join("sa-key.pem"), dir.join("pki").join("sa.pem"));
        std::fs::write(&sa_keys.0, sa_key.serialize_pem())?;
        std::fs::write(&sa_keys.1, sa_key.public_key_pem())?;
        std::fs::write(dir.join("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"))?;

        let (client_port, peer_port, port) = (free_port(), free_port(), free_port());
        std::fs::write(dir.join("apiserver.args"), apiserver_args(dir, &pki, &sa_keys, client_port, port).join("\n"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let kubeconfig = write_kubeconfig(dir, "admin", port, &pki.ca, ADMIN_TOKEN)?;
        let admin = runtime.block_on(client(&kubeconfig))?;
        let etcd = spawn_logged(
            Command::new(etcd_bin)
                .arg("--data-dir")
                .arg(etcd_data_dir(dir))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client_port}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client_port}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}")),
            &dir.join("etcd.log"),
        )?;
        // Owned at once: its drop stops etcd whatever fails next.
        let server = RealApiServer {
            dir: dir.to_owned(),
            port,
            etcd: Mutex::new(etcd),
            apiserver: Mutex::new(None),
            runtime,
            admin,
            kinds: Mutex::default(),
        };
        server.start_apiserver()?;
        Ok(server)
    }

    /// (Re)starts kube-apiserver with the arguments it first had and waits
    /// until `/readyz` answers 200.
    pub fn start_apiserver(&self) -> Result<()> {
        let mut slot = lock(&self.apiserver);
        if slot.is_some() {
            bail!("kube-apiserver already runs");
        }
        let args = std::fs::read_to_string(self.dir.join("apiserver.args"))?;
        let child = spawn_logged(
            Command::new(binary("MESH_KUBE_APISERVER")?).args(args.lines()),
            &self.dir.join("apiserver.log"),
        )?;
        *slot = Some(child);
        drop(slot);
        let mut exited = None;
        let ready = wait_until(READY_TIMEOUT, || {
            exited = lock(&self.apiserver).as_mut().and_then(|child| child.try_wait().ok().flatten());
            exited.is_some() || self.ready()
        });
        if let Some(status) = exited {
            lock(&self.apiserver).take();
            bail!("kube-apiserver exited ({status}); its log tail:\n{}", self.log_tail());
        }
        if !ready {
            bail!("kube-apiserver not ready in {READY_TIMEOUT:?}; its log tail:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Kills kube-apiserver (an outage: etcd and everything stored stay).
    pub fn stop_apiserver(&self) {
        if let Some(mut child) = lock(&self.apiserver).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn ready(&self) -> bool {
        let request = hyper::Request::get("/readyz").body(Vec::new()).expect("a static request");
        self.runtime.block_on(self.admin.request_text(request)).is_ok_and(|body| body.trim() == "ok")
    }

    /// The last lines of kube-apiserver's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A kubeconfig for `namespace/service_account`, with a token minted
    /// through the TokenRequest API: whoever uses it has exactly the rights
    /// RBAC grants that account.
    pub fn service_account_kubeconfig(&self, namespace: &str, service_account: &str) -> Result<PathBuf> {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
            ..Default::default()
        };
        let answer =
            self.runtime.block_on(api.create_token_request(service_account, &PostParams::default(), &request))?;
        let token = answer.status.context("TokenRequest without status")?.token;
        write_kubeconfig(&self.dir, service_account, self.port, &self.dir.join("pki").join("ca.pem"), &token)
    }

    /// Server-side apply of `object` with strict field validation (an
    /// unknown field is an error, as `kubectl apply --server-side` makes it).
    pub fn apply(&self, object: &Value) -> Result<Value> {
        let (api, name) = self.api(object)?;
        let params = PatchParams::apply(MANAGER).force().validation_strict();
        let applied = self.runtime.block_on(api.patch(name, &params, &Patch::Apply(object)))?;
        Ok(serde_json::to_value(applied)?)
    }

    /// The object as the server has it now, None when it does not exist.
    pub fn get(&self, object: &Value) -> Result<Option<Value>> {
        let (api, name) = self.api(object)?;
        let found = self.runtime.block_on(api.get_opt(name))?;
        Ok(found.map(serde_json::to_value).transpose()?)
    }

    /// Deletes the object `object` names (its apiVersion, kind, namespace, name).
    pub fn delete(&self, object: &Value) -> Result<()> {
        let (api, name) = self.api(object)?;
        self.runtime.block_on(api.delete(name, &DeleteParams::default()))?;
        Ok(())
    }

    /// Adds (or replaces) the condition `condition["type"]` in the status of
    /// `object` as another controller would: read, change, write back with
    /// the resourceVersion read, again on a conflict.
    pub fn put_condition(&self, object: &Value, condition: &Value) -> Result<Value> {
        let (api, name) = self.api(object)?;
        for _ in 0..5 {
            let mut current = serde_json::to_value(self.runtime.block_on(api.get_status(name))?)?;
            let conditions = current["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conditions: Vec<Value> =
                conditions.into_iter().filter(|c| c["type"] != condition["type"]).collect();
            conditions.push(condition.clone());
            current["status"]["conditions"] = Value::Array(conditions);
            let body: DynamicObject = serde_json::from_value(current)?;
            match self.runtime.block_on(api.replace_status(name, &PostParams::default(), &body)) {
                Ok(written) => return Ok(serde_json::to_value(written)?),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("status of {name}: a conflict on every one of 5 writes")
    }

    /// Waits until the server serves `api_version`/`kind` (a CRD is
    /// established), up to `timeout`.
    pub fn wait_for_kind(&self, api_version: &str, kind: &str, timeout: Duration) -> bool {
        let gvk = gvk(api_version, kind);
        wait_until(timeout, || self.runtime.block_on(pinned_kind(&self.admin, &gvk)).is_ok())
    }

    /// The API of `object`'s kind (its namespace's, for a namespaced
    /// kind), and its name. A kind is looked up once: the tests poll.
    fn api<'o>(&self, object: &'o Value) -> Result<(Api<DynamicObject>, &'o str)> {
        let name = object["metadata"]["name"].as_str().context("object without metadata.name")?;
        let api_version = object["apiVersion"].as_str().context("object without apiVersion")?;
        let kind = object["kind"].as_str().context("object without kind")?;
        let known = lock(&self.kinds).get(&(api_version.to_owned(), kind.to_owned())).cloned();
        let (resource, scope) = match known {
            Some(known) => known,
            None => {
                let (resource, capabilities) =
                    self.runtime.block_on(pinned_kind(&self.admin, &gvk(api_version, kind)))?;
                let found = (resource, capabilities.scope);
                lock(&self.kinds).insert((api_version.to_owned(), kind.to_owned()), found.clone());
                found
            }
        };
        let api = match scope {
            Scope::Namespaced => {
                let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default");
                Api::namespaced_with(self.admin.clone(), namespace, &resource)
            }
            Scope::Cluster => Api::all_with(self.admin.clone(), &resource),
        };
        Ok((api, name))
    }
}

impl Drop for RealApiServer {
    fn drop(&mut self) {
        self.stop_apiserver();
        let mut etcd = lock(&self.etcd);
        let _ = etcd.kill();
        let _ = etcd.wait();
        let _ = std::fs::remove_dir_all(etcd_data_dir(&self.dir));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What runs of test `name` killed before their cleanup left: their
/// directories (and etcd's data in memory).
fn remove_leftovers(name: &str) {
    let prefixes = [
        (std::env::temp_dir(), format!("mesh-tests-apiserver-{name}-")),
        (PathBuf::from("/dev/shm"), format!("mesh-tests-etcd-mesh-tests-apiserver-{name}-")),
    ];
    for (dir, prefix) in prefixes {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let pid = file_name.strip_prefix(&prefix).and_then(|rest| rest.parse::<u32>().ok());
            if pid.is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn gvk(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

/// etcd's data in memory when /dev/shm is there: etcd 3.4 fsyncs every
/// write and has no flag to stop it.
fn etcd_data_dir(dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if shm.is_dir() {
        shm.join(format!("mesh-tests-etcd-{name}"))
    } else {
        dir.join("etcd-data")
    }
}

fn apiserver_args(dir: &Path, pki: &Pki, sa_keys: &(PathBuf, PathBuf), etcd_port: u16, port: u16) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", path(&dir.join("certs"))),
        format!("--service-cluster-ip-range={SERVICE_RANGE}"),
        "--endpoint-reconciler-type=none".into(),
        "--authorization-mode=RBAC".into(),
        format!("--token-auth-file={}", path(&dir.join("tokens.csv"))),
        format!("--client-ca-file={}", path(&pki.ca)),
        format!("--tls-cert-file={}", path(&pki.server_cert)),
        format!("--tls-private-key-file={}", path(&pki.server_key)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-signing-key-file={}", path(&sa_keys.0)),
        format!("--service-account-key-file={}", path(&sa_keys.1)),
        // Aggregation wants a front proxy's identity, even with no aggregated API.
        format!("--requestheader-client-ca-file={}", path(&pki.ca)),
        "--requestheader-allowed-names=client.mesh.test".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!("--proxy-client-cert-file={}", path(&pki.client_cert)),
        format!("--proxy-client-key-file={}", path(&pki.client_key)),
        "--profiling=false".into(),
    ]
}

fn write_kubeconfig(dir: &Path, user: &str, port: u16, ca: &Path, token: &str) -> Result<PathBuf> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "real", "cluster": {"server": format!("https://127.0.0.1:{port}"),
                                                   "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "real", "user": user}}],
        "current-context": user,
    });
    // JSON is YAML: kubeconfig readers take it as it is.
    let path = dir.join(format!("kubeconfig-{user}"));
    std::fs::write(&path, serde_json::to_vec_pretty(&kubeconfig)?)?;
    Ok(path)
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn spawn_logged(command: &mut Command, log: &Path) -> Result<Child> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))
}
