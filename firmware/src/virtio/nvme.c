/*
 * probe.nvme: a minimal NVMe driver (NVMe 1.4 base specification) for the first function of
 * class 01:08:02 on bus 0, with its interrupts delivered through MSI-X (PCI 3.0, 6.8.2).
 *
 *  1. Memory decoding and bus mastering on; MSI-X on with the function masked, table
 *     entries 0 and 1 programmed (address 0xFEE00000: fixed delivery to APIC 0; data
 *     0x42 and 0x43; unmasked) and read back through the BAR, then the function unmasked.
 *  2. Controller reset (CC.EN=0, CSTS.RDY=0), an 8-entry admin queue pair at 7 MiB + 64 KiB
 *     (AQA, ASQ, ACQ), CC with 4 KiB pages, IOSQES=6, IOCQES=4 and EN=1, CSTS.RDY=1.
 *  3. Identify Controller (CNS 1) into a 4 KiB buffer: the admin completion queue signals
 *     MSI-X vector 0, so vector 0x42 must turn up in the local APIC's IRR (interrupts stay
 *     off; the probe has no IDT). The PCI vendor ID in the data must match configuration
 *     space.
 *  4. Set Features (Number of Queues: one pair), Create I/O Completion Queue 1 on MSI-X
 *     vector 1, Create I/O Submission Queue 1.
 *  5. Table entry 1 masked, then Read of LBA 0 of namespace 1: once the completion is in
 *     memory, vector 1's bit must turn up in the Pending Bit Array while 0x43 stays out of
 *     the IRR (a masked vector's message is held, PCI 3.0, 6.8.3.4); the entry unmasked,
 *     vector 0x43 must turn up in the IRR and the pending bit must clear.
 *
 * Prints `probe: nvme vid=0x1b36 serial=SN admin-msix=0x42 lba0=TEXT io-msix=0x43 masked=held`
 * (SN: the serial number up to its padding; TEXT: the sector's leading printable bytes, at
 * most 32) and fails check=nvme with the step that went wrong. See docs/GUEST_INTERFACE.md,
 * "PCI".
 */
#include "virtio.h"

/* Controller registers (NVMe 1.4, 3.1). */
#define NVME_CAP_LO   0x00
#define NVME_CAP_HI   0x04
#define NVME_CC       0x14
#define NVME_CSTS     0x1c
#define NVME_AQA      0x24
#define NVME_ASQ      0x28
#define NVME_ACQ      0x30
#define NVME_DOORBELL 0x1000

#define CC_EN         (1u << 0)
#define CC_IOSQES_64  (6u << 16)
#define CC_IOCQES_16  (4u << 20)
#define CSTS_RDY      (1u << 0)
#define CSTS_CFS      (1u << 1)

/* Admin and NVM opcodes. */
#define OP_CREATE_SQ    0x01
#define OP_CREATE_CQ    0x05
#define OP_IDENTIFY     0x06
#define OP_SET_FEATURES 0x09
#define OP_READ         0x02
#define FEATURE_NUM_QUEUES 0x07

/* Guest RAM the driver owns: the edu DMA buffers end at 7 MiB + 8 KiB. */
#define NVME_RAM        0x710000ULL
#define ADMIN_SQ        (NVME_RAM + 0x0000)
#define ADMIN_CQ        (NVME_RAM + 0x1000)
#define IDENTIFY_BUF    (NVME_RAM + 0x2000)
#define IO_SQ           (NVME_RAM + 0x3000)
#define IO_CQ           (NVME_RAM + 0x4000)
#define READ_BUF        (NVME_RAM + 0x5000)
#define QUEUE_ENTRIES   8

#define MSIX_CAP_ID     0x11
#define MSIX_ENABLE     (1u << 15)
#define MSIX_FUNC_MASK  (1u << 14)
#define ADMIN_VECTOR    0x42
#define IO_VECTOR       0x43

struct nvme_queue {
	volatile u32 *sq;	/* 64-byte entries: 16 dwords */
	volatile u32 *cq;	/* 16-byte entries: 4 dwords */
	u32 sq_doorbell;	/* BAR offsets */
	u32 cq_doorbell;
	u16 tail;
	u16 head;
	u32 phase;
};

static u64 bar;
static u16 next_cid = 1;
static volatile u32 *msix_table;	/* 4 dwords per entry */
static volatile u32 *msix_pba;		/* one bit per entry */

static u32 rd(u32 off)
{
	return *(volatile u32 *)(usize)(bar + off);
}

static void wr(u32 off, u32 v)
{
	*(volatile u32 *)(usize)(bar + off) = v;
}

static void wait_ready(u32 want, const char *what)
{
	struct deadline dl;
	deadline_start(&dl, 10000);
	for (;;) {
		u32 csts = rd(NVME_CSTS);
		if (csts & CSTS_CFS)
			probe_fail_hex("nvme", "controller fatal status (CSTS.CFS) set; CSTS=", csts);
		if ((csts & CSTS_RDY) == want)
			return;
		if (deadline_passed(&dl))
			probe_fail_hex("nvme", what, csts);
	}
}

static void queue_init(struct nvme_queue *q, u64 sq, u64 cq, u32 qid, u32 stride)
{
	q->sq = (volatile u32 *)(usize)sq;
	q->cq = (volatile u32 *)(usize)cq;
	memset((void *)(usize)sq, 0, QUEUE_ENTRIES * 64);
	memset((void *)(usize)cq, 0, QUEUE_ENTRIES * 16);
	q->sq_doorbell = NVME_DOORBELL + (2 * qid) * stride;
	q->cq_doorbell = NVME_DOORBELL + (2 * qid + 1) * stride;
	q->tail = 0;
	q->head = 0;
	q->phase = 1;
}

/* Submits `cmd` (its CID is filled in) and polls the completion queue for its entry; fails
 * with `what` on a timeout, a wrong command identifier or a non-zero status. */
static void submit(struct nvme_queue *q, u32 cmd[16], const char *what)
{
	u16 cid = next_cid++;
	cmd[0] = (cmd[0] & 0xffff) | ((u32)cid << 16);
	volatile u32 *slot = q->sq + q->tail * 16;
	for (u32 i = 0; i < 16; i++)
		slot[i] = cmd[i];
	mb();
	q->tail = (q->tail + 1) % QUEUE_ENTRIES;
	wr(q->sq_doorbell, q->tail);

	volatile u32 *entry = q->cq + q->head * 4;
	struct deadline dl;
	deadline_start(&dl, 10000);
	while (((entry[3] >> 16) & 1) != q->phase) {
		if (deadline_passed(&dl)) {
			put_str("probe: nvme no completion for ");
			put_str(what);
			probe_putc('\n');
			probe_fail_hex("nvme", "no completion within 10 s; CSTS=", rd(NVME_CSTS));
		}
	}
	mb();
	u32 dw3 = entry[3];
	q->head = (q->head + 1) % QUEUE_ENTRIES;
	if (q->head == 0)
		q->phase ^= 1;
	wr(q->cq_doorbell, q->head);
	if ((dw3 & 0xffff) != cid) {
		put_str("probe: nvme wrong command identifier for ");
		put_str(what);
		probe_putc('\n');
		probe_fail_hex("nvme", "completion carries another command identifier: ", dw3 & 0xffff);
	}
	if ((dw3 >> 17) != 0) {
		put_str("probe: nvme error status for ");
		put_str(what);
		probe_putc('\n');
		probe_fail_hex("nvme", "command failed; status field (SCT<<8|SC)=", (dw3 >> 17) & 0x7ff);
	}
}

static volatile u32 *irr_word(u32 vector)
{
	return (volatile u32 *)(usize)(LAPIC_BASE + 0x200 + (vector / 32) * 0x10);
}

static int irr_pending(u32 vector)
{
	return (*irr_word(vector) >> (vector % 32)) & 1;
}

static void wait_irr(u32 vector, const char *what)
{
	struct deadline dl;
	deadline_start(&dl, 10000);
	while (!irr_pending(vector))
		if (deadline_passed(&dl))
			probe_fail_hex("nvme", what, vector);
}

/* MSI-X: table entries 0 and 1 to APIC 0 with ADMIN_VECTOR and IO_VECTOR. */
static void msix_setup(u32 dev, u32 cap)
{
	u32 control = pci_cfg_read(dev, cap) >> 16;
	u32 table = pci_cfg_read(dev, cap + 4);
	u32 entries = (control & 0x7ff) + 1;
	if (entries < 2)
		probe_fail_hex("nvme", "MSI-X table has fewer than 2 entries: ", entries);
	u64 size;
	int is64;
	u64 table_bar = pci_bar_probe(dev, table & 7, &size, &is64);
	if (!size || !table_bar)
		probe_fail_hex("nvme", "the MSI-X table's BAR is not a placed memory BAR: BIR=", table & 7);
	volatile u32 *t = (volatile u32 *)(usize)(table_bar + (table & ~7u));
	u32 pba = pci_cfg_read(dev, cap + 8);
	u64 pba_bar = pci_bar_probe(dev, pba & 7, &size, &is64);
	if (!size || !pba_bar)
		probe_fail_hex("nvme", "the MSI-X PBA's BAR is not a placed memory BAR: BIR=", pba & 7);
	msix_table = t;
	msix_pba = (volatile u32 *)(usize)(pba_bar + (pba & ~7u));

	/* Enable with the function masked, program, read back, unmask (PCI 3.0, 6.8.2.3). */
	u32 head = pci_cfg_read(dev, cap) & 0xffff;
	pci_cfg_write(dev, cap, head | ((control | MSIX_ENABLE | MSIX_FUNC_MASK) << 16));
	u32 vectors[2] = {ADMIN_VECTOR, IO_VECTOR};
	for (u32 i = 0; i < 2; i++) {
		t[i * 4 + 0] = (u32)LAPIC_BASE;
		t[i * 4 + 1] = 0;
		t[i * 4 + 2] = vectors[i];
		t[i * 4 + 3] = 0; /* vector control: unmasked */
	}
	for (u32 i = 0; i < 2; i++) {
		if (t[i * 4 + 0] != (u32)LAPIC_BASE || t[i * 4 + 2] != vectors[i] || (t[i * 4 + 3] & 1))
			probe_fail_hex("nvme", "MSI-X table entry does not read back as written; data=",
				       t[i * 4 + 2]);
	}
	control = pci_cfg_read(dev, cap) >> 16;
	if (!(control & MSIX_ENABLE) || !(control & MSIX_FUNC_MASK))
		probe_fail_hex("nvme", "MSI-X enable and function mask do not read back: control=",
			       control);
	pci_cfg_write(dev, cap, head | (((control | MSIX_ENABLE) & ~MSIX_FUNC_MASK) << 16));
	control = pci_cfg_read(dev, cap) >> 16;
	if (!(control & MSIX_ENABLE) || (control & MSIX_FUNC_MASK))
		probe_fail_hex("nvme", "MSI-X does not read back enabled and unmasked: control=", control);
}

/* Prints up to `max` bytes of `s` that are visible ASCII, stopping at the first other byte. */
static void put_field(const u8 *s, u32 max)
{
	for (u32 i = 0; i < max && s[i] > 0x20 && s[i] < 0x7f; i++)
		probe_putc(s[i]);
}

void nvme_checks(u32 dev)
{
	u64 size;
	int is64;
	bar = pci_bar_probe(dev, 0, &size, &is64);
	if (!size || !bar)
		probe_fail("nvme", "BAR0 is not a placed memory BAR");
	if (bar + size > 0x100000000ULL || size < 0x2000)
		probe_fail_hex("nvme", "BAR0 is not a 32-bit address with room for doorbells: ", bar);
	u32 cap = pci_find_cap(dev, MSIX_CAP_ID);
	if (!cap)
		probe_fail("nvme", "no MSI-X capability");
	pci_cfg_write(dev, 0x04, (pci_cfg_read(dev, 0x04) & 0xffff) | 0x6);

	__asm__ volatile("cli");
	volatile u32 *svr = (volatile u32 *)(usize)(LAPIC_BASE + 0xf0);
	*svr = *svr | 0x100; /* software-enable the local APIC */
	msix_setup(dev, cap);
	if (irr_pending(ADMIN_VECTOR) || irr_pending(IO_VECTOR))
		probe_fail("nvme", "vector 0x42 or 0x43 pending before any command");

	/* Reset, then the admin queues (NVMe 1.4, 7.6.1). */
	u32 cap_lo = rd(NVME_CAP_LO), cap_hi = rd(NVME_CAP_HI);
	u32 stride = 4u << (cap_hi & 0xf);
	if (((cap_hi >> 5) & 1) == 0)
		probe_fail_hex("nvme", "CAP.CSS lacks the NVM command set: CAP high=", cap_hi);
	if (((cap_hi >> 16) & 0xf) != 0)
		probe_fail_hex("nvme", "CAP.MPSMIN is above 4 KiB: CAP high=", cap_hi);
	if ((cap_lo & 0xffff) + 1 < QUEUE_ENTRIES)
		probe_fail_hex("nvme", "CAP.MQES allows fewer than 8 queue entries: CAP low=", cap_lo);
	wr(NVME_CC, rd(NVME_CC) & ~CC_EN);
	wait_ready(0, "CSTS.RDY still set 10 s after CC.EN=0; CSTS=");
	struct nvme_queue admin, io;
	queue_init(&admin, ADMIN_SQ, ADMIN_CQ, 0, stride);
	wr(NVME_AQA, ((QUEUE_ENTRIES - 1) << 16) | (QUEUE_ENTRIES - 1));
	wr(NVME_ASQ, (u32)ADMIN_SQ);
	wr(NVME_ASQ + 4, 0);
	wr(NVME_ACQ, (u32)ADMIN_CQ);
	wr(NVME_ACQ + 4, 0);
	wr(NVME_CC, CC_IOSQES_64 | CC_IOCQES_16 | CC_EN);
	wait_ready(CSTS_RDY, "CSTS.RDY not set 10 s after CC.EN=1; CSTS=");

	/* Identify Controller. */
	u8 *id = (u8 *)(usize)IDENTIFY_BUF;
	memset(id, 0, 4096);
	u32 cmd[16];
	memset(cmd, 0, sizeof(cmd));
	cmd[0] = OP_IDENTIFY;
	cmd[6] = (u32)IDENTIFY_BUF;
	cmd[10] = 1; /* CNS: controller */
	submit(&admin, cmd, "Identify Controller");
	u32 vid = id[0] | (id[1] << 8);
	put_str("probe: nvme vid=");
	put_hex_fixed(vid, 4);
	if (vid != (pci_cfg_read(dev, 0) & 0xffff))
		probe_fail_hex("nvme", "Identify VID differs from the PCI vendor ID: ", vid);
	put_str(" serial=");
	put_field(id + 4, 20);
	if (id[4] <= 0x20 || id[4] >= 0x7f)
		probe_fail("nvme", "Identify Controller returned no serial number");
	wait_irr(ADMIN_VECTOR, "MSI-X vector 0 (admin queue) not pending in the local APIC IRR after 10 s: vector=");
	put_str(" admin-msix=0x42");

	/* One I/O queue pair on MSI-X vector 1, then a read of LBA 0 (NVMe 1.4, 5.3, 5.4, 6.9). */
	memset(cmd, 0, sizeof(cmd));
	cmd[0] = OP_SET_FEATURES;
	cmd[10] = FEATURE_NUM_QUEUES;
	cmd[11] = 0; /* one submission and one completion queue (0-based) */
	submit(&admin, cmd, "Set Features (Number of Queues)");
	queue_init(&io, IO_SQ, IO_CQ, 1, stride);
	memset(cmd, 0, sizeof(cmd));
	cmd[0] = OP_CREATE_CQ;
	cmd[6] = (u32)IO_CQ;
	cmd[10] = ((QUEUE_ENTRIES - 1) << 16) | 1;
	cmd[11] = (1u << 16) | 0x3; /* IV=1, IEN, PC */
	submit(&admin, cmd, "Create I/O Completion Queue");
	memset(cmd, 0, sizeof(cmd));
	cmd[0] = OP_CREATE_SQ;
	cmd[6] = (u32)IO_SQ;
	cmd[10] = ((QUEUE_ENTRIES - 1) << 16) | 1;
	cmd[11] = (1u << 16) | 0x1; /* CQID=1, PC */
	submit(&admin, cmd, "Create I/O Submission Queue");
	if (irr_pending(IO_VECTOR))
		probe_fail("nvme", "vector 0x43 pending before the first I/O command");

	u8 *data = (u8 *)(usize)READ_BUF;
	memset(data, 0, 4096);
	memset(cmd, 0, sizeof(cmd));
	cmd[0] = OP_READ;
	cmd[1] = 1; /* namespace 1 */
	cmd[6] = (u32)READ_BUF;
	/* SLBA 0 (CDW10, CDW11), NLB 0: one block (CDW12). */
	/* Vector 1 masked while the read completes: its message must be held, not lost. */
	msix_table[1 * 4 + 3] = 1;
	if (!(msix_table[1 * 4 + 3] & 1))
		probe_fail("nvme", "MSI-X table entry 1 does not read back masked");
	if (*msix_pba & 2)
		probe_fail("nvme", "MSI-X vector 1 pending before the first I/O command");
	submit(&io, cmd, "Read of LBA 0");
	put_str(" lba0=");
	put_field(data, 32);
	struct deadline dl;
	deadline_start(&dl, 10000);
	while (!(*msix_pba & 2))
		if (deadline_passed(&dl))
			probe_fail_hex("nvme", "masked MSI-X vector 1 not pending in the PBA 10 s after its completion: PBA=",
				       *msix_pba);
	if (irr_pending(IO_VECTOR))
		probe_fail("nvme", "masked MSI-X vector 1 was delivered (0x43 in the IRR)");
	msix_table[1 * 4 + 3] = 0;
	wait_irr(IO_VECTOR, "MSI-X vector 1 (I/O queue) not delivered within 10 s of unmasking: vector=");
	if (*msix_pba & 2)
		probe_fail_hex("nvme", "MSI-X vector 1 still pending in the PBA after its delivery: PBA=",
			       *msix_pba);
	put_str(" io-msix=0x43 masked=held\n");
}
