//! Guest RAM on the host: anonymous, MAP_HUGETLB or memfd mappings, bound to a NUMA node with
//! mbind and optionally prefaulted, handed to the VMM as a vm-memory `GuestMemoryMmap`.
//!
//! Order of work for each guest-physical range: validate everything against the topology
//! (node, pool, page alignment) before the first mmap; mmap; mbind(MPOL_BIND) while nothing is
//! touched yet; prefault with MADV_POPULATE_WRITE (falling back to touching each page). Each
//! mapping is owned by a vm-memory `MmapRegion`, which unmaps it when dropped, so an error on
//! any range leaves nothing mapped.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::spec::HugePages;
use crate::topology::{page_size_label, Topology, TopologyError};

/// Errors from building guest memory. Every variant except `Map`, `Bind` and `Prefault` is
/// reported before anything is mapped; those three unmap what was already mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// No range was given, or a range was empty.
    #[error("guest memory layout is empty: give at least one non-empty RAM range")]
    EmptyLayout,
    /// Ranges overlap, are out of order or run past the end of the address space.
    #[error(
        "guest RAM range at {addr:#x} ({size} bytes) overlaps the previous range, comes before \
         it or wraps the address space: give sorted, disjoint ranges"
    )]
    BadLayout {
        /// Guest physical address of the range.
        addr: u64,
        /// Size of the range in bytes.
        size: usize,
    },
    /// A range's start or size is not a multiple of the page size.
    #[error(
        "guest RAM range at {addr:#x} ({size} bytes) is not aligned to the {page} page size: \
         make the memory size and range boundaries multiples of {page}"
    )]
    NotPageAligned {
        /// Guest physical address of the range.
        addr: u64,
        /// Size of the range in bytes.
        size: usize,
        /// Page size label ("4K", "2M", "1G").
        page: String,
    },
    /// The node does not exist on this host.
    #[error("NUMA node {node} does not exist on this host (nodes: {available}): pick one of those, see `edgevisor node`")]
    NoSuchNode {
        /// The node asked for.
        node: u32,
        /// The host's nodes as a list.
        available: String,
    },
    /// The node has no memory to bind to.
    #[error("NUMA node {node} has no memory of its own: bind guest memory to a node with memory, see `edgevisor node`")]
    NodeWithoutMemory {
        /// The node asked for.
        node: u32,
    },
    /// The host kernel has no pool for this page size.
    #[error(
        "this host has no {page} hugepage pool ({path} is missing): use another hugepages= size, \
         or boot the host with hugepagesz={page}"
    )]
    NoPool {
        /// Page size label.
        page: String,
        /// The sysfs directory that is missing.
        path: String,
    },
    /// The pool has fewer free pages than the guest needs.
    #[error(
        "hugepage pool {page} {place} has {free} free pages, the guest needs {needed}: \
         reserve more with echo {suggest} > {path}"
    )]
    PoolExhausted {
        /// Page size label.
        page: String,
        /// "on node N" or "on this host".
        place: String,
        /// Pages free (minus reserved, host-wide).
        free: u64,
        /// Pages the guest needs.
        needed: u64,
        /// The value to write to `path` for the pool to have enough pages.
        suggest: u64,
        /// The `nr_hugepages` file to write.
        path: String,
    },
    /// Reading the host topology failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// memfd_create or ftruncate failed.
    #[error("could not create a {size}-byte memfd for shared guest memory: {source}")]
    Memfd {
        /// Size in bytes.
        size: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The host refused the mapping.
    #[error("could not map {size} bytes of guest memory at guest address {addr:#x}: {source}")]
    Map {
        /// Guest physical address of the range.
        addr: u64,
        /// Size of the range in bytes.
        size: usize,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// mbind failed.
    #[error(
        "could not bind guest memory at guest address {addr:#x} to NUMA node {node}: {source}"
    )]
    Bind {
        /// Guest physical address of the range.
        addr: u64,
        /// The node.
        node: u32,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Populating the pages failed.
    #[error("could not prefault {size} bytes of guest memory at guest address {addr:#x}: {source}; the node or pool may be out of memory")]
    Prefault {
        /// Guest physical address of the range.
        addr: u64,
        /// Size of the range in bytes.
        size: usize,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// How guest RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum GuestMemoryBacking {
    /// Private anonymous memory with normal pages, populated on first touch (MAP_NORESERVE).
    #[default]
    Anonymous,
    /// Private anonymous hugepages (MAP_HUGETLB with MAP_HUGE_2MB or MAP_HUGE_1GB), reserved
    /// from the pool when mapped. `HugeTlb(HugePages::None)` is the same as `Anonymous`.
    HugeTlb(HugePages),
    /// A memfd (with MFD_HUGETLB for hugepages) mapped MAP_SHARED, so another process can map
    /// the same memory through the fd: see [`GuestMemory::memfd`].
    Memfd(HugePages),
}

impl GuestMemoryBacking {
    /// The page size this backing maps with.
    pub fn hugepages(self) -> HugePages {
        match self {
            GuestMemoryBacking::Anonymous => HugePages::None,
            GuestMemoryBacking::HugeTlb(h) | GuestMemoryBacking::Memfd(h) => h,
        }
    }

    /// Maps the given guest-physical RAM ranges `(start, size)`, unbound and not prefaulted.
    ///
    /// Nothing is touched: pages are populated when the guest first writes them. Hugepage
    /// backings check the host's pools (read from `/sys`) first. Use [`GuestMemory::map`] for
    /// node binding, prefault, and access to the memfd.
    pub fn map(self, ranges: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, MemoryError> {
        let options = MemoryOptions {
            backing: self,
            node: None,
            prefault: false,
        };
        let topology = if self.hugepages() == HugePages::None {
            None
        } else {
            Some(Topology::from_host()?)
        };
        check(&options, topology.as_ref(), ranges)?;
        Ok(map_checked(&options, ranges)?.memory)
    }
}

/// Everything about guest RAM except its layout: backing, node, prefault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MemoryOptions {
    /// Page size and sharing.
    pub backing: GuestMemoryBacking,
    /// NUMA node to bind to with mbind(MPOL_BIND).
    pub node: Option<u32>,
    /// Populate every page before returning.
    pub prefault: bool,
}

impl MemoryOptions {
    /// Checks the options and layout against the host without mapping anything: every range
    /// page-aligned, sorted and disjoint; the node exists and has memory; the hugepage pool
    /// (on the node, and host-wide) has a free page for every page of guest RAM.
    pub fn validate(
        &self,
        topology: &Topology,
        ranges: &[(GuestAddress, usize)],
    ) -> Result<(), MemoryError> {
        check(self, Some(topology), ranges)
    }
}

/// Guest RAM, mapped and ready to register with KVM.
#[derive(Debug)]
pub struct GuestMemory {
    memory: GuestMemoryMmap,
    memfd: Option<Arc<File>>,
    options: MemoryOptions,
}

impl GuestMemory {
    /// Validates (see [`MemoryOptions::validate`]) and maps guest RAM.
    ///
    /// `topology` should be read just before (hugepage counts change); pass
    /// `Topology::from_host()`. If anything fails after the first mapping, every mapping made
    /// so far is unmapped before the error is returned.
    pub fn map(
        options: &MemoryOptions,
        topology: &Topology,
        ranges: &[(GuestAddress, usize)],
    ) -> Result<Self, MemoryError> {
        check(options, Some(topology), ranges)?;
        map_checked(options, ranges)
    }

    /// The guest memory, for vm-memory accessors and KVM memory slots.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The guest memory alone. The mappings (and the memfd, held by each region's
    /// `FileOffset`) live as long as the returned value or any clone of it.
    pub fn into_memory(self) -> GuestMemoryMmap {
        self.memory
    }

    /// The memfd backing guest RAM when `shared` was asked for. Each region's offset in it is
    /// `region.file_offset().start()`; a vhost-user frontend passes this fd with those offsets.
    pub fn memfd(&self) -> Option<&Arc<File>> {
        self.memfd.as_ref()
    }

    /// The options the memory was mapped with.
    pub fn options(&self) -> &MemoryOptions {
        &self.options
    }

    /// Page size of the mappings in bytes.
    pub fn page_size(&self) -> u64 {
        self.options.backing.hugepages().page_size_bytes()
    }
}

/// The host's base page size in bytes.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

fn check(
    options: &MemoryOptions,
    topology: Option<&Topology>,
    ranges: &[(GuestAddress, usize)],
) -> Result<(), MemoryError> {
    let hugepages = options.backing.hugepages();
    let page = hugepages.page_size_bytes();
    check_layout(ranges, page)?;
    let needs_topology = options.node.is_some() || hugepages != HugePages::None;
    if !needs_topology {
        return Ok(());
    }
    let host;
    let topology = match topology {
        Some(t) => t,
        None => {
            host = Topology::from_host()?;
            &host
        }
    };
    if let Some(node) = options.node {
        check_node(topology, node)?;
    }
    if let Some(kib) = hugepages.page_size_kib() {
        let total: u64 = ranges.iter().map(|(_, size)| *size as u64).sum();
        check_pool(topology, kib, options.node, total / page)?;
    }
    Ok(())
}

fn check_layout(ranges: &[(GuestAddress, usize)], page: u64) -> Result<(), MemoryError> {
    if ranges.is_empty() || ranges.iter().any(|(_, size)| *size == 0) {
        return Err(MemoryError::EmptyLayout);
    }
    let mut next_free = 0u64;
    for (i, &(addr, size)) in ranges.iter().enumerate() {
        let bad = MemoryError::BadLayout { addr: addr.0, size };
        let end = addr.0.checked_add(size as u64).ok_or(bad)?;
        if i > 0 && addr.0 < next_free {
            return Err(MemoryError::BadLayout { addr: addr.0, size });
        }
        next_free = end;
        if addr.0 % page != 0 || size as u64 % page != 0 {
            return Err(MemoryError::NotPageAligned {
                addr: addr.0,
                size,
                page: page_size_label(page / 1024),
            });
        }
    }
    Ok(())
}

fn check_node(topology: &Topology, node: u32) -> Result<(), MemoryError> {
    let Some(found) = topology.node(node) else {
        let available = topology
            .node_ids()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(MemoryError::NoSuchNode { node, available });
    };
    if found.memory_total_kib == 0 {
        return Err(MemoryError::NodeWithoutMemory { node });
    }
    Ok(())
}

fn check_pool(
    topology: &Topology,
    kib: u64,
    node: Option<u32>,
    needed: u64,
) -> Result<(), MemoryError> {
    let page = page_size_label(kib);
    let host_path = format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB/nr_hugepages");
    let Some(host_pool) = topology.pool(kib) else {
        return Err(MemoryError::NoPool {
            page,
            path: format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"),
        });
    };
    if let (Some(node), true) = (node, topology.numa) {
        let (total, free) = topology
            .node(node)
            .and_then(|n| n.pool(kib))
            .map_or((0, 0), |p| (p.total, p.free));
        if free < needed {
            return Err(MemoryError::PoolExhausted {
                page,
                place: format!("on node {node}"),
                free,
                needed,
                suggest: total + needed - free,
                path: format!(
                    "/sys/devices/system/node/node{node}/hugepages/hugepages-{kib}kB/nr_hugepages"
                ),
            });
        }
    }
    let available = host_pool.available();
    if available < needed {
        return Err(MemoryError::PoolExhausted {
            page,
            place: "on this host".to_string(),
            free: available,
            needed,
            suggest: host_pool.total + needed - available,
            path: host_path,
        });
    }
    Ok(())
}

/// Maps ranges that `check` accepted.
fn map_checked(
    options: &MemoryOptions,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemory, MemoryError> {
    let hugepages = options.backing.hugepages();
    let memfd = match options.backing {
        GuestMemoryBacking::Memfd(_) => {
            let total: u64 = ranges.iter().map(|(_, size)| *size as u64).sum();
            Some(Arc::new(create_memfd(total, hugepages)?))
        }
        _ => None,
    };
    // Dropping `regions` (on any error below) unmaps every mapping made so far.
    let mut regions = Vec::with_capacity(ranges.len());
    let mut file_offset = 0u64;
    for &(addr, size) in ranges {
        let offset = memfd
            .as_ref()
            .map(|file| FileOffset::from_arc(Arc::clone(file), file_offset));
        file_offset += size as u64;
        let region = map_one(options, addr, size, offset)?;
        let region = GuestRegionMmap::new(region, addr)
            .ok_or(MemoryError::BadLayout { addr: addr.0, size })?;
        regions.push(region);
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|_| MemoryError::BadLayout {
        addr: ranges[0].0 .0,
        size: ranges[0].1,
    })?;
    Ok(GuestMemory {
        memory,
        memfd,
        options: *options,
    })
}

fn map_flags(backing: GuestMemoryBacking) -> i32 {
    let huge = |h: HugePages| match h {
        HugePages::None => 0,
        HugePages::Size2M => libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
        HugePages::Size1G => libc::MAP_HUGETLB | libc::MAP_HUGE_1GB,
    };
    match backing {
        GuestMemoryBacking::Anonymous | GuestMemoryBacking::HugeTlb(HugePages::None) => {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        }
        // No MAP_NORESERVE: the pool's pages are reserved at mmap time, so a short pool fails
        // here with ENOMEM instead of killing the VMM with SIGBUS when the guest touches memory.
        GuestMemoryBacking::HugeTlb(h) => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | huge(h),
        GuestMemoryBacking::Memfd(HugePages::None) => libc::MAP_SHARED | libc::MAP_NORESERVE,
        // The memfd already carries the hugepage size; MAP_HUGETLB is for anonymous mappings.
        GuestMemoryBacking::Memfd(_) => libc::MAP_SHARED,
    }
}

fn map_one(
    options: &MemoryOptions,
    addr: GuestAddress,
    size: usize,
    file_offset: Option<FileOffset>,
) -> Result<MmapRegion, MemoryError> {
    let mut builder = MmapRegionBuilder::new(size)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(map_flags(options.backing))
        .with_hugetlbfs(options.backing.hugepages() != HugePages::None);
    if let Some(offset) = file_offset {
        builder = builder.with_file_offset(offset);
    }
    let region = builder.build().map_err(|source| MemoryError::Map {
        addr: addr.0,
        size,
        source,
    })?;
    if let Some(node) = options.node {
        bind_to_node(region.as_ptr(), size, node).map_err(|source| MemoryError::Bind {
            addr: addr.0,
            node,
            source,
        })?;
    }
    if options.prefault {
        let page = options.backing.hugepages().page_size_bytes();
        prefault(region.as_ptr(), size, page).map_err(|source| MemoryError::Prefault {
            addr: addr.0,
            size,
            source,
        })?;
    }
    Ok(region)
}

fn create_memfd(size: u64, hugepages: HugePages) -> Result<File, MemoryError> {
    let err = |source| MemoryError::Memfd { size, source };
    let mut flags = libc::MFD_CLOEXEC;
    match hugepages {
        HugePages::None => {}
        HugePages::Size2M => flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
        HugePages::Size1G => flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_1GB,
    }
    // SAFETY: the name is a valid NUL-terminated string and the flags are plain bits; the
    // call creates a new fd and touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"edgevisor-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid, and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size).map_err(err)?;
    Ok(file)
}

/// Sets an MPOL_BIND policy to `node` on `[addr, addr + len)` with the mbind system call.
fn bind_to_node(addr: *mut u8, len: usize, node: u32) -> io::Result<()> {
    const BITS: usize = libc::c_ulong::BITS as usize;
    let node = node as usize;
    // The kernel reads `maxnode - 1` bits (a historical off-by-one), so leave a spare word:
    // the node's bit then always lies inside what it reads, and the rest are zero.
    let words = node / BITS + 2;
    let mut mask: Vec<libc::c_ulong> = vec![0; words];
    mask[node / BITS] |= 1 << (node % BITS);
    let maxnode = (words * BITS) as libc::c_ulong;
    // SAFETY: `addr`/`len` describe a mapping this process owns (mbind only changes its
    // policy); `mask` is a live buffer of `words` longs, which covers the `maxnode - 1` bits
    // the kernel reads. All arguments are passed as the unsigned longs the kernel expects.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            libc::MPOL_BIND as libc::c_ulong,
            mask.as_ptr(),
            maxnode,
            0 as libc::c_ulong,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Populates every page of `[addr, addr + len)` for writing: MADV_POPULATE_WRITE (Linux 5.14+),
/// else a write to each page.
fn prefault(addr: *mut u8, len: usize, page: u64) -> io::Result<()> {
    // SAFETY: `addr`/`len` describe a read-write mapping this process owns; the advice only
    // faults pages in, as a write would.
    let ret = unsafe { libc::madvise(addr.cast(), len, libc::MADV_POPULATE_WRITE) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    // Older kernel: touch each page. The mapping is fresh, so its bytes are zero and writing a
    // zero changes nothing but residency.
    let page = usize::try_from(page).unwrap_or(4096);
    for offset in (0..len).step_by(page) {
        // SAFETY: `offset < len`, so the byte lies inside the read-write mapping; nothing else
        // references this fresh memory yet.
        unsafe { addr.add(offset).write_volatile(0) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

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

    #[test]
    fn layout_errors() {
        let overlapping = [(GuestAddress(0), 2 << 20), (GuestAddress(1 << 20), 1 << 20)];
        assert!(matches!(
            GuestMemoryBacking::Anonymous.map(&overlapping),
            Err(MemoryError::BadLayout { addr, .. }) if addr == 1 << 20
        ));
        let unsorted = [(GuestAddress(4 << 20), 1 << 20), (GuestAddress(0), 1 << 20)];
        assert!(matches!(
            GuestMemoryBacking::Anonymous.map(&unsorted),
            Err(MemoryError::BadLayout { addr: 0, .. })
        ));
        let wrapping = [(GuestAddress(u64::MAX - 4095), 8192)];
        assert!(matches!(
            GuestMemoryBacking::Anonymous.map(&wrapping),
            Err(MemoryError::BadLayout { .. })
        ));
        let err = check_layout(&[(GuestAddress(0), 3 << 20)], 2 << 20).unwrap_err();
        assert!(matches!(err, MemoryError::NotPageAligned { size, .. } if size == 3 << 20));
        assert!(err.to_string().contains("2M page size"), "{err}");
        let err = check_layout(&[(GuestAddress(1 << 20), 2 << 20)], 2 << 20).unwrap_err();
        assert!(matches!(err, MemoryError::NotPageAligned { addr, .. } if addr == 1 << 20));
        assert!(GuestMemoryBacking::Anonymous
            .map(&[(GuestAddress(0), 4097)])
            .is_err());
    }

    #[test]
    fn memfd_backing_shares_one_file() {
        let options = MemoryOptions {
            backing: GuestMemoryBacking::Memfd(HugePages::None),
            node: None,
            prefault: false,
        };
        let ranges = [(GuestAddress(0), 1 << 20), (GuestAddress(1 << 30), 1 << 20)];
        let mem = map_checked(&options, &ranges).unwrap();
        let file = mem.memfd().expect("shared memory has a memfd");
        assert_eq!(file.metadata().unwrap().len(), 2 << 20);
        let offsets: Vec<u64> = mem
            .memory()
            .iter()
            .map(|r| r.file_offset().expect("region is file-backed").start())
            .collect();
        assert_eq!(offsets, vec![0, 1 << 20]);
        // A write through the mapping is visible through the fd: it really is shared.
        mem.memory()
            .write_obj(0x1234_5678u32, GuestAddress((1 << 30) + 16))
            .unwrap();
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&**file, &mut buf, (1 << 20) + 16).unwrap();
        assert_eq!(u32::from_ne_bytes(buf), 0x1234_5678);
    }

    #[test]
    fn map_flags_per_backing() {
        let anon = map_flags(GuestMemoryBacking::Anonymous);
        assert_ne!(anon & libc::MAP_NORESERVE, 0);
        assert_eq!(anon & libc::MAP_HUGETLB, 0);
        let huge = map_flags(GuestMemoryBacking::HugeTlb(HugePages::Size2M));
        assert_eq!(huge & libc::MAP_HUGE_2MB, libc::MAP_HUGE_2MB);
        assert_ne!(huge & libc::MAP_HUGETLB, 0);
        assert_eq!(huge & libc::MAP_NORESERVE, 0);
        let huge1g = map_flags(GuestMemoryBacking::HugeTlb(HugePages::Size1G));
        assert_eq!(huge1g & libc::MAP_HUGE_1GB, libc::MAP_HUGE_1GB);
        let shared = map_flags(GuestMemoryBacking::Memfd(HugePages::Size2M));
        assert_ne!(shared & libc::MAP_SHARED, 0);
        assert_eq!(shared & (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS), 0);
    }

    #[test]
    fn region_reports_hugetlbfs() {
        let mem = GuestMemoryBacking::Anonymous
            .map(&[(GuestAddress(0), 1 << 20)])
            .unwrap();
        assert_eq!(mem.iter().next().unwrap().is_hugetlbfs(), Some(false));
    }
}
