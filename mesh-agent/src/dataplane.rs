//! The kernel side as the agent drives it: load the programs, pin maps and
//! links under bpffs so translation survives the agent, attach to a cgroup
//! (and the short-circuit's `sk_msg` to its sock hash), write snapshots by
//! diff, and read the counters back.

use crate::diff::diff;
use crate::snapshot::Snapshot;
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, SockHash};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader, Pod};
use mesh_common::{
    global_stat, map_names, prog_names, Backend, ClusterLive, ClusterStats, ConnKey, Frontend, FrontendKey,
    OriginalDst, ProxyTarget, ServiceIpKey, SlotKey, SockKey,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::hash::Hash;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("opening cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("preparing bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: std::io::Error },
    #[error("loading the kernel object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("pinning link of {name} at {path}: {message}")]
    PinLink { name: &'static str, path: PathBuf, message: String },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("enabling program run statistics: {0}")]
    Stats(std::io::Error),
    #[error("another mesh-agent holds {path} (one agent per pin directory): {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error("attaching {name} to its sock hash ({step}): {source}")]
    SockMapLink { name: &'static str, step: &'static str, source: std::io::Error },
}

/// Where the agent attaches and pins.
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    pub cgroup: PathBuf,
    /// Per-instance directory under a bpffs mount; maps in `maps/`, links in `links/`.
    pub bpffs: PathBuf,
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

/// Writes snapshots into the kernel maps. One writer: the reload loop.
pub struct MapWriter {
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    service_ips: HashMap<MapData, ServiceIpKey, u32>,
    slots: HashMap<MapData, SlotKey, Backend>,
    maglev: HashMap<MapData, SlotKey, Backend>,
    backend_live: HashMap<MapData, Backend, u64>,
    cluster_live: HashMap<MapData, u64, ClusterLive>,
    cluster_stats: PerCpuHashMap<MapData, u64, ClusterStats>,
    /// What the kernel holds, as last read or written.
    current: Snapshot,
    /// Live-state entries found idle and unreferenced by the last apply:
    /// removed only if they still are at the next one, so a connect that
    /// raced the first look cannot lose its count.
    idle_last_apply: BTreeSet<IdleEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum IdleEntry {
    Cluster(u64),
    Backend(Backend),
}

/// Counts per kind of change written by one apply.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ApplyStats {
    pub upserts: usize,
    pub deletes: usize,
}

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
    pub lock: File,
}

/// Where the maps of this ABI version are pinned under `bpffs`.
pub fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps").join(format!("v{}", mesh_common::MAP_ABI_VERSION))
}

pub fn load(options: &DataplaneOptions) -> Result<Loaded, DataplaneError> {
    let lock = lock_instance(&options.bpffs)?;
    ensure_bpffs(&options.bpffs)?;
    let maps_dir = maps_dir(&options.bpffs);
    let maps_taken_over = maps_dir.join(map_names::FRONTENDS).exists();
    std::fs::create_dir_all(&maps_dir).map_err(|source| DataplaneError::Bpffs { path: maps_dir.clone(), source })?;
    let mut ebpf = EbpfLoader::new().default_map_pin_directory(&maps_dir).load(EBPF_OBJECT)?;
    let mut writer = MapWriter {
        frontends: take_map(&mut ebpf, map_names::FRONTENDS)?,
        service_ips: take_map(&mut ebpf, map_names::SERVICE_IPS)?,
        slots: take_map(&mut ebpf, map_names::SLOTS)?,
        maglev: take_map(&mut ebpf, map_names::MAGLEV)?,
        backend_live: take_map(&mut ebpf, map_names::BACKEND_LIVE)?,
        cluster_live: take_map(&mut ebpf, map_names::CLUSTER_LIVE)?,
        cluster_stats: take_map(&mut ebpf, map_names::CLUSTER_STATS)?,
        current: Snapshot::default(),
        idle_last_apply: BTreeSet::new(),
    };
    // Take over what a previous agent left: the first apply then writes only
    // what changed while it was away.
    writer.resync()?;
    tracing::info!(
        bpffs = %options.bpffs.display(),
        maps_taken_over,
        frontends = writer.current.frontends.len(),
        "kernel maps loaded"
    );
    Ok(Loaded { writer, ebpf, maps_taken_over, lock })
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

/// The few bpf(2) commands a pinnable `sk_msg` link needs and aya 0.14
/// does not offer. Layouts are those of `union bpf_attr` and
/// `struct bpf_link_info` in the kernel's uapi `linux/bpf.h`.
mod sockmap_link {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    const BPF_SK_MSG_VERDICT: u32 = 7;
    const BPF_LINK_TYPE_SOCKMAP: u32 = 14;

    /// The leading 64 bytes of `union bpf_attr`, as 32-bit words; the
    /// kernel zero-fills the rest.
    #[repr(C, align(8))]
    #[derive(Default)]
    struct Attr([u32; 16]);

    impl Attr {
        fn set_u64(&mut self, word: usize, value: u64) {
            self.0[word] = value as u32;
            self.0[word + 1] = (value >> 32) as u32;
        }
    }

    fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: attr is a valid, initialised buffer of the size passed.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>() as libc::c_uint)
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret)
    }

    fn owned(fd: libc::c_long) -> OwnedFd {
        // SAFETY: the kernel just returned this new descriptor to us.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn c_path(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
    }

    /// `BPF_LINK_CREATE`: attaches `prog` to the sock map `map` as its
    /// `sk_msg` verdict program; EBUSY if a link already holds that slot.
    pub fn create(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let mut attr = Attr::default();
        attr.0[0] = prog.as_raw_fd() as u32;
        attr.0[1] = map.as_raw_fd() as u32;
        attr.0[2] = BPF_SK_MSG_VERDICT;
        bpf(BPF_LINK_CREATE, &mut attr).map(owned)
    }

    /// `BPF_LINK_UPDATE`: the link runs `prog` from now on.
    pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        let mut attr = Attr::default();
        attr.0[0] = link.as_raw_fd() as u32;
        attr.0[1] = prog.as_raw_fd() as u32;
        bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
    }

    /// `BPF_OBJ_PIN` at `path` (on bpffs).
    pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let path = c_path(path)?;
        let mut attr = Attr::default();
        attr.set_u64(0, path.as_ptr() as u64);
        attr.0[2] = fd.as_raw_fd() as u32;
        bpf(BPF_OBJ_PIN, &mut attr).map(drop)
    }

    /// `BPF_OBJ_GET`: opens the object pinned at `path`.
    pub fn open(path: &Path) -> io::Result<OwnedFd> {
        let path = c_path(path)?;
        let mut attr = Attr::default();
        attr.set_u64(0, path.as_ptr() as u64);
        bpf(BPF_OBJ_GET, &mut attr).map(owned)
    }

    /// The id of the sock map a sockmap link is attached to.
    pub fn map_id(link: BorrowedFd<'_>) -> io::Result<u32> {
        // type, id, prog_id, then the union (8-aligned): sockmap.map_id.
        let mut info = [0u32; 16];
        let mut attr = Attr::default();
        attr.0[0] = link.as_raw_fd() as u32;
        attr.0[1] = std::mem::size_of_val(&info) as u32;
        attr.set_u64(2, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        if info[0] != BPF_LINK_TYPE_SOCKMAP {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        Ok(info[4])
    }
}

/// Tells the kernel where captured connections go: the node proxy's
/// address per family (none: that family is not captured) and port.
pub fn set_proxy_target(
    bpffs: &Path,
    v4: Option<std::net::Ipv4Addr>,
    v6: Option<std::net::Ipv6Addr>,
    port: u16,
) -> Result<(), DataplaneError> {
    let mut map: aya::maps::Array<MapData, ProxyTarget> = open_pinned(&maps_dir(bpffs), map_names::PROXY)?;
    let target = ProxyTarget {
        addr4: v4.map(|ip| u32::from_ne_bytes(ip.octets())).unwrap_or(0),
        addr6: v6.map(|ip| crate::snapshot::ip_words(ip.into())).unwrap_or_default(),
        port: port.to_be(),
        has_v4: v4.is_some() as u8,
        has_v6: v6.is_some() as u8,
    };
    map.set(0, target, 0).map_err(|source| DataplaneError::Map { name: map_names::PROXY, source })
}

/// Finds where a captured connection was going, by the client address the
/// proxy sees, and forgets the entry: each is read once, at accept.
pub struct OriginalDstTable {
    map: std::sync::Mutex<HashMap<MapData, ConnKey, OriginalDst>>,
}

impl OriginalDstTable {
    pub fn open(bpffs: &Path) -> Result<Self, DataplaneError> {
        Ok(Self { map: std::sync::Mutex::new(open_pinned(&maps_dir(bpffs), map_names::ORIGINAL_DST)?) })
    }

    pub fn take(&self, peer: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
        // A v4 client on a dual-stack listener shows as ::ffff:a.b.c.d.
        let peer_ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(peer.ip()),
            v4 => v4,
        };
        let key = ConnKey {
            addr: crate::snapshot::ip_words(peer_ip),
            port: peer.port().to_be(),
            family: if peer_ip.is_ipv4() { mesh_common::FAMILY_V4 } else { mesh_common::FAMILY_V6 },
            _pad: 0,
        };
        let mut map = crate::lock(&self.map);
        let original = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(std::net::SocketAddr::new(
            crate::snapshot::words_ip(original.addr, original.family),
            u16::from_be(original.port),
        ))
    }
}

/// One agent per pin directory: a second one would write diffs against a
/// view of the maps the first keeps changing.
fn lock_instance(bpffs: &Path) -> Result<File, DataplaneError> {
    let dir = Path::new("/run/mesh-agent");
    let name: String =
        bpffs.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let path = dir.join(format!("{name}.lock"));
    let lock_error = |source| DataplaneError::Lock { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(lock_error)?;
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(lock_error)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(lock_error(std::io::Error::last_os_error()));
    }
    Ok(file)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(DataplaneError::Program { name, source: ProgramError::NotLoaded })?;
    program.try_into().map_err(|source| DataplaneError::Program { name, source })
}

fn pin_link<E: std::fmt::Display>(
    name: &'static str,
    link: Result<FdLink, E>,
    path: &Path,
) -> Result<(), DataplaneError> {
    let pin_error = |message: String| DataplaneError::PinLink { name, path: path.to_owned(), message };
    link.map_err(|e| pin_error(e.to_string()))?.pin(path).map_err(|e| pin_error(e.to_string()))?;
    Ok(())
}

fn take_map<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError> {
    let map = ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

fn open_pinned<T: TryFrom<Map, Error = MapError>>(maps_dir: &Path, name: &'static str) -> Result<T, DataplaneError> {
    let data = MapData::from_pin(maps_dir.join(name)).map_err(|source| DataplaneError::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })?;
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

fn read_all<K: Pod + Ord, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, DataplaneError> {
    map.iter().map(|entry| entry.map_err(|source| DataplaneError::Map { name, source })).collect()
}

fn write<K: Pod + Ord + Clone, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    upserts: &[(K, V)],
) -> Result<(), DataplaneError> {
    for (key, value) in upserts {
        map.insert(key, value, 0).map_err(|source| DataplaneError::Map { name, source })?;
    }
    Ok(())
}

fn remove<K: Pod + Ord + Clone, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    keys: &[K],
) -> Result<(), DataplaneError> {
    for key in keys {
        match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(DataplaneError::Map { name, source }),
        }
    }
    Ok(())
}

fn is_missing(error: &MapError) -> bool {
    matches!(error, MapError::KeyNotFound)
        || matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

impl MapWriter {
    /// Makes the kernel hold `desired`. Order keeps every frontend pointing
    /// at slots that exist: slots and tables first, then frontends; removals
    /// in the reverse order. After a failed write, what the kernel holds is
    /// read back, so the next apply diffs against the truth.
    pub fn apply(&mut self, desired: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        let result = self.write_diff(desired);
        if result.is_err() {
            if let Err(error) = self.resync() {
                tracing::error!(%error, "could not read the kernel maps back after a failed write");
            }
        }
        result
    }

    /// Like [`apply`](Self::apply), but removes nothing: what the kernel
    /// holds and `desired` lacks stays. For a first load that may be
    /// incomplete (a file that does not parse, an empty directory) after a
    /// restart, when no last good version is known.
    pub fn apply_additive(&mut self, desired: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        let mut merged = desired.clone();
        merge_missing(&mut merged.frontends, &self.current.frontends);
        merge_missing(&mut merged.service_ips, &self.current.service_ips);
        merge_missing(&mut merged.slots, &self.current.slots);
        merge_missing(&mut merged.maglev, &self.current.maglev);
        self.apply(&merged)
    }

    fn write_diff(&mut self, desired: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        let slots = diff(&self.current.slots, &desired.slots);
        let maglev = diff(&self.current.maglev, &desired.maglev);
        let frontends = diff(&self.current.frontends, &desired.frontends);
        let service_ips = diff(&self.current.service_ips, &desired.service_ips);
        let stats = ApplyStats {
            upserts: slots.upserts.len() + maglev.upserts.len() + frontends.upserts.len() + service_ips.upserts.len(),
            deletes: slots.deletes.len() + maglev.deletes.len() + frontends.deletes.len() + service_ips.deletes.len(),
        };
        write(&mut self.slots, map_names::SLOTS, &slots.upserts)?;
        write(&mut self.maglev, map_names::MAGLEV, &maglev.upserts)?;
        write(&mut self.service_ips, map_names::SERVICE_IPS, &service_ips.upserts)?;
        write(&mut self.frontends, map_names::FRONTENDS, &frontends.upserts)?;
        // Frontends go before their service IP: a port that vanishes is
        // briefly "unknown port" (refused), never passed through untranslated.
        remove(&mut self.frontends, map_names::FRONTENDS, &frontends.deletes)?;
        remove(&mut self.service_ips, map_names::SERVICE_IPS, &service_ips.deletes)?;
        remove(&mut self.maglev, map_names::MAGLEV, &maglev.deletes)?;
        remove(&mut self.slots, map_names::SLOTS, &slots.deletes)?;
        self.current.frontends = desired.frontends.clone();
        self.current.service_ips = desired.service_ips.clone();
        self.current.slots = desired.slots.clone();
        self.current.maglev = desired.maglev.clone();
        self.forget_idle_state(desired)?;
        Ok(stats)
    }

    /// Reads what the kernel maps hold into `current`.
    fn resync(&mut self) -> Result<(), DataplaneError> {
        self.current.frontends = read_all(&self.frontends, map_names::FRONTENDS)?;
        self.current.service_ips = read_all(&self.service_ips, map_names::SERVICE_IPS)?;
        self.current.slots = read_all(&self.slots, map_names::SLOTS)?;
        self.current.maglev = read_all(&self.maglev, map_names::MAGLEV)?;
        Ok(())
    }

    /// Drops live-state and counter entries of clusters and backends the
    /// snapshot no longer has, once no connection holds them and they were
    /// already idle at the previous apply.
    fn forget_idle_state(&mut self, desired: &Snapshot) -> Result<(), DataplaneError> {
        let ids: BTreeSet<u64> = desired.frontends.values().flat_map(|f| [f.cluster_id, f.group_id]).collect();
        let backends: BTreeSet<Backend> = desired.slots.values().copied().collect();
        let idle_now: BTreeSet<IdleEntry> = self
            .cluster_live
            .iter()
            .filter_map(Result::ok)
            .filter(|(id, live)| !ids.contains(id) && live.connections == 0)
            .map(|(id, _)| IdleEntry::Cluster(id))
            .chain(
                self.backend_live
                    .iter()
                    .filter_map(Result::ok)
                    .filter(|(b, live)| !backends.contains(b) && *live == 0)
                    .map(|(b, _)| IdleEntry::Backend(b)),
            )
            .collect();
        for entry in idle_now.intersection(&self.idle_last_apply) {
            match entry {
                IdleEntry::Cluster(id) => remove(&mut self.cluster_live, map_names::CLUSTER_LIVE, &[*id])?,
                IdleEntry::Backend(b) => remove(&mut self.backend_live, map_names::BACKEND_LIVE, &[*b])?,
            }
        }
        self.idle_last_apply = idle_now;
        // Per-CPU statistics of clusters that are gone: nothing counts on them.
        let gone_stats: Vec<u64> =
            self.cluster_stats.keys().filter_map(Result::ok).filter(|id| !ids.contains(id)).collect();
        for id in gone_stats {
            if let Err(source) = self.cluster_stats.remove(&id) {
                if !is_missing(&source) {
                    return Err(DataplaneError::Map { name: map_names::CLUSTER_STATS, source });
                }
            }
        }
        Ok(())
    }
}

fn merge_missing<K: Ord + Clone, V: Clone>(into: &mut BTreeMap<K, V>, from: &BTreeMap<K, V>) {
    for (key, value) in from {
        into.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

/// Reads counters through its own handles on the pinned maps, so readers
/// never wait for the writer.
pub struct CounterReader {
    global: PerCpuArray<MapData, u64>,
    clusters: PerCpuHashMap<MapData, u64, ClusterStats>,
    cluster_live: HashMap<MapData, u64, ClusterLive>,
    backend_live: HashMap<MapData, Backend, u64>,
}

/// The kernel's counters, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub global: BTreeMap<&'static str, u64>,
    pub clusters: BTreeMap<u64, ClusterStats>,
    pub cluster_live: BTreeMap<u64, u64>,
    pub backend_live: BTreeMap<Backend, u64>,
}

impl CounterReader {
    pub fn open(bpffs: &Path) -> Result<Self, DataplaneError> {
        let maps = maps_dir(bpffs);
        Ok(Self {
            global: open_pinned(&maps, map_names::GLOBAL_STATS)?,
            clusters: open_pinned(&maps, map_names::CLUSTER_STATS)?,
            cluster_live: open_pinned(&maps, map_names::CLUSTER_LIVE)?,
            backend_live: open_pinned(&maps, map_names::BACKEND_LIVE)?,
        })
    }

    pub fn read(&self) -> Counters {
        let mut counters = Counters::default();
        for (index, name) in global_stat::NAMES.iter().enumerate() {
            let total = self.global.get(&(index as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
            counters.global.insert(name, total);
        }
        for (id, per_cpu) in self.clusters.iter().filter_map(Result::ok) {
            let mut sum = ClusterStats::default();
            for s in per_cpu.iter() {
                sum.connects += s.connects;
                sum.overflows += s.overflows;
                sum.no_backend += s.no_backend;
                sum.udp_datagrams += s.udp_datagrams;
            }
            counters.clusters.insert(id, sum);
        }
        counters.cluster_live =
            self.cluster_live.iter().filter_map(Result::ok).map(|(id, l)| (id, l.connections)).collect();
        counters.backend_live = collect_ok(self.backend_live.iter());
        counters
    }
}

/// How often a program ran and for how long in all, by program id. The
/// kernel keeps these only while run statistics are enabled
/// (`kernel.bpf_stats_enabled`, or [`enable_program_stats`]).
pub fn program_stats() -> BTreeMap<u32, (u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| (info.id(), (info.run_count(), info.run_time().as_nanos() as u64)))
        .collect()
}

/// Turns on the kernel's per-program run statistics for as long as the
/// returned descriptor lives. They cost a clock read per program run.
pub fn enable_program_stats() -> Result<std::os::fd::OwnedFd, DataplaneError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| DataplaneError::Bpffs { path: PathBuf::from("BPF_ENABLE_STATS"), source: e.io_error })
}

fn collect_ok<K: Ord + Hash, V>(iter: impl Iterator<Item = Result<(K, V), MapError>>) -> BTreeMap<K, V> {
    iter.filter_map(Result::ok).collect()
}

/// Mounts bpffs at the parent of `dir` when nothing is mounted there yet.
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let mount_point = dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    let bpffs_error = |source| DataplaneError::Bpffs { path: mount_point.to_owned(), source };
    std::fs::create_dir_all(mount_point).map_err(bpffs_error)?;
    let c_path = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes())
        .map_err(|_| bpffs_error(std::io::ErrorKind::InvalidInput.into()))?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(bpffs_error(std::io::Error::last_os_error()));
    }
    if stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    tracing::info!(path = %mount_point.display(), "mounting bpffs");
    // SAFETY: static, NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), c_path.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(bpffs_error(std::io::Error::last_os_error()));
    }
    Ok(())
}
