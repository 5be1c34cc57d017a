//! Applies a zone's mount plan (`plan::Op`) inside its new mount namespace.
//! Runs in the zone's init process before the command starts.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

use super::plan::Op;

/// Why the zone's file system could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mount(2) failed.
    #[error("unable to mount {fstype} on {target}")]
    Mount {
        /// File-system type or `bind`.
        fstype: String,
        /// Mount point.
        target: PathBuf,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// A directory, file or link could not be created.
    #[error("unable to create {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A bind-mount target would leave the root.
    #[error("bind target {target} in the zone is unsafe: {why}")]
    UnsafeTarget {
        /// Target inside the zone.
        target: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A bind-mount source is missing.
    #[error("bind source {path} does not exist")]
    MissingSource {
        /// Host path.
        path: PathBuf,
    },
    /// pivot_root or detaching the old root failed.
    #[error("unable to pivot_root into {root}")]
    PivotRoot {
        /// New root.
        root: PathBuf,
        /// errno.
        #[source]
        source: nix::Error,
    },
}

/// Applies `ops` in order; stops at the first error.
pub fn apply(ops: &[Op]) -> Result<(), Error> {
    for op in ops {
        apply_one(op)?;
    }
    Ok(())
}

fn apply_one(op: &Op) -> Result<(), Error> {
    match op {
        Op::MakePrivate => mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|source| Error::Mount {
            fstype: "private propagation".into(),
            target: "/".into(),
            source,
        }),
        Op::Mkdir(path) => fs::create_dir_all(path).map_err(|source| Error::Create {
            path: path.clone(),
            source,
        }),
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => mount(
            Some(source.as_str()),
            target,
            Some(fstype.as_str()),
            *flags,
            data.as_deref(),
        )
        .map_err(|e| Error::Mount {
            fstype: fstype.clone(),
            target: target.clone(),
            source: e,
        }),
        Op::Bind {
            source,
            target,
            readonly,
            recursive,
        } => {
            if source != target {
                create_like(source, target)?;
            }
            bind(source, target, *readonly, *recursive, MsFlags::empty())
        }
        Op::UserBind {
            source,
            root,
            target,
            readonly,
        } => {
            if !source.exists() {
                return Err(Error::MissingSource {
                    path: source.clone(),
                });
            }
            let host_target = resolve_in_root(root, target)?;
            create_like(source, &host_target)?;
            bind(
                source,
                &host_target,
                *readonly,
                true,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            )
        }
        Op::Symlink { target, link } => match symlink(target, link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(Error::Create {
                path: link.clone(),
                source,
            }),
        },
        Op::PivotRoot(root) => pivot_root(root),
    }
}

/// Creates `target` as an empty directory or file, like `source`.
fn create_like(source: &Path, target: &Path) -> Result<(), Error> {
    let create = |r: io::Result<()>| {
        r.map_err(|e| Error::Create {
            path: target.to_path_buf(),
            source: e,
        })
    };
    if source.is_dir() {
        create(fs::create_dir_all(target))
    } else {
        if let Some(parent) = target.parent() {
            create(fs::create_dir_all(parent))?;
        }
        match fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
        {
            Ok(_) => Ok(()),
            Err(e) => create(Err(e)),
        }
    }
}

fn bind(
    source: &Path,
    target: &Path,
    readonly: bool,
    recursive: bool,
    extra: MsFlags,
) -> Result<(), Error> {
    let err = |e| Error::Mount {
        fstype: "bind".into(),
        target: target.to_path_buf(),
        source: e,
    };
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .map_err(err)?;
    if readonly || !extra.is_empty() {
        // A bind remount must repeat the flags the kernel has locked on the
        // source mount, or it fails with EPERM.
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked_flags(target);
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(err)?;
    }
    Ok(())
}

fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (from, to) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(from) {
            out |= to;
        }
    }
    out
}

/// Maps `target` (absolute, inside the zone) to a host path under `root`,
/// refusing `..` and any existing symlink on the way, so a link the zone
/// planted can never redirect a bind mount out of its root.
pub fn resolve_in_root(root: &Path, target: &Path) -> Result<PathBuf, Error> {
    let unsafe_target = |why: &str| Error::UnsafeTarget {
        target: target.to_path_buf(),
        why: why.to_string(),
    };
    let mut path = root.to_path_buf();
    for comp in target.components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                path.push(name);
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(unsafe_target("it passes through a symbolic link"));
                    }
                    _ => {}
                }
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(unsafe_target("it contains `..`"));
            }
        }
    }
    Ok(path)
}

fn pivot_root(root: &Path) -> Result<(), Error> {
    let err = |source| Error::PivotRoot {
        root: root.to_path_buf(),
        source,
    };
    nix::unistd::chdir(root).map_err(err)?;
    // Stacking the old root under the new one and detaching it avoids
    // needing a put_old directory inside the zone's tree.
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_root_joins_plain_paths() {
        let root = std::env::temp_dir();
        let p = resolve_in_root(&root, Path::new("/srv/data")).unwrap();
        assert_eq!(p, root.join("srv/data"));
    }

    #[test]
    fn resolve_in_root_refuses_dotdot() {
        let err = resolve_in_root(Path::new("/zones/a"), Path::new("/srv/../../etc")).unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
    }

    #[test]
    fn resolve_in_root_refuses_planted_symlink() {
        let dir = std::env::temp_dir().join(format!("zonit-resolve-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _ = fs::remove_file(dir.join("srv"));
        symlink("/etc", dir.join("srv")).unwrap();
        let err = resolve_in_root(&dir, Path::new("/srv/x")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
