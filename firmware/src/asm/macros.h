/*
 * Assembler macros shared by the probe's 64-bit code (gas syntax, AT&T operands).
 * Strings go to .rodata.probe_str; every macro uses \@ for unique local labels.
 */
#ifndef EDGEVISOR_PROBE_MACROS_H
#define EDGEVISOR_PROBE_MACROS_H

/* Print a literal string on COM1. Clobbers rax, rcx, rdx, rsi, rdi. */
.macro PUTS text:req
	.pushsection .rodata.probe_str,"a"
.Lputs_str\@:
	.asciz "\text"
	.popsection
	movl	$.Lputs_str\@, %esi
	call	puts
.endm

/* Print one character on COM1. Clobbers rax, rcx, rdx, rdi. */
.macro PUTC char:req
	movl	$\char, %edi
	call	putc
.endm

/* Report `PROBE FAIL protocol=<p> check=<check> <detail>` and end the VM. */
.macro FAIL check:req, detail:req
	.pushsection .rodata.probe_str,"a"
.Lfail_check\@:
	.asciz "\check"
.Lfail_detail\@:
	.asciz "\detail"
	.popsection
	movl	$.Lfail_check\@, %edi
	movl	$.Lfail_detail\@, %esi
	jmp	fail
.endm

/* As FAIL, with the 64-bit value in `value` appended in hex (0x...). */
.macro FAIL_HEX check:req, detail:req, value:req
	.pushsection .rodata.probe_str,"a"
.Lfailh_check\@:
	.asciz "\check"
.Lfailh_detail\@:
	.asciz "\detail"
	.popsection
	movq	\value, %rdx
	movl	$.Lfailh_check\@, %edi
	movl	$.Lfailh_detail\@, %esi
	jmp	fail_hex
.endm

#endif
