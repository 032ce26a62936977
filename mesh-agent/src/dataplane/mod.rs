//! The kernel side as the agent drives it: load the programs, pin maps and
//! links under bpffs so translation survives the agent, attach to a cgroup
//! (and the short-circuit's `sk_msg` to its sock hash), write snapshots by
//! diff, and read the counters back.
//!
//! One room per concern; no room imports from a room that imports from it:
//! - `load.rs`: the kernel object, loading it, attaching its programs with
//!   pinned links and detaching the previous agent's;
//! - `writer.rs`: snapshots into the maps by diff;
//! - `counters.rs`: counters and program run statistics;
//! - `proxy_maps.rs`: the maps between the kernel and the node proxy;
//! - `bpffs.rs`: the bpffs mount, the maps directory, pinning and opening;
//! - `instance_lock.rs`: one agent per pin directory;
//! - `sockmap_link.rs`: the raw bpf(2) calls for the `sk_msg` link;
//! - `error.rs`: the error all of them return.

mod bpffs;
mod counters;
mod error;
mod instance_lock;
mod load;
mod maglev_tables;
mod proxy_maps;
mod sockmap_link;
mod writer;

pub use counters::{enable_program_stats, program_stats, CounterReader, Counters};
pub use error::DataplaneError;
pub use instance_lock::{instance_file, lock_instance, InstanceLock};
pub use load::{attach, load, AttachedProgram, DataplaneInfo, DataplaneOptions, Loaded, SizedMap};
pub use proxy_maps::{register_proxy_listeners, set_proxy_target, OriginalDstTable};
pub use writer::{ApplyStats, MapWriter};
