/*
 * Linux 64-bit entry of a vmlinux-style ELF (no PVH note): long mode, paging on,
 * RSI = zero page. This is the ELF entry point (e_entry).
 */
#include "probe.h"

	.section .text.entry,"ax"
	.code64
	.globl	linux64_entry
linux64_entry:
	movq	%rsi, boot_ptr
	movb	$PROTO_LINUX64, proto
	jmp	linux_common64
