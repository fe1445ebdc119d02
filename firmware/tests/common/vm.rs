//! A minimal KVM VM for the probe: one vCPU entered as docs/GUEST_INTERFACE.md says,
//! port I/O handled here (COM1, RTC, boot timer, the exit devices), run until the
//! guest ends itself, on a thread with a wall-clock limit.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{kvm_cpuid_entry2, kvm_dtable, kvm_segment, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{prepare, BootSpec, EntryMode, EntryRegs, GDT_ADDR, IDT_ADDR, PML4_ADDR};

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// 16-bit write with SLP_EN to PM1a_CNT (0x604): the value written.
    PowerOff(u16),
    /// 0xFE to the i8042 command port.
    Reset,
    /// A write with bit 0 set to pvpanic (0x505): the value.
    Panic(u8),
    /// A byte written to isa-debug-exit (0x501).
    DebugExit(u8),
    /// KVM_EXIT_SHUTDOWN.
    TripleFault,
    /// KVM_EXIT_HLT (no in-kernel irqchip here, so every hlt exits).
    Halted,
    /// KVM_EXIT_INTERNAL_ERROR, with RIP and the bytes there.
    InternalError { rip: u64, bytes: Vec<u8> },
    /// Anything else that stopped the run loop.
    Other(String),
}

/// What a boot produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub serial: String,
    pub exit: GuestExit,
    /// Values written to the boot timer port 0x440, in order.
    pub timer_stamps: Vec<u8>,
    /// Reads of the COM1 line status register, to check the probe polls it.
    pub lsr_reads: usize,
}

impl Outcome {
    pub fn lines(&self) -> Vec<&str> {
        self.serial.lines().collect()
    }
}

/// Wall-clock limit for one boot; the guest runs in KVM's emulator, slowly.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Guard against a guest that keeps exiting without ending.
const MAX_EXITS: u64 = 20_000_000;

const EINTR: i32 = 4;
const EAGAIN: i32 = 11;

/// Boot the probe as `spec` says; panics (failing the test) on any setup error or
/// when the guest does not end within BOOT_TIMEOUT.
pub fn boot(spec: &BootSpec) -> Outcome {
    let serial = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let thread_spec = spec.clone();
    let thread_serial = Arc::clone(&serial);
    std::thread::spawn(move || {
        let result = run_vm(&thread_spec, &thread_serial);
        // The receiver is gone only after a timeout; nothing left to tell then.
        let _ = tx.send(result);
    });
    let snapshot = |serial: &Arc<Mutex<Vec<u8>>>| {
        let bytes = serial.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    match rx.recv_timeout(BOOT_TIMEOUT) {
        Ok(Ok((exit, ports))) => Outcome {
            serial: snapshot(&serial),
            exit,
            timer_stamps: ports.timer_stamps,
            lsr_reads: ports.lsr_reads,
        },
        Ok(Err(setup_error)) => panic!("VM setup failed: {setup_error}"),
        Err(_) => panic!(
            "the {} probe did not end within {BOOT_TIMEOUT:?}; serial so far:\n{}",
            spec.protocol.name(),
            snapshot(&serial)
        ),
    }
}

type Result<T> = std::result::Result<T, String>;

fn run_vm(spec: &BootSpec, serial: &Mutex<Vec<u8>>) -> Result<(GuestExit, Ports)> {
    // Declared before `vm` so that it is dropped after it: KVM must never keep a slot
    // that points at unmapped memory.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), spec.mem_size as usize)])
        .map_err(|e| format!("cannot allocate guest memory: {e}"))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| format!("guest memory has no host mapping: {e}"))?;
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(|e| format!("KVM_SET_TSS_ADDR: {e}"))?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: spec.mem_size,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is the start of one mapping of `mem_size` bytes owned by `mem`,
    // which is declared before `vm` and therefore outlives it and its vCPU.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let regs = prepare(&mem, spec)?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    set_cpuid(&kvm, &vcpu, spec)?;
    set_entry_state(&vcpu, spec.entry_mode(), regs)?;
    let mut devices = Ports::new(spec);
    let exit = run_loop(&mut vcpu, &mem, &mut devices, serial);
    Ok((exit, devices))
}

fn set_cpuid(kvm: &Kvm, vcpu: &VcpuFd, spec: &BootSpec) -> Result<()> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| !(0x4000_0000..=0x4000_00ff).contains(&e.function))
        .copied()
        .collect();
    for entry in entries.iter_mut() {
        match (entry.function, entry.index) {
            (1, _) => set_bit(&mut entry.ecx, 30, spec.rdrand),
            (7, 0) => set_bit(&mut entry.ebx, 18, spec.rdseed),
            _ => {}
        }
    }
    let sig = b"KVMKVMKVM\0\0\0";
    let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    entries.push(kvm_cpuid_entry2 {
        function: 0x4000_0000,
        eax: spec.hv_max_leaf,
        ebx: word(0),
        ecx: word(4),
        edx: word(8),
        ..Default::default()
    });
    entries.push(kvm_cpuid_entry2 {
        function: 0x4000_0010,
        eax: spec.tsc_khz,
        ebx: 1_000_000,
        ..Default::default()
    });
    let cpuid = CpuId::from_entries(&entries).map_err(|e| format!("CPUID table: {e:?}"))?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))
}

fn set_bit(word: &mut u32, bit: u32, on: bool) {
    if on {
        *word |= 1 << bit;
    } else {
        *word &= !(1 << bit);
    }
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn set_entry_state(vcpu: &VcpuFd, mode: EntryMode, entry: EntryRegs) -> Result<()> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let data = segment(0x18, 0x3, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt = kvm_dtable {
        base: GDT_ADDR,
        limit: 31,
        padding: [0; 3],
    };
    sregs.idt = kvm_dtable {
        base: IDT_ADDR,
        limit: 0,
        padding: [0; 3],
    };
    match mode {
        EntryMode::Long => {
            sregs.cs = segment(0x10, 0xb, true);
            sregs.cr0 = 0x8000_0011; // PG | ET | PE
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = 0x20; // PAE
            sregs.efer = 0x500; // LMA | LME
        }
        EntryMode::Protected32 => {
            sregs.cs = segment(0x08, 0xb, false);
            sregs.cr0 = 0x11; // ET | PE
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let regs = kvm_bindings::kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rax: entry.rax,
        rbx: entry.rbx,
        rsi: entry.rsi,
        rsp: 0,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))
}

/// The guest-visible port devices of this harness.
struct Ports {
    rtc_index: u8,
    rtc_status_a: u8,
    rtc_time: (u8, u8, u8),
    timer_stamps: Vec<u8>,
    lsr_reads: usize,
}

impl Ports {
    fn new(spec: &BootSpec) -> Self {
        let uip = if spec.rtc_uip_stuck { 0x80 } else { 0 };
        Ports {
            rtc_index: 0,
            rtc_status_a: (spec.rtc_status_a & 0x7f) | uip,
            rtc_time: spec.rtc_time,
            timer_stamps: Vec::new(),
            lsr_reads: 0,
        }
    }

    fn read(&mut self, port: u16, data: &mut [u8]) {
        let value = match port {
            0x3fd => {
                // Busy on every other read, so a probe that does not wait for THRE
                // is caught (the VMM itself always reports THRE | TEMT).
                self.lsr_reads += 1;
                if self.lsr_reads % 2 == 1 {
                    0x00
                } else {
                    0x60
                }
            }
            0x3f8..=0x3ff => 0,
            0x71 => match self.rtc_index & 0x7f {
                0x00 => self.rtc_time.2,
                0x02 => self.rtc_time.1,
                0x04 => self.rtc_time.0,
                0x0a => self.rtc_status_a,
                0x0b => 0x02, // 24 h, BCD
                _ => 0,
            },
            0x505 => 0x01,
            _ => 0xff,
        };
        data.fill(value);
    }

    /// Returns how the guest ended, if this write ends it.
    fn write(&mut self, port: u16, data: &[u8], serial: &Mutex<Vec<u8>>) -> Option<GuestExit> {
        let byte = data.first().copied().unwrap_or(0);
        match port {
            0x3f8 => {
                if let Ok(mut out) = serial.lock() {
                    out.push(byte);
                }
            }
            0x70 => self.rtc_index = byte,
            0x440 => self.timer_stamps.push(byte),
            0x501 => return Some(GuestExit::DebugExit(byte)),
            0x505 if byte & 1 == 1 => return Some(GuestExit::Panic(byte)),
            0x604 if data.len() == 2 => {
                let value = u16::from_le_bytes([data[0], data[1]]);
                if value & 0x2000 != 0 {
                    return Some(GuestExit::PowerOff(value));
                }
            }
            0x64 if byte == 0xfe => return Some(GuestExit::Reset),
            _ => {}
        }
        None
    }
}

fn run_loop(
    vcpu: &mut VcpuFd,
    mem: &GuestMemoryMmap,
    ports: &mut Ports,
    serial: &Mutex<Vec<u8>>,
) -> GuestExit {
    for _ in 0..MAX_EXITS {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Some(exit) = ports.write(port, data, serial) {
                    return exit;
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => ports.read(port, data),
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::Hlt) => return GuestExit::Halted,
            Ok(VcpuExit::Shutdown) => return GuestExit::TripleFault,
            Ok(VcpuExit::InternalError) => return internal_error(vcpu, mem),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return GuestExit::Other(format!("failed entry: reason {reason:#x} cpu {cpu}"))
            }
            Ok(other) => return GuestExit::Other(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == EINTR || e.errno() == EAGAIN => {}
            Err(e) => return GuestExit::Other(format!("KVM_RUN: {e}")),
        }
    }
    GuestExit::Other(format!("no end after {MAX_EXITS} exits"))
}

/// RIP and the 16 bytes there (the probe runs identity mapped, so RIP is physical).
fn internal_error(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> GuestExit {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
    let mut bytes = vec![0u8; 16];
    if mem.read_slice(&mut bytes, GuestAddress(rip)).is_err() {
        bytes.clear();
    }
    GuestExit::InternalError { rip, bytes }
}
