/*
 * virtio-rng (device id 4) and virtio-blk (device id 2) checks.
 */
#include "virtio.h"

#define REQUEST_MS 2000
#define FLUSH_MS 30000	/* a flush is an fsync of the image: slow on a busy host disk */

/* ---- rng ---------------------------------------------------------------------------------- */

#define RNG_BYTES 64

void virtio_rng_check(struct vdev *d)
{
	virtio_start(d, 0, 1);
	virtio_driver_ok(d);

	u8 *buf = (u8 *)(usize)buffer_addr(d, 0);
	memset(buf, 0, RNG_BYTES);
	struct vbuf b = {(usize)buf, RNG_BYTES, 1};
	u32 len = vq_transact(&d->queues[0], &b, 1, REQUEST_MS,
			      "no answer to a 64-byte entropy request within 2000 ms at base=");
	if (len != RNG_BYTES)
		probe_fail_hex(d->check, "the device did not fill all 64 bytes: used len=", len);
	int nonzero = 0;
	for (u32 i = 0; i < RNG_BYTES; i++)
		nonzero |= buf[i];
	if (!nonzero)
		DEV_FAIL(d, "the device returned 64 zero bytes");
	virtio_reset(d);

	put_dev_prefix(d, "rng");
	put_str(" bytes=");
	probe_put_dec(len);
	probe_putc('\n');
}

/* ---- block ------------------------------------------------------------------------------ */

#define VIRTIO_BLK_F_RO    (1ULL << 5)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)

#define VIRTIO_BLK_T_IN    0
#define VIRTIO_BLK_T_OUT   1
#define VIRTIO_BLK_T_FLUSH 4

#define SECTOR 512

struct blk_req_header {
	u32 type;
	u32 reserved;
	u64 sector;
};

/* The pattern written to sector 1: this text, then byte i = i & 0xff. */
static const char block_pattern_text[] = "edgevisor-probe-block";

static void fill_pattern(u8 *buf)
{
	for (u32 i = 0; i < SECTOR; i++)
		buf[i] = (u8)i;
	memcpy(buf, block_pattern_text, sizeof(block_pattern_text) - 1);
}

struct blk {
	struct vdev *d;
	struct blk_req_header *header;
	u8 *data;
	u8 *status;
};

/* One request: header, optional 512-byte data buffer, status byte. FAILs on timeout or a
 * status other than VIRTIO_BLK_S_OK (0) with `what`. */
static void blk_request(struct blk *b, u32 type, u64 sector, const char *what)
{
	struct vbuf bufs[3];
	u32 n = 0;
	b->header->type = type;
	b->header->reserved = 0;
	b->header->sector = sector;
	*b->status = 0xff;
	bufs[n++] = (struct vbuf){(usize)b->header, sizeof(*b->header), 0};
	if (type != VIRTIO_BLK_T_FLUSH)
		bufs[n++] = (struct vbuf){(usize)b->data, SECTOR, type == VIRTIO_BLK_T_IN};
	bufs[n++] = (struct vbuf){(usize)b->status, 1, 1};
	vq_transact(&b->d->queues[0], bufs, n, type == VIRTIO_BLK_T_FLUSH ? FLUSH_MS : REQUEST_MS,
		    what);
	if (*b->status != 0)
		probe_fail_hex(b->d->check, "a request failed: status=", *b->status);
}

void virtio_blk_check(struct vdev *d)
{
	virtio_start(d, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH, 1);
	virtio_driver_ok(d);

	struct blk b = {
		d,
		(struct blk_req_header *)(usize)buffer_addr(d, 0),
		(u8 *)(usize)buffer_addr(d, 0x1000),
		(u8 *)(usize)buffer_addr(d, 0x2000),
	};
	u64 capacity = config_read64(d, 0);
	if (capacity < 2)
		probe_fail_hex(d->check, "the disk has fewer than 2 sectors: capacity=", capacity);

	memset(b.data, 0, SECTOR);
	blk_request(&b, VIRTIO_BLK_T_IN, 0,
		    "no answer to a read of sector 0 within 2000 ms at base=");
	u64 read0 = fnv1a64(b.data, SECTOR);

	int read_only = (d->accepted & VIRTIO_BLK_F_RO) != 0;
	int flush = (d->accepted & VIRTIO_BLK_F_FLUSH) != 0;
	if (!read_only) {
		fill_pattern(b.data);
		blk_request(&b, VIRTIO_BLK_T_OUT, 1,
			    "no answer to a write of sector 1 within 2000 ms at base=");
		if (flush)
			blk_request(&b, VIRTIO_BLK_T_FLUSH, 0,
				    "no answer to a flush within 30000 ms at base=");
		memset(b.data, 0, SECTOR);
		blk_request(&b, VIRTIO_BLK_T_IN, 1,
			    "no answer to a read of sector 1 within 2000 ms at base=");
		u8 *expected = (u8 *)(usize)buffer_addr(d, 0x3000);
		fill_pattern(expected);
		if (memcmp(b.data, expected, SECTOR) != 0)
			DEV_FAIL(d, "sector 1 read back differs from the pattern just written");
	}
	virtio_reset(d);

	put_dev_prefix(d, "blk");
	put_str(" capacity=");
	probe_put_dec(capacity);
	put_str(" read0_fnv1a64=");
	put_hex_fixed(read0, 16);
	put_str(read_only ? " write=ro" : " write=ok");
	put_str(read_only ? " flush=none" : (flush ? " flush=ok" : " flush=none"));
	probe_putc('\n');
}
