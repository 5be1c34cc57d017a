//! Keeping the monitor's resident set small once the guest runs: set-up
//! code and data read from the binary (ELF loading, ACPI tables, KVM and
//! seccomp set-up) are no longer needed, but stay mapped, and the kernel
//! maps neighbouring pages of the binary around each fault as well. The
//! monitor lists its read-only file mappings that hold no private page
//! before confinement (while `/proc` is reachable) and drops their page
//! table entries as the guest starts; what the running guest needs comes
//! back on first touch.
//!
//! Invariant: only mappings that are private, not writable, backed by a
//! file and without any anonymous (copied-on-write) page are listed, so
//! dropping them loses nothing. The listing is pure.

/// The `(start, len)` of every mapping in `smaps` (the text of
/// `/proc/self/smaps`) that can be dropped without losing anything.
pub fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // (start, end, eligible by its header line) of the mapping being read.
    let mut current: Option<(usize, usize, bool)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && !first.ends_with(':')
        {
            let range = (
                usize::from_str_radix(start, 16).ok(),
                usize::from_str_radix(end, 16).ok(),
            );
            let perms = words.next().unwrap_or("");
            let inode = words.nth(2).unwrap_or("0");
            let path = words.next().unwrap_or("");
            let eligible = perms.len() == 4
                && !perms.contains('w')
                && perms.ends_with('p')
                && inode != "0"
                && path.starts_with('/');
            current = match range {
                (Some(s), Some(e)) if e > s => Some((s, e, eligible)),
                _ => None,
            };
            continue;
        }
        if first == "Anonymous:"
            && let Some((start, end, true)) = current
            && words.next() == Some("0")
        {
            found.push((start, end - start));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55555eb49000-55555eb6b000 rw-p 00000000 00:00 0                          [heap]
Rss:                  52 kB
Anonymous:            52 kB
7f2d25800000-7f2d2589b000 r--p 00000000 fe:00 5841851                    /usr/sbin/zonit
Rss:                 384 kB
Anonymous:             0 kB
7f2d2589b000-7f2d25aab000 r-xp 0009a000 fe:00 5841851                    /usr/sbin/zonit
Rss:                1528 kB
Anonymous:             0 kB
7f2d25aab000-7f2d25aba000 r--p 002a9000 fe:00 5841851                    /usr/sbin/zonit
Rss:                  60 kB
Anonymous:            60 kB
7f2d25aba000-7f2d25abd000 rw-p 002b7000 fe:00 5841851                    /usr/sbin/zonit
Anonymous:             0 kB
7f2d25c30000-7f2d25c33000 rw-s 00000000 00:10 1030                       anon_inode:kvm-vcpu:0
Anonymous:             0 kB
7f2d25c3c000-7f2d25c3e000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_file_mappings_without_private_pages_are_listed() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            vec![(0x7f2d_2580_0000, 0x9b000), (0x7f2d_2589_b000, 0x21_0000)]
        );
    }

    #[test]
    fn nothing_is_listed_from_garbage() {
        assert!(clean_file_mappings("").is_empty());
        assert!(clean_file_mappings("zz-yy r--p 0 fe:00 1 /x\nAnonymous: 0 kB\n").is_empty());
    }
}
