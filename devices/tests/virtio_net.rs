//! virtio-net on a real TAP, inside a network namespace each test makes for itself (so
//! nothing touches the host's interfaces; needs root, as the tests here run).
//!
//! The "guest" is a `GuestMemoryMmap` whose rings and descriptor chains are written with
//! virtio-queue's mock driver; the device runs under a real event-manager loop pumped by the
//! test thread (TAP readiness, the device's wake eventfd), and the far end of the wire is an
//! AF_PACKET socket bound to the TAP.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::event_loop::{DeviceSubscriber, EventLoop};
use devices::virtio::mmio::{status, MmioTransport};
use devices::virtio::net::{Net, EVENT_TAP, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MAC};
use devices::virtio::tap::{Tap, TapError};
use devices::virtio::{
    device_type, features, Activation, Interrupt, VirtioCounterSnapshot, VirtioDevice,
};
use devices::BusDevice;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const QSIZE: u16 = 32;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x4000;
/// Data buffers live from here.
const DATA: u64 = 0x10000;
/// Guest RAM: two adjacent regions, [0, 1 MiB) and [1 MiB, 2 MiB).
const REGION2: u64 = 0x10_0000;
const RAM_END: u64 = 0x20_0000;

/// An ethertype from the IEEE "local experimental" range: nothing else on the TAP uses it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Runs `f` on a thread that has its own network namespace (and IPv6 off in it, so the
/// kernel sends no neighbour discovery on our TAP).
fn in_netns(f: impl FnOnce() + Send + 'static) {
    let result = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only this thread to a new namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed (run as root): {}",
            std::io::Error::last_os_error()
        );
        for knob in ["default", "all"] {
            // Absent when IPv6 is not built in; then there is nothing to silence.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1");
        }
        f();
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION2 as usize),
        (GuestAddress(REGION2), (RAM_END - REGION2) as usize),
    ])
    .unwrap()
}

fn frame(dst: [u8; 6], src: [u8; 6], payload_len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..payload_len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// Offset of the used ring from a queue's base. virtio-queue 0.18's mock places the used
/// ring too close to the available ring (it adds the element count, not the byte count), so
/// the two would overlap; ours lives apart. The mock also publishes chains without wrapping
/// around the ring, so [`GuestQueue::add_raw`] publishes them itself.
const USED_OFFSET: u64 = 0x1000;

/// One queue as the driver sees it.
struct GuestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    used: GuestAddress,
    next_desc: u16,
    used_seen: u16,
}

impl<'a> GuestQueue<'a> {
    fn new(mem: &'a GuestMemoryMmap, at: u64) -> GuestQueue<'a> {
        let used = GuestAddress(at + USED_OFFSET);
        mem.write_slice(&[0u8; 4 + 8 * QSIZE as usize + 2], used)
            .unwrap();
        GuestQueue {
            mem,
            mock: MockSplitQueue::create(mem, GuestAddress(at), QSIZE),
            used,
            next_desc: 0,
            used_seen: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = self.mock.create_queue::<Queue>().unwrap();
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q
    }

    /// Publishes raw descriptors (flags and `next` exactly as given) at consecutive table
    /// slots; the first is the head. Returns the head index.
    fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        if self.next_desc as usize + descs.len() > QSIZE as usize {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(addr, len, flags, next)| {
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        for (i, desc) in raw.iter().enumerate() {
            self.mock
                .desc_table()
                .store(head + i as u16, *desc)
                .unwrap();
        }
        // The mock's own publishing does not wrap around the ring; do it here.
        let avail = self.mock.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.next_desc += descs.len() as u16;
        head
    }

    /// Publishes a well-formed chain of `(addr, len, writable)` buffers.
    fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        if self.next_desc as usize + bufs.len() > QSIZE as usize {
            self.next_desc = 0;
        }
        let base = self.next_desc;
        let descs: Vec<(u64, u32, u16, u16)> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { F_WRITE } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= F_NEXT;
                }
                (addr, len, flags, base + i as u16 + 1)
            })
            .collect();
        self.add_raw(&descs)
    }

    /// Used-ring entries (id, len) added since the last call.
    fn take_used(&mut self) -> Vec<(u32, u32)> {
        let used = self.used;
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % QSIZE);
            let at = used.unchecked_add(4 + 8 * slot);
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// The event-loop side: forwards back-end events to the device and counts TAP wake-ups.
struct Harness {
    device: Arc<Mutex<Net>>,
    tap_events: Arc<AtomicUsize>,
}

impl MutEventSubscriber for Harness {
    fn init(&mut self, ops: &mut EventOps) {
        let events = self.device.lock().unwrap().backend_events();
        for (fd, data, set) in events {
            ops.add(Events::with_data_raw(fd, data, set)).unwrap();
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == EVENT_TAP {
            self.tap_events.fetch_add(1, Ordering::SeqCst);
        }
        self.device.lock().unwrap().backend_event(events, ops);
    }
}

/// A device, its TAP's far end, and the guest's view of both queues.
struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    device: Arc<Mutex<Net>>,
    manager: EventManager<Harness>,
    tap_events: Arc<AtomicUsize>,
    irq: EventFd,
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
    peer: PacketSocket,
}

impl<'a> Rig<'a> {
    /// A TAP `name` (created), a device on it, not yet activated.
    fn new(mem: &'a GuestMemoryMmap, name: &str) -> Rig<'a> {
        let tap = Tap::open(name, true).unwrap();
        assert!(tap.created());
        let peer = PacketSocket::bind(tap.if_index());
        let device = Arc::new(Mutex::new(Net::new(tap, Some(GUEST_MAC)).unwrap()));
        let tap_events = Arc::new(AtomicUsize::new(0));
        let mut manager = EventManager::new().unwrap();
        manager.add_subscriber(Harness {
            device: device.clone(),
            tap_events: tap_events.clone(),
        });
        Rig {
            mem,
            device,
            manager,
            tap_events,
            irq: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            rx: GuestQueue::new(mem, RX_RING),
            tx: GuestQueue::new(mem, TX_RING),
            peer,
        }
    }

    fn activate(&mut self) {
        let mut dev = self.device.lock().unwrap();
        let interrupt = Arc::new(Interrupt::new(
            self.irq.try_clone().unwrap(),
            dev.counters(),
        ));
        let activation = Activation {
            mem: self.mem.clone(),
            queues: vec![self.rx.queue(), self.tx.queue()],
            acked_features: dev.offered_features(),
            interrupt,
            queue_events: Vec::new(),
        };
        dev.activate(activation).unwrap();
    }

    fn kick(&mut self, queue: usize) {
        self.device.lock().unwrap().queue_notified(queue);
    }

    fn counters(&self) -> VirtioCounterSnapshot {
        self.device.lock().unwrap().counters().snapshot()
    }

    /// Runs the event loop for about `ms` milliseconds.
    fn pump_for(&mut self, ms: u64) {
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            self.manager.run_with_timeout(5).unwrap();
        }
    }

    /// Runs the event loop until the RX used ring has `n` new entries (5 s at most).
    fn pump_until_rx_used(&mut self, n: usize) -> Vec<(u32, u32)> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < end {
            self.manager.run_with_timeout(10).unwrap();
            got.extend(self.rx.take_used());
        }
        got
    }

    fn interrupts_pending(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }
}

/// An AF_PACKET socket bound to one interface: the wire's far end.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(if_index: u32) -> PacketSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) takes no pointers; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = if_index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the length we pass.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        PacketSocket(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame.len()` bytes from a live slice.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "AF_PACKET send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next incoming frame of our test ethertype within `ms` milliseconds.
    fn recv_test_frame(&self, ms: i32) -> Option<Vec<u8>> {
        let end = Instant::now() + Duration::from_millis(ms as u64);
        let mut buf = vec![0u8; 70000];
        loop {
            let left = end.saturating_duration_since(Instant::now()).as_millis() as i32;
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left) } <= 0 {
                return None;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: recvfrom writes at most buf.len() bytes into buf and at most from_len
            // bytes into `from`.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                continue;
            }
            let got = &buf[..n as usize];
            if from.sll_pkttype != libc::PACKET_OUTGOING
                && got.len() >= 14
                && got[12..14] == ETHERTYPE
            {
                return Some(got.to_vec());
            }
        }
    }
}

fn if_exists(name: &str) -> bool {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[test]
fn device_identity_and_config_space() {
    in_netns(|| {
        let tap = Tap::open("evcfg0", true).unwrap();
        let net = Net::new(tap, Some(GUEST_MAC)).unwrap();
        assert_eq!(net.device_type(), device_type::NET);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        let f = net.offered_features();
        assert_ne!(f & features::VERSION_1, 0);
        assert_ne!(f & VIRTIO_NET_F_MAC, 0);
        assert_ne!(f & (1 << 16), 0, "STATUS not offered");
        // No offloads: CSUM (0), GUEST_CSUM (1), GUEST/HOST TSO, MRG_RXBUF (15).
        for bit in [0, 1, 7, 8, 11, 12, 15] {
            assert_eq!(f & (1 << bit), 0, "feature bit {bit} offered");
        }
        let mut expected = GUEST_MAC.to_vec();
        expected.extend_from_slice(&[1, 0]);
        for size in [1usize, 2, 4, 8] {
            for offset in 0..12u64 {
                let mut data = vec![0xAA; size];
                net.read_config(offset, &mut data);
                for (i, b) in data.iter().enumerate() {
                    let want = expected.get(offset as usize + i).copied().unwrap_or(0);
                    assert_eq!(*b, want, "offset {offset} size {size} byte {i}");
                }
            }
        }

        let random = Net::new(Tap::open("evcfg1", true).unwrap(), None).unwrap();
        let mac = random.mac();
        assert_eq!(mac[0] & 0x03, 0x02, "random MAC {mac:02x?}");
        let mut data = [0u8; 6];
        random.read_config(0, &mut data);
        assert_eq!(data, mac);
    });
}

#[test]
fn tx_frame_reaches_the_tap_byte_for_byte() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evtx0");
        rig.activate();
        let sent = frame(PEER_MAC, GUEST_MAC, 1000, 3);
        // A header the driver was not allowed to send (GSO TCPv4, NEEDS_CSUM): the device
        // must not pass it on, or the kernel would refuse or mangle the frame.
        let mut hdr = [0u8; 12];
        hdr[0] = 1;
        hdr[1] = 1;
        hdr[4] = 0x40;
        mem.write_slice(&hdr, GuestAddress(DATA)).unwrap();
        // The frame split over three buffers, the last one in the second region.
        let (a, b) = sent.split_at(20);
        mem.write_slice(a, GuestAddress(DATA + 0x100)).unwrap();
        mem.write_slice(b, GuestAddress(REGION2 + 0x800)).unwrap();
        let head = rig.tx.add_chain(&[
            (DATA, 12, false),
            (DATA + 0x100, a.len() as u32, false),
            (REGION2 + 0x800, b.len() as u32, false),
        ]);
        rig.kick(TX_QUEUE);

        let got = rig.peer.recv_test_frame(2000).expect("no frame on the TAP");
        assert_eq!(got, sent);
        assert_eq!(rig.tx.take_used(), vec![(u32::from(head), 0)]);
        let c = rig.counters();
        assert_eq!((c.tx_packets, c.tx_bytes), (1, sent.len() as u64));
        assert_eq!(c.malformed_chains + c.io_errors, 0);
        assert!(rig.interrupts_pending() >= 1, "no used-ring interrupt");

        // A second frame, in one buffer with its header.
        let sent2 = frame([0xff; 6], GUEST_MAC, 46, 9);
        let mut buf = vec![0u8; 12];
        buf.extend_from_slice(&sent2);
        mem.write_slice(&buf, GuestAddress(DATA + 0x4000)).unwrap();
        rig.tx
            .add_chain(&[(DATA + 0x4000, buf.len() as u32, false)]);
        rig.kick(TX_QUEUE);
        assert_eq!(rig.peer.recv_test_frame(2000).as_deref(), Some(&sent2[..]));
        assert_eq!(rig.counters().tx_packets, 2);
    });
}

#[test]
fn injected_frame_reaches_the_guest_rx_buffer_with_a_header() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evrx0");
        rig.activate();
        // Junk where the header goes: the device must overwrite all of it.
        mem.write_slice(&[0xEE; 8], GuestAddress(DATA)).unwrap();
        mem.write_slice(&[0xEE; 64], GuestAddress(DATA + 0x1000))
            .unwrap();
        // The header spans the two buffers (8 + 4 bytes).
        let head = rig
            .rx
            .add_chain(&[(DATA, 8, true), (DATA + 0x1000, 2048, true)]);
        rig.kick(RX_QUEUE);
        rig.pump_for(20);
        rig.interrupts_pending();

        let sent = frame(GUEST_MAC, PEER_MAC, 200, 5);
        rig.peer.send(&sent);
        let used = rig.pump_until_rx_used(1);
        assert_eq!(used, vec![(u32::from(head), 12 + sent.len() as u32)]);
        let mut got = vec![0u8; 12 + sent.len()];
        mem.read_slice(&mut got[..8], GuestAddress(DATA)).unwrap();
        mem.read_slice(&mut got[8..], GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(&got[..10], &[0u8; 10], "flags/gso/csum fields not zero");
        assert_eq!(&got[10..12], &[1, 0], "num_buffers is not 1");
        assert_eq!(&got[12..], &sent[..]);
        let c = rig.counters();
        assert_eq!((c.rx_packets, c.rx_bytes), (1, sent.len() as u64));
        assert!(rig.interrupts_pending() >= 1, "no used-ring interrupt");
    });
}

#[test]
fn rx_without_buffers_does_not_spin_and_delivers_once_a_buffer_arrives() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evrx1");
        // Not active yet: a frame arriving now must not make the loop spin either.
        let early = frame(GUEST_MAC, PEER_MAC, 60, 1);
        rig.peer.send(&early);
        rig.pump_for(100);
        let before_activation = rig.tap_events.load(Ordering::SeqCst);
        assert!(
            before_activation <= 2,
            "{before_activation} TAP wake-ups while inactive: the loop spins"
        );

        rig.activate();
        rig.pump_for(50);
        let late = frame(GUEST_MAC, PEER_MAC, 80, 2);
        rig.peer.send(&late);
        rig.pump_for(250);
        let wakeups = rig.tap_events.load(Ordering::SeqCst);
        assert!(
            wakeups <= before_activation + 2,
            "{wakeups} TAP wake-ups without RX buffers: the loop spins"
        );
        assert!(!rig.device.lock().unwrap().rx_armed());
        assert_eq!(rig.counters().rx_packets, 0);

        // The guest posts one buffer and kicks: the first frame that waited arrives.
        let h1 = rig.rx.add_chain(&[(DATA, 2048, true)]);
        rig.kick(RX_QUEUE);
        let used = rig.pump_until_rx_used(1);
        assert_eq!(used, vec![(u32::from(h1), 12 + early.len() as u32)]);
        let mut got = vec![0u8; early.len()];
        mem.read_slice(&mut got, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(got, early);

        // Out of buffers again; the next buffer gets the second frame.
        let h2 = rig.rx.add_chain(&[(DATA + 0x1000, 2048, true)]);
        rig.kick(RX_QUEUE);
        let used = rig.pump_until_rx_used(1);
        assert_eq!(used, vec![(u32::from(h2), 12 + late.len() as u32)]);
        let mut got = vec![0u8; late.len()];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x1000 + 12))
            .unwrap();
        assert_eq!(got, late);
        assert_eq!(rig.counters().rx_packets, 2);

        // With a buffer posted in advance the TAP is watched again: a new frame arrives
        // without any further kick.
        let h3 = rig.rx.add_chain(&[(DATA + 0x2000, 2048, true)]);
        rig.kick(RX_QUEUE);
        rig.pump_for(20);
        let third = frame(GUEST_MAC, PEER_MAC, 90, 4);
        rig.peer.send(&third);
        let used = rig.pump_until_rx_used(1);
        assert_eq!(used, vec![(u32::from(h3), 12 + third.len() as u32)]);
    });
}

#[test]
fn hostile_tx_chains_are_refused_and_the_device_keeps_serving() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evtx1");
        rig.activate();
        let mut heads = Vec::new();
        // next index outside the queue
        heads.push(rig.tx.add_raw(&[(DATA, 64, F_NEXT, 200)]));
        // a loop: two descriptors pointing at each other
        let base = rig.tx.next_desc;
        heads.push(
            rig.tx
                .add_raw(&[(DATA, 64, F_NEXT, base + 1), (DATA, 64, F_NEXT, base)]),
        );
        // a buffer outside guest RAM
        heads.push(rig.tx.add_raw(&[(RAM_END + 0x1000, 64, 0, 0)]));
        // a buffer across the two memory regions
        heads.push(rig.tx.add_raw(&[(REGION2 - 32, 64, 0, 0)]));
        // a buffer whose end wraps around the address space
        heads.push(rig.tx.add_raw(&[(u64::MAX - 16, 64, 0, 0)]));
        // writable before readable
        let base = rig.tx.next_desc;
        heads.push(rig.tx.add_raw(&[
            (DATA, 64, F_WRITE | F_NEXT, base + 1),
            (DATA + 0x100, 64, 0, 0),
        ]));
        // an indirect descriptor (never offered)
        heads.push(rig.tx.add_raw(&[(DATA, 64, F_INDIRECT, 0)]));
        // oversize: 70000 bytes
        heads.push(
            rig.tx
                .add_chain(&[(DATA, 40000, false), (DATA + 40000, 30000, false)]),
        );
        // shorter than the header
        heads.push(rig.tx.add_chain(&[(DATA, 8, false)]));
        let refused = heads.len();

        let good = frame(PEER_MAC, GUEST_MAC, 300, 11);
        let mut buf = vec![0u8; 12];
        buf.extend_from_slice(&good);
        mem.write_slice(&buf, GuestAddress(DATA + 0x8_0000))
            .unwrap();
        let good_head = rig
            .tx
            .add_chain(&[(DATA + 0x8_0000, buf.len() as u32, false)]);
        rig.kick(TX_QUEUE);

        assert_eq!(rig.peer.recv_test_frame(2000).as_deref(), Some(&good[..]));
        let c = rig.counters();
        assert_eq!(c.malformed_chains, refused as u64);
        assert_eq!((c.tx_packets, c.tx_bytes), (1, good.len() as u64));
        let used = rig.tx.take_used();
        let mut expected: Vec<(u32, u32)> = heads.iter().map(|h| (u32::from(*h), 0)).collect();
        expected.push((u32::from(good_head), 0));
        assert_eq!(used, expected);
        // Nothing else went out: none of the refused chains leaked a frame.
        assert!(rig.peer.recv_test_frame(100).is_none());
    });
}

#[test]
fn hostile_rx_chains_are_refused_and_the_next_good_one_gets_the_frame() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evrx2");
        rig.activate();
        let mut heads = Vec::new();
        // a loop
        let base = rig.rx.next_desc;
        heads.push(rig.rx.add_raw(&[
            (DATA, 64, F_WRITE | F_NEXT, base + 1),
            (DATA, 64, F_WRITE | F_NEXT, base),
        ]));
        // writable buffer across regions
        heads.push(rig.rx.add_raw(&[(REGION2 - 8, 2048, F_WRITE, 0)]));
        // writable buffer outside RAM
        heads.push(rig.rx.add_raw(&[(RAM_END, 2048, F_WRITE, 0)]));
        // no room for the header
        heads.push(rig.rx.add_chain(&[(DATA, 4, true)]));
        // device-readable only
        heads.push(rig.rx.add_chain(&[(DATA, 2048, false)]));
        let good_head = rig.rx.add_chain(&[(DATA + 0x3000, 4096, true)]);
        rig.kick(RX_QUEUE);

        let sent = frame(GUEST_MAC, PEER_MAC, 500, 8);
        rig.peer.send(&sent);
        let used = rig.pump_until_rx_used(heads.len() + 1);
        let mut expected: Vec<(u32, u32)> = heads.iter().map(|h| (u32::from(*h), 0)).collect();
        expected.push((u32::from(good_head), 12 + sent.len() as u32));
        assert_eq!(used, expected);
        let mut got = vec![0u8; sent.len()];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x3000 + 12))
            .unwrap();
        assert_eq!(got, sent);
        let c = rig.counters();
        assert_eq!(c.malformed_chains, heads.len() as u64);
        assert_eq!(c.rx_packets, 1);
    });
}

#[test]
fn a_frame_larger_than_the_rx_buffer_is_dropped_and_the_buffer_reused() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evrx3");
        rig.activate();
        let head = rig.rx.add_chain(&[(DATA, 12 + 100, true)]);
        rig.kick(RX_QUEUE);
        rig.pump_for(20);
        let big = frame(GUEST_MAC, PEER_MAC, 400, 1);
        rig.peer.send(&big);
        rig.pump_for(200);
        let small = frame(GUEST_MAC, PEER_MAC, 50, 2);
        rig.peer.send(&small);
        let used = rig.pump_until_rx_used(1);
        assert_eq!(used, vec![(u32::from(head), 12 + small.len() as u32)]);
        let mut got = vec![0u8; small.len()];
        mem.read_slice(&mut got, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(got, small);
        let c = rig.counters();
        assert_eq!(c.rx_packets, 1);
        assert_eq!(c.dropped_no_buffer, 1, "the oversize frame was not counted");
        assert_eq!(c.io_errors, 0);
    });
}

#[test]
fn a_created_tap_disappears_with_the_device_and_an_existing_one_stays() {
    in_netns(|| {
        let tap = Tap::open("evlife0", true).unwrap();
        assert!(tap.created());
        assert!(if_exists("evlife0"));
        // Single queue: a second opener is refused with a clear error.
        match Tap::open("evlife0", false) {
            Err(e @ TapError::Busy { .. }) => assert!(e.to_string().contains("evlife0")),
            other => panic!("expected Busy, got {other:?}"),
        }
        let net = Net::new(tap, None).unwrap();
        drop(net);
        assert!(!if_exists("evlife0"), "the created TAP outlived the device");

        // A persistent TAP made by "the administrator" is used and left in place.
        make_persistent_tap("evkeep0");
        let tap = Tap::open("evkeep0", false).unwrap();
        assert!(!tap.created());
        drop(Net::new(tap, None).unwrap());
        assert!(if_exists("evkeep0"), "an existing TAP was removed");
    });
}

#[test]
fn bad_taps_are_refused_with_one_clear_sentence() {
    in_netns(|| {
        match Tap::open("evnone0", false) {
            Err(e @ TapError::Missing { .. }) => {
                assert!(e.to_string().contains("\"evnone0\" does not exist"))
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(!if_exists("evnone0"), "a missing TAP was created anyway");
        match Tap::open("lo", true) {
            Err(e @ TapError::NotATap { .. }) => {
                assert!(e.to_string().contains("\"lo\" exists but is not a TAP"))
            }
            other => panic!("expected NotATap, got {other:?}"),
        }
        assert!(matches!(
            Tap::open("a-name-of-16-chr", true),
            Err(TapError::NameTooLong { len: 16, .. })
        ));
    });
}

fn make_persistent_tap(name: &str) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF on our tun descriptor with a valid, exclusively borrowed ifreq.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    // SAFETY: TUNSETPERSIST takes its argument by value.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    assert_eq!(rc, 0, "TUNSETPERSIST: {}", std::io::Error::last_os_error());
}

/// Writes a 32-bit transport register.
fn reg_write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn reg_read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Waits (5 s at most) for `n` new used entries of `q`, while another thread serves it.
fn wait_used(q: &mut GuestQueue, n: usize) -> Vec<(u32, u32)> {
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < end {
        got.extend(q.take_used());
        std::thread::sleep(Duration::from_millis(2));
    }
    got
}

#[test]
fn driven_through_the_mmio_transport_and_the_real_event_loop() {
    in_netns(|| {
        let mem = memory();
        let tap = Tap::open("evmmio0", true).unwrap();
        let peer = PacketSocket::bind(tap.if_index());
        let net: Arc<Mutex<dyn VirtioDevice>> =
            Arc::new(Mutex::new(Net::new(tap, Some(GUEST_MAC)).unwrap()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(net, mem.clone(), irq.try_clone().unwrap()).unwrap();
        let subscriber = DeviceSubscriber::new(&t).unwrap();
        let mut event_loop = EventLoop::spawn(vec![subscriber], Box::new(|| Ok(()))).unwrap();
        let mut rx = GuestQueue::new(&mem, RX_RING);
        let mut tx = GuestQueue::new(&mem, TX_RING);

        assert_eq!(reg_read(&mut t, 0x08), device_type::NET);
        let mut mac = [0u8; 6];
        t.read(0x100, &mut mac);
        assert_eq!(mac, GUEST_MAC);
        reg_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            reg_write(&mut t, 0x14, sel);
            offered |= u64::from(reg_read(&mut t, 0x10)) << (32 * sel);
            reg_write(&mut t, 0x24, sel);
            reg_write(&mut t, 0x20, (offered >> (32 * sel)) as u32);
        }
        assert_ne!(offered & features::RING_EVENT_IDX, 0);
        let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        reg_write(&mut t, 0x70, st);
        assert_ne!(reg_read(&mut t, 0x70) & status::FEATURES_OK, 0);
        for (index, q) in [&rx, &tx].into_iter().enumerate() {
            reg_write(&mut t, 0x30, index as u32);
            assert_eq!(reg_read(&mut t, 0x34), 256);
            reg_write(&mut t, 0x38, u32::from(QSIZE));
            for (reg, addr) in [
                (0x80, q.mock.desc_table_addr().0),
                (0x90, q.mock.avail_addr().0),
                (0xa0, q.used.0),
            ] {
                reg_write(&mut t, reg, addr as u32);
                reg_write(&mut t, reg + 4, (addr >> 32) as u32);
            }
            reg_write(&mut t, 0x44, 1);
        }
        reg_write(&mut t, 0x70, st | status::DRIVER_OK);
        assert_ne!(reg_read(&mut t, 0x70) & status::DRIVER_OK, 0);

        // Guest to wire, kicked through QueueNotify.
        for round in 0..20u8 {
            let sent = frame(PEER_MAC, GUEST_MAC, 60 + usize::from(round), round);
            let mut buf = vec![0u8; 12];
            buf.extend_from_slice(&sent);
            let at = DATA + 0x1000 * u64::from(round);
            mem.write_slice(&buf, GuestAddress(at)).unwrap();
            tx.add_chain(&[(at, buf.len() as u32, false)]);
            reg_write(&mut t, 0x50, TX_QUEUE as u32);
            assert_eq!(peer.recv_test_frame(2000), Some(sent), "round {round}");
            assert_eq!(wait_used(&mut tx, 1).len(), 1);
        }

        // Wire to guest, more rounds than the queue has entries (the ring wraps).
        for round in 0..40u8 {
            let at = 0x8_0000 + 0x1000 * u64::from(round % 16);
            // Two descriptors per chain, so heads and ring slots wrap at different rounds.
            let head = rx.add_chain(&[(at, 12, true), (at + 12, 2036, true)]);
            reg_write(&mut t, 0x50, RX_QUEUE as u32);
            let sent = frame(GUEST_MAC, PEER_MAC, 100 + usize::from(round), round);
            peer.send(&sent);
            let used = wait_used(&mut rx, 1);
            assert_eq!(
                used,
                vec![(u32::from(head), 12 + sent.len() as u32)],
                "round {round}"
            );
            let mut got = vec![0u8; sent.len()];
            mem.read_slice(&mut got, GuestAddress(at + 12)).unwrap();
            assert_eq!(got, sent, "round {round}");
        }
        let c = t.counters().snapshot();
        assert_eq!((c.tx_packets, c.rx_packets), (20, 40));
        assert_eq!(c.malformed_chains + c.io_errors + c.dropped_no_buffer, 0);
        assert!(c.kicks >= 20, "kicks {}", c.kicks);
        assert!(
            irq.read().unwrap_or(0) >= 1,
            "no interrupt reached the irqfd"
        );

        // Reset, stop the loop, drop the transport: the TAP we created is gone.
        reg_write(&mut t, 0x70, 0);
        event_loop.stop();
        drop(t);
        assert!(!if_exists("evmmio0"), "the created TAP outlived the VM");
    });
}

#[test]
fn a_tap_deleted_under_the_device_takes_the_link_down_without_spinning() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evgone0");
        rig.activate();
        rig.rx.add_chain(&[(DATA, 2048, true)]);
        rig.kick(RX_QUEUE);
        rig.pump_for(20);
        let mut link = [0u8; 2];
        rig.device.lock().unwrap().read_config(6, &mut link);
        assert_eq!(link, [1, 0], "link not up at start");

        let out = std::process::Command::new("ip")
            .args(["link", "del", "evgone0"])
            .output()
            .expect("run ip (iproute2)");
        assert!(out.status.success(), "ip link del: {out:?}");
        rig.pump_for(300);
        let wakeups = rig.tap_events.load(Ordering::SeqCst);
        assert!(
            wakeups <= 3,
            "{wakeups} TAP wake-ups after hang-up: the loop spins"
        );
        rig.device.lock().unwrap().read_config(6, &mut link);
        assert_eq!(link, [0, 0], "link still up after the TAP went away");
        assert!(rig.counters().io_errors >= 1);

        // The guest keeps sending: frames are dropped and counted, chains still complete.
        let mut buf = vec![0u8; 12];
        buf.extend_from_slice(&frame(PEER_MAC, GUEST_MAC, 60, 0));
        mem.write_slice(&buf, GuestAddress(DATA + 0x4000)).unwrap();
        let head = rig
            .tx
            .add_chain(&[(DATA + 0x4000, buf.len() as u32, false)]);
        rig.kick(TX_QUEUE);
        assert_eq!(rig.tx.take_used(), vec![(u32::from(head), 0)]);
        assert_eq!(rig.counters().tx_packets, 0);
    });
}

#[test]
fn tx_chain_size_limit_is_exact() {
    in_netns(|| {
        let mem = memory();
        let mut rig = Rig::new(&mem, "evtx2");
        rig.activate();
        let max = devices::virtio::net::MAX_CHAIN_BYTES as usize;
        // The largest chain accepted: header + 65550-byte frame, over two buffers.
        let big = frame(PEER_MAC, GUEST_MAC, max - 12 - 14, 21);
        let mut buf = vec![0u8; 12];
        buf.extend_from_slice(&big);
        mem.write_slice(&buf, GuestAddress(DATA)).unwrap();
        rig.tx.add_chain(&[
            (DATA, 40000, false),
            (DATA + 40000, (max - 40000) as u32, false),
        ]);
        rig.kick(TX_QUEUE);
        assert_eq!(
            rig.peer.recv_test_frame(2000).map(|f| f.len()),
            Some(big.len())
        );
        // One byte more is refused.
        rig.tx.add_chain(&[(DATA, max as u32 + 1, false)]);
        rig.kick(TX_QUEUE);
        assert!(rig.peer.recv_test_frame(200).is_none());
        let c = rig.counters();
        assert_eq!((c.tx_packets, c.malformed_chains), (1, 1));
    });
}
