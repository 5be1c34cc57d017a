//! Applies a zone's mount plan (`mount_plan::Op`) inside its new mount namespace.
//! Runs in the zone's init process before the command starts.
//!
//! Every path inside the zone is reached from an `O_PATH` fd of the root
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`, and every mount lands on the fd that lookup
//! returned (`move_mount`, or `mount(2)` on the directory made the working
//! directory). So nothing a previous run of the zone left in its tree, a
//! symbolic link or a `..`, can send a mount or a created file outside the
//! root, and no path is looked up twice between check and use (the class
//! of runc CVE-2021-30465).
//!
//! Inside the zone's `/dev` names are used directly, from an fd of it:
//! `/dev` is a tmpfs mounted empty by the same step, before anything of
//! the zone runs, so nothing in it can be a planted link, and each name is
//! created with a call that fails if it exists. The host's device nodes
//! are cloned as they are (a link is never followed) and must be
//! character devices.
//!
//! Masks bind the zone's `/dev/null` by fd after checking that it is the
//! null device, char 1:3 (CVE-2025-31133 swapped it for a link).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, fstat, major, minor, mkdirat, mknodat};

use super::mount_plan::{Dev, Op};
use crate::sys;

/// Why the zone's file system could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mount failed.
    #[error("unable to mount {what} on {target}")]
    Mount {
        /// File-system type, or what is bound.
        what: String,
        /// Mount point (inside the zone once the root is mounted).
        target: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// A host directory could not be created.
    #[error("unable to create {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A path inside the zone would leave the root.
    #[error("{target} in the zone is unsafe: {why}")]
    UnsafeTarget {
        /// Path inside the zone.
        target: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A path inside the zone could not be opened or created.
    #[error("unable to open {target} in the zone")]
    Resolve {
        /// Path inside the zone.
        target: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// A bind-mount source is missing.
    #[error("bind source {path} does not exist")]
    MissingSource {
        /// Host path.
        path: PathBuf,
    },
    /// A host path could not be opened.
    #[error("unable to open {path}")]
    Open {
        /// Host path.
        path: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// A host device node the zone gets is not a character device.
    #[error("{path} is not a character device, refusing to give it to the zone")]
    NotADevice {
        /// Host path.
        path: PathBuf,
    },
    /// `/dev/null` in the zone is not the null device, so masking with it
    /// would expose whatever it is instead.
    #[error("/dev/null in the zone is not the null device (char 1:3), refusing to mask with it")]
    NotDevNull,
    /// An op inside the zone came before the root was mounted (a bug in
    /// the plan).
    #[error("the plan uses the zone's root before mounting it")]
    NoRoot,
    /// pivot_root or detaching the old root failed.
    #[error("unable to pivot_root into {root}")]
    PivotRoot {
        /// New root.
        root: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
}

/// What to do when a path inside the zone is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: report it missing.
    Nothing,
    /// Create it (and missing parents) as a directory.
    Dir,
    /// Create missing parents as directories and it as an empty file.
    File,
}

/// Why [`open_in_root`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The path (or a parent) does not exist, with [`Create::Nothing`].
    #[error("it does not exist")]
    Missing,
    /// The path contains `..`.
    #[error("it contains `..`")]
    DotDot,
    /// A component is a symbolic link.
    #[error("it passes through a symbolic link")]
    Symlink,
    /// Any other failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The resolve flags of every lookup inside the zone.
fn strict() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

/// Opens `target` (absolute, inside the zone) as an `O_PATH` fd, refusing
/// `..` and every symbolic link, and creating missing components as
/// `create` says. An existing path takes one lookup; a missing one is
/// walked from `root` one component at a time. Creation never follows a
/// link either: `mkdirat` and `O_CREAT | O_EXCL` fail on an existing name,
/// and the reopen refuses it if it is a link.
pub fn open_in_root(
    root: BorrowedFd<'_>,
    target: &Path,
    create: Create,
) -> Result<OwnedFd, ResolveError> {
    let mut names = Vec::new();
    for comp in target.components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => names.push(name),
            Component::ParentDir | Component::Prefix(_) => return Err(ResolveError::DotDot),
        }
    }
    let open = |dir: BorrowedFd<'_>, name: &Path| match openat2(dir, name, strict()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) => Err(ResolveError::Symlink),
        Err(e) => Err(ResolveError::Io(e.into())),
    };
    // The flags refuse a link in any component and never leave the root,
    // so the whole path in one lookup is as safe as the walk below.
    let whole: PathBuf = names.iter().collect();
    let whole = if names.is_empty() {
        Path::new(".")
    } else {
        whole.as_path()
    };
    if let Some(fd) = open(root, whole)? {
        return Ok(fd);
    }
    if create == Create::Nothing {
        return Err(ResolveError::Missing);
    }
    let mut cur: Option<OwnedFd> = None;
    let last = names.len().saturating_sub(1);
    for (i, name) in names.iter().enumerate() {
        let name = Path::new(name);
        let dir = cur.as_ref().map_or(root, |c| c.as_fd());
        if let Some(fd) = open(dir, name)? {
            cur = Some(fd);
            continue;
        }
        let created = match create {
            Create::Nothing => return Err(ResolveError::Missing),
            Create::File if i == last => openat(
                dir,
                name,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop),
            _ => mkdirat(dir, name, Mode::from_bits_truncate(0o755)),
        };
        match created {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(ResolveError::Io(e.into())),
        }
        cur = Some(open(dir, name)?.ok_or(ResolveError::Missing)?);
    }
    cur.ok_or(ResolveError::Missing)
}

/// Whether `fd` is a directory.
fn is_dir(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = fstat(fd)?;
    Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Applies `ops` in order; stops at the first error.
pub fn apply(ops: &[Op]) -> Result<(), Error> {
    let mut a = Applier::default();
    for op in ops {
        a.apply(op)?;
    }
    Ok(())
}

#[derive(Default)]
struct Applier {
    /// The zone's root on the host and an `O_PATH` fd of its mount.
    root: Option<(PathBuf, OwnedFd)>,
    /// The zone's checked `/dev/null`, opened on first use.
    devnull: Option<OwnedFd>,
}

impl Applier {
    fn root(&self) -> Result<BorrowedFd<'_>, Error> {
        self.root
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .ok_or(Error::NoRoot)
    }

    /// Opens `target` inside the zone, with errors that name it.
    fn open(&self, target: &Path, create: Create) -> Result<OwnedFd, Error> {
        open_in_root(self.root()?, target, create).map_err(|e| resolve_error(target, e))
    }

    /// Like [`Self::open`], but a missing path is `None`: masks and
    /// read-only paths the running kernel lacks are skipped.
    fn open_existing(&self, target: &Path) -> Result<Option<OwnedFd>, Error> {
        match open_in_root(self.root()?, target, Create::Nothing) {
            Ok(fd) => Ok(Some(fd)),
            Err(ResolveError::Missing) => Ok(None),
            Err(e) => Err(resolve_error(target, e)),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        match op {
            Op::MakePrivate => mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| Error::Mount {
                what: "private propagation".into(),
                target: "/".into(),
                source: e.into(),
            }),
            // Nearly always there: one stat instead of a failed mkdir and
            // a stat.
            Op::HostDir(path) if path.is_dir() => Ok(()),
            Op::HostDir(path) => fs::create_dir_all(path).map_err(|source| Error::Create {
                path: path.clone(),
                source,
            }),
            Op::BindRoot(root) => {
                let old = open_host(root, OFlag::O_DIRECTORY)?;
                let bound = bind_fd(
                    old.as_fd(),
                    old.as_fd(),
                    libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
                    true,
                )
                .map_err(|source| Error::Mount {
                    what: "the root (bind)".into(),
                    target: root.clone(),
                    source,
                })?;
                // The bind's own fd is the new mount: no second lookup.
                self.root = Some((root.clone(), bound));
                Ok(())
            }
            Op::OverlayRoot {
                root,
                lower,
                upper,
                work,
            } => {
                let data = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    upper.display(),
                    work.display()
                );
                mount(
                    Some("overlay"),
                    root,
                    Some("overlay"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(data.as_str()),
                )
                .map_err(|e| Error::Mount {
                    what: "overlay".into(),
                    target: root.clone(),
                    source: e.into(),
                })?;
                // Opened after mounting, so the fd is of the new mount,
                // not of the directory underneath it.
                let fd = open_host(root, OFlag::O_DIRECTORY)?;
                self.root = Some((root.clone(), fd));
                Ok(())
            }
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                let dir = self.open(target, Create::Dir)?;
                mount_on_dir(dir.as_fd(), source, fstype, *flags, data.as_deref()).map_err(|e| {
                    Error::Mount {
                        what: fstype.clone(),
                        target: target.clone(),
                        source: e,
                    }
                })
            }
            Op::Dev(dev) => self.make_dev(dev),
            Op::UserBind {
                source,
                target,
                readonly,
            } => self.user_bind(source, target, *readonly),
            Op::Mask(path) => self.mask(path),
            Op::ReadOnly(path) => {
                let Some(fd) = self.open_existing(path)? else {
                    return Ok(());
                };
                let attrs = libc::MOUNT_ATTR_RDONLY
                    | libc::MOUNT_ATTR_NOSUID
                    | libc::MOUNT_ATTR_NODEV
                    | libc::MOUNT_ATTR_NOEXEC;
                bind_fd(fd.as_fd(), fd.as_fd(), attrs, true)
                    .map(drop)
                    .map_err(|source| Error::Mount {
                        what: "a read-only bind".into(),
                        target: path.clone(),
                        source,
                    })
            }
            Op::PivotRoot => self.pivot_root(),
        }
    }

    /// Makes the zone's `/dev` (see [`Dev`]). The tmpfs is mounted on
    /// the zone's `/dev` found as every other path inside the zone; from
    /// then on everything is made by name from an fd of the tmpfs (also
    /// the working directory, for the `mount(2)` calls): the tmpfs is empty
    /// and nothing of the zone runs yet, so no name in it can be a link,
    /// and creating each name fails if it exists.
    fn make_dev(&mut self, dev: &Dev) -> Result<(), Error> {
        let target = Path::new("/dev");
        let dir = self.open(target, Create::Dir)?;
        mount_on_dir(dir.as_fd(), "tmpfs", "tmpfs", dev.flags, Some(dev.data)).map_err(|e| {
            Error::Mount {
                what: "tmpfs".into(),
                target: target.into(),
                source: e,
            }
        })?;
        drop(dir);
        let fd = self.open(target, Create::Nothing)?;
        let in_dev = |name: &str, source: io::Error| Error::Resolve {
            target: target.join(name),
            source,
        };
        nix::unistd::fchdir(fd.as_fd()).map_err(|e| Error::Resolve {
            target: target.into(),
            source: e.into(),
        })?;
        for name in dev.devices {
            self.bind_device(fd.as_fd(), name)?;
        }
        // Every mount under /dev gets `nosuid,noexec`, added in one call:
        // the tmpfs has them already, the device binds get them here, and
        // the mounts below carry them in their own flags.
        sys::mount::mount_setattr(
            fd.as_fd(),
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
            true,
        )
        .map_err(|source| Error::Mount {
            what: "nosuid,noexec".into(),
            target: target.into(),
            source,
        })?;
        for m in &dev.mounts {
            let name = dev_name(m.name)?;
            mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(0o755))
                .map_err(|e| in_dev(m.name, e.into()))?;
            mount(Some(m.source), name, Some(m.fstype), m.flags, Some(m.data)).map_err(|e| {
                Error::Mount {
                    what: m.fstype.into(),
                    target: target.join(name),
                    source: e.into(),
                }
            })?;
        }
        for (name, points_at) in dev.links {
            nix::unistd::symlinkat(*points_at, fd.as_fd(), dev_name(name)?)
                .map_err(|e| in_dev(name, e.into()))?;
        }
        Ok(())
    }

    /// Binds the host's `/dev/NAME`, which must be a character device, onto
    /// a new empty file `NAME` in the zone's `/dev` (`dev`).
    fn bind_device(&mut self, dev: BorrowedFd<'_>, name: &str) -> Result<(), Error> {
        let host = Path::new("/dev").join(name);
        let name = dev_name(name)?;
        let err = |source| Error::Mount {
            what: host.display().to_string(),
            target: Path::new("/dev").join(name),
            source,
        };
        // The host's node itself, never what a link there points at.
        let tree = sys::mount::open_tree_clone(AT_FDCWD, &host, false).map_err(err)?;
        let st = fstat(tree.as_fd()).map_err(|e| err(e.into()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFCHR {
            return Err(Error::NotADevice { path: host });
        }
        mknodat(
            dev,
            name,
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .map_err(|e| err(e.into()))?;
        // No MOUNT_ATTR_NODEV: this bind is what lets the zone open the
        // node at all.
        sys::mount::move_mount(tree.as_fd(), dev, name).map_err(err)?;
        if is_devnull(&st) {
            // The fd is now of the zone's /dev/null: what masks bind.
            self.devnull = Some(tree);
        }
        Ok(())
    }

    fn user_bind(&mut self, source: &Path, target: &Path, readonly: bool) -> Result<(), Error> {
        if !source.exists() {
            return Err(Error::MissingSource {
                path: source.to_path_buf(),
            });
        }
        let src = open_host(source, OFlag::empty())?;
        let src_is_dir = is_dir(src.as_fd()).map_err(|e| Error::Open {
            path: source.to_path_buf(),
            source: e,
        })?;
        let create = if src_is_dir {
            Create::Dir
        } else {
            Create::File
        };
        let dst = self.open(target, create)?;
        let dst_is_dir = is_dir(dst.as_fd()).map_err(|e| Error::Resolve {
            target: target.to_path_buf(),
            source: e,
        })?;
        if dst_is_dir != src_is_dir {
            return Err(Error::UnsafeTarget {
                target: target.to_path_buf(),
                why: if src_is_dir {
                    "it is not a directory but the source is"
                } else {
                    "it is a directory but the source is not"
                },
            });
        }
        let mut attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if readonly {
            attrs |= libc::MOUNT_ATTR_RDONLY;
        }
        // The attributes are set on the detached copy before it is
        // attached, so there is no moment where the bind is writable. The
        // zone lacks CAP_SYS_ADMIN (and seccomp refuses mount calls), so it
        // cannot remount it read-write.
        bind_fd(src.as_fd(), dst.as_fd(), attrs, true)
            .map(drop)
            .map_err(|e| Error::Mount {
                what: source.display().to_string(),
                target: target.to_path_buf(),
                source: e,
            })
    }

    fn mask(&mut self, path: &Path) -> Result<(), Error> {
        let Some(fd) = self.open_existing(path)? else {
            return Ok(());
        };
        let err = |source| Error::Mount {
            what: "a mask".into(),
            target: path.to_path_buf(),
            source,
        };
        if is_dir(fd.as_fd()).map_err(err)? {
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            return mount_on_dir(
                fd.as_fd(),
                "tmpfs",
                "tmpfs",
                flags,
                Some("size=4k,mode=555"),
            )
            .map_err(err);
        }
        if self.devnull.is_none() {
            self.devnull = Some(self.checked_devnull()?);
        }
        let null = self.devnull.as_ref().ok_or(Error::NotDevNull)?;
        bind_fd(null.as_fd(), fd.as_fd(), 0, false)
            .map(drop)
            .map_err(err)
    }

    /// Opens the zone's `/dev/null` and checks it is char 1:3.
    fn checked_devnull(&self) -> Result<OwnedFd, Error> {
        let fd = self.open(Path::new("/dev/null"), Create::Nothing)?;
        let st = fstat(fd.as_fd()).map_err(|e| Error::Resolve {
            target: "/dev/null".into(),
            source: e.into(),
        })?;
        if !is_devnull(&st) {
            return Err(Error::NotDevNull);
        }
        Ok(fd)
    }

    fn pivot_root(&mut self) -> Result<(), Error> {
        let (root, fd) = self.root.take().ok_or(Error::NoRoot)?;
        let err = |e: Errno| Error::PivotRoot {
            root: root.clone(),
            source: e.into(),
        };
        nix::unistd::fchdir(fd.as_fd()).map_err(err)?;
        // Stacking the old root under the new one and detaching it avoids
        // needing a put_old directory inside the zone's tree.
        nix::unistd::pivot_root(".", ".").map_err(err)?;
        umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
        nix::unistd::chdir("/").map_err(err)
    }
}

/// Whether `st` is the null device, char 1:3.
fn is_devnull(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
        && major(st.st_rdev) == 1
        && minor(st.st_rdev) == 3
}

/// `name` as a path of one plain component: a name in the zone's `/dev`.
fn dev_name(name: &str) -> Result<&Path, Error> {
    let path = Path::new(name);
    let mut comps = path.components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) => Ok(path),
        _ => Err(Error::UnsafeTarget {
            target: Path::new("/dev").join(name),
            why: "it is not a plain name in /dev",
        }),
    }
}

/// A failed lookup of `target` inside the zone, as a set-up error that
/// names it.
fn resolve_error(target: &Path, e: ResolveError) -> Error {
    match e {
        ResolveError::Io(source) => Error::Resolve {
            target: target.to_path_buf(),
            source,
        },
        ResolveError::Missing => Error::Resolve {
            target: target.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        },
        ResolveError::DotDot => Error::UnsafeTarget {
            target: target.to_path_buf(),
            why: "it contains `..`",
        },
        ResolveError::Symlink => Error::UnsafeTarget {
            target: target.to_path_buf(),
            why: "it passes through a symbolic link",
        },
    }
}

/// Opens a host path (the operator's, not the zone's) as an `O_PATH` fd.
fn open_host(path: &Path, extra: OFlag) -> Result<OwnedFd, Error> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_CLOEXEC | extra,
        Mode::empty(),
    )
    .map_err(|e| Error::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Binds what `src` refers to onto `dst`, both by fd: a detached copy of
/// the source (with submounts if `recursive`) gets `attrs` added, then is
/// attached on top of `dst`. Returns an fd of the new mount.
fn bind_fd(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    attrs: u64,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let tree = sys::mount::open_tree_clone(src, c"", recursive)?;
    if attrs != 0 {
        sys::mount::mount_setattr(tree.as_fd(), attrs, recursive)?;
    }
    sys::mount::move_mount(tree.as_fd(), dst, c"")?;
    Ok(tree)
}

/// Mounts a file system on the directory `dir` by making it the working
/// directory and mounting on `.`, so the mount point is the directory
/// already opened and checked, not a path looked up again.
fn mount_on_dir(
    dir: BorrowedFd<'_>,
    source: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    nix::unistd::fchdir(dir)?;
    mount(Some(source), ".", Some(fstype), flags, data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> (PathBuf, OwnedFd) {
        let dir = std::env::temp_dir().join(format!("zonit-rootfs-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let fd = open_host(&dir, OFlag::O_DIRECTORY).unwrap();
        (dir, fd)
    }

    #[test]
    fn open_in_root_creates_missing_directories_inside() {
        let (dir, fd) = scratch("create");
        open_in_root(fd.as_fd(), Path::new("/srv/data"), Create::Dir).unwrap();
        assert!(dir.join("srv/data").is_dir());
        open_in_root(fd.as_fd(), Path::new("/etc/app.conf"), Create::File).unwrap();
        assert!(dir.join("etc/app.conf").is_file());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_in_root_refuses_dotdot() {
        let (dir, fd) = scratch("dotdot");
        let err = open_in_root(fd.as_fd(), Path::new("/srv/../../etc"), Create::Dir).unwrap_err();
        assert!(matches!(err, ResolveError::DotDot), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_in_root_refuses_a_planted_symlink_and_creates_nothing_through_it() {
        let (dir, fd) = scratch("symlink");
        let outside = dir.with_extension("outside");
        let _ = fs::remove_dir_all(&outside);
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, dir.join("srv")).unwrap();
        for target in ["/srv", "/srv/x"] {
            let err = open_in_root(fd.as_fd(), Path::new(target), Create::Dir).unwrap_err();
            assert!(matches!(err, ResolveError::Symlink), "{target}: {err}");
        }
        // A relative link that climbs out is refused the same way.
        symlink("../../..", dir.join("up")).unwrap();
        let err = open_in_root(fd.as_fd(), Path::new("/up/tmp"), Create::Dir).unwrap_err();
        assert!(matches!(err, ResolveError::Symlink), "{err}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn a_name_in_dev_is_one_plain_component() {
        assert_eq!(dev_name("pts").unwrap(), Path::new("pts"));
        for bad in ["", ".", "..", "../etc", "pts/ptmx", "/null"] {
            assert!(
                matches!(dev_name(bad), Err(Error::UnsafeTarget { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_in_root_reports_missing_paths_without_creating() {
        let (dir, fd) = scratch("missing");
        let err =
            open_in_root(fd.as_fd(), Path::new("/proc/timer_stats"), Create::Nothing).unwrap_err();
        assert!(matches!(err, ResolveError::Missing), "{err}");
        assert!(!dir.join("proc").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
