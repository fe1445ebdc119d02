//! COM1: a 16550A UART (vm-superio's model) at 0x3f8, interrupting through an eventfd
//! that the VMM registers as the irqfd for IRQ 4.
//!
//! The transmitter is always empty (LSR reports THRE and TEMT at all times): every byte
//! the guest writes goes straight to the host-side writer.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::{Error as UartError, SerialEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::counters::DeviceCounters;
use crate::fill_all_ones;

/// Number of ports the UART decodes.
pub const SERIAL_PORTS: u64 = 8;

/// Why guest input could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The input was queued but the interrupt eventfd could not be written.
    #[error(
        "queued {queued} input bytes for the guest but could not signal the serial interrupt \
         eventfd; check that the VMM's irqfd for IRQ 4 is still registered"
    )]
    Interrupt {
        /// Bytes that did land in the receive FIFO.
        queued: usize,
        /// The eventfd write error.
        #[source]
        source: io::Error,
    },
}

/// The interrupt line: one eventfd write per edge.
struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Feeds vm-superio's callbacks into our counters.
struct CountingEvents(Arc<DeviceCounters>);

impl SerialEvents for CountingEvents {
    fn buffer_read(&self) {}

    fn out_byte(&self) {
        self.0.byte_out();
    }

    fn tx_lost_byte(&self) {
        self.0.byte_lost();
    }

    fn in_buffer_empty(&self) {}
}

type Uart = vm_superio::Serial<IrqLine, CountingEvents, Box<dyn Write + Send>>;

/// The COM1 device.
pub struct Serial {
    uart: Uart,
    counters: Arc<DeviceCounters>,
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART that writes guest output to `out` and signals `irq` when it interrupts.
    pub fn new(out: Box<dyn Write + Send>, irq: EventFd) -> Serial {
        let counters = Arc::new(DeviceCounters::default());
        let uart =
            vm_superio::Serial::with_events(IrqLine(irq), CountingEvents(counters.clone()), out);
        Serial { uart, counters }
    }

    /// The device's counters: `bytes_out` (written to the host), `bytes_lost` (the host
    /// writer failed), `bytes_in` (queued for the guest).
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest and raises the receive interrupt if the guest
    /// enabled it. Returns how many bytes fit (0 when the FIFO is full or the UART is in
    /// loopback mode); the caller keeps the rest and retries after the guest reads.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        let fits = bytes.len().min(self.uart.fifo_capacity());
        let queued = match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(UartError::FullFifo) => 0,
            Err(UartError::Trigger(source)) => {
                self.counters.bytes_in(fits as u64);
                self.counters.interrupt_error();
                return Err(SerialError::Interrupt {
                    queued: fits,
                    source,
                });
            }
            // Queuing input never writes to the host; treat it like a full FIFO.
            Err(UartError::IOError(_)) => 0,
        };
        self.counters.bytes_in(queued as u64);
        Ok(queued)
    }

    /// The register offset of a single-byte access inside the UART, if it is one.
    fn register(offset: u64, size: usize) -> Option<u8> {
        if size == 1 && offset < SERIAL_PORTS {
            u8::try_from(offset).ok()
        } else {
            None
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.read();
        match Self::register(offset, data.len()) {
            Some(reg) => data[0] = self.uart.read(reg),
            None => {
                self.counters.unknown();
                fill_all_ones(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.write();
        let Some(reg) = Self::register(offset, data.len()) else {
            self.counters.unknown();
            return;
        };
        match self.uart.write(reg, data[0]) {
            Ok(()) => {}
            // The lost byte is already counted by `CountingEvents::tx_lost_byte`.
            Err(UartError::IOError(_)) | Err(UartError::FullFifo) => {}
            Err(UartError::Trigger(_)) => self.counters.interrupt_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ODD_SIZES;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const LSR_TEMT: u8 = 0x40;

    /// A writer whose bytes the test can inspect.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct BrokenWriter;

    impl Write for BrokenWriter {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("host console closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, SharedBuf, EventFd) {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = Serial::new(Box::new(out.clone()), irq.try_clone().unwrap());
        (dev, out, irq)
    }

    fn rd(dev: &mut Serial, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    /// How many times the interrupt fired since the last call.
    fn irqs(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn bytes_written_to_thr_reach_the_host_and_are_counted() {
        let (mut dev, out, _irq) = serial();
        for &b in b"probe: ok\n" {
            dev.write(THR, &[b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"probe: ok\n");
        assert_eq!(dev.counters().snapshot().bytes_out, 10);
    }

    #[test]
    fn lsr_always_reports_thre_and_temt() {
        let (mut dev, _out, _irq) = serial();
        assert_eq!(
            rd(&mut dev, LSR) & (LSR_THRE | LSR_TEMT),
            LSR_THRE | LSR_TEMT
        );
        for b in 0..=255u8 {
            dev.write(THR, &[b]);
            assert_eq!(
                rd(&mut dev, LSR) & (LSR_THRE | LSR_TEMT),
                LSR_THRE | LSR_TEMT
            );
        }
        dev.enqueue_input(b"x").unwrap();
        assert_eq!(
            rd(&mut dev, LSR),
            LSR_THRE | LSR_TEMT | LSR_DR,
            "input adds only DR"
        );
    }

    #[test]
    fn thr_empty_interrupt_fires_on_each_write_when_enabled() {
        let (mut dev, _out, irq) = serial();
        dev.write(THR, b"a");
        assert_eq!(irqs(&irq), 0, "IER clear: no interrupt");

        dev.write(IER, &[0x02]); // ETBEI
        assert_eq!(
            irqs(&irq),
            1,
            "enabling THRE with an empty THR interrupts at once"
        );
        assert_eq!(rd(&mut dev, IIR) & 0x0f, 0x02, "IIR says THR empty");
        assert_eq!(
            rd(&mut dev, IIR) & 0x0f,
            0x01,
            "reading IIR acknowledged it"
        );

        dev.write(THR, b"b");
        assert_eq!(irqs(&irq), 1);
        assert_eq!(rd(&mut dev, IIR) & 0x0f, 0x02);
        dev.write(THR, b"c");
        assert_eq!(irqs(&irq), 1);

        dev.write(IER, &[0x00]);
        let _ = rd(&mut dev, IIR); // acknowledge what 'c' raised
        dev.write(THR, b"d");
        assert_eq!(irqs(&irq), 0, "disabled again");
    }

    #[test]
    fn input_is_readable_from_rbr_and_raises_rda_when_enabled() {
        let (mut dev, _out, irq) = serial();
        dev.write(IER, &[0x01]); // ERBFI
        assert_eq!(irqs(&irq), 0);
        assert_eq!(dev.enqueue_input(b"hi").unwrap(), 2);
        assert_eq!(irqs(&irq), 1);
        assert_eq!(rd(&mut dev, IIR) & 0x0f, 0x04, "received data available");
        assert_eq!(rd(&mut dev, RBR), b'h');
        assert_ne!(rd(&mut dev, LSR) & LSR_DR, 0);
        assert_eq!(rd(&mut dev, RBR), b'i');
        assert_eq!(rd(&mut dev, LSR) & LSR_DR, 0, "FIFO drained");
        assert_eq!(dev.counters().snapshot().bytes_in, 2);
    }

    #[test]
    fn a_full_fifo_takes_what_fits_then_nothing() {
        let (mut dev, _out, _irq) = serial();
        let cap = dev.input_capacity();
        assert!(cap > 0);
        let input = vec![b'z'; cap + 10];
        assert_eq!(dev.enqueue_input(&input).unwrap(), cap);
        assert_eq!(dev.input_capacity(), 0);
        assert_eq!(dev.enqueue_input(b"more").unwrap(), 0);
        assert_eq!(dev.enqueue_input(b"").unwrap(), 0);
        assert_eq!(rd(&mut dev, RBR), b'z');
        assert_eq!(dev.enqueue_input(b"yz").unwrap(), 1);
        assert_eq!(dev.counters().snapshot().bytes_in, cap as u64 + 1);
    }

    #[test]
    fn divisor_latch_and_scratch_registers() {
        let (mut dev, out, _irq) = serial();
        dev.write(LCR, &[0x80]); // DLAB
        dev.write(0, &[0x01]);
        dev.write(1, &[0x00]);
        assert_eq!((rd(&mut dev, 0), rd(&mut dev, 1)), (0x01, 0x00));
        dev.write(LCR, &[0x03]);
        assert!(
            out.0.lock().unwrap().is_empty(),
            "DLAB writes are not output"
        );
        dev.write(7, &[0x5a]);
        assert_eq!(rd(&mut dev, 7), 0x5a);
    }

    #[test]
    fn loopback_output_comes_back_as_input_not_host_output() {
        let (mut dev, out, _irq) = serial();
        dev.write(MCR, &[0x10]);
        dev.write(THR, b"L");
        assert_eq!(rd(&mut dev, RBR), b'L');
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(
            dev.enqueue_input(b"x").unwrap(),
            0,
            "no host input in loopback"
        );
    }

    #[test]
    fn a_failing_host_writer_counts_lost_bytes() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = Serial::new(Box::new(BrokenWriter), irq);
        dev.write(THR, b"a");
        dev.write(THR, b"b");
        let c = dev.counters().snapshot();
        assert_eq!((c.bytes_out, c.bytes_lost), (0, 2));
        assert_eq!(rd(&mut dev, LSR) & LSR_THRE, LSR_THRE);
    }

    #[test]
    fn a_saturated_irq_eventfd_is_reported_not_fatal() {
        let (mut dev, out, irq) = serial();
        // An eventfd counter at its maximum makes the next write fail with EAGAIN.
        irq.write(u64::MAX - 1).unwrap();
        dev.write(IER, &[0x03]);
        dev.write(THR, b"a");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"a", "output still flows");
        assert!(dev.counters().snapshot().interrupt_errors >= 1);

        match dev.enqueue_input(b"xy") {
            Err(SerialError::Interrupt { queued, .. }) => assert_eq!(queued, 2),
            other => panic!("expected an interrupt error, got {other:?}"),
        }
        assert_eq!(rd(&mut dev, RBR), b'x', "the input was queued anyway");
        assert_eq!(dev.counters().snapshot().bytes_in, 2);
    }

    #[test]
    fn odd_sizes_and_offsets_read_all_ones_and_write_nothing() {
        let (mut dev, out, irq) = serial();
        dev.write(IER, &[0x02]);
        let _ = irqs(&irq);
        for size in ODD_SIZES.into_iter().filter(|&n| n != 1) {
            for offset in [0u64, 5, 7, 8, u64::MAX] {
                let mut data = vec![0u8; size];
                dev.read(offset, &mut data);
                assert!(data.iter().all(|&b| b == 0xff));
                dev.write(offset, &vec![b'x'; size]);
            }
        }
        for offset in [8u64, 255, 256, u64::MAX] {
            assert_eq!(rd(&mut dev, offset), 0xff);
            dev.write(offset, b"x");
        }
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(irqs(&irq), 0);
        assert_eq!(
            dev.counters().snapshot().unknown_accesses,
            (ODD_SIZES.len() as u64 - 1) * 10 + 8
        );
    }
}
