//! Host mounts as plans: what PID 1 mounts at boot, and what it unmounts
//! at shutdown, decided from `/proc/self/mountinfo` text without touching
//! anything. `init::apply_mounts` and `init::shutdown` carry the plans out.
//!
//! Invariants: the boot plan never stacks a second mount of the same file
//! system type on a target that already has one (a kernel with
//! `DEVTMPFS_MOUNT`, or a test harness, may have mounted some); the
//! shutdown plan lists children before their parents and never includes
//! the initramfs root itself.

use nix::mount::MsFlags;

/// One line of `/proc/self/mountinfo`, the fields zonit uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount ID.
    pub id: u32,
    /// Parent mount ID.
    pub parent: u32,
    /// Mount point, with the kernel's octal escapes undone.
    pub target: String,
    /// File system type (`proc`, `tmpfs`, `ext4`, ...).
    pub fstype: String,
    /// Mount source (`/dev/vda1`, `none`, ...).
    pub source: String,
}

/// Parses mountinfo text; lines that do not have the documented shape are
/// skipped (the format is stable, so that only happens to garbage).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let (pre, post) = line.split_once(" - ")?;
    let mut pre = pre.split(' ');
    let id = pre.next()?.parse().ok()?;
    let parent = pre.next()?.parse().ok()?;
    let _devno = pre.next()?;
    let _root = pre.next()?;
    let target = unescape(pre.next()?);
    let mut post = post.split(' ');
    let fstype = post.next()?.to_string();
    let source = unescape(post.next()?);
    Some(MountInfo {
        id,
        parent,
        target,
        fstype,
        source,
    })
}

/// Undoes the kernel's `\NNN` octal escapes (space, tab, newline, `\`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && oct.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = oct
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `/` is the kernel's initial root mount (the initramfs's
/// rootfs), which has no parent: mountinfo shows it as its own parent.
///
/// pivot_root(2) refuses to move such a root away (EINVAL), so no zone
/// could start; boot then puts a bind mount of the same tree over it
/// (`init::leave_rootfs`), which does have a parent. Nothing is copied.
pub fn root_is_initial(mounted: &[MountInfo]) -> bool {
    mounted.iter().any(|m| m.target == "/" && m.id == m.parent)
}

/// One mount to make at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Source name shown in mountinfo.
    pub source: &'static str,
    /// Mount point (created with mode `dir_mode` if missing).
    pub target: &'static str,
    /// File system type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// File-system-specific options.
    pub data: &'static str,
    /// Mode for the mount point when it has to be created.
    pub dir_mode: u32,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The host's API file systems, in the order they must be mounted (a
/// parent before anything under it).
pub const BOOT_MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        dir_mode: 0o555,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        dir_mode: 0o555,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
        dir_mode: 0o755,
    },
    // A private devpts instance for the host; zones get their own.
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
        dir_mode: 0o755,
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        dir_mode: 0o1777,
    },
    Mount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
        dir_mode: 0o755,
    },
    Mount {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        dir_mode: 0o1777,
    },
    // nsdelegate makes each zone's cgroup namespace a delegation
    // boundary: a zone cannot write the limits of its own group.
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
        dir_mode: 0o755,
    },
];

/// The boot mounts still to be made, given what is mounted already.
pub fn boot_plan(mounted: &[MountInfo]) -> Vec<Mount> {
    BOOT_MOUNTS
        .iter()
        .filter(|m| {
            !mounted
                .iter()
                .any(|i| i.target == m.target && i.fstype == m.fstype)
        })
        .cloned()
        .collect()
}

/// One step of the shutdown plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Teardown {
    /// Unmount the target; if it is busy, remount it read-only so its
    /// data is on disk before reboot(2).
    Unmount {
        /// Mount point.
        target: String,
        /// Its file system type, for the log.
        fstype: String,
    },
    /// Remount read-only only (the root of a disk-booted host).
    RemountReadOnly {
        /// Mount point.
        target: String,
    },
}

/// File systems whose contents vanish at reboot anyway: the root of an
/// initramfs boot is one of them and is left alone.
fn volatile(fstype: &str) -> bool {
    matches!(fstype, "rootfs" | "ramfs" | "tmpfs")
}

/// Teardown steps for everything in `mounted`: deepest mount point first
/// (a child before its parent), later mounts before earlier ones on the
/// same depth (so a mount stacked over another goes first).
pub fn shutdown_plan(mounted: &[MountInfo]) -> Vec<Teardown> {
    let depth = |t: &str| t.split('/').filter(|c| !c.is_empty()).count();
    let mut order: Vec<(usize, &MountInfo)> = mounted.iter().enumerate().collect();
    order.sort_by(|(ia, a), (ib, b)| {
        depth(&b.target)
            .cmp(&depth(&a.target))
            .then_with(|| ib.cmp(ia))
    });
    order
        .into_iter()
        .filter_map(|(_, m)| {
            if m.target == "/" {
                (!volatile(&m.fstype)).then(|| Teardown::RemountReadOnly {
                    target: m.target.clone(),
                })
            } else {
                Some(Teardown::Unmount {
                    target: m.target.clone(),
                    fstype: m.fstype.clone(),
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOTED: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw,size=498044k,nr_inodes=124511
21 1 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
23 1 0:5 / /dev rw,nosuid,relatime - devtmpfs devtmpfs rw,size=4096k,mode=755
24 23 0:22 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,mode=620,ptmxmode=666
25 23 0:23 / /dev/shm rw,nosuid,nodev - tmpfs shm rw
26 1 0:24 / /run rw,nosuid,nodev - tmpfs run rw,mode=755
27 1 0:25 / /tmp rw,nosuid,nodev - tmpfs tmp rw
28 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
29 1 0:27 / /zones/web rw,relatime - overlay overlay rw,lowerdir=/templates/base,upperdir=/zones/.upper/web
30 1 253:1 / /data\\040disk rw,relatime - ext4 /dev/vda1 rw
";

    #[test]
    fn mountinfo_fields_and_escapes_are_read() {
        let m = parse_mountinfo(BOOTED);
        assert_eq!(m.len(), 11);
        assert_eq!(
            m[1],
            MountInfo {
                id: 21,
                parent: 1,
                target: "/proc".into(),
                fstype: "proc".into(),
                source: "proc".into(),
            }
        );
        assert_eq!(m[10].target, "/data disk");
        assert_eq!(m[10].source, "/dev/vda1");
        assert!(parse_mountinfo("garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn the_initramfs_root_is_recognised_by_having_no_parent() {
        assert!(root_is_initial(&parse_mountinfo(
            "1 1 0:2 / / rw - rootfs rootfs rw\n21 1 0:20 / /proc rw - proc proc rw\n"
        )));
        // After the overmount, or on a disk-booted host.
        assert!(!root_is_initial(
            &parse_mountinfo(
                "1 1 0:2 / / rw - rootfs rootfs rw\n30 1 0:2 / / rw - rootfs rootfs rw\n"
            )[1..]
        ));
        assert!(!root_is_initial(&parse_mountinfo(
            "20 1 253:1 / / rw - ext4 /dev/vda1 rw\n"
        )));
    }

    #[test]
    fn a_fresh_initramfs_gets_every_boot_mount_in_order() {
        let plan = boot_plan(&parse_mountinfo("1 1 0:2 / / rw - rootfs rootfs rw\n"));
        let targets: Vec<&str> = plan.iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/run",
                "/tmp",
                "/sys/fs/cgroup"
            ]
        );
        // Every parent comes before its children.
        for (i, m) in plan.iter().enumerate() {
            for later in &plan[i + 1..] {
                assert!(!m.target.starts_with(&format!("{}/", later.target)));
            }
        }
    }

    #[test]
    fn what_is_mounted_already_is_not_mounted_again() {
        let mounted = parse_mountinfo(
            "1 1 0:2 / / rw - rootfs rootfs rw\n\
             23 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n\
             21 1 0:20 / /proc rw - proc proc rw\n",
        );
        let plan = boot_plan(&mounted);
        assert!(
            plan.iter()
                .all(|m| m.target != "/dev" && m.target != "/proc")
        );
        assert_eq!(plan.len(), BOOT_MOUNTS.len() - 2);
    }

    #[test]
    fn a_different_fs_on_a_boot_target_is_mounted_over() {
        // A tmpfs someone put on /dev is not devtmpfs: zonit still needs
        // the device nodes.
        let mounted = parse_mountinfo("23 1 0:5 / /dev rw - tmpfs tmpfs rw\n");
        assert!(boot_plan(&mounted).iter().any(|m| m.target == "/dev"));
    }

    #[test]
    fn api_mounts_are_nosuid_and_proc_sys_noexec() {
        for m in BOOT_MOUNTS {
            assert!(m.flags.contains(MsFlags::MS_NOSUID), "{}", m.target);
        }
        for t in ["/proc", "/sys", "/sys/fs/cgroup"] {
            let m = BOOT_MOUNTS.iter().find(|m| m.target == t).unwrap();
            assert!(m.flags.contains(MsFlags::MS_NOEXEC), "{t}");
        }
    }

    #[test]
    fn shutdown_unmounts_children_first_and_leaves_the_initramfs_root() {
        let plan = shutdown_plan(&parse_mountinfo(BOOTED));
        let targets: Vec<&str> = plan
            .iter()
            .map(|t| match t {
                Teardown::Unmount { target, .. } | Teardown::RemountReadOnly { target } => {
                    target.as_str()
                }
            })
            .collect();
        assert_eq!(
            targets,
            [
                "/sys/fs/cgroup",
                "/zones/web",
                "/dev/shm",
                "/dev/pts",
                "/data disk",
                "/tmp",
                "/run",
                "/dev",
                "/sys",
                "/proc",
            ]
        );
    }

    #[test]
    fn a_disk_root_is_remounted_read_only_last() {
        let plan = shutdown_plan(&parse_mountinfo(
            "20 1 253:1 / / rw - ext4 /dev/vda1 rw\n\
             21 20 0:20 / /proc rw - proc proc rw\n",
        ));
        assert_eq!(
            plan,
            [
                Teardown::Unmount {
                    target: "/proc".into(),
                    fstype: "proc".into()
                },
                Teardown::RemountReadOnly { target: "/".into() },
            ]
        );
    }

    #[test]
    fn stacked_mounts_go_newest_first() {
        let plan = shutdown_plan(&parse_mountinfo(
            "30 1 0:1 / /mnt rw - tmpfs a rw\n\
             31 30 0:2 / /mnt rw - ext4 b rw\n",
        ));
        assert_eq!(
            plan,
            [
                Teardown::Unmount {
                    target: "/mnt".into(),
                    fstype: "ext4".into()
                },
                Teardown::Unmount {
                    target: "/mnt".into(),
                    fstype: "tmpfs".into()
                },
            ]
        );
    }
}
