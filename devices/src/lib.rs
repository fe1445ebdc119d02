//! Devices an edgevisor guest touches, with no KVM types in sight.
//!
//! * [`bus`]: the [`Bus`] that routes port I/O (or MMIO) accesses to [`BusDevice`]s.
//! * [`exit`]: how a device asks the VMM to end the VM ([`ExitSink`]).
//! * The legacy x86 platform of `docs/GUEST_INTERFACE.md`: [`Serial`] (COM1), [`I8042`],
//!   [`CmosRtc`], [`PostPort`], [`BootTimer`], [`DebugExit`], [`PvPanic`] and [`AcpiPm`],
//!   all wired onto one port bus by [`legacy_x86_devices`].
//!
//! Every device keeps [`DeviceCounters`] that the VMM can read while the vCPUs run. Guest
//! accesses a device does not understand (a size it does not implement, a register that
//! does not exist) read as all ones, drop writes and count as `unknown_accesses`.

pub mod boot_timer;
pub mod bus;
pub mod counters;
pub mod exit;
pub mod exit_ports;
pub mod i8042;
pub mod legacy;
pub mod log;
pub mod pci;
pub mod pl011;
pub mod post;
pub mod rtc;
pub mod serial;
pub mod virtio;

pub use boot_timer::{BootStamp, BootTimer, BootTimerStamp};
pub use bus::{Bus, BusDevice, BusError};
pub use counters::{CounterSnapshot, DeviceCounters};
pub use exit::{ExitLatch, ExitSink, GuestExitRequest};
pub use exit_ports::{AcpiPm, DebugExit, PvPanic};
pub use i8042::I8042;
pub use legacy::{legacy_x86_devices, LegacyCounters, LegacyDevices};
pub use pl011::Pl011;
pub use post::PostPort;
pub use rtc::{civil_from_unix, CivilTime, CmosRtc};
pub use serial::{Serial, SerialError};

/// What a read the device does not serve returns: every bit set, as on an idle ISA bus.
pub(crate) fn fill_all_ones(data: &mut [u8]) {
    data.fill(0xff);
}

/// A recording [`ExitSink`] for unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Mutex;

    use crate::exit::{ExitSink, GuestExitRequest};

    #[derive(Default)]
    pub struct RecordingSink {
        requests: Mutex<Vec<GuestExitRequest>>,
    }

    impl RecordingSink {
        pub fn requests(&self) -> Vec<GuestExitRequest> {
            self.requests.lock().map(|r| r.clone()).unwrap_or_default()
        }
    }

    impl ExitSink for RecordingSink {
        fn request_exit(&self, req: GuestExitRequest) {
            if let Ok(mut r) = self.requests.lock() {
                r.push(req);
            }
        }
    }

    /// Access sizes a guest can produce through MMIO or a buggy VMM, valid or not.
    pub const ODD_SIZES: [usize; 7] = [0, 1, 2, 3, 4, 8, 16];
}
