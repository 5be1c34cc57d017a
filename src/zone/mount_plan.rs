//! The zone's file-system plan, computed purely from its config: which
//! mounts, directories, device nodes and links make up the zone's view, in
//! the order they must be applied. `rootfs` applies the plan inside the
//! zone's new mount namespace.
//!
//! Invariants:
//! - paths before [`Op::BindRoot`] / [`Op::OverlayRoot`] are host paths the
//!   operator chose (the root, the overlay state directory); every path
//!   after them is a path *inside the zone*, which `rootfs` resolves from
//!   an fd of the root without following any symbolic link, because a
//!   previous run of the zone may have planted links anywhere in its tree;
//!   the names inside `/dev` ([`Op::Dev`]) are one component each, made
//!   from an fd of the fresh tmpfs the same op mounts there, which holds
//!   nothing the zone could have planted;
//! - every mount is `nosuid`, and every mount but the allowed device nodes
//!   and the zone's own devpts is `nodev`, the root included: a node the
//!   zone creates with CAP_MKNOD can never be opened;
//! - masks and read-only paths come after every other mount, so nothing
//!   mounted later can uncover them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::mount::MsFlags;

use crate::config::{TemplateMode, Zone};

/// Device nodes every zone gets, bind-mounted from the host's `/dev`.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Paths hidden from the zone: the union of the defaults of runc, Docker,
/// CRI-O and containerd. A file is covered with `/dev/null`, a directory
/// with an empty read-only tmpfs; a path the kernel lacks is skipped.
pub const MASKED: [&str; 14] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/devices/virtual/tpm",
    "/sys/firmware",
    "/sys/fs/selinux",
];

/// Per-CPU sysfs directories masked for every CPU the host has (a thermal
/// side channel, masked by the runtimes since 2025).
pub const MASKED_PER_CPU: [&str; 1] = ["thermal_throttle"];

/// Paths the zone may read but never write: the host's kernel knobs.
pub const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the plan needs to know about the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Numbers of the host's CPUs (`/sys/devices/system/cpu/cpuN`).
    pub cpus: Vec<u32>,
}

impl HostFacts {
    /// The running host's facts, read once per process, at its first zone
    /// start: every start needs them, and they hold for the kernel's life
    /// (a CPU's directory is there from boot for every CPU present; one
    /// hot-added later is masked in zones started by the next agent).
    pub fn get() -> &'static HostFacts {
        static FACTS: OnceLock<HostFacts> = OnceLock::new();
        FACTS.get_or_init(HostFacts::probe)
    }

    /// Reads the facts from the running host; what cannot be read is left
    /// empty (a zone then simply has fewer masks to apply).
    pub fn probe() -> HostFacts {
        let mut cpus: Vec<u32> = std::fs::read_dir("/sys/devices/system/cpu")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("cpu"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        cpus.sort_unstable();
        HostFacts { cpus }
    }
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make every mount in the new namespace private, so nothing the zone
    /// mounts propagates back to the host.
    MakePrivate,
    /// Create a host directory (and parents) if missing.
    HostDir(PathBuf),
    /// Bind the root onto itself, `nosuid,nodev`: pivot_root needs the new
    /// root to be a mount point, and the root's own files must never act
    /// as device nodes or setuid binaries.
    BindRoot(PathBuf),
    /// Mount an overlay on the root: the template as the shared read-only
    /// lower layer, a per-zone upper layer; `nosuid,nodev`.
    OverlayRoot {
        /// The zone's root.
        root: PathBuf,
        /// The template.
        lower: PathBuf,
        /// Per-zone writable layer.
        upper: PathBuf,
        /// overlayfs work directory (same file system as `upper`).
        work: PathBuf,
    },
    /// Mount a file system on a directory inside the zone (created if
    /// missing).
    Mount {
        /// Source (a device name, `none`, or the fs type).
        source: String,
        /// Mount point inside the zone.
        target: PathBuf,
        /// File-system type.
        fstype: String,
        /// Mount flags.
        flags: MsFlags,
        /// fs-specific data.
        data: Option<String>,
    },
    /// Make the zone's `/dev` whole, on a fresh tmpfs (see [`Dev`]).
    Dev(Dev),
    /// Bind a configured host path onto a path inside the zone.
    UserBind {
        /// Host path.
        source: PathBuf,
        /// Absolute path inside the zone.
        target: PathBuf,
        /// Read-only bind.
        readonly: bool,
    },
    /// Hide a path inside the zone (see [`MASKED`]).
    Mask(PathBuf),
    /// Make a path inside the zone read-only (see [`READ_ONLY`]).
    ReadOnly(PathBuf),
    /// Make the root the zone's `/` and detach the old root.
    PivotRoot,
}

/// The zone's `/dev`: a fresh `nosuid,nodev,noexec` tmpfs, so a node the
/// zone creates can never be opened, holding what a program expects to
/// find there. Every name is one component inside it. The tmpfs is
/// mounted by this plan and nothing of the zone runs before the plan is
/// applied, so nothing in it can be a planted link: `rootfs` creates and
/// mounts on its names directly from an fd of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dev {
    /// Mount flags of the tmpfs ([`DEV_FLAGS`]).
    pub flags: MsFlags,
    /// Options of the tmpfs.
    pub data: &'static str,
    /// Host device nodes bound in, `/dev/NAME` of the host onto
    /// `/dev/NAME`: the one kind of mount that keeps device access. The
    /// binds, like every mount under `/dev`, are `nosuid,noexec`.
    pub devices: &'static [&'static str],
    /// File systems mounted on new directories of `/dev`.
    pub mounts: Vec<DevMount>,
    /// Symbolic links made in `/dev`: `(name, what it points at)`.
    pub links: &'static [(&'static str, &'static str)],
}

/// A file system mounted on the directory `/dev/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevMount {
    /// The directory's name in `/dev`.
    pub name: &'static str,
    /// Source (a device name, or the fs type).
    pub source: &'static str,
    /// File-system type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// fs-specific data.
    pub data: &'static str,
}

/// Mount flags of the `/dev` tmpfs.
const DEV_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The zone's `/dev`.
fn dev() -> Dev {
    Dev {
        flags: DEV_FLAGS,
        data: "mode=755,size=64k",
        devices: &DEVICES,
        mounts: vec![
            // The zone's own terminals: devpts keeps device access for its
            // nodes, which are only the zone's own ptys (`newinstance`).
            DevMount {
                name: "pts",
                source: "devpts",
                fstype: "devpts",
                flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
                data: "newinstance,ptmxmode=0666,mode=0620",
            },
            DevMount {
                name: "shm",
                source: "shm",
                fstype: "tmpfs",
                flags: DEV_FLAGS,
                data: "mode=1777,size=64m",
            },
        ],
        links: &[
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ],
    }
}

/// Characters overlayfs's option string cannot carry as they are: `,`
/// separates options, `:` separates lower layers, `\\` escapes. A root or
/// template holding one would be cut apart (a template `/a:/b` would add
/// `/b` as a layer), so `zonit check` refuses them.
pub const OVERLAY_UNSAFE: [char; 3] = [',', ':', '\\'];

/// The first character of `path` that the overlay option string cannot
/// carry ([`OVERLAY_UNSAFE`]).
pub fn overlay_unsafe_char(path: &Path) -> Option<char> {
    path.to_string_lossy()
        .chars()
        .find(|c| OVERLAY_UNSAFE.contains(c))
}

/// Where an overlay-provisioned zone keeps its upper and work directories:
/// a hidden sibling of the root, `<parent>/.<root name>.overlay/`.
pub fn overlay_state_dir(root: &Path) -> PathBuf {
    sibling(root, "overlay")
}

/// A hidden sibling of the root, `<parent>/.<root name>.<what>`: outside
/// the zone's tree, so nothing inside can reach or fake it.
pub fn sibling(root: &Path, what: &str) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    root.with_file_name(format!(".{name}.{what}"))
}

/// The mount plan for `zone` on a host described by `host`.
pub fn plan(zone: &Zone, host: &HostFacts) -> Vec<Op> {
    let root = zone.root.clone();
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut ops = vec![Op::MakePrivate, Op::HostDir(root.clone())];

    match (&zone.template, zone.template_mode) {
        (Some(template), TemplateMode::Overlay) => {
            let state = overlay_state_dir(&root);
            let (upper, work) = (state.join("upper"), state.join("work"));
            ops.push(Op::HostDir(upper.clone()));
            ops.push(Op::HostDir(work.clone()));
            ops.push(Op::OverlayRoot {
                root: root.clone(),
                lower: template.clone(),
                upper,
                work,
            });
        }
        // Copy-mode templates were copied into the root already.
        _ => ops.push(Op::BindRoot(root.clone())),
    }

    let zp = |p: &str| PathBuf::from(p);
    ops.push(Op::Mount {
        source: "proc".into(),
        target: zp("/proc"),
        fstype: "proc".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: None,
    });
    // Mounted from inside the zone's network namespace, sysfs shows only
    // the zone's own network devices.
    ops.push(Op::Mount {
        source: "sysfs".into(),
        target: zp("/sys"),
        fstype: "sysfs".into(),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        data: None,
    });

    ops.push(Op::Dev(dev()));

    for m in &zone.mounts {
        ops.push(Op::UserBind {
            source: m.source.clone(),
            target: m.target.clone(),
            readonly: m.readonly,
        });
    }

    for path in MASKED {
        ops.push(Op::Mask(path.into()));
    }
    for cpu in &host.cpus {
        for dir in MASKED_PER_CPU {
            ops.push(Op::Mask(
                format!("/sys/devices/system/cpu/cpu{cpu}/{dir}").into(),
            ));
        }
    }
    for path in READ_ONLY {
        ops.push(Op::ReadOnly(path.into()));
    }

    ops.push(Op::PivotRoot);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BindMount;

    fn zone() -> Zone {
        Zone::example("/zones/web")
    }

    fn host() -> HostFacts {
        HostFacts { cpus: vec![0, 1] }
    }

    fn position(ops: &[Op], pred: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(pred).unwrap()
    }

    #[test]
    fn plan_starts_private_and_ends_with_pivot_root() {
        let ops = plan(&zone(), &host());
        assert_eq!(ops.first(), Some(&Op::MakePrivate));
        assert_eq!(ops.last(), Some(&Op::PivotRoot));
    }

    #[test]
    fn root_without_template_is_bound_onto_itself() {
        let ops = plan(&zone(), &host());
        assert!(ops.contains(&Op::BindRoot("/zones/web".into())));
    }

    #[test]
    fn copy_template_root_is_bound_onto_itself() {
        let mut z = zone();
        z.template = Some("/templates/base".into());
        z.template_mode = TemplateMode::Copy;
        assert!(plan(&z, &host()).contains(&Op::BindRoot("/zones/web".into())));
    }

    #[test]
    fn overlay_template_mounts_overlay_with_sibling_state_dir() {
        let mut z = zone();
        z.template = Some("/templates/base".into());
        let ops = plan(&z, &host());
        assert!(ops.contains(&Op::OverlayRoot {
            root: "/zones/web".into(),
            lower: "/templates/base".into(),
            upper: "/zones/.web.overlay/upper".into(),
            work: "/zones/.web.overlay/work".into(),
        }));
        assert!(ops.contains(&Op::HostDir("/zones/.web.overlay/upper".into())));
    }

    /// The zone's `/dev` as the plan makes it.
    fn the_dev(ops: &[Op]) -> &Dev {
        let devs: Vec<&Dev> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Dev(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(devs.len(), 1, "{ops:?}");
        devs[0]
    }

    #[test]
    fn dev_holds_only_the_allowed_devices_links_and_file_systems() {
        let ops = plan(&zone(), &host());
        let dev = the_dev(&ops);
        assert_eq!(
            dev.devices,
            ["null", "zero", "full", "random", "urandom", "tty"]
        );
        let mounts: Vec<_> = dev.mounts.iter().map(|m| (m.name, m.fstype)).collect();
        assert_eq!(mounts, [("pts", "devpts"), ("shm", "tmpfs")]);
        let links: Vec<&str> = dev.links.iter().map(|(name, _)| *name).collect();
        assert_eq!(links, ["ptmx", "fd", "stdin", "stdout", "stderr"]);
        // No other op touches /dev.
        for op in &ops {
            if let Op::Mount { target, .. } = op {
                assert!(!target.starts_with("/dev"), "{op:?}");
            }
        }
    }

    #[test]
    fn every_name_in_dev_is_one_plain_component() {
        let ops = plan(&zone(), &host());
        let dev = the_dev(&ops);
        let names = dev
            .devices
            .iter()
            .copied()
            .chain(dev.mounts.iter().map(|m| m.name))
            .chain(dev.links.iter().map(|(name, _)| *name));
        for name in names {
            let mut comps = Path::new(name).components();
            assert!(
                matches!(comps.next(), Some(std::path::Component::Normal(_)))
                    && comps.next().is_none(),
                "{name}"
            );
        }
    }

    #[test]
    fn every_zone_mount_is_nosuid_and_all_but_devpts_nodev() {
        let ops = plan(&zone(), &host());
        let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        for op in &ops {
            if let Op::Mount { target, flags, .. } = op {
                assert!(flags.contains(nosuid_nodev), "{target:?}");
            }
        }
        let dev = the_dev(&ops);
        assert!(dev.flags.contains(nosuid_nodev | MsFlags::MS_NOEXEC));
        for m in &dev.mounts {
            let want = if m.name == "pts" {
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC
            } else {
                nosuid_nodev | MsFlags::MS_NOEXEC
            };
            assert!(m.flags.contains(want), "/dev/{}", m.name);
        }
    }

    #[test]
    fn paths_after_the_root_are_inside_the_zone() {
        let mut z = zone();
        z.mounts.push(BindMount {
            source: "/data/web".into(),
            target: "/srv".into(),
            readonly: true,
        });
        for op in plan(&z, &host()) {
            let path = match &op {
                Op::Mask(p) | Op::ReadOnly(p) => p.clone(),
                Op::Mount { target, .. } | Op::UserBind { target, .. } => target.clone(),
                _ => continue,
            };
            assert!(!path.starts_with("/zones"), "{op:?} uses a host path");
        }
    }

    #[test]
    fn sys_is_readonly() {
        let ops = plan(&zone(), &host());
        let sys = ops.iter().find_map(|op| match op {
            Op::Mount { fstype, flags, .. } if fstype == "sysfs" => Some(*flags),
            _ => None,
        });
        assert!(sys.is_some_and(|f| f.contains(MsFlags::MS_RDONLY)));
    }

    #[test]
    fn masks_cover_the_runtimes_union_and_every_cpu() {
        let ops = plan(&zone(), &host());
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/interrupts",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
            "/sys/fs/selinux",
            "/sys/devices/system/cpu/cpu0/thermal_throttle",
            "/sys/devices/system/cpu/cpu1/thermal_throttle",
        ] {
            assert!(ops.contains(&Op::Mask(p.into())), "{p} not masked");
        }
        for p in [
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
        ] {
            assert!(ops.contains(&Op::ReadOnly(p.into())), "{p} not read-only");
        }
    }

    #[test]
    fn binds_come_after_dev_and_masks_after_binds() {
        let mut z = zone();
        z.mounts.push(BindMount {
            source: "/data/web".into(),
            target: "/srv".into(),
            readonly: true,
        });
        let ops = plan(&z, &host());
        let bind = position(&ops, |op| matches!(op, Op::UserBind { .. }));
        let dev = position(&ops, |op| matches!(op, Op::Dev(_)));
        let first_mask = position(&ops, |op| matches!(op, Op::Mask(_)));
        let first_ro = position(&ops, |op| matches!(op, Op::ReadOnly(_)));
        assert!(dev < bind && bind < first_mask && first_mask < first_ro);
    }
}
