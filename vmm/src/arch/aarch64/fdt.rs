//! The flattened device tree an aarch64 guest boots with (X0 points at it).
//!
//! Nodes, as Linux's bindings expect them:
//! `/` (`linux,dummy-virt`, 2 address and 2 size cells, `interrupt-parent` = the GIC),
//! `/cpus` (one `cpu@N` per vCPU with `enable-method = "psci"` and `reg` = its MPIDR
//! affinity), `/psci` (`arm,psci-0.2`, method `hvc`), `/memory@40000000`, `/intc` (the GIC),
//! `/timer` (`arm,armv8-timer` with its four PPIs), `/apb-pclk` (a fixed 24 MHz clock),
//! `/pl011@9000000` (`arm,pl011` + `arm,primecell`), `/chosen` (bootargs, stdout-path,
//! initrd) and one `virtio_mmio@...` per virtio-mmio device.

use vm_fdt::{FdtWriter, FdtWriterNode};

use super::gic::{GicVersion, GIC_FDT_IRQ_TYPE_PPI, GIC_FDT_IRQ_TYPE_SPI, IRQ_TYPE_EDGE_RISING};
use super::layout::{FDT_MAX_SIZE, PL011_BASE, PL011_SIZE, PL011_SPI, RAM_BASE};

/// phandle of the GIC.
pub const GIC_PHANDLE: u32 = 1;
/// phandle of the UART's clock.
pub const CLOCK_PHANDLE: u32 = 2;
/// The UART clock's frequency.
pub const UART_CLOCK_HZ: u32 = 24_000_000;

/// Architected timer PPIs as FDT numbers (INTID - 16): secure physical, non-secure
/// physical, virtual, hypervisor physical, in the order the binding lists them.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// A virtio-mmio device for the FDT: its window and SPI (INTID = 32 + spi).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioNode {
    /// Base guest-physical address.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// SPI number.
    pub spi: u32,
}

/// What the FDT describes.
#[derive(Debug, Clone)]
pub struct FdtParams<'a> {
    /// MPIDR_EL1 of each vCPU, in vCPU order (see [`default_mpidr`]).
    pub mpidrs: &'a [u64],
    /// Bytes of RAM from [`RAM_BASE`].
    pub mem_bytes: u64,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Initrd start address and length.
    pub initrd: Option<(u64, u64)>,
    /// Which GIC the VM has.
    pub gic: GicVersion,
    /// The virtio-mmio devices.
    pub virtio: &'a [VirtioMmioNode],
}

/// Why the FDT could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt refused something (a name or a value).
    #[error("building the guest's device tree failed ({0}): a bug in edgevisor's FDT code")]
    Writer(#[from] vm_fdt::Error),
    /// The blob is larger than the space reserved for it.
    #[error(
        "the guest's device tree is {len} bytes, more than the {max} bytes reserved for it: \
         use a shorter command line or fewer devices"
    )]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: u64,
    },
    /// No vCPUs.
    #[error("the device tree needs at least one vCPU: give the VM one or more")]
    NoVcpus,
}

/// The MPIDR affinity KVM gives vCPU `index` (Aff0 = low 4 bits, Aff1 = next 8, Aff2 = next 8),
/// without the RES1 bit 31.
pub fn default_mpidr(index: u32) -> u64 {
    let i = u64::from(index);
    (i & 0xf) | (((i >> 4) & 0xff) << 8) | (((i >> 12) & 0xff) << 16)
}

fn begin(fdt: &mut FdtWriter, name: &str) -> Result<FdtWriterNode, FdtError> {
    Ok(fdt.begin_node(name)?)
}

/// Builds the FDT blob.
pub fn create_fdt(p: &FdtParams<'_>) -> Result<Vec<u8>, FdtError> {
    if p.mpidrs.is_empty() {
        return Err(FdtError::NoVcpus);
    }
    let vcpus = u32::try_from(p.mpidrs.len()).unwrap_or(u32::MAX);
    let mut fdt = FdtWriter::new()?;
    let root = begin(&mut fdt, "")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "edgevisor")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    cpus(&mut fdt, p.mpidrs)?;
    psci(&mut fdt)?;
    memory(&mut fdt, p.mem_bytes)?;
    intc(&mut fdt, p.gic, vcpus)?;
    timer(&mut fdt, p.gic, vcpus)?;
    clock(&mut fdt)?;
    uart(&mut fdt)?;
    for dev in p.virtio {
        virtio(&mut fdt, dev)?;
    }
    chosen(&mut fdt, p)?;

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooLarge {
            len: blob.len(),
            max: FDT_MAX_SIZE,
        });
    }
    Ok(blob)
}

fn cpus(fdt: &mut FdtWriter, mpidrs: &[u64]) -> Result<(), FdtError> {
    let node = begin(fdt, "cpus")?;
    // Two address cells only when an affinity above Aff2 is used.
    let wide = mpidrs.iter().any(|m| m >> 32 != 0);
    fdt.property_u32("#address-cells", if wide { 2 } else { 1 })?;
    fdt.property_u32("#size-cells", 0)?;
    for mpidr in mpidrs {
        let affinity = mpidr & 0xff_00ff_ffff;
        let cpu = begin(fdt, &format!("cpu@{affinity:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        if wide {
            fdt.property_u64("reg", affinity)?;
        } else {
            fdt.property_u32("reg", affinity as u32)?;
        }
        fdt.end_node(cpu)?;
    }
    fdt.end_node(node)?;
    Ok(())
}

fn psci(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = begin(fdt, "psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-0.2".to_string(), "arm,psci".to_string()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(node)?;
    Ok(())
}

fn memory(fdt: &mut FdtWriter, mem_bytes: u64) -> Result<(), FdtError> {
    let node = begin(fdt, &format!("memory@{RAM_BASE:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[RAM_BASE, mem_bytes])?;
    fdt.end_node(node)?;
    Ok(())
}

fn intc(fdt: &mut FdtWriter, gic: GicVersion, vcpus: u32) -> Result<(), FdtError> {
    let node = begin(fdt, "intc")?;
    fdt.property_string("compatible", gic.compatible())?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    let [a, b] = gic.regions(vcpus);
    fdt.property_array_u64("reg", &[a.0, a.1, b.0, b.1])?;
    fdt.property_u32("phandle", GIC_PHANDLE)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.end_node(node)?;
    Ok(())
}

fn timer(fdt: &mut FdtWriter, gic: GicVersion, vcpus: u32) -> Result<(), FdtError> {
    let node = begin(fdt, "timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let flags = gic.ppi_flags(vcpus);
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|ppi| [GIC_FDT_IRQ_TYPE_PPI, *ppi, flags])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.end_node(node)?;
    Ok(())
}

fn clock(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = begin(fdt, "apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_u32("phandle", CLOCK_PHANDLE)?;
    fdt.end_node(node)?;
    Ok(())
}

/// The UART's node path, for `stdout-path`.
pub fn uart_path() -> String {
    format!("/pl011@{PL011_BASE:x}")
}

fn uart(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = begin(fdt, &uart_path()[1..])?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".to_string(), "arm,primecell".to_string()],
    )?;
    fdt.property_array_u64("reg", &[PL011_BASE, PL011_SIZE])?;
    // Its interrupt arrives through an irqfd, which pulses the line: an edge (a level
    // interrupt would be lowered again before the guest saw it).
    fdt.property_array_u32(
        "interrupts",
        &[GIC_FDT_IRQ_TYPE_SPI, PL011_SPI, IRQ_TYPE_EDGE_RISING],
    )?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list(
        "clock-names",
        vec!["uartclk".to_string(), "apb_pclk".to_string()],
    )?;
    fdt.end_node(node)?;
    Ok(())
}

fn virtio(fdt: &mut FdtWriter, dev: &VirtioMmioNode) -> Result<(), FdtError> {
    let node = begin(fdt, &format!("virtio_mmio@{:x}", dev.base))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    fdt.property_array_u64("reg", &[dev.base, dev.size])?;
    // Interrupts arrive through irqfds too: an edge.
    fdt.property_array_u32(
        "interrupts",
        &[GIC_FDT_IRQ_TYPE_SPI, dev.spi, IRQ_TYPE_EDGE_RISING],
    )?;
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)?;
    Ok(())
}

fn chosen(fdt: &mut FdtWriter, p: &FdtParams<'_>) -> Result<(), FdtError> {
    let node = begin(fdt, "chosen")?;
    fdt.property_string("bootargs", p.cmdline)?;
    fdt.property_string("stdout-path", &uart_path())?;
    if let Some((start, len)) = p.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", start + len)?;
    }
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fdt_reader::{Fdt, Node};
    use super::super::layout::{
        GIC_CPU_BASE, GIC_CPU_SIZE, GIC_DIST_BASE, GIC_DIST_SIZE, GIC_REDIST_BASE,
    };
    use super::*;

    fn build(gic: GicVersion, vcpus: u32, initrd: Option<(u64, u64)>) -> Fdt {
        let mpidrs: Vec<u64> = (0..vcpus).map(default_mpidr).collect();
        let virtio = [
            VirtioMmioNode {
                base: 0x0a00_0000,
                size: 0x200,
                spi: 16,
            },
            VirtioMmioNode {
                base: 0x0a00_0200,
                size: 0x200,
                spi: 17,
            },
        ];
        let blob = create_fdt(&FdtParams {
            mpidrs: &mpidrs,
            mem_bytes: 512 << 20,
            cmdline: "console=ttyAMA0 reboot=k panic=1",
            initrd,
            gic,
            virtio: &virtio,
        })
        .expect("fdt");
        Fdt::parse(&blob).expect("our own blob parses")
    }

    fn node<'a>(fdt: &'a Fdt, path: &str) -> &'a Node {
        fdt.node(path)
            .unwrap_or_else(|| panic!("no node {path}; nodes: {:?}", fdt.paths()))
    }

    #[test]
    fn root_has_two_cell_addresses_and_the_gic_as_interrupt_parent() {
        let fdt = build(GicVersion::V3, 1, None);
        let root = node(&fdt, "/");
        assert_eq!(root.u32("#address-cells"), Some(2));
        assert_eq!(root.u32("#size-cells"), Some(2));
        assert_eq!(root.u32("interrupt-parent"), Some(GIC_PHANDLE));
        assert_eq!(root.strings("compatible"), vec!["linux,dummy-virt"]);
        assert_eq!(node(&fdt, "/intc").u32("phandle"), Some(GIC_PHANDLE));
    }

    #[test]
    fn every_vcpu_is_a_psci_cpu_with_its_mpidr_as_reg() {
        let fdt = build(GicVersion::V3, 20, None);
        let cpus = node(&fdt, "/cpus");
        assert_eq!(cpus.u32("#address-cells"), Some(1));
        assert_eq!(cpus.u32("#size-cells"), Some(0));
        let names = fdt.children("/cpus");
        assert_eq!(names.len(), 20);
        // vCPU 17 is Aff1 = 1, Aff0 = 1.
        let cpu = node(&fdt, "/cpus/cpu@101");
        assert_eq!(cpu.u32("reg"), Some(0x101));
        assert_eq!(cpu.string("device_type"), Some("cpu"));
        assert_eq!(cpu.string("enable-method"), Some("psci"));
        assert_eq!(cpu.strings("compatible"), vec!["arm,arm-v8"]);
        assert_eq!(node(&fdt, "/cpus/cpu@0").u32("reg"), Some(0));
    }

    #[test]
    fn psci_is_0_2_over_hvc() {
        let fdt = build(GicVersion::V2, 2, None);
        let psci = node(&fdt, "/psci");
        assert_eq!(psci.strings("compatible"), vec!["arm,psci-0.2", "arm,psci"]);
        assert_eq!(psci.string("method"), Some("hvc"));
    }

    #[test]
    fn memory_node_covers_ram() {
        let fdt = build(GicVersion::V3, 1, None);
        let mem = node(&fdt, "/memory@40000000");
        assert_eq!(mem.string("device_type"), Some("memory"));
        assert_eq!(mem.u64s("reg"), vec![RAM_BASE, 512 << 20]);
    }

    #[test]
    fn gicv3_node_has_distributor_and_redistributors() {
        let fdt = build(GicVersion::V3, 4, None);
        let intc = node(&fdt, "/intc");
        assert_eq!(intc.strings("compatible"), vec!["arm,gic-v3"]);
        assert!(intc.has("interrupt-controller"));
        assert_eq!(intc.u32("#interrupt-cells"), Some(3));
        assert_eq!(
            intc.u64s("reg"),
            vec![GIC_DIST_BASE, GIC_DIST_SIZE, GIC_REDIST_BASE, 4 * 0x2_0000]
        );
    }

    #[test]
    fn gicv2_node_has_distributor_and_cpu_interface() {
        let fdt = build(GicVersion::V2, 4, None);
        let intc = node(&fdt, "/intc");
        assert_eq!(intc.strings("compatible"), vec!["arm,gic-400"]);
        assert_eq!(
            intc.u64s("reg"),
            vec![GIC_DIST_BASE, 0x1000, GIC_CPU_BASE, GIC_CPU_SIZE]
        );
    }

    #[test]
    fn timer_has_the_four_ppis_level_high() {
        let fdt = build(GicVersion::V3, 2, None);
        let timer = node(&fdt, "/timer");
        assert_eq!(timer.strings("compatible"), vec!["arm,armv8-timer"]);
        assert_eq!(
            timer.u32s("interrupts"),
            vec![1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        // On a GICv2 the flags carry the CPU mask too.
        let fdt = build(GicVersion::V2, 2, None);
        let cells = node(&fdt, "/timer").u32s("interrupts");
        assert_eq!(cells.len(), 12);
        assert!(
            cells.chunks(3).all(|c| c[0] == 1 && c[2] == 0x304),
            "{cells:x?}"
        );
    }

    #[test]
    fn uart_is_a_primecell_pl011_with_spi_and_clocks() {
        let fdt = build(GicVersion::V3, 1, None);
        let uart = node(&fdt, "/pl011@9000000");
        assert_eq!(
            uart.strings("compatible"),
            vec!["arm,pl011", "arm,primecell"]
        );
        assert_eq!(uart.u64s("reg"), vec![PL011_BASE, PL011_SIZE]);
        assert_eq!(uart.u32s("interrupts"), vec![0, PL011_SPI, 1]);
        assert_eq!(uart.u32s("clocks"), vec![CLOCK_PHANDLE, CLOCK_PHANDLE]);
        assert_eq!(uart.strings("clock-names"), vec!["uartclk", "apb_pclk"]);
        let clk = node(&fdt, "/apb-pclk");
        assert_eq!(clk.u32("phandle"), Some(CLOCK_PHANDLE));
        assert_eq!(clk.u32("clock-frequency"), Some(UART_CLOCK_HZ));
        assert_eq!(clk.u32("#clock-cells"), Some(0));
    }

    #[test]
    fn chosen_has_bootargs_stdout_and_initrd_bounds() {
        let fdt = build(GicVersion::V3, 1, Some((0x5000_0000, 0x1234)));
        let chosen = node(&fdt, "/chosen");
        assert_eq!(
            chosen.string("bootargs"),
            Some("console=ttyAMA0 reboot=k panic=1")
        );
        assert_eq!(chosen.string("stdout-path"), Some("/pl011@9000000"));
        assert_eq!(chosen.u64s("linux,initrd-start"), vec![0x5000_0000]);
        assert_eq!(chosen.u64s("linux,initrd-end"), vec![0x5000_1234]);
        let fdt = build(GicVersion::V3, 1, None);
        assert!(!node(&fdt, "/chosen").has("linux,initrd-start"));
    }

    #[test]
    fn each_virtio_device_gets_a_node_with_its_window_and_spi() {
        let fdt = build(GicVersion::V3, 1, None);
        let v0 = node(&fdt, "/virtio_mmio@a000000");
        assert_eq!(v0.strings("compatible"), vec!["virtio,mmio"]);
        assert_eq!(v0.u64s("reg"), vec![0x0a00_0000, 0x200]);
        assert_eq!(v0.u32s("interrupts"), vec![0, 16, 1]);
        let v1 = node(&fdt, "/virtio_mmio@a000200");
        assert_eq!(v1.u32s("interrupts"), vec![0, 17, 1]);
    }

    #[test]
    fn no_vcpus_and_huge_command_lines_are_refused() {
        let base = FdtParams {
            mpidrs: &[],
            mem_bytes: 1 << 30,
            cmdline: "",
            initrd: None,
            gic: GicVersion::V3,
            virtio: &[],
        };
        assert!(matches!(create_fdt(&base), Err(FdtError::NoVcpus)));
        let long = "x".repeat(3 << 20);
        let p = FdtParams {
            mpidrs: &[0],
            cmdline: &long,
            ..base
        };
        assert!(matches!(create_fdt(&p), Err(FdtError::TooLarge { .. })));
    }

    #[test]
    fn an_aff3_mpidr_makes_cpu_reg_two_cells() {
        let mpidrs = [0x8000_0000, 0x01_8000_0001];
        let blob = create_fdt(&FdtParams {
            mpidrs: &mpidrs,
            mem_bytes: 1 << 30,
            cmdline: "",
            initrd: None,
            gic: GicVersion::V3,
            virtio: &[],
        })
        .expect("fdt");
        let fdt = Fdt::parse(&blob).expect("parses");
        assert_eq!(node(&fdt, "/cpus").u32("#address-cells"), Some(2));
        // Bit 31 (RES1) is not part of the affinity.
        assert_eq!(node(&fdt, "/cpus/cpu@0").u64s("reg"), vec![0]);
        assert_eq!(
            node(&fdt, "/cpus/cpu@100000001").u64s("reg"),
            vec![0x1_0000_0001]
        );
    }

    #[test]
    fn mpidr_affinity_follows_kvm() {
        assert_eq!(default_mpidr(0), 0);
        assert_eq!(default_mpidr(15), 0xf);
        assert_eq!(default_mpidr(16), 0x100);
        assert_eq!(default_mpidr(0x1234), 0x1_2304);
    }
}
