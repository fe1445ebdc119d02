//! An ARM PrimeCell PL011 UART on the MMIO bus: the serial console of aarch64 guests.
//!
//! It models what Linux's `amba-pl011` driver and its `earlycon=pl011` use: the data
//! register, the flag register, the interrupt mask/status/clear registers and the PrimeCell
//! identification bytes (the AMBA bus matches the driver on them). The transmitter is always
//! empty: every byte the guest writes to UARTDR goes straight to the host-side writer and
//! raises the transmit interrupt, which the guest acknowledges through UARTICR. Host input
//! waits in a 32-byte receive FIFO (the PL011 r1p5 depth).
//!
//! The interrupt line is an eventfd the VMM registers as an irqfd: it is written each time an
//! enabled interrupt becomes pending.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::counters::DeviceCounters;
use crate::fill_all_ones;

/// Size of the register window the UART decodes (one 4 KiB page).
pub const PL011_MMIO_SIZE: u64 = 0x1000;
/// Depth of the receive FIFO.
pub const PL011_FIFO_DEPTH: usize = 32;

/// Data register: write sends a byte, read takes one from the receive FIFO.
pub const UARTDR: u64 = 0x000;
/// Receive status / error clear register.
pub const UARTRSR: u64 = 0x004;
/// Flag register.
pub const UARTFR: u64 = 0x018;
/// IrDA low-power counter register.
pub const UARTILPR: u64 = 0x020;
/// Integer baud rate divisor.
pub const UARTIBRD: u64 = 0x024;
/// Fractional baud rate divisor.
pub const UARTFBRD: u64 = 0x028;
/// Line control register.
pub const UARTLCR_H: u64 = 0x02c;
/// Control register.
pub const UARTCR: u64 = 0x030;
/// Interrupt FIFO level select.
pub const UARTIFLS: u64 = 0x034;
/// Interrupt mask set/clear.
pub const UARTIMSC: u64 = 0x038;
/// Raw interrupt status.
pub const UARTRIS: u64 = 0x03c;
/// Masked interrupt status.
pub const UARTMIS: u64 = 0x040;
/// Interrupt clear (write 1 to clear).
pub const UARTICR: u64 = 0x044;
/// DMA control register.
pub const UARTDMACR: u64 = 0x048;
/// First of the eight identification registers (PeriphID0-3, PCellID0-3).
pub const UARTPERIPHID0: u64 = 0xfe0;

/// UARTFR: receive FIFO empty.
pub const FR_RXFE: u32 = 1 << 4;
/// UARTFR: transmit FIFO full.
pub const FR_TXFF: u32 = 1 << 5;
/// UARTFR: receive FIFO full.
pub const FR_RXFF: u32 = 1 << 6;
/// UARTFR: transmit FIFO empty.
pub const FR_TXFE: u32 = 1 << 7;
/// UARTFR: UART busy transmitting.
pub const FR_BUSY: u32 = 1 << 3;

/// Interrupt bit: receive.
pub const INT_RX: u32 = 1 << 4;
/// Interrupt bit: transmit.
pub const INT_TX: u32 = 1 << 5;
/// Interrupt bit: receive timeout.
pub const INT_RT: u32 = 1 << 6;
/// Every interrupt bit the PL011 has (modem, receive, transmit, timeout and error bits).
const INT_ALL: u32 = 0x7ff;

/// PeriphID0-3 then PCellID0-3, one byte in each 32-bit register: part 0x011 (PL011),
/// designer 0x41 (ARM), revision r1p5; the PrimeCell id 0xB105F00D.
pub const PL011_ID: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// Control register value at reset: UART enable off, TXE and RXE on.
const CR_RESET: u32 = 0x300;
/// Interrupt FIFO level at reset: half full both ways.
const IFLS_RESET: u32 = 0x12;

/// The PL011 device.
pub struct Pl011 {
    out: Box<dyn Write + Send>,
    irq: EventFd,
    counters: Arc<DeviceCounters>,
    rx: VecDeque<u8>,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
    ilpr: u32,
}

impl fmt::Debug for Pl011 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pl011")
            .field("imsc", &self.imsc)
            .field("ris", &self.ris)
            .field("rx_len", &self.rx.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Pl011 {
    /// A UART that writes guest output to `out` and signals `irq` when an enabled interrupt
    /// becomes pending.
    pub fn new(out: Box<dyn Write + Send>, irq: EventFd) -> Pl011 {
        Pl011 {
            out,
            irq,
            counters: Arc::new(DeviceCounters::default()),
            rx: VecDeque::with_capacity(PL011_FIFO_DEPTH),
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            ris: 0,
            dmacr: 0,
            ilpr: 0,
        }
    }

    /// The device's counters: `bytes_out`, `bytes_lost` (the host writer failed), `bytes_in`
    /// (queued for the guest), `interrupt_errors` (the eventfd could not be written).
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        PL011_FIFO_DEPTH - self.rx.len()
    }

    /// Queues host input for the guest and raises the receive interrupts. Returns how many
    /// bytes fit; the caller keeps the rest and retries after the guest reads.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let fits = bytes.len().min(self.input_capacity());
        if fits == 0 {
            return 0;
        }
        self.rx.extend(&bytes[..fits]);
        self.counters.bytes_in(fits as u64);
        self.raise(INT_RX | INT_RT);
        fits
    }

    /// Whether the interrupt line is asserted (an unmasked interrupt is pending).
    pub fn irq_asserted(&self) -> bool {
        self.ris & self.imsc != 0
    }

    /// Sets raw status bits and signals the line if that makes an enabled one newly pending.
    fn raise(&mut self, bits: u32) {
        let newly = bits & !self.ris & self.imsc;
        self.ris |= bits;
        if newly != 0 {
            self.signal();
        }
    }

    fn signal(&self) {
        if self.irq.write(1).is_err() {
            self.counters.interrupt_error();
        }
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        }
        if self.rx.len() >= PL011_FIFO_DEPTH {
            fr |= FR_RXFF;
        }
        fr
    }

    fn read_data(&mut self) -> u32 {
        let byte = self.rx.pop_front().map_or(0, u32::from);
        if self.rx.is_empty() {
            self.ris &= !(INT_RX | INT_RT);
        }
        byte
    }

    fn send(&mut self, byte: u8) {
        let sent = self.out.write_all(&[byte]).and_then(|()| self.out.flush());
        if sent.is_ok() {
            self.counters.byte_out();
        } else {
            self.counters.byte_lost();
        }
        // The byte left at once: the FIFO is below any level, so TX is pending again.
        self.raise(INT_TX);
    }

    /// The value of the 32-bit register at `offset`, or None if there is none there.
    fn register(&mut self, offset: u64) -> Option<u32> {
        let value = match offset {
            UARTDR => self.read_data(),
            UARTRSR => 0,
            UARTFR => self.flags(),
            UARTILPR => self.ilpr,
            UARTIBRD => self.ibrd,
            UARTFBRD => self.fbrd,
            UARTLCR_H => self.lcr_h,
            UARTCR => self.cr,
            UARTIFLS => self.ifls,
            UARTIMSC => self.imsc,
            UARTRIS => self.ris,
            UARTMIS => self.ris & self.imsc,
            UARTDMACR => self.dmacr,
            o if (UARTPERIPHID0..UARTPERIPHID0 + 32).contains(&o) => {
                let index = usize::try_from((o - UARTPERIPHID0) / 4).ok()?;
                u32::from(*PL011_ID.get(index)?)
            }
            _ => return None,
        };
        Some(value)
    }

    fn set_register(&mut self, offset: u64, value: u32) -> bool {
        match offset {
            UARTDR => self.send(value as u8),
            UARTRSR => {} // error clear: we never report errors
            UARTILPR => self.ilpr = value & 0xff,
            UARTIBRD => self.ibrd = value & 0xffff,
            UARTFBRD => self.fbrd = value & 0x3f,
            UARTLCR_H => self.lcr_h = value & 0xff,
            UARTCR => self.cr = value & 0xffff,
            UARTIFLS => self.ifls = value & 0x3f,
            UARTIMSC => {
                let newly = value & INT_ALL & !self.imsc & self.ris;
                self.imsc = value & INT_ALL;
                if newly != 0 {
                    self.signal();
                }
            }
            UARTICR => self.ris &= !value,
            UARTDMACR => self.dmacr = value & 0x7,
            _ => return false,
        }
        true
    }
}

/// Registers are 32 bits wide at 4-byte aligned offsets; 8-, 16- and 32-bit accesses at the
/// register's offset are served (Linux uses all three), everything else is not.
fn valid_access(offset: u64, size: usize) -> bool {
    offset % 4 == 0 && matches!(size, 1 | 2 | 4) && offset < PL011_MMIO_SIZE
}

impl BusDevice for Pl011 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.read();
        let value = if valid_access(offset, data.len()) {
            self.register(offset)
        } else {
            None
        };
        match value {
            Some(v) => {
                let bytes = v.to_le_bytes();
                data.copy_from_slice(&bytes[..data.len()]);
            }
            None => {
                self.counters.unknown();
                fill_all_ones(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.write();
        if !valid_access(offset, data.len()) {
            self.counters.unknown();
            return;
        }
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        if !self.set_register(offset, u32::from_le_bytes(bytes)) {
            self.counters.unknown();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::test_util::ODD_SIZES;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().map_err(|_| io::ErrorKind::Other)?.extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SharedBuf {
        fn contents(&self) -> Vec<u8> {
            self.0.lock().map(|b| b.clone()).unwrap_or_default()
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Pl011, SharedBuf, EventFd) {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let dev = Pl011::new(Box::new(out.clone()), irq.try_clone().expect("dup"));
        (dev, out, irq)
    }

    fn rd(dev: &mut Pl011, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        dev.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn wr(dev: &mut Pl011, offset: u64, value: u32) {
        dev.write(offset, &value.to_le_bytes());
    }

    /// Interrupt edges signalled since the last call.
    fn irqs(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn bytes_written_to_uartdr_reach_the_host_and_are_counted() {
        let (mut dev, out, _irq) = uart();
        for b in b"hi\n" {
            wr(&mut dev, UARTDR, u32::from(*b));
        }
        // A byte-wide write (earlycon with reg-io-width 1) works too.
        dev.write(UARTDR, b"!");
        assert_eq!(out.contents(), b"hi\n!");
        assert_eq!(dev.counters().snapshot().bytes_out, 4);
        assert_eq!(dev.counters().snapshot().bytes_lost, 0);
    }

    #[test]
    fn a_failing_host_writer_counts_lost_bytes() {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut dev = Pl011::new(Box::new(Broken), irq);
        wr(&mut dev, UARTDR, u32::from(b'x'));
        let snap = dev.counters().snapshot();
        assert_eq!((snap.bytes_out, snap.bytes_lost), (0, 1));
    }

    #[test]
    fn flags_report_an_empty_transmitter_and_the_receive_fifo_state() {
        let (mut dev, _out, _irq) = uart();
        let fr = rd(&mut dev, UARTFR);
        assert_eq!(fr & (FR_TXFE | FR_RXFE), FR_TXFE | FR_RXFE);
        assert_eq!(fr & (FR_TXFF | FR_BUSY | FR_RXFF), 0);

        assert_eq!(dev.enqueue_input(b"a"), 1);
        let fr = rd(&mut dev, UARTFR);
        assert_eq!(fr & (FR_RXFE | FR_RXFF), 0);

        let fill = [b'z'; PL011_FIFO_DEPTH];
        assert_eq!(dev.enqueue_input(&fill), PL011_FIFO_DEPTH - 1);
        assert_eq!(dev.enqueue_input(b"more"), 0, "a full FIFO takes nothing");
        assert_ne!(rd(&mut dev, UARTFR) & FR_RXFF, 0);
        assert_eq!(dev.counters().snapshot().bytes_in, PL011_FIFO_DEPTH as u64);
    }

    #[test]
    fn received_bytes_come_out_of_uartdr_in_order() {
        let (mut dev, _out, _irq) = uart();
        dev.enqueue_input(b"ok");
        assert_eq!(rd(&mut dev, UARTDR), u32::from(b'o'));
        assert_eq!(rd(&mut dev, UARTDR), u32::from(b'k'));
        assert_ne!(rd(&mut dev, UARTFR) & FR_RXFE, 0);
    }

    #[test]
    fn transmit_interrupt_is_raw_until_cleared_and_masked_by_imsc() {
        let (mut dev, _out, irq) = uart();
        wr(&mut dev, UARTDR, u32::from(b'a'));
        assert_eq!(rd(&mut dev, UARTRIS) & INT_TX, INT_TX);
        assert_eq!(rd(&mut dev, UARTMIS), 0, "masked while IMSC is 0");
        assert_eq!(irqs(&irq), 0);
        assert!(!dev.irq_asserted());

        // Unmasking a pending interrupt signals the line at once.
        wr(&mut dev, UARTIMSC, INT_TX);
        assert_eq!(rd(&mut dev, UARTIMSC), INT_TX);
        assert_eq!(rd(&mut dev, UARTMIS), INT_TX);
        assert!(dev.irq_asserted());
        assert_eq!(irqs(&irq), 1);

        // Writing 1 to ICR clears it; the next byte raises it again.
        wr(&mut dev, UARTICR, INT_TX);
        assert_eq!(rd(&mut dev, UARTRIS) & INT_TX, 0);
        assert_eq!(rd(&mut dev, UARTMIS), 0);
        wr(&mut dev, UARTDR, u32::from(b'b'));
        assert_eq!(rd(&mut dev, UARTMIS), INT_TX);
        assert_eq!(irqs(&irq), 1);

        // Still pending: another byte does not signal a second edge.
        wr(&mut dev, UARTDR, u32::from(b'c'));
        assert_eq!(irqs(&irq), 0);
    }

    #[test]
    fn receive_interrupts_follow_the_fifo() {
        let (mut dev, _out, irq) = uart();
        wr(&mut dev, UARTIMSC, INT_RX | INT_RT);
        assert_eq!(irqs(&irq), 0);
        dev.enqueue_input(b"xy");
        assert_eq!(irqs(&irq), 1);
        assert_eq!(rd(&mut dev, UARTMIS), INT_RX | INT_RT);
        rd(&mut dev, UARTDR);
        assert_eq!(rd(&mut dev, UARTMIS), INT_RX | INT_RT, "one byte left");
        rd(&mut dev, UARTDR);
        assert_eq!(rd(&mut dev, UARTRIS) & (INT_RX | INT_RT), 0, "drained");
        assert!(!dev.irq_asserted());
    }

    #[test]
    fn identification_registers_hold_the_primecell_ids() {
        let (mut dev, _out, _irq) = uart();
        let ids: Vec<u8> = (0..8)
            .map(|i| rd(&mut dev, UARTPERIPHID0 + 4 * i) as u8)
            .collect();
        assert_eq!(ids, PL011_ID);
        // The AMBA bus reads them as a part number and a cell id.
        let periph = ids[..4]
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (8 * i));
        assert_eq!(periph & 0xfff, 0x011, "part number PL011");
        assert_eq!((periph >> 12) & 0xff, 0x41, "designer ARM");
        let cell = ids[4..]
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (8 * i));
        assert_eq!(cell, 0xb105_f00d);
    }

    #[test]
    fn configuration_registers_keep_what_the_guest_writes() {
        let (mut dev, _out, _irq) = uart();
        assert_eq!(rd(&mut dev, UARTCR), CR_RESET);
        for (reg, value) in [
            (UARTIBRD, 0x1a),
            (UARTFBRD, 0x03),
            (UARTLCR_H, 0x70),
            (UARTCR, 0x301),
            (UARTIFLS, 0x09),
        ] {
            wr(&mut dev, reg, value);
            assert_eq!(rd(&mut dev, reg), value, "register {reg:#x}");
        }
        assert_eq!(dev.counters().snapshot().unknown_accesses, 0);
    }

    #[test]
    fn odd_sizes_offsets_and_holes_read_as_ones_and_are_counted() {
        let (mut dev, out, _irq) = uart();
        let mut unknown = 0;
        for size in ODD_SIZES {
            let mut data = vec![0u8; size];
            dev.read(UARTFR + 1, &mut data);
            assert!(data.iter().all(|b| *b == 0xff));
            dev.write(UARTDR + 2, &vec![b'q'; size]);
            unknown += 2;
            if !matches!(size, 1 | 2 | 4) {
                let mut data = vec![0u8; size];
                dev.read(UARTFR, &mut data);
                assert!(data.iter().all(|b| *b == 0xff));
                dev.write(UARTDR, &vec![b'q'; size]);
                unknown += 2;
            }
        }
        // A hole in the register map and an offset past the window.
        assert_eq!(rd(&mut dev, 0x08c), u32::MAX);
        assert_eq!(rd(&mut dev, PL011_MMIO_SIZE), u32::MAX);
        unknown += 2;
        assert!(out.contents().is_empty(), "no bad access transmits");
        assert_eq!(dev.counters().snapshot().unknown_accesses, unknown);
    }
}
