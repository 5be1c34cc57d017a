//! The monitor's command line (docs/vmm.md, "Command line"), parsed and
//! checked against the guest limits ([`super::limits`]) before anything is
//! opened.

use std::path::PathBuf;

use super::limits;
use crate::config::network::parse_mac;

/// A `--disk` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOption {
    /// Image file.
    pub path: PathBuf,
    /// Opened read-only and offered read-only to the guest.
    pub readonly: bool,
}

/// A `--net` argument: a network card on an inherited tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOption {
    /// The tap's descriptor, inherited from the agent.
    pub fd: i32,
    /// The card's MAC address.
    pub mac: [u8; 6],
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
    /// `--net`, in order (after the disks on the virtio bus).
    pub nets: Vec<NetOption>,
    /// `--status-fd`: an inherited pipe on which the monitor reports to
    /// the agent.
    pub status_fd: Option<i32>,
}

/// The usage text.
pub const USAGE: &str = "usage: zonit vmm --kernel PATH [--initrd PATH] [--cmdline STR] \
[--memory BYTES] [--vcpus N] [--disk PATH[,ro]]... [--net fd=N,mac=MAC]... [--status-fd N]";

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
    /// One inherited descriptor given for two uses.
    #[error("descriptor {0} is given twice (--net, --status-fd)")]
    SharedFd(i32),
}

/// Parses an inherited descriptor's number: above stdio.
fn inherited_fd(flag: &'static str, value: &str, text: &str) -> Result<i32, OptionsError> {
    text.parse::<i32>()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| bad(flag, value, "expected a descriptor number above 2".into()))
}

/// Parses `--net fd=N,mac=MAC`.
fn net(value: &str) -> Result<NetOption, OptionsError> {
    let (mut fd, mut mac) = (None, None);
    for field in value.split(',') {
        match field.split_once('=') {
            Some(("fd", n)) => fd = Some(inherited_fd("--net", value, n)?),
            Some(("mac", m)) => {
                mac = Some(parse_mac(m).ok_or_else(|| {
                    bad(
                        "--net",
                        value,
                        "expected a MAC like 52:54:00:12:34:56".into(),
                    )
                })?);
            }
            _ => return Err(bad("--net", value, "expected fd=N,mac=MAC".into())),
        }
    }
    match (fd, mac) {
        (Some(fd), Some(mac)) => Ok(NetOption { fd, mac }),
        _ => Err(bad("--net", value, "expected fd=N,mac=MAC".into())),
    }
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
            nets: Vec::new(),
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
                    | "--net"
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
                    opts.status_fd = Some(inherited_fd("--status-fd", &value, &value)?);
                }
                "--net" => opts.nets.push(net(&value)?),
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
        limits::check_virtio_devices(opts.disks.len() + opts.nets.len())
            .map_err(OptionsError::Limit)?;
        let mut fds: Vec<i32> = opts
            .nets
            .iter()
            .map(|n| n.fd)
            .chain(opts.status_fd)
            .collect();
        fds.sort_unstable();
        if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(OptionsError::SharedFd(w[0]));
        }
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
    fn net_options_carry_an_inherited_tap_and_a_mac() {
        let o = Options::parse(&args(
            "--kernel /k --net fd=4,mac=52:54:00:12:34:56 --net=mac=02:00:00:00:00:0A,fd=5 --status-fd 3",
        ))
        .unwrap();
        assert_eq!(
            o.nets,
            vec![
                NetOption {
                    fd: 4,
                    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56]
                },
                NetOption {
                    fd: 5,
                    mac: [2, 0, 0, 0, 0, 0x0a]
                }
            ]
        );
        for bad in [
            "--net fd=4",
            "--net mac=52:54:00:12:34:56",
            "--net fd=1,mac=52:54:00:12:34:56",
            "--net fd=4,mac=52:54:00:12:34",
            "--net fd=4,mac=52:54:00:12:34:5g",
            "--net fd=4,mac=52:54:00:12:34:56:78",
            "--net fd=4,mac=52:54:00:12:34:56,mtu=9000",
        ] {
            assert!(
                matches!(
                    Options::parse(&args(&format!("--kernel /k {bad}"))),
                    Err(OptionsError::BadValue { flag: "--net", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            Options::parse(&args(
                "--kernel /k --net fd=3,mac=52:54:00:12:34:56 --status-fd 3"
            )),
            Err(OptionsError::SharedFd(3))
        );
        // Disks and cards share the eight virtio slots.
        let nine = format!(
            "--kernel /k{}{}",
            " --disk /d".repeat(5),
            (0..4)
                .map(|i| format!(" --net fd={},mac=02:00:00:00:00:0{i}", 10 + i))
                .collect::<String>()
        );
        assert_eq!(
            Options::parse(&args(&nine)),
            Err(OptionsError::Limit(limits::LimitError::VirtioDevices(9)))
        );
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
