//! Kernel modules by name, with their dependencies, loaded with
//! `finit_module(2)`.
//!
//! Where dependencies come from:
//! - `modules.dep` in `/lib/modules/$(uname -r)/`, when depmod made one;
//! - otherwise each module's own `.modinfo` ELF section (`depends=`),
//!   read from the `.ko` file. Debian's kernel packages leave modules.dep
//!   to depmod at install time, so an initramfs built from the package
//!   has none, and this fallback is the normal case there.
//!
//! Names are compared the way the kernel does: `-` and `_` are the same
//! (`kvm-amd.ko` is module `kvm_amd`). Built-in modules
//! (`modules.builtin`) are satisfied without loading anything.
//!
//! The decisions (parsing the index, the ELF section, the load order) are
//! pure and unit-tested; [`load`] does the file reading and the syscalls.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::le::{u16_at, u32_at, u64_at};
use crate::sys;

/// Why modules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No module file has this name.
    #[error("module {name} not found under {dir}{}", needed_by.as_ref().map(|n| format!(" (needed by {n})")).unwrap_or_default())]
    NotFound {
        /// Module name.
        name: String,
        /// The module that depends on it, if any.
        needed_by: Option<String>,
        /// Directory searched.
        dir: PathBuf,
    },
    /// Modules depend on each other in a circle.
    #[error("modules depend on each other in a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// The module file is not an ELF object with a `.modinfo` section.
    #[error("unable to read the dependencies of {path}: {reason}")]
    Modinfo {
        /// Module file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a file failed.
    #[error("unable to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the module.
    #[error("unable to load module {name} from {path}")]
    Load {
        /// Module name.
        name: String,
        /// Module file.
        path: PathBuf,
        /// Cause (errno from finit_module).
        #[source]
        source: io::Error,
    },
}

/// The kernel's name for a module file or module: basename without
/// `.ko` (and a compression suffix), `-` folded to `_`.
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    stem.replace('-', "_")
}

/// What is known about one module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModFile {
    /// Path relative to the modules directory.
    pub path: String,
    /// Names of the modules it needs loaded first.
    pub depends: Vec<String>,
}

/// Parses `modules.dep`: `path: dep-path dep-path ...` a line. Returns
/// name -> file with dependencies as names.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, ModFile> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if path.is_empty() {
            continue;
        }
        out.insert(
            module_name(path),
            ModFile {
                path: path.to_string(),
                depends: deps.split_whitespace().map(module_name).collect(),
            },
        );
    }
    out
}

/// Parses `modules.builtin` (one path a line) into module names.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// The bytes of the section called `name` in a 64-bit little-endian ELF
/// object (what x86-64 kernel modules are).
pub fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<&'a [u8], String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file (compressed? then modules.dep is needed)".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let bad = || "truncated or corrupt ELF section table".to_string();
    let shoff = usize::try_from(u64_at(elf, 0x28).ok_or_else(bad)?).map_err(|_| bad())?;
    let shentsize = usize::from(u16_at(elf, 0x3a).ok_or_else(bad)?);
    let shnum = usize::from(u16_at(elf, 0x3c).ok_or_else(bad)?);
    let shstrndx = usize::from(u16_at(elf, 0x3e).ok_or_else(bad)?);
    if shentsize < 0x40 {
        return Err(bad());
    }
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(elf, at)?;
        let offset = usize::try_from(u64_at(elf, at + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(elf, at + 0x20)?).ok()?;
        Some((name, offset, size))
    };
    let bytes = |offset: usize, size: usize| elf.get(offset..offset.checked_add(size)?);
    let (_, str_off, str_size) = header(shstrndx).ok_or_else(bad)?;
    let strtab = bytes(str_off, str_size).ok_or_else(bad)?;
    for i in 0..shnum {
        let (name_off, offset, size) = header(i).ok_or_else(bad)?;
        let Some(rest) = strtab.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return bytes(offset, size).ok_or_else(bad);
        }
    }
    Err(format!("no {name} section"))
}

/// `key=value` strings of a `.modinfo` section, NUL-separated.
pub fn parse_modinfo(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|&b| b == 0)
        .filter_map(|s| {
            let s = std::str::from_utf8(s).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The `depends=` list of a module's modinfo, as names.
pub fn modinfo_depends(info: &[(String, String)]) -> Vec<String> {
    info.iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()))
        .map(module_name)
        .collect()
}

/// One module to load, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Module name.
    pub name: String,
    /// Path relative to the modules directory.
    pub path: String,
}

/// The load order for `wanted`: every module after all it depends on,
/// each once, built-ins and already-loaded modules (`skip`) left out.
/// `lookup` finds a module's file and dependencies by name (`Ok(None)`:
/// no such module).
pub fn resolve<E>(
    wanted: &[String],
    skip: &BTreeSet<String>,
    mut lookup: impl FnMut(&str) -> Result<Option<ModFile>, E>,
) -> Result<Vec<Load>, ResolveError<E>> {
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for w in wanted {
        let mut path = Vec::new();
        visit(
            &module_name(w),
            None,
            skip,
            &mut lookup,
            &mut done,
            &mut path,
            &mut order,
        )?;
    }
    Ok(order)
}

/// Why [`resolve`] failed; `Lookup` carries the lookup's own error.
#[derive(Debug)]
pub enum ResolveError<E> {
    /// No module of that name (and who needed it).
    NotFound(String, Option<String>),
    /// A dependency cycle, as the path that closes it.
    Cycle(Vec<String>),
    /// The lookup failed.
    Lookup(E),
}

fn visit<E>(
    name: &str,
    needed_by: Option<&str>,
    skip: &BTreeSet<String>,
    lookup: &mut impl FnMut(&str) -> Result<Option<ModFile>, E>,
    done: &mut BTreeSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<Load>,
) -> Result<(), ResolveError<E>> {
    if done.contains(name) || skip.contains(name) {
        return Ok(());
    }
    if let Some(at) = path.iter().position(|p| p == name) {
        let mut cycle = path[at..].to_vec();
        cycle.push(name.to_string());
        return Err(ResolveError::Cycle(cycle));
    }
    let file = lookup(name)
        .map_err(ResolveError::Lookup)?
        .ok_or_else(|| ResolveError::NotFound(name.to_string(), needed_by.map(String::from)))?;
    path.push(name.to_string());
    for dep in &file.depends {
        visit(dep, Some(name), skip, lookup, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_string());
    order.push(Load {
        name: name.to_string(),
        path: file.path,
    });
    Ok(())
}

/// Every module file under `dir`, by name (relative paths), for the case
/// without modules.dep.
fn scan(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            let rel = rel.join(e.file_name());
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(rel);
            } else if let Some(s) = rel.to_str()
                && s.contains(".ko")
            {
                out.insert(module_name(s), s.to_string());
            }
        }
    }
    out
}

/// The modules directory of the running kernel under `root`.
pub fn modules_dir(root: &Path) -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    root.join("lib/modules").join(release)
}

/// Loads `wanted` and their dependencies from `dir`; returns the names
/// loaded now (not those built in or loaded before).
pub fn load(wanted: &[String], dir: &Path) -> Result<Vec<String>, Error> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| Error::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut skip = std::fs::read_to_string(dir.join("modules.builtin"))
        .map(|t| parse_builtin(&t))
        .unwrap_or_default();
    // Loaded already (by an earlier boot step or a previous reload).
    if let Ok(text) = std::fs::read_to_string("/proc/modules") {
        skip.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(module_name),
        );
    }
    let dep_path = dir.join("modules.dep");
    let order = if dep_path.exists() {
        let index = parse_modules_dep(&read(&dep_path)?);
        resolve(wanted, &skip, |n| Ok::<_, Error>(index.get(n).cloned()))
    } else {
        let files = scan(dir);
        resolve(wanted, &skip, |n| {
            let Some(rel) = files.get(n) else {
                return Ok(None);
            };
            let path = dir.join(rel);
            let bytes = std::fs::read(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let section = elf_section(&bytes, ".modinfo").map_err(|reason| Error::Modinfo {
                path: path.clone(),
                reason,
            })?;
            Ok(Some(ModFile {
                path: rel.clone(),
                depends: modinfo_depends(&parse_modinfo(section)),
            }))
        })
    }
    .map_err(|e| match e {
        ResolveError::NotFound(name, needed_by) => Error::NotFound {
            name,
            needed_by,
            dir: dir.to_path_buf(),
        },
        ResolveError::Cycle(c) => Error::Cycle(c),
        ResolveError::Lookup(e) => e,
    })?;
    let mut loaded = Vec::new();
    for m in order {
        let path = dir.join(&m.path);
        let load_err = |source| Error::Load {
            name: m.name.clone(),
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let flags = if m.path.ends_with(".ko") {
            0
        } else {
            sys::kernel::MODULE_INIT_COMPRESSED_FILE
        };
        let params = CString::default();
        match sys::kernel::finit_module(file.as_fd(), &params, flags) {
            Ok(()) => loaded.push(m.name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(load_err(e)),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(order: &[Load]) -> Vec<&str> {
        order.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn names_fold_dashes_and_drop_suffixes() {
        assert_eq!(module_name("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
        assert_eq!(module_name("kvm_amd"), "kvm_amd");
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko.xz"), "overlay");
        assert_eq!(module_name("virtio_blk.ko.zst"), "virtio_blk");
    }

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/fs/overlayfs/overlay.ko:
";

    #[test]
    fn modules_dep_gives_kvm_amd_after_kvm_after_irqbypass() {
        let index = parse_modules_dep(DEP);
        let order = resolve(&["kvm-amd".to_string()], &BTreeSet::new(), |n| {
            Ok::<_, ()>(index.get(n).cloned())
        })
        .unwrap();
        assert_eq!(names(&order), ["irqbypass", "kvm", "kvm_amd"]);
        assert_eq!(order[2].path, "kernel/arch/x86/kvm/kvm-amd.ko");
    }

    #[test]
    fn each_module_is_loaded_once_and_skips_are_honoured() {
        let index = parse_modules_dep(DEP);
        let skip: BTreeSet<String> = ["irqbypass".to_string()].into();
        let wanted = ["kvm_amd", "kvm", "overlay", "overlay"].map(String::from);
        let order = resolve(&wanted, &skip, |n| Ok::<_, ()>(index.get(n).cloned())).unwrap();
        assert_eq!(names(&order), ["kvm", "kvm_amd", "overlay"]);
    }

    #[test]
    fn a_missing_dependency_names_who_needs_it() {
        let index = parse_modules_dep("a.ko: b.ko\n");
        match resolve(&["a".to_string()], &BTreeSet::new(), |n| {
            Ok::<_, ()>(index.get(n).cloned())
        }) {
            Err(ResolveError::NotFound(name, by)) => {
                assert_eq!(name, "b");
                assert_eq!(by.as_deref(), Some("a"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dependency_cycle_is_an_error_not_a_hang() {
        let index: BTreeMap<String, ModFile> = [("a", "b"), ("b", "c"), ("c", "a")]
            .into_iter()
            .map(|(n, d)| {
                (
                    n.to_string(),
                    ModFile {
                        path: format!("{n}.ko"),
                        depends: vec![d.to_string()],
                    },
                )
            })
            .collect();
        match resolve(&["a".to_string()], &BTreeSet::new(), |n| {
            Ok::<_, ()>(index.get(n).cloned())
        }) {
            Err(ResolveError::Cycle(c)) => assert_eq!(c, ["a", "b", "c", "a"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builtin_list_is_names() {
        let b = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/char/mem-x.ko\n\n");
        assert!(b.contains("ext4") && b.contains("mem_x"));
    }

    /// A minimal ELF64 LE object: header, .modinfo, .shstrtab, section table.
    fn tiny_elf(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 0x40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_off, modinfo.len());
        sh(10, str_off, shstrtab.len());
        elf
    }

    #[test]
    fn modinfo_depends_is_read_from_the_elf_section() {
        let elf = tiny_elf(b"license=GPL\0depends=kvm,irq-bypass\0name=kvm_amd\0\0");
        let section = elf_section(&elf, ".modinfo").unwrap();
        let info = parse_modinfo(section);
        assert!(info.contains(&("name".into(), "kvm_amd".into())));
        assert_eq!(modinfo_depends(&info), ["kvm", "irq_bypass"]);
        assert!(modinfo_depends(&parse_modinfo(b"depends=\0")).is_empty());
    }

    #[test]
    fn broken_elf_is_an_error_not_a_panic() {
        assert!(elf_section(b"\x1f\x8b compressed", ".modinfo").is_err());
        let elf = tiny_elf(b"depends=\0");
        assert!(elf_section(&elf, ".nothere").is_err());
        for cut in [0x20, 0x41, elf.len() - 30] {
            assert!(elf_section(&elf[..cut], ".modinfo").is_err(), "cut {cut}");
        }
    }

    /// The real thing, when scripts/fetch-kernel.sh has run: kvm_amd's
    /// modinfo brings in kvm, whose modinfo brings in irqbypass.
    #[test]
    fn debian_kvm_amd_modinfo_brings_in_kvm_and_irqbypass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/kernel/modules");
        let amd = dir.join("kernel/arch/x86/kvm/kvm-amd.ko");
        if !amd.exists() {
            eprintln!("skipped: no build/kernel (scripts/fetch-kernel.sh)");
            return;
        }
        let files = scan(&dir);
        let order = resolve(&["kvm_amd".to_string()], &BTreeSet::new(), |n| {
            let Some(rel) = files.get(n) else {
                return Ok::<_, String>(None);
            };
            let bytes = std::fs::read(dir.join(rel)).map_err(|e| e.to_string())?;
            let info = parse_modinfo(elf_section(&bytes, ".modinfo")?);
            Ok(Some(ModFile {
                path: rel.clone(),
                depends: modinfo_depends(&info),
            }))
        })
        .unwrap();
        assert_eq!(names(&order), ["irqbypass", "kvm", "kvm_amd"]);
    }
}
