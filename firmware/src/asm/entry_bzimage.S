/*
 * Protected-mode payload head of the bzImage, loaded at 0x100000 (code32_start).
 *
 * Offset 0x000: the 32-bit boot protocol entry (ESI = zero page, paging off). The probe
 *               supports it only as far as reporting it: it switches to long mode and
 *               the mode check fails, naming the protocol.
 * Offset 0x200: the 64-bit entry (long mode, RSI = zero page), protocol "bzimage".
 *
 * The bytes at offset 0 are a single `jmp rel32`, which decodes the same in 32-bit and
 * 64-bit mode, so the whole .head section can be disassembled as 64-bit code.
 */
#include "probe.h"

	.section .head,"ax"
	.code64
	.globl	bzimage_entry32
bzimage_entry32:
	.byte	0xe9			/* jmp rel32 */
	.long	bzimage_entry32_body - (bzimage_entry32 + 5)
	.org	0x200, 0xf4		/* hlt padding */
	.globl	bzimage_entry64
bzimage_entry64:
	movq	%rsi, boot_ptr
	movb	$PROTO_BZIMAGE, proto
	jmp	linux_common64

	.section .text32.entry,"ax"
	.code32
bzimage_entry32_body:
	movl	%esi, boot_ptr
	movl	$0, boot_ptr + 4
	movb	$PROTO_BZIMAGE, proto
	jmp	enter_long_mode32
