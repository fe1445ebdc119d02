//! Two "guests" (two VhostUserNet devices in this process, each with its own memfd guest
//! memory) on the two vhost-user ports of a real dpdk-testpmd in io-forward mode: frames one
//! guest puts on its TX queue come out of the other's RX queue, and testpmd's own port
//! counters see them. Then testpmd is killed and restarted, both devices reconnect by
//! themselves and traffic flows again.
//!
//! Needs root (hugepages) and dpdk-testpmd (package dpdk-dev).

#![cfg(target_arch = "x86_64")] // runs the host's x86_64 dpdk-testpmd as its peer: not under qemu-user

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use devices::virtio::{features, VirtioDevice};
use net_dpdk::{Mode, VhostUserNet, VhostUserNetError, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS};

/// testpmd needs the hugepages and both cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MEM: usize = 16 << 20;
const FRAME_LEN: usize = 100;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgevisor-vhost-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn acked(dev: &VhostUserNet) -> u64 {
    // What a driver without event-idx would accept: our polling driver reads rings directly.
    dev.offered_features() & !features::RING_EVENT_IDX
}

/// Sends `count` frames from `a` to `b` (starting at `seq`) and checks every one arrives
/// intact in `b`'s RX buffers.
fn exchange(manager: &mut Manager, a: &mut Guest, b: &mut Guest, seq: u32, count: u16) {
    let (mac_a, mac_b) = (
        a.device.lock().unwrap().mac(),
        b.device.lock().unwrap().mac(),
    );
    let rx_start = b.rx.used_idx(&b.mem);
    let tx_start = a.tx.used_idx(&a.mem);
    let mut sent = Vec::new();
    for i in 0..count {
        let f = frame(mac_b, mac_a, seq + u32::from(i), FRAME_LEN);
        a.tx.post(&a.mem, Some(&f));
        sent.push(f);
    }
    a.kick(1);
    let irq_before = b.interrupt.status();
    let arrived = pump(manager, Duration::from_secs(20), || {
        b.rx.used_idx(&b.mem).wrapping_sub(rx_start) >= count
    });
    assert!(
        arrived,
        "only {} of {count} frames from seq {seq} reached the second guest's RX queue",
        b.rx.used_idx(&b.mem).wrapping_sub(rx_start)
    );
    assert!(
        pump(manager, Duration::from_secs(15), || {
            a.tx.used_idx(&a.mem).wrapping_sub(tx_start) >= count
        }),
        "the back end did not return the first guest's TX buffers"
    );
    for (n, want) in sent.iter().enumerate() {
        let (id, len) = b.rx.used_elem(&b.mem, rx_start.wrapping_add(n as u16));
        assert_eq!(len as usize, want.len(), "frame {n}: length written");
        let mut got = vec![0u8; want.len()];
        use vm_memory::Bytes;
        b.mem
            .read_slice(
                &mut got,
                vm_memory::GuestAddress(b.rx.buffer_addr(id as u16)),
            )
            .unwrap();
        assert_eq!(&got[12..], &want[12..], "frame {n} arrived changed");
    }
    // The back end signalled the call eventfd and the device relayed it as an interrupt.
    assert!(
        pump(manager, Duration::from_secs(15), || b.interrupt.status()
            & 1
            != 0),
        "no used-ring interrupt reached the second guest (status before {irq_before:#x})"
    );
    b.interrupt.acknowledge(1);
}

fn start_pair(dir: &Path, sockets: [&Path; 2]) -> (Guest, Guest) {
    let mut guests = Vec::new();
    for s in sockets {
        let dev = VhostUserNet::connect(s, Mode::Client, None, 1).expect("connect to testpmd");
        let acked = acked(&dev);
        guests.push(Guest::activate(dev, shared_memory(MEM), acked));
    }
    let _ = dir;
    let b = guests.pop().unwrap();
    let a = guests.pop().unwrap();
    (a, b)
}

#[test]
fn testpmd_forwards_between_two_guests_and_survives_a_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _pages = Hugepages::reserve(64);
    let dir = scratch("fwd");
    let s0 = dir.join("port0.sock");
    let s1 = dir.join("port1.sock");
    let mut pmd = Testpmd::start(&dir, [&s0, &s1], "", "fwd1");

    let (mut a, mut b) = start_pair(&dir, [&s0, &s1]);
    {
        let dev = a.device.lock().unwrap();
        assert_ne!(
            dev.backend_features() & (1 << 32),
            0,
            "testpmd offers VERSION_1"
        );
        let offered = dev.offered_features();
        assert_eq!(
            offered & (VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS),
            VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
        );
        assert_eq!(
            offered & !dev.backend_features() & !(VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS),
            0,
            "every other offered feature comes from the back end"
        );
    }
    // RX buffers for the receiving guest.
    for _ in 0..128 {
        b.rx.post(&b.mem, None);
    }
    b.kick(0);
    let mut manager = event_loop(&[&a, &b]);
    // The event loop hands the rings over; a frame sent before the other port's rings are
    // in testpmd's hands would be dropped there.
    assert!(
        pump(&mut manager, Duration::from_secs(10), || {
            a.device.lock().unwrap().is_running() && b.device.lock().unwrap().is_running()
        }),
        "the devices did not hand their rings to testpmd: {}",
        pmd.log_text()
    );
    assert!(
        pmd.both_ports_ready(Duration::from_secs(30)),
        "testpmd does not report both ports ready: {}",
        pmd.log_text()
    );

    exchange(&mut manager, &mut a, &mut b, 0, 32);
    let stats = pmd.port_stats(2);
    assert!(
        stats[0].rx_packets >= 32 && stats[1].tx_packets >= 32,
        "testpmd's counters do not show the 32 frames: {stats:?}"
    );
    assert!(stats[0].rx_bytes >= 32 * (FRAME_LEN as u64), "{stats:?}");

    // The back end dies; both devices notice the hang-up and retry until it is back.
    pmd.kill();
    assert!(
        pump(&mut manager, Duration::from_secs(15), || {
            !a.device.lock().unwrap().is_connected() && !b.device.lock().unwrap().is_connected()
        }),
        "the devices did not notice testpmd's death"
    );
    let _ = std::fs::remove_file(&s0);
    let _ = std::fs::remove_file(&s1);
    let mut pmd = Testpmd::start(&dir, [&s0, &s1], "", "fwd2");
    assert!(
        pump(&mut manager, Duration::from_secs(30), || {
            let (a, b) = (a.device.lock().unwrap(), b.device.lock().unwrap());
            a.reconnects() == 1 && b.reconnects() == 1 && a.is_running() && b.is_running()
        }),
        "the devices did not reconnect to the restarted testpmd: {}",
        pmd.log_text()
    );
    // As at the start: testpmd forwards only once it has both ports' rings in hand.
    assert!(
        pmd.both_ports_ready(Duration::from_secs(30)),
        "the restarted testpmd does not report both ports ready: {}",
        pmd.log_text()
    );
    // Vrings resumed where the guest's used rings were: the rest of the RX buffers are used.
    exchange(&mut manager, &mut a, &mut b, 1000, 32);
    let stats = pmd.port_stats(2);
    assert!(
        stats[0].rx_packets >= 32 && stats[1].tx_packets >= 32,
        "the restarted testpmd's counters do not show the frames: {stats:?}"
    );
    drop(manager);
    drop((a, b));
    drop(pmd);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_socket_and_bad_queue_count_are_clear_errors() {
    let dir = scratch("errors");
    let missing = dir.join("nobody.sock");
    let err = VhostUserNet::connect(&missing, Mode::Client, None, 1).unwrap_err();
    assert!(
        matches!(err, VhostUserNetError::SocketMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nobody.sock"), "{err}");
    let err = VhostUserNet::connect(&missing, Mode::Client, None, 0).unwrap_err();
    assert!(
        matches!(err, VhostUserNetError::BadQueueCount { .. }),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
