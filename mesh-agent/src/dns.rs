//! The agent's own resolver for `resolution: DNS` ServiceEntries. The
//! reload loop says which names it wants ([`DnsLink::want`]); a task on the
//! runtime looks each up with the node's resolver configuration, again
//! when its TTL runs out, and publishes the answers whenever they change
//! ([`DnsLink::changed`]), so the loop recompiles with them. A lookup that
//! fails keeps the last good answer and is retried with backoff; a name
//! that does not exist (NXDOMAIN, no records) has no addresses.

use hickory_resolver::config::ResolverOpts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{system_conf, TokioResolver};
use mesh_core::service_entry::Resolved;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Answers are looked up again after their TTL, within these bounds: a
/// TTL of 0 would spin, and a day-long one would miss a move for a day.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(300);
/// A failing lookup is retried after 1 s, doubling up to this.
const MAX_RETRY: Duration = Duration::from_secs(30);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("reading the resolver configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing the resolver configuration {path}: {source}")]
    Parse { path: PathBuf, source: hickory_resolver::net::NetError },
    #[error("building the resolver: {0}")]
    Build(#[source] hickory_resolver::net::NetError),
}

/// The reload loop's end of the resolver.
pub struct DnsLink {
    wanted: watch::Sender<BTreeSet<String>>,
    answers: watch::Receiver<Arc<Resolved>>,
}

impl DnsLink {
    /// The names to resolve from now on (the others are forgotten).
    pub fn want(&self, names: BTreeSet<String>) {
        self.wanted.send_if_modified(|wanted| {
            let changed = *wanted != names;
            *wanted = names.clone();
            changed
        });
    }

    /// The answers, when they changed since last asked.
    pub fn changed(&mut self) -> Option<Arc<Resolved>> {
        self.answers.has_changed().unwrap_or(false).then(|| self.answers.borrow_and_update().clone())
    }

    /// The answers now.
    pub fn current(&self) -> Arc<Resolved> {
        self.answers.borrow().clone()
    }
}

/// Starts the resolver on `runtime` with the configuration in
/// `resolv_conf` (the node's `/etc/resolv.conf` by default).
pub fn start(runtime: &tokio::runtime::Handle, resolv_conf: &Path) -> Result<DnsLink, DnsError> {
    let text = std::fs::read(resolv_conf).map_err(|source| DnsError::Read { path: resolv_conf.into(), source })?;
    let (config, mut options) =
        system_conf::parse_resolv_conf(text).map_err(|source| DnsError::Parse { path: resolv_conf.into(), source })?;
    options_for_the_mesh(&mut options);
    let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(DnsError::Build)?;
    let (wanted, wanted_rx) = watch::channel(BTreeSet::new());
    let (answers_tx, answers) = watch::channel(Arc::new(Resolved::new()));
    runtime.spawn(run(resolver, wanted_rx, answers_tx));
    Ok(DnsLink { wanted, answers })
}

/// Every lookup goes to the servers (our own schedule honours the TTLs),
/// and names are absolute: a ServiceEntry host is fully qualified, not a
/// name for the search list.
fn options_for_the_mesh(options: &mut ResolverOpts) {
    options.cache_size = 0;
    options.ndots = 0;
    options.timeout = Duration::from_secs(2);
}

/// What is known of one name.
struct Name {
    addresses: Vec<IpAddr>,
    next: Instant,
    retry: Duration,
}

async fn run(
    resolver: TokioResolver,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    answers: watch::Sender<Arc<Resolved>>,
) {
    let mut names: BTreeMap<String, Name> = BTreeMap::new();
    loop {
        let now = Instant::now();
        let want = wanted.borrow_and_update().clone();
        names.retain(|name, _| want.contains(name));
        // The names due, looked up together: one slow or failing name does
        // not hold the others back.
        let due_names: Vec<&String> =
            want.iter().filter(|name| names.get(*name).is_none_or(|known| known.next <= now)).collect();
        let due: Vec<(String, Name)> = (due_names.into_iter())
            .map(|name| {
                let known = names.remove(name).unwrap_or(Name { addresses: Vec::new(), next: now, retry: MIN_TTL });
                (name.clone(), known)
            })
            .collect();
        let looked_up = futures::future::join_all(due.into_iter().map(|(name, mut known)| {
            let resolver = &resolver;
            async move {
                lookup(resolver, &name, &mut known).await;
                (name, known)
            }
        }))
        .await;
        names.extend(looked_up);
        let resolved: Resolved = (names.iter())
            .filter(|(_, known)| !known.addresses.is_empty())
            .map(|(name, known)| (name.clone(), known.addresses.clone()))
            .collect();
        answers.send_if_modified(|current| {
            let changed = **current != resolved;
            if changed {
                *current = Arc::new(resolved);
            }
            changed
        });
        let next = names.values().map(|known| known.next).min();
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Looks `name` up once and records the outcome in `known`.
async fn lookup(resolver: &TokioResolver, name: &str, known: &mut Name) {
    let absolute = format!("{name}.");
    let now = Instant::now();
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(absolute.as_str())).await {
        Ok(Ok(lookup)) => {
            let mut addresses: Vec<IpAddr> = lookup.iter().collect();
            addresses.sort();
            addresses.dedup();
            let ttl = lookup.valid_until().saturating_duration_since(std::time::Instant::now());
            if addresses != known.addresses {
                tracing::info!(name, ?addresses, ttl_secs = ttl.as_secs(), "ServiceEntry host resolved");
            }
            known.addresses = addresses;
            known.next = now + ttl.clamp(MIN_TTL, MAX_TTL);
            known.retry = MIN_TTL;
        }
        Ok(Err(error)) if error.is_no_records_found() || error.is_nx_domain() => {
            if !known.addresses.is_empty() {
                tracing::warn!(name, %error, "ServiceEntry host no longer resolves; its addresses are dropped");
            }
            known.addresses.clear();
            known.next = now + known.retry;
            known.retry = (known.retry * 2).min(MAX_RETRY);
        }
        failed => {
            let error = match failed {
                Ok(Err(error)) => error.to_string(),
                _ => format!("no answer in {LOOKUP_TIMEOUT:?}"),
            };
            tracing::warn!(name, %error, retry_secs = known.retry.as_secs(), "ServiceEntry host lookup failed; the last answer keeps serving");
            known.next = now + known.retry;
            known.retry = (known.retry * 2).min(MAX_RETRY);
        }
    }
}
