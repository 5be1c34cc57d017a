//! Provisioning a zone's root from a template.
//!
//! `overlay` needs no provisioning: the plan mounts an overlayfs with the
//! template as the shared lower layer (`mount_plan::Op::OverlayRoot`). `copy`
//! copies the template into the root once, on the zone's first start, and
//! never again: the copy is the zone's own from then on.
//!
//! The copy runs in the zone's init, after the clone and before the mount
//! plan, so a big tree delays only that zone's start and never the
//! agent's loop (it does count against the zone's cgroup limits).
//!
//! Crash safety: the tree is built in a hidden sibling of the root,
//! `<parent>/.<name>.copying`, renamed onto the root when complete, and
//! then marked done by `<parent>/.<name>.copied`. A copy cut short is
//! thrown away and redone at the next start. Both siblings are outside the
//! zone's tree, so nothing inside can fake or remove them.
//!
//! What is kept: file types (directories, regular files, symbolic links,
//! char and block device nodes, FIFOs, sockets), hard links within the
//! template, modes (setuid and sticky bits included), owners, and
//! modification times. Not kept: extended attributes, ACLs and file
//! capabilities (zones run with no_new_privs and `nosuid` mounts, so file
//! capabilities would not apply anyway).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, mknod};
use nix::sys::time::TimeSpec;

use super::mount_plan::sibling;

/// Why the template could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the template failed.
    #[error("unable to read {path} in the template")]
    Read {
        /// Template path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing the copy failed.
    #[error("unable to copy to {path}")]
    Write {
        /// Destination path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The root holds files but was not made by a copy.
    #[error(
        "root {root} is not empty and was not copied from the template; empty it, or remove `template`"
    )]
    RootInUse {
        /// The zone's root.
        root: PathBuf,
    },
}

/// Where the "copy is complete" marker of `root` lives.
pub fn copied_marker(root: &Path) -> PathBuf {
    sibling(root, "copied")
}

/// Copies `template` into `root` unless that was done before.
pub fn ensure_copied(template: &Path, root: &Path) -> Result<(), Error> {
    let marker = copied_marker(root);
    if marker.exists() {
        return Ok(());
    }
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    // An empty root (made by the operator, or a previous half-finished
    // rename) is fine to replace; anything else is someone's data.
    match fs::read_dir(root) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::RootInUse {
                    root: root.to_path_buf(),
                });
            }
            fs::remove_dir(root).map_err(write(root))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write(root)(e)),
    }
    if let Some(parent) = root.parent() {
        fs::create_dir_all(parent).map_err(write(parent))?;
    }
    let staging = sibling(root, "copying");
    match fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write(&staging)(e)),
    }
    copy_tree(template, &staging)?;
    fs::rename(&staging, root).map_err(write(root))?;
    fs::write(&marker, b"").map_err(write(&marker))?;
    Ok(())
}

/// Copies the tree at `src` to `dst` (which must not exist), keeping what
/// the module doc lists.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), Error> {
    let mut links = HashMap::new();
    copy_entry(src, dst, &mut links)
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), Error> {
    let read = |source| Error::Read {
        path: src.to_path_buf(),
        source,
    };
    let write = |source| Error::Write {
        path: dst.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(src).map_err(read)?;
    let ft = meta.file_type();
    if !ft.is_dir() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            return fs::hard_link(first, dst).map_err(write);
        }
        links.insert((meta.dev(), meta.ino()), dst.to_path_buf());
    }
    if ft.is_dir() {
        fs::create_dir(dst).map_err(write)?;
        let mut entries = fs::read_dir(src)
            .map_err(read)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_entry(&e.path(), &dst.join(e.file_name()), links)?;
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(read)?;
        symlink(&target, dst).map_err(write)?;
    } else if ft.is_file() {
        let mut from = fs::File::open(src).map_err(read)?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .map_err(write)?;
        io::copy(&mut from, &mut to).map_err(write)?;
    } else {
        // Device nodes, FIFOs and sockets: same type, same device number.
        let kind = SFlag::from_bits_truncate(meta.mode()) & SFlag::S_IFMT;
        mknod(dst, kind, Mode::from_bits_truncate(0o600), meta.rdev())
            .map_err(|e| write(e.into()))?;
    }
    // Owner before mode: chown clears the setuid and setgid bits.
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).map_err(write)?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(write)?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| write(e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("zonit-template-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn copy_keeps_types_modes_links_and_times() {
        let dir = scratch("keep");
        let tpl = dir.join("tpl");
        fs::create_dir_all(tpl.join("bin")).unwrap();
        fs::write(tpl.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(tpl.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(tpl.join("bin/tool"), tpl.join("bin/tool2")).unwrap();
        symlink("tool", tpl.join("bin/alias")).unwrap();
        fs::create_dir(tpl.join("tmp")).unwrap();
        fs::set_permissions(tpl.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        nix::unistd::mkfifo(&tpl.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();

        let root = dir.join("zones/web");
        ensure_copied(&tpl, &root).unwrap();

        let m = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(m("bin/tool").mode() & 0o7777, 0o4755);
        assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(m("bin/tool").ino(), m("bin/tool2").ino(), "hard link kept");
        assert_eq!(
            fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert!(m("fifo").file_type().is_fifo());
        assert_eq!(m("fifo").mode() & 0o777, 0o640);
        assert_eq!(
            m("bin/tool").mtime(),
            fs::metadata(tpl.join("bin/tool")).unwrap().mtime()
        );
        assert!(copied_marker(&root).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copy_happens_once() {
        let dir = scratch("once");
        let tpl = dir.join("tpl");
        fs::create_dir_all(&tpl).unwrap();
        fs::write(tpl.join("a"), b"1").unwrap();
        let root = dir.join("root");
        ensure_copied(&tpl, &root).unwrap();
        fs::write(root.join("a"), b"changed by the zone").unwrap();
        fs::write(tpl.join("b"), b"new in the template").unwrap();
        ensure_copied(&tpl, &root).unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"changed by the zone");
        assert!(!root.join("b").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_non_empty_root_without_marker_is_refused() {
        let dir = scratch("inuse");
        let tpl = dir.join("tpl");
        fs::create_dir_all(&tpl).unwrap();
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("data"), b"precious").unwrap();
        let err = ensure_copied(&tpl, &root).unwrap_err();
        assert!(matches!(err, Error::RootInUse { .. }), "{err}");
        assert_eq!(fs::read(root.join("data")).unwrap(), b"precious");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_root_and_a_stale_staging_dir_are_replaced() {
        let dir = scratch("stale");
        let tpl = dir.join("tpl");
        fs::create_dir_all(&tpl).unwrap();
        fs::write(tpl.join("a"), b"1").unwrap();
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(sibling(&root, "copying").join("junk")).unwrap();
        ensure_copied(&tpl, &root).unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"1");
        assert!(!sibling(&root, "copying").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
