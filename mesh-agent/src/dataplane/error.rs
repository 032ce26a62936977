//! The one error type of the dataplane, shared by its rooms.

use aya::maps::MapError;
use aya::programs::ProgramError;
use std::path::PathBuf;

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
