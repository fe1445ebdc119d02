//! Host memory for guests, and (as the NUMA work lands) host topology and placement.
//!
//! Today this crate hands the VMM anonymous, lazily-populated guest RAM. Hugepages, memfd
//! sharing, NUMA binding and prefault build on the same `GuestMemoryBacking` entry point.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Errors from building guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// No range was given, or a range was empty.
    #[error("guest memory layout is empty: give at least one non-empty RAM range")]
    EmptyLayout,
    /// The host refused the mapping.
    #[error("could not map {size} bytes of guest memory at guest address {addr:#x}: {source}")]
    Map {
        /// Guest physical address of the range.
        addr: u64,
        /// Size of the range in bytes.
        size: usize,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// How guest RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestMemoryBacking {
    /// Private anonymous memory, populated on first touch (MAP_NORESERVE).
    #[default]
    Anonymous,
}

impl GuestMemoryBacking {
    /// Maps the given guest-physical RAM ranges `(start, size)`.
    ///
    /// Nothing is touched: pages are populated when the guest first writes them, so the VMM's
    /// resident memory stays small however large the guest is.
    pub fn map(self, ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, MemoryError> {
        if ranges.is_empty() || ranges.iter().any(|(_, size)| *size == 0) {
            return Err(MemoryError::EmptyLayout);
        }
        match self {
            GuestMemoryBacking::Anonymous => {
                GuestMemoryMmap::from_ranges(ranges).map_err(|source| {
                    let (addr, size) = ranges[0];
                    MemoryError::Map {
                        addr: addr.0,
                        size,
                        source,
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn maps_two_ranges_and_reads_back() {
        let mem = GuestMemoryBacking::Anonymous
            .map(&[(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 2 << 20)])
            .unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beefu32, GuestAddress((1 << 32) + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((1 << 32) + 8)).unwrap(),
            0xdead_beef
        );
        // The hole between the ranges is not memory.
        assert!(mem.read_obj::<u32>(GuestAddress(2 << 20)).is_err());
    }

    #[test]
    fn empty_layout_is_an_error() {
        assert!(matches!(
            GuestMemoryBacking::Anonymous.map(&[]),
            Err(MemoryError::EmptyLayout)
        ));
        assert!(matches!(
            GuestMemoryBacking::Anonymous.map(&[(GuestAddress(0), 0)]),
            Err(MemoryError::EmptyLayout)
        ));
    }
}
