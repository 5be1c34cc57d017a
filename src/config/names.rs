//! The vocabularies the config refers to by name: unit names, signals,
//! capabilities and resource limits.
//!
//! Signal numbers come from `libc` so they match the target; capability
//! numbers are those of `linux/capability.h`, which are a stable kernel ABI
//! (libc has no constants for them).

use nix::sys::resource::Resource;

/// Checks a zone or guest name against `[a-z0-9][a-z0-9-]{0,31}`.
///
/// The rule keeps names usable as cgroup directory names, host names and
/// file names without escaping.
pub fn is_valid_unit_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_lowercase() || first.is_ascii_digit() => {}
        _ => return false,
    }
    bytes.len() <= 32
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Checks a host name as the kernel and resolvers expect it: 1 to 64 bytes
/// (`HOST_NAME_MAX`), dot-separated labels of letters, digits and inner
/// hyphens.
pub fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Signals a zone may be stopped with, without the `SIG` prefix.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ABRT", libc::SIGABRT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// The number of signal `name` (`SIGTERM`, `TERM`, `sigterm`, ...).
pub fn signal_number(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, num)| *num)
}

/// Every accepted signal name, for error messages.
pub fn signal_names() -> String {
    SIGNALS
        .iter()
        .map(|(n, _)| format!("SIG{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Capability names without the `CAP_` prefix; the index is the number.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of capability `name` (`CAP_NET_RAW`, `net_raw`, ...).
pub fn capability_number(name: &str) -> Option<u8> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .position(|n| *n == bare)
        .and_then(|i| u8::try_from(i).ok())
}

/// Docker's default capability set, the default `capabilities` of a zone:
/// enough for ordinary services (bind low ports, change owners, switch
/// users) and nothing that reaches the host (no SYS_ADMIN, NET_ADMIN,
/// SYS_MODULE, SYS_PTRACE, ...). Sorted by number.
pub const DEFAULT_CAPABILITIES: [u8; 14] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// The resource limits `rlimits` takes: the `RLIMIT_*` constants of
/// `setrlimit(2)`, named lowercased without the prefix. The one table for
/// both the names a config may use and what they set.
pub const RLIMITS: [(&str, Resource); 16] = [
    ("as", Resource::RLIMIT_AS),
    ("core", Resource::RLIMIT_CORE),
    ("cpu", Resource::RLIMIT_CPU),
    ("data", Resource::RLIMIT_DATA),
    ("fsize", Resource::RLIMIT_FSIZE),
    ("locks", Resource::RLIMIT_LOCKS),
    ("memlock", Resource::RLIMIT_MEMLOCK),
    ("msgqueue", Resource::RLIMIT_MSGQUEUE),
    ("nice", Resource::RLIMIT_NICE),
    ("nofile", Resource::RLIMIT_NOFILE),
    ("nproc", Resource::RLIMIT_NPROC),
    ("rss", Resource::RLIMIT_RSS),
    ("rtprio", Resource::RLIMIT_RTPRIO),
    ("rttime", Resource::RLIMIT_RTTIME),
    ("sigpending", Resource::RLIMIT_SIGPENDING),
    ("stack", Resource::RLIMIT_STACK),
];

/// The resource `name` sets in `rlimits`.
pub fn rlimit(name: &str) -> Option<Resource> {
    RLIMITS.iter().find(|(n, _)| *n == name).map(|&(_, r)| r)
}

/// Edit distance counting insertions, deletions, substitutions and swaps
/// of neighbours (optimal string alignment), to suggest the key a typo was
/// meant to be: `zoen` is one edit from `zone`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a typo:
/// a few edits away for its length, or a longer or shorter spelling of it
/// (`rootfs` for `root`).
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .filter_map(|c| {
            let d = edit_distance(word, c);
            let affix = word.len() >= 3 && (c.starts_with(word) || word.starts_with(c));
            // One edit turns any one-letter name into any other: no hint.
            ((d <= (c.len() / 3).max(1) && d < c.len()) || affix).then_some((d, *c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn each_rlimit_name_sets_its_own_resource() {
        let mut resources: Vec<Resource> = RLIMITS.iter().map(|&(_, r)| r).collect();
        resources.sort();
        resources.dedup();
        assert_eq!(resources.len(), RLIMITS.len());
        assert_eq!(rlimit("nofile"), Some(Resource::RLIMIT_NOFILE));
        assert_eq!(rlimit("nofiles"), None);
    }

    #[test]
    fn unit_names_follow_the_documented_pattern() {
        assert!(is_valid_unit_name("web"));
        assert!(is_valid_unit_name("0db-1"));
        assert!(is_valid_unit_name(&"a".repeat(32)));
        assert!(!is_valid_unit_name(&"a".repeat(33)));
        assert!(!is_valid_unit_name(""));
        assert!(!is_valid_unit_name("-web"));
        assert!(!is_valid_unit_name("Web"));
        assert!(!is_valid_unit_name("web_1"));
        assert!(!is_valid_unit_name("wéb"));
    }

    #[test]
    fn hostnames_are_checked_label_by_label() {
        assert!(is_valid_hostname("edge-01"));
        assert!(is_valid_hostname("edge-01.example.org"));
        assert!(!is_valid_hostname("edge-.example"));
        assert!(!is_valid_hostname("a..b"));
        assert!(!is_valid_hostname("has space"));
        assert!(!is_valid_hostname(&"a".repeat(65)));
    }

    #[test]
    fn signals_are_found_with_or_without_prefix_in_any_case() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("TERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("sigkill"), Some(libc::SIGKILL));
        assert_eq!(signal_number("SIGPWR"), Some(libc::SIGPWR));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("15"), None);
    }

    #[test]
    fn capabilities_map_to_kernel_numbers() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("net_bind_service"), Some(10));
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("cap_checkpoint_restore"), Some(40));
        assert_eq!(capability_number("CAP_NOPE"), None);
    }

    #[test]
    fn default_capabilities_are_dockers_set() {
        let names = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ];
        let mut numbers: Vec<u8> = names.iter().filter_map(|n| capability_number(n)).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, DEFAULT_CAPABILITIES);
    }

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        let keys = ["root", "template", "command", "hostname"];
        assert_eq!(closest("rootfs", &keys), Some("root"));
        assert_eq!(closest("comand", &keys), Some("command"));
        assert_eq!(closest("kernel", &keys), None);
        assert_eq!(closest("foo", &keys), None);
        assert_eq!(closest("zoen", &["host", "zone"]), Some("zone"));
    }
}
