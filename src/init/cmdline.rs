//! The kernel command line as zonit reads it (`/proc/cmdline`).
//!
//! Words zonit understands (everything else belongs to the kernel or is
//! ignored):
//!
//! | word | effect |
//! |---|---|
//! | `zonit.config=PATH` | config file instead of `/etc/zonit.toml` |
//! | `zonit.log=LEVEL` | log level (error, warn, info, debug, trace); overrides `[host] log_level` |
//! | `zonit.rescue` | if the config cannot be loaded, start a shell on the console even without `rescue_shell` (`/bin/sh`) |
//! | `zonit.shell` | debug shell: a root shell on the console *beside* the units, config or not (like systemd's debug-shell; never on a production box) |
//! | `zonit.debug_exit` | report the `exit_with` verdict through QEMU's isa-debug-exit port even when DMI does not say QEMU |
//!
//! Parsing is pure: it takes the text and never fails. A malformed word
//! is recorded in `ignored` so boot can say what it skipped.

/// What zonit takes from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `zonit.config=PATH`.
    pub config: Option<String>,
    /// `zonit.log=LEVEL`, already parsed.
    pub log: Option<log::LevelFilter>,
    /// `zonit.rescue`.
    pub rescue: bool,
    /// `zonit.shell`.
    pub shell: bool,
    /// `zonit.debug_exit`.
    pub debug_exit: bool,
    /// `zonit.*` words that were not understood, as written.
    pub ignored: Vec<String>,
}

/// Splits the command line into words the way the kernel does: blanks
/// separate words, double quotes group blanks into a word and are removed.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// A boolean flag word: `zonit.x`, `zonit.x=1|yes|on|true` turn it on,
/// `=0|no|off|false` off. `None` for any other value.
fn flag(value: Option<&str>) -> Option<bool> {
    match value {
        None | Some("1" | "yes" | "on" | "true" | "y") => Some(true),
        Some("0" | "no" | "off" | "false" | "n") => Some(false),
        Some(_) => None,
    }
}

/// Parses `/proc/cmdline` text. Later words win over earlier ones, as for
/// the kernel's own parameters. Everything after a bare `--` is for init as
/// arguments and is ignored here.
pub fn parse(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in words(text) {
        if word == "--" {
            break;
        }
        let Some(rest) = word.strip_prefix("zonit.") else {
            continue;
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (rest, None),
        };
        let ok = match key {
            "config" => match value {
                Some(v) if !v.is_empty() => {
                    c.config = Some(v.to_string());
                    true
                }
                _ => false,
            },
            "log" => match value.and_then(|v| v.parse::<log::LevelFilter>().ok()) {
                Some(level) => {
                    c.log = Some(level);
                    true
                }
                None => false,
            },
            "rescue" => flag(value).map(|b| c.rescue = b).is_some(),
            "shell" => flag(value).map(|b| c.shell = b).is_some(),
            "debug_exit" => flag(value).map(|b| c.debug_exit = b).is_some(),
            _ => false,
        };
        if !ok {
            c.ignored.push(word.clone());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zonit_words_are_picked_out_of_a_real_command_line() {
        let c = parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 zonit.config=/etc/t.toml zonit.log=debug zonit.rescue panic=-1\n",
        );
        assert_eq!(c.config.as_deref(), Some("/etc/t.toml"));
        assert_eq!(c.log, Some(log::LevelFilter::Debug));
        assert!(c.rescue);
        assert!(!c.shell);
        assert!(!c.debug_exit);
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn nothing_for_zonit_gives_defaults() {
        assert_eq!(parse("console=ttyS0 quiet"), Cmdline::default());
        assert_eq!(parse(""), Cmdline::default());
    }

    #[test]
    fn quotes_group_blanks_and_are_removed() {
        assert_eq!(
            words(r#"a "b c" zonit.config="/etc/my zonit.toml" d"#),
            ["a", "b c", "zonit.config=/etc/my zonit.toml", "d"]
        );
        let c = parse(r#"zonit.config="/etc/my zonit.toml""#);
        assert_eq!(c.config.as_deref(), Some("/etc/my zonit.toml"));
    }

    #[test]
    fn later_words_win_and_flags_take_values() {
        let c =
            parse("zonit.log=warn zonit.log=trace zonit.shell=1 zonit.rescue=off zonit.debug_exit");
        assert_eq!(c.log, Some(log::LevelFilter::Trace));
        assert!(c.shell);
        assert!(!c.rescue);
        assert!(c.debug_exit);
    }

    #[test]
    fn malformed_zonit_words_are_reported_not_guessed() {
        let c =
            parse("zonit.log=loud zonit.config= zonit.shell=maybe zonit.bogus zonit.config=/ok");
        assert_eq!(c.log, None);
        assert!(!c.shell);
        assert_eq!(c.config.as_deref(), Some("/ok"));
        assert_eq!(
            c.ignored,
            [
                "zonit.log=loud",
                "zonit.config=",
                "zonit.shell=maybe",
                "zonit.bogus"
            ]
        );
    }

    #[test]
    fn words_after_double_dash_are_init_arguments() {
        let c = parse("console=ttyS0 -- zonit.rescue");
        assert!(!c.rescue);
    }
}
