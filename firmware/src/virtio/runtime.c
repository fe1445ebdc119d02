/*
 * Freestanding helpers for the probe's virtio driver: mem* (gcc may emit calls to them),
 * output on top of the asm runtime's putc/put_dec/put_hex, FNV-1a 64, deadlines, and the
 * command-line word scanner.
 */
#include "virtio.h"

/* Byte loops on purpose: build.rs passes -fno-tree-loop-distribute-patterns (no call back
 * into memset) and -mstringop-strategy=libcall (no inline rep stos/movs). */
void *memset(void *dst, int c, usize n)
{
	volatile u8 *p = dst;
	while (n--)
		*p++ = (u8)c;
	return dst;
}

void *memcpy(void *dst, const void *src, usize n)
{
	u8 *d = dst;
	const u8 *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

int memcmp(const void *a, const void *b, usize n)
{
	const u8 *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x < *y ? -1 : 1;
	return 0;
}

void put_str(const char *s)
{
	while (*s)
		probe_putc(*s++);
}

void put_hex0x(u64 value)
{
	put_str("0x");
	probe_put_hex(value, 0);
}

void put_hex_fixed(u64 value, u32 digits)
{
	put_str("0x");
	probe_put_hex(value, digits);
}

u64 fnv1a64(const void *data, usize len)
{
	const u8 *p = data;
	u64 hash = 0xcbf29ce484222325ULL;
	while (len--) {
		hash ^= *p++;
		hash *= 0x100000001b3ULL;
	}
	return hash;
}

/* ---- time ------------------------------------------------------------------------------- */

static u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static void cpuid(u32 leaf, u32 *eax)
{
	u32 a = leaf, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	*eax = a;
}

/* TSC kHz from the hypervisor leaf 0x40000010, or 0 when the leaf is absent. */
static u32 tsc_khz(void)
{
	u32 max;
	cpuid(0x40000000, &max);
	if (max < 0x40000010 || max > 0x400000ff)
		return 0;
	u32 khz;
	cpuid(0x40000010, &khz);
	return khz;
}

u64 tsc_now(void)
{
	return rdtsc();
}

void deadline_start(struct deadline *d, u32 ms)
{
	u32 khz = tsc_khz();
	d->use_tsc = khz != 0;
	d->end = rdtsc() + (u64)ms * khz;
	/* Without a TSC frequency: one poll per microsecond, as if (every poll is at least one
	 * guest memory read, so this errs on the long side). Also a backstop with the TSC. */
	d->polls_left = (u64)ms * 1000 * (d->use_tsc ? 1000 : 1);
}

int deadline_passed(struct deadline *d)
{
	if (d->polls_left == 0)
		return 1;
	d->polls_left--;
	if (d->use_tsc)
		return (long long)(rdtsc() - d->end) >= 0;
	return 0;
}

/* ---- command line ---------------------------------------------------------------------- */

#define CMDLINE_SCAN_MAX 65535

int word_end(char c)
{
	return c == 0 || c == ' ' || c == '\t' || c == '\n';
}

static const char *match_prefix(const char *text, const char *prefix)
{
	for (; *prefix; prefix++, text++)
		if (*text != *prefix)
			return 0;
	return text;
}

const char *cmdline_find(const char *prefix, const char **cursor, int stop_at_dashes)
{
	const char *start = (const char *)(usize)cmdline_addr;
	const char *p = cursor && *cursor ? *cursor : start;
	if (!start)
		return 0;
	while ((usize)(p - start) < CMDLINE_SCAN_MAX && *p) {
		if (p == start || word_end(p[-1])) {
			if (stop_at_dashes && p[0] == '-' && p[1] == '-' && word_end(p[2]))
				return 0;
			const char *after = match_prefix(p, prefix);
			if (after) {
				if (cursor)
					*cursor = after;
				return after;
			}
		}
		p++;
	}
	return 0;
}

/* ---- option parsing ------------------------------------------------------------------------ */

/* Decimal digits at *p into *out, advancing *p; 0 when there are none or the value is outside
 * min..max. */
int take_dec(const char **p, u64 min, u64 max, u64 *out)
{
	const char *s = *p;
	u64 value = 0;
	int digits = 0;
	while (*s >= '0' && *s <= '9') {
		value = value * 10 + (u64)(*s - '0');
		if (value > max)
			return 0;
		s++;
		digits++;
	}
	if (!digits || value < min)
		return 0;
	*p = s;
	*out = value;
	return 1;
}

/* Whether *p starts with `,key=`; if so, skips it. */
int take_key(const char **p, const char *key)
{
	const char *s = *p;
	if (*s++ != ',')
		return 0;
	while (*key)
		if (*s++ != *key++)
			return 0;
	if (*s++ != '=')
		return 0;
	*p = s;
	return 1;
}
