//! The test rig for the virtio-vsock tests: a guest driver made of virtio-queue's mock
//! rings, the device under a real event-manager loop, and host-side helpers.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::mmio::MmioTransport;
use devices::virtio::vsock::conn::CONN_BUF_ALLOC;
use devices::virtio::vsock::muxer::FIRST_LOCAL_PORT;
use devices::virtio::vsock::packet::{op, Header, HDR_LEN, TYPE_STREAM};
use devices::virtio::vsock::{Vsock, RX_QUEUE, TX_QUEUE};
use devices::virtio::{Activation, Interrupt, VirtioCounterSnapshot, VirtioDevice};
use devices::BusDevice;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

pub const QSIZE: u16 = 32;
pub const RX_RING: u64 = 0x0;
pub const TX_RING: u64 = 0x4000;
pub const EV_RING: u64 = 0x8000;
/// Used rings sit this far from their queue's base (apart from the mock's available ring).
pub const USED_OFFSET: u64 = 0x1000;
/// RX buffer of descriptor slot `s`: `RX_BUFS + s * STRIDE`, [`RX_BUF_LEN`] bytes.
pub const RX_BUFS: u64 = 0x1_0000;
/// TX header of slot `s` at `TX_BUFS + s * STRIDE`, payload 0x40 further.
pub const TX_BUFS: u64 = 0x5_0000;
pub const STRIDE: u64 = 0x2000;
/// What a Linux guest posts: header plus 4 KiB.
pub const RX_BUF_LEN: u32 = HDR_LEN as u32 + 4096;
/// Largest payload one of our TX slots holds.
pub const TX_MAX_PAYLOAD: usize = 0x1fc0;
/// Guest RAM: two adjacent regions, [0, 1 MiB) and [1 MiB, 2 MiB).
pub const REGION2: u64 = 0x10_0000;
pub const RAM_END: u64 = 0x20_0000;

pub const GUEST_CID: u64 = 3;
pub const HOST_CID: u64 = 2;
/// RX buffers the guest keeps posted.
pub const RX_POSTED: usize = 16;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION2 as usize),
        (GuestAddress(REGION2), (RAM_END - REGION2) as usize),
    ])
    .unwrap()
}

/// A private directory for one test's sockets, removed afterwards.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ev-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// One queue as the driver sees it.
pub struct GuestQueue<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub mock: MockSplitQueue<'a, GuestMemoryMmap>,
    pub used: GuestAddress,
    pub next_desc: u16,
    pub used_seen: u16,
}

impl<'a> GuestQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, at: u64) -> GuestQueue<'a> {
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

    pub fn queue(&self) -> Queue {
        let mut q = self.mock.create_queue::<Queue>().unwrap();
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q
    }

    /// Where the next chain of `n` descriptors will start.
    pub fn next_head(&self, n: usize) -> u16 {
        if self.next_desc as usize + n > QSIZE as usize {
            0
        } else {
            self.next_desc
        }
    }

    /// Publishes raw descriptors (flags and `next` exactly as given) at consecutive table
    /// slots from [`GuestQueue::next_head`]; returns the head index.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_head(descs.len());
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            self.mock.desc_table().store(head + i as u16, raw).unwrap();
        }
        let avail = self.mock.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let slot = avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
        self.next_desc = head + descs.len() as u16;
        head
    }

    /// Publishes a well-formed chain of `(addr, len, writable)` buffers.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let base = self.next_head(bufs.len());
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
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let used = self.used;
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(self.used_seen % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Forwards back-end events to the device.
pub struct Harness {
    pub device: Arc<Mutex<Vsock>>,
}

impl MutEventSubscriber for Harness {
    fn init(&mut self, ops: &mut EventOps) {
        let events = self.device.lock().unwrap().backend_events();
        assert_eq!(
            events.len(),
            1,
            "the device must expose exactly one back-end fd"
        );
        for (fd, data, set) in events {
            ops.add(Events::with_data_raw(fd, data, set)).unwrap();
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.device.lock().unwrap().backend_event(events, ops);
    }
}

/// A packet the guest received.
#[derive(Debug, Clone)]
pub struct Packet {
    pub hdr: Header,
    pub data: Vec<u8>,
}

/// A device, its event loop, and the guest's view of its queues.
pub struct Rig<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub device: Arc<Mutex<Vsock>>,
    pub manager: EventManager<Harness>,
    pub irq: EventFd,
    pub rx: GuestQueue<'a>,
    pub tx: GuestQueue<'a>,
    pub ev: GuestQueue<'a>,
    pub received: VecDeque<Packet>,
    pub uds: PathBuf,
}

impl<'a> Rig<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, dir: &TempDir, max_connections: Option<usize>) -> Rig<'a> {
        let uds = dir.path("v.sock");
        let dev = match max_connections {
            Some(cap) => Vsock::with_max_connections(GUEST_CID, uds.clone(), cap),
            None => Vsock::new(GUEST_CID, uds.clone()),
        }
        .unwrap();
        let device = Arc::new(Mutex::new(dev));
        let mut manager = EventManager::new().unwrap();
        manager.add_subscriber(Harness {
            device: device.clone(),
        });
        let mut rig = Rig {
            mem,
            device,
            manager,
            irq: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            rx: GuestQueue::new(mem, RX_RING),
            tx: GuestQueue::new(mem, TX_RING),
            ev: GuestQueue::new(mem, EV_RING),
            received: VecDeque::new(),
            uds,
        };
        rig.activate();
        for _ in 0..RX_POSTED {
            rig.post_rx();
        }
        rig.kick(RX_QUEUE);
        rig
    }

    pub fn activate(&mut self) {
        self.ev.add_chain(&[(0x9_0000, 8, true)]);
        let mut dev = self.device.lock().unwrap();
        let interrupt = Arc::new(Interrupt::new(
            self.irq.try_clone().unwrap(),
            dev.counters(),
        ));
        let activation = Activation {
            mem: self.mem.clone(),
            queues: vec![self.rx.queue(), self.tx.queue(), self.ev.queue()],
            acked_features: dev.offered_features(),
            interrupt,
            queue_events: Vec::new(),
        };
        dev.activate(activation).unwrap();
    }

    pub fn post_rx(&mut self) {
        let slot = self.rx.next_head(1);
        self.rx
            .add_chain(&[(RX_BUFS + u64::from(slot) * STRIDE, RX_BUF_LEN, true)]);
    }

    pub fn kick(&mut self, queue: usize) {
        self.device.lock().unwrap().queue_notified(queue);
    }

    pub fn counters(&self) -> VirtioCounterSnapshot {
        self.device.lock().unwrap().counters().snapshot()
    }

    pub fn connections(&self) -> usize {
        self.device.lock().unwrap().connection_count()
    }

    /// Publishes a TX packet without kicking; returns its head.
    pub fn queue_tx(&mut self, hdr: Header, payload: &[u8]) -> u16 {
        assert!(payload.len() <= TX_MAX_PAYLOAD);
        let n = if payload.is_empty() { 1 } else { 2 };
        let slot = self.tx.next_head(n);
        let at = TX_BUFS + u64::from(slot) * STRIDE;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        if payload.is_empty() {
            return self.tx.add_chain(&[(at, HDR_LEN as u32, false)]);
        }
        self.mem
            .write_slice(payload, GuestAddress(at + 0x40))
            .unwrap();
        self.tx.add_chain(&[
            (at, HDR_LEN as u32, false),
            (at + 0x40, payload.len() as u32, false),
        ])
    }

    /// Sends one packet from the guest and checks it went back to the used ring.
    pub fn send(&mut self, hdr: Header, payload: &[u8]) {
        let head = self.queue_tx(hdr, payload);
        self.kick(TX_QUEUE);
        assert_eq!(self.tx.take_used(), vec![(u32::from(head), 0)]);
    }

    /// Runs the event loop once (up to `ms`) and collects what reached the RX ring,
    /// re-posting a buffer for each.
    pub fn pump(&mut self, ms: i32) {
        self.manager.run_with_timeout(ms).unwrap();
        let used = self.rx.take_used();
        for &(id, len) in &used {
            assert!(len as usize >= HDR_LEN, "RX packet of {len} bytes");
            let at = GuestAddress(RX_BUFS + u64::from(id) * STRIDE);
            let mut h = [0u8; HDR_LEN];
            self.mem.read_slice(&mut h, at).unwrap();
            let hdr = Header::from_bytes(&h);
            assert_eq!(
                hdr.len as usize,
                len as usize - HDR_LEN,
                "used len vs header"
            );
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, at.unchecked_add(HDR_LEN as u64))
                .unwrap();
            self.received.push_back(Packet { hdr, data });
        }
        for _ in &used {
            self.post_rx();
        }
        if !used.is_empty() {
            self.kick(RX_QUEUE);
        }
    }

    /// The next packet for the guest (3 s at most).
    pub fn expect(&mut self) -> Packet {
        let end = Instant::now() + Duration::from_secs(3);
        while self.received.is_empty() && Instant::now() < end {
            self.pump(10);
        }
        self.received
            .pop_front()
            .expect("no packet reached the guest")
    }

    /// Asserts nothing reaches the guest for `ms` milliseconds.
    pub fn expect_nothing(&mut self, ms: u64) {
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            self.pump(5);
        }
        assert!(
            self.received.is_empty(),
            "unexpected packets: {:?}",
            self.received
        );
    }

    /// A host process connects and asks for guest port `port`; the guest sees the REQUEST
    /// and answers RESPONSE advertising `buf_alloc`. Returns the stream and the host port.
    pub fn host_connect(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let req = self.expect();
        assert_eq!(req.hdr.op, op::REQUEST, "{req:?}");
        assert_eq!((req.hdr.src_cid, req.hdr.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(req.hdr.dst_port, port);
        assert_eq!(req.hdr.kind, TYPE_STREAM);
        assert_eq!(req.hdr.buf_alloc, CONN_BUF_ALLOC);
        assert!(req.hdr.src_port >= FIRST_LOCAL_PORT);
        let host_port = req.hdr.src_port;
        self.send(guest_hdr(port, host_port, op::RESPONSE, buf_alloc, 0), &[]);
        let want = format!("OK {host_port}\n");
        let mut line = vec![0u8; want.len()];
        self.pump(5);
        host.read_exact(&mut line).unwrap();
        assert_eq!(String::from_utf8_lossy(&line), want);
        (host, host_port)
    }
}

/// A header from the guest's `src_port` to host port `dst_port`.
pub fn guest_hdr(src_port: u32, dst_port: u32, op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

pub fn rw(src_port: u32, dst_port: u32, len: usize, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        len: len as u32,
        ..guest_hdr(src_port, dst_port, op::RW, buf_alloc, fwd_cnt)
    }
}

/// Reads exactly `n` bytes from the host stream while the event loop runs.
pub fn host_read(rig: &mut Rig, host: &mut UnixStream, n: usize) -> Vec<u8> {
    host.set_nonblocking(true).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 65536];
    let end = Instant::now() + Duration::from_secs(5);
    while out.len() < n && Instant::now() < end {
        match host.read(&mut buf[..(n - out.len()).min(65536)]) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => rig.pump(5),
            Err(e) => panic!("host read: {e}"),
        }
    }
    host.set_nonblocking(false).unwrap();
    out
}

/// Whether the device closed the host stream (end of stream, or a reset when it closed with
/// bytes unread), within 3 s of running the event loop.
pub fn host_sees_eof(rig: &mut Rig, host: &mut UnixStream) -> bool {
    host.set_nonblocking(true).unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    let mut b = [0u8; 64];
    let closed = loop {
        match host.read(&mut b) {
            Ok(0) => break true,
            Ok(_) => break false,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => rig.pump(5),
            Err(_) => break false,
        }
    };
    host.set_nonblocking(false).unwrap();
    closed
}

pub fn reg_write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

pub fn reg_read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Waits (5 s at most) for one new used entry of `q`, while the event-loop thread serves it.
pub fn wait_one_used(q: &mut GuestQueue) -> (u32, u32) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(&first) = q.take_used().first() {
            return first;
        }
        assert!(Instant::now() < end, "nothing reached the used ring");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads the RX packet the device put in slot `id`.
pub fn read_rx(mem: &GuestMemoryMmap, (id, len): (u32, u32)) -> Packet {
    let at = GuestAddress(RX_BUFS + u64::from(id) * STRIDE);
    let mut h = [0u8; HDR_LEN];
    mem.read_slice(&mut h, at).unwrap();
    let hdr = Header::from_bytes(&h);
    assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
    let mut data = vec![0u8; hdr.len as usize];
    mem.read_slice(&mut data, at.unchecked_add(HDR_LEN as u64))
        .unwrap();
    Packet { hdr, data }
}
