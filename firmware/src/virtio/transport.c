/*
 * virtio-mmio transport (register layout version 2) and split virtqueues, polled; and
 * `virtio_checks`, which finds the devices on the command line and runs each device's check.
 */
#include "virtio.h"

/* ---- registers ---------------------------------------------------------------------------- */

u32 mmio_read32(struct vdev *d, u32 offset)
{
	return *(volatile u32 *)(usize)(d->base + offset);
}

void mmio_write32(struct vdev *d, u32 offset, u32 value)
{
	*(volatile u32 *)(usize)(d->base + offset) = value;
}

u8 config_read8(struct vdev *d, u32 offset)
{
	return *(volatile u8 *)(usize)(d->base + VIRTIO_MMIO_CONFIG + offset);
}

u32 config_read32(struct vdev *d, u32 offset)
{
	return *(volatile u32 *)(usize)(d->base + VIRTIO_MMIO_CONFIG + offset);
}

/* Two 32-bit halves, retried while ConfigGeneration changes (bounded). */
u64 config_read64(struct vdev *d, u32 offset)
{
	for (int tries = 0; tries < 100; tries++) {
		u32 gen = mmio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION);
		u64 lo = config_read32(d, offset);
		u64 hi = config_read32(d, offset + 4);
		if (mmio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION) == gen)
			return lo | (hi << 32);
	}
	DEV_FAIL(d, "config generation kept changing over 100 reads of a 64-bit field");
}

static void set_status(struct vdev *d, u32 bits)
{
	mmio_write32(d, VIRTIO_MMIO_STATUS, mmio_read32(d, VIRTIO_MMIO_STATUS) | bits);
}

u64 buffer_addr(struct vdev *d, u64 offset)
{
	return d->scratch + BUFFER_AREA + offset;
}

void virtio_reset(struct vdev *d)
{
	struct deadline dl;
	mmio_write32(d, VIRTIO_MMIO_STATUS, 0);
	deadline_start(&dl, 1000);
	while (mmio_read32(d, VIRTIO_MMIO_STATUS) != 0)
		if (deadline_passed(&dl))
			DEV_FAIL(d, "device status did not read 0 within 1000 ms of a reset");
}

static u64 read_device_features(struct vdev *d)
{
	mmio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	u64 lo = mmio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
	mmio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	u64 hi = mmio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
	return lo | (hi << 32);
}

static void write_driver_features(struct vdev *d, u64 features)
{
	mmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	mmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)features);
	mmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	mmio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(features >> 32));
}

static void write_addr(struct vdev *d, u32 low_reg, u64 addr)
{
	mmio_write32(d, low_reg, (u32)addr);
	mmio_write32(d, low_reg + 4, (u32)(addr >> 32));
}

static void setup_queue(struct vdev *d, u32 index)
{
	struct vq *q = &d->queues[index];
	u64 area = d->scratch + index * QUEUE_AREA;

	mmio_write32(d, VIRTIO_MMIO_QUEUE_SEL, index);
	if (mmio_read32(d, VIRTIO_MMIO_QUEUE_READY) != 0)
		DEV_FAIL(d, "a queue reads ready right after a reset");
	u32 max = mmio_read32(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max < QUEUE_SIZE_MIN)
		DEV_FAIL(d, "a queue the device type needs has QueueNumMax below 4");
	u32 size = QUEUE_SIZE_MAX;
	while (size > max)
		size >>= 1;

	memset((void *)(usize)area, 0, sizeof(struct virtq_desc) * QUEUE_SIZE_MAX);
	memset((void *)(usize)(area + 0x1000), 0, sizeof(struct virtq_avail));
	memset((void *)(usize)(area + 0x2000), 0, sizeof(struct virtq_used));
	q->dev = d;
	q->index = index;
	q->size = (u16)size;
	q->avail_idx = 0;
	q->last_used = 0;
	q->desc = (volatile struct virtq_desc *)(usize)area;
	q->avail = (volatile struct virtq_avail *)(usize)(area + 0x1000);
	q->used = (volatile struct virtq_used *)(usize)(area + 0x2000);

	mmio_write32(d, VIRTIO_MMIO_QUEUE_NUM, size);
	write_addr(d, VIRTIO_MMIO_QUEUE_DESC_LOW, area);
	write_addr(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, area + 0x1000);
	write_addr(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, area + 0x2000);
	mb();
	mmio_write32(d, VIRTIO_MMIO_QUEUE_READY, 1);
	if (mmio_read32(d, VIRTIO_MMIO_QUEUE_READY) != 1)
		DEV_FAIL(d, "QueueReady does not read 1 after the driver set it");
}

void virtio_start(struct vdev *d, u64 wanted, u32 nqueues)
{
	virtio_reset(d);
	set_status(d, STATUS_ACKNOWLEDGE);
	set_status(d, STATUS_DRIVER);
	d->offered = read_device_features(d);
	if (!(d->offered & VIRTIO_F_VERSION_1))
		DEV_FAIL(d, "the device does not offer VIRTIO_F_VERSION_1 (legacy only)");
	d->accepted = VIRTIO_F_VERSION_1 | (d->offered & wanted);
	write_driver_features(d, d->accepted);
	set_status(d, STATUS_FEATURES_OK);
	if (!(mmio_read32(d, VIRTIO_MMIO_STATUS) & STATUS_FEATURES_OK))
		DEV_FAIL(d, "the device cleared FEATURES_OK: it refused the accepted features");
	for (u32 i = 0; i < nqueues; i++)
		setup_queue(d, i);
}

void virtio_driver_ok(struct vdev *d)
{
	set_status(d, STATUS_DRIVER_OK);
	u32 status = mmio_read32(d, VIRTIO_MMIO_STATUS);
	if (status & (STATUS_NEEDS_RESET | STATUS_FAILED))
		DEV_FAIL(d, "device status has NEEDS_RESET or FAILED after DRIVER_OK");
}

/* ---- virtqueues ------------------------------------------------------------------------ */

void vq_submit(struct vq *q, u16 head, const struct vbuf *bufs, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		u16 slot = (u16)((head + i) % q->size);
		q->desc[slot].addr = bufs[i].addr;
		q->desc[slot].len = bufs[i].len;
		u16 flags = bufs[i].device_writes ? VIRTQ_DESC_F_WRITE : 0;
		if (i + 1 < n)
			flags |= VIRTQ_DESC_F_NEXT;
		q->desc[slot].flags = flags;
		q->desc[slot].next = (u16)((slot + 1) % q->size);
	}
	q->avail->ring[q->avail_idx % q->size] = head % q->size;
	mb();
	q->avail_idx++;
	q->avail->idx = q->avail_idx;
	mb();
}

void vq_notify(struct vq *q)
{
	mmio_write32(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

/* Acknowledge whatever InterruptStatus shows (nothing waits for interrupts here). */
static void ack_interrupts(struct vdev *d)
{
	u32 pending = mmio_read32(d, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (pending)
		mmio_write32(d, VIRTIO_MMIO_INTERRUPT_ACK, pending);
}

int vq_poll(struct vq *q, struct deadline *dl, u32 *id, u32 *len)
{
	while (q->used->idx == q->last_used) {
		if (deadline_passed(dl))
			return 0;
	}
	mb();
	volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->size];
	*id = e->id;
	*len = e->len;
	q->last_used++;
	ack_interrupts(q->dev);
	if (*id >= q->size)
		DEV_FAIL(q->dev, "the device returned a used id beyond the queue size");
	return 1;
}

u32 vq_transact(struct vq *q, const struct vbuf *bufs, u32 n, u32 ms, const char *what)
{
	struct deadline dl;
	u32 id, len;
	vq_submit(q, 0, bufs, n);
	vq_notify(q);
	deadline_start(&dl, ms);
	if (!vq_poll(q, &dl, &id, &len))
		probe_fail_hex(q->dev->check, what, q->dev->base);
	if (id != 0)
		DEV_FAIL(q->dev, "the device returned a chain the driver did not submit");
	return len;
}

void put_dev_prefix(struct vdev *d, const char *type)
{
	put_str("probe: virtio-");
	put_str(type);
	put_str(" base=");
	put_hex0x(d->base);
}

/* ---- the command line's devices ----------------------------------------------------------- */

/* An unsigned number: 0x... hex or decimal; `*ok` cleared when there are no digits or it
 * overflows 64 bits. */
static u64 parse_number(const char **text, int *ok)
{
	const char *p = *text;
	u64 value = 0;
	int digits = 0;
	u32 radix = 10;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		radix = 16;
		p += 2;
	}
	for (;; p++, digits++) {
		u32 v;
		if (*p >= '0' && *p <= '9')
			v = (u32)(*p - '0');
		else if (radix == 16 && *p >= 'a' && *p <= 'f')
			v = (u32)(*p - 'a' + 10);
		else if (radix == 16 && *p >= 'A' && *p <= 'F')
			v = (u32)(*p - 'A' + 10);
		else
			break;
		if (value > (~0ULL - v) / radix)
			*ok = 0;
		value = value * radix + v;
	}
	if (digits == 0)
		*ok = 0;
	*text = p;
	return value;
}

NORETURN static void bad_token(void)
{
	probe_fail("virtio",
		   "bad virtio_mmio.device= token: use <size>@<base>:<irq> with size like 4K, "
		   "0x1000 or 512 and a base below 4 GiB");
}

/* `<size>@<base>:<irq>[:<id>]` as Linux's virtio_mmio.device= parameter. */
static void parse_token(const char *p, struct vdev *d)
{
	int ok = 1;
	u64 size = parse_number(&p, &ok);
	if (*p == 'K' || *p == 'k') {
		size <<= 10;
		p++;
	} else if (*p == 'M' || *p == 'm') {
		size <<= 20;
		p++;
	}
	if (*p++ != '@')
		bad_token();
	u64 base = parse_number(&p, &ok);
	if (*p++ != ':')
		bad_token();
	u64 irq = parse_number(&p, &ok);
	if (*p == ':') {
		p++;
		parse_number(&p, &ok);
	}
	if (!ok || !word_end(*p) || size < 0x100 || size > 0x100000 || irq > 0xffff)
		bad_token();
	if (base >= 0x100000000ULL || base + size > 0x100000000ULL || (base & 3))
		bad_token();
	d->base = base;
	d->size = size;
	d->irq = (u32)irq;
}

static const char *next_token(const char **cursor)
{
	const char *a = *cursor, *b = *cursor;
	const char *plain = cmdline_find("virtio_mmio.device=", &a, 1);
	const char *unikraft = cmdline_find("libvirtio_mmio.device=", &b, 1);
	if (plain && (!unikraft || plain < unikraft)) {
		*cursor = a;
		return plain;
	}
	if (unikraft)
		*cursor = b;
	return unikraft;
}

static void check_device(struct vdev *d)
{
	d->check = "virtio";
	u32 magic = mmio_read32(d, VIRTIO_MMIO_MAGIC);
	if (magic != VIRTIO_MMIO_MAGIC_VALUE)
		probe_fail_hex("virtio", "no virtio-mmio magic 0x74726976 at base=", d->base);
	u32 version = mmio_read32(d, VIRTIO_MMIO_VERSION);
	if (version != 2)
		probe_fail_hex("virtio",
			       "virtio-mmio version is not 2 (virtio 1.x register layout) at base=",
			       d->base);
	d->device_id = mmio_read32(d, VIRTIO_MMIO_DEVICE_ID);
	switch (d->device_id) {
	case VIRTIO_ID_RNG:
		d->check = "virtio-rng";
		virtio_rng_check(d);
		break;
	case VIRTIO_ID_BLOCK:
		d->check = "virtio-blk";
		virtio_blk_check(d);
		virtio_blk_bench(d);
		break;
	case VIRTIO_ID_NET:
		d->check = "virtio-net";
		virtio_net_check(d);
		virtio_net_bench(d);
		break;
	case VIRTIO_ID_VSOCK:
		d->check = "virtio-vsock";
		virtio_vsock_check(d);
		break;
	default:
		put_dev_prefix(d, "other");
		put_str(" id=");
		probe_put_dec(d->device_id);
		put_str(" skipped\n");
	}
}

/* Called by probe_body (checks.S) after check_rtc. Without tokens it prints nothing (but
 * `probe.spin=`, which runs last, still does).
 * All tokens are parsed and checked before any device is touched. */
void virtio_checks(void)
{
	pci_checks();
	const char *cursor = 0;
	const char *token;
	u32 count = 0;
	struct vdev devs[MAX_DEVICES];

	while ((token = next_token(&cursor)) != 0) {
		if (count == MAX_DEVICES)
			probe_fail("virtio", "more than 8 virtio_mmio.device= tokens on the command line");
		memset(&devs[count], 0, sizeof(devs[count]));
		parse_token(token, &devs[count]);
		devs[count].scratch = SCRATCH_BASE + count * SCRATCH_PER_DEV;
		count++;
	}
	if (count && mem_total < SCRATCH_END + 0x100000)
		probe_fail_hex("virtio",
			       "guest RAM is too small for the virtio scratch area at 4-8 MiB: "
			       "total bytes=",
			       mem_total);
	for (u32 i = 0; i < count; i++)
		check_device(&devs[i]);
	virtio_spin_bench(count ? &devs[0] : 0);
}
