//! The legacy x86 platform of `docs/GUEST_INTERFACE.md`, wired onto one port I/O bus.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::boot_timer::{BootTimer, BootTimerStamp};
use crate::bus::{Bus, BusDevice, BusError};
use crate::counters::{CounterSnapshot, DeviceCounters};
use crate::exit::ExitSink;
use crate::exit_ports::{AcpiPm, DebugExit, PvPanic, ACPI_PM_LEN};
use crate::i8042::{I8042, I8042_PORTS};
use crate::post::PostPort;
use crate::rtc::CmosRtc;
use crate::serial::{Serial, SERIAL_PORTS};

/// COM1 base port (IRQ 4).
pub const COM1_PORT: u64 = 0x3f8;
/// i8042 data port; the controller spans 0x60..=0x64.
pub const I8042_PORT: u64 = 0x60;
/// CMOS index port; data is at 0x71.
pub const CMOS_PORT: u64 = 0x70;
/// Ports the CMOS RTC decodes.
pub const CMOS_PORTS: u64 = 2;
/// POST / I/O-delay port.
pub const POST_PORT: u64 = 0x80;
/// Boot-timer port.
pub const BOOT_TIMER_PORT: u64 = 0x440;
/// isa-debug-exit port.
pub const DEBUG_EXIT_PORT: u64 = 0x501;
/// pvpanic port.
pub const PVPANIC_PORT: u64 = 0x505;
/// ACPI PM register block; PM1a_CNT is at 0x604.
pub const ACPI_PM_PORT: u64 = 0x600;

/// Counters of every legacy device, for the VMM's metrics.
#[derive(Debug, Clone)]
pub struct LegacyCounters {
    /// COM1.
    pub serial: Arc<DeviceCounters>,
    /// i8042.
    pub i8042: Arc<DeviceCounters>,
    /// CMOS RTC.
    pub rtc: Arc<DeviceCounters>,
    /// POST port.
    pub post: Arc<DeviceCounters>,
    /// Boot-timer port.
    pub boot_timer: Arc<DeviceCounters>,
    /// isa-debug-exit.
    pub debug_exit: Arc<DeviceCounters>,
    /// pvpanic.
    pub pvpanic: Arc<DeviceCounters>,
    /// ACPI PM block.
    pub acpi_pm: Arc<DeviceCounters>,
}

impl LegacyCounters {
    /// Every device's counters, named as in metrics.
    pub fn snapshot(&self) -> [(&'static str, CounterSnapshot); 8] {
        [
            ("serial", self.serial.snapshot()),
            ("i8042", self.i8042.snapshot()),
            ("rtc", self.rtc.snapshot()),
            ("post", self.post.snapshot()),
            ("boot_timer", self.boot_timer.snapshot()),
            ("debug_exit", self.debug_exit.snapshot()),
            ("pvpanic", self.pvpanic.snapshot()),
            ("acpi_pm", self.acpi_pm.snapshot()),
        ]
    }
}

/// What [`legacy_x86_devices`] builds.
#[derive(Debug)]
pub struct LegacyDevices {
    /// The port I/O bus holding every legacy device; share it as `Arc<Bus>`.
    pub bus: Bus,
    /// COM1, for feeding host input with [`Serial::enqueue_input`].
    pub serial: Arc<Mutex<Serial>>,
    /// Every device's counters.
    pub counters: LegacyCounters,
}

/// A device ready for [`Bus::insert`].
fn shared<D: BusDevice + 'static>(dev: D) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(dev))
}

/// Builds the port I/O bus of `docs/GUEST_INTERFACE.md`: COM1 writing to `serial_out`
/// and interrupting through `serial_irq` (register it as the irqfd for IRQ 4), the
/// i8042, CMOS RTC, POST port, boot timer recording into `boot_timer`, and the exit ports
/// reporting to `exit`.
pub fn legacy_x86_devices(
    serial_out: Box<dyn Write + Send>,
    serial_irq: EventFd,
    exit: Arc<dyn ExitSink>,
    boot_timer: Arc<BootTimerStamp>,
) -> Result<LegacyDevices, BusError> {
    let mut bus = Bus::new();

    let serial = Serial::new(serial_out, serial_irq);
    let serial_counters = serial.counters();
    let serial = Arc::new(Mutex::new(serial));
    bus.insert(COM1_PORT, SERIAL_PORTS, serial.clone())?;

    let i8042 = I8042::new(exit.clone());
    let rtc = CmosRtc::new();
    let post = PostPort::new();
    let timer = BootTimer::new(boot_timer);
    let debug_exit = DebugExit::new(exit.clone());
    let pvpanic = PvPanic::new(exit.clone());
    let acpi = AcpiPm::new(exit);
    let counters = LegacyCounters {
        serial: serial_counters,
        i8042: i8042.counters(),
        rtc: rtc.counters(),
        post: post.counters(),
        boot_timer: timer.counters(),
        debug_exit: debug_exit.counters(),
        pvpanic: pvpanic.counters(),
        acpi_pm: acpi.counters(),
    };

    bus.insert(I8042_PORT, I8042_PORTS, shared(i8042))?;
    bus.insert(CMOS_PORT, CMOS_PORTS, shared(rtc))?;
    bus.insert(POST_PORT, 1, shared(post))?;
    bus.insert(BOOT_TIMER_PORT, 1, shared(timer))?;
    bus.insert(DEBUG_EXIT_PORT, 1, shared(debug_exit))?;
    bus.insert(PVPANIC_PORT, 1, shared(pvpanic))?;
    bus.insert(ACPI_PM_PORT, ACPI_PM_LEN, shared(acpi))?;
    Ok(LegacyDevices {
        bus,
        serial,
        counters,
    })
}
