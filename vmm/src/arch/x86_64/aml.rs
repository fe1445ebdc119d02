//! The few AML (ACPI Machine Language) constructs the DSDT needs: a `\_SB` scope holding one
//! `LNRO0005` device per virtio-mmio window, with its memory range and interrupt in `_CRS`.
//!
//! This is how a kernel built without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` (Debian's cloud
//! kernel among them) finds virtio-mmio devices: the virtio_mmio driver matches the ACPI id
//! LNRO0005.

/// A virtio-mmio window to describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base address.
    pub base: u32,
    /// Window length.
    pub len: u32,
    /// Interrupt line (GSI).
    pub irq: u32,
}

/// Encodes a PkgLength for a body of `body_len` bytes (ACPI 6.4, 20.2.4): the length counts
/// the PkgLength bytes themselves.
fn pkg_length(body_len: usize) -> Vec<u8> {
    if body_len + 1 < 0x40 {
        return vec![(body_len + 1) as u8];
    }
    let total = body_len + 2;
    if total < 0x1000 {
        return vec![0x40 | (total & 0xf) as u8, (total >> 4) as u8];
    }
    let total = body_len + 3;
    vec![
        0x80 | (total & 0xf) as u8,
        (total >> 4) as u8,
        (total >> 12) as u8,
    ]
}

/// `op PkgLength body`.
fn with_pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// `Name (seg, value)`.
fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x08];
    out.extend_from_slice(seg);
    out.extend_from_slice(value);
    out
}

/// A string constant.
fn string(s: &str) -> Vec<u8> {
    let mut out = vec![0x0d];
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    out
}

/// An integer constant that fits a byte or a dword.
fn integer(v: u32) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, v as u8],
        _ => {
            let mut out = vec![0x0c];
            out.extend_from_slice(&v.to_le_bytes());
            out
        }
    }
}

/// `ResourceTemplate () { Memory32Fixed (ReadWrite, base, len); Interrupt (ResourceConsumer,
/// Edge, ActiveHigh, Exclusive) { irq } }` as a Buffer.
fn resources(dev: &MmioDevice) -> Vec<u8> {
    let mut res = vec![0x86, 0x09, 0x00, 0x01];
    res.extend_from_slice(&dev.base.to_le_bytes());
    res.extend_from_slice(&dev.len.to_le_bytes());
    // Extended interrupt descriptor: consumer, edge-triggered, active high, exclusive.
    res.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
    res.extend_from_slice(&dev.irq.to_le_bytes());
    res.extend_from_slice(&[0x79, 0x00]); // end tag (checksum 0: ignored)
    let mut body = integer(res.len() as u32);
    body.extend(res);
    with_pkg(&[0x11], &body)
}

/// Device name `VRnn` for the device at `index` (hex digits).
fn device_name(index: usize) -> [u8; 4] {
    let hex = b"0123456789ABCDEF";
    [b'V', b'R', hex[(index >> 4) & 0xf], hex[index & 0xf]]
}

/// `Scope (\_SB) { Device (VRnn) { _HID "LNRO0005", _UID n, _CRS ... } ... }`, or nothing
/// when there are no devices.
pub fn virtio_mmio_scope(devices: &[MmioDevice]) -> Vec<u8> {
    if devices.is_empty() {
        return Vec::new();
    }
    let mut scope_body = vec![b'\\', b'_', b'S', b'B', b'_'];
    for (i, dev) in devices.iter().enumerate() {
        let mut body = device_name(i).to_vec();
        body.extend(name(b"_HID", &string("LNRO0005")));
        body.extend(name(b"_UID", &integer(i as u32)));
        body.extend(name(b"_CRS", &resources(dev)));
        scope_body.extend(with_pkg(&[0x5b, 0x82], &body));
    }
    with_pkg(&[0x10], &scope_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_uses_one_two_or_three_bytes() {
        assert_eq!(pkg_length(5), [6]);
        assert_eq!(pkg_length(62), [63]);
        // 63 + 2 = 65 = 0x41: low nibble 1 in the lead byte, 0x4 in the next.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        assert_eq!(pkg_length(0xffd), [0x4f, 0xff]);
        assert_eq!(pkg_length(0xffe), [0x81, 0x00, 0x01]);
    }

    #[test]
    fn one_device_encodes_as_iasl_would() {
        let aml = virtio_mmio_scope(&[MmioDevice {
            base: 0xd000_0000,
            len: 0x1000,
            irq: 5,
        }]);
        // Scope, its length, \_SB_.
        assert_eq!(aml[0], 0x10);
        let (len_bytes, total) = if aml[1] & 0xc0 == 0 {
            (1, aml[1] as usize)
        } else {
            (2, (aml[1] & 0xf) as usize | (aml[2] as usize) << 4)
        };
        assert_eq!(total + 1, aml.len(), "scope PkgLength covers the rest");
        let body = &aml[1 + len_bytes..];
        assert_eq!(&body[..5], b"\\_SB_");
        // DeviceOp and its name.
        assert_eq!(&body[5..7], [0x5b, 0x82]);
        let dev = &body[7..];
        let name_at = if dev[0] & 0xc0 == 0 { 1 } else { 2 };
        assert_eq!(&dev[name_at..name_at + 4], b"VR00");
        let text = String::from_utf8_lossy(&aml).into_owned();
        assert!(text.contains("_HID\x0dLNRO0005\0"), "{aml:02x?}");
        assert!(text.contains("_UID\x00"), "{aml:02x?}");
        // The resource template: Memory32Fixed then the extended interrupt, then the end tag.
        let crs = aml.windows(4).position(|w| w == b"_CRS").unwrap();
        let res = &aml[crs + 4..];
        assert_eq!(res[0], 0x11);
        let buf = &res[2..];
        assert_eq!(buf[..2], [0x0a, 23], "buffer size");
        let rt = &buf[2..];
        assert_eq!(rt[..4], [0x86, 0x09, 0x00, 0x01]);
        assert_eq!(
            u32::from_le_bytes(rt[4..8].try_into().unwrap()),
            0xd000_0000
        );
        assert_eq!(u32::from_le_bytes(rt[8..12].try_into().unwrap()), 0x1000);
        assert_eq!(rt[12..17], [0x89, 0x06, 0x00, 0x03, 0x01]);
        assert_eq!(u32::from_le_bytes(rt[17..21].try_into().unwrap()), 5);
        assert_eq!(rt[21..23], [0x79, 0x00]);
    }

    #[test]
    fn many_devices_get_distinct_names_and_ids() {
        let devs: Vec<MmioDevice> = (0..9)
            .map(|i| MmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                len: 0x1000,
                irq: 5 + i,
            })
            .collect();
        let aml = virtio_mmio_scope(&devs);
        for i in 0..9 {
            let name = format!("VR0{i}");
            assert_eq!(
                aml.windows(4).filter(|w| *w == name.as_bytes()).count(),
                1,
                "{name}"
            );
        }
        assert!(virtio_mmio_scope(&[]).is_empty());
    }
}
