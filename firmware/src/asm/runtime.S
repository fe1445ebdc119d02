/*
 * edgevisor boot probe: runtime shared by every entry point.
 *
 * - linux_common64: tail of the 64-bit Linux entries (stamp, save CPU state, stack, body).
 * - enter_long_mode32: tail of the 32-bit entries (stamp, save CPU state, identity-map
 *   0-4 GiB with 2 MiB pages, switch to long mode, body).
 * - serial output helpers, the FAIL path, the exit paths, and all data.
 *
 * Only plain integer instructions: the host's KVM may emulate every guest instruction
 * and cannot emulate SSE, x87, popcnt, cmpxchg16b, int3 or xsave/xrstor.
 *
 * Calling convention of the helpers: arguments in rdi, rsi, rdx; result in rax; they
 * may clobber rax, rcx, rdx, rsi, rdi, r8-r11 and keep rbx, rbp, r12-r15.
 */
#include "probe.h"
#include "macros.h"

/* ------------------------------------------------------------------------------------ */
/* 64-bit Linux entries (linux64, bzImage) jump here with boot_ptr and proto saved.      */
/* ------------------------------------------------------------------------------------ */
	.section .text.probe_runtime,"ax"
	.code64
	.globl	linux_common64
linux_common64:
	movw	$BOOT_TIMER_PORT, %dx
	movb	$BOOT_STAMP_ENTRY, %al
	outb	%al, %dx
	movq	$stack_top, %rsp
	movq	%cr0, %rax
	movq	%rax, entry_cr0
	movl	$MSR_EFER, %ecx
	rdmsr
	shlq	$32, %rdx
	orq	%rdx, %rax
	movq	%rax, entry_efer
	jmp	probe_body

/* Continuation of enter_long_mode32 once in 64-bit mode. */
long_mode64:
	movl	$GDT_DATA, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movq	$stack_top, %rsp
	jmp	probe_body

/* ------------------------------------------------------------------------------------ */
/* 32-bit entries (PVH, multiboot) jump here with boot_ptr, boot_eax and proto saved.    */
/* ------------------------------------------------------------------------------------ */
	.section .text32.probe_runtime,"ax"
	.code32
	.globl	enter_long_mode32
enter_long_mode32:
	movw	$BOOT_TIMER_PORT, %dx
	movb	$BOOT_STAMP_ENTRY, %al
	outb	%al, %dx
	movl	$stack_top, %esp
	/* Record the state we were handed; the 64-bit body checks and reports it. */
	movl	%cr0, %eax
	movl	%eax, entry_cr0
	movl	$0, entry_cr0 + 4
	movl	$MSR_EFER, %ecx
	rdmsr
	movl	%eax, entry_efer
	movl	%edx, entry_efer + 4
	/* Paging must be off to set EFER.LME (a no-op when the VMM followed the contract). */
	movl	%cr0, %eax
	andl	$~CR0_PG, %eax
	movl	%eax, %cr0
	call	build_page_tables
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	lgdt	gdt_desc
	movl	%cr0, %eax
	orl	$(CR0_PG | CR0_PE), %eax
	movl	%eax, %cr0
	ljmp	$GDT_CODE64, $long_mode64

/*
 * The identity map of 0-4 GiB (PML4[0] -> PDPT[0..3] -> four page directories of 512 2 MiB
 * pages) is static data in .data, built by the assembler and resolved by the linker, so
 * every loader (ELF, multiboot, bzImage) hands it over ready and nothing is computed here.
 * This matters on hosts whose KVM emulates 32-bit unpaged code instruction by instruction
 * (~1 us each): building these tables at run time cost ~13 ms there.
 */
build_page_tables:
	ret

/* ------------------------------------------------------------------------------------ */
/* Serial output (COM1, polled).                                                         */
/* ------------------------------------------------------------------------------------ */
	.section .text.probe_runtime
	.code64

/* putc(dil): wait for THRE (bounded), then write the byte. Clobbers rax, rcx, rdx. */
	.globl	putc
putc:
	movl	$SERIAL_POLL_MAX, %ecx
1:	movw	$COM1_LSR, %dx
	inb	%dx, %al
	testb	$LSR_THRE, %al
	jnz	2f
	decl	%ecx
	jnz	1b
2:	movw	$COM1_DATA, %dx
	movl	%edi, %eax
	outb	%al, %dx
	ret

/* puts(rsi): print a NUL-terminated string. */
	.globl	puts
puts:
1:	movzbl	(%rsi), %edi
	testl	%edi, %edi
	jz	2f
	call	putc
	incq	%rsi
	jmp	1b
2:	ret

/* put_visible(dil): print a command-line byte, '?' for control and non-ASCII bytes. */
	.globl	put_visible
put_visible:
	andl	$0xff, %edi
	cmpl	$0x20, %edi
	jb	1f
	cmpl	$0x7e, %edi
	ja	1f
	jmp	putc
1:	movl	$'?', %edi
	jmp	putc

/* put_dec(rdi): print an unsigned 64-bit number in decimal. */
	.globl	put_dec
put_dec:
	movq	%rdi, %rax
	movl	$(numbuf + 23), %esi
	movb	$0, (%rsi)
	movl	$10, %ecx
1:	xorl	%edx, %edx
	divq	%rcx
	addb	$'0', %dl
	decq	%rsi
	movb	%dl, (%rsi)
	testq	%rax, %rax
	jnz	1b
	jmp	puts

/*
 * put_hex(rdi = value, esi = digits): print `digits` lowercase hex digits (1..16),
 * or as few as needed when esi is 0. No "0x" prefix.
 */
	.globl	put_hex
put_hex:
	movq	%rdi, %r8
	movl	%esi, %r9d
	testl	%r9d, %r9d
	jnz	2f
	movl	$1, %r9d
	movq	%r8, %rax
1:	shrq	$4, %rax
	jz	2f
	incl	%r9d
	jmp	1b
2:	movl	%r9d, %r10d
	decl	%r10d
	shll	$2, %r10d
3:	movl	%r10d, %ecx
	movq	%r8, %rax
	shrq	%cl, %rax
	andl	$15, %eax
	movzbl	hex_digits(%rax), %edi
	call	putc
	subl	$4, %r10d
	jns	3b
	ret

/* put_proto: print the protocol name of this boot. */
	.globl	put_proto
put_proto:
	movzbl	proto, %eax
	cmpl	$PROTO_BZIMAGE, %eax
	jbe	1f
	movl	$str_unknown, %esi
	jmp	puts
1:	movq	proto_names(, %rax, 8), %rsi
	jmp	puts

/* ------------------------------------------------------------------------------------ */
/* Verdicts and ways out.                                                                */
/* ------------------------------------------------------------------------------------ */

/* fail(rdi = check, rsi = detail) and fail_hex(..., rdx = value): never return. */
	.globl	fail_hex
fail_hex:
	movq	%rdx, fail_value
	movb	$1, fail_has_value
	jmp	1f
	.globl	fail
fail:
	movb	$0, fail_has_value
1:	movq	%rdi, fail_check
	movq	%rsi, fail_detail
	PUTS	"PROBE FAIL protocol="
	call	put_proto
	PUTS	" check="
	movq	fail_check, %rsi
	call	puts
	PUTC	' '
	movq	fail_detail, %rsi
	call	puts
	cmpb	$0, fail_has_value
	je	2f
	PUTS	"0x"
	movq	fail_value, %rdi
	xorl	%esi, %esi
	call	put_hex
2:	PUTC	'\n'
	movw	$DEBUG_EXIT_PORT, %dx
	movb	$1, %al
	outb	%al, %dx
	jmp	halt_forever

/* exit_after_pass: stamp the boot timer again and end the VM as probe.exit= asked. */
	.globl	exit_after_pass
exit_after_pass:
	movw	$BOOT_TIMER_PORT, %dx
	movb	$BOOT_STAMP_PASS, %al
	outb	%al, %dx
	movzbl	exit_mode, %eax
	cmpl	$EXIT_RESET, %eax
	je	exit_reset
	cmpl	$EXIT_PANIC, %eax
	je	exit_panic
	cmpl	$EXIT_DEBUG, %eax
	je	exit_debug
	cmpl	$EXIT_TRIPLE, %eax
	je	exit_triple
	cmpl	$EXIT_HANG, %eax
	je	exit_hang
	/* EXIT_POWEROFF: ACPI PM1a_CNT with SLP_EN. */
	movw	$ACPI_PM1A_CNT, %dx
	movw	$ACPI_SLP_EN, %ax
	outw	%ax, %dx
	jmp	halt_forever
exit_reset:
	movb	$I8042_RESET, %al
	outb	%al, $I8042_CMD_PORT
	jmp	halt_forever
exit_panic:
	movw	$PVPANIC_PORT, %dx
	movb	$1, %al
	outb	%al, %dx
	jmp	halt_forever
exit_debug:
	movw	$DEBUG_EXIT_PORT, %dx
	movb	exit_value, %al
	outb	%al, %dx
	jmp	halt_forever
exit_triple:
	/* An IDT with limit 0 turns the #UD into #GP, #DF and then a triple fault. */
	lidt	null_idt
	ud2
exit_hang:
	cli
	hlt
	jmp	exit_hang

	.globl	halt_forever
halt_forever:
	cli
	hlt
	jmp	halt_forever

/* ------------------------------------------------------------------------------------ */
/* Read-only data.                                                                       */
/* ------------------------------------------------------------------------------------ */
	.section .rodata.probe,"a"
	.p2align 3
gdt:
	.quad	0			/* null */
	.quad	0x00cf9b000000ffff	/* 0x08: 32-bit code, flat */
	.quad	0x00af9b000000ffff	/* 0x10: 64-bit code */
	.quad	0x00cf93000000ffff	/* 0x18: data, flat */
gdt_end:
	.p2align 3
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt
	.p2align 3
null_idt:
	.word	0
	.quad	0
	.p2align 3
proto_names:
	.quad	str_linux64, str_pvh, str_multiboot, str_bzimage
hex_digits:
	.ascii	"0123456789abcdef"
str_linux64:
	.asciz	"linux64"
str_pvh:
	.asciz	"pvh"
str_multiboot:
	.asciz	"multiboot"
str_bzimage:
	.asciz	"bzimage"
str_unknown:
	.asciz	"unknown"

/* The marker the image loader looks for to recognise edgevisor firmware. */
	.section .edgevisor_probe,"a"
	.globl	probe_marker
probe_marker:
	.asciz	"edgevisor-probe"

/* ------------------------------------------------------------------------------------ */
/* Writable state. Nothing here relies on being zeroed: code writes before it reads.     */
/* ------------------------------------------------------------------------------------ */
	.section .bss.probe,"aw",@nobits
	.p2align 3
	.globl	boot_ptr, boot_eax, proto, entry_cr0, entry_efer
	.globl	cmdline_addr, exit_mode, exit_value
	.globl	mem_total, mem_regions, mem_low_ok
boot_ptr:	.skip 8		/* RSI (Linux) or EBX (PVH, multiboot) at entry */
entry_cr0:	.skip 8
entry_efer:	.skip 8
cmdline_addr:	.skip 8
mem_total:	.skip 8		/* bytes of type-1 memory */
fail_check:	.skip 8
fail_detail:	.skip 8
fail_value:	.skip 8
boot_eax:	.skip 4		/* EAX at entry (multiboot magic) */
mem_regions:	.skip 4
proto:		.skip 1
exit_mode:	.skip 1
exit_value:	.skip 1
mem_low_ok:	.skip 1
fail_has_value:	.skip 1
	.p2align 3
numbuf:		.skip 24

	.p2align 4
stack:		.skip 16384
	.globl	stack_top
stack_top:


/* The boot page tables (see build_page_tables). */
	.section .data.probe_tables,"aw",@progbits
	.p2align 12
pml4:
	.quad	pdpt + PTE_PRESENT_RW
	.fill	511, 8, 0
pdpt:
	.quad	page_dirs + PTE_PRESENT_RW
	.quad	page_dirs + 0x1000 + PTE_PRESENT_RW
	.quad	page_dirs + 0x2000 + PTE_PRESENT_RW
	.quad	page_dirs + 0x3000 + PTE_PRESENT_RW
	.fill	508, 8, 0
page_dirs:
	.set	pde, PDE_2M_PAGE
	.rept	2048
	.quad	pde
	.set	pde, pde + 0x200000
	.endr
