// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * SHA-256 written from FIPS 180-4 (Secure Hash Standard, NIST, August 2015):
 * §4.1.2 functions, §4.2.2 constants, §5.1.1 padding, §5.3.3 initial value,
 * §6.2.2 computation.  Byte-at-a-time loads and stores, so it is alignment- and
 * endian-agnostic and needs no SIMD or libc.  The tests compile this same file for
 * the host and compare it with Python's hashlib.
 */
#include "sha256.h"

/* §4.2.2: the first 32 bits of the fractional parts of the cube roots of the first
 * 64 primes. */
static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t rotr(uint32_t x, unsigned n)
{
	return (x >> n) | (x << (32 - n));
}

/* §4.1.2 (4.2)-(4.7) */
#define CH(x, y, z) (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BSIG0(x) (rotr((x), 2) ^ rotr((x), 13) ^ rotr((x), 22))
#define BSIG1(x) (rotr((x), 6) ^ rotr((x), 11) ^ rotr((x), 25))
#define SSIG0(x) (rotr((x), 7) ^ rotr((x), 18) ^ ((x) >> 3))
#define SSIG1(x) (rotr((x), 17) ^ rotr((x), 19) ^ ((x) >> 10))

static uint32_t load_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* §6.2.2: one 512-bit block.  The schedule is kept as a 16-word ring. */
static void compress(uint32_t state[8], const uint8_t *m)
{
	uint32_t w[16];
	uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
	uint32_t e = state[4], f = state[5], g = state[6], h = state[7];

	for (unsigned t = 0; t < 64; t++) {
		uint32_t wt;

		if (t < 16) {
			wt = load_be32(m + 4 * t);
		} else {
			wt = SSIG1(w[(t - 2) & 15]) + w[(t - 7) & 15] + SSIG0(w[(t - 15) & 15]) +
			     w[(t - 16) & 15];
		}
		w[t & 15] = wt;

		uint32_t t1 = h + BSIG1(e) + CH(e, f, g) + K[t] + wt;
		uint32_t t2 = BSIG0(a) + MAJ(a, b, c);

		h = g;
		g = f;
		f = e;
		e = d + t1;
		d = c;
		c = b;
		b = a;
		a = t1 + t2;
	}
	state[0] += a;
	state[1] += b;
	state[2] += c;
	state[3] += d;
	state[4] += e;
	state[5] += f;
	state[6] += g;
	state[7] += h;
}

void sha256_init(struct sha256_ctx *ctx)
{
	/* §5.3.3: fractional parts of the square roots of the first 8 primes */
	ctx->state[0] = 0x6a09e667;
	ctx->state[1] = 0xbb67ae85;
	ctx->state[2] = 0x3c6ef372;
	ctx->state[3] = 0xa54ff53a;
	ctx->state[4] = 0x510e527f;
	ctx->state[5] = 0x9b05688c;
	ctx->state[6] = 0x1f83d9ab;
	ctx->state[7] = 0x5be0cd19;
	ctx->bytes = 0;
}

void sha256_update(struct sha256_ctx *ctx, const void *data, size_t len)
{
	const uint8_t *p = data;
	size_t fill = (size_t)(ctx->bytes % SHA256_BLOCK_SIZE);

	ctx->bytes += len;
	if (fill) {
		while (len && fill < SHA256_BLOCK_SIZE) {
			ctx->block[fill++] = *p++;
			len--;
		}
		if (fill < SHA256_BLOCK_SIZE)
			return;
		compress(ctx->state, ctx->block);
	}
	for (; len >= SHA256_BLOCK_SIZE; len -= SHA256_BLOCK_SIZE, p += SHA256_BLOCK_SIZE)
		compress(ctx->state, p);
	for (fill = 0; fill < len; fill++)
		ctx->block[fill] = p[fill];
}

void sha256_final(struct sha256_ctx *ctx, uint8_t out[SHA256_DIGEST_SIZE])
{
	/* §5.1.1: a 1 bit, zeros to 56 mod 64 bytes, then the bit length big-endian */
	uint64_t bits = ctx->bytes * 8;
	size_t fill = (size_t)(ctx->bytes % SHA256_BLOCK_SIZE);

	ctx->block[fill++] = 0x80;
	if (fill > SHA256_BLOCK_SIZE - 8) {
		while (fill < SHA256_BLOCK_SIZE)
			ctx->block[fill++] = 0;
		compress(ctx->state, ctx->block);
		fill = 0;
	}
	while (fill < SHA256_BLOCK_SIZE - 8)
		ctx->block[fill++] = 0;
	store_be32(ctx->block + 56, (uint32_t)(bits >> 32));
	store_be32(ctx->block + 60, (uint32_t)bits);
	compress(ctx->state, ctx->block);
	for (unsigned i = 0; i < 8; i++)
		store_be32(out + 4 * i, ctx->state[i]);
}

void sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_SIZE])
{
	struct sha256_ctx ctx;

	sha256_init(&ctx);
	sha256_update(&ctx, data, len);
	sha256_final(&ctx, out);
}
