/*
 * virtio-net (device id 1) check: MAC from config; with `probe.net=on` one broadcast frame
 * out and one frame of ethertype 0x88b5 in.
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC (1ULL << 5)

#define NET_RX_QUEUE 0
#define NET_TX_QUEUE 1
#define NET_ETHERTYPE 0x88b5	/* IEEE local experimental ethertype 1 */
#define NET_TX_MS 2000
#define NET_RX_MS 5000
#define NET_WAIT_MAX_MS 600000

/* The transmit and receive windows; `probe.net=on|mq,wait=MS` sets both (tests whose peer
 * comes up later than the guest, on a loaded host, ask for more). */
static u32 net_tx_ms = NET_TX_MS;
static u32 net_rx_ms = NET_RX_MS;

static const char tx_payload[] = "edgevisor-probe-net-tx";

static void net_put_mac(const u8 *mac)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			probe_putc(':');
		probe_put_hex(mac[i], 2);
	}
}

void net_put_line_start(struct vdev *d, int have_mac, const u8 *mac)
{
	put_dev_prefix(d, "net");
	put_str(" mac=");
	if (have_mac)
		net_put_mac(mac);
	else
		put_str("none");
}

#define NET_TRAFFIC_MQ 3	/* net_mq.c */

NORETURN static void bad_net_option(void)
{
	probe_fail("cmdline",
		   "unknown probe.net= value: use off, or on or mq with an optional ,wait=MS (1-600000)");
}

/* probe.net=off | on[,wait=MS] | mq[,wait=MS] (default off); anything else fails. */
static int net_traffic_wanted(void)
{
	const char *v = cmdline_find("probe.net=", 0, 0);
	int traffic;
	if (!v)
		return 0;
	if (v[0] == 'o' && v[1] == 'f' && v[2] == 'f' && word_end(v[3]))
		return 0;
	if (v[0] == 'o' && v[1] == 'n')
		traffic = 1;
	else if (v[0] == 'm' && v[1] == 'q')
		traffic = NET_TRAFFIC_MQ;
	else
		bad_net_option();
	v += 2;
	u64 ms;
	if (take_key(&v, "wait")) {
		if (!take_dec(&v, 1, NET_WAIT_MAX_MS, &ms))
			bad_net_option();
		net_tx_ms = net_rx_ms = (u32)ms;
	}
	if (!word_end(*v))
		bad_net_option();
	return traffic;
}

void net_post_rx(struct vdev *d, u32 queue, u64 off, u32 id)
{
	struct vbuf b = {buffer_addr(d, off + (u64)id * NET_RX_BUF), NET_RX_BUF, 1};
	vq_submit(&d->queues[queue], (u16)id, &b, 1);
}

void net_send_frame(struct vdev *d, u32 queue, u64 off, const u8 *mac)
{
	u8 *buf = (u8 *)(usize)buffer_addr(d, off);
	u8 *frame = buf + NET_HDR_LEN;
	u32 len = 14 + sizeof(tx_payload) - 1;

	memset(buf, 0, NET_HDR_LEN);
	memset(frame, 0xff, 6);
	memcpy(frame + 6, mac, 6);
	frame[12] = NET_ETHERTYPE >> 8;
	frame[13] = NET_ETHERTYPE & 0xff;
	memcpy(frame + 14, tx_payload, sizeof(tx_payload) - 1);
	struct vbuf b = {(usize)buf, NET_HDR_LEN + len, 0};
	vq_transact(&d->queues[queue], &b, 1, net_tx_ms,
		    "the device did not consume a transmitted frame in time (probe.net=...,wait=MS) at base=");
}

u32 net_receive_frame(struct vdev *d, u32 queue, u64 off, const u8 **frame)
{
	struct vq *rx = &d->queues[queue];
	struct deadline dl;
	u32 id, len;
	deadline_start(&dl, net_rx_ms);
	while (vq_poll(rx, &dl, &id, &len)) {
		if (id >= NET_RX_BUFS)
			DEV_FAIL(d, "the device used a receive buffer the driver did not post");
		if (len < NET_HDR_LEN + 14 || len > NET_RX_BUF)
			probe_fail_hex(d->check, "received a frame of impossible length: used len=",
				       len);
		const u8 *f = (const u8 *)(usize)buffer_addr(d, off + (u64)id * NET_RX_BUF) +
			      NET_HDR_LEN;
		if (f[12] == (NET_ETHERTYPE >> 8) && f[13] == (NET_ETHERTYPE & 0xff)) {
			*frame = f;
			return len - NET_HDR_LEN;
		}
		net_post_rx(d, queue, off, id);
		vq_notify(rx);
	}
	return 0;
}

void virtio_net_check(struct vdev *d)
{
	int traffic = net_traffic_wanted();
	if (traffic == NET_TRAFFIC_MQ) {
		virtio_net_mq_check(d);
		return;
	}
	virtio_start(d, VIRTIO_NET_F_MAC, 2);
	virtio_driver_ok(d);

	u8 mac[6] = {0x02, 0, 0, 0, 0, 0x01};	/* locally administered, when none is offered */
	int have_mac = (d->accepted & VIRTIO_NET_F_MAC) != 0;
	if (have_mac)
		for (u32 i = 0; i < 6; i++)
			mac[i] = config_read8(d, i);

	const u8 *frame = 0;
	u32 rx_len = 0;
	if (traffic) {
		for (u32 i = 0; i < NET_RX_BUFS; i++)
			net_post_rx(d, NET_RX_QUEUE, 0, i);
		vq_notify(&d->queues[NET_RX_QUEUE]);
		net_send_frame(d, NET_TX_QUEUE, NET_RX_BUFS * NET_RX_BUF, mac);
		rx_len = net_receive_frame(d, NET_RX_QUEUE, 0, &frame);
	}
	u64 rx_fnv = rx_len ? fnv1a64(frame, rx_len) : 0;
	virtio_reset(d);

	net_put_line_start(d, have_mac, mac);
	if (!traffic) {
		put_str(" traffic=off\n");
		return;
	}
	put_str(" tx=ok");
	if (rx_len) {
		put_str(" rx len=");
		probe_put_dec(rx_len);
		put_str(" fnv1a64=");
		put_hex_fixed(rx_fnv, 16);
	} else {
		put_str(" rx none");
	}
	probe_putc('\n');
}
