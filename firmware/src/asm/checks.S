/*
 * edgevisor boot probe: the 64-bit body shared by all entry points.
 *
 * Every check prints one `probe: ` line or ends the VM through `fail`. The order and the
 * output format are part of docs/GUEST_INTERFACE.md.
 *
 * Registers: boot data is re-read from `boot_ptr` by each check (rbx); the checks may
 * clobber every register, the body keeps no state in registers across them.
 */
#include "probe.h"
#include "macros.h"

	.section .text.probe_checks,"ax"
	.code64

	.globl	probe_body
probe_body:
	call	check_magic
	PUTS	"probe: protocol="
	call	put_proto
	PUTC	'\n'
	call	check_mode
	call	check_cmdline
	call	check_memory
	call	check_initrd
	call	check_cpuid
	call	check_rtc
	call	call_virtio_checks
	PUTS	"PROBE PASS protocol="
	call	put_proto
	PUTC	'\n'
	call	touch_memory
	jmp	exit_after_pass

/*
 * call_virtio_checks: the C driver in src/virtio (System V ABI). The body keeps no state in
 * registers, so only the stack matters: the C code expects RSP % 16 == 0 before the call.
 * Here RSP is 8 below that (our own return address), so it is adjusted around the call.
 */
call_virtio_checks:
	subq	$8, %rsp
	testq	$15, %rsp
	jz	1f
	FAIL_HEX virtio, "stack misaligned before calling the C driver: rsp=", %rsp
1:	call	virtio_checks
	addq	$8, %rsp
	ret

/*
 * touch_memory: the memory-touch workload for benchmarks. With `probe.touch=N` (decimal MiB,
 * 1..65535) on the command line, write one quadword per 4 KiB page of [16 MiB, 16 MiB + N MiB),
 * so every page is faulted in once, then print `probe: touched N MiB`. Fails check=touch if
 * that range is not inside the guest's RAM. Without the token it does nothing.
 */
touch_memory:
	movl	$str_probe_touch, %edi
	call	find_word_prefix
	testq	%rax, %rax
	jnz	touch_value_at_rax
	ret

/* rax points just after `probe.touch=`: N decimal MiB, then the end of the word. */
touch_value_at_rax:
	movq	%rax, %rsi
	xorl	%ecx, %ecx
	xorl	%r8d, %r8d
1:	movzbl	(%rsi), %eax
	subl	$'0', %eax
	cmpl	$9, %eax
	ja	2f
	imull	$10, %ecx, %ecx
	addl	%eax, %ecx
	cmpl	$65535, %ecx
	ja	bad_touch_value
	incq	%rsi
	incl	%r8d
	jmp	1b
2:	testl	%r8d, %r8d
	jz	bad_touch_value
	testl	%ecx, %ecx
	jz	bad_touch_value
	movzbl	(%rsi), %eax
	call	is_word_end
	testl	%eax, %eax
	jz	bad_touch_value
	/* The range [16 MiB, 16 MiB + N MiB) must fit in the RAM the memory map reported. */
	movl	%ecx, %r15d
	movq	%r15, %rax
	shlq	$20, %rax
	addq	$TOUCH_START, %rax
	cmpq	mem_total, %rax
	ja	touch_too_big
	movq	$TOUCH_START, %rdi
	movq	%r15, %rcx
	shlq	$8, %rcx		/* pages = MiB * 256 */
3:	movq	%rdi, (%rdi)
	addq	$4096, %rdi
	decq	%rcx
	jnz	3b
	PUTS	"probe: touched "
	movq	%r15, %rdi
	call	put_dec
	PUTS	" MiB\n"
	ret
bad_touch_value:
	FAIL	touch, "probe.touch=N needs a decimal number of MiB from 1 to 65535"
touch_too_big:
	FAIL	touch, "probe.touch= asks for more memory than the guest has above 16 MiB"

/* Jump to 1: for the Linux protocols, 2: for PVH, 3: for multiboot. Clobbers eax. */
.macro DISPATCH_PROTO
	movzbl	proto, %eax
	cmpl	$PROTO_PVH, %eax
	je	2f
	cmpl	$PROTO_MULTIBOOT, %eax
	je	3f
	jmp	1f
.endm

/* Load boot_ptr into rbx; fail check=magic when it points above 4 GiB. */
load_boot_ptr:
	movq	boot_ptr, %rbx
	movq	%rbx, %rax
	shrq	$32, %rax
	jnz	1f
	ret
1:	FAIL_HEX magic, "boot data pointer is above 4 GiB: ", %rbx

/* ------------------------------------------------------------------------------------ */
/* protocol and magic                                                                    */
/* ------------------------------------------------------------------------------------ */
check_magic:
	call	load_boot_ptr
	DISPATCH_PROTO
1:	/* Linux: zero page with boot_flag 0xAA55 at +0x1FE and "HdrS" at +0x202. */
	movzwl	0x1fe(%rbx), %eax
	cmpl	$LINUX_BOOT_FLAG, %eax
	je	4f
	FAIL_HEX magic, "zero page boot_flag is not 0xaa55: ", %rax
4:	movl	0x202(%rbx), %eax
	cmpl	$LINUX_HDRS_MAGIC, %eax
	je	5f
	FAIL_HEX magic, "zero page header is not HdrS: ", %rax
5:	ret
2:	/* PVH: hvm_start_info magic. */
	movl	(%rbx), %eax
	cmpl	$PVH_START_MAGIC, %eax
	je	6f
	FAIL_HEX magic, "hvm_start_info magic is not 0x336ec578: ", %rax
6:	ret
3:	/* Multiboot: EAX magic, and the info structure must carry a memory map. */
	movl	boot_eax, %eax
	cmpl	$MULTIBOOT_BOOT_MAGIC, %eax
	je	7f
	FAIL_HEX magic, "eax is not 0x2badb002: ", %rax
7:	movl	(%rbx), %eax
	testl	$0x40, %eax
	jnz	8f
	FAIL_HEX magic, "multiboot info lacks MEM_MAP (flags bit 6): flags=", %rax
8:	ret

/* ------------------------------------------------------------------------------------ */
/* CPU mode at entry                                                                     */
/* ------------------------------------------------------------------------------------ */
check_mode:
	movzbl	proto, %eax
	cmpl	$PROTO_PVH, %eax
	je	2f
	cmpl	$PROTO_MULTIBOOT, %eax
	je	2f
	/* Linux entries: long mode with paging. */
	movq	entry_efer, %rax
	testl	$EFER_LMA, %eax
	jnz	1f
	FAIL_HEX mode, "long mode inactive at entry (EFER.LMA=0): efer=", %rax
1:	movq	entry_cr0, %rax
	testl	$CR0_PG, %eax
	jnz	3f
	FAIL_HEX mode, "paging off at entry (CR0.PG=0): cr0=", %rax
3:	PUTS	"probe: mode=long paging=on\n"
	ret
2:	/* 32-bit entries: protected mode, paging off. */
	movq	entry_cr0, %rax
	testl	$CR0_PE, %eax
	jnz	4f
	FAIL_HEX mode, "protection off at entry (CR0.PE=0): cr0=", %rax
4:	testl	$CR0_PG, %eax
	jz	5f
	FAIL_HEX mode, "paging on at entry (CR0.PG=1): cr0=", %rax
5:	PUTS	"probe: mode=protected32 paging=off\n"
	ret

/* ------------------------------------------------------------------------------------ */
/* command line                                                                          */
/* ------------------------------------------------------------------------------------ */
check_cmdline:
	call	load_boot_ptr
	DISPATCH_PROTO
1:	/* Linux: cmd_line_ptr (+0x228) | ext_cmd_line_ptr (+0xC8) << 32; must be set. */
	movl	0x228(%rbx), %eax
	movl	0xc8(%rbx), %edx
	shlq	$32, %rdx
	orq	%rdx, %rax
	testq	%rax, %rax
	jnz	4f
	FAIL	cmdline, "zero page cmd_line_ptr is 0"
2:	/* PVH: cmdline_paddr (+24), 0 means none. */
	movq	24(%rbx), %rax
	jmp	4f
3:	/* Multiboot: CMDLINE flag (bit 2) and cmdline (+16). */
	xorl	%eax, %eax
	testl	$0x4, (%rbx)
	jz	4f
	movl	16(%rbx), %eax
4:	movq	%rax, %r12
	shrq	$32, %rax
	jz	5f
	FAIL_HEX cmdline, "command line is above 4 GiB: ", %r12
5:	movq	%r12, cmdline_addr
	PUTS	"probe: cmdline=\""
	testq	%r12, %r12
	jz	7f
	movl	$CMDLINE_PRINT_MAX, %r13d
6:	movzbl	(%r12), %edi
	testl	%edi, %edi
	jz	7f
	call	put_visible
	incq	%r12
	decl	%r13d
	jnz	6b
7:	PUTS	"\"\n"
	jmp	parse_exit

/*
 * parse_exit: find `probe.exit=` at the start of a word of the command line and set
 * exit_mode / exit_value. No token means poweroff. Unknown values fail check=cmdline.
 */
parse_exit:
	movb	$EXIT_POWEROFF, exit_mode
	movb	$0, exit_value
	movl	$str_probe_exit, %edi
	call	find_word_prefix
	testq	%rax, %rax
	jnz	exit_value_at_rax
	ret

/*
 * find_word_prefix(rdi = NUL-terminated prefix): rax = the text just after the first word of
 * the command line that starts with the prefix, or 0 (also when there is no command line).
 * Clobbers r12-r15, rsi, rdi, rcx, rdx.
 */
find_word_prefix:
	movq	%rdi, %r15
	xorl	%eax, %eax
	movq	cmdline_addr, %r12
	testq	%r12, %r12
	jz	9f
	movl	$CMDLINE_SCAN_MAX, %r13d
	movl	$1, %r14d		/* at the start of a word */
1:	movzbl	(%r12), %eax
	testl	%eax, %eax
	jz	8f
	testl	%r14d, %r14d
	jz	2f
	movq	%r12, %rsi
	movq	%r15, %rdi
	call	match_prefix
	testq	%rax, %rax
	jnz	9f
	movzbl	(%r12), %eax
2:	xorl	%r14d, %r14d
	cmpb	$' ', %al
	je	3f
	cmpb	$'\t', %al
	je	3f
	cmpb	$'\n', %al
	jne	4f
3:	movl	$1, %r14d
4:	incq	%r12
	decl	%r13d
	jnz	1b
8:	xorl	%eax, %eax
9:	ret

/* rax points just after `probe.exit=`. */
exit_value_at_rax:
	movq	%rax, %r12
	movq	%r12, %rsi
	movl	$str_poweroff, %edi
	call	match_word
	testq	%rax, %rax
	jz	1f
	movb	$EXIT_POWEROFF, exit_mode
	ret
1:	movq	%r12, %rsi
	movl	$str_reset, %edi
	call	match_word
	testq	%rax, %rax
	jz	2f
	movb	$EXIT_RESET, exit_mode
	ret
2:	movq	%r12, %rsi
	movl	$str_panic, %edi
	call	match_word
	testq	%rax, %rax
	jz	3f
	movb	$EXIT_PANIC, exit_mode
	ret
3:	movq	%r12, %rsi
	movl	$str_triple, %edi
	call	match_word
	testq	%rax, %rax
	jz	4f
	movb	$EXIT_TRIPLE, exit_mode
	ret
4:	movq	%r12, %rsi
	movl	$str_hang, %edi
	call	match_word
	testq	%rax, %rax
	jz	5f
	movb	$EXIT_HANG, exit_mode
	ret
5:	movq	%r12, %rsi
	movl	$str_debug_eq, %edi
	call	match_prefix
	testq	%rax, %rax
	jz	bad_exit_value
	/* debug=N: one or more decimal digits, value 0..255, then the end of the word. */
	movq	%rax, %rsi
	xorl	%ecx, %ecx
	xorl	%r8d, %r8d
6:	movzbl	(%rsi), %eax
	subl	$'0', %eax
	cmpl	$9, %eax
	ja	7f
	imull	$10, %ecx, %ecx
	addl	%eax, %ecx
	cmpl	$255, %ecx
	ja	bad_debug_value
	incq	%rsi
	incl	%r8d
	jmp	6b
7:	testl	%r8d, %r8d
	jz	bad_debug_value
	movzbl	(%rsi), %eax
	call	is_word_end
	testl	%eax, %eax
	jz	bad_debug_value
	movb	$EXIT_DEBUG, exit_mode
	movb	%cl, exit_value
	ret
bad_debug_value:
	FAIL	cmdline, "probe.exit=debug=N needs a decimal N from 0 to 255"
bad_exit_value:
	FAIL	cmdline, "unknown probe.exit= value: use poweroff, reset, panic, debug=N, triple or hang"

/* match_prefix(rsi = text, rdi = NUL-terminated prefix): rax = text after it, or 0. */
match_prefix:
1:	movzbl	(%rdi), %eax
	testl	%eax, %eax
	jz	2f
	cmpb	(%rsi), %al
	jne	3f
	incq	%rsi
	incq	%rdi
	jmp	1b
2:	movq	%rsi, %rax
	ret
3:	xorl	%eax, %eax
	ret

/* match_word(rsi, rdi): as match_prefix, and the word must end right after. */
match_word:
	call	match_prefix
	testq	%rax, %rax
	jz	1f
	movq	%rax, %rsi
	movzbl	(%rsi), %eax
	call	is_word_end
	testl	%eax, %eax
	jz	1f
	movq	%rsi, %rax
	ret
1:	xorl	%eax, %eax
	ret

/* is_word_end(eax = byte): eax = 1 for NUL, space, tab or newline, else 0. */
is_word_end:
	testl	%eax, %eax
	jz	1f
	cmpl	$' ', %eax
	je	1f
	cmpl	$'\t', %eax
	je	1f
	cmpl	$'\n', %eax
	je	1f
	xorl	%eax, %eax
	ret
1:	movl	$1, %eax
	ret

/* ------------------------------------------------------------------------------------ */
/* memory map                                                                            */
/* ------------------------------------------------------------------------------------ */
check_memory:
	movq	$0, mem_total
	movl	$0, mem_regions
	movb	$0, mem_low_ok
	call	load_boot_ptr
	DISPATCH_PROTO
1:	/* Linux e820: count at +0x1E8, 20-byte entries at +0x2D0. */
	movzbl	0x1e8(%rbx), %r12d
	cmpl	$E820_MAX, %r12d
	jbe	4f
	movl	$E820_MAX, %r12d
4:	leaq	0x2d0(%rbx), %r13
5:	testl	%r12d, %r12d
	jz	memory_done
	movq	(%r13), %rdi
	movq	8(%r13), %rsi
	movl	16(%r13), %edx
	call	account_region
	addq	$20, %r13
	decl	%r12d
	jmp	5b
2:	/* PVH: version >= 1, memmap_paddr (+40), memmap_entries (+48), 24-byte entries. */
	movl	4(%rbx), %eax
	testl	%eax, %eax
	jnz	6f
	FAIL	memory, "hvm_start_info version 0 has no memory map"
6:	movl	48(%rbx), %r12d
	movq	40(%rbx), %r13
	movq	%r13, %rax
	shrq	$32, %rax
	jz	7f
	FAIL_HEX memory, "PVH memory map is above 4 GiB: ", %r13
7:	cmpl	$MEMMAP_MAX, %r12d
	jbe	8f
	movl	$MEMMAP_MAX, %r12d
8:	testl	%r12d, %r12d
	jz	memory_done
	movq	(%r13), %rdi
	movq	8(%r13), %rsi
	movl	16(%r13), %edx
	call	account_region
	addq	$24, %r13
	decl	%r12d
	jmp	8b
3:	/* Multiboot MEM_MAP: mmap_length (+44), mmap_addr (+48), size-prefixed entries. */
	movl	48(%rbx), %r13d
	movl	44(%rbx), %r14d
	addq	%r13, %r14		/* end of the map */
	movl	$MEMMAP_MAX, %r12d
9:	leaq	24(%r13), %rax
	cmpq	%r14, %rax
	ja	memory_done
	movq	4(%r13), %rdi
	movq	12(%r13), %rsi
	movl	20(%r13), %edx
	call	account_region
	movl	(%r13), %eax
	addq	%rax, %r13
	addq	$4, %r13
	decl	%r12d
	jnz	9b
memory_done:
	cmpb	$0, mem_low_ok
	jne	1f
	FAIL	memory, "no available (type 1) region contains 0x100000"
1:	PUTS	"probe: memory total_kib="
	movq	mem_total, %rdi
	shrq	$10, %rdi
	call	put_dec
	PUTS	" regions="
	movl	mem_regions, %edi
	call	put_dec
	PUTC	'\n'
	ret

/* account_region(rdi = base, rsi = length, edx = type): sum type-1 regions. */
account_region:
	cmpl	$1, %edx
	jne	1f
	addq	%rsi, mem_total
	incl	mem_regions
	movl	$0x100000, %eax
	cmpq	%rax, %rdi
	ja	1f
	subq	%rdi, %rax		/* 0x100000 - base */
	cmpq	%rsi, %rax
	jae	1f
	movb	$1, mem_low_ok
1:	ret

/* ------------------------------------------------------------------------------------ */
/* initrd                                                                                */
/* ------------------------------------------------------------------------------------ */
check_initrd:
	call	load_boot_ptr
	xorl	%r12d, %r12d		/* address */
	xorl	%r13d, %r13d		/* size, 0 = none */
	DISPATCH_PROTO
1:	/* Linux: ramdisk_image/size (+0x218/+0x21C), high halves at +0xC0/+0xC4. */
	movl	0x218(%rbx), %r12d
	movl	0xc0(%rbx), %eax
	shlq	$32, %rax
	orq	%rax, %r12
	movl	0x21c(%rbx), %r13d
	movl	0xc4(%rbx), %eax
	shlq	$32, %rax
	orq	%rax, %r13
	testq	%r12, %r12
	jnz	initrd_found
	xorl	%r13d, %r13d
	jmp	initrd_found
2:	/* PVH: first entry of the module list. */
	movl	12(%rbx), %eax
	testl	%eax, %eax
	jz	initrd_found
	movq	16(%rbx), %rax
	testq	%rax, %rax
	jz	initrd_found
	movq	%rax, %rcx
	shrq	$32, %rcx
	jz	4f
	FAIL_HEX initrd, "PVH module list is above 4 GiB: ", %rax
4:	movq	(%rax), %r12
	movq	8(%rax), %r13
	jmp	initrd_found
3:	/* Multiboot: MODS flag (bit 3), mods_count (+20), mods_addr (+24). */
	testl	$0x8, (%rbx)
	jz	initrd_found
	movl	20(%rbx), %eax
	testl	%eax, %eax
	jz	initrd_found
	movl	24(%rbx), %eax
	movl	(%rax), %r12d
	movl	4(%rax), %ecx
	cmpl	%r12d, %ecx
	jae	5f
	FAIL_HEX initrd, "multiboot module ends below its start: mod_end=", %rcx
5:	subl	%r12d, %ecx
	movl	%ecx, %r13d
initrd_found:
	testq	%r13, %r13
	jnz	1f
	PUTS	"probe: initrd none\n"
	ret
1:	movq	%r12, %rax
	addq	%r13, %rax
	jc	2f
	decq	%rax
	shrq	$32, %rax
	jz	3f
2:	FAIL_HEX initrd, "initrd does not end below 4 GiB: start=", %r12
3:	/* FNV-1a, 32 bits. */
	movl	$0x811c9dc5, %eax
	movq	%r12, %rsi
	movq	%r13, %rcx
4:	movzbl	(%rsi), %edx
	xorl	%edx, %eax
	imull	$0x01000193, %eax, %eax
	incq	%rsi
	decq	%rcx
	jnz	4b
	movl	%eax, %r14d
	PUTS	"probe: initrd size="
	movq	%r13, %rdi
	call	put_dec
	PUTS	" fnv1a=0x"
	movl	%r14d, %edi
	movl	$8, %esi
	call	put_hex
	PUTC	'\n'
	ret

/* ------------------------------------------------------------------------------------ */
/* CPUID                                                                                 */
/* ------------------------------------------------------------------------------------ */
check_cpuid:
	movl	$0x40000000, %eax
	xorl	%ecx, %ecx
	cpuid
	movl	%eax, %r12d
	cmpl	$0x40000010, %eax
	jae	1f
	FAIL_HEX cpuid, "leaf 0x40000000 eax is below 0x40000010: eax=", %r12
1:	movl	$0x40000010, %eax
	xorl	%ecx, %ecx
	cpuid
	movl	%eax, %r13d
	testl	%eax, %eax
	jnz	2f
	FAIL	cpuid, "leaf 0x40000010 reports a TSC frequency of 0 kHz"
2:	movl	$1, %eax
	xorl	%ecx, %ecx
	cpuid
	shrl	$30, %ecx
	andl	$1, %ecx
	movl	%ecx, %r14d		/* rdrand */
	xorl	%r15d, %r15d		/* rdseed */
	xorl	%eax, %eax
	xorl	%ecx, %ecx
	cpuid
	cmpl	$7, %eax
	jb	3f
	movl	$7, %eax
	xorl	%ecx, %ecx
	cpuid
	shrl	$18, %ebx
	andl	$1, %ebx
	movl	%ebx, %r15d
3:	PUTS	"probe: cpuid tsc_khz="
	movl	%r13d, %edi
	call	put_dec
	PUTS	" hv_max=0x"
	movl	%r12d, %edi
	xorl	%esi, %esi
	call	put_hex
	PUTS	" rdrand="
	movl	%r14d, %edi
	call	put_dec
	PUTS	" rdseed="
	movl	%r15d, %edi
	call	put_dec
	PUTC	'\n'
	ret

/* ------------------------------------------------------------------------------------ */
/* RTC                                                                                   */
/* ------------------------------------------------------------------------------------ */
check_rtc:
	movl	$RTC_UIP_RETRIES, %r12d
1:	movb	$0x0a, %al
	outb	%al, $RTC_INDEX_PORT
	inb	$RTC_DATA_PORT, %al
	movzbl	%al, %r13d
	testb	$0x80, %al
	jz	2f
	decl	%r12d
	jnz	1b
	FAIL_HEX rtc, "update in progress (UIP) stayed set for 1000 reads: status_a=", %r13
2:	movl	$0x00, %edi
	call	rtc_read
	movl	%eax, %r14d		/* seconds */
	movl	$0x02, %edi
	call	rtc_read
	movl	%eax, %r15d		/* minutes */
	movl	$0x04, %edi
	call	rtc_read
	movl	%eax, %ebx		/* hours */
	PUTS	"probe: rtc status_a=0x"
	movl	%r13d, %edi
	movl	$2, %esi
	call	put_hex
	PUTS	" uip=0 time="
	movl	%ebx, %edi
	movl	$2, %esi
	call	put_hex
	PUTC	':'
	movl	%r15d, %edi
	movl	$2, %esi
	call	put_hex
	PUTC	':'
	movl	%r14d, %edi
	movl	$2, %esi
	call	put_hex
	PUTC	'\n'
	ret

/* rtc_read(edi = register): eax = its value (BCD for the time registers). */
rtc_read:
	movl	%edi, %eax
	outb	%al, $RTC_INDEX_PORT
	inb	$RTC_DATA_PORT, %al
	movzbl	%al, %eax
	ret

	.section .rodata.probe_str,"a"
str_probe_exit:
	.asciz	"probe.exit="
str_probe_touch:
	.asciz	"probe.touch="
str_poweroff:
	.asciz	"poweroff"
str_reset:
	.asciz	"reset"
str_panic:
	.asciz	"panic"
str_triple:
	.asciz	"triple"
str_hang:
	.asciz	"hang"
str_debug_eq:
	.asciz	"debug="
