//! The initramfs as a list: a gen_init_cpio-style text
//! manifest, and a writer for the `newc` (070701) cpio format the kernel
//! unpacks into its rootfs.
//!
//! Three steps, only the middle one doing I/O:
//! - [`parse`] turns manifest text into [`Item`]s (pure; environment
//!   lookups go through a closure so tests pass their own);
//! - [`collect`] reads host files and walks `tree` directories into
//!   archive [`Entry`]s, checking that every entry's parent directory comes
//!   before it and that no name appears twice (the kernel's unpacker
//!   creates nothing implicitly and would drop such entries silently);
//! - [`Writer`] serialises entries into any `impl Write`.
//!
//! Invariants of the output, which make it reproducible byte for byte:
//! every mtime is the same fixed value, inode numbers count up from 1 in
//! entry order, `tree` contents are sorted by name, owners come from the
//! manifest (never from the host), and device nodes are plain header
//! fields, so building an archive needs no root.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Magic at the start of every `newc` header (no checksums).
pub const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a `newc` header: the magic and 13 eight-digit hex fields.
pub const HEADER_LEN: usize = 110;

// File type bits of st_mode, as the cpio format stores them. Spelled out
// rather than taken from libc so this module stays free of the platform.
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// Permission bits a manifest mode may carry (setuid, setgid, sticky, rwx).
pub const PERM_MASK: u32 = 0o7777;

/// What a manifest or the writer found wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest line that does not parse or describes an impossible
    /// archive (missing parent, duplicate name).
    #[error("{}:{line}: {message}", file.display())]
    Manifest {
        /// The manifest.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong and what to do.
        message: String,
    },
    /// A host file or directory named by a manifest line could not be read.
    #[error("{}:{line}: unable to read {}", file.display(), path.display())]
    Read {
        /// The manifest.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The host path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The manifest itself could not be read.
    #[error("unable to read manifest {}", file.display())]
    ReadManifest {
        /// The manifest.
        file: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Mode and owner of an entry, as written in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Permission bits (`PERM_MASK`), without the file type.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevKind {
    /// `c`
    Char,
    /// `b`
    Block,
}

/// One manifest line that adds something to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// 1-based line in the manifest, for error messages.
    pub line: usize,
    /// Absolute path inside the archive, normalised (`/dev/console`).
    pub name: String,
    /// What the line adds.
    pub kind: ItemKind,
}

/// The kinds of manifest lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    /// `dir NAME MODE UID GID`
    Dir(Owner),
    /// `file NAME LOCATION MODE UID GID`; `location` is already expanded
    /// and resolved against the manifest's directory.
    File {
        /// Host file to copy.
        location: PathBuf,
        /// Mode and owner in the archive.
        owner: Owner,
    },
    /// `slink NAME TARGET MODE UID GID`; the target is stored verbatim.
    Slink {
        /// Link target.
        target: String,
        /// Mode and owner in the archive.
        owner: Owner,
    },
    /// `nod NAME MODE UID GID c|b MAJ MIN`
    Nod {
        /// Mode and owner in the archive.
        owner: Owner,
        /// Character or block.
        kind: DevKind,
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
    },
    /// `pipe NAME MODE UID GID`
    Pipe(Owner),
    /// `sock NAME MODE UID GID`
    Sock(Owner),
    /// `tree NAME LOCATION`: a whole host directory, sorted, owned by 0:0,
    /// modes from the host files (less group/other write), symlinks kept
    /// as symlinks.
    Tree {
        /// Host directory to copy.
        location: PathBuf,
    },
}

/// What an archive entry is, with its contents.
#[derive(Clone, PartialEq, Eq)]
pub enum Body {
    /// A directory.
    Dir,
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
    },
    /// A block device node.
    BlockDev {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket node.
    Socket,
}

// File contents can be megabytes; show their size, not their bytes.
impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Dir => write!(f, "Dir"),
            Body::File(data) => write!(f, "File({} bytes)", data.len()),
            Body::Symlink(t) => write!(f, "Symlink({t:?})"),
            Body::CharDev { major, minor } => write!(f, "CharDev({major}:{minor})"),
            Body::BlockDev { major, minor } => write!(f, "BlockDev({major}:{minor})"),
            Body::Fifo => write!(f, "Fifo"),
            Body::Socket => write!(f, "Socket"),
        }
    }
}

impl Body {
    fn file_type(&self) -> u32 {
        match self {
            Body::Dir => S_IFDIR,
            Body::File(_) => S_IFREG,
            Body::Symlink(_) => S_IFLNK,
            Body::CharDev { .. } => S_IFCHR,
            Body::BlockDev { .. } => S_IFBLK,
            Body::Fifo => S_IFIFO,
            Body::Socket => S_IFSOCK,
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Body::File(data) => data,
            Body::Symlink(target) => target.as_bytes(),
            _ => &[],
        }
    }

    fn rdev(&self) -> (u32, u32) {
        match *self {
            Body::CharDev { major, minor } | Body::BlockDev { major, minor } => (major, minor),
            _ => (0, 0),
        }
    }
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path inside the archive (`/dev/console`); written without
    /// the leading slash, as gen_init_cpio does.
    pub name: String,
    /// Mode and owner.
    pub owner: Owner,
    /// Type and contents.
    pub body: Body,
}

/// Streams entries into a `newc` archive.
///
/// Call [`Writer::finish`] to add the trailer; an archive without one is
/// rejected by the kernel.
pub struct Writer<W: Write> {
    out: W,
    // Bytes written so far: every header and every body starts 4-aligned
    // relative to the start of the archive.
    offset: u64,
    next_ino: u32,
    mtime: u32,
}

impl<W: Write> Writer<W> {
    /// A writer with mtime 0 on every entry.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            offset: 0,
            next_ino: 1,
            mtime: 0,
        }
    }

    /// Uses `mtime` (seconds since the epoch) for every entry instead of 0,
    /// e.g. from `SOURCE_DATE_EPOCH`.
    pub fn with_mtime(mut self, mtime: u32) -> Self {
        self.mtime = mtime;
        self
    }

    /// Appends one entry, giving it the next inode number.
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let name = entry.name.trim_start_matches('/');
        if name.is_empty() || name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid archive name {:?}", entry.name),
            ));
        }
        let data = entry.body.data();
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is larger than newc's 4 GiB limit", entry.name),
            )
        })?;
        let (rmajor, rminor) = entry.body.rdev();
        // A directory's own "." plus its entry in the parent.
        let nlink = if entry.body == Body::Dir { 2 } else { 1 };
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        let header = Header {
            ino,
            mode: entry.body.file_type() | (entry.owner.mode & PERM_MASK),
            uid: entry.owner.uid,
            gid: entry.owner.gid,
            nlink,
            mtime: self.mtime,
            size,
            rmajor,
            rminor,
        };
        self.record(&header, name, data)
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let header = Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rmajor: 0,
            rminor: 0,
        };
        self.record(&header, TRAILER, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn record(&mut self, h: &Header, name: &str, data: &[u8]) -> io::Result<()> {
        // namesize counts the terminating NUL.
        let namesize = name.len() as u64 + 1;
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.size,
            0, // devmajor of the file system the file came from: none
            0, // devminor
            h.rmajor,
            h.rminor,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check: only used by the 070702 (crc) variant
        ];
        let mut head = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        head.extend_from_slice(MAGIC);
        for field in fields {
            head.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        head.extend_from_slice(name.as_bytes());
        head.push(0);
        self.put(&head)?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rmajor: u32,
    rminor: u32,
}

/// Writes `entries` and the trailer into `out` with mtime 0.
pub fn write_archive<W: Write>(out: W, entries: &[Entry]) -> io::Result<W> {
    let mut w = Writer::new(out);
    for e in entries {
        w.append(e)?;
    }
    w.finish()
}

/// Parses manifest `text`. `file` names the manifest in errors and its
/// directory anchors relative LOCATIONs; `env` looks up `${VAR}`.
///
/// Stops at the first error: later lines often depend on earlier ones
/// (parents), so one precise message beats a cascade.
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Item>, Error> {
    let base = file.parent().unwrap_or(Path::new(""));
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| Error::Manifest {
            file: file.to_path_buf(),
            line,
            message,
        };
        let content = raw.split('#').next().unwrap_or("");
        let words: Vec<&str> = content.split_whitespace().collect();
        let Some((&keyword, args)) = words.split_first() else {
            continue;
        };
        let kind = parse_line(keyword, args, base, env).map_err(err)?;
        let name = normalize_name(args.first().copied().unwrap_or("")).map_err(err)?;
        items.push(Item { line, name, kind });
    }
    Ok(items)
}

fn parse_line(
    keyword: &str,
    args: &[&str],
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ItemKind, String> {
    let shape = match keyword {
        "dir" | "pipe" | "sock" => "NAME MODE UID GID",
        "file" => "NAME LOCATION MODE UID GID",
        "slink" => "NAME TARGET MODE UID GID",
        "nod" => "NAME MODE UID GID c|b MAJ MIN",
        "tree" => "NAME LOCATION",
        other => {
            return Err(format!(
                "unknown entry type `{other}`; expected dir, file, slink, nod, pipe, sock or tree"
            ));
        }
    };
    let want = shape.split(' ').count();
    if args.len() != want {
        return Err(format!(
            "`{keyword}` takes {shape} ({want} fields), found {}",
            args.len()
        ));
    }
    let location = |s: &str| -> Result<PathBuf, String> {
        let p = PathBuf::from(expand(s, env)?);
        Ok(if p.is_relative() { base.join(p) } else { p })
    };
    Ok(match keyword {
        "dir" => ItemKind::Dir(owner(&args[1..4])?),
        "pipe" => ItemKind::Pipe(owner(&args[1..4])?),
        "sock" => ItemKind::Sock(owner(&args[1..4])?),
        "file" => ItemKind::File {
            location: location(args[1])?,
            owner: owner(&args[2..5])?,
        },
        "slink" => ItemKind::Slink {
            target: args[1].to_string(),
            owner: owner(&args[2..5])?,
        },
        "nod" => ItemKind::Nod {
            owner: owner(&args[1..4])?,
            kind: match args[4] {
                "c" => DevKind::Char,
                "b" => DevKind::Block,
                other => {
                    return Err(format!(
                        "device type `{other}` must be c (character) or b (block)"
                    ));
                }
            },
            major: number(args[5], "major")?,
            minor: number(args[6], "minor")?,
        },
        _ => ItemKind::Tree {
            location: location(args[1])?,
        },
    })
}

fn owner(fields: &[&str]) -> Result<Owner, String> {
    let [mode, uid, gid] = fields else {
        return Err("expected MODE UID GID".into());
    };
    let mode = u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= PERM_MASK)
        .ok_or_else(|| format!("mode `{mode}` is not octal permission bits (e.g. 755)"))?;
    Ok(Owner {
        mode,
        uid: number(uid, "uid")?,
        gid: number(gid, "gid")?,
    })
}

fn number(s: &str, what: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("{what} `{s}` is not a decimal number"))
}

/// Checks that `name` is an absolute archive path and removes redundant
/// slashes; refuses `.`/`..` so nothing can point outside the rootfs.
fn normalize_name(name: &str) -> Result<String, String> {
    if !name.starts_with('/') {
        return Err(format!("name `{name}` must be absolute (start with /)"));
    }
    let mut out = String::new();
    for part in name.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(format!("name `{name}` must not contain . or .."));
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        return Err("`/` is the rootfs itself and needs no entry".into());
    }
    Ok(out)
}

/// Expands `${VAR}` from `env`; a `$` not followed by `{` is literal.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in `{s}`"));
        };
        let var = &after[..end];
        if var.is_empty() {
            return Err(format!("empty `${{}}` in `{s}`"));
        }
        let value = env(var).ok_or_else(|| {
            format!("${{{var}}} is not set in the environment; export it before building")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads the manifest at `path`, expanding `${VAR}` from the process
/// environment, and collects its entries.
pub fn load(path: &Path) -> Result<Vec<Entry>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadManifest {
        file: path.to_path_buf(),
        source,
    })?;
    let items = parse(path, &text, &|var| std::env::var(var).ok())?;
    collect(path, &items)
}

/// Turns items into archive entries, reading host files and walking
/// `tree` directories. `file` names the manifest in errors.
pub fn collect(file: &Path, items: &[Item]) -> Result<Vec<Entry>, Error> {
    let mut c = Collector {
        file,
        entries: Vec::new(),
        seen: BTreeMap::new(),
    };
    for item in items {
        c.item(item)?;
    }
    Ok(c.entries)
}

struct Collector<'a> {
    file: &'a Path,
    entries: Vec<Entry>,
    // Every name added so far -> whether it is a directory.
    seen: BTreeMap<String, bool>,
}

impl Collector<'_> {
    fn item(&mut self, item: &Item) -> Result<(), Error> {
        let line = item.line;
        let (owner, body) = match &item.kind {
            ItemKind::Dir(o) => (*o, Body::Dir),
            ItemKind::File { location, owner } => {
                let data =
                    std::fs::read(location).map_err(|source| self.read(line, location, source))?;
                (*owner, Body::File(data))
            }
            ItemKind::Slink { target, owner } => (*owner, Body::Symlink(target.clone())),
            ItemKind::Nod {
                owner,
                kind,
                major,
                minor,
            } => {
                let (major, minor) = (*major, *minor);
                let body = match kind {
                    DevKind::Char => Body::CharDev { major, minor },
                    DevKind::Block => Body::BlockDev { major, minor },
                };
                (*owner, body)
            }
            ItemKind::Pipe(o) => (*o, Body::Fifo),
            ItemKind::Sock(o) => (*o, Body::Socket),
            ItemKind::Tree { location } => return self.tree(line, &item.name, location),
        };
        self.push(line, item.name.clone(), owner, body)
    }

    /// Adds `dir` as `name` and everything below it, depth first, each
    /// directory's children sorted by their byte names.
    fn tree(&mut self, line: usize, name: &str, dir: &Path) -> Result<(), Error> {
        let meta = std::fs::symlink_metadata(dir).map_err(|source| self.read(line, dir, source))?;
        if !meta.is_dir() {
            return Err(self.manifest(
                line,
                format!("tree location {} is not a directory", dir.display()),
            ));
        }
        self.push(line, name.to_string(), root_owned(meta.mode()), Body::Dir)?;
        let mut children: Vec<_> = std::fs::read_dir(dir)
            .and_then(|rd| {
                rd.map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<_, _>>()
            })
            .map_err(|source| self.read(line, dir, source))?;
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for child in children {
            let path = dir.join(&child);
            let Some(child) = child.to_str() else {
                return Err(self.manifest(
                    line,
                    format!("{} has a name that is not UTF-8", path.display()),
                ));
            };
            let child_name = format!("{name}/{child}");
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|source| self.read(line, &path, source))?;
            let ft = meta.file_type();
            let body = if ft.is_dir() {
                self.tree(line, &child_name, &path)?;
                continue;
            } else if ft.is_symlink() {
                let target =
                    std::fs::read_link(&path).map_err(|source| self.read(line, &path, source))?;
                let Some(target) = target.to_str() else {
                    return Err(self.manifest(
                        line,
                        format!("symlink {} has a target that is not UTF-8", path.display()),
                    ));
                };
                Body::Symlink(target.to_string())
            } else if ft.is_file() {
                Body::File(std::fs::read(&path).map_err(|source| self.read(line, &path, source))?)
            } else {
                return Err(self.manifest(
                    line,
                    format!(
                        "{} is a device, pipe or socket; list it with a nod, pipe or sock line instead",
                        path.display()
                    ),
                ));
            };
            self.push(line, child_name, root_owned(meta.mode()), body)?;
        }
        Ok(())
    }

    fn push(&mut self, line: usize, name: String, owner: Owner, body: Body) -> Result<(), Error> {
        if self.seen.contains_key(&name) {
            return Err(self.manifest(line, format!("{name} is already in the archive")));
        }
        if let Some((parent, _)) = name.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
            match self.seen.get(parent) {
                Some(true) => {}
                Some(false) => {
                    return Err(
                        self.manifest(line, format!("{name}: parent {parent} is not a directory"))
                    );
                }
                None => {
                    return Err(self.manifest(
                        line,
                        format!(
                            "{name}: parent directory {parent} is not listed earlier; \
                             add `dir {parent} 755 0 0` above this line"
                        ),
                    ));
                }
            }
        }
        self.seen.insert(name.clone(), body == Body::Dir);
        self.entries.push(Entry { name, owner, body });
        Ok(())
    }

    fn manifest(&self, line: usize, message: String) -> Error {
        Error::Manifest {
            file: self.file.to_path_buf(),
            line,
            message,
        }
    }

    fn read(&self, line: usize, path: &Path, source: io::Error) -> Error {
        Error::Read {
            file: self.file.to_path_buf(),
            line,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `tree` entries keep the host's permission bits but never its owners,
/// so the archive does not depend on who built it. Group and other write
/// bits are cleared: a git checkout sets them from the builder's umask, and
/// nothing in a rootfs template should be writable by others anyway.
fn root_owned(st_mode: u32) -> Owner {
    Owner {
        mode: st_mode & PERM_MASK & !0o022,
        uid: 0,
        gid: 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_err(text: &str) -> String {
        parse(Path::new("m/manifest"), text, &no_env)
            .unwrap_err()
            .to_string()
    }

    fn hdr(fields: [u32; 13]) -> String {
        let mut s = String::from("070701");
        for f in fields {
            s.push_str(&format!("{f:08X}"));
        }
        s
    }

    #[test]
    fn header_fields_padding_and_trailer_match_newc() {
        let entries = [
            Entry {
                name: "/dev".into(),
                owner: Owner {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
                body: Body::Dir,
            },
            Entry {
                name: "/dev/console".into(),
                owner: Owner {
                    mode: 0o600,
                    uid: 0,
                    gid: 5,
                },
                body: Body::CharDev { major: 5, minor: 1 },
            },
            Entry {
                name: "/a".into(),
                owner: Owner {
                    mode: 0o644,
                    uid: 1000,
                    gid: 100,
                },
                body: Body::File(b"hello".to_vec()),
            },
            Entry {
                name: "/sh".into(),
                owner: Owner {
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                },
                body: Body::Symlink("busybox".into()),
            },
        ];
        let bytes = write_archive(Vec::new(), &entries).unwrap();
        let mut want = String::new();
        // "dev\0": 110 + 4 = 114 -> 2 bytes of padding.
        want += &hdr([1, 0o40755, 0, 0, 2, 0, 0, 0, 0, 0, 0, 4, 0]);
        want += "dev\0\0\0";
        // "dev/console\0": 110 + 12 = 122 -> 2 bytes of padding.
        want += &hdr([2, 0o20600, 0, 5, 1, 0, 0, 0, 0, 5, 1, 12, 0]);
        want += "dev/console\0\0\0";
        // "a\0": 110 + 2 = 112, aligned; 5 data bytes -> 3 bytes of padding.
        want += &hdr([3, 0o100644, 1000, 100, 1, 0, 5, 0, 0, 0, 0, 2, 0]);
        want += "a\0hello\0\0\0";
        // "sh\0": 113 -> 3 bytes; target "busybox" 7 -> 1 byte.
        want += &hdr([4, 0o120777, 0, 0, 1, 0, 7, 0, 0, 0, 0, 3, 0]);
        want += "sh\0\0\0\0busybox\0";
        // "TRAILER!!!\0": 110 + 11 = 121 -> 3 bytes.
        want += &hdr([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0]);
        want += "TRAILER!!!\0\0\0\0";
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), want);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], b"070701");
        assert!(
            want.contains("000041ED"),
            "dir mode is written in upper-case hex"
        );
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let bytes = write_archive(Vec::new(), &[]).unwrap();
        assert_eq!(bytes.len(), 124);
        assert!(bytes.ends_with(b"TRAILER!!!\0\0\0\0"));
    }

    #[test]
    fn fixed_mtime_applies_to_every_entry_but_not_the_trailer() {
        let e = Entry {
            name: "/x".into(),
            owner: Owner {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            body: Body::Dir,
        };
        let mut w = Writer::new(Vec::new()).with_mtime(0x5F5E100);
        w.append(&e).unwrap();
        let bytes = w.finish().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        // mtime is the 6th field: 6 + 5 * 8 = 46.
        assert_eq!(&text[46..54], "05F5E100");
        let trailer = text.find("070701000000000").unwrap();
        assert_eq!(&text[trailer + 46..trailer + 54], "00000000");
    }

    #[test]
    fn parses_every_line_kind() {
        let text = "\
# comment
dir /dev 755 0 0

nod /dev/console 600 0 0 c 5 1   # console
nod /dev/vda 660 0 6 b 254 0
slink /bin/sh busybox 777 0 0
file /init ${BIN} 755 0 0
file /etc/x.toml x.toml 644 0 0
pipe //run//fifo 600 0 0
sock /run/s 755 0 0
tree /t tmpl
";
        let env = |v: &str| (v == "BIN").then(|| "/out/zonit".to_string());
        let items = parse(Path::new("/src/initramfs/manifest"), text, &env).unwrap();
        let o = |mode, uid, gid| Owner { mode, uid, gid };
        let got: Vec<(usize, &str, &ItemKind)> = items
            .iter()
            .map(|i| (i.line, i.name.as_str(), &i.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "/dev", &ItemKind::Dir(o(0o755, 0, 0))),
                (
                    4,
                    "/dev/console",
                    &ItemKind::Nod {
                        owner: o(0o600, 0, 0),
                        kind: DevKind::Char,
                        major: 5,
                        minor: 1
                    }
                ),
                (
                    5,
                    "/dev/vda",
                    &ItemKind::Nod {
                        owner: o(0o660, 0, 6),
                        kind: DevKind::Block,
                        major: 254,
                        minor: 0
                    }
                ),
                (
                    6,
                    "/bin/sh",
                    &ItemKind::Slink {
                        target: "busybox".into(),
                        owner: o(0o777, 0, 0)
                    }
                ),
                (
                    7,
                    "/init",
                    &ItemKind::File {
                        location: "/out/zonit".into(),
                        owner: o(0o755, 0, 0)
                    }
                ),
                (
                    8,
                    "/etc/x.toml",
                    &ItemKind::File {
                        location: "/src/initramfs/x.toml".into(),
                        owner: o(0o644, 0, 0)
                    }
                ),
                (9, "/run/fifo", &ItemKind::Pipe(o(0o600, 0, 0))),
                (10, "/run/s", &ItemKind::Sock(o(0o755, 0, 0))),
                (
                    11,
                    "/t",
                    &ItemKind::Tree {
                        location: "/src/initramfs/tmpl".into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let cases = [
            (
                "dir /a 755 0 0\nfoo /b\n",
                "m/manifest:2: unknown entry type `foo`",
            ),
            (
                "\n\ndir /a 755 0\n",
                "m/manifest:3: `dir` takes NAME MODE UID GID (4 fields), found 3",
            ),
            ("dir /a 789 0 0\n", "m/manifest:1: mode `789` is not octal"),
            (
                "dir /a 17777 0 0\n",
                "m/manifest:1: mode `17777` is not octal",
            ),
            (
                "dir /a 755 root 0\n",
                "m/manifest:1: uid `root` is not a decimal number",
            ),
            (
                "nod /c 600 0 0 x 5 1\n",
                "m/manifest:1: device type `x` must be c",
            ),
            ("nod /c 600 0 0 c five 1\n", "m/manifest:1: major `five`"),
            (
                "dir dev 755 0 0\n",
                "m/manifest:1: name `dev` must be absolute",
            ),
            (
                "dir /a/../b 755 0 0\n",
                "m/manifest:1: name `/a/../b` must not contain . or ..",
            ),
            ("dir / 755 0 0\n", "m/manifest:1: `/` is the rootfs itself"),
            (
                "file /init ${NOPE} 755 0 0\n",
                "m/manifest:1: ${NOPE} is not set in the environment",
            ),
            (
                "file /init ${NOPE 755 0 0\n",
                "m/manifest:1: unterminated `${`",
            ),
            (
                "file /init a 755 0 0 1\n",
                "m/manifest:1: `file` takes NAME LOCATION MODE UID GID (5 fields), found 6",
            ),
        ];
        for (text, want) in cases {
            let got = parse_err(text);
            assert!(
                got.starts_with(want),
                "for {text:?}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn expand_substitutes_variables_and_keeps_lone_dollars() {
        let env = |v: &str| match v {
            "A" => Some("x".to_string()),
            "B" => Some("/y".to_string()),
            _ => None,
        };
        assert_eq!(expand("${A}${B}/$z", &env).unwrap(), "x/y/$z");
        assert_eq!(expand("plain", &env).unwrap(), "plain");
        assert!(expand("${}", &env).is_err());
    }

    fn items(text: &str) -> Vec<Item> {
        parse(Path::new("manifest"), text, &no_env).unwrap()
    }

    #[test]
    fn entries_need_their_parent_listed_first() {
        let err = collect(
            Path::new("manifest"),
            &items("dir /a 755 0 0\nnod /dev/null 666 0 0 c 1 3\n"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "manifest:2: /dev/null: parent directory /dev is not listed earlier; \
             add `dir /dev 755 0 0` above this line"
        );
        let err = collect(
            Path::new("manifest"),
            &items("pipe /p 600 0 0\ndir /p/q 755 0 0\n"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "manifest:2: /p/q: parent /p is not a directory");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = collect(
            Path::new("manifest"),
            &items("dir /a 755 0 0\ndir /a/ 700 0 0\n"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "manifest:2: /a is already in the archive");
    }

    #[test]
    fn missing_host_file_names_line_and_path() {
        let err = collect(
            Path::new("manifest"),
            &items("file /x /nonexistent/zonit-test 755 0 0\n"),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Read { line: 1, .. }));
        assert_eq!(
            err.to_string(),
            "manifest:1: unable to read /nonexistent/zonit-test"
        );
    }
}
