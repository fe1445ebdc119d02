/*
 * The probe's virtio-mmio driver (virtio 1.x, MMIO register layout version 2).
 *
 * Freestanding C, compiled by build.rs with only general-purpose registers (no SSE, x87,
 * popcnt, rep string instructions, endbr64): this host's KVM emulates guest instructions
 * and ends the guest on anything else. The asm runtime (runtime.S) provides serial output
 * and the FAIL path; checks.S calls `virtio_checks` after check_rtc.
 *
 * Nothing here relies on zeroed .bss (loaders differ): all state lives on the stack or in
 * the scratch area, which the driver clears before use. See docs/GUEST_INTERFACE.md,
 * "The probe's virtio checks".
 */
#ifndef EDGEVISOR_PROBE_VIRTIO_H
#define EDGEVISOR_PROBE_VIRTIO_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long usize;

#define NORETURN __attribute__((noreturn))

/* ---- what the asm runtime provides (runtime.S, checks.S) ------------------------------ */
void probe_putc(int c) __asm__("putc");
void probe_put_dec(u64 value) __asm__("put_dec");
void probe_put_hex(u64 value, u32 digits) __asm__("put_hex");
void probe_put_visible(int c) __asm__("put_visible");
NORETURN void probe_fail(const char *check, const char *detail) __asm__("fail");
NORETURN void probe_fail_hex(const char *check, const char *detail, u64 value)
	__asm__("fail_hex");
extern u64 cmdline_addr;
extern u64 mem_total;

/* ---- runtime.c -------------------------------------------------------------------------- */
void *memset(void *dst, int c, usize n);
void *memcpy(void *dst, const void *src, usize n);
int memcmp(const void *a, const void *b, usize n);
void put_str(const char *s);
void put_hex0x(u64 value);		/* 0x + as few digits as needed */
void put_hex_fixed(u64 value, u32 digits); /* 0x + exactly `digits` digits */
u64 fnv1a64(const void *data, usize len);
u64 tsc_now(void);		/* rdtsc */

/* A deadline `ms` milliseconds from now: TSC ticks when CPUID 0x40000010 gives the TSC
 * frequency, else a count of polls (one per microsecond, as if). */
struct deadline {
	u64 end;
	u64 polls_left;
	int use_tsc;
};
void deadline_start(struct deadline *d, u32 ms);
int deadline_passed(struct deadline *d);

/* Command line: the word after `prefix` at the start of a word, or 0. Stops at a `--` word
 * when `stop_at_dashes` is set. `*cursor` (may be 0) resumes a scan after a previous hit. */
const char *cmdline_find(const char *prefix, const char **cursor, int stop_at_dashes);
int word_end(char c);
/* Decimal digits at *p, min..max, into *out (advancing *p); 0 when absent or out of range. */
int take_dec(const char **p, u64 min, u64 max, u64 *out);
/* Whether *p starts with `,key=`; if so, skips it. */
int take_key(const char **p, const char *key);

/* Full memory barrier that KVM's emulator handles (a locked add, as Linux's smp_mb). */
static inline void mb(void)
{
	__asm__ volatile("lock; addl $0, -8(%%rsp)" ::: "memory", "cc");
}

/* ---- pci.c: PCI bus scan and the edu device checks (probe.pci, probe.edu) ---------------- */
void pci_checks(void);
u32 pci_cfg_read(u32 dev, u32 reg);		/* bus 0, function 0, mechanism #1 */
void pci_cfg_write(u32 dev, u32 reg, u32 value);
u64 pci_bar_probe(u32 dev, u32 i, u64 *size, int *is64); /* address of memory BAR i, sized */
u32 pci_find_cap(u32 dev, u8 id);	/* capability offset, 0 if absent */
int pci_has_word(const char *word);	/* `word` is on the command line */
#define LAPIC_BASE 0xfee00000ULL

/* ---- nvme.c: an NVMe controller on bus 0 (probe.nvme), interrupts through MSI-X ---------- */
void nvme_checks(u32 dev);

/* ---- the scratch area (guest RAM the driver owns) ---------------------------------------- */
#define SCRATCH_BASE      0x400000ULL	/* 4 MiB */
#define SCRATCH_END       0x800000ULL	/* 8 MiB */
#define SCRATCH_PER_DEV   0x80000ULL	/* 512 KiB per device */
#define MAX_DEVICES       8
#define QUEUE_AREA        0x4000ULL	/* per queue: desc +0, avail +0x1000, used +0x2000 */
#define MAX_QUEUES        5	/* net multiqueue: two pairs and the control queue */
#define BUFFER_AREA       (MAX_QUEUES * QUEUE_AREA) /* buffers from here to the slot's end */
#define QUEUE_SIZE_MAX    16
#define QUEUE_SIZE_MIN    4	/* the longest chain (blk: 3) and the rx buffers posted (4) */

/* ---- virtio-mmio registers (virtio 1.x, section 4.2.2) ----------------------------------- */
#define VIRTIO_MMIO_MAGIC             0x000
#define VIRTIO_MMIO_VERSION           0x004
#define VIRTIO_MMIO_DEVICE_ID         0x008
#define VIRTIO_MMIO_DEVICE_FEATURES   0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES   0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL         0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX     0x034
#define VIRTIO_MMIO_QUEUE_NUM         0x038
#define VIRTIO_MMIO_QUEUE_READY       0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY      0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS  0x060
#define VIRTIO_MMIO_INTERRUPT_ACK     0x064
#define VIRTIO_MMIO_STATUS            0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW    0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH   0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW  0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW  0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG            0x100

#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976	/* "virt" */

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER      2
#define STATUS_DRIVER_OK   4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 0x40
#define STATUS_FAILED      0x80

#define VIRTIO_F_VERSION_1 (1ULL << 32)

#define VIRTIO_ID_NET   1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG   4
#define VIRTIO_ID_VSOCK 19

/* ---- split virtqueues (virtio 1.x, section 2.6) ------------------------------------------ */
#define VIRTQ_DESC_F_NEXT  1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[QUEUE_SIZE_MAX];
	u16 used_event;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[QUEUE_SIZE_MAX];
	u16 avail_event;
};

struct vdev;

struct vq {
	struct vdev *dev;
	volatile struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	u32 index;
	u16 size;
	u16 avail_idx;		/* next avail->idx the driver publishes */
	u16 last_used;		/* used->idx the driver has consumed up to */
};

/* One buffer of a descriptor chain. */
struct vbuf {
	u64 addr;
	u32 len;
	int device_writes;
};

/* One device from one `virtio_mmio.device=` token. */
struct vdev {
	u64 base;		/* MMIO base (below 4 GiB) */
	u64 size;
	u32 irq;
	u32 device_id;
	u64 offered;		/* device features */
	u64 accepted;		/* driver features written back */
	u64 scratch;		/* this device's 512 KiB of scratch RAM */
	const char *check;	/* check name for FAIL lines: virtio-blk, ... */
	struct vq queues[MAX_QUEUES];
};

/* ---- transport.c ------------------------------------------------------------------------ */
u32 mmio_read32(struct vdev *d, u32 offset);
void mmio_write32(struct vdev *d, u32 offset, u32 value);
u8 config_read8(struct vdev *d, u32 offset);
u32 config_read32(struct vdev *d, u32 offset);
u64 config_read64(struct vdev *d, u32 offset);
/* Reset, ACK, DRIVER, features (VERSION_1 | (offered & wanted)), FEATURES_OK (checked),
 * `nqueues` queues set up and ready. DRIVER_OK is set by virtio_driver_ok. */
void virtio_start(struct vdev *d, u64 wanted, u32 nqueues);
void virtio_driver_ok(struct vdev *d);
void virtio_reset(struct vdev *d);
u64 buffer_addr(struct vdev *d, u64 offset);
/* Publish a chain of `n` buffers starting at descriptor `head` (head..head+n-1). */
void vq_submit(struct vq *q, u16 head, const struct vbuf *bufs, u32 n);
void vq_notify(struct vq *q);
/* Wait (bounded) for one used entry; returns 1 and fills id/len, or 0 on timeout. */
int vq_poll(struct vq *q, struct deadline *dl, u32 *id, u32 *len);
/* Submit one chain at head 0, notify, wait for it; FAIL `what` on timeout. Returns len. */
u32 vq_transact(struct vq *q, const struct vbuf *bufs, u32 n, u32 ms, const char *what);
/* FAIL the device's check with "<detail> at base=0x<base>"; `detail` is a string literal. */
#define DEV_FAIL(d, detail) probe_fail_hex((d)->check, detail " at base=", (d)->base)
void put_dev_prefix(struct vdev *d, const char *type);

/* ---- devices ------------------------------------------------------------------------------- */
void virtio_rng_check(struct vdev *d);
void virtio_blk_check(struct vdev *d);
void virtio_net_check(struct vdev *d);
void virtio_net_mq_check(struct vdev *d);	/* net_mq.c, probe.net=mq */

/* ---- net.c: the probe frame, shared with net_mq.c --------------------------------------------- */
#define NET_HDR_LEN 12		/* virtio_net_hdr_v1, num_buffers included (virtio 1.x) */
#define NET_RX_BUF 2048		/* header + a 1514-byte frame, rounded up */
#define NET_RX_BUFS 4		/* receive buffers posted per RX queue */
/* Receive buffer `id` of `queue`, at `off` + id * NET_RX_BUF in the device's buffer area. */
void net_post_rx(struct vdev *d, u32 queue, u64 off, u32 id);
/* The probe's broadcast frame from `mac` on TX queue `queue`, built at `off`. */
void net_send_frame(struct vdev *d, u32 queue, u64 off, const u8 *mac);
/* The first frame of ethertype 0x88b5 on RX `queue` (buffers at `off`) within the receive
 * window (5 s, or probe.net=...,wait=MS): its length after the header, *frame pointing at
 * it; or 0. Other frames are posted again. */
u32 net_receive_frame(struct vdev *d, u32 queue, u64 off, const u8 **frame);
/* `probe: virtio-net base=... mac=<mac or none>`, the start of the check's line. */
void net_put_line_start(struct vdev *d, int have_mac, const u8 *mac);
void virtio_vsock_check(struct vdev *d);

/* ---- bench.c: workloads behind probe.blkbench=, probe.netbench= and probe.spin= ------------ */
void virtio_blk_bench(struct vdev *d);	/* after virtio_blk_check, when asked */
void virtio_net_bench(struct vdev *d);	/* after virtio_net_check, when asked */
void virtio_spin_bench(struct vdev *first); /* after every device; `first` may be 0 */

#endif
