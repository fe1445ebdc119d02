//! The virtio-net control virtqueue, answered by the VMM (a vhost-user back end never sees
//! it): VIRTIO_NET_CTRL_MQ / VQ_PAIRS_SET changes how many queue pairs the back end serves,
//! the RX-mode class (promiscuous, all-multicast, ...) is acknowledged because the back end
//! already delivers every frame it gets, and every other class is answered VIRTIO_NET_ERR.
//!
//! A command is a chain of device-readable bytes (class, command, data) followed by one
//! device-writable ack byte (virtio 1.2, 5.1.6.5). The chain itself is checked by
//! [`devices::virtio::queue`]; here a chain without a two-byte header or without a writable
//! byte is refused (returned with length 0 and counted as malformed), and at most
//! [`MAX_COMMAND`] bytes of it are read, however long the guest says it is.

/// virtio-net feature: the device has a control virtqueue.
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
/// virtio-net feature: multiqueue (`max_virtqueue_pairs` in config space, VQ_PAIRS_SET).
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;

/// The ack byte of a command that was carried out.
pub const VIRTIO_NET_OK: u8 = 0;
/// The ack byte of a command that was refused or is not supported.
pub const VIRTIO_NET_ERR: u8 = 1;

/// Class of the receive-mode commands (PROMISC, ALLMULTI, ALLUNI, NOMULTI, NOUNI, NOBCAST).
pub const CLASS_RX: u8 = 0;
/// Class of the multiqueue commands.
pub const CLASS_MQ: u8 = 4;
/// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: the data is a little-endian u16 pair count.
pub const MQ_VQ_PAIRS_SET: u8 = 0;
/// The last RX-mode command (NOBCAST).
const RX_LAST: u8 = 5;

/// Most command bytes read from a chain (class, command and the largest data we parse).
pub const MAX_COMMAND: usize = 64;

/// What a well-formed command asked for and the answer it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The ack byte written back.
    pub ack: u8,
    /// The new number of active queue pairs, for an accepted VQ_PAIRS_SET.
    pub pairs: Option<u16>,
}

impl Verdict {
    fn ok() -> Verdict {
        Verdict {
            ack: VIRTIO_NET_OK,
            pairs: None,
        }
    }

    fn err() -> Verdict {
        Verdict {
            ack: VIRTIO_NET_ERR,
            pairs: None,
        }
    }
}

/// Decides a command from its readable bytes (at most [`MAX_COMMAND`] of them, at least the
/// two header bytes). `max_pairs` is the device's maximum; `mq` says whether the driver
/// accepted VIRTIO_NET_F_MQ (without it VQ_PAIRS_SET is refused).
pub fn decide(command: &[u8], max_pairs: u16, mq: bool) -> Verdict {
    let (Some(&class), Some(&cmd)) = (command.first(), command.get(1)) else {
        return Verdict::err();
    };
    let data = &command[2..];
    match (class, cmd) {
        (CLASS_MQ, MQ_VQ_PAIRS_SET) => {
            let Some(bytes) = data.get(..2) else {
                return Verdict::err();
            };
            let pairs = u16::from_le_bytes([bytes[0], bytes[1]]);
            // virtio 1.2, 5.1.6.5.5: between 1 and max_virtqueue_pairs.
            if !mq || pairs == 0 || pairs > max_pairs {
                return Verdict::err();
            }
            Verdict {
                ack: VIRTIO_NET_OK,
                pairs: Some(pairs),
            }
        }
        // On/off switches with one byte of data. The back end hands the guest every frame
        // it forwards, whatever the mode; acknowledging keeps drivers that send these at
        // probe (Linux's set_rx_mode) from logging failures.
        (CLASS_RX, 0..=RX_LAST) if data.first().is_some_and(|&on| on <= 1) => Verdict::ok(),
        _ => Verdict::err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_set_is_checked_against_the_maximum_and_the_mq_feature() {
        let set = |n: u16| {
            let mut c = vec![CLASS_MQ, MQ_VQ_PAIRS_SET];
            c.extend(n.to_le_bytes());
            c
        };
        assert_eq!(
            decide(&set(2), 4, true),
            Verdict {
                ack: VIRTIO_NET_OK,
                pairs: Some(2)
            }
        );
        assert_eq!(decide(&set(4), 4, true).pairs, Some(4));
        for bad in [0, 5, u16::MAX] {
            assert_eq!(decide(&set(bad), 4, true), Verdict::err(), "{bad}");
        }
        assert_eq!(decide(&set(2), 4, false), Verdict::err());
        // Data cut short.
        assert_eq!(
            decide(&[CLASS_MQ, MQ_VQ_PAIRS_SET, 2], 4, true),
            Verdict::err()
        );
    }

    #[test]
    fn rx_mode_is_acknowledged_and_other_classes_refused() {
        assert_eq!(decide(&[CLASS_RX, 0, 1], 2, true), Verdict::ok());
        assert_eq!(decide(&[CLASS_RX, 1, 0], 2, true), Verdict::ok());
        assert_eq!(decide(&[CLASS_RX, 1, 7], 2, true), Verdict::err());
        assert_eq!(decide(&[CLASS_RX, 6, 1], 2, true), Verdict::err());
        assert_eq!(decide(&[CLASS_RX, 0], 2, true), Verdict::err());
        // MAC (1), VLAN (2), ANNOUNCE (3), GUEST_OFFLOADS (5), unknown.
        for class in [1u8, 2, 3, 5, 0x7f, 0xff] {
            assert_eq!(
                decide(&[class, 0, 0, 0], 2, true),
                Verdict::err(),
                "{class}"
            );
        }
        assert_eq!(decide(&[], 2, true), Verdict::err());
    }
}
