//! Loading the kernel object and attaching its programs: the maps of the
//! pin directory are taken (created or taken over) first, the programs
//! attach to the cgroup with pinned links afterwards, and the previous
//! agent's links are removed only once the new ones are in.

use super::bpffs::{ensure_bpffs, maps_dir, pin_link};
use super::error::DataplaneError;
use super::instance_lock::{lock_instance, InstanceLock};
use super::maglev_tables::MaglevMap;
use super::sockmap_link;
use super::writer::{KernelMap, MapWriter, WriterMaps};
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuHashMap, SockHash};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader, Pod};
use mesh_common::{map_names, prog_names, ClusterStats, PolicyConfig, RegistryPrefix, SockKey, WorkloadStats};
use mesh_core::node::MapSizes;
use serde::Serialize;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh"));

/// Where the agent attaches and pins.
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    pub cgroup: PathBuf,
    /// Per-instance directory under a bpffs mount; maps in `maps/`, links in `links/`.
    pub bpffs: PathBuf,
    /// Sizes for the maps this agent creates, in place of the defaults.
    pub map_entries: Vec<(SizedMap, u32)>,
}

/// The configuration maps whose size is a flag (`--map-entries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizedMap {
    ServiceAddresses,
    ServiceIps,
    BackendSlots,
    Backends,
    Clusters,
    MaglevTables,
    /// Not a map of its own: the entries of all Maglev tables together
    /// (each a kernel array; 2 bytes an entry).
    MaglevEntries,
    Workloads,
    Registry,
    EgressScopes,
}

impl SizedMap {
    const ALL: [SizedMap; 10] = [
        SizedMap::ServiceAddresses,
        SizedMap::ServiceIps,
        SizedMap::BackendSlots,
        SizedMap::Backends,
        SizedMap::Clusters,
        SizedMap::MaglevTables,
        SizedMap::MaglevEntries,
        SizedMap::Workloads,
        SizedMap::Registry,
        SizedMap::EgressScopes,
    ];

    /// The name `--map-entries` knows it by.
    pub fn flag_name(self) -> &'static str {
        match self {
            SizedMap::ServiceAddresses => "service-addresses",
            SizedMap::ServiceIps => "service-ips",
            SizedMap::BackendSlots => "backend-slots",
            SizedMap::Backends => "backends",
            SizedMap::Clusters => "clusters",
            SizedMap::MaglevTables => "maglev-tables",
            SizedMap::MaglevEntries => "maglev-entries",
            SizedMap::Workloads => "workloads",
            SizedMap::Registry => "registry",
            SizedMap::EgressScopes => "egress-scopes",
        }
    }

    pub fn by_flag(name: &str) -> Option<SizedMap> {
        Self::ALL.into_iter().find(|map| map.flag_name() == name)
    }

    pub fn flag_names() -> Vec<&'static str> {
        Self::ALL.into_iter().map(SizedMap::flag_name).collect()
    }

    /// The kernel maps it sizes: the first one's size is read back (none:
    /// a budget of the agent's, as the flag sets it).
    fn maps(self) -> &'static [&'static str] {
        match self {
            SizedMap::ServiceAddresses => &[map_names::FRONTENDS],
            SizedMap::ServiceIps => &[map_names::SERVICE_IPS],
            SizedMap::BackendSlots => &[map_names::SLOTS],
            SizedMap::Backends => &[map_names::BACKEND_LIVE],
            SizedMap::Clusters => &[map_names::CLUSTER_LIVE, map_names::CLUSTER_STATS],
            SizedMap::MaglevTables => &[map_names::MAGLEV],
            SizedMap::MaglevEntries => &[],
            SizedMap::Workloads => &[map_names::WORKLOADS, map_names::WORKLOAD_STATS],
            SizedMap::Registry => &[map_names::REGISTRY],
            SizedMap::EgressScopes => &[map_names::SCOPE_CLUSTERS],
        }
    }

    fn size_in(self, sizes: &mut MapSizes) -> &mut u32 {
        match self {
            SizedMap::ServiceAddresses => &mut sizes.frontends,
            SizedMap::ServiceIps => &mut sizes.service_ips,
            SizedMap::BackendSlots => &mut sizes.slots,
            SizedMap::Backends => &mut sizes.backends,
            SizedMap::Clusters => &mut sizes.clusters,
            SizedMap::MaglevTables => &mut sizes.maglev_tables,
            SizedMap::MaglevEntries => &mut sizes.maglev_entries,
            SizedMap::Workloads => &mut sizes.workloads,
            SizedMap::Registry => &mut sizes.registry,
            SizedMap::EgressScopes => &mut sizes.egress_scopes,
        }
    }
}

/// The sizes of the maps in the pin directory, as the kernel made them,
/// and the budgets `asked` sets.
fn sizes_in_use(maps_dir: &Path, asked: &[(SizedMap, u32)]) -> Result<MapSizes, DataplaneError> {
    let mut sizes = MapSizes::default();
    for map in SizedMap::ALL {
        let Some(&name) = map.maps().first() else {
            if let Some((_, entries)) = asked.iter().rfind(|(asked, _)| *asked == map) {
                *map.size_in(&mut sizes) = *entries;
            }
            continue;
        };
        let error = |source| DataplaneError::Map { name, source };
        let data = MapData::from_pin(maps_dir.join(name)).map_err(error)?;
        *map.size_in(&mut sizes) = data.info().map_err(error)?.max_entries();
    }
    Ok(sizes)
}

#[derive(Clone, Debug, Serialize)]
pub struct AttachedProgram {
    pub name: &'static str,
    pub attach_type: &'static str,
    pub link_pin: PathBuf,
    /// The kernel's program id, to find its run statistics.
    pub id: u32,
}

/// What was loaded and where, for status.
#[derive(Clone, Debug, Serialize)]
pub struct DataplaneInfo {
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub programs: Vec<AttachedProgram>,
    /// The maps were already pinned (an earlier agent's): their contents,
    /// live connections and counters were taken over, not reset.
    pub maps_taken_over: bool,
}

/// Every cgroup program with its attach point, in attach order. The
/// `sk_msg` program, attached to the sock hash rather than to the cgroup,
/// goes in before all of them: a socket takes the sock hash's `sk_msg`
/// program when it is added, so none may be added before it is there.
const PROGRAMS: [(&str, &str); 10] = [
    (prog_names::CONNECT4, "connect4"),
    (prog_names::CONNECT6, "connect6"),
    (prog_names::SENDMSG4, "sendmsg4"),
    (prog_names::SENDMSG6, "sendmsg6"),
    (prog_names::RECVMSG4, "recvmsg4"),
    (prog_names::RECVMSG6, "recvmsg6"),
    (prog_names::GETPEERNAME4, "getpeername4"),
    (prog_names::GETPEERNAME6, "getpeername6"),
    (prog_names::SOCK_RELEASE, "sock_release"),
    (prog_names::SOCK_OPS, "sock_ops"),
];

/// The maps of the pin directory, loaded (created or taken over) but with
/// no program attached yet: the first snapshot goes in before traffic can
/// see an empty map set.
pub struct Loaded {
    pub writer: MapWriter,
    /// The object, whose programs `attach` loads and links.
    pub ebpf: Ebpf,
    /// The maps were already pinned (an earlier agent's).
    pub maps_taken_over: bool,
    /// Held while the agent runs: one agent per pin directory.
    pub lock: InstanceLock,
    /// The sizes of the maps in use, for the compiler.
    pub map_sizes: MapSizes,
}

pub fn load(options: &DataplaneOptions) -> Result<Loaded, DataplaneError> {
    let lock = lock_instance(&options.bpffs)?;
    ensure_bpffs(&options.bpffs)?;
    let maps_dir = maps_dir(&options.bpffs);
    let maps_taken_over = maps_dir.join(map_names::FRONTENDS).exists();
    std::fs::create_dir_all(&maps_dir).map_err(|source| DataplaneError::Bpffs { path: maps_dir.clone(), source })?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&maps_dir);
    for (map, entries) in &options.map_entries {
        for name in map.maps() {
            loader.map_max_entries(name, *entries);
        }
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let mut map_sizes = sizes_in_use(&maps_dir, &options.map_entries)?;
    for (map, entries) in &options.map_entries {
        let in_use = *map.size_in(&mut map_sizes);
        if in_use != *entries {
            tracing::warn!(
                map = map.flag_name(),
                asked = entries,
                in_use,
                "a pinned map keeps the size it was made with (`mesh-agent uninstall` removes the pins)"
            );
        }
    }
    // Take over what a previous agent left: the first apply then writes only
    // what changed while it was away.
    let writer = MapWriter::take_over(WriterMaps {
        frontends: take_hash_map(&mut ebpf, map_names::FRONTENDS)?,
        service_ips: take_hash_map(&mut ebpf, map_names::SERVICE_IPS)?,
        slots: take_hash_map(&mut ebpf, map_names::SLOTS)?,
        maglev: Box::new(take_map::<MaglevMap>(&mut ebpf, map_names::MAGLEV)?),
        backend_live: take_hash_map(&mut ebpf, map_names::BACKEND_LIVE)?,
        cluster_live: take_hash_map(&mut ebpf, map_names::CLUSTER_LIVE)?,
        cluster_stats: Box::new(take_map::<PerCpuHashMap<MapData, u64, ClusterStats>>(
            &mut ebpf,
            map_names::CLUSTER_STATS,
        )?),
        policy: Box::new(take_map::<Array<MapData, PolicyConfig>>(&mut ebpf, map_names::POLICY)?),
        workloads: take_hash_map(&mut ebpf, map_names::WORKLOADS)?,
        registry: Box::new(take_map::<LpmTrie<MapData, RegistryPrefix, u32>>(&mut ebpf, map_names::REGISTRY)?),
        scope_clusters: take_hash_map(&mut ebpf, map_names::SCOPE_CLUSTERS)?,
        workload_stats: Box::new(take_map::<PerCpuHashMap<MapData, u64, WorkloadStats>>(
            &mut ebpf,
            map_names::WORKLOAD_STATS,
        )?),
    })?;
    tracing::info!(
        bpffs = %options.bpffs.display(),
        maps_taken_over,
        frontends = writer.held().frontends.len(),
        "kernel maps loaded"
    );
    Ok(Loaded { writer, ebpf, maps_taken_over, lock, map_sizes })
}

/// Loads the programs and attaches them to the cgroup with pinned links,
/// then detaches the previous agent's. On any failure the links this call
/// pinned are removed again and the previous ones stay.
pub fn attach(
    ebpf: &mut Ebpf,
    options: &DataplaneOptions,
    maps_taken_over: bool,
) -> Result<DataplaneInfo, DataplaneError> {
    let links_dir = options.bpffs.join("links");
    std::fs::create_dir_all(&links_dir).map_err(|source| DataplaneError::Bpffs { path: links_dir.clone(), source })?;
    let cgroup = File::open(&options.cgroup)
        .map_err(|source| DataplaneError::Cgroup { path: options.cgroup.clone(), source })?;
    let previous_links: Vec<PathBuf> = std::fs::read_dir(&links_dir)
        .map_err(|source| DataplaneError::Bpffs { path: links_dir.clone(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut programs = Vec::new();
    let attached = (|| {
        let name = prog_names::SK_MSG;
        let path = links_dir.join(format!("{name}_{stamp}"));
        let id = attach_sk_msg(ebpf, &path, &previous_links)?;
        programs.push(AttachedProgram { name, attach_type: "sk_msg", link_pin: path, id });
        // New links go in before the old ones leave, so no connect is ever
        // made with nothing attached. While both are attached, the second
        // program sees an already-translated address and lets it pass.
        for (name, attach_type) in PROGRAMS {
            let path = links_dir.join(format!("{name}_{stamp}"));
            let id = if attach_type == "sock_release" {
                program::<CgroupSock>(ebpf, name)?.attach_pinned(name, &cgroup, &path)?
            } else if attach_type == "sock_ops" {
                program::<SockOps>(ebpf, name)?.attach_pinned(name, &cgroup, &path)?
            } else {
                program::<CgroupSockAddr>(ebpf, name)?.attach_pinned(name, &cgroup, &path)?
            };
            programs.push(AttachedProgram { name, attach_type, link_pin: path, id });
        }
        Ok(())
    })();
    if let Err(error) = attached {
        for program in &programs {
            let _ = std::fs::remove_file(&program.link_pin);
        }
        return Err(error);
    }
    for path in previous_links {
        // Unpinning the last reference detaches the old program.
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "detached the previous agent's program"),
            Err(error) => tracing::warn!(path = %path.display(), %error, "could not remove an old link pin"),
        }
    }
    tracing::info!(cgroup = %options.cgroup.display(), programs = programs.len(), "kernel programs attached");
    Ok(DataplaneInfo { cgroup: options.cgroup.clone(), bpffs: options.bpffs.clone(), programs, maps_taken_over })
}

/// Load, attach to the cgroup and pin a link, for both kinds of cgroup
/// program the agent uses.
trait AttachPinned {
    /// Returns the kernel's id of the loaded program.
    fn attach_pinned(&mut self, name: &'static str, cgroup: &File, path: &Path) -> Result<u32, DataplaneError>;
}

macro_rules! impl_attach_pinned {
    ($($program:ty),*) => {$(
        impl AttachPinned for $program {
            fn attach_pinned(&mut self, name: &'static str, cgroup: &File, path: &Path) -> Result<u32, DataplaneError> {
                let error = |source| DataplaneError::Program { name, source };
                self.load().map_err(error)?;
                // Link-based cgroup attachments (kernel >= 5.7) always coexist
                // with other links; the kernel refuses any flag, hence Single.
                let link_id = self.attach(cgroup, CgroupAttachMode::Single).map_err(error)?;
                let link = self.take_link(link_id).map_err(error)?;
                pin_link(name, FdLink::try_from(link), path)?;
                Ok(self.info().map_err(error)?.id())
            }
        }
    )*};
}

impl_attach_pinned!(CgroupSockAddr, CgroupSock, SockOps);

/// Loads the `sk_msg` program and attaches it to the pinned sock hash with
/// a link pinned at `path`; returns the kernel's id of the program.
///
/// aya 0.14 attaches `sk_msg` with the legacy `BPF_PROG_ATTACH`, which
/// cannot be pinned and is detached when the agent's handle drops, so the
/// link (kernel 6.10+) is made here with plain bpf(2) calls. A sock hash
/// takes one such link. When an earlier agent's link already holds it
/// (a restart onto the same pinned maps), that link is switched to the new
/// program in one step (`BPF_LINK_UPDATE`) and pinned again at `path`, so
/// removing the old pin afterwards leaves it attached: there is no moment
/// without a program. Either way, sockets already in the sock hash keep the
/// program they were added with until they close.
///
/// Kernels before 6.10 have no sock map links: there the program is
/// attached the legacy way and the attachment is left on the map (nothing
/// is pinned under `links/`). It lives as long as the pinned map, and the
/// next agent's attach replaces the program in one step just the same.
fn attach_sk_msg(ebpf: &mut Ebpf, path: &Path, previous_links: &[PathBuf]) -> Result<u32, DataplaneError> {
    let name = prog_names::SK_MSG;
    let link_error = |step, source| DataplaneError::SockMapLink { name, step, source };
    let map_error = |source| DataplaneError::Map { name: map_names::SOCK_HASH, source };
    let (map_fd, map_id) = {
        let map = ebpf.map(map_names::SOCK_HASH).ok_or(DataplaneError::MissingMap(map_names::SOCK_HASH))?;
        let sock_hash = SockHash::<&MapData, SockKey>::try_from(map).map_err(map_error)?;
        let fd = sock_hash.fd().try_clone().map_err(|e| link_error("dup", e))?;
        let id = match map {
            Map::SockHash(data) => data.info().map_err(map_error)?.id(),
            _ => return Err(DataplaneError::MissingMap(map_names::SOCK_HASH)),
        };
        (fd, id)
    };
    let program = program::<SkMsg>(ebpf, name)?;
    let error = |source| DataplaneError::Program { name, source };
    program.load().map_err(error)?;
    let created = sockmap_link::create(program.fd().map_err(error)?.as_fd(), map_fd.as_fd());
    let link = match created {
        Ok(link) => link,
        Err(busy) if busy.raw_os_error() == Some(libc::EBUSY) => {
            let held_by = previous_links
                .iter()
                .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(name)))
                .filter_map(|p| sockmap_link::open(p).ok())
                .find(|link| sockmap_link::map_id(link.as_fd()).ok() == Some(map_id));
            let link = held_by.ok_or_else(|| link_error("another link holds the sock hash", busy))?;
            sockmap_link::update(link.as_fd(), program.fd().map_err(error)?.as_fd())
                .map_err(|e| link_error("BPF_LINK_UPDATE", e))?;
            tracing::info!(map = map_names::SOCK_HASH, "switched the previous agent's sk_msg link to the new program");
            link
        }
        Err(unsupported) if unsupported.raw_os_error() == Some(libc::EINVAL) => {
            let link_id = program.attach(&map_fd).map_err(error)?;
            // Forgotten, not dropped: dropping would detach the program.
            std::mem::forget(program.take_link(link_id).map_err(error)?);
            tracing::warn!(
                map = map_names::SOCK_HASH,
                "no sock map links in this kernel (before 6.10): sk_msg attached to the map without a link pin"
            );
            return Ok(program.info().map_err(error)?.id());
        }
        Err(e) => return Err(link_error("BPF_LINK_CREATE", e)),
    };
    sockmap_link::pin(link.as_fd(), path).map_err(|e| DataplaneError::PinLink {
        name,
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(program.info().map_err(error)?.id())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(DataplaneError::Program { name, source: ProgramError::NotLoaded })?;
    program.try_into().map_err(|source| DataplaneError::Program { name, source })
}

fn take_map<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError> {
    let map = ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

fn take_hash_map<K: Pod + Send, V: Pod + Send>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<Box<dyn KernelMap<K, V> + Send>, DataplaneError> {
    Ok(Box::new(take_map::<HashMap<MapData, K, V>>(ebpf, name)?))
}
