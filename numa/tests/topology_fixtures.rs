//! The topology parser, memory validation and vCPU placement against recorded sysfs trees of
//! multi-node machines (tests/data/*), laid out like a real kernel's /sys and /proc.

use std::path::PathBuf;

use numa::{
    default_cpus, place_vcpus, CpuSet, CpuSpec, GuestMemory, HugePagePool, HugePages, MemoryError,
    MemorySpec, Node, NodeDistance, PlacementError, SpecError, Topology, TopologyError,
};
use vm_memory::GuestAddress;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn load(name: &str) -> Topology {
    Topology::from_root(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn cpus(list: &str) -> CpuSet {
    CpuSet::parse(list).unwrap()
}

fn dist(row: &[(u32, u32)]) -> Vec<NodeDistance> {
    row.iter()
        .map(|&(node, distance)| NodeDistance { node, distance })
        .collect()
}

fn pool(page_size_kib: u64, total: u64, free: u64) -> HugePagePool {
    HugePagePool {
        page_size_kib,
        total,
        free,
        reserved: None,
    }
}

fn host_pool(page_size_kib: u64, total: u64, free: u64, reserved: u64) -> HugePagePool {
    HugePagePool {
        reserved: Some(reserved),
        ..pool(page_size_kib, total, free)
    }
}

const G1: u64 = 1 << 20;

#[test]
fn two_node_machine() {
    let expected = Topology {
        numa: true,
        online_cpus: cpus("0-15"),
        nodes: vec![
            Node {
                id: 0,
                cpus: cpus("0-3,8-11"),
                memory_total_kib: 32_768_000,
                memory_free_kib: 20_480_000,
                distances: dist(&[(0, 10), (1, 21)]),
                hugepages: vec![pool(2048, 512, 500), pool(G1, 0, 0)],
            },
            Node {
                id: 1,
                cpus: cpus("4-7,12-15"),
                memory_total_kib: 33_030_144,
                memory_free_kib: 30_000_000,
                distances: dist(&[(0, 21), (1, 10)]),
                hugepages: vec![pool(2048, 512, 512), pool(G1, 0, 0)],
            },
        ],
        hugepages: vec![host_pool(2048, 1024, 1012, 4), host_pool(G1, 0, 0, 0)],
    };
    let topology = load("two_node");
    assert_eq!(topology, expected);
    assert_eq!(topology.node(1).unwrap().distance_to(0), Some(21));
    assert_eq!(topology.pool(2048).unwrap().available(), 1008);
    assert!(topology.node(2).is_none());
}

#[test]
fn four_node_machine_with_uneven_cpus_and_memoryless_node() {
    let expected = Topology {
        numa: true,
        online_cpus: cpus("0-13"),
        nodes: vec![
            Node {
                id: 0,
                cpus: cpus("0-3,8-11"),
                memory_total_kib: 16_384_000,
                memory_free_kib: 8_000_000,
                distances: dist(&[(0, 10), (1, 16), (2, 16), (3, 22)]),
                hugepages: vec![pool(2048, 64, 60), pool(G1, 0, 0)],
            },
            Node {
                id: 1,
                cpus: cpus("4-5,12-13"),
                memory_total_kib: 8_192_000,
                memory_free_kib: 7_000_000,
                distances: dist(&[(0, 16), (1, 10), (2, 22), (3, 16)]),
                hugepages: vec![pool(2048, 16, 2), pool(G1, 0, 0)],
            },
            // CPUs but no memory: the kernel gives it no hugepages directory.
            Node {
                id: 2,
                cpus: cpus("6-7"),
                memory_total_kib: 0,
                memory_free_kib: 0,
                distances: dist(&[(0, 16), (1, 22), (2, 10), (3, 16)]),
                hugepages: vec![],
            },
            // Memory but no CPUs (an expander): an empty cpulist.
            Node {
                id: 3,
                cpus: CpuSet::new(),
                memory_total_kib: 65_536_000,
                memory_free_kib: 65_000_000,
                distances: dist(&[(0, 30), (1, 20), (2, 20), (3, 10)]),
                hugepages: vec![pool(2048, 0, 0), pool(G1, 0, 0)],
            },
        ],
        hugepages: vec![host_pool(2048, 80, 62, 0), host_pool(G1, 0, 0, 0)],
    };
    assert_eq!(load("four_node"), expected);
}

#[test]
fn machine_with_1g_pools() {
    let expected = Topology {
        numa: true,
        online_cpus: cpus("0-15"),
        nodes: vec![
            Node {
                id: 0,
                cpus: cpus("0-7"),
                memory_total_kib: 67_108_864,
                memory_free_kib: 50_331_648,
                distances: dist(&[(0, 10), (1, 20)]),
                hugepages: vec![pool(2048, 0, 0), pool(G1, 8, 6)],
            },
            Node {
                id: 1,
                cpus: cpus("8-15"),
                memory_total_kib: 67_108_864,
                memory_free_kib: 60_000_000,
                distances: dist(&[(0, 20), (1, 10)]),
                hugepages: vec![pool(2048, 0, 0), pool(G1, 4, 4)],
            },
        ],
        hugepages: vec![host_pool(2048, 0, 0, 0), host_pool(G1, 12, 10, 1)],
    };
    assert_eq!(load("one_gig_pools"), expected);
}

#[test]
fn kernel_without_numa_is_one_node() {
    let expected = Topology {
        numa: false,
        online_cpus: cpus("0-3"),
        nodes: vec![Node {
            id: 0,
            cpus: cpus("0-3"),
            memory_total_kib: 8_052_604,
            memory_free_kib: 5_123_456,
            distances: dist(&[(0, 10)]),
            hugepages: vec![pool(2048, 16, 10), pool(G1, 0, 0)],
        }],
        hugepages: vec![host_pool(2048, 16, 10, 2), host_pool(G1, 0, 0, 0)],
    };
    assert_eq!(load("no_numa"), expected);
}

#[test]
fn display_for_edgevisor_node() {
    let text = load("four_node").to_string();
    let expected = "\
NUMA nodes: 4 (from /sys/devices/system/node)
online CPUs: 0-13
node 0: CPUs 0-3,8-11; memory 16000 MiB, 7812 MiB free
  hugepages: 2M 64 total, 60 free; 1G 0 total, 0 free
node 1: CPUs 4-5,12-13; memory 8000 MiB, 6835 MiB free
  hugepages: 2M 16 total, 2 free; 1G 0 total, 0 free
node 2: CPUs 6-7; memory 0 MiB, 0 MiB free
  hugepages: none
node 3: CPUs none; memory 64000 MiB, 63476 MiB free
  hugepages: 2M 0 total, 0 free; 1G 0 total, 0 free
node distances:
          0    1    2    3
    0:   10   16   16   22
    1:   16   10   22   16
    2:   16   22   10   16
    3:   30   20   20   10
host hugepage pools: 2M 80 total, 62 free, 0 reserved; 1G 0 total, 0 free, 0 reserved
";
    assert_eq!(text, expected);
    let fallback = load("no_numa").to_string();
    assert!(
        fallback.starts_with("NUMA nodes: 1 (no NUMA information in sysfs"),
        "{fallback}"
    );
}

#[test]
fn serializes_for_the_agent() {
    let json = serde_json::to_value(load("two_node")).unwrap();
    assert_eq!(json["numa"], true);
    assert_eq!(json["online_cpus"].as_array().unwrap().len(), 16);
    assert_eq!(json["nodes"][1]["cpus"][0], 4);
    assert_eq!(json["nodes"][1]["distances"][0]["distance"], 21);
    assert_eq!(json["nodes"][0]["hugepages"][0]["page_size_kib"], 2048);
    assert_eq!(json["nodes"][0]["hugepages"][0]["free"], 500);
    // Per-node pools have no reserved count; host-wide pools do.
    assert!(json["nodes"][0]["hugepages"][0].get("reserved").is_none());
    assert_eq!(json["hugepages"][0]["reserved"], 4);
}

#[test]
fn broken_trees_give_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("numa-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cpu = dir.join("sys/devices/system/cpu");
    std::fs::create_dir_all(&cpu).unwrap();
    // No cpu/online at all.
    let err = Topology::from_root(&dir).unwrap_err();
    assert!(matches!(err, TopologyError::Read { ref path, .. } if path.ends_with("cpu/online")));
    std::fs::write(cpu.join("online"), "0-x\n").unwrap();
    let err = Topology::from_root(&dir).unwrap_err();
    assert!(matches!(err, TopologyError::CpuList { .. }), "{err}");
    assert!(err.to_string().contains("cpu/online"), "{err}");
    // A node whose distance row does not match the node count.
    std::fs::write(cpu.join("online"), "0-1\n").unwrap();
    let node0 = dir.join("sys/devices/system/node/node0");
    std::fs::create_dir_all(&node0).unwrap();
    std::fs::write(node0.join("cpulist"), "0-1\n").unwrap();
    std::fs::write(
        node0.join("meminfo"),
        "Node 0 MemTotal: 1024 kB\nNode 0 MemFree: 512 kB\n",
    )
    .unwrap();
    std::fs::write(node0.join("distance"), "10 20\n").unwrap();
    let err = Topology::from_root(&dir).unwrap_err();
    assert!(matches!(err, TopologyError::Format { ref path, .. } if path.ends_with("distance")));
    std::fs::write(node0.join("distance"), "10\n").unwrap();
    std::fs::write(node0.join("meminfo"), "Node 0 MemFree: 512 kB\n").unwrap();
    let err = Topology::from_root(&dir).unwrap_err();
    assert!(err.to_string().contains("MemTotal"), "{err}");
    std::fs::write(
        node0.join("meminfo"),
        "Node 0 MemTotal: 1024 kB\nNode 0 MemFree: 512 kB\n",
    )
    .unwrap();
    let ok = Topology::from_root(&dir).unwrap();
    assert_eq!(ok.nodes.len(), 1);
    assert_eq!(ok.nodes[0].memory_total_kib, 1024);
    assert!(ok.hugepages.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- placement ----

fn spec(text: &str) -> CpuSpec {
    CpuSpec::parse(text).unwrap()
}

#[test]
fn default_placement_follows_the_memory_node() {
    let t = load("two_node");
    let placed = place_vcpus(&t, &spec("3"), Some(1)).unwrap();
    assert_eq!(placed, vec![cpus("4-7,12-15"); 3]);
    let placed = place_vcpus(&t, &spec("2"), None).unwrap();
    assert_eq!(placed, vec![cpus("0-15"); 2]);
}

#[test]
fn memory_only_node_uses_nearest_nodes_with_cpus() {
    let t = load("four_node");
    // Node 3 has no CPUs; nodes 1 and 2 are both at distance 20 from it.
    assert_eq!(default_cpus(&t, Some(3)).unwrap(), cpus("4-7,12-13"));
    // Node 2 has CPUs (but no memory): its own CPUs.
    assert_eq!(default_cpus(&t, Some(2)).unwrap(), cpus("6-7"));
    assert_eq!(default_cpus(&t, Some(1)).unwrap(), cpus("4-5,12-13"));
}

#[test]
fn explicit_pins_one_cpu_per_vcpu_in_order() {
    let t = load("four_node");
    let placed = place_vcpus(&t, &spec("3,pin=13,4,0"), Some(0)).unwrap();
    assert_eq!(placed, vec![cpus("13"), cpus("4"), cpus("0")]);
}

#[test]
fn placement_errors() {
    let t = load("four_node");
    let err = place_vcpus(&t, &spec("2,pin=13-14"), None).unwrap_err();
    assert_eq!(
        err,
        PlacementError::CpuNotOnline {
            vcpu: 1,
            cpu: 14,
            online: "0-13".into()
        }
    );
    assert!(err.to_string().contains("host CPU 14"), "{err}");
    let mismatched = CpuSpec {
        count: 3,
        pin: Some(vec![0, 1]),
    };
    assert_eq!(
        place_vcpus(&t, &mismatched, None).unwrap_err(),
        PlacementError::Spec(SpecError::PinCountMismatch {
            count: 3,
            pinned: 2,
            example_last: 6
        })
    );
    let duplicated = CpuSpec {
        count: 2,
        pin: Some(vec![1, 1]),
    };
    assert_eq!(
        place_vcpus(&t, &duplicated, None).unwrap_err(),
        PlacementError::Spec(SpecError::PinDuplicate(1))
    );
    let err = place_vcpus(&t, &spec("1"), Some(7)).unwrap_err();
    assert!(
        matches!(err, PlacementError::NoSuchNode { node: 7, ref available } if available == "0, 1, 2, 3")
    );
    let zero = CpuSpec {
        count: 0,
        pin: None,
    };
    assert_eq!(
        place_vcpus(&t, &zero, None).unwrap_err(),
        PlacementError::Spec(SpecError::BadCount("0".into()))
    );
}

// ---- memory validation (nothing is mapped: every case fails or passes before mmap) ----

fn one_range(spec: &MemorySpec) -> [(GuestAddress, usize); 1] {
    [(GuestAddress(0), spec.size_bytes() as usize)]
}

fn validate(topology: &Topology, text: &str) -> Result<(), MemoryError> {
    let spec = MemorySpec::parse(text).unwrap();
    spec.options().validate(topology, &one_range(&spec))
}

#[test]
fn memory_on_missing_or_memoryless_nodes_is_refused() {
    let t = load("four_node");
    let err = validate(&t, "64M,node=4").unwrap_err();
    assert!(
        matches!(err, MemoryError::NoSuchNode { node: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nodes: 0, 1, 2, 3"), "{err}");
    let err = validate(&t, "64M,node=2").unwrap_err();
    assert!(
        matches!(err, MemoryError::NodeWithoutMemory { node: 2 }),
        "{err}"
    );
    validate(&t, "64M,node=3").unwrap();
    // Map with a fixture topology: refused before anything is mapped.
    let spec = MemorySpec::parse("64M,node=9,prefault=on").unwrap();
    assert!(matches!(
        GuestMemory::map(&spec.options(), &t, &one_range(&spec)),
        Err(MemoryError::NoSuchNode { node: 9, .. })
    ));
}

#[test]
fn node_pool_must_hold_the_guest() {
    let t = load("four_node");
    // Node 1 has 2 free 2M pages: 4M fits, 6M does not.
    validate(&t, "4M,hugepages=2M,node=1").unwrap();
    let err = validate(&t, "6M,hugepages=2M,node=1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "hugepage pool 2M on node 1 has 2 free pages, the guest needs 3: reserve more with \
         echo 17 > /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"
    );
    // Memory-less node 2 has no pool at all.
    assert!(matches!(
        validate(&t, "2M,hugepages=2M,node=2").unwrap_err(),
        MemoryError::NodeWithoutMemory { node: 2 }
    ));
    // Node 3 has memory but an empty pool.
    assert!(matches!(
        validate(&t, "2M,hugepages=2M,node=3").unwrap_err(),
        MemoryError::PoolExhausted {
            free: 0,
            needed: 1,
            ..
        }
    ));
    // No node: the host-wide pool (62 free) decides.
    validate(&t, "124M,hugepages=2M").unwrap();
    assert!(matches!(
        validate(&t, "126M,hugepages=2M").unwrap_err(),
        MemoryError::PoolExhausted {
            free: 62,
            needed: 63,
            suggest: 81,
            ..
        }
    ));
}

#[test]
fn one_gig_pools() {
    let t = load("one_gig_pools");
    validate(&t, "6G,hugepages=1G,node=0").unwrap();
    let err = validate(&t, "7G,hugepages=1G,node=0").unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::PoolExhausted {
                free: 6,
                needed: 7,
                suggest: 9,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("hugepages-1048576kB"), "{err}");
    validate(&t, "4G,hugepages=1G,node=1").unwrap();
    // Host-wide: 10 free, 1 reserved for an existing mapping, so 9 available.
    validate(&t, "9G,hugepages=1G").unwrap();
    let err = validate(&t, "10G,hugepages=1G").unwrap_err();
    assert!(
        matches!(err, MemoryError::PoolExhausted { free: 9, needed: 10, ref place, .. } if place == "on this host"),
        "{err}"
    );
    // The 2M pools are empty here.
    assert!(matches!(
        validate(&t, "2M,hugepages=2M,node=0").unwrap_err(),
        MemoryError::PoolExhausted { free: 0, .. }
    ));
}

#[test]
fn fallback_topology_binds_to_node_zero_only() {
    let t = load("no_numa");
    validate(&t, "64M,node=0").unwrap();
    assert!(matches!(
        validate(&t, "64M,node=1").unwrap_err(),
        MemoryError::NoSuchNode { node: 1, .. }
    ));
    // 10 free, 2 reserved: 8 pages available.
    validate(&t, "16M,hugepages=2M,node=0").unwrap();
    assert!(matches!(
        validate(&t, "18M,hugepages=2M,node=0").unwrap_err(),
        MemoryError::PoolExhausted {
            free: 8,
            needed: 9,
            ..
        }
    ));
}

#[test]
fn absent_pool_size_is_refused() {
    let t = load("no_numa");
    // Drop the 1G pool from a copy, as on a host booted without 1G support.
    let mut t2 = t.clone();
    t2.hugepages.retain(|p| p.page_size_kib != G1);
    let spec = MemorySpec {
        hugepages: HugePages::Size1G,
        ..MemorySpec::new(1024)
    };
    let err = spec.options().validate(&t2, &one_range(&spec)).unwrap_err();
    assert!(
        matches!(err, MemoryError::NoPool { ref page, .. } if page == "1G"),
        "{err}"
    );
    assert!(matches!(
        spec.options().validate(&t, &one_range(&spec)).unwrap_err(),
        MemoryError::PoolExhausted {
            free: 0,
            needed: 1,
            ..
        }
    ));
}

#[test]
fn multi_range_layouts_count_every_page() {
    let t = load("four_node");
    let spec = MemorySpec::parse("6M,hugepages=2M,node=1").unwrap();
    // Two ranges of 2M + 4M = 3 pages; node 1 has 2 free.
    let ranges = [(GuestAddress(0), 2 << 20), (GuestAddress(1 << 32), 4 << 20)];
    assert!(matches!(
        spec.options().validate(&t, &ranges).unwrap_err(),
        MemoryError::PoolExhausted { needed: 3, .. }
    ));
    let misaligned = [(GuestAddress(1 << 20), 2 << 20)];
    assert!(matches!(
        spec.options().validate(&t, &misaligned).unwrap_err(),
        MemoryError::NotPageAligned { .. }
    ));
}
