//! `[[host.mounts]]`: data file systems PID 1 mounts at boot, so that
//! zone roots, overlay layers and guest images can live on a disk that
//! survives a reboot.
//!
//! Owns the model ([`HostMount`], [`MountSource`]) and its validation.
//! What a source means on a running machine (finding the block device,
//! waiting for it, mounting in order) is `init::datamounts`; here the
//! values are only checked where they are written, so that `zonit check`
//! reports every mistake with its position.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::RawHostMount;
use super::validate::Checker;

/// How long boot waits for a mount's device when `wait` is not given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// Longest `wait`: a bound on a typo that would hold boot for hours.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// File systems that need no device: their `source` is only a name.
pub const DEVICELESS: [&str; 2] = ["tmpfs", "ramfs"];

/// Where a host mount's file system comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// `LABEL=...`: the file system's label (ext4, xfs, btrfs, vfat).
    Label(String),
    /// `UUID=...`: the file system's UUID, or a vfat volume id
    /// (`ABCD-1234`); compared without regard to case.
    Uuid(String),
    /// `PARTLABEL=...`: the name of a GPT partition.
    PartLabel(String),
    /// A device path such as `/dev/vdb1`.
    Device(PathBuf),
    /// The source name of a file system without a device (tmpfs).
    Name(String),
}

impl fmt::Display for MountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountSource::Label(l) => write!(f, "LABEL={l}"),
            MountSource::Uuid(u) => write!(f, "UUID={u}"),
            MountSource::PartLabel(l) => write!(f, "PARTLABEL={l}"),
            MountSource::Device(p) => write!(f, "{}", p.display()),
            MountSource::Name(n) => write!(f, "{n}"),
        }
    }
}

impl MountSource {
    /// Whether boot has to find a block device for it.
    pub fn needs_device(&self) -> bool {
        !matches!(self, MountSource::Name(_))
    }
}

/// One `[[host.mounts]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// The file system.
    pub source: MountSource,
    /// Mount point (absolute, no `..`, not `/` and not under an API file
    /// system); created if missing.
    pub target: PathBuf,
    /// File system type as mount(2) takes it (`ext4`, `xfs`, ...).
    pub fs: String,
    /// Mount options as written (`noatime`, `ro`, `discard`, ...); which
    /// are flags and which are data is decided where they are applied.
    pub options: Vec<String>,
    /// How long boot waits for the source's device to appear.
    pub wait: Duration,
    /// Units whose paths lie under the target do not start without it.
    pub required: bool,
}

/// Targets PID 1 mounts itself, or that hold the machine's own state.
const RESERVED_TARGETS: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];

/// Validates every entry; a bad one is reported and left out.
pub(super) fn host_mounts(
    c: &mut Checker<'_, '_>,
    raw: &[Spanned<RawHostMount>],
) -> Vec<HostMount> {
    let mut out: Vec<HostMount> = Vec::new();
    // Every well-formed target so far, also of entries with other mistakes.
    let mut targets: Vec<PathBuf> = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let key = |k: &str| format!("mounts[{i}].{k}");
        let m = entry.get_ref();
        let fs = match &m.fs {
            Some(fs) => fs_type(c, &key("fs"), fs),
            None => {
                c.error(
                    entry.span(),
                    &format!("mounts[{i}]"),
                    "`fs` is missing; give the file system type, as in fs = \"ext4\"",
                );
                None
            }
        };
        let deviceless = fs.as_deref().is_some_and(|f| DEVICELESS.contains(&f));
        let source = match (&m.source, &fs) {
            (Some(s), _) => source(c, &key("source"), s, deviceless),
            (None, Some(fs)) if deviceless => Some(MountSource::Name(fs.clone())),
            (None, _) => {
                c.error(
                    entry.span(),
                    &format!("mounts[{i}]"),
                    "`source` is missing; give LABEL=..., UUID=..., PARTLABEL=... or a device path",
                );
                None
            }
        };
        let target = match &m.target {
            Some(t) => target(c, &key("target"), t, &mut targets),
            None => {
                c.error(
                    entry.span(),
                    &format!("mounts[{i}]"),
                    "`target` is missing; give the mount point, as in target = \"/data\"",
                );
                None
            }
        };
        let options = options(c, &key("options"), m.options.as_deref().unwrap_or_default());
        let wait = match c.duration(&key("wait"), m.wait.as_ref()) {
            Some(w) if w > MAX_WAIT => {
                if let Some(raw) = &m.wait {
                    c.error(
                        raw.span(),
                        &key("wait"),
                        format!("boot waits at most {}s for a device", MAX_WAIT.as_secs()),
                    );
                }
                None
            }
            Some(w) => Some(w),
            None if m.wait.is_some() => None,
            None => Some(DEFAULT_WAIT),
        };
        let required = m.required.as_ref().is_none_or(|r| *r.get_ref());
        if let (Some(source), Some(target), Some(fs), Some(options), Some(wait)) =
            (source, target, fs, options, wait)
        {
            out.push(HostMount {
                source,
                target,
                fs,
                options,
                wait,
                required,
            });
        }
    }
    out
}

fn fs_type(c: &mut Checker<'_, '_>, key: &str, fs: &Spanned<String>) -> Option<String> {
    let name = fs.get_ref();
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._".contains(&b));
    if valid {
        Some(name.clone())
    } else {
        c.error(
            fs.span(),
            key,
            format!(
                "\"{}\" is not a file system type; write it as mount(8) takes it, such as \"ext4\" or \"xfs\"",
                name.escape_debug()
            ),
        );
        None
    }
}

fn source(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: &Spanned<String>,
    deviceless: bool,
) -> Option<MountSource> {
    let text = value.get_ref();
    let bad = |c: &mut Checker<'_, '_>, why: String| {
        c.error(value.span(), key, why);
        None
    };
    if text.contains('\0') {
        return bad(c, "the value cannot contain a NUL byte".into());
    }
    if deviceless {
        return if text.is_empty() {
            bad(c, "the name is empty".into())
        } else {
            Some(MountSource::Name(text.clone()))
        };
    }
    if let Some((tag, v)) = text.split_once('=') {
        if v.is_empty() {
            return bad(c, format!("{tag}= has no value"));
        }
        return match tag {
            "LABEL" => Some(MountSource::Label(v.to_owned())),
            "PARTLABEL" => Some(MountSource::PartLabel(v.to_owned())),
            "UUID" if v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
                Some(MountSource::Uuid(v.to_owned()))
            }
            "UUID" => bad(
                c,
                format!(
                    "\"{}\" is not a UUID; write hex digits and dashes, as blkid shows them",
                    v.escape_debug()
                ),
            ),
            _ => bad(
                c,
                format!(
                    "\"{}\" is not a source zonit can find; use LABEL=, UUID=, PARTLABEL= or a device path",
                    text.escape_debug()
                ),
            ),
        };
    }
    if text.starts_with("/dev/") && !has_parent_dir(Path::new(text)) {
        return Some(MountSource::Device(PathBuf::from(text)));
    }
    bad(
        c,
        format!(
            "\"{}\" is neither LABEL=, UUID=, PARTLABEL= nor a device path under /dev",
            text.escape_debug()
        ),
    )
}

fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|p| p == Component::ParentDir)
}

fn target(
    c: &mut Checker<'_, '_>,
    key: &str,
    value: &Spanned<String>,
    earlier: &mut Vec<PathBuf>,
) -> Option<PathBuf> {
    let path = c.abs_path(key, Some(value))?;
    let clean: PathBuf = path.components().collect();
    let why = if has_parent_dir(&path) {
        Some("the target cannot contain `..`; name the mount point directly".to_string())
    } else if clean == Path::new("/") {
        Some("the root cannot be a data mount; mount the disk on a directory such as /data".into())
    } else if let Some(r) = RESERVED_TARGETS.iter().find(|r| clean.starts_with(r)) {
        Some(format!(
            "{r} is set up by zonit itself; mount data disks elsewhere, such as /data"
        ))
    } else if earlier.contains(&clean) {
        Some(format!(
            "{} is the target of an earlier mount; one file system per mount point",
            clean.display()
        ))
    } else {
        None
    };
    match why {
        Some(why) => {
            c.error(value.span(), key, why);
            None
        }
        None => {
            earlier.push(clean.clone());
            Some(clean)
        }
    }
}

fn options(c: &mut Checker<'_, '_>, key: &str, raw: &[Spanned<String>]) -> Option<Vec<String>> {
    let mut ok = true;
    let mut out = Vec::with_capacity(raw.len());
    for o in raw {
        let text = o.get_ref();
        if text.is_empty() || text.contains([',', '\0']) || text.contains(char::is_whitespace) {
            c.error(
                o.span(),
                key,
                format!(
                    "\"{}\" is not one mount option; give each option as its own string, as in [\"noatime\", \"discard\"]",
                    text.escape_debug()
                ),
            );
            ok = false;
        } else {
            out.push(text.clone());
        }
    }
    ok.then_some(out)
}
