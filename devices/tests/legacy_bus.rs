//! The legacy port bus as a guest sees it: the accesses our firmware probe and Linux make,
//! through `legacy_x86_devices` and `Bus` only.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use devices::legacy::{
    ACPI_PM_PORT, BOOT_TIMER_PORT, CMOS_PORT, COM1_PORT, DEBUG_EXIT_PORT, I8042_PORT, POST_PORT,
    PVPANIC_PORT,
};
use devices::{legacy_x86_devices, BootTimerStamp, ExitLatch, GuestExitRequest, LegacyDevices};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Machine {
    devices: LegacyDevices,
    console: Console,
    irq4: EventFd,
    exit: Arc<ExitLatch>,
    stamp: Arc<BootTimerStamp>,
}

fn machine() -> Machine {
    let console = Console::default();
    let irq4 = EventFd::new(EFD_NONBLOCK).unwrap();
    let exit = Arc::new(ExitLatch::new());
    let stamp = Arc::new(BootTimerStamp::new());
    let devices = legacy_x86_devices(
        Box::new(console.clone()),
        irq4.try_clone().unwrap(),
        exit.clone(),
        stamp.clone(),
    )
    .unwrap();
    Machine {
        devices,
        console,
        irq4,
        exit,
        stamp,
    }
}

impl Machine {
    fn inb(&self, port: u64) -> u8 {
        let mut b = [0u8];
        assert!(
            self.devices.bus.read(port, &mut b),
            "port {port:#x} unclaimed"
        );
        b[0]
    }

    fn outb(&self, port: u64, value: u8) {
        assert!(
            self.devices.bus.write(port, &[value]),
            "port {port:#x} unclaimed"
        );
    }

    fn outw(&self, port: u64, value: u16) {
        assert!(self.devices.bus.write(port, &value.to_le_bytes()));
    }

    fn cmos(&self, index: u8) -> u8 {
        self.outb(CMOS_PORT, index);
        self.inb(CMOS_PORT + 1)
    }
}

#[test]
fn every_contract_port_is_claimed_and_neighbours_are_not() {
    let m = machine();
    let claimed = [
        (COM1_PORT, 8u64),
        (I8042_PORT, 5),
        (CMOS_PORT, 2),
        (POST_PORT, 1),
        (BOOT_TIMER_PORT, 1),
        (DEBUG_EXIT_PORT, 1),
        (PVPANIC_PORT, 1),
        (ACPI_PM_PORT, 16),
    ];
    let ranges: Vec<(u64, u64)> = m.devices.bus.ranges().collect();
    let mut expected: Vec<(u64, u64)> = claimed.iter().map(|&(b, l)| (b, b + l - 1)).collect();
    expected.sort();
    assert_eq!(ranges, expected);
    for port in [
        0x3f7u64, 0x400, 0x5f, 0x65, 0x6f, 0x72, 0x7f, 0x81, 0x43f, 0x441, 0x500, 0x502, 0x504,
        0x506, 0x5ff, 0x610,
    ] {
        assert!(
            !m.devices.bus.read(port, &mut [0u8]),
            "{port:#x} should be unclaimed"
        );
    }
}

#[test]
fn serial_output_lands_on_the_console_and_lsr_is_always_ready() {
    let m = machine();
    for &b in b"PROBE PASS protocol=linux64\n" {
        assert_eq!(m.inb(COM1_PORT + 5) & 0x60, 0x60);
        m.outb(COM1_PORT, b);
    }
    assert_eq!(
        m.console.0.lock().unwrap().as_slice(),
        b"PROBE PASS protocol=linux64\n"
    );
    assert_eq!(m.devices.counters.serial.snapshot().bytes_out, 28);
    assert!(m.irq4.read().is_err(), "no interrupt with IER clear");
}

#[test]
fn serial_input_through_the_shared_handle_reaches_the_guest() {
    let m = machine();
    m.outb(COM1_PORT + 1, 0x01); // RX interrupt on
    let queued = m
        .devices
        .serial
        .lock()
        .unwrap()
        .enqueue_input(b"ok")
        .unwrap();
    assert_eq!(queued, 2);
    assert_eq!(m.irq4.read().unwrap(), 1);
    assert_eq!(m.inb(COM1_PORT), b'o');
    assert_eq!(m.inb(COM1_PORT), b'k');
}

#[test]
fn the_probe_rtc_check_sees_status_a_0x26_and_a_bcd_time() {
    let m = machine();
    let a = m.cmos(0x0a);
    assert_eq!(a, 0x26);
    assert_eq!(a & 0x80, 0, "UIP clear");
    assert_eq!(m.cmos(0x0b), 0x02);
    for (index, max) in [
        (0x00u8, 0x59u8),
        (0x02, 0x59),
        (0x04, 0x23),
        (0x07, 0x31),
        (0x08, 0x12),
    ] {
        let v = m.cmos(index);
        assert!(
            v <= max && v & 0x0f <= 9,
            "register {index:#x} = {v:#x} is not BCD in range"
        );
    }
}

#[test]
fn boot_timer_and_post_port() {
    let m = machine();
    m.outb(POST_PORT, 0x12);
    assert_eq!(m.inb(POST_PORT), 0);
    assert!(m.stamp.first().is_none());
    m.outb(BOOT_TIMER_PORT, 7);
    m.outb(BOOT_TIMER_PORT, 8);
    assert_eq!(m.stamp.first().map(|s| s.value), Some(7));
    assert_eq!(m.stamp.later_writes(), 1);
    assert!(m.exit.first().is_none());
}

#[test]
fn each_exit_port_asks_for_its_own_exit() {
    type Poke = fn(&Machine);
    let cases: [(&str, Poke, GuestExitRequest); 4] = [
        (
            "acpi",
            |m| m.outw(ACPI_PM_PORT + 4, 1 << 13),
            GuestExitRequest::PowerOff,
        ),
        (
            "i8042",
            |m| m.outb(I8042_PORT + 4, 0xfe),
            GuestExitRequest::Reset,
        ),
        (
            "pvpanic",
            |m| m.outb(PVPANIC_PORT, 1),
            GuestExitRequest::Panic,
        ),
        (
            "debug-exit",
            |m| m.outb(DEBUG_EXIT_PORT, 1),
            GuestExitRequest::DebugExit(1),
        ),
    ];
    for (name, poke, expected) in cases {
        let m = machine();
        assert_eq!(m.inb(PVPANIC_PORT), 0x01);
        poke(&m);
        assert_eq!(m.exit.first(), Some(expected), "{name}");
        assert_eq!(m.exit.requests(), 1, "{name}");
        let total: u64 = m
            .devices
            .counters
            .snapshot()
            .iter()
            .map(|(_, c)| c.exits_requested)
            .sum();
        assert_eq!(total, 1, "{name}");
    }
}

#[test]
fn a_hostile_guest_sweeping_every_port_with_every_size_never_panics() {
    let m = machine();
    // 0xde has bit 0 clear (no pvpanic, no i8042 reset pulse) and 0xdede has bit 13 clear
    // (no ACPI sleep), so the only exit trigger left is a byte write to isa-debug-exit.
    let value = 0xdeu8;
    let mut unclaimed = 0;
    for port in 0..0x1000u64 {
        for size in [0usize, 1, 2, 3, 4, 8] {
            let mut buf = vec![0u8; size];
            if !m.devices.bus.read(port, &mut buf) {
                unclaimed += 1;
                assert!(
                    buf.iter().all(|&b| b == 0),
                    "unclaimed reads leave the buffer alone"
                );
            }
            if !(port == DEBUG_EXIT_PORT && size == 1) {
                m.devices.bus.write(port, &vec![value; size]);
            }
        }
    }
    assert_eq!(m.exit.requests(), 0, "{:?}", m.exit.first());
    assert!(unclaimed > 0x1000 * 5, "most of the port space is empty");
    let unknown: u64 = m
        .devices
        .counters
        .snapshot()
        .iter()
        .map(|(_, c)| c.unknown_accesses)
        .sum();
    assert!(unknown > 0, "odd sizes inside devices are counted");
    m.outb(DEBUG_EXIT_PORT, value);
    assert_eq!(m.exit.first(), Some(GuestExitRequest::DebugExit(value)));
}
