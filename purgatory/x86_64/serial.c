// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Polled output on an 8250/16550 UART at an I/O port base.  The purgatory does not
 * reprogram the line (speed, framing): it writes with whatever settings the crashed
 * kernel's console left, which are the ones the capture kernel's console uses too.
 * A missing UART reads as 0xff, which has "transmitter empty" set, so the loop never
 * hangs; a stuck one is bounded by the spin limit.
 */
#include "purgatory.h"

#define UART_THR 0       /* transmit holding register (DLAB = 0) */
#define UART_LSR 5       /* line status register */
#define UART_LSR_THRE 0x20 /* transmit holding register empty */
#define SPIN_LIMIT 100000u

static inline void outb(uint16_t port, uint8_t value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t value;

	__asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

static void serial_putc(uint16_t base, char c)
{
	for (unsigned spin = 0; spin < SPIN_LIMIT; spin++) {
		if (inb((uint16_t)(base + UART_LSR)) & UART_LSR_THRE)
			break;
	}
	outb((uint16_t)(base + UART_THR), (uint8_t)c);
}

void serial_write(uint64_t port, const char *s)
{
	if (port == 0 || port > 0xfff8)
		return;
	while (*s)
		serial_putc((uint16_t)port, *s++);
}
