//! Tier-1 tests of `scripts/check-kernel-config.sh` on small made-up
//! `.config` and fragment files, and of `kernel-config/zonit.config`
//! itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-kernel-config.sh")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(script())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const FRAGMENT: &str = "\
# made-up fragment
CONFIG_BUILTIN=y
CONFIG_WANT_Y_HAVE_M=y
CONFIG_MODULE_OK=y # m ok
CONFIG_MODULE_OK_BUILTIN=y   # m ok
CONFIG_ABSENT=y
CONFIG_MOD=m
CONFIG_NR=32
CONFIG_STR=\"console=ttyS0 # not a comment\"
# CONFIG_OFF is not set
# CONFIG_OFF_BUT_ON is not set
";

const DOT_CONFIG: &str = "\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_BUILTIN=y
CONFIG_WANT_Y_HAVE_M=m
CONFIG_MODULE_OK=m
CONFIG_MODULE_OK_BUILTIN=y
# CONFIG_ABSENT is not set
CONFIG_MOD=y
CONFIG_NR=16
CONFIG_STR=\"console=ttyS0 # not a comment\"
CONFIG_OFF_BUT_ON=m
CONFIG_UNRELATED=y
";

fn files(dir: &Path) {
    fs::write(dir.join("frag.config"), FRAGMENT).unwrap();
    fs::write(dir.join(".config"), DOT_CONFIG).unwrap();
}

#[test]
fn reports_each_missing_option_in_fragment_order_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let run = check(dir.path(), &[".config", "frag.config"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "CONFIG_WANT_Y_HAVE_M: wanted y, have m\n\
         CONFIG_ABSENT: wanted y, not set\n\
         CONFIG_NR: wanted 32, have 16\n\
         CONFIG_OFF_BUT_ON: wanted not set, have m\n"
    );
    assert!(
        run.stderr.contains("4 of 10 options missing"),
        "{}",
        run.stderr
    );
}

#[test]
fn module_ok_marker_accepts_a_module_or_builtin() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("f"),
        "CONFIG_KVM=y # m ok\nCONFIG_KVM_AMD=y # m ok\n",
    )
    .unwrap();
    fs::write(dir.path().join("c"), "CONFIG_KVM=m\nCONFIG_KVM_AMD=y\n").unwrap();
    let run = check(dir.path(), &["c", "f"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("all 2 options present"));

    // Without the marker the same module is missing.
    fs::write(dir.path().join("f"), "CONFIG_KVM=y\n").unwrap();
    let run = check(dir.path(), &["c", "f"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "CONFIG_KVM: wanted y, have m\n");
}

#[test]
fn later_fragments_override_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("base"), "CONFIG_A=y\nCONFIG_B=y\n").unwrap();
    fs::write(dir.path().join("relax"), "CONFIG_A=m\n").unwrap();
    fs::write(dir.path().join("c"), "CONFIG_A=m\nCONFIG_B=y\n").unwrap();
    assert_eq!(check(dir.path(), &["c", "base"]).code, Some(1));
    assert_eq!(check(dir.path(), &["c", "base", "relax"]).code, Some(0));
}

#[test]
fn garbage_in_a_fragment_is_an_input_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), "CONFIG_A=y\nKVM=y\n").unwrap();
    fs::write(dir.path().join("c"), "CONFIG_A=y\n").unwrap();
    let run = check(dir.path(), &["c", "f"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("/f:2: not a config line: KVM=y"),
        "{}",
        run.stderr
    );
}

#[test]
fn usage_and_unreadable_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(check(dir.path(), &[]).code, Some(2));
    let run = check(dir.path(), &["no-such-config"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("unable to read"), "{}", run.stderr);
}

/// `kernel-config/zonit.config` parses, and a `.config` holding exactly
/// what it asks for passes the check run with the default fragments.
#[test]
fn zonit_fragment_is_satisfied_by_its_own_options() {
    let fragment = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-config/zonit.config"),
    )
    .unwrap();
    let mut config = String::new();
    let mut module_ok = 0;
    for line in fragment.lines().filter(|l| l.starts_with("CONFIG_")) {
        let (setting, comment) = line.split_once('#').unwrap_or((line, ""));
        let setting = setting.trim_end();
        if comment.trim() == "m ok" {
            // Take the module-OK path: a module must satisfy these.
            module_ok += 1;
            config += &format!("{}=m\n", setting.split('=').next().unwrap());
        } else {
            config += &format!("{setting}\n");
        }
    }
    assert!(module_ok > 0, "the fragment marks the KVM modules `# m ok`");
    for wanted in [
        "CONFIG_KVM=",
        "CONFIG_KVM_AMD=",
        "CONFIG_KVM_INTEL=",
        "CONFIG_OVERLAY_FS=",
        "CONFIG_SECCOMP_FILTER=y",
        "CONFIG_CGROUPS=y",
        "CONFIG_DEVTMPFS=y",
        "CONFIG_SERIAL_8250_CONSOLE=y",
        "CONFIG_BLK_DEV_INITRD=y",
        "CONFIG_RD_GZIP=y",
    ] {
        assert!(fragment.contains(wanted), "fragment lacks {wanted}");
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".config"), &config).unwrap();
    let run = check(dir.path(), &[".config"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);

    // Dropping one built-in option is reported.
    let config = config.replace("CONFIG_SECCOMP_FILTER=y\n", "");
    fs::write(dir.path().join(".config"), &config).unwrap();
    let run = check(dir.path(), &[".config"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "CONFIG_SECCOMP_FILTER: wanted y, not set\n");
}

/// The network part of `fetch-kernel.sh` cannot run in tier 1, but its
/// idempotence can: a directory that already holds a kernel is left alone
/// without asking apt anything.
#[test]
fn fetch_kernel_skips_a_directory_that_already_holds_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel");
    fs::create_dir_all(kernel.join("modules")).unwrap();
    for f in ["vmlinuz", "config"] {
        fs::write(kernel.join(f), "").unwrap();
    }
    fs::write(kernel.join("version"), "6.1.0-test\n").unwrap();
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-kernel.sh"))
        .arg("kernel")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("already holds kernel 6.1.0-test"),
        "{stdout}"
    );
    assert!(!kernel.join("debs").exists());
}
