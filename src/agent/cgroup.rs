//! cgroup v2 groups for units: one group per zone or guest under zonit's
//! base group, with the configured limits, and inside it one fresh leaf
//! group per run, entered atomically at clone time (`CLONE_INTO_CGROUP`)
//! by a zone's init or a guest's monitor.
//!
//! Layout: `<cgroup2 mount><zonit's own group>/zonit/<unit>/run`; as PID 1
//! that is `/sys/fs/cgroup/zonit/<unit>/run`. The unit's group holds the
//! limits and the counters (`memory.events` counts the OOM kills of every
//! run); the leaf is removed and made again before each start, so nothing
//! of one run's end (above all a `cgroup.kill`, which some kernels let
//! linger on the group and turn on every process cloned into it later)
//! can reach the next run. A limit whose controller is not available is
//! an error for that unit (never silently unenforced); a unit without
//! limits runs without a group when there is no cgroup2 at all.
//!
//! `limit_files` is the pure part (config -> file writes); the rest is
//! thin file I/O.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::config::CgroupLimits;

/// Why a unit's group could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup2 hierarchy is mounted but the unit has limits.
    #[error("{key} needs cgroup v2, which is not mounted")]
    NoCgroup2 {
        /// The config key that needs it.
        key: &'static str,
    },
    /// The controller for a limit is not available in zonit's group.
    #[error("{key} needs the cgroup v2 {controller} controller, which is not available at {path}")]
    NoController {
        /// The config key.
        key: &'static str,
        /// Controller name.
        controller: &'static str,
        /// The group that lacks it.
        path: PathBuf,
    },
    /// The last run's leaf group still holds processes (they are being
    /// killed); a later start will find it empty.
    #[error("the last run's processes are still exiting in {path}")]
    Busy {
        /// The leaf group.
        path: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("unable to {what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The leaf group of a unit's current run, below the unit's group.
const RUN_GROUP: &str = "run";

/// The controllers unit limits need; zonit enables no others.
const USED_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// One limit to write: (config key, controller, file, value).
pub type LimitFile = (&'static str, &'static str, &'static str, String);

/// The files and values that enforce `limits`.
pub fn limit_files(limits: &CgroupLimits) -> Vec<LimitFile> {
    let mut out = Vec::new();
    if let Some(m) = limits.memory_max {
        out.push(("memory_max", "memory", "memory.max", m.to_string()));
        // Without this the unit could push its pages to swap instead of
        // being held to memory_max.
        out.push(("memory_max", "memory", "memory.swap.max", "0".into()));
    }
    if let Some(c) = limits.cpu_max {
        const PERIOD: u64 = 100_000;
        let quota = ((c * PERIOD as f64).round() as u64).max(1000);
        out.push(("cpu_max", "cpu", "cpu.max", format!("{quota} {PERIOD}")));
    }
    if let Some(p) = limits.pids_max {
        out.push(("pids_max", "pids", "pids.max", p.to_string()));
    }
    out
}

/// zonit's base group for zones.
#[derive(Debug, Default)]
pub struct Cgroups {
    base: Option<PathBuf>,
    controllers: Vec<String>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Cgroups {
    /// Finds cgroup2 and prepares `<own group>/zonit` with the
    /// controllers unit limits need (`cpu`, `memory`, `pids`) enabled for
    /// its children. Never fails: problems are
    /// logged and zones with limits will fail to start with the reason.
    /// `instance` names the base group: `zonit` as PID 1; a unique name
    /// under `zonit run`, so several agents on one host never share (and
    /// kill) each other's groups.
    pub fn detect(instance: &str) -> Self {
        let none = Cgroups {
            base: None,
            controllers: Vec::new(),
        };
        let Some(mount) = cgroup2_mount() else {
            log::info!("no cgroup2 mounted: zones run without cgroup limits");
            return none;
        };
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
            })
            .unwrap_or_else(|| "/".into());
        let own_dir = mount.join(own.trim_start_matches('/'));
        let base = own_dir.join(instance);
        if let Err(e) = fs::create_dir_all(&base) {
            log::warn!("unable to create cgroup {}: {e}", base.display());
            return none;
        }
        // Enable in our own group's subtree (works for the root group; for
        // a non-root group with processes the kernel says EBUSY, and the
        // controllers that are already delegated stay usable). Only the
        // controllers unit limits use: enabling others changes the host for
        // other cgroup users (crun refuses a hybrid host whose cgroup2 root
        // has any controller enabled, for one).
        let _ = enable_used(&own_dir);
        let _ = enable_used(&base);
        let controllers = used_available(&base);
        log::debug!(
            "unit cgroups under {} with controllers {:?}",
            base.display(),
            controllers
        );
        Cgroups {
            base: Some(base),
            controllers,
        }
    }

    /// The base group's directory, if there is one.
    pub fn base(&self) -> Option<&Path> {
        self.base.as_deref()
    }

    /// Whether the base group's children can use `controller`.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// Creates (or reuses) the group of unit `name`, writes `limits`,
    /// makes a fresh leaf group for the next run (removing the last run's)
    /// and returns the leaf opened for `CLONE_INTO_CGROUP`.
    pub fn prepare(&self, name: &str, limits: &CgroupLimits) -> Result<Option<OwnedFd>, Error> {
        let limits = limit_files(limits);
        let Some(base) = &self.base else {
            return match limits.first() {
                Some((key, ..)) => Err(Error::NoCgroup2 { key }),
                None => Ok(None),
            };
        };
        for (key, controller, ..) in &limits {
            if !self.has(controller) {
                return Err(Error::NoController {
                    key,
                    controller,
                    path: base.clone(),
                });
            }
        }
        let dir = base.join(name);
        create_dir(&dir)?;
        for (_, _, file, value) in &limits {
            let path = dir.join(file);
            // memory.swap.max is missing when the kernel has no swap
            // accounting; nothing to hold back then.
            if *file == "memory.swap.max" && !path.exists() {
                continue;
            }
            fs::write(&path, value).map_err(io_err("write", &path))?;
        }
        let run = dir.join(RUN_GROUP);
        remove_leaf(&run)?;
        create_dir(&run)?;
        let fd = fs::File::open(&run).map_err(io_err("open", &run))?;
        Ok(Some(OwnedFd::from(fd)))
    }

    /// The leaf group of the unit's current run, opened for
    /// `CLONE_INTO_CGROUP`.
    pub fn open(&self, name: &str) -> Option<OwnedFd> {
        let dir = self.base.as_ref()?.join(name).join(RUN_GROUP);
        fs::File::open(dir).ok().map(OwnedFd::from)
    }

    /// Kills every process of the unit's current run (`cgroup.kill` on its
    /// leaf group, which the next start replaces).
    pub fn kill(&self, name: &str) {
        if let Some(base) = &self.base {
            let path = base.join(name).join(RUN_GROUP).join("cgroup.kill");
            if path.exists()
                && let Err(e) = fs::write(&path, "1")
            {
                log::warn!("{name}: unable to write {}: {e}", path.display());
            }
        }
    }

    /// Removes the leaf group of a run that ended, so no group of a dead
    /// run lingers; one that still holds processes is left for the next
    /// start (or [`Cgroups::remove`]) to retry.
    pub fn run_ended(&self, name: &str) {
        if let Some(base) = &self.base {
            let _ = fs::remove_dir(base.join(name).join(RUN_GROUP));
        }
    }

    /// How many times the kernel's OOM killer acted in the unit's group.
    pub fn oom_kills(&self, name: &str) -> u64 {
        self.keyed(name, "memory.events", "oom_kill").unwrap_or(0)
    }

    /// One `KEY VALUE` line of a file of the unit's group (`cpu.stat`'s
    /// `usage_usec`).
    pub fn keyed(&self, name: &str, file: &str, key: &str) -> Option<u64> {
        let text = fs::read_to_string(self.base.as_ref()?.join(name).join(file)).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Removes the unit's group and its leaf (both must be empty).
    pub fn remove(&self, name: &str) {
        if let Some(base) = &self.base {
            let _ = fs::remove_dir(base.join(name).join(RUN_GROUP));
            let _ = fs::remove_dir(base.join(name));
        }
    }

    /// Removes the base group once every unit's group is gone.
    pub fn remove_base(&self) {
        if let Some(base) = &self.base {
            let _ = fs::remove_dir(base);
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

/// Removes a leaf group if it exists; `Busy` while it still holds
/// processes.
fn remove_leaf(dir: &Path) -> Result<(), Error> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(Error::Busy {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(io_err("remove", dir)(e)),
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

fn read_controllers(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// The controllers zonit uses that `dir` offers.
fn used_available(dir: &Path) -> Vec<String> {
    read_controllers(&dir.join("cgroup.controllers"))
        .into_iter()
        .filter(|c| USED_CONTROLLERS.contains(&c.as_str()))
        .collect()
}

/// Enables the controllers zonit uses, of those `dir` offers, for `dir`'s
/// children: the one place that decides which (PID 1's boot and the agent
/// both call it). One write each, so a controller the kernel refuses (cpu
/// while a realtime task runs in the group, or EBUSY in a group with
/// processes) does not keep the others off. Returns the refused ones with
/// the reason; `None` when `dir` is no cgroup2 group.
pub(crate) fn enable_used(dir: &Path) -> Option<Vec<(String, io::Error)>> {
    if !dir.join("cgroup.controllers").exists() {
        return None;
    }
    let mut refused = Vec::new();
    for c in used_available(dir) {
        if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            refused.push((c, e));
        }
    }
    Some(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_controllers_zone_limits_use_are_enabled() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        assert_eq!(used_available(dir.path()), ["cpu", "memory", "pids"]);
        // A plain directory takes the writes; what matters is the list.
        assert_eq!(enable_used(dir.path()).map(|r| r.len()), Some(0));
    }

    #[test]
    fn a_directory_that_is_no_cgroup_enables_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(enable_used(dir.path()).is_none());
    }

    fn limits() -> CgroupLimits {
        CgroupLimits::default()
    }

    #[test]
    fn no_limits_no_files() {
        assert!(limit_files(&limits()).is_empty());
    }

    #[test]
    fn limits_map_to_cgroup_files() {
        let mut z = limits();
        z.memory_max = Some(128 << 20);
        z.cpu_max = Some(0.5);
        z.pids_max = Some(64);
        let files: Vec<(&str, String)> = limit_files(&z)
            .into_iter()
            .map(|(_, _, f, v)| (f, v))
            .collect();
        assert_eq!(
            files,
            vec![
                ("memory.max", "134217728".to_string()),
                ("memory.swap.max", "0".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "64".to_string()),
            ]
        );
    }

    #[test]
    fn tiny_cpu_max_keeps_a_minimum_quota() {
        let mut z = limits();
        z.cpu_max = Some(0.001);
        assert_eq!(limit_files(&z)[0].3, "1000 100000");
    }

    #[test]
    fn limits_without_cgroup2_are_an_error_not_ignored() {
        let cg = Cgroups {
            base: None,
            controllers: vec![],
        };
        let mut z = limits();
        assert!(cg.prepare("z", &z).unwrap().is_none());
        z.pids_max = Some(10);
        let err = cg.prepare("z", &z).unwrap_err();
        assert!(
            err.to_string().contains("pids_max needs cgroup v2"),
            "{err}"
        );
    }

    #[test]
    fn missing_controller_names_key_and_controller() {
        let cg = Cgroups {
            base: Some("/nonexistent/zonit".into()),
            controllers: vec!["pids".into()],
        };
        let mut z = limits();
        z.memory_max = Some(1 << 20);
        let err = cg.prepare("z", &z).unwrap_err().to_string();
        assert!(
            err.contains("memory_max") && err.contains("memory controller"),
            "{err}"
        );
    }
}
