/*
 * virtio-vsock (device id 19) check: guest CID from config; with `probe.vsock=PORT` one
 * stream connection to the host (CID 2) port PORT: REQUEST, RESPONSE, RW "edgevisor-probe-
 * vsock\n", the reply up to "\n", SHUTDOWN, then RST (ours if the host sends none).
 * Credit follows virtio 1.x section 5.10.6.3: every packet carries our buf_alloc/fwd_cnt,
 * data goes out only within the peer's advertised credit, CREDIT_REQUEST gets a
 * CREDIT_UPDATE, and we send one when half our buffer has been consumed since the last.
 */
#include "virtio.h"

#define VSOCK_RX_QUEUE 0
#define VSOCK_TX_QUEUE 1
#define VSOCK_EVENT_QUEUE 2

#define VSOCK_HOST_CID 2
#define VSOCK_LOCAL_PORT 49152
#define VSOCK_TYPE_STREAM 1

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

#define SHUTDOWN_BOTH 3

#define VSOCK_RX_BUFS 4
#define VSOCK_RX_DATA 4096
#define VSOCK_RX_SLOT 0x2000
#define VSOCK_EVENT_BUF 0x10000
#define VSOCK_TX_HDR 0x12000
#define VSOCK_TX_DATA 0x13000
#define VSOCK_BUF_ALLOC 65536	/* what we promise to receive before fwd_cnt moves */
#define VSOCK_REPLY_MAX 200
#define VSOCK_MS 5000
#define VSOCK_CLOSE_MS 2000

struct vsock_hdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

static const char vsock_message[] = "edgevisor-probe-vsock\n";

struct vsock {
	struct vdev *d;
	u64 guest_cid;
	u32 peer_port;
	u32 peer_buf_alloc;
	u32 peer_fwd_cnt;
	u32 tx_cnt;		/* payload bytes sent */
	u32 fwd_cnt;		/* payload bytes received and consumed */
	u32 fwd_cnt_reported;	/* fwd_cnt as of the last packet we sent */
	int connected;
	int reset;
	u32 peer_shutdown;
	u32 reply_len;
	int reply_done;		/* a newline arrived */
	char reply[VSOCK_REPLY_MAX];
};

/* probe.vsock=PORT, decimal 1..4294967295; 0 when absent. */
static u32 vsock_port_wanted(void)
{
	const char *v = cmdline_find("probe.vsock=", 0, 0);
	if (!v)
		return 0;
	u64 port = 0;
	int digits = 0;
	for (; *v >= '0' && *v <= '9' && port <= 0xffffffffULL; v++, digits++)
		port = port * 10 + (u64)(*v - '0');
	if (!digits || !word_end(*v) || port == 0 || port > 0xffffffffULL)
		probe_fail("cmdline", "probe.vsock=PORT needs a decimal port from 1 to 4294967295");
	return (u32)port;
}

static void post_rx(struct vsock *s, u32 index)
{
	struct vbuf b = {buffer_addr(s->d, (u64)index * VSOCK_RX_SLOT),
			 sizeof(struct vsock_hdr) + VSOCK_RX_DATA, 1};
	vq_submit(&s->d->queues[VSOCK_RX_QUEUE], (u16)index, &b, 1);
}

/* One packet to the host: the header, then the payload in a second descriptor. */
static void vsock_send(struct vsock *s, u16 op, u32 flags, const void *data, u32 len)
{
	struct vsock_hdr *h = (struct vsock_hdr *)(usize)buffer_addr(s->d, VSOCK_TX_HDR);
	u8 *payload = (u8 *)(usize)buffer_addr(s->d, VSOCK_TX_DATA);
	h->src_cid = s->guest_cid;
	h->dst_cid = VSOCK_HOST_CID;
	h->src_port = VSOCK_LOCAL_PORT;
	h->dst_port = s->peer_port;
	h->len = len;
	h->type = VSOCK_TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = VSOCK_BUF_ALLOC;
	h->fwd_cnt = s->fwd_cnt;
	s->fwd_cnt_reported = s->fwd_cnt;
	struct vbuf bufs[2] = {
		{(usize)h, sizeof(*h), 0},
		{(usize)payload, len, 0},
	};
	if (len)
		memcpy(payload, data, len);
	vq_transact(&s->d->queues[VSOCK_TX_QUEUE], bufs, len ? 2 : 1, VSOCK_MS,
		    "the device did not consume a packet to the host within 5000 ms at base=");
	if (op == OP_RW)
		s->tx_cnt += len;
}

static int ours(struct vsock *s, const struct vsock_hdr *h)
{
	return h->src_cid == VSOCK_HOST_CID && h->dst_cid == s->guest_cid &&
	       h->src_port == s->peer_port && h->dst_port == VSOCK_LOCAL_PORT &&
	       h->type == VSOCK_TYPE_STREAM;
}

static void consume(struct vsock *s, const u8 *data, u32 len)
{
	for (u32 i = 0; i < len && !s->reply_done; i++) {
		if (data[i] == '\n')
			s->reply_done = 1;
		else if (s->reply_len < VSOCK_REPLY_MAX)
			s->reply[s->reply_len++] = (char)data[i];
	}
	s->fwd_cnt += len;
}

/* Handle one packet the device put in the receive queue. */
static void handle_packet(struct vsock *s, const struct vsock_hdr *h, u32 used_len)
{
	if (used_len < sizeof(*h) || h->len > VSOCK_RX_DATA || used_len < sizeof(*h) + h->len)
		probe_fail_hex(s->d->check, "received a packet whose length does not fit: used len=",
			       used_len);
	if (!ours(s, h)) {
		return;	/* not this connection: ignored */
	}
	s->peer_buf_alloc = h->buf_alloc;
	s->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		s->connected = 1;
		break;
	case OP_RST:
		s->reset = 1;
		break;
	case OP_SHUTDOWN:
		s->peer_shutdown |= h->flags;
		break;
	case OP_RW:
		consume(s, (const u8 *)(h + 1), h->len);
		if (s->fwd_cnt - s->fwd_cnt_reported >= VSOCK_BUF_ALLOC / 2)
			vsock_send(s, OP_CREDIT_UPDATE, 0, 0, 0);
		break;
	case OP_CREDIT_REQUEST:
		vsock_send(s, OP_CREDIT_UPDATE, 0, 0, 0);
		break;
	default:
		break;	/* CREDIT_UPDATE: the credit fields above are all it carries */
	}
}

/* Receive packets until `*flag` is set (returns 1) or the deadline passes (returns 0). */
static int wait_for(struct vsock *s, const int *flag, u32 ms)
{
	struct vq *rx = &s->d->queues[VSOCK_RX_QUEUE];
	struct deadline dl;
	u32 id, len;
	deadline_start(&dl, ms);
	while (!*flag) {
		if (s->reset && flag != &s->reset)
			return 0;
		if (!vq_poll(rx, &dl, &id, &len))
			return 0;
		if (id >= VSOCK_RX_BUFS)
			DEV_FAIL(s->d, "the device used a receive buffer the driver did not post");
		handle_packet(s, (const struct vsock_hdr *)(usize)buffer_addr(s->d,
									    (u64)id * VSOCK_RX_SLOT),
			      len);
		post_rx(s, id);
		vq_notify(rx);
	}
	return 1;
}

/* Credit the peer still has for us: buf_alloc - (bytes sent - bytes it consumed). */
static u32 peer_credit(struct vsock *s)
{
	u32 in_flight = s->tx_cnt - s->peer_fwd_cnt;
	return in_flight >= s->peer_buf_alloc ? 0 : s->peer_buf_alloc - in_flight;
}

/* Send the message in pieces that fit the peer's credit; with none left, ask for an
 * update (OP_CREDIT_REQUEST) and wait for it. */
static void send_message(struct vsock *s)
{
	const char *p = vsock_message;
	u32 left = sizeof(vsock_message) - 1;
	struct deadline dl;
	deadline_start(&dl, VSOCK_MS);
	while (left) {
		u32 credit = peer_credit(s);
		if (credit == 0) {
			vsock_send(s, OP_CREDIT_REQUEST, 0, 0, 0);
			while (peer_credit(s) == 0) {
				int never = 0;
				if (s->reset || deadline_passed(&dl))
					DEV_FAIL(s->d, "the host gave no send credit within 5000 ms");
				wait_for(s, &never, 10);
			}
			continue;
		}
		u32 n = left < credit ? left : credit;
		vsock_send(s, OP_RW, 0, p, n);
		p += n;
		left -= n;
	}
}

static void vsock_connect(struct vsock *s)
{
	for (u32 i = 0; i < VSOCK_RX_BUFS; i++)
		post_rx(s, i);
	vq_notify(&s->d->queues[VSOCK_RX_QUEUE]);
	struct vbuf ev = {buffer_addr(s->d, VSOCK_EVENT_BUF), 8, 1};
	vq_submit(&s->d->queues[VSOCK_EVENT_QUEUE], 0, &ev, 1);
	vq_notify(&s->d->queues[VSOCK_EVENT_QUEUE]);

	vsock_send(s, OP_REQUEST, 0, 0, 0);
	if (!wait_for(s, &s->connected, VSOCK_MS)) {
		if (s->reset)
			DEV_FAIL(s->d, "the host refused the connection (RST)");
		DEV_FAIL(s->d, "no OP_RESPONSE to a connection request within 5000 ms");
	}
	send_message(s);
	if (!wait_for(s, &s->reply_done, VSOCK_MS)) {
		if (s->reset)
			DEV_FAIL(s->d, "the host reset the connection before a newline");
		DEV_FAIL(s->d, "no reply line from the host within 5000 ms");
	}
	vsock_send(s, OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0);
	if (!wait_for(s, &s->reset, VSOCK_CLOSE_MS))
		vsock_send(s, OP_RST, 0, 0, 0);
}

void virtio_vsock_check(struct vdev *d)
{
	u32 port = vsock_port_wanted();
	virtio_start(d, 0, 3);
	virtio_driver_ok(d);

	struct vsock s;
	memset(&s, 0, sizeof(s));
	s.d = d;
	s.guest_cid = config_read64(d, 0);
	s.peer_port = port;
	if (s.guest_cid <= VSOCK_HOST_CID || s.guest_cid >= 0xffffffffULL)
		probe_fail_hex(d->check, "the guest CID in config space is reserved: cid=",
			       s.guest_cid);
	if (port)
		vsock_connect(&s);
	virtio_reset(d);

	put_dev_prefix(d, "vsock");
	put_str(" guest_cid=");
	probe_put_dec(s.guest_cid);
	if (port) {
		put_str(" port=");
		probe_put_dec(port);
		put_str(" reply=\"");
		for (u32 i = 0; i < s.reply_len; i++)
			probe_put_visible(s.reply[i]);
		probe_putc('"');
	}
	probe_putc('\n');
}
