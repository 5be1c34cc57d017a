//! Tier 2: what a zone's command runs with — capabilities, no_new_privs,
//! seccomp, rlimits, its own session, masked and read-only /proc and /sys,
//! nodev everywhere, bind mounts, templates. Needs root, busybox-static and
//! gcc (for the syscall probe). The attacks themselves are in `escape.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{Zonit, install_probe, require_root, value, zone};

const END: &str = "END";

/// Docker's default capability set as the kernel's bit mask.
fn docker_caps() -> u64 {
    [0u32, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
        .iter()
        .map(|b| 1u64 << b)
        .sum()
}

/// `Cap*`, `NoNewPrivs` and `Seccomp` of the zone command's process.
fn status_fields(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap()
}

const STATUS_CMD: &str =
    "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; echo END; sleep 1000";

#[test]
fn root_zone_keeps_exactly_its_capabilities_with_empty_inheritable_and_ambient() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("caps", |d| zone(d, "web", STATUS_CMD, ""));
    let f = status_fields(&z.output_until("web", END));
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(hex(&f[set]), docker_caps(), "{set}: {f:?}");
    }
    assert_eq!(hex(&f["CapInh"]), 0, "{f:?}");
    assert_eq!(hex(&f["CapAmb"]), 0, "{f:?}");
    assert_eq!(f["NoNewPrivs"], "1");
    assert_eq!(f["Seccomp"], "2", "seccomp filter mode");
}

#[test]
fn empty_capabilities_drop_every_capability() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("nocaps", |d| {
        zone(d, "web", STATUS_CMD, "capabilities = []")
    });
    let f = status_fields(&z.output_until("web", END));
    for set in ["CapBnd", "CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(hex(&f[set]), 0, "{set}: {f:?}");
    }
}

#[test]
fn non_root_user_runs_without_capabilities_and_with_its_rlimits() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("user", |d| {
        zone(
            d,
            "web",
            "id -u; id -g; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; \
             grep 'Max open files' /proc/self/limits; echo END; sleep 1000",
            "user = \"1000:1001\"\nrlimits = { nofile = 256 }",
        )
    });
    let out = z.output_until("web", END);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1000"));
    assert_eq!(lines.next(), Some("1001"));
    let f = status_fields(&out);
    assert_eq!(hex(&f["CapEff"]), 0, "{f:?}");
    assert_eq!(hex(&f["CapPrm"]), 0, "{f:?}");
    assert_eq!(hex(&f["CapBnd"]), docker_caps(), "{f:?}");
    assert_eq!(f["NoNewPrivs"], "1");
    let limits = out
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = limits.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["256", "256"], "{limits}");
}

#[test]
fn zone_command_leads_its_own_session() {
    if !require_root() {
        return;
    }
    // Field 6 of /proc/PID/stat is the session: the shell (the command
    // itself) must lead a session of its own, not share the init's.
    let z = Zonit::start("session", |d| {
        zone(
            d,
            "web",
            "set -- $(cat /proc/$$/stat); echo pid=$1 sid=$6; echo END; sleep 1000",
            "",
        )
    });
    let out = z.output_until("web", END);
    let (pid, sid) = (value(&out, "pid").unwrap(), value(&out, "sid").unwrap());
    assert_eq!(pid, sid, "{out}");
    assert_ne!(sid, "1", "{out}");
}

#[test]
fn seccomp_refuses_host_management_calls_with_eperm() {
    if !require_root() {
        return;
    }
    install_probe();
    let z = Zonit::start("seccomp", |d| {
        zone(d, "web", "probe syscalls; echo END; sleep 1000", "")
    });
    let out = z.output_until("web", END);
    for call in [
        "keyctl",
        "add_key",
        "finit_module",
        "init_module",
        "delete_module",
        "kexec_load",
        "unshare_user",
        "unshare_net",
        "setns",
        "tiocsti",
        "tiocsti_high",
        "tioclinux",
        "socket_vsock",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "open_by_handle_at",
        "mount",
        "umount",
        "swapon",
        "settimeofday",
        "reboot",
    ] {
        assert_eq!(value(&out, call), Some("EPERM"), "{call}:\n{out}");
    }
    assert_eq!(value(&out, "clone3"), Some("ENOSYS"), "{out}");
    for allowed in ["unshare_files", "socket_unix", "getpid"] {
        assert_eq!(value(&out, allowed), Some("OK"), "{allowed}:\n{out}");
    }
}

#[test]
fn sensitive_proc_and_sys_paths_are_masked_or_read_only() {
    if !require_root() {
        return;
    }
    // Every masked path this host has; the per-CPU thermal_throttle dirs
    // only exist on some hardware.
    let mut masked: Vec<String> = [
        "/proc/acpi",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    masked.extend(
        std::fs::read_dir("/sys/devices/system/cpu")
            .unwrap()
            .flatten()
            .map(|e| e.path().join("thermal_throttle"))
            .filter(|p| p.is_dir())
            .map(|p| p.display().to_string()),
    );
    masked.retain(|p| Path::new(p).exists());
    assert!(
        masked.contains(&"/proc/interrupts".to_string())
            && masked.contains(&"/sys/firmware".to_string()),
        "the host lacks the paths this test relies on: {masked:?}"
    );
    let z = Zonit::start("masks", |d| {
        zone(
            d,
            "web",
            &format!(
                "for p in {}; do if [ -d $p ]; then echo $p=$(ls -A $p | wc -l); \
                 else echo $p=$(wc -c < $p); fi; done; \
                 for p in /proc/sys /proc/sysrq-trigger /proc/bus /proc/irq /proc/fs /sys; do \
                 grep -q \" $p ro,\" /proc/self/mountinfo && echo ro:$p; done; echo END; sleep 1000",
                masked.join(" ")
            ),
            "",
        )
    });
    let out = z.output_until("web", END);
    for p in &masked {
        assert_eq!(value(&out, p), Some("0"), "{p} not masked:\n{out}");
    }
    // /proc/sysrq-trigger exists only with CONFIG_MAGIC_SYSRQ.
    for p in [
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/bus",
        "/proc/irq",
        "/sys",
    ] {
        if Path::new(p).exists() {
            assert!(
                out.contains(&format!("ro:{p}\n")),
                "{p} not read-only:\n{out}"
            );
        }
    }
    // The host still has the real ones.
    assert!(
        !std::fs::read_to_string("/proc/interrupts")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_device_node_made_in_the_zone_cannot_be_opened() {
    if !require_root() {
        return;
    }
    install_probe();
    let z = Zonit::start("mknod", |d| {
        zone(
            d,
            "web",
            "mknod /tmp/mem c 1 1 && echo made-tmp; mknod /dev/mem2 c 1 1 && echo made-dev; \
             probe open /tmp/mem r; probe open /dev/mem2 r; probe open /dev/null w; \
             echo END; sleep 1000",
            "",
        )
    });
    let out = z.output_until("web", END);
    // CAP_MKNOD is kept (Docker's set), so mknod works; opening does not.
    assert!(
        out.contains("made-tmp") && out.contains("made-dev"),
        "{out}"
    );
    let opens: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("open="))
        .collect();
    assert_eq!(opens, ["EACCES", "EACCES", "OK"], "{out}");
}

#[test]
fn dev_holds_only_its_devices_links_and_file_systems_with_device_access_only_on_the_devices() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("dev", |d| {
        zone(
            d,
            "web",
            "for f in /dev/*; do if [ -L $f ]; then echo \"link $f $(readlink $f)\"; \
             else stat -c 'node %n %F %t:%T' $f; fi; done; \
             awk '$5 ~ \"^/dev\" {i = 7; while ($i != \"-\") i++; print \"mount\", $5, $6, $(i + 1)}' /proc/self/mountinfo; \
             echo x > /dev/null && echo wrote-null; echo x 2>/dev/null > /dev/full || echo full-is-full; \
             echo zero=$(head -c 3 /dev/zero | wc -c) urandom=$(head -c 5 /dev/urandom | wc -c); \
             echo END; sleep 1000",
            "",
        )
    });
    let out = z.output_until("web", END);
    let mut lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("node ") || l.starts_with("link "))
        .collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "link /dev/fd /proc/self/fd",
            "link /dev/ptmx pts/ptmx",
            "link /dev/stderr /proc/self/fd/2",
            "link /dev/stdin /proc/self/fd/0",
            "link /dev/stdout /proc/self/fd/1",
            "node /dev/full character special file 1:7",
            "node /dev/null character special file 1:3",
            "node /dev/pts directory 0:0",
            "node /dev/random character special file 1:8",
            "node /dev/shm directory 0:0",
            "node /dev/tty character special file 5:0",
            "node /dev/urandom character special file 1:9",
            "node /dev/zero character special file 1:5",
        ],
        "{out}"
    );
    // Each mount under /dev: its point, its options, its fs type.
    let mounts: std::collections::HashMap<&str, (Vec<&str>, &str)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("mount "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], (f[1].split(',').collect(), f[2]))
        })
        .collect();
    let mut points: Vec<&str> = mounts.keys().copied().collect();
    points.sort_unstable();
    assert_eq!(
        points,
        [
            "/dev",
            "/dev/full",
            "/dev/null",
            "/dev/pts",
            "/dev/random",
            "/dev/shm",
            "/dev/tty",
            "/dev/urandom",
            "/dev/zero"
        ],
        "{out}"
    );
    for (point, (opts, fstype)) in &mounts {
        assert!(
            opts.contains(&"nosuid") && opts.contains(&"noexec") && opts.contains(&"rw"),
            "{point}: {opts:?}"
        );
        // Only the device binds (and devpts, whose nodes are the zone's
        // own terminals) may open devices.
        let devices = !matches!(*point, "/dev" | "/dev/shm");
        assert_eq!(!opts.contains(&"nodev"), devices, "{point}: {opts:?}");
        // The device binds are of the host's /dev, whatever it is.
        let want = match *point {
            "/dev" | "/dev/shm" => "tmpfs",
            "/dev/pts" => "devpts",
            _ => continue,
        };
        assert_eq!(fstype, &want, "{point}");
    }
    assert!(
        out.contains("wrote-null\n") && out.contains("full-is-full\n"),
        "{out}"
    );
    assert_eq!(value(&out, "zero"), Some("3"), "{out}");
    assert_eq!(value(&out, "urandom"), Some("5"), "{out}");
}

#[test]
fn a_host_device_that_is_not_a_character_device_fails_the_start_for_good() {
    if !require_root() {
        return;
    }
    // A regular file where the host's /dev/full should be, bound over it
    // in zonit's own mount namespace only (`unshare --mount` makes it
    // private): the zone must not get a host file to write as a device.
    let file = std::env::temp_dir().join(format!("zonit-t2-{}-notfull", std::process::id()));
    std::fs::write(&file, "").unwrap();
    let bind = format!("mount --bind {} /dev/full && exec \"$@\"", file.display());
    let z = Zonit::start_wrapped(
        "notdev",
        "",
        |d| zone(d, "web", "echo started; sleep 1000", ""),
        &["sh", "-c", &bind, "sh"],
    );
    z.wait_state("web", "failed");
    let u = z.unit("web");
    let reason = u["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("/dev/full is not a character device"),
        "{u}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"", "the zone wrote to it");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn readonly_bind_cannot_be_written_or_remounted_and_rw_bind_can() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("binds", |d| {
        let (ro, rw) = (d.join("ro-src"), d.join("rw-src"));
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::create_dir_all(&rw).unwrap();
        std::fs::write(ro.join("file"), "from-host").unwrap();
        zone(
            d,
            "web",
            "cat /srv/ro/file; echo; touch /srv/ro/new; echo touch=$?; \
             mount -o remount,rw /srv/ro; echo remount=$?; touch /srv/ro/new2; echo touch2=$?; \
             echo zone-data > /srv/rw/out; echo write=$?; echo END; sleep 1000",
            &format!(
                "mounts = [{{ source = \"{}\", target = \"/srv/ro\", readonly = true }}, \
                 {{ source = \"{}\", target = \"/srv/rw\" }}]",
                ro.display(),
                rw.display()
            ),
        )
    });
    let out = z.output_until("web", END);
    assert!(out.starts_with("from-host"), "{out}");
    assert_ne!(value(&out, "touch"), Some("0"), "{out}");
    assert_ne!(value(&out, "remount"), Some("0"), "{out}");
    assert_ne!(value(&out, "touch2"), Some("0"), "{out}");
    assert_eq!(value(&out, "write"), Some("0"), "{out}");
    assert!(!z.dir.join("ro-src/new").exists());
    assert!(!z.dir.join("ro-src/new2").exists());
    assert_eq!(
        std::fs::read_to_string(z.dir.join("rw-src/out")).unwrap(),
        "zone-data\n"
    );
}

#[test]
fn missing_bind_source_fails_the_unit_permanently_with_the_reason() {
    if !require_root() {
        return;
    }
    let z = Zonit::start("nosrc", |d| {
        zone(
            d,
            "web",
            "sleep 1000",
            &format!(
                "restart = \"always\"\nmounts = [{{ source = \"{}\", target = \"/srv\" }}]",
                d.join("no-such-dir").display()
            ),
        )
    });
    z.wait_state("web", "failed");
    let u = z.unit("web");
    let reason = u["reason"].as_str().unwrap();
    assert!(
        reason.contains("no-such-dir") && reason.contains("does not exist"),
        "{u}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        z.unit("web")["restarts"],
        0,
        "a permanent failure is not retried"
    );
}

/// Every file under `dir`, relative, sorted, with its contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if ft.is_dir() {
                stack.push(p);
                out.push((rel, Vec::new()));
            } else if ft.is_file() {
                out.push((rel, std::fs::read(&p).unwrap()));
            } else {
                out.push((
                    rel,
                    std::fs::read_link(&p)
                        .unwrap_or_default()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn overlay_zones_share_the_template_without_changing_it_or_seeing_each_other() {
    if !require_root() {
        return;
    }
    // Installed first: another test installing it mid-snapshot would look
    // like a change to the template.
    install_probe();
    let before = snapshot(common::template());
    let cmd = |me: &str, other: &str| {
        format!(
            "echo {me} > /etc/{me}-was-here; rm /bin/ls; sleep 1; \
             test -e /etc/{other}-was-here && echo sees-{other}; \
             test -e /bin/ls || echo ls-gone; echo END; sleep 1000"
        )
    };
    let z = Zonit::start("overlay", |d| {
        [
            zone(d, "a", &cmd("a", "b"), ""),
            zone(d, "b", &cmd("b", "a"), ""),
        ]
        .concat()
    });
    for (me, other) in [("a", "b"), ("b", "a")] {
        let out = z.output_until(me, END);
        assert!(!out.contains(&format!("sees-{other}")), "{me}: {out}");
        assert!(out.contains("ls-gone"), "{me}: {out}");
        let upper = z
            .dir
            .join(format!("zones/.{me}.overlay/upper/etc/{me}-was-here"));
        assert!(upper.exists(), "{} missing", upper.display());
    }
    assert_eq!(snapshot(common::template()), before, "the template changed");
}

#[test]
fn copy_template_is_copied_once_and_kept_across_restarts() {
    if !require_root() {
        return;
    }
    install_probe();
    let before = snapshot(common::template());
    let z = Zonit::start("copy", |d| {
        zone(
            d,
            "web",
            "cat /etc/mark 2>/dev/null || echo first-run; echo kept > /etc/mark; rm -f /bin/ls; \
             mknod /tmp/mem c 1 1; probe open /tmp/mem r; echo END; sleep 1000",
            "template_mode = \"copy\"",
        )
    });
    let out = z.output_until("web", END);
    assert!(out.contains("first-run"), "{out}");
    // The bound root is nodev like an overlay root.
    assert_eq!(value(&out, "open"), Some("EACCES"), "{out}");
    let root = z.dir.join("zones/web");
    assert!(
        root.join("bin/busybox").is_file(),
        "template copied into the root"
    );
    assert!(z.dir.join("zones/.web.copied").exists(), "marker");
    let bb = std::fs::metadata(root.join("bin/busybox")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let tpl_bb = std::fs::metadata(common::template().join("bin/busybox")).unwrap();
    assert_eq!(bb.permissions().mode(), tpl_bb.permissions().mode());
    assert!(
        std::fs::symlink_metadata(root.join("bin/sh"))
            .unwrap()
            .is_symlink()
    );

    assert_eq!(z.ctl(&["restart", "web"]).0, 0);
    z.wait_for("second run", std::time::Duration::from_secs(10), || {
        z.ctl(&["logs", "web"]).1.contains("kept")
    });
    assert!(!root.join("bin/ls").exists(), "the copy is not redone");
    assert_eq!(snapshot(common::template()), before, "the template changed");
}
