//! The few bpf(2) commands a pinnable `sk_msg` link needs and aya 0.14
//! does not offer. Each command's part of `union bpf_attr`, and the part of
//! `struct bpf_link_info` a sock map link fills, is a `#[repr(C)]` struct
//! below with the field names of the kernel's uapi `linux/bpf.h`; the
//! asserts under each pin its layout.
//!
//! A struct stops after the last field its command uses here: the kernel
//! copies the `size` it is given and zero-fills the rest of `bpf_attr` (and
//! of `bpf_link_info`, whose length goes in `info_len`), which is what
//! leaving the later fields out means.

use std::ffi::CString;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `enum bpf_cmd`.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `enum bpf_attach_type`.
const BPF_SK_MSG_VERDICT: u32 = 7;
/// `enum bpf_link_type`.
const BPF_LINK_TYPE_SOCKMAP: u32 = 14;

/// Asserts at compile time the size of a `#[repr(C)]` struct and the
/// offset of each field named, as the kernel lays them out.
macro_rules! assert_layout {
    ($ty:ty, size $size:literal; $($($field:ident).+ @ $offset:literal),+) => {
        const _: () = assert!(size_of::<$ty>() == $size);
        $(const _: () = assert!(offset_of!($ty, $($field).+) == $offset);)+
    };
}

/// The anonymous member of `union bpf_attr` used by the `BPF_OBJ_*`
/// commands (`BPF_OBJ_PIN`, `BPF_OBJ_GET`).
#[repr(C, align(8))]
#[derive(Default)]
struct ObjAttr {
    /// `__aligned_u64`: a pointer to a NUL-terminated path on bpffs.
    pathname: u64,
    /// `BPF_OBJ_PIN`: the object to pin; 0 for `BPF_OBJ_GET`.
    bpf_fd: u32,
    file_flags: u32,
    /// Directory `pathname` is relative to, with `BPF_F_PATH_FD` in
    /// `file_flags` (6.5+); without it, the working directory.
    path_fd: i32,
    _pad: u32,
}
assert_layout!(ObjAttr, size 24; pathname @ 0, bpf_fd @ 8, file_flags @ 12, path_fd @ 16);

/// The `info` member of `union bpf_attr` (`BPF_OBJ_GET_INFO_BY_FD`).
#[repr(C, align(8))]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    /// In: the size of the buffer at `info`; out: how much the kernel wrote.
    info_len: u32,
    /// `__aligned_u64`: a pointer to the `bpf_*_info` struct to fill.
    info: u64,
}
assert_layout!(InfoAttr, size 16; bpf_fd @ 0, info_len @ 4, info @ 8);

/// The `link_create` member of `union bpf_attr` up to `flags`; the
/// per-attach-type union after it (from offset 16) has nothing for a sock
/// map link.
#[repr(C, align(8))]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    /// In the kernel a union with `target_ifindex`: here the sock map.
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}
assert_layout!(LinkCreateAttr, size 16; prog_fd @ 0, target_fd @ 4, attach_type @ 8, flags @ 12);

/// The `link_update` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    /// Only with `BPF_F_REPLACE` in `flags`: the program the link must hold.
    old_prog_fd: u32,
}
assert_layout!(LinkUpdateAttr, size 16; link_fd @ 0, new_prog_fd @ 4, flags @ 8, old_prog_fd @ 12);

/// `struct bpf_link_info` up to the `sockmap` member of its union, which
/// starts 8-aligned after the three common fields.
#[repr(C, align(8))]
#[derive(Default)]
struct LinkInfo {
    r#type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    sockmap: SockmapLinkInfo,
}

/// The `sockmap` member of the union in `struct bpf_link_info` (6.10+).
#[repr(C)]
#[derive(Default)]
struct SockmapLinkInfo {
    map_id: u32,
    attach_type: u32,
}
assert_layout!(LinkInfo, size 24; r#type @ 0, id @ 4, prog_id @ 8, sockmap.map_id @ 16, sockmap.attach_type @ 20);

/// One member of `union bpf_attr`: only the `#[repr(C)]` structs above,
/// whose layouts are asserted, implement it.
trait BpfAttr {}
impl BpfAttr for ObjAttr {}
impl BpfAttr for InfoAttr {}
impl BpfAttr for LinkCreateAttr {}
impl BpfAttr for LinkUpdateAttr {}

fn bpf<A: BpfAttr>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised `bpf_attr` member (see BpfAttr)
    // of the size passed, and outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as libc::c_uint) };
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

/// A descriptor as the kernel's `__u32` fields take it.
fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

/// `BPF_LINK_CREATE`: attaches `prog` to the sock map `map` as its
/// `sk_msg` verdict program; EBUSY if a link already holds that slot.
pub(super) fn create(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog),
        target_fd: fd_u32(map),
        attach_type: BPF_SK_MSG_VERDICT,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// `BPF_LINK_UPDATE`: the link runs `prog` from now on.
pub(super) fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr { link_fd: fd_u32(link), new_prog_fd: fd_u32(prog), ..Default::default() };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// `BPF_OBJ_PIN` at `path` (on bpffs).
pub(super) fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: fd_u32(fd), ..Default::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: opens the object pinned at `path`.
pub(super) fn open(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = ObjAttr { pathname: path.as_ptr() as u64, ..Default::default() };
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// The id of the sock map a sockmap link is attached to
/// (`BPF_OBJ_GET_INFO_BY_FD`); InvalidInput for another kind of link.
pub(super) fn map_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd_u32(link),
        info_len: size_of::<LinkInfo>() as u32,
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.r#type != BPF_LINK_TYPE_SOCKMAP {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    Ok(info.sockmap.map_id)
}
