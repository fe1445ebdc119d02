/*
 * Multiboot v1 entry: header (magic 0x1BADB002, flags 0x3: page-aligned modules and
 * memory info, no address fields, so the loader uses the ELF program headers) and the
 * 32-bit entry (ELF e_entry): EAX = 0x2BADB002, EBX = multiboot info, paging off.
 */
#include "probe.h"

	.section .multiboot,"a"
	.p2align 2
multiboot_header:
	.long	MULTIBOOT_HDR_MAGIC
	.long	MULTIBOOT_HDR_FLAGS
	.long	-(MULTIBOOT_HDR_MAGIC + MULTIBOOT_HDR_FLAGS)

	.section .text32.entry,"ax"
	.code32
	.globl	multiboot_entry32
multiboot_entry32:
	movl	%eax, boot_eax
	movl	%ebx, boot_ptr
	movl	$0, boot_ptr + 4
	movb	$PROTO_MULTIBOOT, proto
	jmp	enter_long_mode32
