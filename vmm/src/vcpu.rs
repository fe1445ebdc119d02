//! A vCPU thread: run the guest, hand port and MMIO exits to the buses, and stop when the
//! VM's state says so.

use std::cell::Cell;
use std::sync::Arc;

use devices::Bus;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use seccompiler::BpfProgram;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::exit::ExitReason;
use crate::seccomp::{self, ThreadKind};
use crate::state::{ExitKind, Shared, VcpuControl};
use crate::timings::Phase;

/// Real-time signal used to kick vCPUs out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

thread_local! {
    /// This thread's kvm_run page, so the kick handler can set `immediate_exit`.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|c| c.get());
    if !run.is_null() {
        // SAFETY: `run` is this thread's own kvm_run mapping, published by `VcpuThread::run`
        // before it enters the loop and cleared before the VcpuFd (and its mapping) is dropped.
        // A volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is valid; the handler only touches thread-local state
    // and does a volatile store, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kick_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What one vCPU thread owns.
pub struct VcpuThread {
    /// vCPU index (= APIC id).
    pub id: u8,
    /// Host CPUs this vCPU's thread is pinned to, if placement was asked for.
    pub cpus: Option<numa::CpuSet>,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest memory, for reading instruction bytes on errors.
    pub mem: GuestMemoryMmap,
    /// VM-wide state.
    pub shared: Arc<Shared>,
    /// The vCPU seccomp filter to install before the first KVM_RUN, if filtering is on.
    pub seccomp: Option<Arc<BpfProgram>>,
    /// The hidden self-test asked this thread to break its filter (vCPU 0 only).
    pub seccomp_selftest: bool,
}

/// The counter a KVM_RUN return goes to.
fn exit_kind(result: &Result<VcpuExit<'_>, kvm_ioctls::Error>) -> ExitKind {
    match result {
        Ok(VcpuExit::IoIn(..)) => ExitKind::IoIn,
        Ok(VcpuExit::IoOut(..)) => ExitKind::IoOut,
        Ok(VcpuExit::MmioRead(..)) => ExitKind::MmioRead,
        Ok(VcpuExit::MmioWrite(..)) => ExitKind::MmioWrite,
        Ok(VcpuExit::Hlt) => ExitKind::Hlt,
        Ok(VcpuExit::Shutdown) => ExitKind::Shutdown,
        Ok(VcpuExit::SystemEvent(..)) => ExitKind::SystemEvent,
        Ok(VcpuExit::InternalError) => ExitKind::InternalError,
        Ok(VcpuExit::FailEntry(..)) => ExitKind::FailEntry,
        Ok(VcpuExit::Intr) => ExitKind::Intr,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitKind::Intr,
        Ok(_) | Err(_) => ExitKind::Other,
    }
}

impl VcpuThread {
    /// Runs until the VM ends; records the exit reason if this vCPU caused it.
    pub fn run(mut self) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run_ptr));
        self.shared.register_vcpu_thread();
        if let Some(cpus) = &self.cpus {
            if let Err(e) = numa::pin_current_thread(cpus) {
                self.shared.finish(ExitReason::VcpuError {
                    detail: format!("could not pin vCPU {} to host CPUs {cpus}: {e}", self.id),
                });
            }
        }
        if let Some(program) = self.seccomp.take() {
            if let Err(e) = seccomp::apply(ThreadKind::Vcpu, &program) {
                self.shared.finish(ExitReason::VcpuError {
                    detail: format!("vCPU {}: {e}", self.id),
                });
            }
        }
        if self.seccomp_selftest {
            seccomp::run_selftest(ThreadKind::Vcpu);
        }
        loop {
            match self.shared.vcpu_control() {
                VcpuControl::Run => {}
                VcpuControl::Exit => break,
                VcpuControl::Pause => {
                    self.shared.park_while_paused();
                    continue;
                }
            }
            if self.id == 0 {
                self.shared.timings.stamp(Phase::GuestEntry);
            }
            let outcome = self.run_once();
            if let Some(reason) = outcome {
                self.shared.finish(reason);
                break;
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    /// One KVM_RUN; returns an exit reason when the VM must end.
    fn run_once(&mut self) -> Option<ExitReason> {
        let result = self.fd.run();
        self.shared
            .counters
            .count_exit(usize::from(self.id), exit_kind(&result));
        match result {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.pio.write(port as u64, data) {
                    self.shared.counters.count_unhandled_pio();
                }
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(port as u64, data) {
                    data.fill(0xff);
                    self.shared.counters.count_unhandled_pio();
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    self.shared.counters.count_unhandled_mmio();
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                    self.shared.counters.count_unhandled_mmio();
                }
                None
            }
            Ok(VcpuExit::Hlt) => {
                // With the in-kernel irqchip KVM handles HLT itself; a userspace HLT exit
                // means the guest halted for good.
                Some(ExitReason::VcpuError {
                    detail: "the guest halted with no way to wake it".into(),
                })
            }
            Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault),
            Ok(VcpuExit::InternalError) => Some(self.internal_error()),
            Ok(VcpuExit::FailEntry(hardware_reason, _cpu)) => {
                Some(ExitReason::FailEntry { hardware_reason })
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::Poweroff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                _ => ExitReason::Panic,
            }),
            Ok(VcpuExit::Intr) => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Ok(other) => Some(ExitReason::VcpuError {
                detail: format!("unhandled KVM exit {other:?} on vCPU {}", self.id),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(ExitReason::VcpuError {
                detail: format!("KVM_RUN failed on vCPU {}: {e}", self.id),
            }),
        }
    }

    /// Builds the report for KVM_EXIT_INTERNAL_ERROR: suberror, RIP and the bytes there.
    fn internal_error(&mut self) -> ExitReason {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM set exit_reason to KVM_EXIT_INTERNAL_ERROR, so `internal` is the
        // active member of the exit union.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        let (rip, bytes) = self.faulting_instruction();
        ExitReason::InternalError {
            suberror,
            rip,
            bytes,
            // Reading /proc/cpuinfo is no business of a (filtered) vCPU thread:
            // `VmHandle::wait` fills this in.
            hardware_virtualization: false,
        }
    }

    /// aarch64: PC and the instruction there when PC is a guest-physical RAM address
    /// (before the guest turns its MMU on), else PC alone.
    #[cfg(target_arch = "aarch64")]
    fn faulting_instruction(&self) -> (u64, String) {
        let mut pc = [0u8; 8];
        match self.fd.get_one_reg(crate::arch::aarch64::regs::PC, &mut pc) {
            Ok(_) => {
                let pc = u64::from_le_bytes(pc);
                (pc, self.read_bytes(pc, 4))
            }
            Err(_) => (0, String::new()),
        }
    }

    /// x86_64: RIP and the bytes at it, through the guest's page tables when paging is on.
    #[cfg(target_arch = "x86_64")]
    fn faulting_instruction(&self) -> (u64, String) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(regs), Ok(sregs)) => {
                let linear = sregs.cs.base.wrapping_add(regs.rip);
                let phys = if sregs.cr0 & (1 << 31) != 0 {
                    self.fd
                        .translate_gva(linear)
                        .ok()
                        .filter(|t| t.valid != 0)
                        .map(|t| t.physical_address)
                } else {
                    Some(linear)
                };
                (
                    regs.rip,
                    phys.map(|p| self.read_bytes(p, 15)).unwrap_or_default(),
                )
            }
            _ => (0, String::new()),
        }
    }

    /// Up to `len` (at most 15) bytes of guest memory at `phys`, as hex.
    fn read_bytes(&self, phys: u64, len: usize) -> String {
        let mut buf = [0u8; 15];
        let n = (0..len.min(buf.len()))
            .take_while(|i| {
                self.mem
                    .read_obj::<u8>(GuestAddress(phys + *i as u64))
                    .map(|b| buf[*i] = b)
                    .is_ok()
            })
            .count();
        buf[..n]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
