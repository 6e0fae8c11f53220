/* SPDX-License-Identifier: GPL-2.0-or-later */
/* SHA-256 as FIPS 180-4 specifies it: plain C, no SIMD, no libc. */
#ifndef KDUMPD_SHA256_H
#define KDUMPD_SHA256_H

#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(hidden)

#define SHA256_DIGEST_SIZE 32
#define SHA256_BLOCK_SIZE 64

struct sha256_ctx {
	uint32_t state[8];
	uint64_t bytes;                  /* message length so far */
	uint8_t block[SHA256_BLOCK_SIZE]; /* partial block */
};

void sha256_init(struct sha256_ctx *ctx);
void sha256_update(struct sha256_ctx *ctx, const void *data, size_t len);
void sha256_final(struct sha256_ctx *ctx, uint8_t out[SHA256_DIGEST_SIZE]);
void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_SIZE]);

#pragma GCC visibility pop

#endif
