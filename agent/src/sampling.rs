//! Turns what a VM process reports (its control socket's state document, `vmm::api`) and
//! what /proc says about it into the counters [`crate::metrics`] renders.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::metrics::{ProcessSample, VmCounters};

/// Network counters of a virtio-net device, by the names `metrics` expects.
const NET_COUNTERS: [&str; 4] = ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"];
/// Block counters of a virtio-blk device.
const BLOCK_COUNTERS: [&str; 4] = ["read_bytes", "write_bytes", "requests", "flushes"];
/// Error counters of every virtio device.
const ERROR_COUNTERS: [&str; 6] = [
    "malformed_chains",
    "unsupported_requests",
    "io_errors",
    "dropped_no_buffer",
    "interrupt_errors",
    "transport_errors",
];

fn pick(counters: &Value, names: &[&str]) -> BTreeMap<String, u64> {
    names
        .iter()
        .map(|n| (n.to_string(), counters[*n].as_u64().unwrap_or(0)))
        .collect()
}

/// One reading of a VM's counters: `state` is its `GET /state` document (or an exit
/// report, which has the same `counters` and `virtio` fields), `process` its /proc figures.
pub fn reading(state: &Value, process: Option<&ProcessSample>) -> VmCounters {
    let mut counters = VmCounters {
        cpu_seconds: process.map_or(0.0, |p| p.cpu_seconds),
        ..VmCounters::default()
    };
    if let Some(devices) = state["virtio"].as_object() {
        for (name, c) in devices {
            if name.starts_with("net") {
                counters.net.insert(name.clone(), pick(c, &NET_COUNTERS));
            } else if name.starts_with("block") {
                counters
                    .block
                    .insert(name.clone(), pick(c, &BLOCK_COUNTERS));
            }
            counters
                .errors
                .insert(name.clone(), pick(c, &ERROR_COUNTERS));
        }
    }
    // Guest accesses nobody answered: the VM's bus reports them as errors of kind
    // unhandled_pio / unhandled_mmio.
    let bus = &state["counters"];
    if bus.is_object() {
        let mut errors = BTreeMap::new();
        errors.insert(
            "unhandled_pio".to_string(),
            bus["unhandled_pio_accesses"].as_u64().unwrap_or(0),
        );
        errors.insert(
            "unhandled_mmio".to_string(),
            bus["unhandled_mmio_accesses"].as_u64().unwrap_or(0),
        );
        counters.errors.insert("bus".to_string(), errors);
        // vCPU exits by reason (io_in, io_out, mmio_read, ..., intr, other), whatever
        // reasons this VM process knows.
        if let Some(exits) = bus["exits"].as_object() {
            counters.exits = exits
                .iter()
                .filter_map(|(reason, n)| Some((reason.clone(), n.as_u64()?)))
                .collect();
        }
    }
    counters
}

/// Seconds from the VM process's start to the guest's first sign of life (its boot-timer
/// stamp, else its first serial byte), from a `timings` object.
pub fn boot_seconds(timings: &Value) -> Option<f64> {
    timings["guest_main_us"]
        .as_u64()
        .or_else(|| timings["first_serial_byte_us"].as_u64())
        .map(|us| us as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn devices_are_sorted_into_net_block_and_errors() {
        let state = json!({
            "counters": {"unhandled_pio_accesses": 3, "unhandled_mmio_accesses": 0,
                         "exits": {"io_out": 120, "io_in": 130, "intr": 2, "bogus": "x"}},
            "virtio": {
                "net0": {"rx_bytes": 100, "tx_bytes": 50, "rx_packets": 2, "tx_packets": 1,
                         "dropped_no_buffer": 4},
                "block0": {"read_bytes": 4096, "write_bytes": 512, "requests": 9, "flushes": 1,
                           "io_errors": 2},
                "rng0": {"requests": 5}
            }
        });
        let process = ProcessSample {
            cpu_seconds: 1.25,
            ..ProcessSample::default()
        };
        let c = reading(&state, Some(&process));
        assert_eq!(c.cpu_seconds, 1.25);
        assert_eq!(c.net["net0"]["rx_bytes"], 100);
        assert_eq!(c.block["block0"]["read_bytes"], 4096);
        assert!(!c.net.contains_key("rng0") && !c.block.contains_key("rng0"));
        assert_eq!(c.errors["net0"]["dropped_no_buffer"], 4);
        assert_eq!(c.errors["block0"]["io_errors"], 2);
        assert_eq!(c.errors["rng0"]["io_errors"], 0);
        assert_eq!(c.errors["bus"]["unhandled_pio"], 3);
        assert_eq!(c.exits["io_out"], 120);
        assert_eq!(c.exits["intr"], 2);
        assert_eq!(c.exits.len(), 3, "a reason that is not a number is skipped");
    }

    #[test]
    fn the_vmm_state_document_maps_into_exits() {
        // The exits object exactly as the VMM serializes it.
        let report = vmm::state::VmCounters::new(1);
        report.count_exit(0, vmm::state::ExitKind::IoOut);
        let state = json!({ "counters": report.snapshot() });
        let c = reading(&state, None);
        assert_eq!(c.exits.len(), vmm::state::ExitKind::ALL.len());
        assert_eq!(c.exits["io_out"], 1);
        assert_eq!(c.exits["hlt"], 0);
    }

    #[test]
    fn boot_time_prefers_the_boot_timer() {
        assert_eq!(
            boot_seconds(&json!({"guest_main_us": 1500, "first_serial_byte_us": 1000})),
            Some(0.0015)
        );
        assert_eq!(
            boot_seconds(&json!({"guest_main_us": null, "first_serial_byte_us": 2000})),
            Some(0.002)
        );
        assert_eq!(boot_seconds(&json!({})), None);
    }
}
