/*
 * virtio-net multiqueue check (`probe.net=mq`): negotiates VIRTIO_NET_F_MQ and
 * VIRTIO_NET_F_CTRL_VQ on a device with max_virtqueue_pairs 2, asks the control virtqueue
 * for 0 pairs (must be refused with VIRTIO_NET_ERR) and then for 2 (must be VIRTIO_NET_OK),
 * posts receive buffers on both pairs' RX queues, sends the probe frame on pair 1's TX
 * queue (3) and waits for a frame on pair 1's RX queue (2). Prints how many frames arrived
 * on pair 0 meanwhile, so a test can tell the pairs apart.
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC     (1ULL << 5)
#define VIRTIO_NET_F_CTRL_VQ (1ULL << 17)
#define VIRTIO_NET_F_MQ      (1ULL << 22)

#define MQ_PAIRS      2
#define MQ_RX0        0
#define MQ_RX1        2
#define MQ_TX1        3
#define MQ_CTRL       (2 * MQ_PAIRS)

#define CTRL_CLASS_MQ        4
#define CTRL_MQ_VQ_PAIRS_SET 0
#define CTRL_OK              0
#define CTRL_ERR             1

/* Buffer area layout (offsets from buffer_addr(d, 0)). */
#define OFF_RX1  0
#define OFF_TX   (NET_RX_BUFS * NET_RX_BUF)
#define OFF_RX0  (OFF_TX + NET_RX_BUF)
#define OFF_CTRL (OFF_RX0 + NET_RX_BUFS * NET_RX_BUF)

/* VQ_PAIRS_SET with `pairs`: returns the ack byte the device wrote. */
static u8 mq_set_pairs(struct vdev *d, u16 pairs)
{
	u8 *cmd = (u8 *)(usize)buffer_addr(d, OFF_CTRL);
	cmd[0] = CTRL_CLASS_MQ;
	cmd[1] = CTRL_MQ_VQ_PAIRS_SET;
	cmd[2] = (u8)pairs;
	cmd[3] = (u8)(pairs >> 8);
	cmd[4] = 0xee;	/* the device must overwrite this */
	struct vbuf bufs[3] = {
		{(usize)cmd, 2, 0},
		{(usize)(cmd + 2), 2, 0},
		{(usize)(cmd + 4), 1, 1},
	};
	u32 len = vq_transact(&d->queues[MQ_CTRL], bufs, 3, 2000,
			      "the device did not answer a control command within 2000 ms at base=");
	if (len != 1)
		probe_fail_hex(d->check, "a control command came back with used len (1 expected)=",
			       len);
	return cmd[4];
}

void virtio_net_mq_check(struct vdev *d)
{
	/* Both feature bits must be on offer before the queues are laid out. */
	virtio_reset(d);
	mmio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	u32 offered_lo = mmio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
	if ((offered_lo & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ)) !=
	    (VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ))
		DEV_FAIL(d, "probe.net=mq needs a device offering VIRTIO_NET_F_MQ and CTRL_VQ");
	u32 max_pairs = config_read8(d, 8) | ((u32)config_read8(d, 9) << 8);
	if (max_pairs != MQ_PAIRS)
		probe_fail_hex(d->check,
			       "probe.net=mq needs max_virtqueue_pairs 2 (queues=2), found ", max_pairs);

	virtio_start(d, VIRTIO_NET_F_MAC | VIRTIO_NET_F_MQ | VIRTIO_NET_F_CTRL_VQ, MQ_CTRL + 1);
	virtio_driver_ok(d);
	u8 mac[6] = {0x02, 0, 0, 0, 0, 0x01};
	int have_mac = (d->accepted & VIRTIO_NET_F_MAC) != 0;
	if (have_mac)
		for (u32 i = 0; i < 6; i++)
			mac[i] = config_read8(d, i);

	/* Receive buffers on both pairs first (as Linux fills every RX queue at probe): once
	 * the device turns pair 1 on, a frame for it finds buffers there. */
	for (u32 i = 0; i < NET_RX_BUFS; i++) {
		net_post_rx(d, MQ_RX1, OFF_RX1, i);
		net_post_rx(d, MQ_RX0, OFF_RX0, i);
	}
	vq_notify(&d->queues[MQ_RX1]);
	vq_notify(&d->queues[MQ_RX0]);

	u8 bad = mq_set_pairs(d, 0);
	u8 good = mq_set_pairs(d, MQ_PAIRS);
	if (bad != CTRL_ERR)
		probe_fail_hex(d->check, "VQ_PAIRS_SET 0 was not refused: ack=", bad);
	if (good != CTRL_OK)
		probe_fail_hex(d->check, "VQ_PAIRS_SET 2 was refused: ack=", good);
	net_send_frame(d, MQ_TX1, OFF_TX, mac);
	const u8 *frame = 0;
	u32 rx_len = net_receive_frame(d, MQ_RX1, OFF_RX1, &frame);
	u64 rx_fnv = rx_len ? fnv1a64(frame, rx_len) : 0;
	mb();
	u16 pair0_rx = d->queues[MQ_RX0].used->idx;
	virtio_reset(d);

	net_put_line_start(d, have_mac, mac);
	put_str(" mq pairs=2 ctrl=ok bad_pairs=err tx=pair1");
	if (rx_len) {
		put_str(" rx=pair1 len=");
		probe_put_dec(rx_len);
		put_str(" fnv1a64=");
		put_hex_fixed(rx_fnv, 16);
	} else {
		put_str(" rx none");
	}
	put_str(" pair0_rx=");
	probe_put_dec(pair0_rx);
	probe_putc('\n');
}
