//! The Maglev tables: a hash of maps keyed by group id, each table an
//! mmap-able array of its own (`mesh_common::maglev_cells`). A changed
//! table is written into a new array through mmap (one memory copy, not a
//! syscall per entry) and swapped in by an update of the outer map, so a
//! connect never sees a table half written.
//!
//! Every write to a map of maps waits for an RCU grace period (the kernel
//! makes sure no program still runs with the inner map it replaced): about
//! 10 ms here, so a thousand tables written one by one took 11 s. Tables
//! are swapped in and taken out with the batch commands instead, one wait
//! per [`BATCH`] tables.

use super::writer::{is_missing, Entries, KernelKeys, KernelMap, Keys};
use aya::maps::{HashOfMaps, Map, MapData, MapError};
use aya::sys::SyscallError;
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
use aya_obj::generated::{bpf_attr, bpf_cmd};
use mesh_common::maglev_cells;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// Tables per batch command: each holds its new array's descriptor until
/// the batch is written, so this bounds the descriptors open at once.
const BATCH: usize = 256;

/// The outer map of Maglev tables.
pub(super) struct MaglevMap {
    tables: HashOfMaps<MapData, u64, MapData>,
    /// The outer map's descriptor again, for the batch commands aya lacks.
    fd: OwnedFd,
}

impl TryFrom<Map> for MaglevMap {
    type Error = MapError;

    fn try_from(map: Map) -> Result<Self, MapError> {
        match map {
            Map::HashOfMaps(data) => {
                let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| syscall_error("dup", e))?;
                Ok(Self { tables: HashOfMaps::try_from(Map::HashOfMaps(data))?, fd })
            }
            other => HashOfMaps::<MapData, u64, MapData>::try_from(other)
                .map(|_| unreachable!("only a hash of maps converts to one")),
        }
    }
}

impl KernelKeys<u64> for MaglevMap {
    fn keys(&self) -> Keys<'_, u64> {
        Box::new(self.tables.keys())
    }

    fn remove(&mut self, key: &u64) -> Result<(), MapError> {
        self.tables.remove(key)
    }

    fn remove_all(&mut self, keys: &[u64]) -> Result<(), MapError> {
        let mut rest = keys;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(BATCH)];
            let (done, result) = self.batch(bpf_cmd::BPF_MAP_DELETE_BATCH, chunk, None);
            match result {
                // The batch stops at a key already gone: step over it.
                Err(error) if is_missing(&error) => rest = &rest[(done + 1).min(rest.len())..],
                Err(error) => return Err(error),
                Ok(()) => rest = &rest[chunk.len()..],
            }
        }
        Ok(())
    }
}

impl KernelMap<u64, Arc<[u16]>> for MaglevMap {
    fn entries(&self) -> Entries<'_, u64, Arc<[u16]>> {
        Box::new(self.tables.keys().map(|key| {
            let key = key?;
            let table = self.tables.get(&key, 0)?;
            Ok((key, read_table(&table)?))
        }))
    }

    fn upsert(&mut self, key: &u64, table: &Arc<[u16]>) -> Result<(), MapError> {
        self.upsert_all(&[(*key, table.clone())])
    }

    fn upsert_all(&mut self, entries: &[(u64, Arc<[u16]>)]) -> Result<(), MapError> {
        for chunk in entries.chunks(BATCH) {
            let arrays = chunk.iter().map(|(_, table)| new_table(table)).collect::<Result<Vec<_>, _>>()?;
            let keys: Vec<u64> = chunk.iter().map(|(key, _)| *key).collect();
            let fds: Vec<u32> = arrays.iter().map(|array| array.fd().as_fd().as_raw_fd() as u32).collect();
            self.batch(bpf_cmd::BPF_MAP_UPDATE_BATCH, &keys, Some(&fds)).1?;
            // The outer map holds the tables from here on; these handles may go.
        }
        Ok(())
    }
}

impl MaglevMap {
    /// One batch command over `keys` (and `values`, the inner maps'
    /// descriptors, for an update): how many entries it did, and how it
    /// ended.
    fn batch(&self, command: bpf_cmd, keys: &[u64], values: Option<&[u32]>) -> (usize, Result<(), MapError>) {
        // SAFETY: all-zero is a valid bpf_attr (a C union of integers).
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing plain integers into the union's batch member.
        let batch = unsafe { &mut attr.batch };
        batch.map_fd = self.fd.as_raw_fd() as u32;
        batch.keys = keys.as_ptr() as u64;
        batch.values = values.map_or(0, |values| values.as_ptr() as u64);
        batch.count = keys.len() as u32;
        // SAFETY: `attr` and the key and value arrays it points to outlive
        // the call; the kernel reads `count` entries of each.
        let code = unsafe {
            libc::syscall(libc::SYS_bpf, command as libc::c_long, &mut attr as *mut bpf_attr, size_of::<bpf_attr>())
        };
        // SAFETY: reading back the integer the kernel wrote.
        let done = unsafe { attr.batch.count } as usize;
        match code {
            0 => (keys.len(), Ok(())),
            _ => (done, Err(syscall_error("bpf_map_batch", std::io::Error::last_os_error()))),
        }
    }
}

/// A new array holding `table`, written through mmap.
fn new_table(table: &[u16]) -> Result<MapData, MapError> {
    let cells = maglev_cells::count(table.len() as u32);
    let definition = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY as u32, 4, 8, cells, maglev_cells::FLAGS);
    let array = MapData::create(definition, "mesh_maglev", None)?;
    let mut mapped = Mapping::new(array.fd().as_fd(), cells as usize, true)?;
    for (cell, entries) in mapped.cells_mut().iter_mut().zip(table.chunks(maglev_cells::ENTRIES_PER_CELL as usize)) {
        *cell = entries.iter().enumerate().fold(0, |cell, (i, slot)| cell | u64::from(*slot) << (16 * i));
    }
    Ok(array)
}

fn syscall_error(call: &'static str, io_error: std::io::Error) -> MapError {
    MapError::SyscallError(SyscallError { call, io_error })
}

fn read_table(array: &MapData) -> Result<Arc<[u16]>, MapError> {
    let cells = array.info()?.max_entries() as usize;
    let mapped = Mapping::new(array.fd().as_fd(), cells, false)?;
    let per_cell = maglev_cells::ENTRIES_PER_CELL as usize;
    Ok(mapped.cells().iter().flat_map(|cell| (0..per_cell).map(move |i| (cell >> (16 * i)) as u16)).collect())
}

/// An array map's cells mapped into memory, unmapped on drop.
struct Mapping {
    address: *mut u64,
    cells: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, cells: usize, writable: bool) -> Result<Self, MapError> {
        let protection = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        let length = (cells * 8).max(1);
        // SAFETY: a shared mapping of the map's value area, which the kernel
        // sized to at least `cells` 8-byte cells; unmapped on drop.
        let address =
            unsafe { libc::mmap(std::ptr::null_mut(), length, protection, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if address == libc::MAP_FAILED {
            return Err(syscall_error("mmap", std::io::Error::last_os_error()));
        }
        Ok(Self { address: address.cast(), cells })
    }

    fn cells(&self) -> &[u64] {
        // SAFETY: the mapping holds `cells` aligned u64 cells while self lives.
        unsafe { std::slice::from_raw_parts(self.address, self.cells) }
    }

    fn cells_mut(&mut self) -> &mut [u64] {
        // SAFETY: as above; mapped writable (`new` with `writable`), and
        // nothing else writes a table before it is swapped in.
        unsafe { std::slice::from_raw_parts_mut(self.address, self.cells) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.address.cast(), (self.cells * 8).max(1)) };
    }
}
