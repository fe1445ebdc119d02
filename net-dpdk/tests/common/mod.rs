//! Test harness: a real dpdk-testpmd, hugepages, memfd guest memory and a minimal virtio
//! driver that builds split virtqueues by hand.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::{Activation, Interrupt, VirtioCounters, VirtioDevice};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use net_dpdk::VhostUserNet;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

/// 2 MiB hugepages reserved for testpmd, restored on drop.
pub struct Hugepages {
    before: String,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl Hugepages {
    /// Makes sure `pages` 2 MiB pages are free: the pool grows by what is missing (pages
    /// other users hold stay theirs) and goes back to its old size on drop.
    pub fn reserve(pages: u64) -> Hugepages {
        let before = std::fs::read_to_string(NR_HUGEPAGES)
            .expect("read /proc/sys/vm/nr_hugepages (tests run as root)");
        let total: u64 = before.trim().parse().unwrap_or(0);
        let free = free_hugepages();
        if free < pages {
            let want = total + (pages - free);
            std::fs::write(NR_HUGEPAGES, want.to_string())
                .expect("reserve 2 MiB hugepages (tests run as root)");
            assert!(
                free_hugepages() >= pages,
                "asked the kernel for {want} hugepages but fewer than {pages} are free: not enough contiguous memory"
            );
        }
        Hugepages { before }
    }
}

/// HugePages_Free of /proc/meminfo (the default 2 MiB pool).
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.before.trim());
    }
}

/// A running dpdk-testpmd in interactive io-forward mode.
pub struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    log: PathBuf,
    /// Ports 0 and 1's vhost-user sockets, which testpmd's vhost lines name.
    sockets: [PathBuf; 2],
}

/// One port's counters from `show port stats all`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Testpmd {
    /// Starts testpmd with two vhost-user ports (`vdev_extra` e.g. ",client=1").
    pub fn start(dir: &Path, sockets: [&Path; 2], vdev_extra: &str, tag: &str) -> Testpmd {
        let log = dir.join(format!("testpmd-{tag}.log"));
        let out = File::create(&log).expect("create the testpmd log");
        let err = out.try_clone().expect("clone the log fd");
        // One queue pair unless `vdev_extra` names its own queues=.
        let queues = if vdev_extra.contains("queues=") {
            ""
        } else {
            ",queues=1"
        };
        let vdev = |i: usize| {
            format!(
                "net_vhost{i},iface={}{queues}{vdev_extra}",
                sockets[i].display()
            )
        };
        // stdbuf: testpmd printf()s its answers, and stdout into a file is block-buffered.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", "dpdk-testpmd"])
            .args(["-l", "0-1", "--no-pci", "--in-memory"])
            .args(["--file-prefix", &format!("edgevisor-{tag}")])
            .args(["--vdev", &vdev(0), "--vdev", &vdev(1)])
            .args(["--", "-i", "--total-num-mbufs=16384", "--forward-mode=io"])
            // --no-flush-rx: by default starting to forward first drains and frees whatever
            // waits in the RX queues, which would be frames a device sent as soon as its
            // rings were handed over (a reconnecting device can be faster than the start).
            .args(["--auto-start", "--no-flush-rx"])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect(
                "run dpdk-testpmd (package dpdk-dev; scripts/install-test-deps.sh installs it)",
            );
        let stdin = child.stdin.take().expect("testpmd stdin");
        let pmd = Testpmd {
            child,
            stdin,
            log,
            sockets: sockets.map(Path::to_path_buf),
        };
        if sockets_expected(vdev_extra) {
            for s in sockets {
                wait_until(Duration::from_secs(30), || s.exists()).unwrap_or_else(|| {
                    panic!("testpmd never created {}: {}", s.display(), pmd.log_text())
                });
            }
        }
        pmd
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` until testpmd reports each port's rings ready for processing.
    pub fn both_ports_ready(&self, limit: Duration) -> bool {
        wait_until(limit, || {
            let log = self.log_text();
            self.sockets.iter().all(|s| {
                log.contains(&format!(
                    "({}) virtio is now ready for processing",
                    s.display()
                ))
            })
        })
        .is_some()
    }

    /// Asks for `show port stats all` and parses the answer for `ports` ports.
    pub fn port_stats(&mut self, ports: usize) -> Vec<PortStats> {
        let before = self.log_text().len();
        writeln!(self.stdin, "show port stats all").expect("write to testpmd");
        self.stdin.flush().expect("flush testpmd stdin");
        let mut text = String::new();
        let got = wait_until(Duration::from_secs(10), || {
            let log = self.log_text();
            text = log.get(before..).unwrap_or("").to_string();
            text.matches("Throughput (since last show)").count() >= ports
        });
        assert!(
            got.is_some(),
            "testpmd did not print its port stats: {text}"
        );
        parse_stats(&text, ports)
    }

    /// Kills testpmd (as a crashing back end would die) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let quit = wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if quit.is_none() {
            self.kill();
        }
    }
}

fn sockets_expected(vdev_extra: &str) -> bool {
    !vdev_extra.contains("client=1")
}

fn field(line: &str, name: &str) -> Option<u64> {
    let rest = &line[line.find(name)? + name.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Parses testpmd's `NIC statistics for port N` blocks.
pub fn parse_stats(text: &str, ports: usize) -> Vec<PortStats> {
    let mut stats = vec![PortStats::default(); ports];
    let mut port: Option<usize> = None;
    for line in text.lines() {
        if let Some(at) = line.find("NIC statistics for port") {
            port = line[at + "NIC statistics for port".len()..]
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok());
            continue;
        }
        let Some(p) = port.filter(|p| *p < ports) else {
            continue;
        };
        if let Some(v) = field(line, "RX-packets:") {
            stats[p].rx_packets = v;
        }
        if let Some(v) = field(line, "RX-bytes:") {
            stats[p].rx_bytes = v;
        }
        if let Some(v) = field(line, "TX-packets:") {
            stats[p].tx_packets = v;
        }
        if let Some(v) = field(line, "TX-bytes:") {
            stats[p].tx_bytes = v;
        }
    }
    stats
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Guest RAM in a memfd, mapped shared (as `--mem SIZE,shared=on` does).
pub fn shared_memory(size: usize) -> GuestMemoryMmap {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"edgevisor-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).expect("size the memfd");
    let region = MmapRegion::from_file(FileOffset::new(file, 0), size).expect("map the memfd");
    let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("guest region");
    GuestMemoryMmap::from_regions(vec![region]).expect("guest memory")
}

/// Guest RAM that is not shared (anonymous).
pub fn private_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

pub const BUF_SIZE: u64 = 2048;

/// The driver's side of one split virtqueue, laid out at `base`.
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub buffers: u64,
    next: u16,
}

impl DriverQueue {
    pub fn new(base: u64, size: u16) -> DriverQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let buffers = (used + 6 + 8 * u64::from(size) + 4095) & !4095;
        DriverQueue {
            size,
            desc,
            avail,
            used,
            buffers,
            next: 0,
        }
    }

    /// The device-side queue the transport would have configured.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    pub fn buffer_addr(&self, id: u16) -> u64 {
        self.buffers + u64::from(id) * BUF_SIZE
    }

    /// Posts one single-descriptor buffer; `data` is copied in for TX, `None` makes it a
    /// writable RX buffer.
    pub fn post(&mut self, mem: &GuestMemoryMmap, data: Option<&[u8]>) -> u16 {
        let id = self.next % self.size;
        let addr = self.buffer_addr(id);
        let (len, flags) = match data {
            Some(bytes) => {
                mem.write_slice(bytes, GuestAddress(addr))
                    .expect("write tx buffer");
                (bytes.len() as u32, 0u16)
            }
            None => (BUF_SIZE as u32, 2u16), // VIRTQ_DESC_F_WRITE
        };
        let d = self.desc + 16 * u64::from(id);
        mem.write_obj(addr, GuestAddress(d)).expect("desc addr");
        mem.write_obj(len, GuestAddress(d + 8)).expect("desc len");
        mem.write_obj(flags, GuestAddress(d + 12))
            .expect("desc flags");
        mem.write_obj(0u16, GuestAddress(d + 14))
            .expect("desc next");
        let slot = self.avail + 4 + 2 * u64::from(id);
        mem.write_obj(id, GuestAddress(slot)).expect("avail slot");
        self.next = self.next.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.next, GuestAddress(self.avail + 2))
            .expect("avail idx");
        id
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.read_obj(GuestAddress(self.used + 2)).expect("used idx")
    }

    /// The used element at ring position `n`: (descriptor id, bytes written).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (id, len)
    }
}

/// One "guest": its memory, its driver queues and the activated device.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub rx: DriverQueue,
    pub tx: DriverQueue,
    pub kicks: Vec<Arc<EventFd>>,
    pub interrupt: Arc<Interrupt>,
    pub device: Arc<Mutex<VhostUserNet>>,
}

pub const QSIZE: u16 = 256;

impl Guest {
    pub fn activate(mut device: VhostUserNet, mem: GuestMemoryMmap, acked: u64) -> Guest {
        let rx = DriverQueue::new(0x10_0000, QSIZE);
        let tx = DriverQueue::new(0x80_0000, QSIZE);
        let kicks: Vec<Arc<EventFd>> = (0..2)
            .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")))
            .collect();
        let interrupt = Arc::new(Interrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            Arc::new(VirtioCounters::default()),
        ));
        device
            .activate(Activation {
                mem: mem.clone(),
                queues: vec![rx.queue(), tx.queue()],
                acked_features: acked,
                interrupt: interrupt.clone(),
                queue_events: kicks.clone(),
            })
            .expect("activate the vhost-user device");
        Guest {
            mem,
            rx,
            tx,
            kicks,
            interrupt,
            device: Arc::new(Mutex::new(device)),
        }
    }

    pub fn kick(&self, queue: usize) {
        self.kicks[queue].write(1).expect("kick");
    }
}

/// Forwards a device's back-end events, as the VMM's event loop does.
pub struct Forwarder(pub Arc<Mutex<VhostUserNet>>);

impl MutEventSubscriber for Forwarder {
    fn init(&mut self, ops: &mut EventOps) {
        let list = self.0.lock().expect("device lock").backend_events();
        for (fd, data, set) in list {
            ops.add(Events::with_data_raw(fd, data, set))
                .expect("watch a back-end event");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0
            .lock()
            .expect("device lock")
            .backend_event(events, ops);
    }
}

pub type Manager = EventManager<Box<dyn MutEventSubscriber + Send>>;

pub fn event_loop(guests: &[&Guest]) -> Manager {
    let mut manager: Manager = EventManager::new().expect("event manager");
    for g in guests {
        manager.add_subscriber(Box::new(Forwarder(g.device.clone())));
    }
    manager
}

/// Runs the loop until `cond` holds or `limit` passes.
pub fn pump(manager: &mut Manager, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        let _ = manager.run_with_timeout(20);
    }
    cond()
}

/// An Ethernet frame behind a zeroed 12-byte virtio-net header.
pub fn frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < 12 + len {
        f.push((f.len() as u32 ^ seq) as u8);
    }
    f
}
