//! Capability parsing and MSI/MSI-X state against configuration spaces recorded from QEMU
//! 7.2's devices (tests/data/pci/README.md says how).

use devices::pci::caps::{capabilities, CAP_ID_MSI, CAP_ID_MSIX};
use devices::pci::{BarKind, BarSet, MsiCap, MsiState, MsixCap, MsixState};

fn recorded(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/pci/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.trim();
    assert_eq!(text.len(), 512, "{path}: 256 bytes of hex");
    (0..256)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn dword(c: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(c[at..at + 4].try_into().unwrap())
}

#[test]
fn edu_has_a_64_bit_single_vector_msi_that_routes_once_enabled() {
    let c = recorded("qemu-7.2-edu");
    assert_eq!(dword(&c, 0), 0x11e8_1234);
    let list = capabilities(&c);
    let msi = list.iter().find(|cap| cap.id == CAP_ID_MSI).expect("MSI");
    let cap = MsiCap::parse(&c, msi.offset).unwrap();
    assert!(cap.is_64bit);
    assert!(!cap.per_vector_mask);
    assert_eq!(cap.log2_vectors, 0);
    let mut state = MsiState::new(&c, cap);
    // What a driver does: address, data, then enable with 4 vectors asked (1 granted).
    state.write(cap.offset + 4, &0xfee0_0000u32.to_le_bytes());
    state.write(cap.offset + 8, &0u32.to_le_bytes());
    state.write(cap.offset + 0xc, &0x40u16.to_le_bytes());
    assert!(state.vectors().is_empty(), "not enabled yet");
    assert!(state.write(cap.offset + 2, &0x0021u16.to_le_bytes()));
    assert_eq!(state.vectors(), vec![Some((0xfee0_0000, 0x40))]);
    // BAR 0 is a 32-bit, non-prefetchable memory BAR; emulated, it sizes as 1 MiB.
    assert_eq!(dword(&c, 0x10) & 0xf, 0);
    let mut bars = BarSet::new();
    bars.declare(0, BarKind::Mem32, 1 << 20, false).unwrap();
    bars.write(0, u32::MAX);
    assert_eq!(bars.read(0), 0xfff0_0000);
}

#[test]
fn virtio_net_pci_has_msix_in_bar_1() {
    let c = recorded("qemu-7.2-virtio-net-pci");
    assert_eq!(dword(&c, 0), 0x1000_1af4);
    let list = capabilities(&c);
    // MSI-X first, then the virtio vendor capabilities (ID 9).
    assert_eq!(list[0].id, CAP_ID_MSIX);
    assert!(list[1..].iter().all(|cap| cap.id == 0x09), "{list:?}");
    let cap = MsixCap::parse(&c, list[0].offset).unwrap();
    // 2 queues + config + control queue.
    assert_eq!(cap.table_size, 4);
    assert_eq!((cap.table_bar, cap.table_offset), (1, 0));
    assert_eq!((cap.pba_bar, cap.pba_offset), (1, 0x800));
    // BAR 1 (memory, 4 KiB per the probe's sizing) holds the table; BAR 0 is I/O.
    assert_eq!(dword(&c, 0x10) & 1, 1);
    assert_eq!(dword(&c, 0x14) & 1, 0);
    let mut state = MsixState::new(cap, 64);
    assert_eq!(state.control(), 3, "table size 4 offered as is");
    state.write_table(0x20, &0xfee0_0000u32.to_le_bytes());
    state.write_table(0x28, &0x41u32.to_le_bytes());
    state.write_table(0x2c, &0u32.to_le_bytes());
    state.write_config(cap.offset + 2, &0x8003u16.to_le_bytes());
    assert_eq!(
        state.vectors(),
        vec![None, None, Some((0xfee0_0000, 0x41)), None]
    );
}

#[test]
fn the_q35_host_bridge_has_no_capability_list() {
    let c = recorded("qemu-7.2-q35-host-bridge");
    assert_eq!(dword(&c, 0), 0x29c0_8086);
    assert!(capabilities(&c).is_empty());
}

#[test]
fn nvme_msix_table_shares_bar_0_with_the_registers_and_is_cut_to_64_vectors() {
    let c = recorded("qemu-7.2-nvme");
    assert_eq!(dword(&c, 0), 0x0010_1b36);
    assert_eq!(dword(&c, 8) >> 8, 0x01_08_02, "class: NVMe");
    let ids: Vec<u8> = capabilities(&c).iter().map(|cap| cap.id).collect();
    assert_eq!(ids, vec![CAP_ID_MSIX, 0x10, 0x01], "MSI-X, PCI Express, PM");
    // BAR 0: 64-bit memory, the registers, doorbells, table and PBA in 16 KiB.
    assert_eq!(dword(&c, 0x10) & 0xf, 0x4);
    let cap = MsixCap::parse(&c, 0x40).unwrap();
    assert_eq!(cap.table_size, 65, "max_ioqpairs 64 + the admin queue");
    assert_eq!((cap.table_bar, cap.table_offset), (0, 0x2000));
    assert_eq!((cap.pba_bar, cap.pba_offset), (0, 0x3000));

    let mut state = MsixState::new(cap, 64);
    assert_eq!(state.control(), 63, "Table Size offered: 64 entries");
    // Registers and doorbells go to the device, entries 0..63 are trapped, entry 64 (not
    // offered) and the PBA go to the device.
    assert!(!state.in_table(0, 0x14, 4), "CC");
    assert!(!state.in_table(0, 0x1000, 4), "SQ 0 tail doorbell");
    assert!(state.in_table(0, 0x2000, 4));
    assert!(state.in_table(0, 0x2000 + 63 * 16 + 12, 4));
    assert!(!state.in_table(0, 0x2000 + 64 * 16, 4));
    assert!(!state.in_table(0, 0x3000, 8), "PBA");
    assert!(!state.in_table(1, 0x2000, 4), "another BAR");

    // What probe.nvme does: enable with the function masked, program entries 0 and 1,
    // read them back, unmask the function.
    assert!(state.write_config(0x42, &0xc000u16.to_le_bytes()));
    assert_eq!(state.control(), 0xc000 | 63);
    for (entry, vector) in [(0u64, 0x42u32), (1, 0x43)] {
        let at = 0x2000 + entry * 16;
        state.write_table(at, &0xfee0_0000u32.to_le_bytes());
        state.write_table(at + 4, &0u32.to_le_bytes());
        state.write_table(at + 8, &vector.to_le_bytes());
        assert_eq!(
            state.write_table(at + 12, &0u32.to_le_bytes()),
            vec![entry as usize]
        );
    }
    let mut back = [0u8; 8];
    state.read_table(0x2010, &mut back);
    assert_eq!(back, [0x00, 0x00, 0xe0, 0xfe, 0, 0, 0, 0]);
    assert!(
        state.vectors().iter().all(Option::is_none),
        "the function is masked"
    );
    assert!(state.write_config(0x42, &0x8000u16.to_le_bytes()));
    let vectors = state.vectors();
    assert_eq!(vectors.len(), 64);
    assert_eq!(vectors[0], Some((0xfee0_0000, 0x42)));
    assert_eq!(vectors[1], Some((0xfee0_0000, 0x43)));
    assert!(vectors[2..].iter().all(Option::is_none), "still masked");
    // Table Size is read-only: a write of all ones changes only enable and function mask.
    assert!(state.write_config(0x42, &0xffffu16.to_le_bytes()));
    assert_eq!(state.control(), 0xc000 | 63);
}
