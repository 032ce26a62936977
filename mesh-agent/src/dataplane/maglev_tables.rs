//! The Maglev tables: a hash of maps keyed by group id, each table an
//! mmap-able array of its own (`mesh_common::maglev_cells`). A changed
//! table is written into a new array through mmap (one memory copy, not a
//! syscall per entry) and swapped in with one update of the outer map, so
//! a connect never sees a table half written.

use super::writer::{Entries, KernelKeys, KernelMap, Keys};
use aya::maps::{HashOfMaps, MapData, MapError};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
use mesh_common::maglev_cells;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

pub(super) type MaglevMap = HashOfMaps<MapData, u64, MapData>;

impl KernelKeys<u64> for MaglevMap {
    fn keys(&self) -> Keys<'_, u64> {
        Box::new(HashOfMaps::keys(self))
    }

    fn remove(&mut self, key: &u64) -> Result<(), MapError> {
        HashOfMaps::remove(self, key)
    }
}

impl KernelMap<u64, Arc<[u16]>> for MaglevMap {
    fn entries(&self) -> Entries<'_, u64, Arc<[u16]>> {
        Box::new(HashOfMaps::keys(self).map(|key| {
            let key = key?;
            let table = self.get(&key, 0)?;
            Ok((key, read_table(&table)?))
        }))
    }

    fn upsert(&mut self, key: &u64, table: &Arc<[u16]>) -> Result<(), MapError> {
        let cells = maglev_cells::count(table.len() as u32);
        let definition = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY as u32, 4, 8, cells, maglev_cells::FLAGS);
        let array = MapData::create(definition, "mesh_maglev", None)?;
        let mut mapped = Mapping::new(array.fd().as_fd(), cells as usize, true)?;
        for (cell, entries) in mapped.cells_mut().iter_mut().zip(table.chunks(maglev_cells::ENTRIES_PER_CELL as usize))
        {
            *cell = entries.iter().enumerate().fold(0, |cell, (i, slot)| cell | u64::from(*slot) << (16 * i));
        }
        drop(mapped);
        // The outer map holds the table from here on; this handle may go.
        self.insert(key, &array, 0)
    }
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
            let io_error = std::io::Error::last_os_error();
            return Err(MapError::SyscallError(aya::sys::SyscallError { call: "mmap", io_error }));
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
