//! `[[host.mounts]]` at boot: wait for each source's device, mount the
//! file systems in order, and tell the agent which required ones failed,
//! so that only the units whose paths lie under them fail.
//!
//! The decisions are pure and unit-tested: the mount order ([`order`]: a
//! target under another mount's target comes after it), the options
//! ([`mount_options`]: flags apart from file system data), the wait
//! ([`Plan::next`]: mount what is found, fail what is overdue or whose
//! parent failed, otherwise sleep until the next scan or deadline) and
//! which units a failed mount holds back ([`unit_blocked`]). [`mount_all`]
//! is the thin part: scanning `/sys/class/block`, reading superblocks and
//! GPTs (`init::blkid`), loading file system modules, mount(2).
//!
//! Boot is the only place zonit polls: devices appear asynchronously
//! after the kernel starts, there is no udev to ask, and the poll is
//! bounded by each mount's `wait`. No fsck is run: a file system the
//! kernel refuses to mount fails with the kernel's error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use super::blkid::{self, Identity};
use crate::config::{HostMount, MountSource, Unit, UnitKind};

/// Time between two scans of the block devices while a source is
/// missing: short against a disk's appearance, long against the cost of
/// a scan (a few reads per device, most answered from the cache).
pub const SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// A required mount that is not there, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The mount point.
    pub target: PathBuf,
    /// Why it is not mounted (`LABEL=zdata not found after 10s`).
    pub reason: String,
}

/// Indices of `mounts` in the order to mount them: every mount after the
/// mounts whose targets contain its target, file order otherwise.
pub fn order(mounts: &[HostMount]) -> Vec<usize> {
    let depth = |m: &HostMount| m.target.components().count();
    let mut idx: Vec<usize> = (0..mounts.len()).collect();
    // Stable: equal depths keep file order. A containing target has
    // strictly fewer components, so it always sorts first.
    idx.sort_by_key(|&i| depth(&mounts[i]));
    idx
}

/// The innermost other mount whose target contains mount `i`'s target.
pub fn parent(mounts: &[HostMount], i: usize) -> Option<usize> {
    let target = &mounts[i].target;
    (0..mounts.len())
        .filter(|&j| j != i && target.starts_with(&mounts[j].target))
        .max_by_key(|&j| mounts[j].target.components().count())
}

/// Splits mount options into mount(2) flags and the file system's data
/// string (comma-joined, as the kernel takes it).
pub fn mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "lazytime" => flags |= MsFlags::MS_LAZYTIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// A wait as the reasons spell it: `10s`, `1.5s`, `250ms`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// What a scan says about a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The device (or, for tmpfs, the name) to mount.
    Found(String),
    /// Nothing matches yet.
    Missing,
    /// More than one device matches; the message names them.
    Ambiguous(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Pending,
    Mounted,
    Failed(String),
}

/// What boot does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Mount mount `index` from `source`, then [`Plan::record`] the result.
    Mount {
        /// Index into the config's mounts.
        index: usize,
        /// Device path or tmpfs name.
        source: String,
    },
    /// Mount `index` has failed for `reason`; [`Plan::record`] it.
    Fail {
        /// Index into the config's mounts.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Nothing to do until the next scan: sleep this long, scan again.
    Sleep(Duration),
    /// Every mount is mounted or failed.
    Done,
}

/// The boot-time wait for `[[host.mounts]]`, as a state machine: every
/// wait runs from the start of the phase, so boot waits at most the
/// longest `wait`, not their sum.
#[derive(Debug)]
pub struct Plan<'a> {
    mounts: &'a [HostMount],
    order: Vec<usize>,
    status: Vec<Status>,
}

impl<'a> Plan<'a> {
    /// A plan with every mount pending.
    pub fn new(mounts: &'a [HostMount]) -> Self {
        Plan {
            mounts,
            order: order(mounts),
            status: vec![Status::Pending; mounts.len()],
        }
    }

    /// The next step, `elapsed` into the phase, with `lookup` telling
    /// what the latest scan found for a source.
    pub fn next(&self, elapsed: Duration, lookup: impl Fn(&MountSource) -> Lookup) -> Next {
        let mut sleep: Option<Duration> = None;
        for &i in &self.order {
            if self.status[i] != Status::Pending {
                continue;
            }
            let m = &self.mounts[i];
            if let Some(p) = parent(self.mounts, i) {
                match &self.status[p] {
                    Status::Mounted => {}
                    // The parent is decided first: it sorts earlier.
                    Status::Pending => continue,
                    Status::Failed(_) => {
                        return Next::Fail {
                            index: i,
                            reason: format!(
                                "it lies under {}, which is not mounted",
                                self.mounts[p].target.display()
                            ),
                        };
                    }
                }
            }
            match lookup(&m.source) {
                Lookup::Found(source) => return Next::Mount { index: i, source },
                Lookup::Ambiguous(why) => {
                    return Next::Fail {
                        index: i,
                        reason: why,
                    };
                }
                Lookup::Missing if elapsed >= m.wait => {
                    return Next::Fail {
                        index: i,
                        reason: format!("{} not found after {}", m.source, seconds(m.wait)),
                    };
                }
                Lookup::Missing => {
                    let left = m.wait - elapsed;
                    sleep = Some(sleep.map_or(left, |s| s.min(left)));
                }
            }
        }
        match sleep {
            Some(left) => Next::Sleep(left.min(SCAN_INTERVAL)),
            None if self.status.contains(&Status::Pending) => Next::Sleep(SCAN_INTERVAL),
            None => Next::Done,
        }
    }

    /// Records how mount `index` went.
    pub fn record(&mut self, index: usize, result: Result<(), String>) {
        if let Some(s) = self.status.get_mut(index) {
            *s = match result {
                Ok(()) => Status::Mounted,
                Err(reason) => Status::Failed(reason),
            };
        }
    }

    /// The required mounts that failed, with their reasons.
    pub fn unavailable(&self) -> Vec<Unavailable> {
        self.mounts
            .iter()
            .zip(&self.status)
            .filter(|(m, _)| m.required)
            .filter_map(|(m, s)| match s {
                Status::Failed(reason) => Some(Unavailable {
                    target: m.target.clone(),
                    reason: reason.clone(),
                }),
                _ => None,
            })
            .collect()
    }
}

/// The host paths a unit needs: a zone's root, template and bind-mount
/// sources; a guest's kernel, initrd and disks.
pub fn unit_paths(unit: &Unit) -> Vec<&Path> {
    match &unit.kind {
        UnitKind::Zone(z) => std::iter::once(z.root.as_path())
            .chain(z.template.as_deref())
            .chain(z.mounts.iter().map(|m| m.source.as_path()))
            .collect(),
        UnitKind::Guest(g) => std::iter::once(g.kernel.as_path())
            .chain(g.initrd.as_deref())
            .chain(g.disks.iter().map(|d| d.path.as_path()))
            .collect(),
    }
}

/// Why `unit` cannot start, if one of its paths lies under a required
/// mount that failed: `/data is not mounted: LABEL=zdata not found after 10s`.
pub fn unit_blocked(unit: &Unit, unavailable: &[Unavailable]) -> Option<String> {
    unit_paths(unit).into_iter().find_map(|path| {
        unavailable
            .iter()
            .filter(|u| path.starts_with(&u.target))
            // The innermost failed mount is the one to fix.
            .max_by_key(|u| u.target.components().count())
            .map(|u| format!("{} is not mounted: {}", u.target.display(), u.reason))
    })
}

/// Waits for, and mounts, every `[[host.mounts]]` entry; returns the
/// required ones that failed. Logs each mount and each failure. Never
/// fails as a whole: boot goes on with whatever could be mounted.
pub fn mount_all(mounts: &[HostMount], modules_dir: &Path) -> Vec<Unavailable> {
    if mounts.is_empty() {
        return Vec::new();
    }
    let start = Instant::now();
    let mut plan = Plan::new(mounts);
    let mut scan = Scan::default();
    scan.refresh();
    loop {
        match plan.next(start.elapsed(), |s| scan.lookup(s)) {
            Next::Mount { index, source } => {
                let m = &mounts[index];
                let result = mount_one(m, &source, modules_dir);
                match &result {
                    Ok(()) => log::info!(
                        "mounted {} ({source}) on {} ({}) after {} ms",
                        m.source,
                        m.target.display(),
                        m.fs,
                        start.elapsed().as_millis()
                    ),
                    Err(e) => log::error!(
                        "unable to mount {} on {}: {e}",
                        m.source,
                        m.target.display()
                    ),
                }
                plan.record(index, result);
            }
            Next::Fail { index, reason } => {
                let m = &mounts[index];
                let what = if m.required {
                    "units under it will not start"
                } else {
                    "not required, boot goes on"
                };
                log::error!("{} is not mounted: {reason}; {what}", m.target.display());
                plan.record(index, Err(reason));
            }
            Next::Sleep(d) => {
                std::thread::sleep(d);
                scan.refresh();
            }
            Next::Done => break,
        }
    }
    plan.unavailable()
}

/// Creates the mount point, loads the file system's module if the kernel
/// does not know the type yet, and mounts.
fn mount_one(m: &HostMount, source: &str, modules_dir: &Path) -> Result<(), String> {
    if !kernel_knows(&m.fs)
        && let Err(e) = super::modules::load(std::slice::from_ref(&m.fs), modules_dir)
    {
        // Built into a kernel without a modules.builtin list, say:
        // mount(2) says the last word.
        log::warn!("file system {}: {}", m.fs, crate::logging::error_chain(&e));
    }
    std::fs::create_dir_all(&m.target)
        .map_err(|e| format!("unable to create {}: {e}", m.target.display()))?;
    let (flags, data) = mount_options(&m.options);
    let data = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(Some(source), &m.target, Some(m.fs.as_str()), flags, data).map_err(|e| {
        format!(
            "mount of {source} ({}) refused: {}{}",
            m.fs,
            e.desc(),
            if e == nix::errno::Errno::EUCLEAN || e == nix::errno::Errno::EINVAL {
                "; zonit runs no fsck: check the file system from a rescue shell"
            } else {
                ""
            }
        )
    })
}

/// Whether `/proc/filesystems` lists `fs`.
fn kernel_knows(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.split_whitespace().last() == Some(fs)))
        .unwrap_or(false)
}

/// One block device as a scan saw it.
#[derive(Debug, Clone)]
struct Device {
    /// `/dev/NAME`.
    node: PathBuf,
    /// The file system on it.
    identity: Option<Identity>,
    /// For a whole disk: its named GPT partitions (number, name).
    partitions: Vec<(u32, String)>,
    /// For a partition: its disk's name and its number.
    part_of: Option<(String, u32)>,
}

/// The block devices of the latest scan. A device with a size is read
/// once: what is on a disk does not change while PID 1 boots.
#[derive(Debug, Default)]
struct Scan {
    devices: HashMap<String, Device>,
}

impl Scan {
    fn refresh(&mut self) {
        let Ok(dir) = std::fs::read_dir("/sys/class/block") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if self.devices.contains_key(&name) {
                continue;
            }
            let sys = entry.path();
            let size: u64 = read_trimmed(&sys.join("size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if size == 0 {
                continue; // no medium yet, or an empty loop device
            }
            // sysfs spells a `/` in a device name as `!`.
            let node = Path::new("/dev").join(name.replace('!', "/"));
            let part_of = read_trimmed(&sys.join("partition"))
                .and_then(|n| n.parse().ok())
                .and_then(|n| {
                    let real = std::fs::canonicalize(&sys).ok()?;
                    let disk = real.parent()?.file_name()?.to_string_lossy().into_owned();
                    Some((disk, n))
                });
            let head = match read_at(&node, 0, blkid::PROBE_LEN) {
                Ok(h) => h,
                // The node is not there yet (devtmpfs lags a moment):
                // read it at the next scan.
                Err(e) => {
                    log::debug!("unable to read {}: {e}", node.display());
                    continue;
                }
            };
            let partitions = if part_of.is_none() {
                let sector: u64 = read_trimmed(&sys.join("queue/logical_block_size"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(512);
                gpt_names(&node, sector)
            } else {
                Vec::new()
            };
            self.devices.insert(
                name,
                Device {
                    node,
                    identity: blkid::probe(&head),
                    partitions,
                    part_of,
                },
            );
        }
    }

    fn lookup(&self, source: &MountSource) -> Lookup {
        let mut hits: Vec<&Path> = match source {
            MountSource::Name(n) => return Lookup::Found(n.clone()),
            MountSource::Device(p) => {
                use std::os::unix::fs::FileTypeExt;
                return match std::fs::metadata(p) {
                    Ok(m) if m.file_type().is_block_device() => {
                        Lookup::Found(p.display().to_string())
                    }
                    _ => Lookup::Missing,
                };
            }
            MountSource::PartLabel(label) => self
                .devices
                .iter()
                .filter(|(_, d)| {
                    d.part_of.as_ref().is_some_and(|(disk, n)| {
                        self.devices.get(disk).is_some_and(|disk| {
                            disk.partitions
                                .iter()
                                .any(|(pn, name)| pn == n && name == label)
                        })
                    })
                })
                .map(|(_, d)| d.node.as_path())
                .collect(),
            MountSource::Label(_) | MountSource::Uuid(_) => self
                .devices
                .values()
                .filter(|d| d.identity.as_ref().is_some_and(|i| i.matches(source)))
                .map(|d| d.node.as_path())
                .collect(),
        };
        hits.sort();
        match hits.as_slice() {
            [] => Lookup::Missing,
            [one] => Lookup::Found(one.display().to_string()),
            many => Lookup::Ambiguous(format!(
                "{source} names {} devices ({}); give UUID= or a device path instead",
                many.len(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Up to `len` bytes of `path` from `offset`.
fn read_at(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The named GPT partitions of the disk at `node`, if it has a GPT.
fn gpt_names(node: &Path, sector: u64) -> Vec<(u32, String)> {
    let Ok(head) = read_at(node, sector, sector as usize) else {
        return Vec::new();
    };
    let Some(header) = blkid::gpt_header(&head) else {
        return Vec::new();
    };
    match read_at(node, header.entries_lba * sector, header.entries_len()) {
        Ok(entries) => blkid::gpt_names(&header, &entries),
        Err(e) => {
            log::warn!("unable to read the GPT entries of {}: {e}", node.display());
            Vec::new()
        }
    }
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::{Common, Guest, Zone};

    fn mount(source: MountSource, target: &str, wait_ms: u64) -> HostMount {
        HostMount {
            source,
            target: target.into(),
            fs: "ext4".into(),
            options: vec![],
            wait: Duration::from_millis(wait_ms),
            required: true,
        }
    }

    fn label(l: &str) -> MountSource {
        MountSource::Label(l.into())
    }

    #[test]
    fn a_target_under_another_mounts_after_it_whatever_the_file_order() {
        let mounts = [
            mount(label("img"), "/data/images", 10),
            mount(label("vm"), "/data/images/vm", 10),
            mount(label("log"), "/log", 10),
            mount(label("data"), "/data", 10),
        ];
        assert_eq!(order(&mounts), [2, 3, 0, 1]);
        assert_eq!(parent(&mounts, 1), Some(0));
        assert_eq!(parent(&mounts, 0), Some(3));
        assert_eq!(parent(&mounts, 2), None);
        // `/database` is not under `/data`.
        let mounts = [
            mount(label("a"), "/data", 1),
            mount(label("b"), "/database", 1),
        ];
        assert_eq!(parent(&mounts, 1), None);
    }

    #[test]
    fn flags_are_flags_and_the_rest_is_file_system_data() {
        let opts: Vec<String> = ["noatime", "ro", "errors=remount-ro", "nodev", "discard"]
            .map(String::from)
            .to_vec();
        let (flags, data) = mount_options(&opts);
        assert_eq!(
            flags,
            MsFlags::MS_NOATIME | MsFlags::MS_RDONLY | MsFlags::MS_NODEV
        );
        assert_eq!(data, "errors=remount-ro,discard");
        let (flags, data) = mount_options(&["ro".into(), "rw".into()]);
        assert_eq!((flags, data.as_str()), (MsFlags::empty(), ""));
    }

    #[test]
    fn found_sources_mount_in_order_and_missing_ones_fail_at_their_deadline() {
        let mounts = [
            mount(label("child"), "/data/sub", 3000),
            mount(label("data"), "/data", 10_000),
            mount(label("gone"), "/gone", 2000),
        ];
        let mut plan = Plan::new(&mounts);
        let present = |s: &MountSource| match s {
            MountSource::Label(l) if l != "gone" => Lookup::Found(format!("/dev/{l}")),
            _ => Lookup::Missing,
        };
        let t = Duration::from_millis;
        // The parent first, though the file lists the child first.
        assert_eq!(
            plan.next(t(0), present),
            Next::Mount {
                index: 1,
                source: "/dev/data".into()
            }
        );
        plan.record(1, Ok(()));
        assert_eq!(
            plan.next(t(0), present),
            Next::Mount {
                index: 0,
                source: "/dev/child".into()
            }
        );
        plan.record(0, Ok(()));
        // Missing: scan again soon, never past its deadline.
        assert_eq!(plan.next(t(0), present), Next::Sleep(SCAN_INTERVAL));
        assert_eq!(plan.next(t(1990), present), Next::Sleep(t(10)));
        let Next::Fail { index, reason } = plan.next(t(2000), present) else {
            panic!("expected the missing source to fail at its deadline");
        };
        assert_eq!(
            (index, reason.as_str()),
            (2, "LABEL=gone not found after 2s")
        );
        plan.record(index, Err(reason));
        assert_eq!(plan.next(t(2000), present), Next::Done);
        assert_eq!(
            plan.unavailable(),
            [Unavailable {
                target: "/gone".into(),
                reason: "LABEL=gone not found after 2s".into()
            }]
        );
    }

    #[test]
    fn a_mount_under_a_failed_one_fails_without_waiting() {
        let mounts = [
            mount(label("data"), "/data", 1000),
            mount(label("sub"), "/data/sub", 60_000),
        ];
        let mut plan = Plan::new(&mounts);
        let nothing = |_: &MountSource| Lookup::Missing;
        // While the parent is pending, the child is not looked at.
        assert_eq!(
            plan.next(Duration::ZERO, |s| {
                assert_eq!(s, &label("data"));
                Lookup::Missing
            }),
            Next::Sleep(SCAN_INTERVAL)
        );
        let Next::Fail { index: 0, reason } = plan.next(Duration::from_secs(1), nothing) else {
            panic!("parent should fail");
        };
        plan.record(0, Err(reason));
        assert_eq!(
            plan.next(Duration::from_secs(1), nothing),
            Next::Fail {
                index: 1,
                reason: "it lies under /data, which is not mounted".into()
            }
        );
    }

    #[test]
    fn an_ambiguous_source_fails_at_once_and_optional_mounts_hold_nothing_back() {
        let mut optional = mount(label("x"), "/x", 10_000);
        optional.required = false;
        let mounts = [optional, mount(label("y"), "/y", 10_000)];
        let mut plan = Plan::new(&mounts);
        let twice = |_: &MountSource| Lookup::Ambiguous("two".into());
        for i in 0..2 {
            let Next::Fail { index, reason } = plan.next(Duration::ZERO, twice) else {
                panic!("ambiguity is no reason to wait");
            };
            assert_eq!((index, reason.as_str()), (i, "two"));
            plan.record(index, Err(reason));
        }
        let un = plan.unavailable();
        assert_eq!(un.len(), 1);
        assert_eq!(un[0].target, PathBuf::from("/y"));
    }

    #[test]
    fn waits_read_as_people_write_them() {
        assert_eq!(seconds(Duration::from_secs(10)), "10s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
        assert_eq!(seconds(Duration::from_millis(250)), "250ms");
    }

    fn unit(name: &str, kind: UnitKind) -> Unit {
        Unit {
            name: name.into(),
            common: Common {
                restart: crate::config::RestartPolicy::Never,
                stop_timeout: Duration::from_secs(1),
                ..Common::example()
            },
            kind,
        }
    }

    #[test]
    fn only_units_with_a_path_under_a_failed_required_mount_are_held_back() {
        let failed = [
            Unavailable {
                target: "/data".into(),
                reason: "LABEL=zdata not found after 10s".into(),
            },
            Unavailable {
                target: "/data/images".into(),
                reason: "mount of /dev/vdc (xfs) refused: I/O error".into(),
            },
        ];
        let on_data = unit("web", UnitKind::Zone(Zone::example("/data/zones/web")));
        assert_eq!(
            unit_blocked(&on_data, &failed).as_deref(),
            Some("/data is not mounted: LABEL=zdata not found after 10s")
        );
        let mut elsewhere = Zone::example("/zones/db");
        assert_eq!(
            unit_blocked(&unit("db", UnitKind::Zone(elsewhere.clone())), &failed),
            None
        );
        elsewhere.template = Some("/database/tpl".into());
        assert_eq!(
            unit_blocked(&unit("db", UnitKind::Zone(elsewhere)), &failed),
            None
        );
        let mut guest = Guest::example("/boot/vmlinuz");
        guest.disks.push(crate::config::Disk {
            path: "/data/images/vm.img".into(),
            readonly: false,
        });
        // The innermost failed mount is named.
        assert_eq!(
            unit_blocked(&unit("vm", UnitKind::Guest(guest)), &failed).as_deref(),
            Some("/data/images is not mounted: mount of /dev/vdc (xfs) refused: I/O error")
        );
    }
}
