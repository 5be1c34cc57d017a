/*
 * Test guest for `zonit vmm` (tier 3). One source, three boot targets:
 *
 *   default        ELF entered in 64-bit mode at entry64, boot_params in RSI
 *                  (the Linux 64-bit boot protocol, as for a vmlinux);
 *   --defsym PVH=1 the same ELF plus a Xen PVH note: entered at pvh_entry in
 *                  32-bit protected mode with hvm_start_info in EBX; it
 *                  builds its own page tables and switches to long mode;
 *   --defsym BZIMAGE=1  a flat bzImage: setup header in the first 1 KiB,
 *                  protected-mode part loaded at 1 MiB, 64-bit entry at
 *                  +0x200, boot_params in RSI.
 *
 * It prints what it was handed (protocol, command line, e820 map, RSDP) on
 * COM1, then does what its command line asks:
 *
 *   triple     load an empty IDT and fault: a triple fault
 *   reboot     i8042 reset command (0xFE to port 0x64)
 *   acpireset  write the FADT reset value to the FADT reset register
 *   panic      write PANICKED to the pvpanic port
 *   spin       halt forever with interrupts off (never reads COM1)
 *   echo       print "echo ready", then echo every byte received on COM1
 *              (polling the line status register); Ctrl-D powers off
 *   cad        poll the i8042 until 8 scan code bytes arrive, print them,
 *              then power off
 *   blk        drive the virtio-mmio block device: print its
 *              features and capacity, read sector 0, write sector 1,
 *              flush, print each status, then power off
 *   net        drive the virtio-mmio network card: print its
 *              features and MAC, post 4 receive buffers, send an ARP
 *              request for 10.99.0.1 from 10.99.0.2, then print the
 *              sender of the first ARP reply received ("net: arp reply
 *              from MAC") and power off; other frames are re-posted
 *   txflood[=N]  set the network card up as `net` does, then send that ARP
 *              request N times (default 100000) through the 8-entry
 *              transmit queue, notifying the device unless it asks not to
 *              be, then power off: the frame-rate benchmark
 *              (scripts/bench-vmm.sh) times "txflood: N" to "txflood done"
 *
 * A virtio device is looked for in zonit's windows (8 of 4 KiB from
 * 0xd0000000) and then in QEMU microvm's (24 of 512 bytes from
 * 0xfeb00000), so the same payload drives both monitors' devices.
 *   smp        count the MADT's processors, start the others with
 *              INIT/SIPI, wait for them to check in, then power off
 *   pio[=N]    write the COM1 scratch register N times (default 100000),
 *              one port-I/O exit each, then power off: the exit-rate
 *              benchmark (scripts/bench-vmm.sh) times "pio: N" to "pio done"
 *   poweroff   (also the default) find the FADT sleep-control register and
 *              the DSDT's _S5_ value and write SLP_TYP<<2 | SLP_EN, to an
 *              I/O port or, as QEMU microvm's GED has it, to memory
 */

        .intel_syntax noprefix
        .set COM1, 0x3f8

/* ---------------------------------------------------------------- bzImage */
.ifdef BZIMAGE
        .section .bzsetup, "a"
        .org 0x1f1
        .byte 1                 /* setup_sects: setup is 2 sectors */
        .word 0                 /* root_flags */
        .long 0                 /* syssize */
        .word 0, 0, 0           /* ram_size, vid_mode, root_dev */
        .word 0xaa55            /* boot_flag */
        .byte 0xeb, 0x00        /* jump */
        .ascii "HdrS"
        .word 0x020f            /* boot protocol 2.15 */
        .long 0                 /* realmode_swtch */
        .word 0, 0              /* start_sys_seg, kernel_version */
        .byte 0, 1              /* type_of_loader, loadflags: LOADED_HIGH */
        .word 0                 /* setup_move_size */
        .long 0x100000          /* code32_start */
        .long 0, 0, 0           /* ramdisk_image, ramdisk_size, bootsect_kludge */
        .word 0                 /* heap_end_ptr */
        .byte 0, 0              /* ext_loader_ver, ext_loader_type */
        .long 0                 /* cmd_line_ptr */
        .long 0x7fffffff        /* initrd_addr_max */
        .long 0x200000          /* kernel_alignment */
        .byte 0, 0              /* relocatable_kernel, min_alignment */
        .word 1                 /* xloadflags: XLF_KERNEL_64 */
        .long 2047              /* cmdline_size */
        .org 0x400
.endif

/* -------------------------------------------------------------- PVH note */
.ifdef PVH
        .section .note.pvh, "a", @note
        .balign 4
        .long 4                 /* namesz */
        .long 4                 /* descsz */
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .balign 4
        .long pvh_entry
        .balign 4
.endif

        .text
.ifdef BZIMAGE
        /* The 32-bit entry at the load address is not used. */
        .fill 0x200, 1, 0xf4
.endif

/* ------------------------------------------------- Linux 64-bit entry */
        .code64
        .globl entry64
entry64:
        cli
        lea rsp, [rip + stack_top]
        mov eax, dword ptr [rsi + 0x228]        /* hdr.cmd_line_ptr */
        mov qword ptr [rip + cmdline], rax
        movzx eax, byte ptr [rsi + 0x1e8]       /* e820_entries */
        mov qword ptr [rip + e820_count], rax
        lea rax, [rsi + 0x2d0]                  /* e820_table */
        mov qword ptr [rip + e820_table], rax
        mov qword ptr [rip + e820_stride], 20
        mov rax, qword ptr [rsi + 0x70]         /* acpi_rsdp_addr */
        mov qword ptr [rip + rsdp], rax
        lea rax, [rip + str_linux]
        mov qword ptr [rip + protocol], rax
        cmp dword ptr [rsi + 0x202], 0x53726448 /* hdr.header "HdrS" */
        je main64
        lea rdi, [rip + str_bad_magic]
        call puts
        jmp main64

/* ------------------------------------------------------------ PVH entry */
.ifdef PVH
        .code32
pvh_entry:
        cli
        mov esp, offset stack_top
        mov eax, dword ptr [ebx + 24]           /* cmdline_paddr */
        mov dword ptr [cmdline], eax
        mov eax, dword ptr [ebx + 48]           /* memmap_entries */
        mov dword ptr [e820_count], eax
        mov eax, dword ptr [ebx + 40]           /* memmap_paddr */
        mov dword ptr [e820_table], eax
        mov dword ptr [e820_stride], 24
        mov eax, dword ptr [ebx + 32]           /* rsdp_paddr */
        mov dword ptr [rsdp], eax
        mov eax, offset str_pvh
        mov dword ptr [protocol], eax
        cmp dword ptr [ebx], 0x336ec578         /* hvm_start_info magic */
        je 1f
        mov dword ptr [protocol], offset str_bad_magic
1:
        /* Long mode with the payload's own identity map. */
        mov eax, cr4
        or eax, 0x20                            /* PAE */
        mov cr4, eax
        mov eax, offset pml4
        mov cr3, eax
        mov ecx, 0xc0000080                     /* EFER */
        rdmsr
        or eax, 0x100                           /* LME */
        wrmsr
        mov eax, cr0
        or eax, 0x80000000                      /* PG */
        mov cr0, eax
        lgdt [gdt_desc]
        .att_syntax
        ljmp $0x08, $pvh_long
        .intel_syntax noprefix
        .code64
pvh_long:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        jmp main64
.endif

/* ----------------------------------------------------------------- main */
main64:
        lea rdi, [rip + str_hello]
        call puts
        mov rdi, qword ptr [rip + protocol]
        call puts
        call newline
        lea rdi, [rip + str_cmdline]
        call puts
        mov rdi, qword ptr [rip + cmdline]
        call puts
        call newline
        lea rdi, [rip + str_e820]
        call puts
        mov rax, qword ptr [rip + e820_count]
        call putdec
        call newline
        mov rbx, qword ptr [rip + e820_table]
        mov r12, qword ptr [rip + e820_count]
1:      test r12, r12
        jz 2f
        lea rdi, [rip + str_e820_entry]
        call puts
        mov rax, qword ptr [rbx]
        call puthex
        call space
        mov rax, qword ptr [rbx + 8]
        call puthex
        call space
        mov eax, dword ptr [rbx + 16]
        call putdec
        call newline
        add rbx, qword ptr [rip + e820_stride]
        dec r12
        jmp 1b
2:      lea rdi, [rip + str_rsdp]
        call puts
        mov rax, qword ptr [rip + rsdp]
        call puthex
        call newline

        lea rdi, [rip + w_triple]
        call has_word
        jnz do_triple
        lea rdi, [rip + w_acpireset]
        call has_word
        jnz do_acpireset
        lea rdi, [rip + w_reboot]
        call has_word
        jnz do_reboot
        lea rdi, [rip + w_panic]
        call has_word
        jnz do_panic
        lea rdi, [rip + w_spin]
        call has_word
        jnz do_spin
        lea rdi, [rip + w_cad]
        call has_word
        jnz do_cad
        lea rdi, [rip + w_blk]
        call has_word
        jnz do_blk
        lea rdi, [rip + w_txflood]
        call has_word
        jnz do_txflood
        lea rdi, [rip + w_net]
        call has_word
        jnz do_net
        lea rdi, [rip + w_smp]
        call has_word
        jnz do_smp
        lea rdi, [rip + w_pio]
        call has_word
        jnz do_pio
        lea rdi, [rip + w_echo]
        call has_word
        jnz do_echo
        jmp do_poweroff

/* -------------------------------------------------------------- actions */
do_triple:
        lea rdi, [rip + str_triple]
        call puts
        lidt [rip + null_idt]
        ud2

do_reboot:
        lea rdi, [rip + str_reboot]
        call puts
        mov al, 0xfe
        out 0x64, al
        jmp halt_forever

do_panic:
        lea rdi, [rip + str_panic]
        call puts
        mov dx, 0x505
        in al, dx
        movzx eax, al
        call putdec
        call newline
        mov al, 1
        mov dx, 0x505
        out dx, al
        jmp halt_forever

do_echo:
        lea rdi, [rip + str_echo]
        call puts
1:      mov dx, COM1 + 5
        in al, dx
        test al, 1                              /* data ready */
        jnz 2f
        pause
        jmp 1b
2:      mov dx, COM1
        in al, dx
        cmp al, 4                               /* Ctrl-D */
        je do_poweroff
        call putc
        jmp 1b

do_spin:
        lea rdi, [rip + str_spin]
        call puts
        jmp halt_forever

do_acpireset:
        mov edi, 0x50434146                     /* "FACP" */
        call find_table
        test rax, rax
        jz no_fadt
        mov rbx, rax
        lea rdi, [rip + str_acpireset]
        call puts
        movzx eax, word ptr [rbx + 120]         /* RESET_REG address */
        call puthex
        call space
        movzx eax, byte ptr [rbx + 128]         /* RESET_VALUE */
        call putdec
        call newline
        mov dx, word ptr [rbx + 120]
        mov al, byte ptr [rbx + 128]
        out dx, al
        jmp halt_forever

do_cad:
        lea rdi, [rip + str_cad]
        call puts
        xor r12, r12
1:      in al, 0x64
        test al, 1
        jnz 2f
        pause
        jmp 1b
2:      in al, 0x60
        movzx eax, al
        call puthex8
        call space
        inc r12
        cmp r12, 8
        jb 1b
        call newline
        lea rdi, [rip + str_cad_done]
        call puts
        jmp do_poweroff

do_smp:
        mov edi, 0x43495041                     /* "APIC" */
        call find_table
        test rax, rax
        jz no_madt
        mov rbx, rax
        mov ecx, dword ptr [rbx + 4]
        lea r8, [rbx + rcx]                     /* end of the MADT */
        lea rdx, [rbx + 44]                     /* first entry */
        xor r12, r12
1:      cmp rdx, r8
        jae 2f
        cmp byte ptr [rdx], 0                   /* processor local APIC */
        jne 3f
        test byte ptr [rdx + 4], 1              /* enabled */
        jz 3f
        inc r12
3:      movzx eax, byte ptr [rdx + 1]
        add rdx, rax
        jmp 1b
2:      lea rdi, [rip + str_madt]
        call puts
        mov rax, r12
        call putdec
        call newline
        /* Real-mode trampoline at 0x10000 (SIPI vector 0x10). */
        lea rsi, [rip + tramp_start]
        mov edi, 0x10000
        mov ecx, offset tramp_end - tramp_start
        rep movsb
        mov rbx, 0xfee00000
        mov dword ptr [rbx + 0xf0], 0x1ff       /* SVR: APIC on */
        mov dword ptr [rbx + 0x310], 0
        mov dword ptr [rbx + 0x300], 0x000c4500 /* INIT, all but self */
        call delay
        mov dword ptr [rbx + 0x300], 0x000c4610 /* SIPI 0x10, all but self */
        call delay
        mov dword ptr [rbx + 0x300], 0x000c4610
        lea r9, [r12 - 1]
        mov rcx, 200000000
        mov edx, 0x10000 + (tramp_counter - tramp_start)
4:      movzx eax, word ptr [rdx]
        cmp rax, r9
        jae 5f
        pause
        dec rcx
        jnz 4b
5:      lea rdi, [rip + str_aps]
        call puts
        movzx eax, word ptr [rdx]
        call putdec
        call newline
        jmp do_poweroff

do_blk:
        mov edi, 2                              /* block device */
        lea rsi, [rip + str_blk_features]
        call virtio_probe
        mov eax, r13d
        and eax, 0x220                          /* RO | FLUSH */
        mov dword ptr [rbx + 0x20], eax
        mov dword ptr [rbx + 0x24], 1
        mov dword ptr [rbx + 0x20], 1           /* VERSION_1 */
        mov dword ptr [rbx + 0x70], 0xb         /* ... | FEATURES_OK */
        test dword ptr [rbx + 0x70], 8
        jz no_virtio
        xor edi, edi                            /* queue 0 */
        lea rsi, [rip + vq_desc]
        call queue_setup
        mov dword ptr [rbx + 0x70], 0xf         /* ... | DRIVER_OK */
        lea rdi, [rip + str_blk_capacity]
        call puts
        mov eax, dword ptr [rbx + 0x100]        /* capacity, low half */
        call putdec
        call newline

        xor edi, edi                            /* IN */
        xor esi, esi                            /* sector 0 */
        lea rdx, [rip + blk_buf]
        mov ecx, 2                              /* device writes the data */
        call blk_request
        lea rdi, [rip + str_blk_read]
        call puts
        call putdec
        call space
        lea rdi, [rip + blk_buf]
        mov byte ptr [rdi + 15], 0
        call puts
        call newline

        mov edi, 1                              /* OUT */
        mov esi, 1                              /* sector 1 */
        lea rdx, [rip + blk_wbuf]
        xor ecx, ecx
        call blk_request
        lea rdi, [rip + str_blk_write]
        call puts
        call putdec
        call newline

        mov edi, 4                              /* FLUSH */
        xor esi, esi
        xor edx, edx
        call blk_request
        lea rdi, [rip + str_blk_flush]
        call puts
        call putdec
        call newline
        jmp do_poweroff

/* The network card at rbx: queue 0 receives, queue 1 transmits, 8 entries
 * each; receive buffers 0-3 of 2 KiB at net_rx_bufs. */
do_net:
        call net_setup

        /* Post the 4 receive buffers. */
        lea r8, [rip + rx_desc]
        lea r9, [rip + net_rx_bufs]
        lea r10, [rip + rx_desc + 0x100]        /* avail ring */
        xor ecx, ecx
2:      mov rax, rcx
        shl rax, 4
        mov rdx, rcx
        shl rdx, 11
        add rdx, r9
        mov qword ptr [r8 + rax], rdx
        mov dword ptr [r8 + rax + 8], 2048
        mov word ptr [r8 + rax + 12], 2         /* WRITE */
        mov word ptr [r10 + 4 + rcx * 2], cx
        inc ecx
        cmp ecx, 4
        jne 2b
        mfence
        mov word ptr [r10 + 2], 4
        mfence
        mov dword ptr [rbx + 0x50], 0           /* notify queue 0 */

        /* Send the ARP request: one descriptor, header and frame. */
        lea r8, [rip + tx_desc]
        lea rax, [rip + arp_frame]
        mov qword ptr [r8], rax
        mov dword ptr [r8 + 8], arp_frame_end - arp_frame
        mov word ptr [r8 + 12], 0
        mov word ptr [r8 + 0x100 + 4], 0        /* avail ring[0] = 0 */
        mfence
        mov word ptr [r8 + 0x100 + 2], 1
        mfence
        mov dword ptr [rbx + 0x50], 1           /* notify queue 1 */
        lea rdi, [rip + str_net_sent]
        call puts

        /* Wait for received frames; r12 = used entries seen, r13 = avail
         * index. */
        xor r12d, r12d
        mov r13d, 4
        lea r8, [rip + rx_desc]
3:      movzx eax, word ptr [r8 + 0x200 + 2]    /* used idx */
        cmp ax, r12w
        jne 4f
        pause
        jmp 3b
4:      mov eax, r12d
        and eax, 7
        mov r14d, dword ptr [r8 + 0x200 + 4 + rax * 8]   /* buffer id */
        inc r12d
        mov rdx, r14
        shl rdx, 11
        lea r9, [rip + net_rx_bufs]
        add rdx, r9                             /* the frame, header first */
        cmp word ptr [rdx + 12 + 12], 0x0608    /* ARP (big-endian 0x0806) */
        jne 5f
        cmp word ptr [rdx + 12 + 14 + 6], 0x0200 /* reply */
        jne 5f
        lea rdi, [rip + str_net_reply]
        call puts
        xor ecx, ecx
6:      mov al, byte ptr [rdx + 12 + 14 + 8 + rcx]
        call puthex8
        inc ecx
        cmp ecx, 6
        jne 6b
        lea rdi, [rip + str_net_buffers]
        call puts
        movzx eax, word ptr [rdx + 10]          /* num_buffers */
        call putdec
        call newline
        jmp do_poweroff
5:      lea rdi, [rip + str_net_other]          /* not ours: re-post it */
        call puts
        mov eax, r13d
        and eax, 7
        mov word ptr [r8 + 0x100 + 4 + rax * 2], r14w
        inc r13d
        mfence
        mov word ptr [r8 + 0x100 + 2], r13w
        mfence
        mov dword ptr [rbx + 0x50], 0
        jmp 3b

/* Finds the network card (into rbx), negotiates VERSION_1 and MAC, prints
 * its features and MAC (copied into the ARP request's source fields), sets
 * up its two queues and sets DRIVER_OK. */
net_setup:
        mov edi, 1                              /* network card */
        lea rsi, [rip + str_net_features]
        call virtio_probe
        mov dword ptr [rbx + 0x20], 0x20        /* MAC */
        mov dword ptr [rbx + 0x24], 1
        mov dword ptr [rbx + 0x20], 1           /* VERSION_1 */
        mov dword ptr [rbx + 0x70], 0xb         /* ... | FEATURES_OK */
        test dword ptr [rbx + 0x70], 8
        jz no_virtio
        /* The MAC, from configuration space, into the frame's source
         * and the ARP sender fields. */
        lea rdi, [rip + str_net_mac]
        call puts
        lea r8, [rip + arp_frame]
        xor ecx, ecx
1:      mov al, byte ptr [rbx + 0x100 + rcx]
        mov byte ptr [r8 + 12 + 6 + rcx], al    /* Ethernet source */
        mov byte ptr [r8 + 12 + 14 + 8 + rcx], al /* ARP sender MAC */
        call puthex8
        inc ecx
        cmp ecx, 6
        jne 1b
        call newline
        xor edi, edi                            /* queue 0: receive */
        lea rsi, [rip + rx_desc]
        call queue_setup
        mov edi, 1                              /* queue 1: transmit */
        lea rsi, [rip + tx_desc]
        call queue_setup
        mov dword ptr [rbx + 0x70], 0xf         /* ... | DRIVER_OK */
        ret

/* rsi points at "txflood" in the command line (left there by has_word).
 * r12 = frames to send, r13 = frames posted; the 8 transmit descriptors
 * all point at the ARP request. */
do_txflood:
        mov r12, 100000
        add rsi, 7
        call word_count
        call net_setup
        lea r8, [rip + tx_desc]
        lea rax, [rip + arp_frame]
        xor ecx, ecx
1:      mov rdx, rcx
        shl rdx, 4
        mov qword ptr [r8 + rdx], rax
        mov dword ptr [r8 + rdx + 8], arp_frame_end - arp_frame
        mov word ptr [r8 + rdx + 12], 0
        inc ecx
        cmp ecx, 8
        jne 1b
        lea rdi, [rip + str_txflood]
        call puts
        mov rax, r12
        call putdec
        call newline
        xor r13d, r13d
2:      cmp r13, r12
        je 5f
3:      movzx eax, word ptr [r8 + 0x200 + 2]    /* used idx */
        mov edx, r13d
        sub dx, ax                              /* frames in flight */
        cmp dx, 8
        jb 4f
        pause
        jmp 3b
4:      mov eax, r13d
        and eax, 7
        mov word ptr [r8 + 0x100 + 4 + rax * 2], ax
        inc r13
        mov word ptr [r8 + 0x100 + 2], r13w     /* avail idx */
        mfence
        test word ptr [r8 + 0x200], 1           /* used flags: NO_NOTIFY */
        jnz 2b
        mov dword ptr [rbx + 0x50], 1           /* notify queue 1 */
        jmp 2b
5:      movzx eax, word ptr [r8 + 0x200 + 2]    /* all sent */
        cmp ax, r13w
        je 6f
        pause
        jmp 5b
6:      lea rdi, [rip + str_txflood_done]
        call puts
        jmp do_poweroff

/* Finds the first virtio-mmio device of id edi (into rbx), in zonit's
 * windows and then in QEMU microvm's, resets and acknowledges it, prints
 * its features 0..31 after the label at rsi and returns them in r13d, with
 * the driver feature selector at 0. Leaves for no_virtio if the device is
 * not there. */
virtio_probe:
        mov rbx, 0xd0000000
        mov ecx, 8
        mov edx, 0x1000
        call virtio_scan
        je 1f
        mov rbx, 0xfeb00000
        mov ecx, 24
        mov edx, 0x200
        call virtio_scan
        jne 9f
1:        mov dword ptr [rbx + 0x70], 0           /* reset */
        mov dword ptr [rbx + 0x70], 3           /* ACKNOWLEDGE | DRIVER */
        mov dword ptr [rbx + 0x14], 0
        mov r13d, dword ptr [rbx + 0x10]        /* features 0..31 */
        mov rdi, rsi
        call puts
        mov eax, r13d
        call puthex
        call newline
        mov dword ptr [rbx + 0x24], 0
        ret
9:      add rsp, 8                              /* no return */
        jmp no_virtio

/* Looks at ecx virtio-mmio windows edx bytes apart from rbx for a
 * version 2 device of id edi; ZF set and rbx at it when found. */
virtio_scan:
        cmp dword ptr [rbx], 0x74726976         /* "virt" */
        jne 1f
        cmp dword ptr [rbx + 4], 2              /* version 2 */
        jne 1f
        cmp dword ptr [rbx + 8], edi
        je 2f
1:      add rbx, rdx
        dec ecx
        jnz virtio_scan
        test rbx, rbx                           /* not found: ZF clear */
2:      ret

/* Sets up queue edi of the virtio device at rbx with 8 entries:
 * descriptors at rsi, avail ring at rsi + 0x100, used ring at rsi + 0x200. */
queue_setup:
        mov dword ptr [rbx + 0x30], edi
        mov dword ptr [rbx + 0x38], 8
        mov rax, rsi
        mov dword ptr [rbx + 0x80], eax
        shr rax, 32
        mov dword ptr [rbx + 0x84], eax
        lea rax, [rsi + 0x100]
        mov dword ptr [rbx + 0x90], eax
        shr rax, 32
        mov dword ptr [rbx + 0x94], eax
        lea rax, [rsi + 0x200]
        mov dword ptr [rbx + 0xa0], eax
        shr rax, 32
        mov dword ptr [rbx + 0xa4], eax
        mov dword ptr [rbx + 0x44], 1           /* queue ready */
        ret

no_virtio:
        lea rdi, [rip + str_no_virtio]
        call puts
        jmp do_poweroff

/* One request on queue 0 of the device at rbx: type edi, sector rsi, a
 * 512-byte buffer at rdx (none if 0) with descriptor flags ecx. Returns
 * the status byte in rax. */
blk_request:
        push r8
        push r9
        lea r8, [rip + req_hdr]
        mov dword ptr [r8], edi
        mov dword ptr [r8 + 4], 0
        mov qword ptr [r8 + 8], rsi
        lea r9, [rip + vq_desc]
        mov qword ptr [r9], r8                  /* 0: header */
        mov dword ptr [r9 + 8], 16
        mov word ptr [r9 + 12], 1               /* NEXT */
        mov word ptr [r9 + 14], 1
        test rdx, rdx
        jz 1f
        mov qword ptr [r9 + 16], rdx            /* 1: data */
        mov dword ptr [r9 + 24], 512
        or ecx, 1                               /* NEXT */
        mov word ptr [r9 + 28], cx
        mov word ptr [r9 + 30], 2
        jmp 2f
1:      mov word ptr [r9 + 14], 2               /* header straight to status */
2:      lea rax, [rip + req_status]
        mov byte ptr [rax], 0xff
        mov qword ptr [r9 + 32], rax            /* 2: status */
        mov dword ptr [r9 + 40], 1
        mov word ptr [r9 + 44], 2               /* WRITE */
        mov word ptr [r9 + 46], 0
        lea r8, [rip + vq_avail]
        movzx eax, word ptr [r8 + 2]
        mov r9d, eax
        and eax, 7
        mov word ptr [r8 + 4 + rax * 2], 0      /* chain head: descriptor 0 */
        mfence
        inc r9d
        mov word ptr [r8 + 2], r9w
        mfence
        mov dword ptr [rbx + 0x50], 0           /* notify queue 0 */
        lea r8, [rip + vq_used]
3:      cmp word ptr [r8 + 2], r9w
        je 4f
        pause
        jmp 3b
4:      lea rax, [rip + req_status]
        movzx eax, byte ptr [rax]
        pop r9
        pop r8
        ret

/* rsi points at "pio" in the command line (left there by has_word). */
do_pio:
        mov r12, 100000
        add rsi, 3
        call word_count
        lea rdi, [rip + str_pio]
        call puts
        mov rax, r12
        call putdec
        call newline
        mov dx, COM1 + 7                        /* scratch register */
        xor eax, eax
3:      test r12, r12
        jz 4f
        out dx, al
        dec r12
        jmp 3b
4:      lea rdi, [rip + str_pio_done]
        call puts
        jmp do_poweroff

/* A word's "=N" at rsi, if there, into r12 (else r12 is left as is). */
word_count:
        cmp byte ptr [rsi], '='
        jne 2f
        inc rsi
        xor r12, r12
1:      movzx eax, byte ptr [rsi]
        sub eax, '0'
        cmp eax, 9
        ja 2f
        imul r12, r12, 10
        add r12, rax
        inc rsi
        jmp 1b
2:      ret

do_poweroff:
        mov edi, 0x50434146                     /* "FACP" */
        call find_table
        test rax, rax
        jz no_fadt
        mov rbx, rax
        mov rdi, qword ptr [rbx + 140]          /* X_DSDT */
        call s5_type
        cmp eax, 0xff
        je no_s5
        shl eax, 2
        or eax, 0x20                            /* SLP_EN */
        mov r12, rax
        lea rdi, [rip + str_poweroff]
        call puts
        mov rax, qword ptr [rbx + 248]          /* SLEEP_CONTROL_REG address */
        call puthex
        call space
        mov rax, r12
        call puthex8
        call newline
        mov rax, r12
        cmp byte ptr [rbx + 244], 0             /* address space: memory */
        je 1f
        mov dx, word ptr [rbx + 248]
        out dx, al
        jmp halt_forever
1:      mov rdx, qword ptr [rbx + 248]
        mov byte ptr [rdx], al
        jmp halt_forever

no_fadt:
        lea rdi, [rip + str_no_fadt]
        call puts
        jmp halt_forever
no_madt:
        lea rdi, [rip + str_no_madt]
        call puts
        jmp halt_forever
no_s5:
        lea rdi, [rip + str_no_s5]
        call puts
        jmp halt_forever

halt_forever:
        cli
1:      hlt
        jmp 1b

/* ---------------------------------------------------------------- helpers */

/* rax = address of the table with signature edi in the XSDT, or 0. */
find_table:
        mov rsi, qword ptr [rip + rsdp]
        test rsi, rsi
        jz 9f
        cmp dword ptr [rsi], 0x20445352         /* "RSD " */
        jne 9f
        mov rsi, qword ptr [rsi + 24]           /* XSDT */
        mov ecx, dword ptr [rsi + 4]
        sub ecx, 36
        shr ecx, 3
        lea rdx, [rsi + 36]
1:      test ecx, ecx
        jz 9f
        mov rax, qword ptr [rdx]
        cmp dword ptr [rax], edi
        je 8f
        add rdx, 8
        dec ecx
        jmp 1b
9:      xor eax, eax
8:      ret

/* eax = SLP_TYP of _S5_ in the DSDT at rdi, or 0xff. */
s5_type:
        mov ecx, dword ptr [rdi + 4]
        lea r8, [rdi + rcx - 9]
1:      cmp rdi, r8
        jae 9f
        cmp dword ptr [rdi], 0x5f35535f         /* "_S5_" */
        je 2f
        inc rdi
        jmp 1b
2:      cmp byte ptr [rdi + 4], 0x12            /* PackageOp */
        jne 9f
        movzx eax, byte ptr [rdi + 7]           /* first element */
        cmp eax, 0x0a                           /* BytePrefix */
        jne 3f
        movzx eax, byte ptr [rdi + 8]
        ret
3:      cmp eax, 1                              /* ZeroOp or OneOp */
        jbe 4f
9:      mov eax, 0xff
4:      ret

/* rax = 1 (and ZF clear) if the command line contains the word at rdi. */
has_word:
        push rcx
        mov rsi, qword ptr [rip + cmdline]
        test rsi, rsi
        jz 9f
1:      cmp byte ptr [rsi], 0
        je 9f
        xor ecx, ecx
2:      mov al, byte ptr [rdi + rcx]
        test al, al
        jz 8f
        cmp al, byte ptr [rsi + rcx]
        jne 3f
        inc rcx
        jmp 2b
3:      inc rsi
        jmp 1b
8:      mov eax, 1
        jmp 7f
9:      xor eax, eax
7:      pop rcx
        test eax, eax
        ret

delay:
        push rcx
        mov ecx, 1000000
1:      pause
        dec ecx
        jnz 1b
        pop rcx
        ret

/* Prints al. Preserves every register. */
putc:
        push rdx
        push rax
        mov dx, COM1 + 5
1:      in al, dx
        test al, 0x20                           /* THR empty */
        jz 1b
        pop rax
        mov dx, COM1
        out dx, al
        pop rdx
        ret

/* Prints the NUL-terminated string at rdi. */
puts:
        push rdi
        push rax
1:      mov al, byte ptr [rdi]
        test al, al
        jz 2f
        call putc
        inc rdi
        jmp 1b
2:      pop rax
        pop rdi
        ret

newline:
        push rax
        mov al, 10
        call putc
        pop rax
        ret

space:
        push rax
        mov al, 32
        call putc
        pop rax
        ret

/* Prints rax as 16 hex digits. */
puthex:
        push rcx
        mov ecx, 16
        jmp puthex_digits
/* Prints al as 2 hex digits. */
puthex8:
        push rcx
        shl rax, 56
        mov ecx, 2
puthex_digits:
        push rdx
        push r8
        lea r8, [rip + hexdigits]
1:      rol rax, 4
        mov edx, eax
        and edx, 0xf
        push rax
        mov al, byte ptr [r8 + rdx]
        call putc
        pop rax
        dec ecx
        jnz 1b
        pop r8
        pop rdx
        pop rcx
        ret

/* Prints rax in decimal. */
putdec:
        push rcx
        push rdx
        push rdi
        lea rdi, [rip + numbuf_end]
        mov ecx, 10
1:      xor edx, edx
        div rcx
        add dl, '0'
        dec rdi
        mov byte ptr [rdi], dl
        test rax, rax
        jnz 1b
        call puts
        pop rdi
        pop rdx
        pop rcx
        ret

/* Application processors start here in real mode, CS = 0x1000. */
        .code16
tramp_start:
        cli
        mov ax, cs
        mov ds, ax
        lock inc word ptr [tramp_counter - tramp_start]
1:      hlt
        jmp 1b
tramp_counter:
        .word 0
tramp_end:
        .code64

/* ------------------------------------------------------------------- data */
        .data
        .balign 8
cmdline:        .quad 0
e820_count:     .quad 0
e820_table:     .quad 0
e820_stride:    .quad 0
rsdp:           .quad 0
protocol:       .quad 0
null_idt:       .word 0
                .quad 0
numbuf:         .fill 24, 1, 0
numbuf_end:     .byte 0
hexdigits:      .ascii "0123456789abcdef"

str_hello:      .asciz "zonit-payload: "
str_linux:      .asciz "linux"
str_pvh:        .asciz "pvh"
str_bad_magic:  .asciz "bad-magic "
str_cmdline:    .asciz "cmdline: "
str_e820:       .asciz "e820: "
str_e820_entry: .asciz "e820 entry: "
str_rsdp:       .asciz "rsdp: "
str_triple:     .asciz "triple fault\n"
str_reboot:     .asciz "i8042 reset\n"
str_panic:      .asciz "pvpanic capabilities: "
str_spin:       .asciz "spinning\n"
str_acpireset:  .asciz "acpi reset: "
str_cad:        .asciz "waiting for ctrl-alt-del\n"
str_cad_done:   .asciz "ctrl-alt-del received\n"
str_madt:       .asciz "madt cpus: "
str_aps:        .asciz "aps started: "
str_poweroff:   .asciz "poweroff: "
str_no_fadt:    .asciz "no FADT\n"
str_no_madt:    .asciz "no MADT\n"
str_no_s5:      .asciz "no _S5_\n"
w_triple:       .asciz "triple"
w_reboot:       .asciz "reboot"
w_acpireset:    .asciz "acpireset"
w_panic:        .asciz "panic"
w_spin:         .asciz "spin"
w_cad:          .asciz "cad"
w_smp:          .asciz "smp"
w_blk:          .asciz "blk"
w_net:          .asciz "net"
w_pio:          .asciz "pio"
w_txflood:      .asciz "txflood"
w_echo:         .asciz "echo"
str_echo:       .asciz "echo ready\n"
str_pio:        .asciz "pio: "
str_pio_done:   .asciz "pio done\n"
str_txflood:    .asciz "txflood: "
str_txflood_done: .asciz "txflood done\n"
str_blk_features: .asciz "blk features: "
str_blk_capacity: .asciz "blk capacity: "
str_blk_read:   .asciz "blk read: "
str_blk_write:  .asciz "blk write: "
str_blk_flush:  .asciz "blk flush: "
str_no_virtio:  .asciz "no virtio device of that kind\n"
str_net_features: .asciz "net features: "
str_net_mac:    .asciz "net mac: "
str_net_sent:   .asciz "net: arp request sent\n"
str_net_other:  .asciz "net: other frame\n"
str_net_reply:  .asciz "net: arp reply from "
str_net_buffers: .asciz " num_buffers "

        /* A split virtqueue of 8 entries (laid out as queue_setup
         * expects) and one request's buffers. */
        .balign 4096
vq_desc:        .fill 0x100, 1, 0
vq_avail:       .fill 0x100, 1, 0
vq_used:        .fill 0x100, 1, 0
req_hdr:        .fill 16, 1, 0
req_status:     .byte 0
        .balign 512
blk_buf:        .fill 512, 1, 0
blk_wbuf:       .ascii "written by guest"
                .fill 512 - 16, 1, 0

        /* The network card's two queues (descriptors, then the avail
         * ring at +0x100 and the used ring at +0x200), its receive
         * buffers, and the ARP request it sends. */
        .balign 4096
rx_desc:        .fill 0x300, 1, 0
        .balign 4096
tx_desc:        .fill 0x300, 1, 0
        .balign 4096
net_rx_bufs:    .fill 4 * 2048, 1, 0
arp_frame:      .fill 12, 1, 0                  /* virtio_net_hdr_v1 */
                .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff  /* broadcast */
                .fill 6, 1, 0                   /* source: the card's MAC */
                .byte 0x08, 0x06                /* ARP */
                .byte 0, 1, 0x08, 0, 6, 4, 0, 1 /* Ethernet, IPv4, request */
                .fill 6, 1, 0                   /* sender MAC */
                .byte 10, 99, 0, 2              /* sender IP */
                .fill 6, 1, 0                   /* target MAC */
                .byte 10, 99, 0, 1              /* target IP */
arp_frame_end:

        .balign 16
stack:          .fill 4096, 1, 0
stack_top:

.ifdef PVH
        .balign 8
gdt:            .quad 0
                .quad 0x00af9b000000ffff        /* 64-bit code */
                .quad 0x00cf93000000ffff        /* data */
gdt_end:
gdt_desc:       .word gdt_end - gdt - 1
                .long gdt

        /* Identity map of the first 4 GiB with 2 MiB pages. */
        .balign 4096
pml4:           .quad pdpt + 3
                .fill 511, 8, 0
pdpt:           .quad pd + 0x0003
                .quad pd + 0x1003
                .quad pd + 0x2003
                .quad pd + 0x3003
                .fill 508, 8, 0
pd:
        .set page, 0
        .rept 2048
                .quad (page << 21) | 0x83
        .set page, page + 1
        .endr
.endif
