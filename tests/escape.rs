//! Tier 2: the escape suite. Each test is an attack a hostile root inside a
//! zone would try, and passes only if the attack fails. Needs root,
//! busybox-static and gcc (for the syscall probe). `docs/security.md` maps
//! each protection to its test here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::Duration;

use common::{Zonit, install_probe, require_root, value, zone};

const END: &str = "END";

fn start(name: &str, command: &str, extra: &str) -> (Zonit, String) {
    install_probe();
    let z = Zonit::start(name, |d| {
        zone(
            d,
            "evil",
            &format!("{command}; echo END; sleep 1000"),
            extra,
        )
    });
    let out = z.output_until("evil", END);
    (z, out)
}

/// Every `open=` result, in order.
fn opens(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("open="))
        .collect()
}

#[test]
fn host_processes_are_invisible_and_cannot_be_signalled() {
    if !require_root() {
        return;
    }
    // The agent's host PID is only known once it runs: the test hands it
    // (and its own) to the zone through a read-only bind.
    let me = std::process::id();
    install_probe();
    let z = Zonit::start("procs", |d| {
        let inbox = d.join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        zone(
            d,
            "evil",
            "while [ ! -s /srv/in/pids ]; do sleep 0.05; done; read agent me < /srv/in/pids; \
             probe kill $agent; probe kill $me; probe ptrace $me; \
             echo pids=$(ls -d /proc/[0-9]* | wc -l); test -e /proc/$agent || echo no-agent-dir; \
             echo END; sleep 1000",
            &format!(
                "mounts = [{{ source = \"{}\", target = \"/srv/in\", readonly = true }}]",
                inbox.display()
            ),
        )
    });
    std::fs::write(z.dir.join("inbox/pids"), format!("{} {me}\n", z.pid())).unwrap();
    let out = z.output_until("evil", END);
    let kills: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("kill="))
        .collect();
    assert_eq!(kills, ["ESRCH", "ESRCH"], "{out}");
    assert_eq!(value(&out, "ptrace"), Some("ESRCH"), "{out}");
    let pids: usize = value(&out, "pids").unwrap().parse().unwrap();
    assert!(pids <= 5, "the zone sees {pids} processes:\n{out}");
    assert!(out.contains("no-agent-dir"), "{out}");
}

#[test]
fn control_socket_and_kvm_cannot_be_reached() {
    if !require_root() {
        return;
    }
    // The agent's socket lives in the test dir on the host: its path means
    // nothing inside the zone. /dev/kvm is not in the zone's /dev, and a
    // node made for it cannot be opened (nodev).
    install_probe();
    let z = Zonit::start("ctlsock", |d| {
        let sock = d.join("ctl.sock");
        zone(
            d,
            "evil",
            &format!(
                "probe open {sock} r; test -e /dev/kvm || echo no-kvm; \
                 mknod /dev/kvm c 10 232 && probe open /dev/kvm w; \
                 mknod /tmp/kvm c 10 232 && probe open /tmp/kvm w; \
                 ls /run /var/run 2>/dev/null | grep -c sock; echo END; sleep 1000",
                sock = sock.display()
            ),
            "",
        )
    });
    let out = z.output_until("evil", END);
    assert_eq!(opens(&out), ["ENOENT", "EACCES", "EACCES"], "{out}");
    assert!(out.contains("no-kvm"), "{out}");
    assert!(z.socket.exists(), "the host's socket is still there");
}

#[test]
fn nothing_can_be_mounted_or_unmounted() {
    if !require_root() {
        return;
    }
    let (_z, out) = start(
        "mount",
        "mount -t tmpfs none /tmp; echo tmpfs=$?; mount -t proc proc /tmp; echo proc=$?; \
         umount /proc; echo umount=$?; umount -l /dev; echo lazy=$?; \
         mount --bind /bin /tmp; echo bind=$?; probe syscalls | grep mount",
        "",
    );
    for k in ["tmpfs", "proc", "umount", "lazy", "bind"] {
        assert_ne!(value(&out, k), Some("0"), "{k}:\n{out}");
    }
    assert_eq!(value(&out, "mount"), Some("EPERM"), "{out}");
    assert_eq!(value(&out, "umount"), Some("1"), "{out}");
}

#[test]
fn kernel_modules_kexec_and_keyrings_are_refused() {
    if !require_root() {
        return;
    }
    let (_z, out) = start("module", "probe syscalls", "");
    for call in [
        "finit_module",
        "init_module",
        "delete_module",
        "kexec_load",
        "keyctl",
        "add_key",
        "bpf",
        "unshare_user",
    ] {
        assert_eq!(value(&out, call), Some("EPERM"), "{call}:\n{out}");
    }
}

#[test]
fn reboot_inside_fails_and_the_host_and_zone_stay_up() {
    if !require_root() {
        return;
    }
    let (z, out) = start(
        "reboot",
        "reboot -f; echo reboot=$?; poweroff -f; echo poweroff=$?; probe syscalls | grep reboot",
        "",
    );
    assert_ne!(value(&out, "reboot"), Some("0"), "{out}");
    assert_ne!(value(&out, "poweroff"), Some("0"), "{out}");
    // The probe's line: `reboot=EPERM`.
    assert!(out.lines().any(|l| l == "reboot=EPERM"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        z.state("evil"),
        "running",
        "the zone itself is not rebooted"
    );
}

#[test]
fn kernel_knobs_in_proc_are_read_only() {
    if !require_root() {
        return;
    }
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let (_z, out) = start(
        "knobs",
        "echo zonit-escape > /proc/sys/kernel/hostname; echo hostname=$?; \
         echo 1 > /proc/sys/vm/drop_caches; echo drop=$?; \
         probe open /proc/sys/kernel/core_pattern w; probe open /proc/sys/kernel/panic w; \
         if [ -e /proc/sysrq-trigger ]; then probe open /proc/sysrq-trigger w; \
         else echo open=EROFS; fi",
        "",
    );
    assert_ne!(value(&out, "hostname"), Some("0"), "{out}");
    assert_ne!(value(&out, "drop"), Some("0"), "{out}");
    assert_eq!(opens(&out), ["EROFS", "EROFS", "EROFS"], "{out}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
}

#[test]
fn ptrace_and_proc_access_to_the_zone_init_fail() {
    if !require_root() {
        return;
    }
    // PID 1 of the zone is zonit's init: non-dumpable, so without
    // CAP_SYS_PTRACE the zone can neither trace it nor look at its fds,
    // cwd, root or memory (the runc CVE-2016-9962 class).
    let (_z, out) = start(
        "ptrace",
        "probe ptrace 1; readlink /proc/1/cwd; echo cwd=$?; readlink /proc/1/root; echo root=$?; \
         probe open /proc/1/mem r; probe open /proc/1/environ r; \
         for f in /proc/1/fd/*; do probe open $f r; readlink $f || echo fdlink=denied; done",
        "",
    );
    assert_eq!(value(&out, "ptrace"), Some("EPERM"), "{out}");
    for k in ["cwd", "root"] {
        assert_ne!(value(&out, k), Some("0"), "{k}:\n{out}");
    }
    // Without a user namespace the zone's root owns /proc/1/fd and may
    // list the numbers; what they refer to stays out of reach.
    let opens = opens(&out);
    assert!(opens.len() >= 2 + 3, "{out}");
    assert!(opens.iter().all(|o| *o == "EACCES"), "{out}");
    assert_eq!(
        out.matches("fdlink=denied").count(),
        opens.len() - 2,
        "{out}"
    );
}

#[test]
fn only_the_zones_own_loopback_is_reachable() {
    if !require_root() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_z, out) = start(
        "net",
        &format!(
            "echo links=$(ip -o link | wc -l) $(ip -o link | cut -d: -f2 | tr -d ' '); \
             echo sys=$(ls /sys/class/net | tr '\\n' ,); probe connect 127.0.0.1 {port}; \
             nc -w 1 127.0.0.1 {port} </dev/null; echo nc=$?"
        ),
        "",
    );
    let line = out.lines().find(|l| l.starts_with("links=")).unwrap();
    assert_eq!(line, "links=1 lo", "{out}");
    assert_eq!(value(&out, "sys"), Some("lo,"), "{out}");
    assert_eq!(value(&out, "connect"), Some("ECONNREFUSED"), "{out}");
    assert_ne!(value(&out, "nc"), Some("0"), "{out}");
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host listener got a connection: {other:?}"),
    }
}

#[test]
fn a_planted_symlink_cannot_redirect_a_bind_mount_out_of_the_root() {
    if !require_root() {
        return;
    }
    // Run 1: the zone plants links where a later bind will go.
    install_probe();
    let z = Zonit::start("plant", |d| {
        zone(
            d,
            "evil",
            "rm -rf /srv; ln -s /etc /srv; ln -s ../../../../../../etc /opt; echo planted; sleep 1000",
            "",
        )
    });
    z.output_until("evil", "planted");
    let src = z.dir.join("volume");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("zonit-escape-marker"), "x").unwrap();
    let host_etc_before: Vec<_> = std::fs::read_dir("/etc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();

    // Run 2: the operator adds binds onto the planted paths and reloads,
    // which restarts the zone. The start must fail, naming the link.
    for target in ["/srv", "/srv/sub", "/opt"] {
        let config = std::fs::read_to_string(&z.config).unwrap();
        let config = match config.find("mounts = ") {
            Some(i) => config[..i].to_string(),
            None => config,
        };
        std::fs::write(
            &z.config,
            format!(
                "{config}mounts = [{{ source = \"{}\", target = \"{target}\" }}]\n",
                src.display()
            ),
        )
        .unwrap();
        assert_eq!(z.ctl(&["reload"]).0, 0);
        // The last failed start was a set-up error, failed for good: a
        // reload leaves a failed unit alone, so start it again. `start`
        // answers once this start has failed too, and says so.
        let (code, _, err) = z.ctl(&["start", "evil"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("evil did not become ready"), "{err}");
        z.wait_for(
            &format!("the start with a bind on {target} to fail"),
            Duration::from_secs(10),
            || {
                z.unit("evil")["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(target) && r.contains("symbolic link"))
            },
        );
        assert_ne!(z.state("evil"), "running", "{target}");
    }
    let host_etc_after: Vec<_> = std::fs::read_dir("/etc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(host_etc_before, host_etc_after, "the host's /etc changed");
    assert!(!std::path::Path::new("/etc/zonit-escape-marker").exists());
    assert!(!std::path::Path::new("/etc/sub").exists());
}

#[test]
fn no_fd_or_cwd_leaks_into_the_zone() {
    if !require_root() {
        return;
    }
    // The A2 class (runc CVE-2024-21626): an fd of the host left open, or
    // a working directory outside the root.
    let (_z, out) = start(
        "fds",
        "echo fds=$(ls /proc/self/fd | tr '\\n' ,); \
         echo cwd=$(readlink /proc/self/cwd); echo root=$(readlink /proc/self/root); \
         for f in /proc/$$/fd/*; do readlink $f; done",
        "",
    );
    // 3 is the directory `ls` itself is listing.
    assert_eq!(value(&out, "fds"), Some("0,1,2,3,"), "{out}");
    assert_eq!(value(&out, "cwd"), Some("/"), "{out}");
    assert_eq!(value(&out, "root"), Some("/"), "{out}");
    // The command's own fds: stdin, and stdout/stderr on the log pipe.
    let links: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('/') || l.starts_with("pipe:"))
        .collect();
    assert_eq!(links.len(), 3, "{out}");
    assert_eq!(links[0], "/dev/null", "{out}");
    assert!(links[1..].iter().all(|l| l.starts_with("pipe:")), "{out}");
}

#[test]
fn zonit_binary_cannot_be_overwritten_through_proc_1_exe() {
    if !require_root() {
        return;
    }
    // The zone's PID 1 is a zonit process, so /proc/1/exe is the host's
    // zonit binary: the runc CVE-2019-5736 class.
    let before = std::fs::read(common::ZONIT).unwrap();
    let (_z, out) = start(
        "exe",
        "probe open /proc/1/exe w; probe open /proc/1/exe r; readlink /proc/1/exe; echo link=$?; \
         cat /bin/busybox > /proc/1/exe; echo cat=$?",
        "",
    );
    assert_eq!(opens(&out), ["EACCES", "EACCES"], "{out}");
    assert_ne!(value(&out, "link"), Some("0"), "{out}");
    assert_ne!(value(&out, "cat"), Some("0"), "{out}");
    assert!(
        std::fs::read(common::ZONIT).unwrap() == before,
        "the zonit binary changed"
    );
}

#[test]
fn a_setuid_binary_grants_nothing_to_a_non_root_user() {
    if !require_root() {
        return;
    }
    // /bin/suidprobe is setuid root in the template; no_new_privs and the
    // nosuid root keep it from raising anything.
    let (_z, out) = start(
        "suid",
        "stat -c %a:%u /bin/suidprobe; /bin/suidprobe ids; grep -E '^Cap(Eff|Prm)' /proc/self/status",
        "user = \"1000:1000\"",
    );
    assert!(out.contains("4755:0"), "the probe is setuid root: {out}");
    assert!(out.contains("uid=1000 euid=1000"), "{out}");
    assert_eq!(value(&out, "setuid0"), Some("EPERM"), "{out}");
    assert!(out.contains("after uid=1000 euid=1000"), "{out}");
    for l in out.lines().filter(|l| l.starts_with("Cap")) {
        assert!(l.ends_with("0000000000000000"), "{l}");
    }
}
