// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Host-side harness for purgatory/x86_64/{purgatory,sha256}.c: the tests build these
 * very files with the host compiler into a shared object and call them with ctypes.
 * The two things that touch hardware are stand-ins here: serial_write() records the
 * line, purgatory_stop() records the policy and longjmps back to host_main().
 */
#include <setjmp.h>
#include <string.h>

#include "purgatory.h"
#include "sha256.h"

#define EXPORT __attribute__((visibility("default")))

static jmp_buf stop_jump;
static char serial_line[512];
static uint64_t serial_port;
static uint32_t stop_policy;

void serial_write(uint64_t port, const char *s)
{
	size_t used = strlen(serial_line);
	size_t n = strlen(s);

	if (n > sizeof(serial_line) - 1 - used)
		n = sizeof(serial_line) - 1 - used;
	memcpy(serial_line + used, s, n);
	serial_line[used + n] = 0;
	serial_port = port;
}

void purgatory_stop(uint32_t policy)
{
	stop_policy = policy;
	longjmp(stop_jump, 1);
}

EXPORT void host_sha256(const void *data, size_t len, uint8_t *out)
{
	sha256(data, len, out);
}

/* the same digest fed through sha256_update() in pieces of `chunk` bytes */
EXPORT void host_sha256_chunked(const uint8_t *data, size_t len, size_t chunk, uint8_t *out)
{
	struct sha256_ctx ctx;

	sha256_init(&ctx);
	while (len) {
		size_t n = len < chunk ? len : chunk;

		sha256_update(&ctx, data, n);
		data += n;
		len -= n;
	}
	sha256_final(&ctx, out);
}

EXPORT int host_verify(const struct purgatory_header *h, uint32_t *region)
{
	return (int)purgatory_verify(h, region);
}

EXPORT int host_elfcorehdr_ok(const uint8_t *p, uint64_t len)
{
	return purgatory_elfcorehdr_ok(p, len);
}

/*
 * Runs purgatory_main(): -1 if it returned (entry.S would start the kernel), else the
 * policy purgatory_stop() got.  The serial line and port are copied out.
 */
EXPORT int host_main(const struct purgatory_header *h, char *line, size_t size, uint64_t *port)
{
	int result = -1;

	serial_line[0] = 0;
	serial_port = 0;
	if (setjmp(stop_jump) == 0)
		purgatory_main(h);
	else
		result = (int)stop_policy;
	strncpy(line, serial_line, size - 1);
	line[size - 1] = 0;
	*port = serial_port;
	return result;
}

#define FIELD(name, member) \
	if (strcmp(field, name) == 0) \
		return offsetof(struct purgatory_header, member)
#define REGION_FIELD(name, member) \
	if (strcmp(field, name) == 0) \
		return offsetof(struct purgatory_region, member)

/* offsetof/sizeof by name, (size_t)-1 for an unknown name */
EXPORT size_t host_layout(const char *field)
{
	if (strcmp(field, "sizeof header") == 0)
		return sizeof(struct purgatory_header);
	if (strcmp(field, "sizeof region") == 0)
		return sizeof(struct purgatory_region);
	if (strcmp(field, "header size") == 0)
		return PURGATORY_HEADER_SIZE;
	if (strcmp(field, "max regions") == 0)
		return PURGATORY_MAX_REGIONS;
	FIELD("magic", magic);
	FIELD("version", version);
	FIELD("header_size", header_size);
	FIELD("nregions", nregions);
	FIELD("policy", policy);
	FIELD("boot_params", boot_params);
	FIELD("kernel_entry", kernel_entry);
	FIELD("serial_port", serial_port);
	FIELD("memsz", memsz);
	FIELD("regions", regions);
	REGION_FIELD("region.start", start);
	REGION_FIELD("region.len", len);
	REGION_FIELD("region.sha256", sha256);
	REGION_FIELD("region.flags", flags);
	return (size_t)-1;
}
