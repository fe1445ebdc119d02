//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2 section 5.10.6) and
//! the checks every packet from the guest must pass before the device acts on it.

use super::HOST_CID;

/// Bytes of the header on the wire.
pub const HDR_LEN: usize = 44;
/// The only socket type we serve: a stream.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload one packet may carry (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_LEN: u32 = 64 * 1024;

/// Operations (`op` field).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// One or both directions closed (flags).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// Here is my buffer space and consumed count.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Please send a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A decoded header (all fields little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub kind: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le_u32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le_u16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            kind: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST that answers this packet (ports swapped, from the host to the guest).
    pub fn reset_reply(&self, guest_cid: u64) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// Why a packet from the guest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain is shorter than the header.
    #[error("TX chain of {len} bytes is shorter than the {HDR_LEN}-byte vsock header")]
    ShortHeader {
        /// Readable bytes in the chain.
        len: u64,
    },
    /// Not a stream packet.
    #[error("packet type {kind} is not STREAM (1), the only type offered")]
    BadType {
        /// The type field.
        kind: u16,
    },
    /// The source is not the guest.
    #[error("source CID {cid} is not the guest's CID {expected}")]
    BadSourceCid {
        /// The src_cid field.
        cid: u64,
        /// The guest's CID.
        expected: u64,
    },
    /// The destination is not the host.
    #[error("destination CID {cid} is not the host (2)")]
    BadDestinationCid {
        /// The dst_cid field.
        cid: u64,
    },
    /// `len` disagrees with the chain.
    #[error("header len {header} does not match the {chain} payload bytes in the chain")]
    LengthMismatch {
        /// The len field.
        header: u32,
        /// Payload bytes the chain actually holds.
        chain: u64,
    },
    /// Payload above [`MAX_PKT_LEN`].
    #[error("payload of {len} bytes is above the {MAX_PKT_LEN}-byte packet limit")]
    TooLong {
        /// The len field.
        len: u32,
    },
    /// Payload on a packet that carries none.
    #[error("operation {op} carries {len} payload bytes; only RW carries data")]
    PayloadOnControl {
        /// The op field.
        op: u16,
        /// The len field.
        len: u32,
    },
    /// An operation we do not know.
    #[error("unknown operation {op}")]
    UnknownOp {
        /// The op field.
        op: u16,
    },
}

/// Checks a TX packet's header against the chain that carried it: `payload` is the number of
/// readable bytes after the header. The checks run in a fixed order (type, source, destination,
/// length, operation), so the error names the first field that is wrong.
pub fn check_tx(hdr: &Header, payload: u64, guest_cid: u64) -> Result<(), PacketError> {
    if hdr.kind != TYPE_STREAM {
        return Err(PacketError::BadType { kind: hdr.kind });
    }
    if hdr.src_cid != guest_cid {
        return Err(PacketError::BadSourceCid {
            cid: hdr.src_cid,
            expected: guest_cid,
        });
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::BadDestinationCid { cid: hdr.dst_cid });
    }
    if hdr.len > MAX_PKT_LEN {
        return Err(PacketError::TooLong { len: hdr.len });
    }
    if u64::from(hdr.len) != payload {
        return Err(PacketError::LengthMismatch {
            header: hdr.len,
            chain: payload,
        });
    }
    match hdr.op {
        op::RW => Ok(()),
        op::REQUEST
        | op::RESPONSE
        | op::RST
        | op::SHUTDOWN
        | op::CREDIT_UPDATE
        | op::CREDIT_REQUEST => {
            if hdr.len != 0 {
                Err(PacketError::PayloadOnControl {
                    op: hdr.op,
                    len: hdr.len,
                })
            } else {
                Ok(())
            }
        }
        other => Err(PacketError::UnknownOp { op: other }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: 0,
            kind: TYPE_STREAM,
            op: op::REQUEST,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn header_round_trips_at_the_spec_offsets() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 0x1112_1314_1516_1718,
            src_port: 0x2122_2324,
            dst_port: 0x3132_3334,
            len: 0x4142_4344,
            kind: 0x5152,
            op: 0x6162,
            flags: 0x7172_7374,
            buf_alloc: 0x8182_8384,
            fwd_cnt: 0x9192_9394,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[8], 0x18);
        assert_eq!(b[16], 0x24);
        assert_eq!(b[20], 0x34);
        assert_eq!(b[24], 0x44);
        assert_eq!(&b[28..30], &[0x52, 0x51]);
        assert_eq!(&b[30..32], &[0x62, 0x61]);
        assert_eq!(b[32], 0x74);
        assert_eq!(b[36], 0x84);
        assert_eq!(&b[40..44], &[0x94, 0x93, 0x92, 0x91]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn each_field_is_checked() {
        assert_eq!(check_tx(&good(), 0, 3), Ok(()));
        let h = Header { kind: 2, ..good() };
        assert_eq!(check_tx(&h, 0, 3), Err(PacketError::BadType { kind: 2 }));
        let h = Header {
            src_cid: 4,
            ..good()
        };
        assert!(matches!(
            check_tx(&h, 0, 3),
            Err(PacketError::BadSourceCid { cid: 4, .. })
        ));
        let h = Header {
            dst_cid: 3,
            ..good()
        };
        assert!(matches!(
            check_tx(&h, 0, 3),
            Err(PacketError::BadDestinationCid { cid: 3 })
        ));
        let h = Header {
            op: op::RW,
            len: 10,
            ..good()
        };
        assert_eq!(check_tx(&h, 10, 3), Ok(()));
        assert!(matches!(
            check_tx(&h, 9, 3),
            Err(PacketError::LengthMismatch { .. })
        ));
        let h = Header {
            op: op::RW,
            len: MAX_PKT_LEN + 1,
            ..good()
        };
        assert!(matches!(
            check_tx(&h, u64::from(MAX_PKT_LEN) + 1, 3),
            Err(PacketError::TooLong { .. })
        ));
        let h = Header { len: 4, ..good() };
        assert!(matches!(
            check_tx(&h, 4, 3),
            Err(PacketError::PayloadOnControl { .. })
        ));
        let h = Header { op: 0, ..good() };
        assert_eq!(check_tx(&h, 0, 3), Err(PacketError::UnknownOp { op: 0 }));
        let h = Header { op: 8, ..good() };
        assert_eq!(check_tx(&h, 0, 3), Err(PacketError::UnknownOp { op: 8 }));
    }

    #[test]
    fn reset_reply_swaps_ports_and_comes_from_the_host() {
        let r = good().reset_reply(3);
        assert_eq!((r.src_cid, r.dst_cid), (HOST_CID, 3));
        assert_eq!((r.src_port, r.dst_port), (52, 1000));
        assert_eq!((r.op, r.kind, r.len), (op::RST, TYPE_STREAM, 0));
    }
}
