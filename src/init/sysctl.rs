//! `[host] sysctl` keys as files under `/proc/sys` (pure mapping).
//!
//! `net.ipv4.ip_forward` is `/proc/sys/net/ipv4/ip_forward`. As in
//! sysctl(8), a `/` in a key separates components too, and the two can be
//! mixed; a key that would leave `/proc/sys` (`..`, empty components) is
//! refused rather than written.

use std::path::PathBuf;

/// The file behind sysctl `key`, or `None` for a key that is not a plain
/// dotted name.
pub fn path(key: &str) -> Option<PathBuf> {
    let mut p = PathBuf::from("/proc/sys");
    let mut any = false;
    for part in key.split(['.', '/']) {
        if part.is_empty() || part == ".." {
            return None;
        }
        p.push(part);
        any = true;
    }
    any.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_map_under_proc_sys() {
        assert_eq!(
            path("net.ipv4.ip_forward"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            path("kernel/printk_devkmsg"),
            Some(PathBuf::from("/proc/sys/kernel/printk_devkmsg"))
        );
    }

    #[test]
    fn keys_that_could_escape_are_refused() {
        for bad in ["", ".", "net..ipv4", "net/../../etc/passwd", "a.", ".a"] {
            assert_eq!(path(bad), None, "{bad:?}");
        }
    }
}
