//! Claiming the control socket's path for one agent.
//!
//! Owns: the lock file `SOCKET.lock` (an exclusive `flock` held for the
//! agent's whole life), the record inside it (the holder's pid and base
//! cgroup), the socket file itself, and reclaiming what a dead predecessor
//! on the same path left behind.
//!
//! Invariants: two agents can never serve one socket path at the same time
//! (the lock decides, and a socket that still answers is never replaced);
//! an existing directory is never created over or re-moded; a path that
//! exists and is not a socket is never deleted; the socket is removed when
//! the claim is dropped (the agent's exit).
//!
//! The record format and the parse of it are pure; the rest is thin file
//! and socket I/O.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket,
    sockopt::PeerCredentials,
};

/// Why the control socket's path could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another agent holds the lock or answers on the socket.
    #[error(
        "another agent{} serves the control socket {path}; stop it first or give this one another control_socket",
        .pid.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
    )]
    Busy {
        /// The socket path.
        path: PathBuf,
        /// The other agent's pid and where it was learnt, when it could be.
        pid: Option<String>,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; remove it or choose another control_socket")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// A file operation failed.
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

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What an agent writes into the lock file: who holds it and what it
/// created that a successor must remove if it dies without cleaning up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The holder's pid (in the namespace it ran in).
    pub pid: Option<i32>,
    /// Its base cgroup directory.
    pub cgroup: Option<PathBuf>,
}

impl Record {
    /// The lock file's text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(pid) = self.pid {
            out.push_str(&format!("pid {pid}\n"));
        }
        if let Some(cg) = &self.cgroup {
            out.push_str(&format!("cgroup {}\n", cg.display()));
        }
        out
    }

    /// Reads a lock file's text; unknown or broken lines are ignored (the
    /// file is only ever a hint about a predecessor).
    pub fn decode(text: &str) -> Record {
        let mut rec = Record::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", p)) => rec.pid = p.trim().parse().ok(),
                Some(("cgroup", c)) if c.starts_with('/') => rec.cgroup = Some(c.into()),
                _ => {}
            }
        }
        rec
    }
}

/// The lock file that goes with a socket path: `PATH.lock`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// This agent's hold on a socket path. Dropping it removes the socket and
/// releases the lock.
#[derive(Debug)]
pub struct Claim {
    socket: PathBuf,
    lock: Flock<File>,
}

impl Claim {
    /// Claims `socket`: makes its directory 0700 when missing, takes the
    /// lock, refuses when another agent holds it or answers on the socket,
    /// and removes a stale socket file. Returns the claim and the record a
    /// dead predecessor left (if any).
    pub fn take(socket: &Path) -> Result<(Claim, Record), Error> {
        if let Some(dir) = socket.parent()
            && !dir.as_os_str().is_empty()
            && fs::symlink_metadata(dir).is_err()
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("create the directory", dir))?;
        }
        let lock_file = lock_path(socket);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_file)
            .map_err(io_err("open the lock file", &lock_file))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                // SO_PEERCRED says 0 for a peer in a PID namespace we cannot
                // see; the record then has its pid as seen in its own.
                let pid = peer_pid(socket).map(|p| format!("pid {p}")).or_else(|| {
                    read_record(&mut file).pid.map(|p| {
                        format!(
                            "pid {p} in its own PID namespace, from {}",
                            lock_file.display()
                        )
                    })
                });
                return Err(Error::Busy {
                    path: socket.to_path_buf(),
                    pid,
                });
            }
            Err((_, e)) => return Err(io_err("lock", &lock_file)(e.into())),
        };
        match fs::symlink_metadata(socket) {
            Ok(m) if m.file_type().is_socket() => {
                // An agent that takes no lock (an older build) may still
                // be serving it.
                if let Some(pid) = peer_pid(socket) {
                    return Err(Error::Busy {
                        path: socket.to_path_buf(),
                        pid: Some(format!("pid {pid}")),
                    });
                }
                fs::remove_file(socket).map_err(io_err("remove the stale socket", socket))?;
            }
            Ok(_) => {
                return Err(Error::NotASocket {
                    path: socket.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", socket)(e)),
        }
        let previous = read_record(&mut lock);
        Ok((
            Claim {
                socket: socket.to_path_buf(),
                lock,
            },
            previous,
        ))
    }

    /// Replaces the record in the lock file.
    pub fn record(&mut self, rec: &Record) {
        let res = self
            .lock
            .set_len(0)
            .and_then(|()| self.lock.rewind())
            .and_then(|()| self.lock.write_all(rec.encode().as_bytes()));
        if let Err(e) = res {
            log::warn!(
                "unable to write {}: {e}; an agent after this one cannot reclaim its cgroups",
                lock_path(&self.socket).display()
            );
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Only ours: the lock is still held here.
        if fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket())
            && let Err(e) = fs::remove_file(&self.socket)
        {
            log::warn!("unable to remove {}: {e}", self.socket.display());
        }
        // The record names nothing that still exists once we exit cleanly.
        self.record(&Record::default());
    }
}

fn read_record(file: &mut File) -> Record {
    let mut text = String::new();
    let _ = file.rewind();
    // A lock file is a few dozen bytes; never read more than a page.
    let _ = file.take(4096).read_to_string(&mut text);
    Record::decode(&text)
}

/// The pid of whoever answers on `socket` (SO_PEERCRED), without blocking.
fn peer_pid(path: &Path) -> Option<i32> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .ok()?;
    let addr = UnixAddr::new(path).ok()?;
    match connect(fd.as_raw_fd(), &addr) {
        // EAGAIN: its backlog is full, but it is there.
        Ok(()) | Err(Errno::EAGAIN) => {}
        Err(_) => return None,
    }
    getsockopt(&fd.as_fd(), PeerCredentials)
        .ok()
        .map(|c| c.pid())
        .filter(|&p| p > 0)
}

/// Removes a dead predecessor's base cgroup `dir` and everything below it:
/// kills what still runs there (its zones lost their supervisor), waits
/// for the groups to empty, then removes them deepest first. Only a
/// directory on cgroup2 whose name begins with `zonit` is touched.
pub fn reclaim_cgroup(dir: &Path, holder: Option<i32>) {
    let is_cgroup2 = nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    let named = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("zonit"));
    if !is_cgroup2 || !named {
        return;
    }
    let holder = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(2);
    while populated(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    match remove_tree(dir) {
        Ok(n) => log::info!(
            "removed {n} cgroup(s) under {} left by a dead agent{holder}",
            dir.display()
        ),
        Err(e) => log::warn!(
            "unable to remove the cgroup {} left by a dead agent{holder}: {e}",
            dir.display()
        ),
    }
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Removes the cgroup `dir` and its descendants; returns how many.
fn remove_tree(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            n += remove_tree(&entry.path())?;
        }
    }
    fs::remove_dir(dir)?;
    Ok(n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let rec = Record {
            pid: Some(42),
            cgroup: Some("/sys/fs/cgroup/zonit-run-1234abcd".into()),
        };
        assert_eq!(Record::decode(&rec.encode()), rec);
        assert_eq!(Record::decode(""), Record::default());
    }

    #[test]
    fn record_ignores_garbage_and_relative_paths() {
        let rec = Record::decode("pid x\ncgroup relative/path\nnoise\n");
        assert_eq!(rec, Record::default());
    }

    #[test]
    fn lock_file_sits_next_to_the_socket() {
        assert_eq!(
            lock_path(Path::new("/run/zonit/control.sock")),
            Path::new("/run/zonit/control.sock.lock")
        );
    }
}
