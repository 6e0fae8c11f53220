// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The checks the purgatory makes between the crashed kernel and the capture kernel
 * (docs/purgatory.md).  entry.S calls purgatory_main() on its own stack with its own
 * GDT loaded; when it returns, every region was verified and entry.S starts the
 * kernel.  On any failure it never returns: one line on the UART, then reset or halt.
 *
 * Pure C with no global state, so the tests compile this file for the host and run
 * purgatory_verify() and purgatory_main() against headers in ordinary memory.
 */
#include "purgatory.h"
#include "sha256.h"

/* ELF64 core header fields the structural check reads (ELF gABI, "ELF Header"). */
#define EHDR_SIZE 64u
#define PHDR_SIZE 56u
#define EI_CLASS 4
#define EI_DATA 5
#define ELFCLASS64 2
#define ELFDATA2LSB 1
#define ET_CORE 4

static uint16_t le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/*
 * The shape of an x86_64 elfcorehdr, for a region that is rewritten behind our back
 * (a 6.6+ kernel updating it in place on hotplug) and so cannot carry a digest:
 * \x7fELF, 64-bit little-endian, ET_CORE, program headers right after the ELF header
 * at 56 bytes each, and all of them inside the region.
 */
int purgatory_elfcorehdr_ok(const uint8_t *p, uint64_t len)
{
	if (len < EHDR_SIZE)
		return 0;
	if (p[0] != 0x7f || p[1] != 'E' || p[2] != 'L' || p[3] != 'F')
		return 0;
	if (p[EI_CLASS] != ELFCLASS64 || p[EI_DATA] != ELFDATA2LSB)
		return 0;
	if (le16(p + 16) != ET_CORE)        /* e_type */
		return 0;
	if (le64(p + 32) != EHDR_SIZE)      /* e_phoff */
		return 0;
	if (le16(p + 54) != PHDR_SIZE)      /* e_phentsize */
		return 0;
	return EHDR_SIZE + (uint64_t)le16(p + 56) * PHDR_SIZE <= len; /* e_phnum */
}

static int same_digest(const uint8_t *a, const uint8_t *b)
{
	uint8_t diff = 0;

	for (unsigned i = 0; i < SHA256_DIGEST_SIZE; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

enum purgatory_verdict purgatory_verify(const struct purgatory_header *h, uint32_t *region)
{
	uint8_t digest[SHA256_DIGEST_SIZE];

	*region = 0;
	if (h->nregions > PURGATORY_MAX_REGIONS || h->kernel_entry == 0)
		return PURGATORY_BAD_HEADER;
	for (uint32_t i = 0; i < h->nregions; i++) {
		const struct purgatory_region *r = &h->regions[i];
		const uint8_t *p = (const uint8_t *)(uintptr_t)r->start;

		*region = i;
		if (r->flags & PURGATORY_REGION_SKIP)
			continue;
		if (r->flags & PURGATORY_REGION_ELF_STRUCTURAL) {
			if (!purgatory_elfcorehdr_ok(p, r->len))
				return PURGATORY_BAD_STRUCTURE;
			continue;
		}
		sha256(p, (size_t)r->len, digest);
		if (!same_digest(digest, r->sha256))
			return PURGATORY_DIGEST_MISMATCH;
	}
	return PURGATORY_OK;
}

/* "12" for 12: the region index in the message (at most 10 digits). */
static char *put_u32(char *out, uint32_t v)
{
	char tmp[10];
	unsigned n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*out++ = tmp[--n];
	return out;
}

/* "0x3b000200" for 0x3b000200 */
static char *put_hex(char *out, uint64_t v)
{
	int shift = 60;

	*out++ = '0';
	*out++ = 'x';
	while (shift > 0 && !((v >> shift) & 0xf))
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		*out++ = "0123456789abcdef"[(v >> shift) & 0xf];
	return out;
}

static char *put_str(char *out, const char *s)
{
	while (*s)
		*out++ = *s++;
	return out;
}

/*
 * With policy bit1 and a port, one line (CR LF terminated):
 *   kdumpd purgatory: 4 regions ok, starting the capture kernel at 0x3b000200
 * or, never jumping:
 *   kdumpd purgatory: region N sha256 mismatch, capture kernel not started, resetting
 *   kdumpd purgatory: region N is not an ELF64 core header, capture kernel not started, halting
 *   kdumpd purgatory: bad header (nregions N), capture kernel not started, resetting
 */
void purgatory_main(const struct purgatory_header *h)
{
	uint32_t region;
	enum purgatory_verdict verdict = purgatory_verify(h, &region);
	int say = h->serial_port && (h->policy & PURGATORY_POLICY_SERIAL);
	char line[128];
	char *p = line;

	if (verdict == PURGATORY_OK) {
		if (say) {
			p = put_str(p, "kdumpd purgatory: ");
			p = put_u32(p, h->nregions);
			p = put_str(p, h->nregions == 1 ? " region ok" : " regions ok");
			p = put_str(p, ", starting the capture kernel at ");
			p = put_hex(p, h->kernel_entry);
			p = put_str(p, "\r\n");
			*p = 0;
			serial_write(h->serial_port, line);
		}
		return;
	}
	if (say) {
		p = put_str(p, "kdumpd purgatory: ");
		if (verdict == PURGATORY_BAD_HEADER) {
			p = put_str(p, "bad header (nregions ");
			p = put_u32(p, h->nregions);
			p = put_str(p, h->kernel_entry ? ")" : ", no kernel entry)");
		} else {
			p = put_str(p, "region ");
			p = put_u32(p, region);
			p = put_str(p, verdict == PURGATORY_DIGEST_MISMATCH
					       ? " sha256 mismatch"
					       : " is not an ELF64 core header");
		}
		p = put_str(p, ", capture kernel not started, ");
		p = put_str(p, (h->policy & PURGATORY_POLICY_RESET) ? "resetting\r\n" : "halting\r\n");
		*p = 0;
		serial_write(h->serial_port, line);
	}
	purgatory_stop(h->policy);
}
