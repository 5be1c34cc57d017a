//! Tier-1 tests of the initramfs writer: `tree` expansion, manifest
//! handling through `zonit-mkinitramfs`, reproducible gzip output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use zonit_mkinitramfs::{self as cpio, Body, Entry, Owner};

const MKINITRAMFS: &str = env!("CARGO_BIN_EXE_zonit-mkinitramfs");

fn load_with(manifest: &Path, env: &dyn Fn(&str) -> Option<String>) -> Vec<Entry> {
    let text = fs::read_to_string(manifest).unwrap();
    let items = cpio::parse(manifest, &text, env).unwrap();
    cpio::collect(manifest, &items).unwrap()
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkinitramfs(manifest: &Path, output: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(MKINITRAMFS);
    cmd.arg(manifest)
        .arg(output)
        .env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A host tree with a file, an executable, a symlink, a nested directory
/// and names whose byte order differs from a case-insensitive order.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("b"), "bee").unwrap();
    fs::write(root.join("a"), "ay").unwrap();
    fs::write(root.join("B"), "big").unwrap();
    fs::write(root.join("sub/z"), "zed").unwrap();
    fs::write(root.join("sub/deeper/x"), "").unwrap();
    symlink("../a", root.join("sub/link")).unwrap();
    set_mode(&root.join("a"), 0o750);
    set_mode(&root.join("b"), 0o666);
    set_mode(&root.join("B"), 0o4755);
    set_mode(&root.join("sub"), 0o777);
}

#[test]
fn tree_adds_sorted_contents_depth_first_owned_by_root() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(&dir.path().join("tmpl"));
    let manifest = dir.path().join("manifest");
    fs::write(&manifest, "dir /t 755 0 0\ntree /t/base tmpl\n").unwrap();

    let entries = load_with(&manifest, &|_| None);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "/t",
            "/t/base",
            "/t/base/B",
            "/t/base/a",
            "/t/base/b",
            "/t/base/sub",
            "/t/base/sub/deeper",
            "/t/base/sub/deeper/x",
            "/t/base/sub/link",
            "/t/base/sub/z",
        ]
    );
    let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
    let owner = |mode| Owner {
        mode,
        uid: 0,
        gid: 0,
    };
    assert_eq!(get("/t/base/a").owner, owner(0o750));
    assert_eq!(get("/t/base/a").body, Body::File(b"ay".to_vec()));
    // Group/other write come from the builder's umask, not the template.
    assert_eq!(get("/t/base/b").owner, owner(0o644));
    assert_eq!(get("/t/base/sub").owner, owner(0o755));
    assert_eq!(get("/t/base/B").owner, owner(0o4755));
    assert_eq!(get("/t/base/sub/link").body, Body::Symlink("../a".into()));
    assert_eq!(get("/t/base/sub/deeper").body, Body::Dir);
}

#[test]
fn tree_needs_its_parent_and_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(&dir.path().join("tmpl"));
    let manifest = dir.path().join("manifest");
    fs::write(&manifest, "tree /t/base tmpl\n").unwrap();
    let text = fs::read_to_string(&manifest).unwrap();
    let items = cpio::parse(&manifest, &text, &|_| None).unwrap();
    let err = cpio::collect(&manifest, &items).unwrap_err().to_string();
    assert!(err.ends_with(":1: /t/base: parent directory /t is not listed earlier; add `dir /t 755 0 0` above this line"), "{err}");

    fs::write(&manifest, "tree /t tmpl/a\n").unwrap();
    let text = fs::read_to_string(&manifest).unwrap();
    let items = cpio::parse(&manifest, &text, &|_| None).unwrap();
    let err = cpio::collect(&manifest, &items).unwrap_err().to_string();
    assert!(
        err.contains(":1: tree location ") && err.ends_with("is not a directory"),
        "{err}"
    );
}

/// A manifest using every feature, in a directory of its own.
fn sample_manifest(dir: &Path) -> PathBuf {
    sample_tree(&dir.join("tmpl"));
    fs::write(dir.join("payload"), vec![7u8; 100_001]).unwrap();
    fs::write(dir.join("config.toml"), "[host]\n").unwrap();
    let manifest = dir.join("manifest");
    fs::write(
        &manifest,
        "# sample\n\
         file /init ${PAYLOAD} 755 0 0\n\
         dir /etc 755 0 0\n\
         file /etc/zonit.toml config.toml 644 0 0\n\
         dir /dev 755 0 0\n\
         nod /dev/console 600 0 0 c 5 1\n\
         nod /dev/vda 660 0 6 b 254 0\n\
         pipe /dev/fifo 600 0 0\n\
         sock /dev/sock 600 0 0\n\
         slink /sh /init 777 0 0\n\
         tree /tmpl tmpl\n",
    )
    .unwrap();
    manifest
}

#[test]
fn same_inputs_give_identical_gzip_bytes_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = sample_manifest(dir.path());
    let payload = dir.path().join("payload");
    let env = [("PAYLOAD", payload.to_str().unwrap())];

    let (one, two) = (dir.path().join("one.gz"), dir.path().join("two.gz"));
    for out in [&one, &two] {
        let run = mkinitramfs(&manifest, out, &env);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let (one, two) = (fs::read(one).unwrap(), fs::read(two).unwrap());
    assert_eq!(one, two);

    // gzip header: deflate, no flags (no file name), MTIME 0.
    assert_eq!(&one[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);

    // The payload is the library's archive, byte for byte.
    let mut cpio_bytes = Vec::new();
    flate2::read::GzDecoder::new(one.as_slice())
        .read_to_end(&mut cpio_bytes)
        .unwrap();
    let entries = load_with(&manifest, &|v| {
        (v == "PAYLOAD").then(|| payload.to_str().unwrap().to_string())
    });
    let want = cpio::write_archive(Vec::new(), &entries).unwrap();
    assert_eq!(cpio_bytes, want);
    assert!(cpio_bytes.ends_with(b"TRAILER!!!\0\0\0\0"));
}

#[test]
fn archive_does_not_depend_on_host_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = sample_manifest(dir.path());
    let payload = dir.path().join("payload");
    let env = |v: &str| (v == "PAYLOAD").then(|| payload.to_str().unwrap().to_string());
    let before = cpio::write_archive(Vec::new(), &load_with(&manifest, &env)).unwrap();
    // Touch every input: contents the same, times different.
    for f in ["payload", "config.toml", "tmpl/a", "tmpl/sub/z"] {
        let p = dir.path().join(f);
        let data = fs::read(&p).unwrap();
        fs::write(&p, data).unwrap();
    }
    let after = cpio::write_archive(Vec::new(), &load_with(&manifest, &env)).unwrap();
    assert_eq!(before, after);
}

#[test]
fn source_date_epoch_sets_every_entry_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest");
    fs::write(&manifest, "dir /x 755 0 0\n").unwrap();
    let out = dir.path().join("out.gz");
    let run = mkinitramfs(&manifest, &out, &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert!(run.status.success());
    let mut text = String::new();
    flate2::read::GzDecoder::new(fs::File::open(&out).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    // mtime is the 6th header field.
    assert_eq!(&text[46..54], format!("{:08X}", 1_700_000_000u32));

    let run = mkinitramfs(&manifest, &out, &[("SOURCE_DATE_EPOCH", "soon")]);
    assert_eq!(run.status.code(), Some(1));
}

#[test]
fn binary_reports_manifest_errors_with_line_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest");
    fs::write(
        &manifest,
        "dir /dev 755 0 0\nnod /dev/console 600 0 0 c 5\n",
    )
    .unwrap();
    let out = dir.path().join("out.gz");
    let run = mkinitramfs(&manifest, &out, &[]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr
            .contains("manifest:2: `nod` takes NAME MODE UID GID c|b MAJ MIN (7 fields), found 6"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert!(!dir.path().join("out.gz.tmp").exists());

    fs::write(&manifest, "file /init ${ZONIT_TEST_UNSET_VAR} 755 0 0\n").unwrap();
    let run = mkinitramfs(&manifest, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("manifest:1: ${ZONIT_TEST_UNSET_VAR} is not set"),
        "{stderr}"
    );

    fs::write(&manifest, "file /init missing-file 755 0 0\n").unwrap();
    let run = mkinitramfs(&manifest, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("manifest:1: unable to read ")
            && stderr.contains("missing-file: No such file"),
        "{stderr}"
    );
}

#[test]
fn binary_without_two_arguments_prints_usage() {
    let run = Command::new(MKINITRAMFS).arg("only-one").output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).starts_with("usage: zonit-mkinitramfs"));
}
