//! Seccomp filters per thread kind, in Firecracker's model: each vCPU thread installs the
//! vCPU filter itself right before its first KVM_RUN, and the CLI's main thread installs the
//! main filter once the VM runs (the helper threads it spawns afterwards inherit it).
//!
//! A syscall outside a thread's filter traps (SIGSYS). The handler writes one line naming
//! the thread kind and the syscall number to stderr with a raw write(2), then ends the
//! process with [`EXIT_SECCOMP_VIOLATION`]. Filters apply per thread (no TSYNC), so an
//! embedder's own threads are never filtered by the library.
//!
//! The allow lists come from `strace -f` of real boots (every probe exit mode, several vCPUs,
//! pinned vCPUs on hugepages, the report file, signals and stdin forwarding).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Process exit code after a thread made a syscall its filter does not allow
/// (docs/GUEST_INTERFACE.md). Even, so it never collides with isa-debug-exit's odd codes.
pub const EXIT_SECCOMP_VIOLATION: i32 = 10;

/// Environment variable of the hidden self-test: `vcpu` or `main` makes that thread call
/// getcwd(2), which no filter allows, right after its filter is (or would be) installed.
pub const SELFTEST_ENV: &str = "EDGEVISOR_SECCOMP_SELFTEST";

/// Which filter a thread runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and the devices it calls.
    Vcpu,
    /// The CLI's main thread (and the helper threads spawned after its filter).
    Main,
    /// The device event loop: virtio queues and their host back ends.
    EventLoop,
    /// The per-VM control socket (`--api-socket`).
    Api,
}

impl ThreadKind {
    /// Name used in messages and by the self-test variable.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Main => "main",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Api => "api",
        }
    }

    fn tag(self) -> u8 {
        match self {
            ThreadKind::Vcpu => TAG_VCPU,
            ThreadKind::Main => TAG_MAIN,
            ThreadKind::EventLoop => TAG_EVENT_LOOP,
            ThreadKind::Api => TAG_API,
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler rejected our rules (a bug in this module).
    #[error("could not build the {kind} thread's seccomp filter ({detail}): this is an edgevisor bug; run with --no-seccomp to work around it")]
    Build {
        /// Thread kind.
        kind: &'static str,
        /// What seccompiler reported.
        detail: String,
    },
    /// The kernel refused the filter.
    #[error("the kernel refused the {kind} thread's seccomp filter: {source}; use a kernel with seccomp filters (CONFIG_SECCOMP_FILTER) or run with --no-seccomp")]
    Install {
        /// Thread kind.
        kind: &'static str,
        /// What the kernel reported.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("could not install the SIGSYS handler that reports seccomp violations: {0}; run with --no-seccomp")]
    Handler(#[source] std::io::Error),
}

// The KVM ioctls a vCPU thread may issue: KVM_RUN, and on KVM_EXIT_INTERNAL_ERROR the three
// that read RIP and translate it (x86_64) or the one that reads PC (aarch64).
mod kvm_ioctl {
    const KVMIO: std::os::raw::c_uint = 0xAE;
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_bindings::kvm_translation);
    // aarch64 reads PC on an internal error with KVM_GET_ONE_REG.
    #[cfg(target_arch = "aarch64")]
    vmm_sys_util::ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_bindings::kvm_one_reg);

    /// Every KVM ioctl a vCPU thread may make.
    #[cfg(target_arch = "x86_64")]
    pub fn all() -> Vec<u64> {
        vec![KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS(), KVM_TRANSLATE()]
    }

    // With `--device vfio=`, a guest write to an MSI/MSI-X capability or table makes the
    // vCPU rewrite the GSI routing table and tell VFIO which eventfds to signal.
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_iow_nr!(
        KVM_SET_GSI_ROUTING,
        KVMIO,
        0x6a,
        kvm_bindings::kvm_irq_routing
    );
    // Masking a vector takes its irqfd off KVM and unmasking puts it back.
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, b';' as std::os::raw::c_uint, 110);
    // The last vCPU thread to end drops the PCI bus and with it the VFIO objects: their
    // teardown turns the interrupts off (SET_IRQS), unmaps guest RAM from the IOMMU and takes
    // the group out of the container.
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_io_nr!(
        VFIO_GROUP_UNSET_CONTAINER,
        b';' as std::os::raw::c_uint,
        105
    );
    #[cfg(target_arch = "x86_64")]
    vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, b';' as std::os::raw::c_uint, 114);

    /// The extra ioctls of a vCPU thread serving passed-through functions.
    #[cfg(target_arch = "x86_64")]
    pub fn passthrough() -> Vec<u64> {
        vec![
            KVM_SET_GSI_ROUTING(),
            KVM_IRQFD(),
            VFIO_DEVICE_SET_IRQS(),
            VFIO_GROUP_UNSET_CONTAINER(),
            VFIO_IOMMU_UNMAP_DMA(),
        ]
    }

    /// The extra ioctls of a vCPU thread serving passed-through functions.
    #[cfg(not(target_arch = "x86_64"))]
    pub fn passthrough() -> Vec<u64> {
        Vec::new()
    }

    /// Every KVM ioctl a vCPU thread may make.
    #[cfg(target_arch = "aarch64")]
    pub fn all() -> Vec<u64> {
        vec![KVM_RUN(), KVM_GET_ONE_REG()]
    }
}

/// Syscalls aarch64 does not have (it has only their *at and p* forms), per thread kind.
#[cfg(target_arch = "x86_64")]
fn legacy_syscalls(kind: ThreadKind) -> &'static [libc::c_long] {
    match kind {
        ThreadKind::EventLoop => &[libc::SYS_epoll_wait, libc::SYS_unlink],
        ThreadKind::Api => &[libc::SYS_poll, libc::SYS_unlink],
        ThreadKind::Vcpu | ThreadKind::Main => &[],
    }
}

/// Syscalls aarch64 does not have (it has only their *at and p* forms), per thread kind.
#[cfg(not(target_arch = "x86_64"))]
fn legacy_syscalls(_kind: ThreadKind) -> &'static [libc::c_long] {
    &[]
}

/// The seccompiler target of this build.
#[cfg(target_arch = "x86_64")]
const TARGET_ARCH: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
/// The seccompiler target of this build.
#[cfg(target_arch = "aarch64")]
const TARGET_ARCH: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;

/// Syscalls every thread here needs: allocation (mmap and mprotect further down, without
/// PROT_EXEC), locks, the kick signal (its handler returns through rt_sigreturn; pthread_kill
/// is getpid + tgkill), thread exit (sigaltstack, munmap, madvise of the stack), stderr, and
/// exit_group for the SIGSYS handler and abort.
const COMMON_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_clock_gettime,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Extra for the main thread and its helpers: spawning the signal and stdin threads (clone3,
/// with clone as glibc's fallback; the new thread's rseq, robust list and affinity query),
/// sigwait, reading stdin, sleeping while the guest's FIFO is full, creating the report file,
/// reading /proc/cpuinfo for an internal-error report (openat, statx or its fstat fallback).
const MAIN_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_openat,
];

/// Extra for the device event loop thread: waiting on its epoll set, draining eventfds and
/// serving back ends (TAP, block files, Unix sockets).
const EVENT_LOOP_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_getrandom,
    // vsock's Unix-socket back end: accepting host connections, connecting to `<uds>_<port>`
    // (socket is limited to AF_UNIX below), moving bytes, half-closing, and removing the
    // listening socket when the device is dropped at exit.
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_unlinkat,
    // vhost-user-net (net-dpdk): the reconnect timer is armed and disarmed here when the
    // back end hangs up / comes back; the reconnect itself is socket (AF_UNIX), connect or
    // accept4, sendmsg and recvmsg, all above.
    libc::SYS_timerfd_settime,
];

/// Extra for the per-VM control socket thread (vmm::api): waiting on the listener and its
/// wake-up eventfd, accepting, per-client timeouts (setsockopt), reading the request
/// (recvfrom), answering, and removing the socket file when the VM ends.
const API_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_ppoll,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_unlinkat,
];

fn build_error(kind: ThreadKind) -> impl Fn(seccompiler::BackendError) -> SeccompError {
    move |e| SeccompError::Build {
        kind: kind.name(),
        detail: e.to_string(),
    }
}

/// One rule: argument `index` (low 32 bits) masked with `mask` equals `value`.
fn masked_rule(
    kind: ThreadKind,
    index: u8,
    mask: u64,
    value: u64,
) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .map_err(build_error(kind))?;
    SeccompRule::new(vec![cond]).map_err(build_error(kind))
}

fn ioctl_rules(kind: ThreadKind, passthrough: bool) -> Result<Vec<SeccompRule>, SeccompError> {
    let extra = if passthrough {
        kvm_ioctl::passthrough()
    } else {
        Vec::new()
    };
    kvm_ioctl::all()
        .into_iter()
        .chain(extra)
        // The kernel takes the request as an unsigned int: compare all of the low 32 bits.
        .map(|request| masked_rule(kind, 1, u64::from(u32::MAX), request))
        .collect()
}

/// The rules of a thread kind: syscall number to argument rules (empty = any arguments).
pub fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    rules_with(kind, false)
}

/// The rules of a thread kind; with `passthrough` (a VM with `--device vfio=`), vCPU threads
/// may also pread/pwrite (configuration space and BARs of the device fds), read (the
/// eventfds of masked vectors) and issue the ioctls that re-route MSI vectors.
pub fn rules_with(
    kind: ThreadKind,
    passthrough: bool,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let passthrough = passthrough && kind == ThreadKind::Vcpu;
    let extra = match kind {
        ThreadKind::Vcpu => &[][..],
        ThreadKind::Main => MAIN_SYSCALLS,
        ThreadKind::EventLoop => EVENT_LOOP_SYSCALLS,
        ThreadKind::Api => API_SYSCALLS,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON_SYSCALLS
        .iter()
        .chain(extra)
        .chain(legacy_syscalls(kind))
        .map(|nr| (*nr, Vec::new()))
        .collect();
    // Memory may be mapped or re-protected, never made executable (prot is argument 2).
    let exec = libc::PROT_EXEC as u64;
    for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
        rules.insert(nr, vec![masked_rule(kind, 2, exec, 0)?]);
    }
    // Debug builds check that a descriptor is open before closing it: fcntl(fd, F_GETFD).
    let getfd = libc::F_GETFD as u64;
    let all = u64::from(u32::MAX);
    rules.insert(libc::SYS_fcntl, vec![masked_rule(kind, 1, all, getfd)?]);
    if kind == ThreadKind::Vcpu {
        rules.insert(libc::SYS_ioctl, ioctl_rules(kind, passthrough)?);
    }
    if passthrough {
        rules.insert(libc::SYS_pread64, Vec::new());
        rules.insert(libc::SYS_pwrite64, Vec::new());
        // A masked vector's eventfd is read to see whether it holds a signal.
        rules.insert(libc::SYS_read, Vec::new());
    }
    if kind == ThreadKind::EventLoop {
        let unix = libc::AF_UNIX as u64;
        rules.insert(libc::SYS_socket, vec![masked_rule(kind, 0, all, unix)?]);
    }
    Ok(rules)
}

/// Compiles the filter of a thread kind: allow its rules, trap everything else.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    compile_with(kind, false)
}

/// Compiles the filter of a thread kind, with the passthrough additions of [`rules_with`].
pub fn compile_with(kind: ThreadKind, passthrough: bool) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules_with(kind, passthrough)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TARGET_ARCH,
    )
    .map_err(build_error(kind))?;
    filter.try_into().map_err(build_error(kind))
}

/// Installs `program` (compiled for `kind`) on the calling thread, after the SIGSYS handler
/// that reports violations.
pub fn apply(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    install_violation_handler()?;
    THREAD_KIND.with(|k| k.set(kind.tag()));
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })
}

/// Whether the hidden self-test asks `kind`'s thread to break its filter.
pub fn selftest_requested(kind: ThreadKind) -> bool {
    std::env::var(SELFTEST_ENV).is_ok_and(|v| v == kind.name())
}

/// The self-test: a getcwd(2), which no filter allows. Under a filter the process ends in the
/// SIGSYS handler; without one it succeeds and says so on stderr.
pub fn run_selftest(kind: ThreadKind) {
    let mut buf = [0u8; 512];
    // SAFETY: getcwd writes at most `buf.len()` bytes into our own buffer.
    let ret = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    eprintln!(
        "edgevisor: seccomp self-test: the {} thread's getcwd returned {ret} (no filter stopped it)",
        kind.name()
    );
}

const TAG_HELPER: u8 = 0;
const TAG_VCPU: u8 = 1;
const TAG_MAIN: u8 = 2;
const TAG_EVENT_LOOP: u8 = 3;
const TAG_API: u8 = 4;

thread_local! {
    /// Which filter this thread installed itself; helpers that inherited one keep TAG_HELPER.
    static THREAD_KIND: Cell<u8> = const { Cell::new(TAG_HELPER) };
}

/// The SIGSYS part of `siginfo_t` on x86_64 (`_sigsys` in the kernel's union), which the libc
/// crate does not expose: three ints, padding to 8, then `_call_addr`, `_syscall`, `_arch`.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer for building the violation message without allocating.
struct MessageBuf {
    bytes: [u8; 256],
    len: usize,
}

impl MessageBuf {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut v = value.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The line written on a violation.
fn violation_message(tag: u8, syscall: i64) -> MessageBuf {
    let kind: &[u8] = match tag {
        TAG_VCPU => b"vcpu",
        TAG_MAIN => b"main",
        TAG_EVENT_LOOP => b"event-loop",
        TAG_API => b"api",
        _ => b"helper",
    };
    let mut msg = MessageBuf {
        bytes: [0; 256],
        len: 0,
    };
    msg.push(b"edgevisor: seccomp: the ");
    msg.push(kind);
    msg.push(b" thread made syscall ");
    msg.push_number(syscall);
    msg.push(b", which its filter does not allow (an edgevisor bug: please report it; --no-seccomp turns the filters off)\n");
    msg
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel hands a valid siginfo; for a seccomp SIGSYS its union holds
        // `_sigsys`, which `SigsysInfo` mirrors field for field.
        i64::from(unsafe { (*(info as *const SigsysInfo)).syscall })
    };
    let tag = THREAD_KIND.with(|k| k.get());
    let msg = violation_message(tag, syscall);
    // SAFETY: write(2) and _exit(2) are async-signal-safe and every filter allows them; the
    // buffer is ours and `len` is within it.
    unsafe {
        libc::write(2, msg.bytes.as_ptr().cast(), msg.len);
        libc::_exit(EXIT_SECCOMP_VIOLATION);
    }
}

/// Installs the SIGSYS handler that reports violations (once per process).
pub fn install_violation_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: an all-zero sigaction is valid; the handler only reads the siginfo, a
        // const-initialised thread-local and calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = sigsys_handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                result = Err(SeccompError::Handler(std::io::Error::last_os_error()));
            }
        }
    });
    result
}

/// Compiles the filter of `kind` and installs it on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    apply(kind, &compile(kind)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(kvm_ioctl::KVM_RUN(), 0xae80);
        assert_eq!(kvm_ioctl::KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(kvm_ioctl::KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(kvm_ioctl::KVM_TRANSLATE(), 0xc018_ae85);
    }

    #[test]
    fn violation_message_names_thread_and_syscall() {
        let m = violation_message(TAG_VCPU, 79);
        let s = std::str::from_utf8(&m.bytes[..m.len]).unwrap();
        assert!(s.starts_with("edgevisor: seccomp: the vcpu thread made syscall 79, "));
        assert!(s.ends_with('\n'));
        let m = violation_message(TAG_HELPER, -1);
        let s = std::str::from_utf8(&m.bytes[..m.len]).unwrap();
        assert!(s.contains("the helper thread made syscall -1,"), "{s}");
    }

    #[test]
    fn filters_differ_by_thread_kind() {
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        let main = rules(ThreadKind::Main).unwrap();
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), kvm_ioctl::all().len());
        assert!(!main.contains_key(&libc::SYS_ioctl));
        assert!(main.contains_key(&libc::SYS_openat));
        assert!(!vcpu.contains_key(&libc::SYS_openat));
        for kind in [ThreadKind::Vcpu, ThreadKind::Main] {
            assert!(!compile(kind).unwrap().is_empty());
            assert!(!rules(kind).unwrap().contains_key(&libc::SYS_getcwd));
        }
    }

    #[test]
    fn only_a_passthrough_vm_lets_vcpus_reach_device_fds() {
        let plain = rules(ThreadKind::Vcpu).unwrap();
        let vfio = rules_with(ThreadKind::Vcpu, true).unwrap();
        for nr in [libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_read] {
            assert!(!plain.contains_key(&nr), "{nr}");
            assert!(vfio.contains_key(&nr), "{nr}");
        }
        assert_eq!(
            vfio[&libc::SYS_ioctl].len(),
            kvm_ioctl::all().len() + kvm_ioctl::passthrough().len()
        );
        // Other thread kinds are not widened.
        let main = rules_with(ThreadKind::Main, true).unwrap();
        assert!(!main.contains_key(&libc::SYS_pwrite64));
        assert!(!compile_with(ThreadKind::Vcpu, true).unwrap().is_empty());
    }
}
