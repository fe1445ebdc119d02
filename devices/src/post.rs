//! The POST diagnostic port 0x80, which Linux also writes for short I/O delays.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::counters::DeviceCounters;

/// Port 0x80: writes are dropped silently, reads return 0.
#[derive(Debug, Default)]
pub struct PostPort {
    counters: Arc<DeviceCounters>,
}

impl PostPort {
    /// A new POST port.
    pub fn new() -> Self {
        Self::default()
    }

    /// The device's counters (writes here are ordinary, never "unknown").
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}

impl BusDevice for PostPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.counters.read();
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.counters.write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ODD_SIZES;

    #[test]
    fn reads_zero_and_counts_writes_without_complaint() {
        let mut post = PostPort::new();
        for size in ODD_SIZES {
            let mut data = vec![0xa5; size];
            post.read(0, &mut data);
            assert!(data.iter().all(|&b| b == 0));
            post.write(0, &data);
        }
        let c = post.counters().snapshot();
        assert_eq!(
            (c.reads, c.writes),
            (ODD_SIZES.len() as u64, ODD_SIZES.len() as u64)
        );
        assert_eq!(c.unknown_accesses, 0);
    }
}
