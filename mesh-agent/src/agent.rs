//! The data spine: source → validated model → compiled snapshot → map diff.
//!
//! One thread writes (the reload loop); readers (admin API) see whole
//! snapshots through a watch channel and never a half-applied one. A
//! gateway runs the same loop with no kernel maps to write ([`NoMaps`]).

use crate::dataplane::{ApplyStats, DataplaneError, MapWriter};
use crate::dns::DnsLink;
use crate::source::{ConfigSource, POLL_INTERVAL};
use crate::state::StateDir;
use crate::workloads::PodCgroups;
use mesh_core::model::Model;
use mesh_core::node::NodeContext;
use mesh_core::object::{ObjectKey, Warning};
use mesh_core::published::{Published, ReloadStatus};
use mesh_core::snapshot::{compile_owned, Snapshot};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How long the reload loop lets a change's neighbours arrive before it
/// takes the batch: the first event of a burst waits this long, no more.
const COALESCE: Duration = Duration::from_millis(10);

/// Where each compiled snapshot is written before it is published.
pub trait SnapshotSink: Send {
    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyStats, DataplaneError>;
    /// Adds and changes, deleting nothing (a first load after a takeover).
    fn apply_additive(&mut self, snapshot: &Snapshot) -> Result<ApplyStats, DataplaneError>;
}

impl SnapshotSink for MapWriter {
    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        MapWriter::apply(self, snapshot)
    }

    fn apply_additive(&mut self, snapshot: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        MapWriter::apply_additive(self, snapshot)
    }
}

/// No kernel maps: a gateway dials endpoints itself.
pub struct NoMaps;

impl SnapshotSink for NoMaps {
    fn apply(&mut self, _: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        Ok(ApplyStats::default())
    }

    fn apply_additive(&mut self, _: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        Ok(ApplyStats::default())
    }
}

pub struct ReloadLoop {
    source: Box<dyn ConfigSource>,
    writer: Box<dyn SnapshotSink>,
    cluster_domain: String,
    /// The model that serves (the published snapshot's own): the previous
    /// one of the next build.
    model: Arc<Model>,
    /// The snapshot compiled from `model` (shares its maps with the one
    /// written): the next compile starts from it when only endpoints changed.
    compiled: Option<Snapshot>,
    published: watch::Sender<Arc<Published>>,
    /// A snapshot that compiled but could not be written yet: retried with
    /// backoff until it goes in or a newer configuration replaces it.
    retry: Option<Retry>,
    /// The maps came from an earlier agent and nothing has been fully applied
    /// since: an incomplete first load must not delete what they serve.
    taken_over: bool,
    /// The source is failing: logged once, not on every poll.
    source_failing: bool,
    warned: WarningLog,
    /// The rejections logged at the last reload: each is logged once, not
    /// again while it stands.
    rejected: LoggedOnce,
    /// The resolver of `DNS` ServiceEntries' names (none in unit tests).
    dns: Option<DnsLink>,
    /// What the agent knows of its node, for every compile.
    node: Arc<NodeContext>,
    /// The pod cgroups of this node, rescanned each tick (`--pod-cgroups`).
    pods: Option<PodCgroups>,
    /// Where the last good configuration is kept across restarts.
    state: Option<StateDir>,
    /// The configuration being applied came whole (not an incomplete first
    /// load): only such a one is kept in `state`.
    complete: bool,
    /// `model` was built from the source's latest batch, so the next
    /// batch's changes are relative to it (see `SourceBatch::changed`);
    /// before the first batch, the next is built whole.
    model_follows_source: bool,
    /// A whole build ran since memory was last handed back (see `run`).
    built_whole: bool,
    /// A reload applied a configuration since memory was last handed back
    /// (see `run`).
    uncollected: bool,
}

/// What each object's warnings were when they were last logged (a hash of
/// the set), so that they are logged once per version of the object
/// rather than on every reload. Objects that go away (or lose their
/// warnings) are forgotten, and logged again if they come back.
#[derive(Debug, Default)]
pub struct WarningLog {
    logged: HashMap<ObjectKey, u64>,
}

impl WarningLog {
    /// Logs the warnings of each object whose set is new or changed;
    /// returns those logged.
    pub fn log<'a>(&mut self, warnings: &'a [Warning]) -> Vec<&'a Warning> {
        let mut by_object: BTreeMap<ObjectKey, Vec<&Warning>> = BTreeMap::new();
        for warning in warnings {
            by_object.entry(warning.key()).or_default().push(warning);
        }
        let mut fresh = Vec::new();
        let mut now = HashMap::with_capacity(by_object.len());
        for (key, set) in by_object {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            set.hash(&mut hasher);
            let hash = hasher.finish();
            if self.logged.get(&key) != Some(&hash) {
                fresh.extend(set);
            }
            now.insert(key, hash);
        }
        self.logged = now;
        for warning in &fresh {
            tracing::warn!(
                file = warning.file.as_deref().unwrap_or(""),
                kind = %warning.kind,
                namespace = %warning.namespace,
                name = %warning.name,
                field = %warning.field,
                "not honoured: {}", warning.message
            );
        }
        fresh
    }
}

/// What was logged at the last reload, by hash: an item is fresh when it
/// was not (so a standing one is logged once, and again if it goes and
/// comes back).
#[derive(Debug, Default)]
struct LoggedOnce {
    last: std::collections::HashSet<u64>,
}

impl LoggedOnce {
    fn fresh<'a, T: Hash>(&mut self, items: &'a [T]) -> Vec<&'a T> {
        let hash = |item: &T| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            item.hash(&mut hasher);
            hasher.finish()
        };
        let now: std::collections::HashSet<u64> = items.iter().map(hash).collect();
        let fresh = items.iter().filter(|item| !self.last.contains(&hash(item))).collect();
        self.last = now;
        fresh
    }
}

struct Retry {
    snapshot: Snapshot,
    at: Instant,
    delay: Duration,
}

const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

impl ReloadLoop {
    pub fn new(
        source: Box<dyn ConfigSource>,
        writer: Box<dyn SnapshotSink>,
        cluster_domain: String,
        maps_taken_over: bool,
    ) -> (Self, watch::Receiver<Arc<Published>>) {
        let (published, receiver) = watch::channel(Arc::new(Published::default()));
        let this = Self {
            source,
            writer,
            cluster_domain,
            model: Arc::default(),
            compiled: None,
            published,
            retry: None,
            taken_over: maps_taken_over,
            source_failing: false,
            warned: WarningLog::default(),
            rejected: LoggedOnce::default(),
            dns: None,
            node: Arc::default(),
            pods: None,
            state: None,
            complete: false,
            model_follows_source: false,
            built_whole: false,
            uncollected: false,
        };
        (this, receiver)
    }

    /// Keeps the objects that serve in `state` after each applied reload,
    /// and starts from what an earlier run kept there: an object rejected
    /// at the first load falls back on its kept version.
    pub fn with_state(mut self, state: StateDir) -> Self {
        match state.load() {
            Ok(objects) if !objects.is_empty() => {
                tracing::info!(objects = objects.len(), "last good configuration read from the state directory");
                self.model = Arc::new(Model::build(&objects, Vec::new(), &Model::default(), &self.cluster_domain));
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "the state directory's configuration is not usable; starting without"),
        }
        self.state = Some(state);
        self
    }

    /// Compiles with `node` (policy default, node addresses, resolvers),
    /// its pod cgroups kept current from `pods`.
    pub fn with_node(mut self, node: NodeContext, pods: Option<PodCgroups>) -> Self {
        self.node = Arc::new(node);
        self.pods = pods;
        self
    }

    /// The node context with the pod cgroups, when they changed.
    fn node_changed(&mut self) -> Option<Arc<NodeContext>> {
        let pod_cgroups = self.pods.as_mut()?.changed()?;
        self.node = Arc::new(NodeContext { pod_cgroups, ..(*self.node).clone() });
        Some(self.node.clone())
    }

    /// Resolves the names of `DNS` ServiceEntries with `dns`; the
    /// configuration is compiled again whenever their answers change.
    pub fn with_dns(mut self, dns: DnsLink) -> Self {
        self.dns = Some(dns);
        self
    }

    /// Loads and applies the configuration once; the agent does this before
    /// it attaches the programs, so they never run on unfilled maps. A
    /// source that is still syncing is waited for up to `patience`: past
    /// it the programs attach anyway (maps taken over keep serving what they
    /// hold; unknown traffic passes through) and `/readyz` says not ready
    /// until the first complete sync is applied.
    pub fn first_load(&mut self, patience: Duration) {
        let until = Instant::now() + patience;
        loop {
            self.tick();
            if self.published.borrow().ready || Instant::now() >= until {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs until `stop` is set: a reload as soon as the source has a
    /// change (a watch event), else every [`POLL_INTERVAL`] (a directory,
    /// DNS answers, the node's pod cgroups).
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            self.tick();
            // A whole build allocates a cluster's worth on this thread and
            // frees the last one (or the proxy's thread does): handed back
            // to the system at once. Not after a change of a few objects:
            // the next reload would fault those pages in again (10,000
            // services: a change's reload took 6 -> 12 ms).
            if std::mem::take(&mut self.built_whole) {
                crate::memory::return_freed();
                self.uncollected = false;
            }
            let took = began.elapsed();
            let changed = self.source.wait(POLL_INTERVAL);
            if !changed && std::mem::take(&mut self.uncollected) {
                // The changes stopped (a poll interval without one): what
                // their reloads freed goes back once, not after each.
                crate::memory::return_freed();
            }
            if changed {
                // A change waits COALESCE for its neighbours; while more
                // keep coming (a rollout, a relist), longer, doubling up to
                // POLL_INTERVAL: a burst costs a handful of reloads.
                let (mut gather, mut gathered) = (COALESCE, Duration::ZERO);
                loop {
                    let seen = self.source.changes_seen();
                    std::thread::sleep(gather);
                    gathered += gather;
                    if self.source.changes_seen() == seen || gathered >= POLL_INTERVAL {
                        break;
                    }
                    gather = (gather * 2).min(POLL_INTERVAL - gathered);
                }
                // Reloads also leave at least as much idle time as they
                // take: a core is never pegged.
                std::thread::sleep(took.saturating_sub(gathered));
            }
        }
    }

    fn tick(&mut self) {
        let started = Instant::now();
        let mut batch = match self.source.poll() {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                // Only once a configuration was loaded: before that, the
                // model is empty (or the kept one) and must not replace
                // what the kernel serves.
                let loaded = self.published.borrow().ready;
                let resolved = if loaded { self.dns.as_mut().and_then(DnsLink::changed) } else { None };
                let node = if loaded { self.node_changed() } else { None };
                if resolved.is_some() || node.is_some() {
                    // New answers or pods for the same objects: compiled again.
                    let mut model = (*self.model).clone();
                    model.resolved = resolved.unwrap_or(model.resolved);
                    model.node = node.unwrap_or(model.node);
                    self.retry = None;
                    self.compile_and_apply(model, started, false);
                    return;
                }
                if self.retry.as_ref().is_some_and(|r| r.at <= started) {
                    let retry = self.retry.take().expect("checked above");
                    self.apply(retry.snapshot, started, retry.delay);
                }
                return;
            }
            Err(error) => {
                if !self.source_failing {
                    tracing::warn!(%error, "config source unreadable; the last good configuration keeps serving");
                    self.publish_failure(error.to_string(), started);
                    self.source_failing = true;
                }
                return;
            }
        };
        self.source_failing = false;
        // A newer configuration supersedes one still waiting to be written.
        self.retry = None;
        let incomplete = batch.objects.is_empty() || batch.rejections.iter().any(|r| r.kind.is_empty());
        let read = started.elapsed();
        if !std::mem::take(&mut self.model_follows_source) {
            batch.changed = None;
        }
        self.built_whole |= batch.changed.is_none();
        let mut model = Model::from_batch(&batch, &self.model, &self.cluster_domain);
        if let Some(dns) = &self.dns {
            model.resolved = dns.current();
        }
        self.node_changed();
        model.node = self.node.clone();
        let validated = started.elapsed();
        for rejection in self.rejected.fresh(&model.rejections) {
            tracing::warn!(
                file = rejection.file.as_deref().unwrap_or(""),
                kind = %rejection.kind,
                namespace = %rejection.namespace,
                name = %rejection.name,
                field = %rejection.field,
                "rejected: {}", rejection.message
            );
        }
        tracing::debug!(
            objects = batch.objects.len(),
            read_micros = read.as_micros() as u64,
            validate_micros = (validated - read).as_micros() as u64,
            "configuration validated"
        );
        self.compile_and_apply(model, started, incomplete);
        self.model_follows_source = true;
    }

    /// Compiles `model` and writes the snapshot (what does not fit a kernel
    /// map is rejected object by object in it).
    fn compile_and_apply(&mut self, model: Model, started: Instant, incomplete: bool) {
        self.complete = !incomplete;
        self.uncollected = true;
        let compiling = Instant::now();
        let snapshot = compile_owned(model, self.compiled.as_ref(), &self.cluster_domain);
        tracing::debug!(compile_micros = compiling.elapsed().as_micros() as u64, "configuration compiled");
        self.warned.log(&snapshot.model.warnings);
        if let Some(dns) = &self.dns {
            dns.want(snapshot.model.dns_names());
        }
        self.model = snapshot.model.clone();
        self.compiled = Some(snapshot.clone());
        if self.taken_over && incomplete {
            // No last good version is known after a restart: keep what the
            // kernel serves rather than delete it on a half-read directory.
            tracing::warn!("first load after takeover is incomplete; adding only, removing nothing");
            self.apply_additive(snapshot, started);
        } else {
            self.apply(snapshot, started, Duration::ZERO);
        }
    }

    fn apply_additive(&mut self, snapshot: Snapshot, started: Instant) {
        match self.writer.apply_additive(&snapshot) {
            Ok(stats) => self.publish_applied(snapshot, started, stats),
            Err(error) => {
                tracing::error!(%error, "writing the kernel maps failed");
                self.publish_failure(error.to_string(), started);
            }
        }
    }

    fn apply(&mut self, snapshot: Snapshot, started: Instant, last_delay: Duration) {
        match self.writer.apply(&snapshot) {
            Ok(stats) => {
                self.taken_over = false;
                self.publish_applied(snapshot, started, stats);
            }
            Err(error) => {
                let delay = (last_delay * 2).clamp(POLL_INTERVAL, MAX_RETRY_DELAY);
                tracing::error!(%error, retry_in_ms = delay.as_millis() as u64, "writing the kernel maps failed");
                self.publish_failure(error.to_string(), started);
                self.retry = Some(Retry { snapshot, at: Instant::now() + delay, delay });
            }
        }
    }

    /// Publishes an applied snapshot, and keeps its model on disk when it
    /// came from a whole configuration (an additive first load, from an
    /// incomplete one, is not kept).
    fn publish_applied(&mut self, mut snapshot: Snapshot, started: Instant, stats: ApplyStats) {
        if let Some(state) = self.state.as_mut().filter(|_| self.complete) {
            if let Err(error) = state.save(&self.model) {
                tracing::warn!(%error, "the last good configuration is not kept on this node");
            }
        }
        let previous = self.published.borrow().clone();
        snapshot.serial = previous.reloads + 1;
        tracing::info!(
            services = snapshot.services.len(),
            frontends = snapshot.frontends.len(),
            upserts = stats.upserts,
            deletes = stats.deletes,
            rejected = snapshot.rejections.len(),
            micros = started.elapsed().as_micros() as u64,
            "configuration applied"
        );
        self.published.send_replace(Arc::new(Published {
            snapshot: Arc::new(snapshot),
            ready: true,
            reloads: previous.reloads + 1,
            last_reload: Some(reload_status(started, None, stats.upserts, stats.deletes)),
        }));
    }

    fn publish_failure(&self, error: String, started: Instant) {
        let previous = self.published.borrow().clone();
        self.published.send_replace(Arc::new(Published {
            snapshot: previous.snapshot.clone(),
            ready: previous.ready,
            reloads: previous.reloads + 1,
            last_reload: Some(reload_status(started, Some(error), 0, 0)),
        }));
    }
}

fn reload_status(started: Instant, error: Option<String>, map_upserts: usize, map_deletes: usize) -> ReloadStatus {
    ReloadStatus {
        at_unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        duration_micros: started.elapsed().as_micros() as u64,
        error,
        map_upserts,
        map_deletes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::decode::parse_file;

    const RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\nspec:\n  host: web\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n";

    fn warnings(text: &str) -> Vec<Warning> {
        let objects = parse_file("rules.yaml", text).unwrap();
        Model::build(&objects, vec![], &Model::default(), "cluster.local").warnings
    }

    fn logged(log: &mut WarningLog, warnings: &[Warning]) -> Vec<String> {
        log.log(warnings).into_iter().map(|w| w.field.clone()).collect()
    }

    #[test]
    fn a_standing_rejection_is_logged_once_and_again_after_it_went() {
        let mut log = LoggedOnce::default();
        let rejection = |message: &str| mesh_core::object::Rejection::file("a.yaml", message.to_owned());
        let both = [rejection("bad"), rejection("worse")];
        assert_eq!(log.fresh(&both).len(), 2);
        assert_eq!(log.fresh(&both).len(), 0, "standing: not again");
        assert_eq!(log.fresh(&both[..1]).len(), 0);
        assert_eq!(log.fresh(&both).len(), 1, "back after it went");
    }

    #[test]
    fn warnings_are_logged_once_per_version_of_an_object() {
        let mut log = WarningLog::default();
        let first = warnings(RULE);
        assert_eq!(logged(&mut log, &first), ["spec.trafficPolicy.tls.mode"]);
        assert!(logged(&mut log, &first).is_empty(), "not again on the next reload");
        // Another object's warning does not log this one again.
        let other = RULE.replace("name: web,", "name: db,").replace("host: web", "host: db");
        let both = warnings(&format!("{RULE}---\n{other}"));
        assert_eq!(log.log(&both).iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["db"]);
        // A new version of the object with another warning set is logged whole.
        let edited = RULE.replace(
            "{tls: {mode: ISTIO_MUTUAL}}",
            "{tls: {mode: ISTIO_MUTUAL}, tunnel: {targetHost: t.example, targetPort: 1}}",
        );
        let fields = logged(&mut log, &warnings(&edited));
        assert_eq!(fields, ["spec.trafficPolicy.tls.mode", "spec.trafficPolicy.tunnel"]);
        // Gone (or without warnings), then back: logged again.
        assert!(logged(&mut log, &[]).is_empty());
        assert_eq!(logged(&mut log, &first), ["spec.trafficPolicy.tls.mode"]);
    }
}
