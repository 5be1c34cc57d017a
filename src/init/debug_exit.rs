//! Test mode's verdict through QEMU's `isa-debug-exit` device (`[host] exit_with`).
//!
//! QEMU started with `-device isa-debug-exit,iobase=0xf4,iosize=0x04`
//! exits as soon as a byte is written to port 0xf4, with exit code
//! `(value << 1) | 1`. zonit writes the `exit_with` unit's status there
//! just before powering off, so the status of an integration test becomes
//! QEMU's exit code: 0 -> 1, 1 -> 3, 3 -> 7. (A plain poweroff makes QEMU
//! exit 0, so "status 0" and "no verdict" stay apart.) QEMU keeps only the
//! low 8 bits of the code, so statuses of 128 and more (deaths by signal)
//! come out folded; tests should use small exit codes.
//!
//! Port I/O on a machine that is not QEMU could poke real hardware, so
//! zonit only writes when DMI says the machine is QEMU
//! (`/sys/class/dmi/id/sys_vendor` is `QEMU`) or the command line has
//! `zonit.debug_exit`. Under QEMU without the device, the write goes to an
//! unassigned port and is ignored; the poweroff follows as usual.

/// The port QEMU's documentation and zonit's scripts use.
pub const PORT: u16 = 0xf4;

/// Whether to write the verdict, from DMI's `sys_vendor` (if readable)
/// and the `zonit.debug_exit` flag.
pub fn wanted(sys_vendor: Option<&str>, flag: bool) -> bool {
    flag || sys_vendor.map(str::trim) == Some("QEMU")
}

/// The byte written for exit status `status` (statuses outside 0..=255
/// are clamped).
pub fn port_value(status: i32) -> u8 {
    u8::try_from(status.clamp(0, 255)).unwrap_or(u8::MAX)
}

/// QEMU's exit code for the byte `value` (what a test harness sees).
pub fn qemu_exit_code(value: u8) -> u8 {
    (value << 1) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_qemu_or_the_flag_enables_port_io() {
        assert!(wanted(Some("QEMU\n"), false));
        assert!(!wanted(Some("Dell Inc.\n"), false));
        assert!(!wanted(None, false));
        assert!(wanted(None, true));
        assert!(wanted(Some("LENOVO"), true));
    }

    #[test]
    fn statuses_map_to_qemu_exit_codes() {
        assert_eq!(qemu_exit_code(port_value(0)), 1);
        assert_eq!(qemu_exit_code(port_value(1)), 3);
        assert_eq!(qemu_exit_code(port_value(3)), 7);
        assert_eq!(port_value(-5), 0);
        assert_eq!(port_value(300), 255);
    }
}
