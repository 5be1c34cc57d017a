//! The zone's file-system plan, computed purely from its config: which
//! mounts, directories, device nodes and links make up the zone's view, in
//! the order they must be applied. `rootfs` applies the plan inside the
//! zone's new mount namespace.
//!
//! Invariants: every path in the plan before [`Op::PivotRoot`] is a host
//! path under the zone's root (or its overlay state directory); every path
//! after it is a path inside the zone. Every zone-owned mount gets `nosuid`
//! and `nodev` except the root itself, whose flags come from the host.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::config::{TemplateMode, Zone};

/// Device nodes every zone gets, bind-mounted from the host's `/dev`.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make every mount in the new namespace private, so nothing the zone
    /// mounts propagates back to the host.
    MakePrivate,
    /// Create a directory (and parents) if missing.
    Mkdir(PathBuf),
    /// Mount a file system.
    Mount {
        /// Source (a device name, `none`, or the fs type).
        source: String,
        /// Mount point.
        target: PathBuf,
        /// File-system type.
        fstype: String,
        /// Mount flags.
        flags: MsFlags,
        /// fs-specific data.
        data: Option<String>,
    },
    /// Bind `source` onto `target` (created as an empty file or directory
    /// like the source), optionally read-only.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Mount point.
        target: PathBuf,
        /// Remount the bind read-only.
        readonly: bool,
        /// Recursive bind (`MS_REC`).
        recursive: bool,
    },
    /// Bind a configured host path to a path inside the root, resolving the
    /// target without following symlinks out of the root.
    UserBind {
        /// Host path.
        source: PathBuf,
        /// The zone's root on the host.
        root: PathBuf,
        /// Absolute path inside the zone.
        target: PathBuf,
        /// Read-only bind.
        readonly: bool,
    },
    /// Create a symlink `link` -> `target`.
    Symlink {
        /// What the link points at.
        target: PathBuf,
        /// The link itself.
        link: PathBuf,
    },
    /// Make `root` the zone's `/` and detach the old root.
    PivotRoot(PathBuf),
}

/// Where an overlay-provisioned zone keeps its upper and work directories:
/// a hidden sibling of the root, `<parent>/.<root name>.overlay/`.
pub fn overlay_state_dir(root: &Path) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    root.with_file_name(format!(".{name}.overlay"))
}

/// The mount plan for `zone`.
pub fn plan(zone: &Zone) -> Vec<Op> {
    let root = zone.root.clone();
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut ops = vec![Op::MakePrivate, Op::Mkdir(root.clone())];

    match (&zone.template, zone.template_mode) {
        (Some(template), TemplateMode::Overlay) => {
            let state = overlay_state_dir(&root);
            let (upper, work) = (state.join("upper"), state.join("work"));
            ops.push(Op::Mkdir(upper.clone()));
            ops.push(Op::Mkdir(work.clone()));
            ops.push(Op::Mount {
                source: "overlay".into(),
                target: root.clone(),
                fstype: "overlay".into(),
                flags: MsFlags::empty(),
                data: Some(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    template.display(),
                    upper.display(),
                    work.display()
                )),
            });
        }
        // pivot_root needs the new root to be a mount point: bind it onto
        // itself. Copy-mode templates were copied into the root already.
        _ => ops.push(Op::Bind {
            source: root.clone(),
            target: root.clone(),
            readonly: false,
            recursive: true,
        }),
    }

    let at = |p: &str| root.join(p);
    ops.push(Op::Mkdir(at("proc")));
    ops.push(Op::Mount {
        source: "proc".into(),
        target: at("proc"),
        fstype: "proc".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: None,
    });
    ops.push(Op::Mkdir(at("sys")));
    ops.push(Op::Mount {
        source: "sysfs".into(),
        target: at("sys"),
        fstype: "sysfs".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        data: None,
    });

    // A fresh /dev: nodev tmpfs, so a node the zone creates can never be
    // opened; the allowed devices are binds of the host's nodes, which keep
    // the host mount's permission to open devices.
    ops.push(Op::Mkdir(at("dev")));
    ops.push(Op::Mount {
        source: "tmpfs".into(),
        target: at("dev"),
        fstype: "tmpfs".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: Some("mode=755,size=64k".into()),
    });
    for dev in DEVICES {
        ops.push(Op::Bind {
            source: Path::new("/dev").join(dev),
            target: at("dev").join(dev),
            readonly: false,
            recursive: false,
        });
    }
    ops.push(Op::Mkdir(at("dev/pts")));
    ops.push(Op::Mount {
        source: "devpts".into(),
        target: at("dev/pts"),
        fstype: "devpts".into(),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620".into()),
    });
    ops.push(Op::Symlink {
        target: "pts/ptmx".into(),
        link: at("dev/ptmx"),
    });
    ops.push(Op::Mkdir(at("dev/shm")));
    ops.push(Op::Mount {
        source: "shm".into(),
        target: at("dev/shm"),
        fstype: "tmpfs".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: Some("mode=1777,size=64m".into()),
    });
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(Op::Symlink {
            target: target.into(),
            link: at("dev").join(name),
        });
    }

    for m in &zone.mounts {
        ops.push(Op::UserBind {
            source: m.source.clone(),
            root: root.clone(),
            target: m.target.clone(),
            readonly: m.readonly,
        });
    }

    ops.push(Op::PivotRoot(root));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BindMount, Network};
    use std::collections::BTreeMap;

    fn zone() -> Zone {
        Zone {
            root: "/zones/web".into(),
            template: None,
            template_mode: TemplateMode::Overlay,
            command: vec!["/bin/true".into()],
            hostname: "web".into(),
            env: BTreeMap::new(),
            workdir: "/".into(),
            user: (0, 0),
            capabilities: vec![],
            mounts: vec![],
            network: Network::None,
            memory_max: None,
            cpu_max: None,
            pids_max: None,
            rlimits: BTreeMap::new(),
            stop_signal: libc::SIGTERM,
        }
    }

    fn mount_targets(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Mount { target, .. } | Op::Bind { target, .. } => {
                    Some(target.display().to_string())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn plan_starts_private_and_ends_with_pivot_root() {
        let ops = plan(&zone());
        assert_eq!(ops.first(), Some(&Op::MakePrivate));
        assert_eq!(ops.last(), Some(&Op::PivotRoot("/zones/web".into())));
    }

    #[test]
    fn root_without_template_is_bound_onto_itself() {
        let ops = plan(&zone());
        assert!(ops.contains(&Op::Bind {
            source: "/zones/web".into(),
            target: "/zones/web".into(),
            readonly: false,
            recursive: true,
        }));
    }

    #[test]
    fn overlay_template_mounts_overlay_with_sibling_state_dir() {
        let mut z = zone();
        z.template = Some("/templates/base".into());
        let ops = plan(&z);
        let data = ops.iter().find_map(|op| match op {
            Op::Mount { fstype, data, .. } if fstype == "overlay" => data.clone(),
            _ => None,
        });
        assert_eq!(
            data.as_deref(),
            Some(
                "lowerdir=/templates/base,upperdir=/zones/.web.overlay/upper,\
                 workdir=/zones/.web.overlay/work"
            )
        );
    }

    #[test]
    fn dev_holds_only_the_allowed_devices() {
        let targets = mount_targets(&plan(&zone()));
        let devs: Vec<&str> = targets
            .iter()
            .filter_map(|t| t.strip_prefix("/zones/web/dev/"))
            .collect();
        assert_eq!(
            devs,
            [
                "null", "zero", "full", "random", "urandom", "tty", "pts", "shm"
            ]
        );
    }

    #[test]
    fn every_zone_mount_is_nosuid_and_dev_is_nodev() {
        for op in plan(&zone()) {
            if let Op::Mount { target, flags, .. } = op {
                if target == Path::new("/zones/web") {
                    continue;
                }
                assert!(flags.contains(MsFlags::MS_NOSUID), "{target:?}");
                if target.ends_with("dev") || target.ends_with("proc") {
                    assert!(flags.contains(MsFlags::MS_NODEV), "{target:?}");
                }
            }
        }
    }

    #[test]
    fn proc_and_sys_are_mounted_before_pivot_and_sys_readonly() {
        let ops = plan(&zone());
        let sys = ops.iter().find_map(|op| match op {
            Op::Mount { fstype, flags, .. } if fstype == "sysfs" => Some(*flags),
            _ => None,
        });
        assert!(sys.is_some_and(|f| f.contains(MsFlags::MS_RDONLY)));
        assert!(
            ops.iter()
                .any(|op| matches!(op, Op::Mount { fstype, .. } if fstype == "proc"))
        );
    }

    #[test]
    fn user_binds_come_after_dev_and_before_pivot() {
        let mut z = zone();
        z.mounts.push(BindMount {
            source: "/data/web".into(),
            target: "/srv".into(),
            readonly: true,
        });
        let ops = plan(&z);
        let n = ops.len();
        assert_eq!(
            ops[n - 2],
            Op::UserBind {
                source: "/data/web".into(),
                root: "/zones/web".into(),
                target: "/srv".into(),
                readonly: true
            }
        );
    }
}
