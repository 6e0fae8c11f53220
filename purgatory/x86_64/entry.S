/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * kdumpd's x86_64 purgatory: header and entry (docs/purgatory.md).
 *
 * The kernel's relocate_kernel jumps to the first byte of this segment in long mode
 * on its identity map, IF = 0, with no usable GDT or IDT on kernels up to 6.14 and
 * with no SSE (CR4.OSFXSR clear).  The load address is not known when this is built,
 * so everything here is RIP-relative and the GDTR is filled in at run time.
 */
#define HEADER_SIZE	0x400
#define BOOT_CS		0x10	/* 64-bit code, the boot protocol's __BOOT_CS */
#define BOOT_DS		0x18	/* flat data, the boot protocol's __BOOT_DS */
#define OFF_BOOT_PARAMS	0x20
#define OFF_KERNEL_ENTRY 0x28
#define STACK_SIZE	8192

	.code64
	.section .head.text, "ax", @progbits

/* ---- header, patched by kdumpd.arch.x86_64.purgatory before every load ---- */
	.globl	purgatory_header
	.hidden	purgatory_header
purgatory_header:
	jmp	purgatory_start			/* near jmp: the segment never starts with \x7fELF */
	.org	0x08, 0xcc
	.ascii	"KDPURG"			/* magic */
	.byte	0, 1
	.long	1				/* version */
	.long	HEADER_SIZE			/* header size */
	.long	0				/* nregions */
	.long	3				/* policy: reset | serial */
	.quad	0				/* boot_params */
	.quad	0				/* kernel entry (0: never jump) */
	.quad	0x3f8				/* serial port (ttyS0) */
	.long	purgatory_memsz			/* set by the linker script */
	.long	0
	.fill	15 * 56, 1, 0			/* regions */
	.org	HEADER_SIZE, 0

/* ---- code ---- */
	.globl	purgatory_start
	.hidden	purgatory_start
purgatory_start:
	cli
	cld
	leaq	stack_end(%rip), %rsp

	/* GDTR {u16 limit; u64 base} on the new stack, base = where gdt really is */
	leaq	gdt(%rip), %rax
	pushq	%rax
	pushw	$(gdt_end - gdt - 1)
	lgdt	(%rsp)
	addq	$10, %rsp

	movl	$BOOT_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs

	/* far return to reload CS */
	leaq	1f(%rip), %rax
	pushq	$BOOT_CS
	pushq	%rax
	lretq
1:
	leaq	purgatory_header(%rip), %rdi
	call	purgatory_main			/* returns only when every region checked out */

	/* 64-bit boot protocol: %rsi = boot_params, the other GPRs 0, IF = DF = 0 */
	xorl	%eax, %eax
	xorl	%ebx, %ebx
	xorl	%ecx, %ecx
	xorl	%edx, %edx
	xorl	%edi, %edi
	xorl	%ebp, %ebp
	xorl	%r8d, %r8d
	xorl	%r9d, %r9d
	xorl	%r10d, %r10d
	xorl	%r11d, %r11d
	xorl	%r12d, %r12d
	xorl	%r13d, %r13d
	xorl	%r14d, %r14d
	xorl	%r15d, %r15d
	pushq	$0
	popfq
	movq	purgatory_header + OFF_BOOT_PARAMS(%rip), %rsi
	jmpq	*purgatory_header + OFF_KERNEL_ENTRY(%rip)

/*
 * void purgatory_stop(uint32_t policy): never returns.
 * policy bit0 set: reset through the chipset's reset control register (I/O 0xCF9:
 * "hard reset" armed, then the reset bit raised), and if the machine is still here a
 * triple fault (no IDT, then an invalid opcode).  Clear: halt forever, with an IDT
 * whose NMI gate leads back into the halt loop, so an NMI cannot turn the halt into
 * a triple-fault reset.
 */
	.globl	purgatory_stop
	.hidden	purgatory_stop
purgatory_stop:
	cli
	testl	$1, %edi
	jz	halt_forever

	movw	$0xcf9, %dx
	movb	$0x02, %al
	outb	%al, %dx
	movl	$0x10000, %ecx
2:	pause
	decl	%ecx
	jnz	2b
	movb	$0x06, %al
	outb	%al, %dx
	movl	$0x4000000, %ecx
3:	pause
	decl	%ecx
	jnz	3b

	pushq	$0
	pushq	$0
	lidt	(%rsp)				/* limit 0: every exception escalates */
	ud2

halt_forever:
	/* three interrupt gates (vectors 0-2) on the stack, all to halt_loop */
	leaq	halt_loop(%rip), %rax
	movq	%rax, %rdx
	shrq	$32, %rdx			/* offset 63:32 */
	movl	%eax, %ecx
	andl	$0xffff, %ecx			/* offset 15:0 */
	orl	$(BOOT_CS << 16), %ecx		/* selector */
	andl	$0xffff0000, %eax		/* offset 31:16 */
	orl	$0x8e00, %eax			/* present, DPL 0, 64-bit interrupt gate */
	movl	$3, %esi
4:	pushq	%rdx				/* reserved 0 : offset 63:32 */
	shlq	$32, %rax
	orq	%rcx, %rax
	pushq	%rax
	shrq	$32, %rax
	decl	%esi
	jnz	4b
	movq	%rsp, %rax
	pushq	%rax				/* base */
	pushw	$(3 * 16 - 1)			/* limit */
	lidt	(%rsp)
halt_loop:
	cli
	hlt
	jmp	halt_loop

/* ---- data ---- */
	.section .rodata, "a", @progbits
	.balign	16
gdt:	/* accessed bits preset, so loading a selector never writes to this table */
	.quad	0				/* null */
	.quad	0				/* unused */
	.quad	0x00af9b000000ffff		/* 0x10: 64-bit code, execute/read, 4 GiB */
	.quad	0x00cf93000000ffff		/* 0x18: data, read/write, 4 GiB flat */
gdt_end:

	.section .stack, "aw", @nobits
	.balign	4096
	.skip	STACK_SIZE
stack_end:
