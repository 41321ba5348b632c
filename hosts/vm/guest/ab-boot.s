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
 * The parameter block at offset 0x1e0 (guest-physical 0x7de0) tells it its range and how many vCPUs share it;
 * ferry-vm writes it after loading the sector, a benchmark patches a copy of the image for QEMU. It is not a
 * general boot loader: it loads nothing, asks the BIOS nothing, and needs no RAM but its own sector, its range, a
 * 5-byte trampoline at 0x7000 and a few bytes of stack per vCPU below 0x7c00.
 *
 * With N vCPUs (N > 1) the range is cut into N slices of equal page count (the last takes the remainder) and
 * every vCPU runs the pattern over its own slice, so each slice passes the check on its own and a slice whose
 * bytes stop moving names a vCPU that stopped. The boot vCPU starts the others as a BIOS-less OS does: it enables
 * its local APIC and broadcasts INIT, then twice a start-up IPI whose vector points at the trampoline (a far jump
 * into this sector, since a start-up IPI can only name a 4 KiB-aligned real-mode address). Each application
 * processor takes the next slice number with a locked xadd; one beyond N-1 halts. Only the boot vCPU prints.
 *
 * Registers in the loops: %edi first page of the slice, %ebp its page count, %eax page address, %ecx pages left in
 * this pass, %ebx passes until the next progress character, %esi passes so far (not needed by the checker; handy
 * when reading a dump of the vCPU state).
 */
.equ PARAMS_OFFSET, 0x1e0
.equ PAGE, 4096
.equ COM1, 0x3f8
.equ LAPIC, 0xfee00000
.equ LAPIC_SVR, LAPIC + 0xf0
.equ LAPIC_ICR_LOW, LAPIC + 0x300
.equ TRAMPOLINE, 0x7000          /* start-up IPI vector 0x07 */
.equ AP_STACKS, 0x7000           /* vCPU n's stack tops at AP_STACKS - 256 * n (n >= 1) */
/* ICR: destination shorthand "all excluding self" (bits 18-19 = 3), level assert (bit 14), edge. */
.equ ICR_INIT, 0x000c4500
.equ ICR_SIPI, 0x000c4600 | (TRAMPOLINE >> 12)

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
2:  cmpl $0, params_cpus
    jnz 3f
    movl $1, params_cpus
3:  movb $'A', %al
    call putc
    cmpl $1, params_cpus
    jbe 4f
    call start_aps
4:  xorl %edi, %edi
    call slice
    testl %ebp, %ebp
    jz idle
    xorl %esi, %esi
    movl params_every, %ebx

pass:
    movl %edi, %eax
    movl %ebp, %ecx
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

/* A vCPU with nothing to do (no slice, or a slice of no pages) halts for good. */
idle:
    cli
    hlt
    jmp idle

/* Slice %edi of the range: out %edi its first page address, %ebp its page count. Clobbers %eax, %ecx, %edx. */
slice:
    movl params_npages, %eax
    xorl %edx, %edx
    divl params_cpus
    movl %eax, %ebp
    movl %edi, %ecx
    imull %eax, %ecx
    shll $12, %ecx
    addl params_start, %ecx
    leal 1(%edi), %eax
    cmpl params_cpus, %eax
    jne 5f
    addl %edx, %ebp
5:  movl %ecx, %edi
    ret

/* Point the start-up vector at ap_start16, enable the local APIC, then INIT and two start-up IPIs to every other
 * vCPU: the MP specification's sequence without its pauses, which hardware needs and KVM's in-kernel LAPIC does
 * not (it queues the start-up IPI behind the INIT; there is no room for a timed delay in the sector). */
start_aps:
    movb $0xea, TRAMPOLINE                      /* ljmp $0, $ap_start16 */
    movl $ap_start16, TRAMPOLINE + 1            /* offset, then segment 0 (ap_start16 < 64 KiB) */
    orl $0x100, LAPIC_SVR                       /* APIC software enable */
    movl $ICR_INIT, LAPIC_ICR_LOW
    movl $ICR_SIPI, LAPIC_ICR_LOW
    movl $ICR_SIPI, LAPIC_ICR_LOW
    ret

/* An application processor, woken by the start-up IPI in real mode at 0700:0000, jumped here (CS 0). */
    .code16
ap_start16:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl gdt_desc
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $ap_protected

    .code32
ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $1, %eax
    lock xaddl %eax, next_slice
    cmpl params_cpus, %eax
    jae idle
    movl %eax, %edi
    shll $8, %eax
    movl $AP_STACKS, %esp
    subl %eax, %esp
    call slice
    testl %ebp, %ebp
    jz idle
ap_pass:
    movl %edi, %eax
    movl %ebp, %ecx
7:  incb (%eax)
    addl $PAGE, %eax
    decl %ecx
    jnz 7b
    jmp ap_pass

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

/* The next slice an application processor takes (the boot vCPU has slice 0). */
    .p2align 2
next_slice:
    .long 1

    .p2align 3
gdt:
    .quad 0                     /* null */
    .quad 0x00cf9a000000ffff    /* 0x08: code, base 0, limit 4 GiB, 32-bit, execute/read */
    .quad 0x00cf92000000ffff    /* 0x10: data, base 0, limit 4 GiB, 32-bit, read/write */
gdt_desc:
    .word gdt_desc - gdt - 1
    .long gdt

    /* The parameter block (ferry-vm's vm.h describes it too): magic, first page address, page count,
     * passes per progress character, vCPUs that share the range. Values 0 mean "the default" (see above; one
     * vCPU for the last, which images made before it existed have as 0). */
    .org PARAMS_OFFSET
    .ascii "FAB1"
params_start:
    .long 0
params_npages:
    .long 0
params_every:
    .long 0
params_cpus:
    .long 0

    .org 510
    .byte 0x55, 0xaa
