/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * kdumpd's x86_64 purgatory: the header the Python side patches before every load
 * (docs/purgatory.md).  One definition shared by the freestanding build and by the
 * host-compiled tests, which check these offsets against kdumpd.arch.x86_64.purgatory.
 */
#ifndef KDUMPD_PURGATORY_H
#define KDUMPD_PURGATORY_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(hidden)

#define PURGATORY_MAGIC "KDPURG\0\1"
#define PURGATORY_VERSION 1u
#define PURGATORY_HEADER_SIZE 0x400u
#define PURGATORY_MAX_REGIONS 15u

/* region flags */
#define PURGATORY_REGION_SKIP 0x1u           /* not checked at all */
#define PURGATORY_REGION_ELF_STRUCTURAL 0x2u /* ELF64 core header shape, no digest */

/* policy bits */
#define PURGATORY_POLICY_RESET 0x1u  /* on a mismatch reset the machine, else halt */
#define PURGATORY_POLICY_SERIAL 0x2u /* on a mismatch print one line on the UART */

struct purgatory_region {
	uint64_t start;     /* physical address (identity-mapped at entry) */
	uint64_t len;       /* bytes to check */
	uint8_t sha256[32]; /* SHA-256 of [start, start + len) */
	uint32_t flags;     /* PURGATORY_REGION_* */
	uint32_t reserved;
};

struct purgatory_header {
	uint8_t jump[8];  /* jmp to the code at PURGATORY_HEADER_SIZE */
	uint8_t magic[8]; /* PURGATORY_MAGIC */
	uint32_t version;
	uint32_t header_size;
	uint32_t nregions;
	uint32_t policy;
	uint64_t boot_params;  /* physical address, goes to %rsi */
	uint64_t kernel_entry; /* 64-bit entry: kernel load address + 0x200 */
	uint64_t serial_port;  /* 8250 I/O base, 0 = silent */
	uint32_t memsz;        /* bytes the segment needs, bss and stack included */
	uint32_t reserved;
	struct purgatory_region regions[PURGATORY_MAX_REGIONS];
};

_Static_assert(sizeof(struct purgatory_region) == 56, "region is 56 bytes");
_Static_assert(offsetof(struct purgatory_header, magic) == 0x08, "magic at 0x08");
_Static_assert(offsetof(struct purgatory_header, version) == 0x10, "version at 0x10");
_Static_assert(offsetof(struct purgatory_header, nregions) == 0x18, "nregions at 0x18");
_Static_assert(offsetof(struct purgatory_header, boot_params) == 0x20, "boot_params at 0x20");
_Static_assert(offsetof(struct purgatory_header, kernel_entry) == 0x28, "entry at 0x28");
_Static_assert(offsetof(struct purgatory_header, serial_port) == 0x30, "serial at 0x30");
_Static_assert(offsetof(struct purgatory_header, memsz) == 0x38, "memsz at 0x38");
_Static_assert(offsetof(struct purgatory_header, regions) == 0x40, "regions at 0x40");
_Static_assert(sizeof(struct purgatory_header) <= PURGATORY_HEADER_SIZE, "header fits");

/* Outcome of purgatory_verify(). */
enum purgatory_verdict {
	PURGATORY_OK = 0,
	PURGATORY_DIGEST_MISMATCH = 1,  /* *region: the region whose SHA-256 differs */
	PURGATORY_BAD_STRUCTURE = 2,    /* *region: not an ELF64 core header */
	PURGATORY_BAD_HEADER = 3,       /* nregions too large or no kernel entry */
};

/* purgatory.c */
enum purgatory_verdict purgatory_verify(const struct purgatory_header *h, uint32_t *region);
int purgatory_elfcorehdr_ok(const uint8_t *p, uint64_t len);
void purgatory_main(const struct purgatory_header *h);

/* serial.c (the host tests provide their own) */
void serial_write(uint64_t port, const char *s);

/* entry.S (the host tests provide their own): reset or halt, never returns */
__attribute__((noreturn)) void purgatory_stop(uint32_t policy);

#pragma GCC visibility pop

#endif
