/*
 * PVH entry: the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY gives pvh_entry32, reached in
 * 32-bit protected mode with paging off and EBX = hvm_start_info.
 *
 * Like a Linux vmlinux with PVH support, the ELF entry point (e_entry) is a 64-bit
 * Linux entry: a loader that ignores the note boots it as linux64 and the probe says so.
 */
#include "probe.h"

	.section .text32.entry,"ax"
	.code32
	.globl	pvh_entry32
pvh_entry32:
	movl	%ebx, boot_ptr
	movl	$0, boot_ptr + 4
	movb	$PROTO_PVH, proto
	jmp	enter_long_mode32

	.section .text.entry,"ax"
	.code64
	.globl	pvh_image_linux64_entry
pvh_image_linux64_entry:
	movq	%rsi, boot_ptr
	movb	$PROTO_LINUX64, proto
	jmp	linux_common64

/* Elf note: namesz, descsz, type, name "Xen\0", desc = 32-bit physical entry. */
	.section .note.Xen,"a",@note
	.p2align 2
	.long	4
	.long	4
	.long	18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.long	pvh_entry32
