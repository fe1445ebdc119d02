//! A minimal i8042 keyboard controller at ports 0x60 (data) and 0x64 (status/command).
//!
//! Enough for a guest to reset the machine (command 0xFE, or any reset pulse) and for
//! Linux's i8042 driver to probe the controller quickly and conclude what is there: a
//! controller that passes its self-test, a keyboard port with no keyboard behind it (bytes
//! sent to it come back as 0xFE with the timeout bit, "no device") and no AUX (mouse) port
//! (the AUX loopback answers "no device" and the AUX interface test reports its clock line
//! stuck low), so no probe waits on a timeout.
//!
//! The output buffer is a single byte, as in the real part: a new answer replaces an
//! unread one. Controller answers are never signalled by interrupt; bytes "from the
//! keyboard" raise IRQ 1 through an optional eventfd while the CTR enables it.

use std::fmt;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::counters::DeviceCounters;
use crate::exit::{ExitSink, GuestExitRequest};
use crate::fill_all_ones;

/// Ports the controller decodes (0x60..=0x64); only the first and last are registers.
pub const I8042_PORTS: u64 = 5;
const DATA_PORT: u64 = 0;
const COMMAND_PORT: u64 = 4;

// Status register bits.
const STS_OUTPUT_FULL: u8 = 0x01;
const STS_SYSTEM: u8 = 0x04;
const STS_LAST_WAS_COMMAND: u8 = 0x08;
const STS_UNLOCKED: u8 = 0x10;
const STS_AUX_DATA: u8 = 0x20;
const STS_TIMEOUT: u8 = 0x40;

// Controller configuration byte (CTR, internal RAM byte 0) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// What a BIOS leaves behind: keyboard interrupt on, POST passed, AUX off, translation on.
const INITIAL_CTR: u8 = CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLED | CTR_TRANSLATE;

// Output port bits: bit 0 is the CPU reset line (active low), bit 1 the A20 gate.
const OUTPUT_PORT_NOT_RESET: u8 = 0x01;
const INITIAL_OUTPUT_PORT: u8 = 0x03;

// Commands written to port 0x64.
const CMD_READ_RAM_FIRST: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM_FIRST: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_FIRST: u8 = 0xf0;

// Answers.
const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;
const PORT_TEST_CLOCK_STUCK_LOW: u8 = 0x01;
const NO_DEVICE: u8 = 0xfe;

/// Where the next byte written to the data port goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    /// No command pending: the byte is for the keyboard (absent).
    Keyboard,
    /// After 0x60..=0x7F: internal RAM byte N (byte 0 is the CTR).
    Ram(u8),
    /// After 0xD1.
    OutputPort,
    /// After 0xD2: the byte appears in the output buffer as if the keyboard sent it.
    KbdOutputBuffer,
    /// After 0xD3 or 0xD4: the AUX port, which does not exist.
    AuxPort,
}

/// The i8042 controller device.
pub struct I8042 {
    exit: Arc<dyn ExitSink>,
    kbd_irq: Option<EventFd>,
    ram: [u8; 32],
    output_port: u8,
    output: u8,
    /// OBF plus the AUX/timeout bits that describe `output`.
    output_flags: u8,
    last_was_command: bool,
    next_data: DataTarget,
    counters: Arc<DeviceCounters>,
}

impl fmt::Debug for I8042 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042")
            .field("ctr", &self.ram[0])
            .field("output_port", &self.output_port)
            .field("next_data", &self.next_data)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that reports resets to `exit` and has no keyboard interrupt line.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        let mut ram = [0; 32];
        ram[0] = INITIAL_CTR;
        Self {
            exit,
            kbd_irq: None,
            ram,
            output_port: INITIAL_OUTPUT_PORT,
            output: 0,
            output_flags: 0,
            last_was_command: false,
            next_data: DataTarget::Keyboard,
            counters: Arc::default(),
        }
    }

    /// Signals `irq` (the VMM's irqfd for IRQ 1) when a keyboard-port byte arrives while
    /// the CTR enables the keyboard interrupt. Lets an interrupt-driven guest see the
    /// "no device" answer at once instead of waiting for its own timeout.
    pub fn with_kbd_irq(mut self, irq: EventFd) -> Self {
        self.kbd_irq = Some(irq);
        self
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut status = self.output_flags | STS_UNLOCKED | (self.ctr() & STS_SYSTEM);
        if self.last_was_command {
            status |= STS_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        // Reading empties the buffer; the register keeps its last value, as on hardware.
        self.output_flags = 0;
        self.output
    }

    /// The controller itself answers a command.
    fn answer(&mut self, byte: u8) {
        self.output = byte;
        self.output_flags = STS_OUTPUT_FULL;
    }

    /// A byte arrives from one of the device ports.
    fn port_byte(&mut self, byte: u8, flags: u8) {
        self.output = byte;
        self.output_flags = STS_OUTPUT_FULL | flags;
        if flags & STS_AUX_DATA == 0 && self.ctr() & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.kbd_irq {
                if irq.write(1).is_err() {
                    self.counters.interrupt_error();
                }
            }
        }
    }

    fn reset(&mut self) {
        self.counters.exit();
        self.exit.request_exit(GuestExitRequest::Reset);
    }

    fn command(&mut self, cmd: u8) {
        self.next_data = DataTarget::Keyboard;
        match cmd {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                self.answer(self.ram[usize::from(cmd - CMD_READ_RAM_FIRST)])
            }
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST => {
                self.next_data = DataTarget::Ram(cmd - CMD_WRITE_RAM_FIRST)
            }
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUX_DISABLED,
            CMD_AUX_TEST => self.answer(PORT_TEST_CLOCK_STUCK_LOW),
            CMD_SELF_TEST => {
                self.ram[0] |= CTR_SYSTEM;
                self.answer(SELF_TEST_PASSED);
            }
            CMD_KBD_TEST => self.answer(PORT_TEST_PASSED),
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBD_DISABLED,
            CMD_READ_OUTPUT_PORT => self.answer(self.output_port),
            CMD_WRITE_OUTPUT_PORT => self.next_data = DataTarget::OutputPort,
            CMD_WRITE_KBD_OUTPUT => self.next_data = DataTarget::KbdOutputBuffer,
            CMD_WRITE_AUX_OUTPUT | CMD_WRITE_AUX => self.next_data = DataTarget::AuxPort,
            // Pulse output lines for ~6 us: a clear bit 0 pulses the CPU reset line
            // (0xFE is the classic "reboot via keyboard controller").
            CMD_PULSE_FIRST..=0xff => {
                if cmd & OUTPUT_PORT_NOT_RESET == 0 {
                    self.reset();
                }
            }
            _ => self.counters.unknown(),
        }
    }

    fn data(&mut self, value: u8) {
        match std::mem::replace(&mut self.next_data, DataTarget::Keyboard) {
            DataTarget::Keyboard => self.port_byte(NO_DEVICE, STS_TIMEOUT),
            DataTarget::Ram(index) => self.ram[usize::from(index)] = value,
            DataTarget::OutputPort => {
                self.output_port = value;
                if value & OUTPUT_PORT_NOT_RESET == 0 {
                    self.reset();
                }
            }
            DataTarget::KbdOutputBuffer => self.port_byte(value, 0),
            DataTarget::AuxPort => self.port_byte(NO_DEVICE, STS_AUX_DATA | STS_TIMEOUT),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.read();
        match (offset, data) {
            (DATA_PORT, [byte]) => *byte = self.read_data(),
            (COMMAND_PORT, [byte]) => *byte = self.status(),
            (_, data) => {
                self.counters.unknown();
                fill_all_ones(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.write();
        match (offset, data) {
            (DATA_PORT, &[value]) => {
                self.last_was_command = false;
                self.data(value);
            }
            (COMMAND_PORT, &[cmd]) => {
                self.last_was_command = true;
                self.command(cmd);
            }
            _ => self.counters.unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{RecordingSink, ODD_SIZES};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn controller() -> (I8042, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::default());
        (I8042::new(sink.clone()), sink)
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(COMMAND_PORT, &mut b);
        b[0]
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(DATA_PORT, &mut b);
        b[0]
    }

    /// Linux's `__i8042_command`, polling: the command byte, its parameters, then one
    /// answer per expected byte; for the AUX loopback an answer must carry AUXDATA.
    fn linux_command(
        dev: &mut I8042,
        cmd: u8,
        params: &[u8],
        answers: usize,
    ) -> Result<Vec<u8>, &'static str> {
        dev.write(COMMAND_PORT, &[cmd]);
        for &p in params {
            dev.write(DATA_PORT, &[p]);
        }
        let mut out = Vec::new();
        for _ in 0..answers {
            let st = status(dev);
            if st & STS_OUTPUT_FULL == 0 {
                return Err("timeout");
            }
            if cmd == CMD_WRITE_AUX_OUTPUT && st & STS_AUX_DATA == 0 {
                return Err("auxerr");
            }
            out.push(data(dev));
        }
        Ok(out)
    }

    #[test]
    fn initial_status_has_system_and_unlocked_bits_and_an_empty_buffer() {
        let (mut dev, _) = controller();
        assert_eq!(status(&mut dev), STS_UNLOCKED | STS_SYSTEM);
    }

    #[test]
    fn command_0xfe_resets_and_other_pulses_follow_bit0() {
        let (mut dev, sink) = controller();
        dev.write(COMMAND_PORT, &[0xff]); // pulse nothing
        assert!(sink.requests().is_empty());
        dev.write(COMMAND_PORT, &[0xfe]);
        assert_eq!(sink.requests(), vec![GuestExitRequest::Reset]);
        dev.write(COMMAND_PORT, &[0xf0]);
        assert_eq!(sink.requests().len(), 2);
        assert_eq!(dev.counters().snapshot().exits_requested, 2);
        // 0xFE written to the data port is a keyboard byte, not a reset.
        dev.write(DATA_PORT, &[0xfe]);
        assert_eq!(sink.requests().len(), 2);
    }

    #[test]
    fn self_test_answers_0x55() {
        let (mut dev, _) = controller();
        assert_eq!(
            linux_command(&mut dev, CMD_SELF_TEST, &[], 1),
            Ok(vec![0x55])
        );
        assert_eq!(status(&mut dev) & STS_OUTPUT_FULL, 0, "answer consumed");
        assert_ne!(status(&mut dev) & STS_SYSTEM, 0);
    }

    #[test]
    fn command_byte_round_trips_and_drives_the_system_flag() {
        let (mut dev, _) = controller();
        assert_eq!(linux_command(&mut dev, 0x20, &[], 1), Ok(vec![INITIAL_CTR]));
        linux_command(&mut dev, 0x60, &[0x30], 0).unwrap();
        assert_eq!(linux_command(&mut dev, 0x20, &[], 1), Ok(vec![0x30]));
        assert_eq!(status(&mut dev) & STS_SYSTEM, 0, "CTR bit 2 cleared");
        // Other RAM bytes through 0x21..0x3F / 0x61..0x7F.
        linux_command(&mut dev, 0x7f, &[0xab], 0).unwrap();
        assert_eq!(linux_command(&mut dev, 0x3f, &[], 1), Ok(vec![0xab]));
        assert_eq!(linux_command(&mut dev, 0x20, &[], 1), Ok(vec![0x30]));
    }

    #[test]
    fn port_enable_and_disable_commands_toggle_ctr_bits() {
        let (mut dev, _) = controller();
        let ctr = |dev: &mut I8042| linux_command(dev, 0x20, &[], 1).unwrap()[0];
        dev.write(COMMAND_PORT, &[CMD_KBD_DISABLE]);
        assert_ne!(ctr(&mut dev) & CTR_KBD_DISABLED, 0);
        dev.write(COMMAND_PORT, &[CMD_KBD_ENABLE]);
        assert_eq!(ctr(&mut dev) & CTR_KBD_DISABLED, 0);
        dev.write(COMMAND_PORT, &[CMD_AUX_ENABLE]);
        assert_eq!(ctr(&mut dev) & CTR_AUX_DISABLED, 0);
        dev.write(COMMAND_PORT, &[CMD_AUX_DISABLE]);
        assert_ne!(ctr(&mut dev) & CTR_AUX_DISABLED, 0);
    }

    #[test]
    fn the_last_write_port_shows_in_status_bit3() {
        let (mut dev, _) = controller();
        dev.write(COMMAND_PORT, &[CMD_KBD_ENABLE]);
        assert_ne!(status(&mut dev) & STS_LAST_WAS_COMMAND, 0);
        dev.write(DATA_PORT, &[0xf4]);
        assert_eq!(status(&mut dev) & STS_LAST_WAS_COMMAND, 0);
    }

    /// Linux's `i8042_check_mux` and `i8042_check_aux`, as decisions: both must end at the
    /// first exchange and leave nothing behind in the output buffer.
    #[test]
    fn linux_concludes_no_mux_and_no_aux_without_waiting() {
        let (mut dev, sink) = controller();
        // check_mux: the first loopback must echo 0xF0 for a MUX to exist.
        let echo = linux_command(&mut dev, CMD_WRITE_AUX_OUTPUT, &[0xf0], 1).unwrap();
        assert_ne!(echo, vec![0xf0], "no active multiplexer");
        // check_aux: loopback of 0x5A fails, so the AUX test decides; a non-zero answer
        // other than 0xFA/0xFF means "no AUX port".
        let echo = linux_command(&mut dev, CMD_WRITE_AUX_OUTPUT, &[0x5a], 1).unwrap();
        assert_ne!(echo, vec![0x5a]);
        let test = linux_command(&mut dev, CMD_AUX_TEST, &[], 1).unwrap();
        assert!(
            test[0] != 0 && test[0] != 0xfa && test[0] != 0xff,
            "{test:?}"
        );
        assert_eq!(status(&mut dev) & STS_OUTPUT_FULL, 0, "nothing stale left");
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn bytes_for_the_absent_keyboard_answer_no_device_with_timeout() {
        let (mut dev, _) = controller();
        dev.write(DATA_PORT, &[0xf2]); // GET ID
        let st = status(&mut dev);
        assert_eq!(st & (STS_OUTPUT_FULL | STS_TIMEOUT | STS_AUX_DATA), 0x41);
        assert_eq!(data(&mut dev), NO_DEVICE);
        assert_eq!(status(&mut dev) & (STS_OUTPUT_FULL | STS_TIMEOUT), 0);
    }

    #[test]
    fn keyboard_bytes_raise_irq1_only_while_the_ctr_enables_it() {
        let sink = Arc::new(RecordingSink::default());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(sink).with_kbd_irq(irq.try_clone().unwrap());

        // Controller answers never interrupt.
        linux_command(&mut dev, 0x20, &[], 1).unwrap();
        assert!(irq.read().is_err());

        dev.write(DATA_PORT, &[0xff]); // keyboard reset: "no device", KBDINT is set
        assert_eq!(irq.read().unwrap(), 1);
        data(&mut dev);

        linux_command(&mut dev, 0x60, &[INITIAL_CTR & !CTR_KBD_INT], 0).unwrap();
        dev.write(DATA_PORT, &[0xff]);
        assert!(irq.read().is_err(), "KBDINT clear: no interrupt");
        data(&mut dev);

        linux_command(&mut dev, 0x60, &[INITIAL_CTR], 0).unwrap();
        linux_command(&mut dev, CMD_WRITE_KBD_OUTPUT, &[0x1c], 0).unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(status(&mut dev) & (STS_OUTPUT_FULL | STS_AUX_DATA), 0x01);
        assert_eq!(data(&mut dev), 0x1c);

        // AUX bytes are never signalled on IRQ 1.
        linux_command(&mut dev, CMD_WRITE_AUX, &[0xf4], 0).unwrap();
        assert!(irq.read().is_err());
    }

    #[test]
    fn output_port_reads_back_and_a_cleared_reset_bit_resets() {
        let (mut dev, sink) = controller();
        assert_eq!(
            linux_command(&mut dev, CMD_READ_OUTPUT_PORT, &[], 1),
            Ok(vec![0x03])
        );
        linux_command(&mut dev, CMD_WRITE_OUTPUT_PORT, &[0xdd], 0).unwrap(); // A20 off
        assert!(sink.requests().is_empty());
        assert_eq!(
            linux_command(&mut dev, CMD_READ_OUTPUT_PORT, &[], 1),
            Ok(vec![0xdd])
        );
        linux_command(&mut dev, CMD_WRITE_OUTPUT_PORT, &[0xde], 0).unwrap();
        assert_eq!(sink.requests(), vec![GuestExitRequest::Reset]);
    }

    #[test]
    fn unknown_commands_are_counted_and_not_answered() {
        let (mut dev, sink) = controller();
        for cmd in [0x00u8, 0x1f, 0x80, 0xa1, 0xc0, 0xe0] {
            dev.write(COMMAND_PORT, &[cmd]);
        }
        assert_eq!(status(&mut dev) & STS_OUTPUT_FULL, 0);
        assert_eq!(dev.counters().snapshot().unknown_accesses, 6);
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn odd_sizes_and_unused_ports_read_all_ones_and_never_reset() {
        let (mut dev, sink) = controller();
        for size in ODD_SIZES {
            for offset in [1u64, 2, 3, 5, u64::MAX] {
                let mut buf = vec![0u8; size];
                dev.read(offset, &mut buf);
                assert!(buf.iter().all(|&b| b == 0xff));
                dev.write(offset, &vec![0xfe; size]);
            }
            if size != 1 {
                let mut buf = vec![0u8; size];
                dev.read(COMMAND_PORT, &mut buf);
                assert!(buf.iter().all(|&b| b == 0xff));
                dev.write(COMMAND_PORT, &vec![0xfe; size]);
                dev.write(DATA_PORT, &vec![0xfe; size]);
            }
        }
        assert!(sink.requests().is_empty());
        let expected = ODD_SIZES.len() as u64 * 10 + (ODD_SIZES.len() as u64 - 1) * 3;
        assert_eq!(dev.counters().snapshot().unknown_accesses, expected);
    }

    #[test]
    fn every_byte_on_every_port_is_survivable() {
        let (mut dev, sink) = controller();
        let values = [0x00u8, 0x5a, 0xfe, 0xff];
        for cmd in 0..=255u8 {
            for value in values {
                dev.write(COMMAND_PORT, &[cmd]);
                dev.write(DATA_PORT, &[value]);
                status(&mut dev);
                data(&mut dev);
            }
        }
        // Resets come only from the 8 pulse commands with bit 0 clear (once per value) and
        // from output-port writes (0xD1) of a value with bit 0 clear.
        let even_values = values.iter().filter(|&&v| v & 1 == 0).count();
        assert_eq!(sink.requests().len(), 8 * values.len() + even_values);
        assert!(sink
            .requests()
            .iter()
            .all(|&r| r == GuestExitRequest::Reset));
    }
}
