//! Shared by the metrics tests: a realistic sample built through the counter store.
#![allow(dead_code)]

use std::path::Path;

use agent::capabilities::collect_from;
use agent::metrics::{CounterStore, NodeSample, Sample, VmCounters, VmSample};

/// A reading as a VM process would report it.
pub fn reading(cpu: f64, io_exits: u64, rx_bytes: u64, io_errors: u64) -> VmCounters {
    let mut c = VmCounters {
        cpu_seconds: cpu,
        ..VmCounters::default()
    };
    c.exits.insert("io".into(), io_exits);
    c.exits.insert("hlt".into(), io_exits / 2);
    let net = c.net.entry("eth0".into()).or_default();
    net.insert("rx_bytes".into(), rx_bytes);
    net.insert("tx_packets".into(), rx_bytes / 100);
    let blk = c.block.entry("rootfs".into()).or_default();
    blk.insert("read_bytes".into(), rx_bytes * 4);
    blk.insert("flushes".into(), 3);
    c.errors
        .entry("rootfs".into())
        .or_default()
        .insert("io_errors".into(), io_errors);
    c
}

/// Node facts from the recorded x86 tree plus guests `a` (running, restarted once) and
/// `b` (paused), with counters folded by `store`.
pub fn sample(store: &mut CounterStore) -> Sample {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/x86-sriov");
    store.fold("a", "100:1", &reading(2.0, 40, 1000, 1));
    let a = store.fold("a", "200:2", &reading(0.5, 2, 500, 0));
    let b = store.fold("b", "300:3", &reading(1.25, 7, 0, 0));
    Sample {
        node: NodeSample {
            capabilities: Some(collect_from(&root)),
            agent_uptime_seconds: 12.5,
        },
        vms: vec![
            VmSample {
                id: "a".into(),
                state: "running".into(),
                boot_duration_seconds: Some(0.25),
                resident_memory_bytes: Some(64 << 20),
                process_restarts: store.restarts("a"),
                counters: a,
            },
            VmSample {
                id: "b".into(),
                state: "paused".into(),
                boot_duration_seconds: None,
                resident_memory_bytes: Some(32 << 20),
                process_restarts: store.restarts("b"),
                counters: b,
            },
        ],
    }
}
