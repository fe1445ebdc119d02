/*
 * Benchmark workloads, each off unless its command-line word is there:
 *
 * - probe.blkbench=MiB[,req=KiB][,iops=N][,depth=D]: after the block check, read MiB of the
 *   disk sequentially in requests of req KiB (default 64), write the same range back (unless
 *   the disk is read-only; no flush), then N (default 2048) 4 KiB reads at pseudo-random
 *   4 KiB-aligned offsets. D requests (default 4) stay in flight.
 * - probe.netbench=N[,len=L]: after the net check, send N frames of L bytes (default 1514),
 *   then N frames of 64 bytes, on the TX queue; every descriptor of the ring stays in use.
 * - probe.spin=N[,mmio=M]: after the devices, a pure register loop of N iterations (4
 *   instructions each), then M (default 1000) reads of the first device's MagicValue
 *   register, each a VM exit to the VMM.
 *
 * Every pass is timed with the TSC from its first submission to its last completion and
 * printed as one `probe: <bench> ...` line ending in `ticks=`; the host converts with the
 * `probe: cpuid tsc_khz=` line. Interrupts are suppressed (VIRTQ_AVAIL_F_NO_INTERRUPT): the
 * driver polls the used ring. It kicks after each batch of submissions unless the device set
 * VIRTQ_USED_F_NO_NOTIFY, as a virtio driver should.
 */
#include "virtio.h"

#define BENCH_DATA_BASE 0x800000ULL	/* 8 MiB: block data buffers ... */
#define BENCH_DATA_END  0x1000000ULL	/* ... up to 16 MiB, where probe.touch= starts */
#define PROGRESS_MS 5000		/* longest wait for any one completion */

#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

#define BENCH_NET_F_MAC (1ULL << 5)
#define BENCH_BLK_F_RO  (1ULL << 5)

/* ---- a queue kept full of fixed-size requests ----------------------------------------------- */

/* Request slot s uses descriptors s*chain .. s*chain+chain-1; its head is s*chain. */
struct pipe {
	struct vq *q;
	u32 chain;
	u32 depth;
	u16 free[QUEUE_SIZE_MAX];
	u32 nfree;
	u32 batch;		/* submitted since the last kick */
};

static void pipe_init(struct pipe *p, struct vq *q, u32 chain, u32 depth)
{
	p->q = q;
	p->chain = chain;
	p->depth = depth;
	p->nfree = 0;
	p->batch = 0;
	for (u32 s = depth; s > 0; s--)
		p->free[p->nfree++] = (u16)(s - 1);
	q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	mb();
}

/* Fills slot `slot`'s descriptors from `bufs` and puts its head on the avail ring (not yet
 * published). */
static void pipe_put(struct pipe *p, u16 slot, const struct vbuf *bufs)
{
	struct vq *q = p->q;
	u16 head = (u16)(slot * p->chain);
	for (u32 i = 0; i < p->chain; i++) {
		u16 at = (u16)(head + i);
		q->desc[at].addr = bufs[i].addr;
		q->desc[at].len = bufs[i].len;
		u16 flags = bufs[i].device_writes ? VIRTQ_DESC_F_WRITE : 0;
		if (i + 1 < p->chain)
			flags |= VIRTQ_DESC_F_NEXT;
		q->desc[at].flags = flags;
		q->desc[at].next = (u16)(at + 1);
	}
	q->avail->ring[q->avail_idx % q->size] = head;
	q->avail_idx++;
	p->batch++;
}

/* Publishes what pipe_put queued and kicks unless the device asked not to be. */
static void pipe_kick(struct pipe *p)
{
	struct vq *q = p->q;
	if (!p->batch)
		return;
	p->batch = 0;
	mb();
	q->avail->idx = q->avail_idx;
	mb();
	if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
		vq_notify(q);
}

/* Waits (bounded) for at least one completion and takes every one there is; returns how
 * many. Each completed slot goes back on the free list, and its number to `done` (may be 0). */
static u32 pipe_reap(struct pipe *p, u16 *done)
{
	struct vq *q = p->q;
	struct deadline dl;
	u32 n = 0;
	deadline_start(&dl, PROGRESS_MS);
	while (q->used->idx == q->last_used)
		if (deadline_passed(&dl))
			probe_fail_hex(q->dev->check,
				       "benchmark: no request completed within 5000 ms at base=",
				       q->dev->base);
	mb();
	while (q->used->idx != q->last_used) {
		u32 id = q->used->ring[q->last_used % q->size].id;
		q->last_used++;
		if (id % p->chain != 0 || id / p->chain >= p->depth)
			DEV_FAIL(q->dev, "benchmark: the device returned a head the driver did not submit");
		p->free[p->nfree++] = (u16)(id / p->chain);
		if (done)
			done[n] = (u16)(id / p->chain);
		n++;
	}
	return n;
}

/* ---- block ----------------------------------------------------------------------------------- */

#define BLK_T_IN  0
#define BLK_T_OUT 1
#define IOPS_REQ  4096

struct blk_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

struct blkbench {
	struct vdev *d;
	struct pipe pipe;
	u64 capacity;		/* sectors */
	u64 bytes;		/* sequential passes */
	u32 req;		/* bytes per sequential request */
	u64 iops;
	u32 depth;
};

static void blk_fill(struct blkbench *b, u16 slot, u32 type, u64 sector, u32 len)
{
	struct blk_hdr *h = (struct blk_hdr *)(usize)buffer_addr(b->d, (u64)slot * 32);
	u8 *status = (u8 *)(usize)buffer_addr(b->d, 0x1000 + slot);
	h->type = type;
	h->reserved = 0;
	h->sector = sector;
	*status = 0xff;
	struct vbuf bufs[3] = {
		{(usize)h, sizeof(*h), 0},
		{BENCH_DATA_BASE + (u64)slot * b->req, len, type == BLK_T_IN},
		{(usize)status, 1, 1},
	};
	pipe_put(&b->pipe, slot, bufs);
}

/* xorshift64: the next pseudo-random offset of the request-rate pass. */
static u64 next_random(u64 *state)
{
	u64 x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* One pass of `reqs` requests of `len` bytes; sequential from sector 0 unless `random`.
 * Returns the ticks from the first submission to the last completion. */
static u64 blk_pass(struct blkbench *b, u32 type, u64 reqs, u32 len, int random)
{
	u16 done[QUEUE_SIZE_MAX];
	u64 sectors = len / 512, next_sector = 0, submitted = 0, completed = 0;
	u64 span = b->capacity / sectors, state = 0x9e3779b97f4a7c15ULL;
	pipe_init(&b->pipe, &b->d->queues[0], 3, b->depth);
	u64 start = tsc_now();
	while (completed < reqs) {
		while (b->pipe.nfree && submitted < reqs) {
			u16 slot = b->pipe.free[--b->pipe.nfree];
			u64 sector = next_sector;
			if (random)
				sector = (next_random(&state) % span) * sectors;
			blk_fill(b, slot, type, sector, len);
			next_sector += sectors;
			submitted++;
		}
		pipe_kick(&b->pipe);
		u32 n = pipe_reap(&b->pipe, done);
		for (u32 i = 0; i < n; i++) {
			u8 status = *(volatile u8 *)(usize)buffer_addr(b->d, 0x1000 + done[i]);
			if (status != 0)
				probe_fail_hex(b->d->check, "benchmark: a request failed: status=",
					       status);
		}
		completed += n;
	}
	return tsc_now() - start;
}

/* `probe: blkbench <pass><count> req_bytes=.. depth=.. ticks=..` */
static void put_blk_line(const char *pass, u64 count, u64 len, u64 ticks, u32 depth)
{
	put_str("probe: blkbench ");
	put_str(pass);
	probe_put_dec(count);
	put_str(" req_bytes=");
	probe_put_dec(len);
	put_str(" depth=");
	probe_put_dec(depth);
	put_str(" ticks=");
	probe_put_dec(ticks);
	probe_putc('\n');
}

NORETURN static void bad_blkbench(void)
{
	probe_fail("blkbench",
		   "use probe.blkbench=MiB[,req=KiB][,iops=N][,depth=D] with MiB 1-4096, KiB a "
		   "power of two from 4 to 1024, N 0-1000000 and D 1-5");
}

void virtio_blk_bench(struct vdev *d)
{
	const char *p = cmdline_find("probe.blkbench=", 0, 0);
	if (!p)
		return;
	u64 mib, req_kib = 64, iops = 2048, depth = 4;
	if (!take_dec(&p, 1, 4096, &mib))
		bad_blkbench();
	for (;;) {
		if (take_key(&p, "req")) {
			if (!take_dec(&p, 4, 1024, &req_kib) || (req_kib & (req_kib - 1)))
				bad_blkbench();
		} else if (take_key(&p, "iops")) {
			if (!take_dec(&p, 0, 1000000, &iops))
				bad_blkbench();
		} else if (take_key(&p, "depth")) {
			if (!take_dec(&p, 1, 5, &depth))
				bad_blkbench();
		} else {
			break;
		}
	}
	if (!word_end(*p))
		bad_blkbench();
	/* At most 5 requests of 1 MiB in flight: the 8 MiB at BENCH_DATA_BASE hold them. */
	if (mem_total < BENCH_DATA_END)
		probe_fail_hex("blkbench",
			       "guest RAM is too small for the buffers at 8-16 MiB: total bytes=",
			       mem_total);

	struct blkbench b;
	b.d = d;
	b.req = (u32)(req_kib * 1024);
	b.bytes = mib << 20;
	b.iops = iops;
	b.depth = (u32)depth;
	virtio_start(d, BENCH_BLK_F_RO, 1);
	if (d->queues[0].size < 3 * b.depth)
		DEV_FAIL(d, "benchmark: the queue is too small for the requests in flight");
	virtio_driver_ok(d);
	b.capacity = config_read64(d, 0);
	if (b.capacity * 512 < b.bytes || b.capacity < IOPS_REQ / 512)
		probe_fail_hex("blkbench",
			       "probe.blkbench= asks for more than the disk has: capacity sectors=",
			       b.capacity);

	/* req is a power of two of at most 1 MiB, so it divides the MiB exactly. */
	u64 reqs = b.bytes / b.req;
	u64 ticks = blk_pass(&b, BLK_T_IN, reqs, b.req, 0);
	put_blk_line("read bytes=", b.bytes, b.req, ticks, b.depth);
	if (!(d->accepted & BENCH_BLK_F_RO)) {
		ticks = blk_pass(&b, BLK_T_OUT, reqs, b.req, 0);
		put_blk_line("write bytes=", b.bytes, b.req, ticks, b.depth);
	}
	if (b.iops) {
		/* Slot s's buffer is at s * req >= s * 4 KiB: the 4 KiB reads fit. */
		ticks = blk_pass(&b, BLK_T_IN, b.iops, IOPS_REQ, 1);
		put_blk_line("iops reqs=", b.iops, IOPS_REQ, ticks, b.depth);
	}
	virtio_reset(d);
}

/* ---- net ------------------------------------------------------------------------------------- */

#define NET_TX_QUEUE 1
#define NET_SLOT 2048
#define NET_SMALL 64

static u64 net_pass(struct vdev *d, const u8 *mac, u64 frames, u32 len)
{
	struct pipe pipe;
	struct vq *q = &d->queues[NET_TX_QUEUE];
	u32 depth = q->size;
	for (u32 s = 0; s < depth; s++) {
		u8 *buf = (u8 *)(usize)buffer_addr(d, (u64)s * NET_SLOT);
		memset(buf, 0, NET_HDR_LEN);
		u8 *f = buf + NET_HDR_LEN;
		memset(f, 0xff, 6);
		memcpy(f + 6, mac, 6);
		f[12] = 0x88;
		f[13] = 0xb5;
		for (u32 i = 14; i < len; i++)
			f[i] = (u8)i;
	}
	pipe_init(&pipe, q, 1, depth);
	u64 submitted = 0, completed = 0;
	u64 start = tsc_now();
	while (completed < frames) {
		while (pipe.nfree && submitted < frames) {
			u16 slot = pipe.free[--pipe.nfree];
			struct vbuf b = {buffer_addr(d, (u64)slot * NET_SLOT), NET_HDR_LEN + len, 0};
			pipe_put(&pipe, slot, &b);
			submitted++;
		}
		pipe_kick(&pipe);
		completed += pipe_reap(&pipe, 0);
	}
	return tsc_now() - start;
}

static void put_net_line(u64 frames, u32 len, u64 ticks, u32 depth)
{
	put_str("probe: netbench tx frames=");
	probe_put_dec(frames);
	put_str(" len=");
	probe_put_dec(len);
	put_str(" bytes=");
	probe_put_dec(frames * len);
	put_str(" depth=");
	probe_put_dec(depth);
	put_str(" ticks=");
	probe_put_dec(ticks);
	probe_putc('\n');
}

NORETURN static void bad_netbench(void)
{
	probe_fail("netbench",
		   "use probe.netbench=N[,len=L] with N 1-10000000 frames and L 60-1514 bytes");
}

void virtio_net_bench(struct vdev *d)
{
	const char *p = cmdline_find("probe.netbench=", 0, 0);
	if (!p)
		return;
	u64 frames, len = 1514;
	if (!take_dec(&p, 1, 10000000, &frames))
		bad_netbench();
	if (take_key(&p, "len") && !take_dec(&p, 60, 1514, &len))
		bad_netbench();
	if (!word_end(*p))
		bad_netbench();

	virtio_start(d, BENCH_NET_F_MAC, 2);
	virtio_driver_ok(d);
	u8 mac[6] = {0x02, 0, 0, 0, 0, 0x01};
	if (d->accepted & BENCH_NET_F_MAC)
		for (u32 i = 0; i < 6; i++)
			mac[i] = config_read8(d, i);
	u32 depth = d->queues[NET_TX_QUEUE].size;
	u64 ticks = net_pass(d, mac, frames, (u32)len);
	put_net_line(frames, (u32)len, ticks, depth);
	if (len != NET_SMALL) {
		ticks = net_pass(d, mac, frames, NET_SMALL);
		put_net_line(frames, NET_SMALL, ticks, depth);
	}
	virtio_reset(d);
}

/* ---- CPU and exit cost ------------------------------------------------------------------------ */

NORETURN static void bad_spin(void)
{
	probe_fail("spin", "use probe.spin=N[,mmio=M] with N 1-10000000000 and M 0-1000000");
}

void virtio_spin_bench(struct vdev *first)
{
	const char *p = cmdline_find("probe.spin=", 0, 0);
	if (!p)
		return;
	u64 iters, reads = 1000;
	if (!take_dec(&p, 1, 10000000000ULL, &iters))
		bad_spin();
	if (take_key(&p, "mmio") && !take_dec(&p, 0, 1000000, &reads))
		bad_spin();
	if (!word_end(*p))
		bad_spin();

	u64 n = iters, x = 0;
	u64 start = tsc_now();
	/* 4 instructions per iteration, registers only. */
	__asm__ volatile("1:\n\t"
			 "addq $3, %0\n\t"
			 "xorq %1, %0\n\t"
			 "decq %1\n\t"
			 "jnz 1b"
			 : "+r"(x), "+r"(n)
			 :
			 : "cc");
	u64 ticks = tsc_now() - start;
	put_str("probe: spin iters=");
	probe_put_dec(iters);
	put_str(" insns_per_iter=4 ticks=");
	probe_put_dec(ticks);
	probe_putc('\n');

	if (!first || !reads)
		return;
	start = tsc_now();
	for (u64 i = 0; i < reads; i++)
		(void)mmio_read32(first, VIRTIO_MMIO_MAGIC);
	ticks = tsc_now() - start;
	put_str("probe: mmio reads=");
	probe_put_dec(reads);
	put_str(" ticks=");
	probe_put_dec(ticks);
	probe_putc('\n');
}
