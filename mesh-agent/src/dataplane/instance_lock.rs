//! One agent per pin directory: a second one would write diffs against a
//! view of the maps the first keeps changing.

use super::error::DataplaneError;
use std::fs::File;
use std::path::Path;

/// Takes the lock of the pin directory `bpffs`, a file under
/// `/run/mesh-agent` held with `flock` for as long as the returned file is
/// open; fails at once when another agent holds it.
pub(super) fn lock_instance(bpffs: &Path) -> Result<File, DataplaneError> {
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
