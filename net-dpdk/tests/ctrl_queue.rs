//! The control virtqueue of a multiqueue vhost-user-net device (`queues=2`) connected to a
//! real dpdk-testpmd whose vhost ports have two queue pairs: well-formed commands get their
//! ack byte (VQ_PAIRS_SET moves testpmd's rings on and off), hostile chains (no ack byte, a
//! one-byte header, a buffer outside guest memory, a descriptor loop) come back with used
//! length 0 and are counted, and the queue keeps answering after each of them.
//!
//! Needs root (hugepages) and dpdk-testpmd (package dpdk-dev).

#![cfg(target_arch = "x86_64")] // runs the host's x86_64 dpdk-testpmd as its peer: not under qemu-user

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use devices::virtio::{features, Activation, Interrupt, VirtioCounters, VirtioDevice};
use net_dpdk::{
    Mode, VhostUserNet, VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_OK,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

static SERIAL: Mutex<()> = Mutex::new(());

const MEM: usize = 16 << 20;
const CTRL_SIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// The driver side of the control queue: chains of explicit descriptors.
struct Ctrl {
    q: DriverQueue,
    next_desc: u16,
    avail: u16,
    scratch: u64,
}

impl Ctrl {
    /// Publishes one chain of (addr, len, flags, next) descriptors starting at a fresh slot;
    /// `next` of `None` means the following slot. Returns the head.
    fn post(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16, Option<u16>)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let slot = (head + i as u16) % CTRL_SIZE;
            let d = self.q.desc + 16 * u64::from(slot);
            let next = next.unwrap_or((slot + 1) % CTRL_SIZE);
            mem.write_obj(addr, GuestAddress(d)).unwrap();
            mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % CTRL_SIZE;
        let slot = self.q.avail + 4 + 2 * u64::from(self.avail % CTRL_SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        std::sync::atomic::fence(Ordering::SeqCst);
        mem.write_obj(self.avail, GuestAddress(self.q.avail + 2))
            .unwrap();
        head
    }

    /// A command with its data in one descriptor, its header in another and an ack byte;
    /// the ack byte is preset to 0xee so an unanswered command shows.
    fn command(&mut self, mem: &GuestMemoryMmap, class: u8, cmd: u8, data: &[u8]) -> u64 {
        let base = self.scratch + u64::from(self.next_desc) * 64;
        mem.write_slice(&[class, cmd], GuestAddress(base)).unwrap();
        mem.write_slice(data, GuestAddress(base + 8)).unwrap();
        mem.write_obj(0xeeu8, GuestAddress(base + 32)).unwrap();
        self.post(
            mem,
            &[
                (base, 2, F_NEXT, None),
                (base + 8, data.len() as u32, F_NEXT, None),
                (base + 32, 1, F_WRITE, None),
            ],
        );
        base + 32
    }
}

#[test]
fn control_queue_answers_commands_and_refuses_hostile_chains() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _pages = Hugepages::reserve(64);
    let dir = std::env::temp_dir().join(format!("edgevisor-vhost-ctrl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let s0 = dir.join("port0.sock");
    let s1 = dir.join("port1.sock");
    let pmd = Testpmd::start(&dir, [&s0, &s1], ",queues=2", "ctrl");

    let mut device = VhostUserNet::connect(&s0, Mode::Client, None, 2).expect("connect");
    let offered = device.offered_features();
    assert_eq!(
        offered & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ),
        VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ
    );
    assert_eq!(
        device.queue_max_sizes().len(),
        5,
        "two pairs and the control queue"
    );
    let mut config = [0u8; 2];
    device.read_config(8, &mut config);
    assert_eq!(u16::from_le_bytes(config), 2, "max_virtqueue_pairs");

    let mem = shared_memory(MEM);
    let data: Vec<DriverQueue> = (0..4)
        .map(|i| DriverQueue::new(0x10_0000 + i * 0x10_0000, QSIZE))
        .collect();
    let mut ctrl = Ctrl {
        q: DriverQueue::new(0x60_0000, CTRL_SIZE),
        next_desc: 0,
        avail: 0,
        scratch: 0x70_0000,
    };
    let kicks: Vec<Arc<EventFd>> = (0..5)
        .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
        .collect();
    let counters = device.counters();
    let interrupt = Arc::new(Interrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        Arc::new(VirtioCounters::default()),
    ));
    let mut queues: Vec<_> = data.iter().map(DriverQueue::queue).collect();
    queues.push(ctrl.q.queue());
    device
        .activate(Activation {
            mem: mem.clone(),
            queues,
            acked_features: offered & !features::RING_EVENT_IDX,
            interrupt,
            queue_events: kicks.clone(),
        })
        .expect("activate");
    let device = Arc::new(Mutex::new(device));
    let mut manager: Manager = event_manager::EventManager::new().unwrap();
    use event_manager::SubscriberOps;
    manager.add_subscriber(Box::new(Forwarder(device.clone())));
    assert!(
        pump(&mut manager, Duration::from_secs(10), || device
            .lock()
            .unwrap()
            .is_running()),
        "the rings were not handed over: {}",
        pmd.log_text()
    );
    assert_eq!(device.lock().unwrap().active_pairs(), 1);

    // Runs the loop until the control queue's used index reaches `n`, then returns the
    // used length of entry n-1.
    let mut done = 0u16;
    let mut answered = |manager: &mut Manager, ctrl: &Ctrl| -> u32 {
        kicks[4].write(1).unwrap();
        done += 1;
        let target = done;
        assert!(
            pump(manager, Duration::from_secs(15), || ctrl.q.used_idx(&mem)
                == target),
            "the control queue did not answer chain {target}"
        );
        ctrl.q.used_elem(&mem, target - 1).1
    };
    let ack = |at: u64| mem.read_obj::<u8>(GuestAddress(at)).unwrap();
    // testpmd logs each request; the start already disabled pair 1's rings once.
    let pmd_log_count = |needle: &str| {
        pmd.log_text()
            .matches(&format!("({}) {needle}", s0.display()))
            .count()
    };
    let pmd_log_reaches = |needle: &str, count: usize| {
        wait_until(Duration::from_secs(15), || pmd_log_count(needle) >= count).is_some()
    };
    let enables = pmd_log_count("set queue enable: 1 to qp idx: 3");

    // Two pairs: accepted, pair 1's rings enabled in testpmd.
    let at = ctrl.command(&mem, 4, 0, &2u16.to_le_bytes());
    assert_eq!(answered(&mut manager, &ctrl), 1);
    assert_eq!(ack(at), VIRTIO_NET_OK);
    assert_eq!(device.lock().unwrap().active_pairs(), 2);
    assert!(
        pmd_log_reaches("set queue enable: 1 to qp idx: 3", enables + 1),
        "{}",
        pmd.log_text()
    );

    // Three pairs (more than offered), a MAC-class command: VIRTIO_NET_ERR.
    let at = ctrl.command(&mem, 4, 0, &3u16.to_le_bytes());
    assert_eq!(answered(&mut manager, &ctrl), 1);
    assert_eq!(ack(at), VIRTIO_NET_ERR);
    let at = ctrl.command(&mem, 1, 1, &[0; 6]);
    assert_eq!(answered(&mut manager, &ctrl), 1);
    assert_eq!(ack(at), VIRTIO_NET_ERR);
    // RX mode (promiscuous on), as Linux sends it: acknowledged.
    let at = ctrl.command(&mem, 0, 0, &[1]);
    assert_eq!(answered(&mut manager, &ctrl), 1);
    assert_eq!(ack(at), VIRTIO_NET_OK);
    assert_eq!(counters.malformed_chains.load(Ordering::Relaxed), 0);
    assert_eq!(counters.unsupported_requests.load(Ordering::Relaxed), 2);

    // Hostile chains: each comes back with length 0 and is counted.
    let s = ctrl.scratch + 0x8000;
    mem.write_slice(&[4, 0, 1, 0, 0xee], GuestAddress(s))
        .unwrap();
    // No device-writable ack byte.
    ctrl.post(&mem, &[(s, 4, 0, None)]);
    assert_eq!(answered(&mut manager, &ctrl), 0);
    // A one-byte header.
    ctrl.post(&mem, &[(s, 1, F_NEXT, None), (s + 4, 1, F_WRITE, None)]);
    assert_eq!(answered(&mut manager, &ctrl), 0);
    // A buffer outside guest memory.
    ctrl.post(
        &mem,
        &[(MEM as u64 - 1, 4, F_NEXT, None), (s + 4, 1, F_WRITE, None)],
    );
    assert_eq!(answered(&mut manager, &ctrl), 0);
    // A descriptor that points at itself.
    let slot = ctrl.next_desc;
    ctrl.post(&mem, &[(s, 4, F_NEXT, Some(slot))]);
    assert_eq!(answered(&mut manager, &ctrl), 0);
    assert_eq!(counters.malformed_chains.load(Ordering::Relaxed), 4);
    assert_eq!(device.lock().unwrap().active_pairs(), 2, "nothing changed");

    // The queue still serves: back to one pair, pair 1's rings disabled in testpmd.
    let disables = pmd_log_count("set queue enable: 0 to qp idx: 3");
    let at = ctrl.command(&mem, 4, 0, &1u16.to_le_bytes());
    assert_eq!(answered(&mut manager, &ctrl), 1);
    assert_eq!(ack(at), VIRTIO_NET_OK);
    assert_eq!(device.lock().unwrap().active_pairs(), 1);
    assert!(
        pmd_log_reaches("set queue enable: 0 to qp idx: 3", disables + 1),
        "{}",
        pmd.log_text()
    );

    drop(manager);
    drop(device);
    drop(pmd);
    let _ = std::fs::remove_dir_all(&dir);
}
