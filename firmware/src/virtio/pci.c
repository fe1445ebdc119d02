/*
 * PCI checks, behind command-line words (nothing runs without them):
 *
 *   probe.pci  scan bus 0 through configuration mechanism #1 (ports 0xCF8/0xCFC) and print
 *              one line per function: vendor:device, class, and each memory BAR's address
 *              and size (sized the usual way: write all ones, read the mask, restore).
 *   probe.edu  drive QEMU's `edu` device (1234:11e8) on that bus: read its ID register
 *              through BAR0, a liveness round trip, a factorial, a DMA round trip through
 *              guest RAM at 7 MiB, and an MSI: vector 0x40 to APIC 0, with interrupts off,
 *              checked in the local APIC's IRR (no IDT needed).
 *
 *   probe.nvme drive the first NVMe controller (class 01:08:02) on that bus with MSI-X
 *              interrupts: see nvme.c.
 *
 *   probe.pcidump  also print each function's 256 configuration bytes, as hex, on one
 *              `probe: pcicfg BB:DD.F <hex>` line (how the test data of devices/tests was
 *              recorded from QEMU's devices).
 *
 * Fails check=pci with a reason. See docs/GUEST_INTERFACE.md, "PCI".
 */
#include "virtio.h"

#define CONFIG_ADDRESS 0xcf8
#define CONFIG_DATA    0xcfc

static inline void outl(u16 port, u32 value)
{
	__asm__ volatile("outl %0, %1" ::"a"(value), "Nd"(port));
}

static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

u32 pci_cfg_read(u32 dev, u32 reg)
{
	outl(CONFIG_ADDRESS, 0x80000000u | (dev << 11) | (reg & 0xfc));
	return inl(CONFIG_DATA);
}

void pci_cfg_write(u32 dev, u32 reg, u32 value)
{
	outl(CONFIG_ADDRESS, 0x80000000u | (dev << 11) | (reg & 0xfc));
	outl(CONFIG_DATA, value);
}

int pci_has_word(const char *word)
{
	const char *p = cmdline_find(word, 0, 1);
	return p && word_end(*p);
}

static void put_bdf(u32 dev)
{
	put_str("00:");
	probe_put_hex(dev, 2);
	put_str(".0");
}

/* Address of memory BAR `i` of `dev` (0 for none), its size in *size; sized in place. */
u64 pci_bar_probe(u32 dev, u32 i, u64 *size, int *is64)
{
	u32 reg = 0x10 + 4 * i;
	u32 orig = pci_cfg_read(dev, reg);
	*size = 0;
	*is64 = 0;
	if (orig & 1)
		return 0; /* I/O BAR */
	*is64 = ((orig >> 1) & 3) == 2;
	u32 orig_hi = *is64 ? pci_cfg_read(dev, reg + 4) : 0;
	pci_cfg_write(dev, reg, 0xffffffffu);
	u64 mask = pci_cfg_read(dev, reg) & ~0xfu;
	if (*is64) {
		pci_cfg_write(dev, reg + 4, 0xffffffffu);
		mask |= (u64)pci_cfg_read(dev, reg + 4) << 32;
		pci_cfg_write(dev, reg + 4, orig_hi);
	} else {
		mask |= 0xffffffff00000000ull;
	}
	pci_cfg_write(dev, reg, orig);
	if ((mask & 0xffffffff) == 0)
		return 0; /* not implemented */
	*size = ~mask + 1;
	return ((u64)orig_hi << 32) | (orig & ~0xfu);
}

static void print_function(u32 dev, u32 id)
{
	u32 class = pci_cfg_read(dev, 0x08) >> 8;
	put_str("probe: pci ");
	put_bdf(dev);
	probe_putc(' ');
	probe_put_hex(id & 0xffff, 4);
	probe_putc(':');
	probe_put_hex(id >> 16, 4);
	put_str(" class=");
	probe_put_hex(class, 6);
	for (u32 i = 0; i < 6; i++) {
		u64 size;
		int is64;
		u64 addr = pci_bar_probe(dev, i, &size, &is64);
		if (!size)
			continue;
		put_str(" bar");
		probe_put_dec(i);
		put_str(is64 ? "=mem64@" : "=mem32@");
		put_hex0x(addr);
		probe_putc('+');
		put_hex0x(size);
		if (is64)
			i++;
	}
	probe_putc('\n');
}

static void dump_function(u32 dev)
{
	put_str("probe: pcicfg ");
	put_bdf(dev);
	probe_putc(' ');
	for (u32 reg = 0; reg < 256; reg += 4) {
		u32 v = pci_cfg_read(dev, reg);
		for (u32 b = 0; b < 4; b++)
			probe_put_hex((v >> (8 * b)) & 0xff, 2);
	}
	probe_putc('\n');
}

/* ---- QEMU's edu device (docs/specs/edu.txt in QEMU) ------------------------------------ */
#define EDU_ID          0x00
#define EDU_LIVENESS    0x04
#define EDU_FACTORIAL   0x08
#define EDU_STATUS      0x20
#define EDU_IRQ_STATUS  0x24
#define EDU_IRQ_RAISE   0x60
#define EDU_IRQ_ACK     0x64
#define EDU_DMA_SRC     0x80
#define EDU_DMA_DST     0x88
#define EDU_DMA_COUNT   0x90
#define EDU_DMA_CMD     0x98
#define EDU_DMA_BUFFER  0x40000
#define DMA_RAM_SRC     0x700000ULL
#define DMA_RAM_DST     0x701000ULL
#define DMA_LEN         256
#define MSI_VECTOR      0x40

static u32 rd(u64 bar, u32 off)
{
	return *(volatile u32 *)(usize)(bar + off);
}

static void wr(u64 bar, u32 off, u32 v)
{
	*(volatile u32 *)(usize)(bar + off) = v;
}

static void wait_clear(u64 bar, u32 off, u32 bit, const char *what)
{
	struct deadline dl;
	deadline_start(&dl, 10000);
	while (rd(bar, off) & bit)
		if (deadline_passed(&dl))
			probe_fail("pci", what);
}

u32 pci_find_cap(u32 dev, u8 id)
{
	if (!((pci_cfg_read(dev, 0x04) >> 16) & (1 << 4)))
		return 0;
	u32 p = pci_cfg_read(dev, 0x34) & 0xfc;
	for (int n = 0; p >= 0x40 && n < 48; n++) {
		u32 head = pci_cfg_read(dev, p);
		if ((head & 0xff) == id)
			return p;
		p = (head >> 8) & 0xfc;
	}
	return 0;
}

static void edu_checks(u32 dev)
{
	u64 size;
	int is64;
	u64 bar = pci_bar_probe(dev, 0, &size, &is64);
	if (!size || !bar)
		probe_fail("pci", "edu: BAR0 is not a placed memory BAR");
	/* Memory decoding and bus mastering (DMA and MSI writes). */
	pci_cfg_write(dev, 0x04, (pci_cfg_read(dev, 0x04) & 0xffff) | 0x6);

	u32 id = rd(bar, EDU_ID);
	put_str("probe: edu id=");
	put_hex_fixed(id, 8);
	if ((id & 0xff) != 0xed)
		probe_fail_hex("pci", "edu: ID register does not end in 0xed: ", id);

	wr(bar, EDU_LIVENESS, 0x12345678);
	u32 inv = rd(bar, EDU_LIVENESS);
	if (inv != ~0x12345678u)
		probe_fail_hex("pci", "edu: liveness register did not invert 0x12345678: ", inv);

	wr(bar, EDU_FACTORIAL, 5);
	wait_clear(bar, EDU_STATUS, 1, "edu: factorial still busy after 10 s");
	u32 fact = rd(bar, EDU_FACTORIAL);
	put_str(" factorial(5)=");
	probe_put_dec(fact);
	if (fact != 120)
		probe_fail_hex("pci", "edu: factorial(5) is not 120: ", fact);

	/* DMA: RAM -> device buffer -> RAM, through the IOMMU mapping of guest RAM. */
	u8 *src = (u8 *)(usize)DMA_RAM_SRC;
	u8 *dst = (u8 *)(usize)DMA_RAM_DST;
	for (u32 i = 0; i < DMA_LEN; i++) {
		src[i] = (u8)(i * 7 + 3);
		dst[i] = 0;
	}
	mb();
	wr(bar, EDU_DMA_SRC, (u32)DMA_RAM_SRC);
	wr(bar, EDU_DMA_DST, EDU_DMA_BUFFER);
	wr(bar, EDU_DMA_COUNT, DMA_LEN);
	wr(bar, EDU_DMA_CMD, 1);
	wait_clear(bar, EDU_DMA_CMD, 1, "edu: DMA to the device still running after 10 s");
	wr(bar, EDU_DMA_SRC, EDU_DMA_BUFFER);
	wr(bar, EDU_DMA_DST, (u32)DMA_RAM_DST);
	wr(bar, EDU_DMA_COUNT, DMA_LEN);
	wr(bar, EDU_DMA_CMD, 3);
	wait_clear(bar, EDU_DMA_CMD, 1, "edu: DMA to guest RAM still running after 10 s");
	mb();
	if (memcmp(src, dst, DMA_LEN) != 0)
		probe_fail("pci", "edu: the DMA round trip did not bring the bytes back");
	put_str(" dma=");
	probe_put_dec(DMA_LEN);

	/* MSI: fixed delivery of MSI_VECTOR to APIC 0, interrupts off, seen in the IRR. */
	u32 msi = pci_find_cap(dev, 0x05);
	if (!msi)
		probe_fail("pci", "edu: no MSI capability");
	u32 control = pci_cfg_read(dev, msi) >> 16;
	int msi64 = (control >> 7) & 1;
	__asm__ volatile("cli");
	volatile u32 *svr = (volatile u32 *)(usize)(LAPIC_BASE + 0xf0);
	*svr = *svr | 0x100; /* software-enable the local APIC */
	pci_cfg_write(dev, msi + 4, (u32)LAPIC_BASE);
	if (msi64)
		pci_cfg_write(dev, msi + 8, 0);
	pci_cfg_write(dev, msi + (msi64 ? 0xc : 0x8), MSI_VECTOR);
	pci_cfg_write(dev, msi, (pci_cfg_read(dev, msi) & 0xffff) | ((control | 1) << 16));
	wr(bar, EDU_IRQ_RAISE, 0x1);
	volatile u32 *irr = (volatile u32 *)(usize)(LAPIC_BASE + 0x200 + (MSI_VECTOR / 32) * 0x10);
	struct deadline dl;
	deadline_start(&dl, 10000);
	while (!(*irr & (1u << (MSI_VECTOR % 32))))
		if (deadline_passed(&dl))
			probe_fail_hex("pci", "edu: MSI vector 0x40 not pending in the local APIC IRR after 10 s; edu irq status=",
				       rd(bar, EDU_IRQ_STATUS));
	wr(bar, EDU_IRQ_ACK, 0x1);
	put_str(" msi=0x40\n");
}

void pci_checks(void)
{
	int scan = pci_has_word("probe.pci");
	int edu = pci_has_word("probe.edu");
	int nvme = pci_has_word("probe.nvme");
	int dump = pci_has_word("probe.pcidump");
	if (!scan && !edu && !nvme && !dump)
		return;
	u32 edu_dev = 32, nvme_dev = 32, count = 0;
	for (u32 dev = 0; dev < 32; dev++) {
		u32 id = pci_cfg_read(dev, 0);
		if ((id & 0xffff) == 0xffff)
			continue;
		count++;
		if (scan)
			print_function(dev, id);
		if (dump)
			dump_function(dev);
		if (id == 0x11e81234 && edu_dev == 32)
			edu_dev = dev;
		if ((pci_cfg_read(dev, 0x08) >> 8) == 0x010802 && nvme_dev == 32)
			nvme_dev = dev;
	}
	if (!count)
		probe_fail("pci", "no function answers on bus 0 (no PCI bus?)");
	if (edu) {
		if (edu_dev == 32)
			probe_fail("pci", "probe.edu: no 1234:11e8 function on bus 0");
		edu_checks(edu_dev);
	}
	if (nvme) {
		if (nvme_dev == 32)
			probe_fail("nvme", "probe.nvme: no NVMe function (class 01:08:02) on bus 0");
		nvme_checks(nvme_dev);
	}
}
