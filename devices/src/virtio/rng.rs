//! virtio-rng: an entropy source fed from the host's getrandom(2), with a cap per request so
//! a guest cannot make the event loop produce unbounded amounts of randomness at once.

use std::sync::Arc;

use super::counters::{bump, VirtioCounters};
use super::queue::{Popped, QueueHandler};
use super::{device_type, features, ActivateError, Activation, Interrupt, Memory, VirtioDevice};
use crate::log::RateLimited;

/// Most bytes one request gets (the guest asks again for more).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [256];

static LOG: RateLimited = RateLimited::new();

struct Active {
    mem: Memory,
    queue: QueueHandler,
    interrupt: Arc<Interrupt>,
}

/// The entropy device.
pub struct Rng {
    counters: Arc<VirtioCounters>,
    active: Option<Active>,
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
        let mut completed = false;
        loop {
            let Some(popped) = active.queue.pop(&active.mem) else {
                if active.queue.enable_notification(&active.mem) {
                    continue;
                }
                break;
            };
            completed = true;
            let chain = match popped {
                Popped::Chain(chain) => chain,
                Popped::Malformed(e) => {
                    bump(&self.counters.malformed_chains, 1);
                    LOG.warn(format_args!("virtio-rng: malformed chain refused: {e}"));
                    continue;
                }
            };
            let want = (chain.writable_len() as usize).min(MAX_BYTES_PER_REQUEST);
            let written = match self.fill(want) {
                Ok(()) => chain.write_at(&active.mem, 0, &self.buffer).unwrap_or(0),
                Err(e) => {
                    bump(&self.counters.io_errors, 1);
                    LOG.warn(format_args!("virtio-rng: getrandom failed: {e}"));
                    0
                }
            };
            if active
                .queue
                .complete(&active.mem, chain.head, written as u32)
                .is_err()
            {
                bump(&self.counters.malformed_chains, 1);
            }
            bump(&self.counters.requests, 1);
            bump(&self.counters.rx_bytes, written as u64);
        }
        if completed && active.queue.needs_notification(&active.mem) {
            active.interrupt.signal_used_queue();
        }
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
        let queue = activation
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| ActivateError {
                device: "rng",
                detail: "the transport gave no queue".into(),
            })?;
        self.active = Some(Active {
            mem: activation.mem,
            queue: QueueHandler::new(queue),
            interrupt: activation.interrupt,
        });
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
