//! virtio-blk requests from arbitrary chains: the real `Block` device on a small image file
//! (writeback, unsafe-cache or read-only, picked by the input), activated with guest memory
//! and a queue laid out from the input, then kicked. Oracle: no panic, no access outside
//! guest memory (guard pages), and no used length larger than the writable bytes of its
//! chain (the device may not claim to have written more than the driver gave it).
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{Block, BlockConfig, CacheMode};
use devices::virtio::queue::DescriptorChainView;
use devices::virtio::{Activation, Interrupt, VirtioDevice};
use devices_fuzz::{at, overlaps, used_entries, Input, MemLayout, Memory, RingSpec};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MAX_QUEUE: u16 = 256;

/// Image sizes: whole sectors, a size with a partial last sector, one page.
const DISKS: [(&str, u64, bool, CacheMode); 3] = [
    ("writeback", 64 << 10, false, CacheMode::Writeback),
    ("unsafe", 33000, false, CacheMode::Unsafe),
    ("readonly", 4096, true, CacheMode::Writeback),
];

fn disks() -> &'static Mutex<Vec<Block>> {
    static DEVICES: OnceLock<Mutex<Vec<Block>>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        // tmpfs when there is one: a flush is an fsync, which should not wait for a disk.
        let dir = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let devices = DISKS
            .iter()
            .map(|&(name, size, readonly, cache)| {
                let path = dir.join(format!("edgevisor-fuzz-{}-{name}.img", std::process::id()));
                let file = std::fs::File::create(&path)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
                file.set_len(size).expect("sizing the fuzz image");
                let block = Block::new(BlockConfig {
                    path: path.clone(),
                    readonly,
                    cache,
                })
                .unwrap_or_else(|e| panic!("{e}"));
                // The device keeps its descriptor; the name can go now.
                let _ = std::fs::remove_file(&path);
                block
            })
            .collect();
        Mutex::new(devices)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut disks = disks().lock().unwrap_or_else(|p| p.into_inner());
    let mut input = Input::new(data);
    let disk = &mut disks[usize::from(input.u8()) % DISKS.len()];
    let layout = MemLayout::from_input(&mut input);
    let mem = layout.build();
    let spec = RingSpec::from_input(&mut input, &layout, MAX_QUEUE);
    let Some(queue) = spec.queue(&mem, MAX_QUEUE) else {
        return;
    };
    let count = spec.fill(&mem, &layout, &mut input);
    // The chains as the driver offered them, before the device wrote anything.
    let offered = offered_chains(&mem, &spec, count);

    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq, disk.counters()));
    let activation = Activation {
        mem: mem.clone(),
        queues: vec![queue],
        acked_features: disk.offered_features(),
        interrupt,
        queue_events: Vec::new(),
    };
    disk.activate(activation).expect("activate");
    disk.queue_notified(0);
    if input.u8() & 1 != 0 {
        disk.queue_notified(0);
    }
    disk.reset();

    if let Some(writable) = offered {
        for (id, len) in used_entries(&mem, &spec, spec.next_used) {
            let allowed = u16::try_from(id)
                .ok()
                .and_then(|head| writable.get(&head))
                .copied()
                .unwrap_or(0);
            assert!(
                u64::from(len) <= allowed,
                "chain {id} completed with used length {len}, but it has only {allowed} \
                 writable bytes"
            );
        }
    }
});

/// Head -> writable bytes of each chain made available, or `None` when the check cannot be
/// exact: a device write could change the rings or tables it is computed from (a writable
/// buffer or a ring overlapping a ring), or the queue is not in use.
fn offered_chains(mem: &Memory, spec: &RingSpec, count: u16) -> Option<HashMap<u16, u64>> {
    if !spec.ready || count > spec.size {
        return None;
    }
    let rings = spec.ring_areas();
    for (i, a) in rings.iter().enumerate() {
        if rings[i + 1..].iter().any(|b| overlaps(a.0, a.1, b.0, b.1)) {
            return None;
        }
    }
    let mut out = HashMap::new();
    for k in 0..count {
        let slot = u64::from(spec.next_avail.wrapping_add(k) % spec.size);
        let head = u16::from_le(mem.read_obj::<u16>(at(spec.avail, 4 + 2 * slot)).ok()?);
        let Ok(view) = DescriptorChainView::walk(mem, GuestAddress(spec.desc), spec.size, head)
        else {
            out.insert(head, 0);
            continue;
        };
        for s in &view.writable {
            if rings
                .iter()
                .any(|r| overlaps(r.0, r.1, s.addr.0, u64::from(s.len)))
            {
                return None;
            }
        }
        out.insert(head, view.writable_len());
    }
    Some(out)
}
