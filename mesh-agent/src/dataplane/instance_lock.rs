//! One agent per pin directory: a second one would write diffs against a
//! view of the maps the first keeps changing.

use super::error::DataplaneError;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const LOCK_DIR: &str = "/run/mesh-agent";

/// The lock of one pin directory: a file under `/run/mesh-agent` held with
/// `flock` while this value lives, and removed when it goes, so pin
/// directories that come and go (one per test) leave nothing behind.
#[derive(Debug)]
pub struct InstanceLock {
    // Closed after `drop` below has unlinked the path: the file is removed
    // while still locked, and `lock_in` checks that the inode it locked is
    // still the one at the path.
    _file: File,
    path: PathBuf,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the lock of the pin directory `bpffs`; fails at once when another
/// agent holds it.
pub fn lock_instance(bpffs: &Path) -> Result<InstanceLock, DataplaneError> {
    lock_in(Path::new(LOCK_DIR), bpffs)
}

/// A file of the instance pinned at `bpffs` under `/run/mesh-agent`, named
/// after the pin directory with `extension` (the lock, the handover socket).
pub fn instance_file(bpffs: &Path, extension: &str) -> PathBuf {
    file_in(Path::new(LOCK_DIR), bpffs, extension)
}

fn file_in(dir: &Path, bpffs: &Path, extension: &str) -> PathBuf {
    let name: String =
        bpffs.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    dir.join(format!("{name}.{extension}"))
}

fn lock_in(dir: &Path, bpffs: &Path) -> Result<InstanceLock, DataplaneError> {
    let path = file_in(dir, bpffs, "lock");
    let lock_error = |source| DataplaneError::Lock { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(lock_error)?;
    loop {
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(lock_error)?;
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(lock_error(std::io::Error::last_os_error()));
        }
        // The holder may have removed the file between our open and our
        // flock: then the lock is on an inode nobody else will open, and a
        // fresh file must be locked instead.
        let held = file.metadata().map_err(lock_error)?;
        match std::fs::metadata(&path) {
            Ok(current) if current.dev() == held.dev() && current.ino() == held.ino() => {
                return Ok(InstanceLock { _file: file, path });
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(lock_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_the_file_goes_with_the_lock() {
        let dir = std::env::temp_dir().join(format!("mesh-lock-test-{}", std::process::id()));
        let bpffs = Path::new("/sys/fs/bpf/one");
        let first = lock_in(&dir, bpffs).unwrap();
        let path = first.path.clone();
        assert!(path.exists());
        assert!(matches!(lock_in(&dir, bpffs), Err(DataplaneError::Lock { .. })));
        drop(first);
        assert!(!path.exists());
        let again = lock_in(&dir, bpffs).unwrap();
        drop(again);
        std::fs::remove_dir(&dir).unwrap();
    }
}
