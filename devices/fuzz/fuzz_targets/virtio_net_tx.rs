//! The virtio-net TX path with arbitrary chains: the real `Net` device on a real TAP,
//! activated with guest memory and a TX queue laid out from the input, then kicked. The TAP
//! lives in a private network namespace the fuzzer enters at start-up
//! (`unshare(CLONE_NEWNET)`), so the frames never reach the host's network. Oracle: no
//! panic, no access outside guest memory (guard pages), every chain completed.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::net::{Net, QUEUE_SIZE, TX_QUEUE};
use devices::virtio::tap::Tap;
use devices::virtio::{Activation, Interrupt, VirtioDevice};
use devices_fuzz::{used_entries, Input, MemLayout, RingSpec};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

const TAP_NAME: &str = "fuzztap0";

struct Rig {
    net: Net,
    irq: EventFd,
}

fn rig() -> &'static Mutex<Rig> {
    static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();
    RIG.get_or_init(|| {
        // SAFETY: unshare takes no pointers. libFuzzer runs the target on this thread, which
        // from here on has a network namespace of its own, holding only our TAP.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed: the virtio_net_tx target needs root \
             (CAP_SYS_ADMIN) to get a private network namespace: {}",
            std::io::Error::last_os_error()
        );
        // No router solicitations or neighbour discovery on the TAP; absent without IPv6.
        for knob in ["default", "all"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1");
        }
        let tap = Tap::open(TAP_NAME, true)
            .unwrap_or_else(|e| panic!("cannot create the fuzz TAP in its namespace: {e}"));
        let net = Net::new(tap, Some([0x52, 0x54, 0, 0xf, 0x22, 0x01])).expect("net device");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        Mutex::new(Rig { net, irq })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rig = rig().lock().unwrap_or_else(|p| p.into_inner());
    let rig = &mut *rig;
    let mut input = Input::new(data);
    let layout = MemLayout::from_input(&mut input);
    let mem = layout.build();
    let spec = RingSpec::from_input(&mut input, &layout, QUEUE_SIZE);
    let Some(tx) = spec.queue(&mem, QUEUE_SIZE) else {
        return;
    };
    spec.fill(&mem, &layout, &mut input);
    // RX stays unused: ready but empty, in the last 8 KiB of the first region.
    let (base, size) = layout.regions[0];
    let rx_at = base + size as u64 - 0x2000;
    let mut rx = Queue::new(QUEUE_SIZE).expect("rx queue");
    rx.set_size(16);
    rx.set_desc_table_address(Some(rx_at as u32), Some((rx_at >> 32) as u32));
    let avail = rx_at + 0x100;
    let used = rx_at + 0x200;
    rx.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    rx.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    rx.set_ready(true);
    assert_eq!(rx.desc_table(), rx_at);
    assert!(rx.is_valid(&mem));

    let counters = rig.net.counters();
    let interrupt = Arc::new(Interrupt::new(
        rig.irq.try_clone().expect("eventfd clone"),
        counters.clone(),
    ));
    let activation = Activation {
        mem: mem.clone(),
        queues: vec![rx, tx],
        acked_features: rig.net.offered_features(),
        interrupt,
        queue_events: Vec::new(),
    };
    rig.net.activate(activation).expect("activate");
    let before = counters.snapshot();
    // One kick, and a second one when the input asks (a driver kicking again).
    rig.net.queue_notified(TX_QUEUE);
    if input.u8() & 1 != 0 {
        rig.net.queue_notified(TX_QUEUE);
    }
    let after = counters.snapshot();
    // TX chains are completed with length 0 (nothing is written to the guest).
    let rings = spec.ring_areas();
    let rings_apart = !rings.iter().enumerate().any(|(i, a)| {
        rings[i + 1..]
            .iter()
            .any(|b| devices_fuzz::overlaps(a.0, a.1, b.0, b.1))
    });
    if rings_apart && spec.ready {
        for (id, len) in used_entries(&mem, &spec, spec.next_used) {
            assert!(
                id < u32::from(spec.size),
                "used id {id} in a queue of {}",
                spec.size
            );
            assert_eq!(len, 0, "a TX chain completed with a non-zero length");
        }
    }
    assert!(after.tx_packets >= before.tx_packets);
    rig.net.reset();
    let _ = rig.irq.read();
});
