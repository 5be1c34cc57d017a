//! The monitor's command line (docs/vmm.md, "Command line"), parsed and
//! checked against the guest limits ([`super::limits`]) before anything is
//! opened.

use std::path::PathBuf;

use super::limits;

/// A `--disk` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOption {
    /// Image file.
    pub path: PathBuf,
    /// Opened read-only and offered read-only to the guest.
    pub readonly: bool,
}

/// The monitor's parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `--kernel`.
    pub kernel: PathBuf,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// `--cmdline`.
    pub cmdline: String,
    /// `--memory`, bytes.
    pub memory: u64,
    /// `--vcpus`.
    pub vcpus: u8,
    /// `--disk`, in order.
    pub disks: Vec<DiskOption>,
    /// `--status-fd`: an inherited pipe for the agent ([`Status`]).
    pub status_fd: Option<i32>,
}

/// The usage text.
pub const USAGE: &str = "usage: zonit vmm --kernel PATH [--initrd PATH] [--cmdline STR] \
[--memory BYTES] [--vcpus N] [--disk PATH[,ro]]... [--status-fd N]";

/// Errors in the monitor's command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// `--help` was asked for.
    #[error("{USAGE}")]
    Help,
    /// An unknown argument.
    #[error("unknown argument {0:?}\n{USAGE}")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value\n{USAGE}")]
    MissingValue(String),
    /// `--kernel` is missing.
    #[error("--kernel is required\n{USAGE}")]
    MissingKernel,
    /// A value that does not parse or is out of bounds.
    #[error("invalid {flag} {value:?}: {reason}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The options together exceed a limit.
    #[error(transparent)]
    Limit(limits::LimitError),
}

/// Parses `--status-fd`'s value: a descriptor number above stdio.
fn status_fd(value: &str) -> Result<i32, OptionsError> {
    value
        .parse::<i32>()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| {
            bad(
                "--status-fd",
                value,
                "expected a descriptor number above 2".into(),
            )
        })
}

fn bad(flag: &'static str, value: &str, reason: String) -> OptionsError {
    OptionsError::BadValue {
        flag,
        value: value.to_string(),
        reason,
    }
}

impl Options {
    /// Parses the arguments that follow `vmm`.
    pub fn parse(args: &[String]) -> Result<Self, OptionsError> {
        let mut kernel = None;
        let mut opts = Options {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            memory: limits::DEFAULT_MEMORY,
            vcpus: 1,
            disks: Vec::new(),
            status_fd: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(OptionsError::Help);
            }
            if !matches!(
                flag,
                "--kernel"
                    | "--initrd"
                    | "--cmdline"
                    | "--memory"
                    | "--vcpus"
                    | "--disk"
                    | "--status-fd"
            ) {
                return Err(OptionsError::Unknown(arg.clone()));
            }
            let value = match inline.or_else(|| it.next().cloned()) {
                Some(v) => v,
                None => return Err(OptionsError::MissingValue(flag.to_string())),
            };
            match flag {
                "--kernel" => kernel = Some(PathBuf::from(value)),
                "--initrd" => opts.initrd = Some(PathBuf::from(value)),
                "--memory" => {
                    opts.memory = limits::parse_memory(&value)
                        .map_err(|why| bad("--memory", &value, why))
                        .and_then(|bytes| {
                            limits::check_memory(bytes)
                                .map_err(|e| bad("--memory", &value, e.to_string()))
                        })?;
                }
                "--vcpus" => {
                    opts.vcpus = value
                        .parse::<i64>()
                        .map_err(|_| bad("--vcpus", &value, "not a number".into()))
                        .and_then(|n| {
                            limits::check_vcpus(n)
                                .map_err(|e| bad("--vcpus", &value, e.to_string()))
                        })?;
                }
                "--status-fd" => {
                    opts.status_fd = Some(status_fd(&value)?);
                }
                "--cmdline" => {
                    limits::check_cmdline(&value)
                        .map_err(|e| bad("--cmdline", &value, e.to_string()))?;
                    opts.cmdline = value;
                }
                _ => {
                    let (path, readonly) = match value.strip_suffix(",ro") {
                        Some(p) => (p, true),
                        None => (value.as_str(), false),
                    };
                    if path.is_empty() {
                        return Err(bad("--disk", &value, "expected PATH or PATH,ro".into()));
                    }
                    opts.disks.push(DiskOption {
                        path: PathBuf::from(path),
                        readonly,
                    });
                }
            }
        }
        opts.kernel = kernel.ok_or(OptionsError::MissingKernel)?;
        limits::check_virtio_devices(opts.disks.len()).map_err(OptionsError::Limit)?;
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_every_flag() {
        let o = Options::parse(&args(
            "--kernel /k --initrd /i --cmdline console=ttyS0 --memory 64M --vcpus 2 --disk /a --disk=/b,ro",
        ))
        .unwrap();
        assert_eq!(o.kernel, PathBuf::from("/k"));
        assert_eq!(o.initrd, Some(PathBuf::from("/i")));
        assert_eq!(o.cmdline, "console=ttyS0");
        assert_eq!(o.memory, 64 << 20);
        assert_eq!(o.vcpus, 2);
        assert_eq!(
            o.disks,
            vec![
                DiskOption {
                    path: "/a".into(),
                    readonly: false
                },
                DiskOption {
                    path: "/b".into(),
                    readonly: true
                }
            ]
        );
    }

    #[test]
    fn options_defaults_and_errors() {
        let o = Options::parse(&args("--kernel /k")).unwrap();
        assert_eq!(
            (o.memory, o.vcpus, o.cmdline.as_str()),
            (limits::DEFAULT_MEMORY, 1, "")
        );
        assert_eq!(Options::parse(&args("")), Err(OptionsError::MissingKernel));
        assert_eq!(
            Options::parse(&args("--kernel")),
            Err(OptionsError::MissingValue("--kernel".into()))
        );
        assert!(matches!(
            Options::parse(&args("--kernel /k --bogus")),
            Err(OptionsError::Unknown(_))
        ));
        assert!(matches!(
            Options::parse(&args("--kernel /k --vcpus 0")),
            Err(OptionsError::BadValue { .. })
        ));
        assert!(matches!(
            Options::parse(&args("--kernel /k --memory 1X")),
            Err(OptionsError::BadValue { .. })
        ));
        assert_eq!(Options::parse(&args("--help")), Err(OptionsError::Help));
    }

    #[test]
    fn options_outside_the_guest_limits_are_refused() {
        for (line, flag) in [
            ("--kernel /k --vcpus 255", "--vcpus"),
            ("--kernel /k --memory 65538K", "--memory"),
            ("--kernel /k --memory 2T", "--memory"),
            ("--kernel /k --memory 15M", "--memory"),
        ] {
            match Options::parse(&args(line)) {
                Err(OptionsError::BadValue { flag: f, .. }) => assert_eq!(f, flag, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let nine = format!("--kernel /k{}", " --disk /d".repeat(9));
        assert_eq!(
            Options::parse(&args(&nine)),
            Err(OptionsError::Limit(limits::LimitError::VirtioDevices(9)))
        );
        let long = vec![
            "--kernel".to_string(),
            "/k".into(),
            "--cmdline".into(),
            "x".repeat(limits::MAX_CMDLINE + 1),
        ];
        assert!(matches!(
            Options::parse(&long),
            Err(OptionsError::BadValue {
                flag: "--cmdline",
                ..
            })
        ));
    }
}
