//! Wiring virtio devices onto a VM: back ends opened from the config before any KVM object
//! exists, then one virtio-mmio window and one interrupt line per device, queue kicks as
//! ioeventfds and interrupts as irqfds, and the command-line tokens that tell the guest
//! where the devices are (`virtio_mmio.device=4K@0xd0000000:5`).

use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, BlockConfig, CacheMode};
use devices::virtio::event_loop::DeviceSubscriber;
use devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::tap::Tap;
use devices::virtio::vsock::Vsock;
use devices::virtio::{VirtioCounters, VirtioDevice};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::device_config::{DiskCache, VhostUserMode};

/// Base of the first device's MMIO window (inside the MMIO hole below 4 GiB).
#[cfg(target_arch = "x86_64")]
pub const MMIO_BASE: u64 = 0xd000_0000;
/// ISA interrupt lines given to virtio devices, in order: the free ones of a PC (not the
/// timer, keyboard, cascade, COM1, RTC, ACPI SCI, FPU).
#[cfg(target_arch = "x86_64")]
pub const IRQS: [u32; 9] = [5, 6, 7, 10, 11, 12, 14, 15, 3];
/// Base of the first device's MMIO window (the FDT's virtio_mmio nodes, below RAM).
#[cfg(target_arch = "aarch64")]
pub const MMIO_BASE: u64 = crate::arch::aarch64::layout::VIRTIO_MMIO_BASE;
/// SPIs given to virtio devices (KVM on arm routes GSI n to SPI n, INTID 32 + n).
#[cfg(target_arch = "aarch64")]
pub const IRQS: [u32; 9] = [16, 17, 18, 19, 20, 21, 22, 23, 24];
/// Most virtio devices one VM can have.
pub const MAX_DEVICES: usize = IRQS.len();

/// Why a device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The disk image cannot be used.
    #[error(transparent)]
    Block(#[from] devices::virtio::block::BlockError),
    /// The TAP device cannot be used.
    #[error(transparent)]
    Tap(#[from] devices::virtio::tap::TapError),
    /// The network device could not be created.
    #[error(transparent)]
    Net(#[from] devices::virtio::net::NetError),
    /// The vhost-user back end could not be reached or refused the device.
    #[error(transparent)]
    VhostUser(#[from] net_dpdk::VhostUserNetError),
    /// The vsock device could not be set up (socket path, listener).
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// A host resource (eventfd, KVM registration) failed.
    #[error("could not set up the virtio {device} device: {detail}")]
    Setup {
        /// Device name.
        device: String,
        /// What failed.
        detail: String,
    },
}

/// A device with its name ("block0", "net0", ...).
pub struct NamedDevice {
    /// Name in reports and metrics.
    pub name: String,
    /// The device.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
}

/// Opens every back end the config names, in a fixed order: disks, TAP nets, vhost-user
/// nets (connected and features negotiated here; memory and rings follow at activation),
/// vsock, rng.
/// Nothing here touches KVM; on error everything opened so far is closed again (files
/// unlocked, created TAPs gone, sockets removed) by dropping it.
pub fn open_backends(config: &VmConfig) -> Result<Vec<NamedDevice>, VirtioError> {
    let mut out: Vec<NamedDevice> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let block = Block::new(BlockConfig {
            path: disk.path.clone(),
            readonly: disk.readonly,
            cache: match disk.cache {
                DiskCache::Writeback => CacheMode::Writeback,
                DiskCache::Unsafe => CacheMode::Unsafe,
            },
        })?;
        out.push(NamedDevice {
            name: format!("block{i}"),
            device: Arc::new(Mutex::new(block)),
        });
    }
    for (i, net) in config.nets.iter().enumerate() {
        let tap = Tap::open(&net.tap, true)?;
        let device = Net::new(tap, net.mac_bytes())?;
        out.push(NamedDevice {
            name: format!("net{i}"),
            device: Arc::new(Mutex::new(device)),
        });
    }
    for (i, net) in config.vhost_user_nets.iter().enumerate() {
        let mode = match net.mode {
            VhostUserMode::Client => net_dpdk::Mode::Client,
            VhostUserMode::Server => net_dpdk::Mode::Server,
        };
        let device =
            net_dpdk::VhostUserNet::connect(&net.socket, mode, net.mac_bytes(), net.queues)?;
        out.push(NamedDevice {
            name: format!("net{}", config.nets.len() + i),
            device: Arc::new(Mutex::new(device)),
        });
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(vsock.cid, vsock.uds.clone())?;
        out.push(NamedDevice {
            name: "vsock0".into(),
            device: Arc::new(Mutex::new(device)),
        });
    }
    if config.rng {
        out.push(NamedDevice {
            name: "rng0".into(),
            device: Arc::new(Mutex::new(Rng::new())),
        });
    }
    Ok(out)
}

/// The devices placed on a VM.
#[derive(Default)]
pub struct AttachedDevices {
    /// MMIO bus with every transport.
    pub mmio: Bus,
    /// Event-loop subscribers, one per device.
    pub subscribers: Vec<DeviceSubscriber>,
    /// Counters by device name.
    pub counters: Vec<(String, Arc<VirtioCounters>)>,
}

fn setup_error(device: &str) -> impl Fn(String) -> VirtioError + '_ {
    move |detail| VirtioError::Setup {
        device: device.to_string(),
        detail,
    }
}

/// Gives each device its window and interrupt on `vm_fd`.
pub fn attach(
    devices: Vec<NamedDevice>,
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
) -> Result<AttachedDevices, VirtioError> {
    let mut attached = AttachedDevices::default();
    for (index, named) in devices.into_iter().enumerate() {
        let err = setup_error(&named.name);
        let (base, irq) = slot(index).ok_or_else(|| err("no interrupt line left".into()))?;
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| err(e.to_string()))?;
        let transport = MmioTransport::new(named.device, mem.clone(), interrupt)
            .map_err(|e| err(e.to_string()))?;
        vm_fd
            .register_irqfd(transport.interrupt().event(), irq)
            .map_err(|e| err(format!("KVM refused its irqfd: {e}")))?;
        for (queue, event) in transport.queue_events().iter().enumerate() {
            vm_fd
                .register_ioevent(
                    event.as_ref(),
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    queue as u32,
                )
                .map_err(|e| err(format!("KVM refused its ioeventfd: {e}")))?;
        }
        attached
            .subscribers
            .push(DeviceSubscriber::new(&transport).map_err(|e| err(e.to_string()))?);
        attached
            .counters
            .push((named.name.clone(), transport.counters()));
        attached
            .mmio
            .insert(base, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(attached)
}

/// MMIO base and IRQ of the device at `index`.
pub fn slot(index: usize) -> Option<(u64, u32)> {
    let irq = *IRQS.get(index)?;
    Some((MMIO_BASE + index as u64 * MMIO_WINDOW_SIZE, irq))
}

/// The windows of `count` devices, for the DSDT.
#[cfg(target_arch = "x86_64")]
pub fn acpi_devices(count: usize) -> Vec<crate::arch::x86_64::aml::MmioDevice> {
    (0..count)
        .filter_map(slot)
        .map(|(base, irq)| crate::arch::x86_64::aml::MmioDevice {
            base: base as u32,
            len: MMIO_WINDOW_SIZE as u32,
            irq,
        })
        .collect()
}

/// `virtio_mmio.device=` tokens for `count` devices.
pub fn cmdline_tokens(count: usize) -> Vec<String> {
    (0..count)
        .filter_map(slot)
        .map(|(base, irq)| format!("virtio_mmio.device=4K@{base:#x}:{irq}"))
        .collect()
}

/// Adds `tokens` to `cmdline`, before a ` -- ` separator if there is one (what follows it
/// belongs to the guest's init or application, not the kernel).
pub fn add_tokens(cmdline: &str, tokens: &[String]) -> String {
    if tokens.is_empty() {
        return cmdline.to_string();
    }
    let joined = tokens.join(" ");
    let (kernel, rest) = if let Some(rest) = cmdline.strip_prefix("-- ") {
        ("", Some(rest))
    } else if cmdline == "--" {
        ("", Some(""))
    } else {
        match cmdline.find(" -- ") {
            Some(at) => (&cmdline[..at], Some(&cmdline[at + 4..])),
            None if cmdline.ends_with(" --") => (&cmdline[..cmdline.len() - 3], Some("")),
            None => (cmdline, None),
        }
    };
    let kernel = kernel.trim_end();
    let mut out = if kernel.is_empty() {
        joined
    } else {
        format!("{kernel} {joined}")
    };
    if let Some(rest) = rest {
        out.push_str(" --");
        if !rest.is_empty() {
            out.push(' ');
            out.push_str(rest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tokens_name_each_window_and_line() {
        assert_eq!(
            cmdline_tokens(2),
            [
                "virtio_mmio.device=4K@0xd0000000:5",
                "virtio_mmio.device=4K@0xd0001000:6"
            ]
        );
        assert_eq!(cmdline_tokens(MAX_DEVICES + 3).len(), MAX_DEVICES);
    }

    #[test]
    fn tokens_go_before_the_application_separator() {
        let t = vec!["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        assert_eq!(
            add_tokens("console=ttyS0", &t),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            add_tokens("console=ttyS0 -- app --flag", &t),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 -- app --flag"
        );
        assert_eq!(
            add_tokens("-- app", &t),
            "virtio_mmio.device=4K@0xd0000000:5 -- app"
        );
        assert_eq!(add_tokens("", &t), "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(
            add_tokens("a --", &t),
            "a virtio_mmio.device=4K@0xd0000000:5 --"
        );
        assert_eq!(add_tokens("a -- b", &[]), "a -- b");
    }

    #[test]
    fn irqs_avoid_the_lines_the_platform_uses() {
        for used in [0, 1, 2, 4, 8, 9, 13] {
            assert!(!IRQS.contains(&used), "IRQ {used} is taken");
        }
        let mut sorted = IRQS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), IRQS.len());
    }
}
