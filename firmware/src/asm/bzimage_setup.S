/*
 * bzImage wrapper of the probe: boot sector and setup header (Linux boot protocol
 * 2.15, Documentation/arch/x86/boot.rst), then the protected-mode payload, included
 * from probe-bzimage-payload.bin (found through the assembler's -I path).
 *
 * There is no real-mode setup code: a loader must use the 64-bit entry at payload
 * offset 0x200 (XLF_KERNEL_64). Real-mode entry at 0x200 just halts.
 */
#define SETUP_SECTS     1		/* setup = boot sector + 1 sector = 1 KiB */
#define LOAD_ADDRESS    0x100000
#define INIT_SIZE       0x20000		/* probe.ld asserts the probe fits */
#define CMDLINE_SIZE    0xffff		/* 64 KiB - 1, docs/GUEST_INTERFACE.md */
#define LOADED_HIGH     0x01
#define XLF_KERNEL_64   0x0001

	.section .bzimage,"a"
bzimage_start:
	/* Boot sector: not bootable from a BIOS. */
	.byte	0xfa, 0xf4, 0xeb, 0xfd	/* cli; hlt; jmp .-1 (any mode) */
	.org	0x1f1, 0
setup_sects:		.byte	SETUP_SECTS
root_flags:		.word	0
syssize:		.long	(payload_end - payload_start + 15) / 16
ram_size:		.word	0
vid_mode:		.word	0xffff		/* NORMAL_VGA */
root_dev:		.word	0
boot_flag:		.word	0xaa55
	/* 0x200 */
jump:			.byte	0xeb, start_of_setup - setup_header_end_marker
setup_header_end_marker:
header:			.ascii	"HdrS"
version:		.word	0x020f
realmode_swtch:		.long	0
start_sys_seg:		.word	0x1000
kernel_version:		.word	kernel_version_str - bzimage_start - 0x200
type_of_loader:		.byte	0
loadflags:		.byte	LOADED_HIGH
setup_move_size:	.word	0x8000
code32_start:		.long	LOAD_ADDRESS
ramdisk_image:		.long	0
ramdisk_size:		.long	0
bootsect_kludge:	.long	0
heap_end_ptr:		.word	0
ext_loader_ver:		.byte	0
ext_loader_type:	.byte	0
cmd_line_ptr:		.long	0
initrd_addr_max:	.long	0x7fffffff
kernel_alignment:	.long	LOAD_ADDRESS
relocatable_kernel:	.byte	0
min_alignment:		.byte	20		/* log2(kernel_alignment) */
xloadflags:		.word	XLF_KERNEL_64
cmdline_size:		.long	CMDLINE_SIZE
hardware_subarch:	.long	0
hardware_subarch_data:	.quad	0
payload_offset:		.long	0		/* no compressed vmlinux inside */
payload_length:		.long	0
setup_data:		.quad	0
pref_address:		.quad	LOAD_ADDRESS
init_size:		.long	INIT_SIZE
handover_offset:	.long	0
kernel_info_offset:	.long	0
start_of_setup:
	.byte	0xfa, 0xf4, 0xeb, 0xfd	/* cli; hlt; jmp .-1 (real mode) */
kernel_version_str:
	.asciz	"edgevisor-probe bzimage"

	.org	(SETUP_SECTS + 1) * 512, 0
payload_start:
	.incbin	"probe-bzimage-payload.bin"
payload_end:
