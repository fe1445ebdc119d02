//! The few AML (ACPI Machine Language) constructs the DSDT needs: a `\_SB` scope holding one
//! `LNRO0005` device per virtio-mmio window, with its memory range and interrupt in `_CRS`.
//!
//! This is how a kernel built without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` (Debian's cloud
//! kernel among them) finds virtio-mmio devices: the virtio_mmio driver matches the ACPI id
//! LNRO0005.
//!
//! With a PCI bus (`--device vfio=`), the scope also holds the host bridge `PCI0` (PNP0A03),
//! so a Linux guest finds bus 0 through ACPI, as it does on QEMU's or Cloud Hypervisor's
//! machines, without `pci=` options.

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

/// The PCI host bridge to describe: bus 0 only, configuration mechanism #1 at 0xCF8, and
/// the 32-bit window the BARs are placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRoot {
    /// First address of the BAR window.
    pub window_start: u32,
    /// Last address of the BAR window (inclusive).
    pub window_end: u32,
}

/// `EisaId ("PNP0A03")`, the compressed EISA id of a PCI host bridge, as a DWord constant.
fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
    let letter = |c: u8| u16::from(c - b'@') & 0x1f;
    let vendor = (letter(id[0]) << 10) | (letter(id[1]) << 5) | letter(id[2]);
    let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    let product = [
        (hex(id[3]) << 4) | hex(id[4]),
        (hex(id[5]) << 4) | hex(id[6]),
    ];
    // Stored big-endian: vendor's two bytes, then the product's.
    let [v0, v1] = vendor.to_be_bytes();
    let mut out = vec![0x0c];
    out.extend_from_slice(&[v0, v1, product[0], product[1]]);
    out
}

/// `ResourceTemplate () { WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,
/// 0, 0, 0, 0, 1); IO (Decode16, 0xCF8, 0xCF8, 1, 8); DWordMemory (ResourceProducer,
/// PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0, start, end, 0, len) }`.
fn pci_resources(root: &PciRoot) -> Vec<u8> {
    // Word address space descriptor, bus number range 0-0.
    let mut res = vec![0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00];
    for v in [0u16, 0, 0, 0, 1] {
        res.extend_from_slice(&v.to_le_bytes());
    }
    // I/O port descriptor: 16-bit decode, 0xCF8-0xCFF.
    res.extend_from_slice(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
    // DWord address space descriptor, memory, read-write, not cacheable.
    res.extend_from_slice(&[0x87, 0x17, 0x00, 0x00, 0x0c, 0x01]);
    let len = root
        .window_end
        .wrapping_sub(root.window_start)
        .wrapping_add(1);
    for v in [0u32, root.window_start, root.window_end, 0, len] {
        res.extend_from_slice(&v.to_le_bytes());
    }
    res.extend_from_slice(&[0x79, 0x00]); // end tag (checksum 0: ignored)
    let mut body = integer(res.len() as u32);
    body.extend(res);
    with_pkg(&[0x11], &body)
}

/// `Device (PCI0) { _HID EisaId ("PNP0A03"), _UID 0, _SEG 0, _BBN 0, _CRS ... }`.
fn pci_root_device(root: &PciRoot) -> Vec<u8> {
    let mut body = b"PCI0".to_vec();
    body.extend(name(b"_HID", &eisa_id(b"PNP0A03")));
    body.extend(name(b"_UID", &integer(0)));
    body.extend(name(b"_SEG", &integer(0)));
    body.extend(name(b"_BBN", &integer(0)));
    body.extend(name(b"_CRS", &pci_resources(root)));
    with_pkg(&[0x5b, 0x82], &body)
}

/// `Scope (\_SB) { Device (VRnn) { _HID "LNRO0005", _UID n, _CRS ... } ... }` (plus
/// `Device (PCI0)` with a PCI bus), or nothing when there is neither.
pub fn system_bus_scope(devices: &[MmioDevice], pci: Option<&PciRoot>) -> Vec<u8> {
    if devices.is_empty() && pci.is_none() {
        return Vec::new();
    }
    let mut scope_body = vec![b'\\', b'_', b'S', b'B', b'_'];
    if let Some(root) = pci {
        scope_body.extend(pci_root_device(root));
    }
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
        let aml = system_bus_scope(
            &[MmioDevice {
                base: 0xd000_0000,
                len: 0x1000,
                irq: 5,
            }],
            None,
        );
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
        let aml = system_bus_scope(&devs, None);
        for i in 0..9 {
            let name = format!("VR0{i}");
            assert_eq!(
                aml.windows(4).filter(|w| *w == name.as_bytes()).count(),
                1,
                "{name}"
            );
        }
        assert!(system_bus_scope(&[], None).is_empty());
    }

    #[test]
    fn the_pci_host_bridge_encodes_as_iasl_would() {
        let root = PciRoot {
            window_start: 0xc000_0000,
            window_end: 0xcfff_ffff,
        };
        assert_eq!(eisa_id(b"PNP0A03"), [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
        let aml = system_bus_scope(&[], Some(&root));
        assert_eq!(aml[0], 0x10, "a Scope");
        let dev = aml.windows(6).position(|w| w[..2] == [0x5b, 0x82]).unwrap();
        let name_at = dev + 3 + usize::from(aml[dev + 2] >> 6);
        assert_eq!(&aml[name_at..name_at + 4], b"PCI0");
        let text = String::from_utf8_lossy(&aml).into_owned();
        assert!(
            aml.windows(9).any(|w| w == b"_HID\x0c\x41\xd0\x0a\x03"),
            "{aml:02x?}"
        );
        for n in ["_UID\x00", "_SEG\x00", "_BBN\x00"] {
            assert!(text.contains(n), "{n}: {aml:02x?}");
        }
        let crs = aml.windows(4).position(|w| w == b"_CRS").unwrap();
        let res = &aml[crs + 4..];
        assert_eq!(res[0], 0x11, "a Buffer");
        let buf = &res[2..];
        assert_eq!(buf[..2], [0x0a, 16 + 8 + 26 + 2], "buffer size");
        let rt = &buf[2..];
        // WordBusNumber: producer, min and max fixed, bus 0 to 0, length 1.
        assert_eq!(rt[..6], [0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00]);
        assert_eq!(rt[6..16], [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        // IO (Decode16, 0xCF8, 0xCF8, 1, 8).
        assert_eq!(rt[16..24], [0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]);
        // DWordMemory over the window.
        assert_eq!(rt[24..30], [0x87, 0x17, 0x00, 0x00, 0x0c, 0x01]);
        let dword = |i: usize| u32::from_le_bytes(rt[30 + 4 * i..34 + 4 * i].try_into().unwrap());
        assert_eq!(
            (dword(0), dword(1), dword(2), dword(3), dword(4)),
            (0, 0xc000_0000, 0xcfff_ffff, 0, 0x1000_0000)
        );
        assert_eq!(rt[50..52], [0x79, 0x00]);
        assert_eq!(rt.len(), 52);
        // Virtio devices follow the bridge in the same scope.
        let both = system_bus_scope(
            &[MmioDevice {
                base: 0xd000_0000,
                len: 0x1000,
                irq: 5,
            }],
            Some(&root),
        );
        assert!(both.windows(4).any(|w| w == b"PCI0"));
        assert!(both.windows(8).any(|w| w == b"LNRO0005"));
        assert!(!system_bus_scope(&[], None).windows(4).any(|w| w == b"PCI0"));
    }
}
