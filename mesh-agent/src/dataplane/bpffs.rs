//! Where the agent keeps its kernel objects: the bpffs mount, the
//! versioned maps directory, and opening and pinning what lives there.

use super::error::DataplaneError;
use aya::maps::{Map, MapData, MapError};
use aya::programs::links::FdLink;
use std::path::{Path, PathBuf};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the maps of this ABI version are pinned under `bpffs`.
pub(super) fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps").join(format!("v{}", mesh_common::MAP_ABI_VERSION))
}

/// Mounts bpffs at the parent of `dir` when nothing is mounted there yet.
pub(super) fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let mount_point = dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    let bpffs_error = |source| DataplaneError::Bpffs { path: mount_point.to_owned(), source };
    std::fs::create_dir_all(mount_point).map_err(bpffs_error)?;
    let c_path = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes())
        .map_err(|_| bpffs_error(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: `statfs` is plain integers, for which all zeroes is a value.
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

/// Opens the map pinned as `name` in `maps_dir`, as the map type `T`.
pub(super) fn open_pinned<T: TryFrom<Map, Error = MapError>>(
    maps_dir: &Path,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let data = MapData::from_pin(maps_dir.join(name)).map_err(|source| DataplaneError::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })?;
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

/// Pins the link of program `name` at `path`; `link` is the link as aya
/// converts it, which may have failed.
pub(super) fn pin_link<E: std::fmt::Display>(
    name: &'static str,
    link: Result<FdLink, E>,
    path: &Path,
) -> Result<(), DataplaneError> {
    let pin_error = |message: String| DataplaneError::PinLink { name, path: path.to_owned(), message };
    link.map_err(|e| pin_error(e.to_string()))?.pin(path).map_err(|e| pin_error(e.to_string()))?;
    Ok(())
}
