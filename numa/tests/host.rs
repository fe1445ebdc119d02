//! Checks on this machine, from outside the library: /proc/self/smaps (KernelPageSize, Rss,
//! *_Hugetlb), /proc/self/numa_maps (policy, node counts) and
//! /proc/self/task/<tid>/status (Cpus_allowed_list) must show what was asked for.
//!
//! Hugepage tests reserve 2 MiB pages themselves by raising /proc/sys/vm/nr_hugepages (root
//! only) and give them back in a guard's Drop, even when an assertion fails. They hold a
//! process-wide lock so they never change the pool at the same time.

use std::collections::HashMap;
use std::fs;
use std::sync::{Mutex, MutexGuard};

use numa::{
    current_thread_affinity, pin_current_thread, place_vcpus, CpuSet, CpuSpec, GuestMemory,
    MemoryError, MemorySpec, PinError, PlacementError, Topology,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const OVERCOMMIT_HUGEPAGES: &str = "/proc/sys/vm/nr_overcommit_hugepages";
const FREE_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
const MIB: usize = 1 << 20;

static POOL_LOCK: Mutex<()> = Mutex::new(());

fn pool_lock() -> MutexGuard<'static, ()> {
    // A test that failed while holding the lock poisons it; the pool is still restored by its
    // guard, so later tests may go on.
    POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn read_free() -> u64 {
    fs::read_to_string(FREE_HUGEPAGES)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn read_nr() -> u64 {
    fs::read_to_string(NR_HUGEPAGES)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Raises the default (2 MiB) pool by `extra` pages; puts the original size back on drop.
struct HugePageReservation {
    original: u64,
    set_to: u64,
    overcommit: String,
}

impl HugePageReservation {
    /// Resizes the default 2 MiB pool so that exactly `free` pages are free, whatever the
    /// machine had reserved before (pages in use by others stay theirs).
    fn reserve(free: u64) -> Self {
        let original = read_nr();
        // Surplus pages would let a mapping succeed past the pool: none while we test.
        let overcommit = fs::read_to_string(OVERCOMMIT_HUGEPAGES).unwrap();
        fs::write(OVERCOMMIT_HUGEPAGES, "0\n").unwrap();
        let mut guard = HugePageReservation {
            original,
            set_to: original,
            overcommit,
        };
        guard.set_free(free);
        guard
    }

    /// Sets the pool to the pages in use plus `free` and checks the kernel found them.
    fn set_free(&mut self, free: u64) {
        let in_use = read_nr().saturating_sub(read_free());
        let want = in_use + free;
        fs::write(NR_HUGEPAGES, format!("{want}\n")).unwrap();
        self.set_to = want;
        let got = read_nr();
        assert_eq!(
            got, want,
            "the kernel could only find {got} of {want} 2 MiB pages (memory fragmented?)"
        );
        assert_eq!(read_free(), free, "another process took pages meanwhile");
    }
}

impl Drop for HugePageReservation {
    fn drop(&mut self) {
        // If someone else resized the pool meanwhile, take back only what we added.
        let now = fs::read_to_string(NR_HUGEPAGES)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(self.set_to);
        let restore = if now == self.set_to {
            self.original
        } else {
            now.saturating_sub(self.set_to - self.original)
        };
        let _ = fs::write(NR_HUGEPAGES, format!("{restore}\n"));
        let _ = fs::write(OVERCOMMIT_HUGEPAGES, &self.overcommit);
    }
}

/// The smaps fields ("Rss", "KernelPageSize", ...; values in kB) of the mapping starting at
/// `addr`, or None when no mapping starts there.
fn smaps_of(addr: usize) -> Option<HashMap<String, u64>> {
    let text = fs::read_to_string("/proc/self/smaps").unwrap();
    let mut fields = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _end)) = first.split_once('-') {
            if fields.is_some() {
                break;
            }
            if usize::from_str_radix(start, 16).ok() == Some(addr) {
                fields = Some(HashMap::new());
            }
            continue;
        }
        if let Some(map) = fields.as_mut() {
            if let Some((key, value)) = line.split_once(':') {
                if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    map.insert(key.to_string(), v);
                }
            }
        }
    }
    fields
}

/// How many mappings of this process use 2 MiB pages.
fn hugetlb_mappings() -> usize {
    fs::read_to_string("/proc/self/smaps")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("KernelPageSize:") && l.contains(" 2048 kB"))
        .count()
}

/// The /proc/self/numa_maps line of the mapping starting at `addr`, if the kernel has the
/// file (CONFIG_NUMA) and the mapping exists.
fn numa_maps_of(addr: usize) -> Option<String> {
    let text = fs::read_to_string("/proc/self/numa_maps").ok()?;
    let key = format!("{addr:x}");
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(key.as_str()))
        .map(str::to_string)
}

fn has_numa_maps() -> bool {
    std::path::Path::new("/proc/self/numa_maps").exists()
}

fn first_region_addr(mem: &GuestMemory) -> usize {
    mem.memory().iter().next().unwrap().as_ptr() as usize
}

fn map_spec(text: &str, ranges: &[(GuestAddress, usize)]) -> Result<GuestMemory, MemoryError> {
    let spec = MemorySpec::parse(text).unwrap();
    GuestMemory::map(&spec.options(), &Topology::from_host().unwrap(), ranges)
}

#[test]
fn host_topology_is_read() {
    let t = Topology::from_host().unwrap();
    let online =
        CpuSet::parse(&fs::read_to_string("/sys/devices/system/cpu/online").unwrap()).unwrap();
    assert_eq!(t.online_cpus, online);
    assert!(!t.nodes.is_empty());
    let node_dir = std::path::Path::new("/sys/devices/system/node");
    assert_eq!(t.numa, node_dir.is_dir());
    if t.numa {
        let dirs = fs::read_dir(node_dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with("node") && name[4..].parse::<u32>().is_ok()
            })
            .count();
        assert_eq!(t.nodes.len(), dirs);
    }
    let all_cpus = t.nodes.iter().fold(CpuSet::new(), |a, n| a.union(&n.cpus));
    assert!(online.is_subset(&all_cpus), "every online CPU is on a node");
    let node0 = t.node(0).expect("node 0");
    assert!(node0.memory_total_kib > 0 && node0.memory_free_kib <= node0.memory_total_kib);
    assert_eq!(node0.distance_to(0), Some(10));
    assert!(t.pool(2048).is_some(), "x86_64 hosts have a 2M pool");
    println!("{t}");
}

#[test]
fn hugepage_memory_is_2m_bound_to_node_0_and_prefaulted() {
    if !is_root() {
        eprintln!("skipped: reserving hugepages needs root");
        return;
    }
    let _lock = pool_lock();
    let _pages = HugePageReservation::reserve(4);
    let before = hugetlb_mappings();
    let mem = map_spec(
        "8M,hugepages=2M,node=0,prefault=on",
        &[(GuestAddress(0), 8 * MIB)],
    )
    .unwrap();
    let addr = first_region_addr(&mem);
    let smaps = smaps_of(addr).expect("the guest memory mapping is in smaps");
    assert_eq!(smaps["KernelPageSize"], 2048);
    // Hugetlb pages are not counted in Rss; smaps reports them as *_Hugetlb.
    assert_eq!(smaps["Private_Hugetlb"] + smaps["Shared_Hugetlb"], 8 * 1024);
    assert_eq!(smaps["Size"], 8 * 1024);
    match numa_maps_of(addr) {
        Some(line) => {
            assert!(line.contains(" bind:0 "), "{line}");
            assert!(line.contains(" huge "), "{line}");
            assert!(line.contains(" N0=4 "), "all 4 pages on node 0: {line}");
        }
        None => assert!(!has_numa_maps(), "numa_maps exists but lacks the mapping"),
    }
    mem.memory()
        .write_obj(0xfeed_f00du32, GuestAddress(6 * MIB as u64))
        .unwrap();
    assert_eq!(
        mem.memory()
            .read_obj::<u32>(GuestAddress(6 * MIB as u64))
            .unwrap(),
        0xfeed_f00d
    );
    drop(mem);
    assert!(smaps_of(addr).is_none(), "dropping the memory unmaps it");
    assert_eq!(hugetlb_mappings(), before);
}

#[test]
fn without_prefault_hugepages_stay_unfaulted() {
    if !is_root() {
        eprintln!("skipped: reserving hugepages needs root");
        return;
    }
    let _lock = pool_lock();
    let _pages = HugePageReservation::reserve(2);
    let mem = map_spec("4M,hugepages=2M,node=0", &[(GuestAddress(0), 4 * MIB)]).unwrap();
    let smaps = smaps_of(first_region_addr(&mem)).unwrap();
    assert_eq!(smaps["KernelPageSize"], 2048);
    assert_eq!(smaps["Private_Hugetlb"] + smaps["Shared_Hugetlb"], 0);
}

#[test]
fn shared_hugepage_memfd_is_bound_and_prefaulted() {
    if !is_root() {
        eprintln!("skipped: reserving hugepages needs root");
        return;
    }
    let _lock = pool_lock();
    let _pages = HugePageReservation::reserve(2);
    let mem = map_spec(
        "4M,hugepages=2M,node=0,prefault=on,shared=on",
        &[(GuestAddress(0), 4 * MIB)],
    )
    .unwrap();
    let addr = first_region_addr(&mem);
    let smaps = smaps_of(addr).unwrap();
    assert_eq!(smaps["KernelPageSize"], 2048);
    assert_eq!(smaps["Private_Hugetlb"] + smaps["Shared_Hugetlb"], 4 * 1024);
    if let Some(line) = numa_maps_of(addr) {
        assert!(line.contains(" bind:0 "), "{line}");
        assert!(line.contains("memfd:edgevisor-guest-ram"), "{line}");
    }
    // The memfd really backs the guest memory: a write through the mapping shows in the fd.
    let file = mem.memfd().expect("shared=on exposes the memfd");
    assert_eq!(file.metadata().unwrap().len(), 4 * MIB as u64);
    mem.memory()
        .write_obj(0xabcd_0123u32, GuestAddress(3 * MIB as u64))
        .unwrap();
    let mut buf = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&**file, &mut buf, 3 * MIB as u64).unwrap();
    assert_eq!(u32::from_ne_bytes(buf), 0xabcd_0123);
}

#[test]
fn normal_pages_bound_and_prefaulted() {
    let ranges = [(GuestAddress(0), 16 * MIB)];
    let lazy = map_spec("16M,node=0", &ranges).unwrap();
    let smaps = smaps_of(first_region_addr(&lazy)).unwrap();
    assert_eq!(smaps["KernelPageSize"], 4);
    assert_eq!(smaps["Rss"], 0, "nothing touched without prefault");
    if let Some(line) = numa_maps_of(first_region_addr(&lazy)) {
        assert!(line.contains(" bind:0"), "{line}");
    }
    let eager = map_spec("16M,node=0,prefault=on", &ranges).unwrap();
    let smaps = smaps_of(first_region_addr(&eager)).unwrap();
    assert_eq!(smaps["Rss"], 16 * 1024, "prefault made every page resident");
    match numa_maps_of(first_region_addr(&eager)) {
        Some(line) => {
            assert!(line.contains(" bind:0"), "{line}");
            assert!(line.contains(" N0="), "{line}");
        }
        None => assert!(!has_numa_maps()),
    }
}

#[test]
fn exhausted_pool_is_refused_before_anything_is_mapped() {
    if !is_root() {
        eprintln!("skipped: reserving hugepages needs root");
        return;
    }
    let _lock = pool_lock();
    let _pages = HugePageReservation::reserve(2);
    let topology = Topology::from_host().unwrap();
    let free = topology.node(0).unwrap().pool(2048).unwrap().free;
    assert!(free >= 2);
    let needed = free + 1;
    let before = hugetlb_mappings();
    let text = format!("{}M,hugepages=2M,node=0,prefault=on", needed * 2);
    let size = needed as usize * 2 * MIB;
    let err = map_spec(&text, &[(GuestAddress(0), size)]).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, MemoryError::PoolExhausted { free: f, needed: n, .. } if f == free && n == needed),
        "{message}"
    );
    assert!(
        message.starts_with(&format!(
            "hugepage pool 2M on node 0 has {free} free pages, the guest needs {needed}: reserve more with echo"
        )),
        "{message}"
    );
    assert_eq!(hugetlb_mappings(), before, "nothing was mapped");

    // 1 GiB pages: this host's pool is empty unless someone reserved pages.
    let free_1g = topology.pool(1 << 20).map_or(0, |p| p.available());
    let text = format!("{}G,hugepages=1G", free_1g + 1);
    let spec = MemorySpec::parse(&text).unwrap();
    let err = GuestMemory::map(
        &spec.options(),
        &topology,
        &[(GuestAddress(0), spec.size_bytes() as usize)],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::PoolExhausted { .. } | MemoryError::NoPool { .. }
        ),
        "{err}"
    );
}

#[test]
fn failure_midway_unmaps_what_was_mapped() {
    if !is_root() {
        eprintln!("skipped: reserving hugepages needs root");
        return;
    }
    let _lock = pool_lock();
    let mut pages = HugePageReservation::reserve(4);
    // The topology is read while 4 pages are free, then the pool shrinks to 3 behind its
    // back: validation passes, the first range (2 pages) maps, the second (2 pages) cannot.
    let stale = Topology::from_host().unwrap();
    pages.set_free(3);
    let before = hugetlb_mappings();
    let spec = MemorySpec::parse("8M,hugepages=2M").unwrap();
    let ranges = [(GuestAddress(0), 4 * MIB), (GuestAddress(1 << 30), 4 * MIB)];
    let err = GuestMemory::map(&spec.options(), &stale, &ranges).unwrap_err();
    assert!(
        matches!(err, MemoryError::Map { addr, .. } if addr == 1 << 30),
        "the second range fails to map: {err}"
    );
    assert_eq!(hugetlb_mappings(), before, "the first range was unmapped");
    // Its reservation went back to the pool: the full 3 pages map now.
    let topology = Topology::from_host().unwrap();
    let mem = GuestMemory::map(
        &MemorySpec::parse("6M,hugepages=2M,prefault=on")
            .unwrap()
            .options(),
        &topology,
        &[(GuestAddress(0), 6 * MIB)],
    )
    .unwrap();
    assert_eq!(
        smaps_of(first_region_addr(&mem)).unwrap()["KernelPageSize"],
        2048
    );
}

fn thread_cpus_allowed() -> String {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    let status = fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn pinned_threads_show_in_proc_status() {
    let topology = Topology::from_host().unwrap();
    let online: Vec<u32> = topology.online_cpus.iter().collect();
    // One vCPU per online CPU, pinned in reverse order.
    let pin: Vec<u32> = online.iter().rev().copied().collect();
    let spec = CpuSpec {
        count: pin.len() as u32,
        pin: Some(pin.clone()),
    };
    let placement = place_vcpus(&topology, &spec, None).unwrap();
    let seen: Vec<(String, CpuSet)> = std::thread::scope(|s| {
        let handles: Vec<_> = placement
            .iter()
            .map(|set| {
                s.spawn(move || {
                    pin_current_thread(set).unwrap();
                    (thread_cpus_allowed(), current_thread_affinity().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, affinity)) in seen.iter().enumerate() {
        assert_eq!(status, &pin[i].to_string(), "vCPU {i}");
        assert_eq!(affinity.iter().collect::<Vec<_>>(), vec![pin[i]]);
    }
    // Default placement on node 0 allows the whole node.
    let default = place_vcpus(
        &topology,
        &CpuSpec {
            count: 1,
            pin: None,
        },
        Some(0),
    )
    .unwrap();
    let status = std::thread::spawn(move || {
        pin_current_thread(&default[0]).unwrap();
        thread_cpus_allowed()
    })
    .join()
    .unwrap();
    let node0 = topology
        .node(0)
        .unwrap()
        .cpus
        .intersection(&topology.online_cpus);
    assert_eq!(status, node0.to_string());
}

#[test]
fn bad_cpus_are_refused_and_leave_affinity_alone() {
    let topology = Topology::from_host().unwrap();
    let offline = topology.online_cpus.last().unwrap() + 1;
    let spec = CpuSpec {
        count: 1,
        pin: Some(vec![offline]),
    };
    assert!(matches!(
        place_vcpus(&topology, &spec, None),
        Err(PlacementError::CpuNotOnline { cpu, .. }) if cpu == offline
    ));
    std::thread::spawn(move || {
        let before = thread_cpus_allowed();
        let err = pin_current_thread(&std::iter::once(offline).collect()).unwrap_err();
        assert!(matches!(err, PinError::Affinity { .. }), "{err}");
        assert_eq!(thread_cpus_allowed(), before);
    })
    .join()
    .unwrap();
}
