/*
 * Shared constants of the edgevisor boot probe (see docs/GUEST_INTERFACE.md).
 * Preprocessor definitions only: included by every .S file of the probe.
 */
#ifndef EDGEVISOR_PROBE_H
#define EDGEVISOR_PROBE_H

/* Protocol ids stored in `proto` by each entry point. */
#define PROTO_LINUX64   0
#define PROTO_PVH       1
#define PROTO_MULTIBOOT 2
#define PROTO_BZIMAGE   3

/* I/O ports. */
#define COM1_DATA        0x3f8
#define COM1_LSR         0x3fd
#define LSR_THRE         0x20
#define SERIAL_POLL_MAX  100000
#define BOOT_TIMER_PORT  0x440
#define DEBUG_EXIT_PORT  0x501
#define PVPANIC_PORT     0x505
#define ACPI_PM1A_CNT    0x604
#define ACPI_SLP_EN      0x2000
#define I8042_CMD_PORT   0x64
#define I8042_RESET      0xfe
#define RTC_INDEX_PORT   0x70
#define RTC_DATA_PORT    0x71

/* Values written to the boot timer: first at entry, second after PASS. */
#define BOOT_STAMP_ENTRY 1
#define BOOT_STAMP_PASS  2

/* Segment selectors of the probe's own GDT (same layout as the VMM's GDT at 0x500). */
#define GDT_CODE32 0x08
#define GDT_CODE64 0x10
#define GDT_DATA   0x18

/* Control registers and MSRs. */
#define CR0_PE    0x00000001
#define CR0_PG    0x80000000
#define CR4_PAE   0x00000020
#define MSR_EFER  0xc0000080
#define EFER_LME  0x00000100
#define EFER_LMA  0x00000400

/* Page table entry bits. */
#define PTE_PRESENT_RW 0x003
#define PDE_2M_PAGE    0x083

/* Boot protocol magics. */
#define LINUX_BOOT_FLAG      0xaa55
#define LINUX_HDRS_MAGIC     0x53726448
#define PVH_START_MAGIC      0x336ec578
#define MULTIBOOT_HDR_MAGIC  0x1badb002
#define MULTIBOOT_HDR_FLAGS  0x00000003
#define MULTIBOOT_BOOT_MAGIC 0x2badb002

/* Ways to end the VM after PASS (probe.exit= on the command line). */
#define EXIT_POWEROFF 0
#define EXIT_RESET    1
#define EXIT_PANIC    2
#define EXIT_DEBUG    3
#define EXIT_TRIPLE   4
#define EXIT_HANG     5

/* probe.touch=N writes one quadword per 4 KiB page from here on (16 MiB). */
#define TOUCH_START   0x1000000

/* Limits on what the probe reads from guest-visible boot data. */
#define CMDLINE_SCAN_MAX  65535
#define CMDLINE_PRINT_MAX 200
#define E820_MAX          128
#define MEMMAP_MAX        1024
#define RTC_UIP_RETRIES   1000

#endif
