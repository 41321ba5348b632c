/*
 * ab-boot: the test guest of ferry-vm, a 512-byte boot sector. A BIOS (QEMU's SeaBIOS) or ferry-vm (which has no
 * BIOS and starts the vCPU where a BIOS would jump) loads it at 0x7c00 and runs it in 16-bit real mode. It
 * switches to 32-bit protected mode with flat segments (no paging, so it reaches the first 4 GiB of guest-physical
 * memory) and then runs the A-B pattern for ever: one pass increments the first byte of every page of its range
 * in ascending order; after every N passes it writes a progress character ('B') to the 16550 serial port at
 * 0x3f8 ('A' once before the first pass). A guest stopped at any instant leaves its range in a state a checker
 * can verify: all first bytes equal except one step down by one, where the pass was interrupted (the rest of each
 * page stays zero).
 *
 * The parameter block at offset 0x1e0 (guest-physical 0x7de0) tells it its range; ferry-vm writes it after
 * loading the sector, a benchmark patches a copy of the image for QEMU. It is not a general boot loader: it loads
 * nothing, asks the BIOS nothing, and needs no RAM but its own sector and its range.
 *
 * Registers in the loop: %eax page address, %ecx pages left in this pass, %ebx passes until the next progress
 * character, %esi passes so far (not needed by the checker; handy when reading a dump of the vCPU state).
 */
.equ PARAMS_OFFSET, 0x1e0
.equ PAGE, 4096
.equ COM1, 0x3f8

    .code16
    .text
    .globl _start
_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    /* Fast A20 gate (port 0x92 bit 1): SeaBIOS has enabled A20 already and ferry-vm has no gate (KVM never masks
     * A20), so this only matters for BIOSes that leave it off. Bit 0 would reset the machine: keep it clear. */
    inb $0x92, %al
    orb $0x02, %al
    andb $0xfe, %al
    outb %al, $0x92
    /* The 32-bit operand size makes lgdt load all 32 bits of the base. */
    lgdtl gdt_desc
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $protected

    .code32
protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $0x7c00, %esp

    /* An image nobody told its range (npages 0) takes QEMU's migration test range: 1 MiB to 100 MiB. */
    movl params_npages, %eax
    testl %eax, %eax
    jnz 1f
    movl $0x100000, params_start
    movl $((100 << 20) - (1 << 20)) / PAGE, params_npages
1:  movl params_every, %eax
    testl %eax, %eax
    jnz 2f
    movl $1, params_every
2:  movb $'A', %al
    call putc
    xorl %esi, %esi
    movl params_every, %ebx

pass:
    movl params_start, %eax
    movl params_npages, %ecx
page:
    incb (%eax)
    addl $PAGE, %eax
    decl %ecx
    jnz page
    incl %esi
    decl %ebx
    jnz pass
    movl params_every, %ebx
    movb $'B', %al
    call putc
    jmp pass

/* Write %al to COM1 once its transmitter holding register is empty (LSR bit 5). Clobbers %edx. */
putc:
    pushl %eax
    movw $COM1 + 5, %dx
3:  inb %dx, %al
    testb $0x20, %al
    jz 3b
    popl %eax
    movw $COM1, %dx
    outb %al, %dx
    ret

    .p2align 3
gdt:
    .quad 0                     /* null */
    .quad 0x00cf9a000000ffff    /* 0x08: code, base 0, limit 4 GiB, 32-bit, execute/read */
    .quad 0x00cf92000000ffff    /* 0x10: data, base 0, limit 4 GiB, 32-bit, read/write */
gdt_desc:
    .word gdt_desc - gdt - 1
    .long gdt

    /* The parameter block (ferry-vm's vm.h describes it too): magic, first page address, page count,
     * passes per progress character. Values 0 mean "the default" (see above). */
    .org PARAMS_OFFSET
    .ascii "FAB1"
params_start:
    .long 0
params_npages:
    .long 0
params_every:
    .long 0

    .org 510
    .byte 0x55, 0xaa
