//! virtio-rng: an entropy source fed from the host's getrandom(2), with a cap per request so
//! a guest cannot make the event loop produce unbounded amounts of randomness at once.

use std::sync::Arc;

use super::counters::{bump, VirtioCounters};
use super::queue::RequestQueue;
use super::{device_type, features, ActivateError, Activation, VirtioDevice};
use crate::log::RateLimited;

/// Most bytes one request gets (the guest asks again for more).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [256];

static LOG: RateLimited = RateLimited::new();

/// The entropy device.
pub struct Rng {
    counters: Arc<VirtioCounters>,
    active: Option<RequestQueue>,
    buffer: Vec<u8>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Rng {
        Rng {
            counters: Arc::new(VirtioCounters::default()),
            active: None,
            buffer: Vec::new(),
        }
    }

    fn fill(&mut self, len: usize) -> Result<(), std::io::Error> {
        self.buffer.resize(len, 0);
        let mut done = 0;
        while done < len {
            // SAFETY: getrandom writes at most `len - done` bytes into our own buffer,
            // starting at `done`, which is within it.
            let n =
                unsafe { libc::getrandom(self.buffer[done..].as_mut_ptr().cast(), len - done, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += n as usize;
        }
        Ok(())
    }

    fn serve(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let counters = self.counters.clone();
        active.drain(&counters, &LOG, "rng", |mem, chain| {
            let want = (chain.writable_len() as usize).min(MAX_BYTES_PER_REQUEST);
            let written = match self.fill(want) {
                Ok(()) => chain.write_at(mem, 0, &self.buffer).unwrap_or(0),
                Err(e) => {
                    bump(&counters.io_errors, 1);
                    LOG.warn(format_args!("virtio-rng: getrandom failed: {e}"));
                    0
                }
            };
            bump(&counters.requests, 1);
            bump(&counters.rx_bytes, written as u64);
            written as u32
        });
        self.active = Some(active);
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn name(&self) -> &'static str {
        "rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(RequestQueue::from_activation(activation, "rng")?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_notified(&mut self, _index: usize) {
        self.serve();
    }

    fn counters(&self) -> Arc<VirtioCounters> {
        self.counters.clone()
    }
}
