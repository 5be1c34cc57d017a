//! Tier-4 tests: the real appliance initramfs, zonit as
//! `/init`, booted in `qemu-system-x86_64` with software emulation, read
//! from the serial console with deadlines.
//!
//! Each test boots its own variant: the base initramfs (release zonit,
//! busybox template, kvm and overlay modules; built once per run by
//! `scripts/build-initramfs.sh --release`) with a second small archive
//! appended that replaces `/etc/zonit.toml` by the test's config (the
//! kernel unpacks concatenated archives in order, later files win).
//!
//! How the tests act on the machine from outside:
//! - the console: boots with `zonit.shell`, a root shell on the console
//!   beside the units, into which the test types (`kill -TERM 1`,
//!   `zonit ctl poweroff`, ...); shell output is told apart from the echo
//!   of the typed line with `$((...))` markers;
//! - the QEMU monitor (a unix socket): `sendkey ctrl-alt-delete`;
//! - QEMU's exit status: `isa-debug-exit` carries `exit_with`'s verdict.
//!
//! Prerequisites: qemu-system-x86_64, the kernel from
//! scripts/fetch-kernel.sh, busybox-static. `scripts/test-qemu.sh`
//! installs them and runs this file. Missing ones fail the test under
//! `CI=true` and skip it otherwise.
//!
//! Console logs of every boot are kept in target/qemu-logs/TEST.log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The image writer (tools/mkinitramfs), built in release by
/// scripts/build-initramfs.sh beside the base image.
fn mkinitramfs() -> PathBuf {
    base_initramfs();
    let debug = Path::new(env!("CARGO_BIN_EXE_zonit"));
    let target = debug.parent().and_then(Path::parent).unwrap();
    target.join("release/zonit-mkinitramfs")
}

/// Longest wait for one console line. TCG on a loaded 2-core machine is
/// slow; a healthy boot reaches its marker in 3-6 s.
const LINE: Duration = Duration::from_secs(60);

/// Tests that boot a nested Linux guest take this lock: two of them at once
/// (KVM inside TCG, on two shared cores) can run past a line's deadline.
static NESTED: Mutex<()> = Mutex::new(());

/// For a test that boots a nested guest: `None` (skip) without the
/// prerequisites, else the nested guests' lock, held while it lives.
fn nested_guest_test() -> Option<std::sync::MutexGuard<'static, ()>> {
    prerequisites().then(|| {
        NESTED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kernel_dir() -> PathBuf {
    std::env::var_os("ZONIT_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/kernel"))
}

/// Fails under CI=true, skips (returns false) otherwise.
fn prerequisites() -> bool {
    let mut missing = Vec::new();
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !qemu.is_ok_and(|s| s.success()) {
        missing.push("qemu-system-x86_64 (apt-get install qemu-system-x86)");
    }
    if !kernel_dir().join("vmlinuz").exists() {
        missing.push("the kernel in build/kernel (scripts/fetch-kernel.sh)");
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install busybox-static)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "tier-4 prerequisites missing: {}; `scripts/test.sh 4` fetches and installs them",
        missing.join(", ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

fn work_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The base initramfs, built once per test binary.
fn base_initramfs() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let out = work_dir().join("base.cpio.gz");
        let run = Command::new(repo().join("scripts/build-initramfs.sh"))
            .arg("--release")
            .arg(&out)
            .env("ZONIT_KERNEL_DIR", kernel_dir())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "build-initramfs.sh failed:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}

/// Base initramfs + an archive holding `config` as /etc/zonit.toml and
/// the `extra` manifest lines.
fn initramfs_with(name: &str, config: &str, extra: &str) -> PathBuf {
    let dir = work_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("zonit.toml"), config).unwrap();
    std::fs::write(
        dir.join("manifest"),
        format!("dir /etc 755 0 0\nfile /etc/zonit.toml zonit.toml 644 0 0\n{extra}"),
    )
    .unwrap();
    let overlay = dir.join("config.cpio.gz");
    let run = Command::new(mkinitramfs())
        .arg(dir.join("manifest"))
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut bytes = std::fs::read(base_initramfs()).unwrap();
    bytes.extend(std::fs::read(&overlay).unwrap());
    let out = dir.join("initramfs.cpio.gz");
    std::fs::write(&out, bytes).unwrap();
    out
}

/// A booted QEMU machine and its console.
struct Machine {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    monitor: PathBuf,
    /// Lines before this index were consumed by `wait_for`.
    cursor: usize,
    started: Instant,
    /// Lines that end a wait at once: nothing good follows them.
    fatal: Vec<&'static str>,
}

impl Machine {
    fn boot(name: &str, config: &str, cmdline: &str) -> Machine {
        Self::boot_with(name, config, "", cmdline)
    }

    /// Boots with `extra` manifest lines in the test's archive.
    fn boot_with(name: &str, config: &str, extra: &str, cmdline: &str) -> Machine {
        Self::boot_qemu(name, config, extra, cmdline, &[])
    }

    /// Boots with `disks` attached as virtio-blk drives, in order
    /// (`/dev/vda`, `/dev/vdb`, ...).
    fn boot_with_disks(
        name: &str,
        config: &str,
        extra: &str,
        cmdline: &str,
        disks: &[&Path],
    ) -> Machine {
        let drives: Vec<String> = disks
            .iter()
            .map(|d| format!("file={},if=virtio,format=raw", d.display()))
            .collect();
        let args: Vec<&str> = drives.iter().flat_map(|d| ["-drive", d.as_str()]).collect();
        Self::boot_qemu(name, config, extra, cmdline, &args)
    }

    /// Boots with `extra` manifest lines and `qemu` arguments added.
    fn boot_qemu(name: &str, config: &str, extra: &str, cmdline: &str, qemu: &[&str]) -> Machine {
        let initrd = initramfs_with(name, config, extra);
        let monitor = work_dir().join(name).join("monitor.sock");
        let _ = std::fs::remove_file(&monitor);
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "1G", "-smp", "1"])
            .args(["-display", "none", "-vga", "none", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-kernel")
            .arg(kernel_dir().join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 no_timer_check {cmdline}"))
            .args(qemu)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unable to start qemu-system-x86_64");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .replace('\r', "");
                        sink.lock().unwrap().push(line);
                    }
                }
            }
        });
        Machine {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            monitor,
            cursor: 0,
            started: Instant::now(),
            fatal: vec!["Kernel panic", "cannot be loaded"],
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn save_log(&self) {
        let dir = repo().join("target/qemu-logs");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}.log", self.name)), self.log());
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        self.save_log();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{}: {why} (after {:.1} s)\n--- last console lines (all in target/qemu-logs/{}.log) ---\n{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.name,
            tail.join("\n")
        );
    }

    /// Waits for a console line after the cursor containing `needle`;
    /// moves the cursor past it and returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + LINE;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(i) = lines[self.cursor..].iter().position(|l| l.contains(needle)) {
                    self.cursor += i + 1;
                    return lines[self.cursor - 1].clone();
                }
                let fatal = self
                    .fatal
                    .iter()
                    .find(|f| lines.iter().any(|l| host_line_has(l, f)));
                if let Some(f) = fatal {
                    let f = *f;
                    drop(lines);
                    self.fail(&format!(
                        "`{f}` on the console while waiting for `{needle}`"
                    ));
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader take the last lines.
                thread::sleep(Duration::from_millis(200));
                let lines = self.lines.lock().unwrap();
                if let Some(i) = lines[self.cursor..].iter().position(|l| l.contains(needle)) {
                    self.cursor += i + 1;
                    return lines[self.cursor - 1].clone();
                }
                drop(lines);
                self.fail(&format!("QEMU exited ({status}) before `{needle}`"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("no `{needle}` within {} s", LINE.as_secs()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `needle` anywhere in the log, whatever the cursor.
    fn wait_anywhere(&mut self, needle: &str) {
        let deadline = Instant::now() + LINE;
        while self.index_of(needle).is_none() {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                self.fail(&format!("no `{needle}`"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `line` into the console shell.
    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Runs `cmd` in the console shell and waits until it has finished;
    /// returns the console lines it printed (mixed with any kernel lines).
    fn run(&mut self, cmd: &str) -> Vec<String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let start = self.lines.lock().unwrap().len();
        // The echo of the typed line shows `$((n+1))`, the output `n+1`.
        self.type_line(&format!("{cmd}; echo DONE-$(({n}+1))"));
        self.wait_for(&format!("DONE-{}", n + 1));
        let lines = self.lines.lock().unwrap();
        lines[start..self.cursor].to_vec()
    }

    fn monitor(&mut self, cmd: &str) {
        let mut sock = UnixStream::connect(&self.monitor).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Read up to the prompt after the command: closing the socket
        // before QEMU has run the command would drop it.
        let read_until = |sock: &mut UnixStream, end: &[u8]| {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(end.len()).any(|w| w == end) {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        };
        read_until(&mut sock, b"(qemu) ");
        sock.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        read_until(&mut sock, b"\r\n(qemu) ");
    }

    /// Waits for QEMU to end by itself.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                thread::sleep(Duration::from_millis(200));
                self.save_log();
                return status;
            }
            if Instant::now() > deadline {
                self.fail("QEMU did not end by itself");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Index of the first line containing `needle`, anywhere in the log.
    fn index_of(&self, needle: &str) -> Option<usize> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .position(|l| l.contains(needle))
    }

    /// Asserts the lines containing `needles` appear in this order.
    fn assert_order(&mut self, needles: &[&str]) {
        let idx: Vec<Option<usize>> = needles.iter().map(|n| self.index_of(n)).collect();
        let ok = idx.iter().all(Option::is_some) && idx.windows(2).all(|w| w[0] < w[1]);
        if !ok {
            self.fail(&format!("expected in order {needles:?}, found at {idx:?}"));
        }
    }

    /// Prints `what` the test measured, and the time since QEMU started.
    fn print_times(&self, what: &str) {
        eprintln!(
            "{}: {what}, verdicts after {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// `zonit ctl poweroff` typed into the console shell, and the orderly
    /// end it leads to.
    fn poweroff(&mut self) {
        self.type_line("zonit ctl poweroff");
        self.assert_orderly_end("reboot: Power down");
    }

    /// The end every orderly shutdown shares: QEMU ends on its own with
    /// status 0 (poweroff, or reboot under -no-reboot), without a panic.
    fn assert_orderly_end(&mut self, kernel_line: &str) {
        self.wait_for(kernel_line);
        let status = self.wait_exit();
        if self.log().lines().any(|l| host_line_has(l, "Kernel panic")) {
            self.fail("kernel panic");
        }
        if status.code() != Some(0) {
            self.fail(&format!("QEMU exit status {status}, wanted 0"));
        }
    }
}

/// Whether `line` contains `needle` and is not a guest's console line
/// (`zonit[UNIT]: ...`): a guest's kernel panic is the host's business
/// only through the guest's end.
fn host_line_has(line: &str, needle: &str) -> bool {
    line.contains(needle) && !line.contains("zonit[")
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.save_log();
    }
}

/// Three zones chained by `after`, each printing a line when it starts
/// and when it is stopped.
const CHAIN: &str = r#"
[host]
hostname = "t4"
modules = ["overlay", "kvm_amd"]
sysctl = { "vm.swappiness" = "7" }
shutdown_timeout = "20s"
ctrl_alt_del = "poweroff"

[defaults]
stop_timeout = "5s"
restart = "on-failure"

[zone.first]
root = "/zones/first"
template = "/templates/base"
command = ["/bin/sh", "-c", "trap 'echo first stopping; exit 0' TERM; echo first up; while true; do sleep 1; done"]

[zone.second]
root = "/zones/second"
template = "/templates/base"
after = ["first"]
command = ["/bin/sh", "-c", "trap 'echo second stopping; exit 0' TERM; echo second up; while true; do sleep 1; done"]

[zone.third]
root = "/zones/third"
template = "/templates/base"
after = ["second"]
command = ["/bin/sh", "-c", "trap 'echo third stopping; exit 0' TERM; echo third up; while true; do sleep 1; done"]
"#;

const MARKER: &str = "autostart unit(s) running after";

/// Boots CHAIN and checks start order and the boot marker; `None` (skip)
/// without the prerequisites.
fn boot_chain(name: &str) -> Option<Machine> {
    if !prerequisites() {
        return None;
    }
    let mut m = Machine::boot(name, CHAIN, "zonit.shell");
    m.wait_for("as PID 1");
    m.wait_for(&format!("all 3 {MARKER}"));
    m.assert_order(&["first: started", "second: started", "third: started"]);
    Some(m)
}

/// What every shutdown of CHAIN shows: zonit names the shutdown (`how`:
/// "Poweroff" or "Reboot"), stops the zones in reverse order, and the
/// kernel ends with `kernel_line`.
fn assert_chain_shut_down(m: &mut Machine, how: &str, kernel_line: &str) {
    m.wait_for(&format!("shutting down ({how})"));
    m.assert_orderly_end(kernel_line);
    m.assert_order(&[
        "third: ended",
        "second: ended",
        "first: ended",
        "every unit is down",
    ]);
}

#[test]
fn boots_zones_in_after_order_and_sigterm_reboots_in_reverse_order() {
    let Some(mut m) = boot_chain("sigterm") else {
        return;
    };
    // kvm_amd with its dependencies came from the modules' own .modinfo.
    let out = m.run(
        "ls /dev/kvm; hostname; cat /sys/fs/cgroup/cgroup.subtree_control; echo swappiness=$(cat /proc/sys/vm/swappiness)",
    );
    let out = out.join("\n");
    assert!(out.contains("/dev/kvm"), "{out}");
    assert!(out.contains("swappiness=7"), "{out}");
    assert!(out.contains("t4"), "{out}");
    assert!(out.contains("memory") && out.contains("pids"), "{out}");
    m.index_of("loaded modules: overlay, irqbypass, kvm, kvm_amd")
        .unwrap_or_else(|| m.fail("modules not loaded in dependency order"));
    m.type_line("kill -TERM 1");
    assert_chain_shut_down(&mut m, "Reboot", "reboot: Restarting system");
    m.assert_order(&["third stopping", "second stopping", "first stopping"]);
}

#[test]
fn sigusr2_powers_off_in_reverse_order() {
    let Some(mut m) = boot_chain("sigusr2") else {
        return;
    };
    m.type_line("kill -USR2 1");
    assert_chain_shut_down(&mut m, "Poweroff", "reboot: Power down");
}

#[test]
fn ctrl_alt_del_runs_the_configured_action() {
    let Some(mut m) = boot_chain("ctrl-alt-del") else {
        return;
    };
    // The kernel's own ctrl-alt-del reboot is off: the key arrives as
    // SIGINT, and the config says poweroff.
    m.monitor("sendkey ctrl-alt-delete");
    assert_chain_shut_down(&mut m, "Poweroff", "reboot: Power down");
}

#[test]
fn zonit_ctl_poweroff_from_the_console() {
    let Some(mut m) = boot_chain("ctl-poweroff") else {
        return;
    };
    let status = m.run("zonit ctl status").join("\n");
    for unit in ["first", "second", "third"] {
        assert!(status.contains(unit), "{status}");
    }
    m.type_line("zonit ctl poweroff");
    assert_chain_shut_down(&mut m, "Poweroff", "reboot: Power down");
}

#[test]
fn exit_with_reports_the_units_status_as_qemus_exit_code() {
    if !prerequisites() {
        return;
    }
    let config = r#"
[host]
exit_with = "selftest"
shutdown_timeout = "20s"
modules = ["overlay"]

[defaults]

[zone.service]
root = "/zones/service"
template = "/templates/base"
command = ["/bin/sh", "-c", "while true; do sleep 1; done"]

[zone.selftest]
root = "/zones/selftest"
template = "/templates/base"
after = ["service"]
restart = "never"
command = ["/bin/sh", "-c", "echo selftest ran; sleep 1; exit 3"]
"#;
    let mut m = Machine::boot("exit-with", config, "");
    m.wait_for("selftest ran");
    m.wait_for("selftest: ended (exit 3)");
    m.wait_for("writing 3 to isa-debug-exit");
    let status = m.wait_exit();
    if status.code() != Some(7) {
        m.fail(&format!(
            "QEMU exit status {status}, wanted 7 = (3 << 1) | 1"
        ));
    }
    m.assert_order(&["service: ended", "every unit is down", "writing 3"]);
}

#[test]
fn exit_with_a_unit_that_cannot_start_reports_failure() {
    if !prerequisites() {
        return;
    }
    let config = r#"
[host]
exit_with = "selftest"

[zone.selftest]
root = "/zones/nowhere"
command = ["/bin/true"]
"#;
    let mut m = Machine::boot("exit-with-failed", config, "");
    m.wait_for("exit_with unit selftest failed to start");
    let status = m.wait_exit();
    if status.code() != Some(3) {
        m.fail(&format!(
            "QEMU exit status {status}, wanted 3 = (1 << 1) | 1"
        ));
    }
}

/// The guest's /init: greets, loads the drivers zonit's monitor needs from
/// the Debian kernel's modules (no modules.dep in the guest, so in
/// dependency order), then does what `zonit.test=` on its command line says
/// (the kernel keeps dotted parameters from init's environment, so it
/// reads /proc/cmdline):
/// - `poweroff` (the default): powers off at once;
/// - `cycle`: one step per boot, the step counted on the first disk
///   (sector 1), so one guest unit walks through every kind of end:
///   boot 1 prints the disk's marker (sector 0) and reboots; boot 2
///   panics through sysrq (pvpanic tells the monitor; the kernel's panic
///   timeout is 0, so without pvpanic it would hang); boot 3 writes a
///   marker to sector 2, loads `button` (the power button, reported and
///   its GED interrupts counted), sets `kernel.ctrl-alt-del` to 0 (its default 1
///   restarts at once) and waits for Ctrl-Alt-Del, which the kernel
///   (i8042 and atkbd are built in) then turns into SIGINT to init, and
///   powers off;
/// - `net`: takes its first network card's address by DHCP, fetches the
///   page of zone `web` (10.88.0.2), then, 3 s later, serves its own
///   page on port 80;
/// - `flaky`: as `net`, but stops its web server 5 s after starting it;
/// - `shell`: a shell on the console;
/// - `hog`: fills 200 MiB of tmpfs, then powers off.
const GUEST_INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "guest: hello from Linux $(uname -r) with $(nproc) CPU(s)"
for m in virtio_ring virtio virtio_mmio virtio_blk pvpanic pvpanic-mmio failover net_failover virtio_net; do
    insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"
done
action=poweroff
for arg in $(cat /proc/cmdline); do
    case $arg in zonit.test=*) action=${arg#zonit.test=} ;; esac
done
# Reads sector $1 of the disk up to its first newline.
sector() { dd if=/dev/vda bs=512 skip=$1 count=1 2>/dev/null | tr -d '\000' | head -n 1; }
# Writes $2 and a newline at sector $1, through to the monitor.
put() { echo "$2" | dd of=/dev/vda bs=512 seek=$1 conv=fsync 2>/dev/null; sync; }
case $action in
cycle)
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    echo "guest: pvpanic bound to [$(ls /sys/bus/platform/drivers/pvpanic-mmio | grep QEMU0001)]"
    echo "guest: vda holds $(cat /sys/block/vda/size) sectors"
    stage=$(sector 1)
    echo "guest: stage [$stage]"
    case $stage in
    "")
        echo "guest: disk says [$(sector 0)]"
        put 1 rebooted
        echo "guest: rebooting"
        reboot -f ;;
    rebooted)
        put 1 panicked
        echo "guest: panicking in 8 s"
        sleep 8
        echo c > /proc/sysrq-trigger ;;
    *)
        put 2 ZONIT-DISK-OUT-written-by-the-guest
        # Take Ctrl-Alt-Del over from the kernel, as an init does
        # (reboot(CAD_OFF)): it then arrives as SIGINT instead of a restart.
        echo 0 > /proc/sys/kernel/ctrl-alt-del
        # The power button the monitor presses at the same time: bound
        # by the button driver, pressed through the GED's interrupt.
        insmod /lib/modules/button.ko
        echo "guest: power button bound to [$(ls /sys/bus/acpi/drivers/button | grep PNP0C0C)]"
        ged() { grep Ged /proc/interrupts | tr -s ' ' | cut -d ' ' -f 3; }
        echo "guest: GED interrupts $(ged)"
        trap 'echo "guest: ctrl-alt-del, powering off (GED interrupts $(ged))"; poweroff -f' INT
        echo "guest: waiting for ctrl-alt-del"
        while true; do sleep 1; done ;;
    esac ;;
net|flaky)
    # The first network card: its address from DHCP (udhcpc hands the
    # lease to /bin/lease), a zone's page fetched, then after a pause
    # (so readiness by this port is seen to wait for it) a web server.
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    ifconfig lo up
    ifconfig eth0 up
    udhcpc -i eth0 -s /bin/lease -q -n -t 20 -T 1 || echo "guest: no DHCP lease"
    echo "guest: zone web says [$(wget -q -O - http://10.88.0.2/)]"
    mkdir -p /www
    echo page-of-guest > /www/index.html
    sleep 3
    echo "guest: starting httpd"
    httpd -p 80 -h /www
    if [ $action = flaky ]; then
        sleep 5
        echo "guest: stopping httpd"
        killall httpd
    fi
    while true; do sleep 1; done ;;
shell)
    echo "guest: shell on the console"
    exec sh ;;
hog)
    # Guest memory the monitor has to back: 200 MiB of tmpfs, touched.
    mkdir -p /hog
    mount -t tmpfs -o size=220M hog /hog
    echo "guest: filling 200 MiB"
    dd if=/dev/zero of=/hog/fill bs=1M count=200 2>/dev/null
    echo "guest: still alive after filling"
    poweroff -f ;;
*)
    poweroff -f ;;
esac
"#;

/// udhcpc's script in the guest: brings the interface up before the
/// discovery, applies a lease.
const GUEST_LEASE: &str = r#"#!/bin/sh
case $1 in
deconfig)
    ifconfig $interface 0.0.0.0 up ;;
bound|renew)
    ifconfig $interface $ip netmask $subnet
    echo "guest: DHCP lease $ip/$subnet router $router on $interface" ;;
esac
"#;

/// Modules the guest's /init loads, from the fetched kernel's tree.
const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/misc/pvpanic/pvpanic.ko",
    "drivers/misc/pvpanic/pvpanic-mmio.ko",
    "drivers/acpi/button.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// The guest initrd: busybox, GUEST_INIT and GUEST_MODULES. Built once.
fn guest_initrd() -> &'static Path {
    static INITRD: OnceLock<PathBuf> = OnceLock::new();
    INITRD.get_or_init(|| {
        let dir = work_dir().join("guest-initrd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("init"), GUEST_INIT).unwrap();
        std::fs::write(dir.join("lease"), GUEST_LEASE).unwrap();
        let mut manifest = String::from(
            "file /init init 755 0 0\ndir /bin 755 0 0\nfile /bin/busybox /bin/busybox 755 0 0\n\
             file /bin/lease lease 755 0 0\n\
             slink /bin/sh busybox 777 0 0\ndir /dev 755 0 0\nnod /dev/console 600 0 0 c 5 1\n\
             dir /proc 555 0 0\ndir /sys 555 0 0\ndir /lib 755 0 0\ndir /lib/modules 755 0 0\n",
        );
        let modules = kernel_dir().join("modules/kernel");
        for m in GUEST_MODULES {
            let path = modules.join(m);
            assert!(path.exists(), "{} missing", path.display());
            let base = Path::new(m).file_name().unwrap().to_str().unwrap();
            manifest.push_str(&format!(
                "file /lib/modules/{base} {} 644 0 0\n",
                path.display()
            ));
        }
        std::fs::write(dir.join("manifest"), manifest).unwrap();
        let out = dir.join("guest.cpio.gz");
        let run = Command::new(mkinitramfs())
            .arg(dir.join("manifest"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}

/// Manifest lines that put the guest kernel and initrd in `/guests`.
fn guest_files() -> String {
    format!(
        "dir /guests 755 0 0\nfile /guests/vmlinuz {} 644 0 0\nfile /guests/guest.cpio.gz {} 644 0 0\n",
        kernel_dir().join("vmlinuz").display(),
        guest_initrd().display()
    )
}

/// Boots the appliance, with its console shell, and one nested guest
/// `unit` doing GUEST_INIT's `action`, with `keys` added to its section.
/// The caller holds the nested guests' lock.
fn boot_one_guest(machine: &str, unit: &str, action: &str, keys: &str) -> Machine {
    let config = format!(
        r#"
[host]
modules = ["overlay", "kvm_amd"]
shutdown_timeout = "20s"

[guest.{unit}]
kernel = "/guests/vmlinuz"
initrd = "/guests/guest.cpio.gz"
cmdline = "console=ttyS0 quiet panic=-1 zonit.test={action}"
memory = "256M"
{keys}"#
    );
    Machine::boot_with(machine, &config, &guest_files(), "zonit.shell")
}

/// A nested Linux KVM guest inside the appliance: the Debian kernel
/// as a guest of zonit's own monitor, on KVM (kvm_amd) inside the
/// emulated machine, beside a zone.
#[test]
fn a_nested_linux_guest_boots_in_zonits_monitor_and_powers_off() {
    let Some(_serial) = nested_guest_test() else {
        return;
    };
    let config = r#"
[host]
modules = ["overlay", "kvm_amd"]
exit_with = "vm"
shutdown_timeout = "20s"

[zone.web]
root = "/zones/web"
template = "/templates/base"
command = ["/bin/sh", "-c", "echo web up; while true; do sleep 1; done"]

[guest.vm]
kernel = "/guests/vmlinuz"
initrd = "/guests/guest.cpio.gz"
cmdline = "console=ttyS0 quiet panic=-1"
memory = "256M"
restart = "never"
after = ["web"]
"#;
    let extra = guest_files();
    let mut m = Machine::boot_with("nested-guest", config, &extra, "");
    m.wait_for("web: started");
    m.wait_for("vm: monitor started");
    m.wait_for("zonit[vm]: guest: hello from Linux");
    m.wait_for("vm: ended (poweroff)");
    m.wait_for("writing 0 to isa-debug-exit");
    let status = m.wait_exit();
    if status.code() != Some(1) {
        m.fail(&format!(
            "QEMU exit status {status}, wanted 1 = (0 << 1) | 1"
        ));
    }
    m.assert_order(&["vm: ended (poweroff)", "web: ended", "every unit is down"]);
}

impl Machine {
    /// `unit`'s row of `zonit ctl status --json`, typed into the shell.
    fn status_of(&mut self, unit: &str) -> serde_json::Value {
        // A console line can be cut by kernel or guest lines printed at
        // the same moment: ask again.
        for _ in 0..3 {
            let out = self.run("zonit ctl status --json");
            let rows = out.iter().find_map(|l| {
                let json = &l[l.find("[{")?..];
                serde_json::from_str::<serde_json::Value>(json).ok()
            });
            let row = rows.as_ref().and_then(|r| r.as_array()).and_then(|rows| {
                rows.iter()
                    .find(|r| r["name"].as_str() == Some(unit))
                    .cloned()
            });
            if let Some(row) = row {
                return row;
            }
        }
        self.fail(&format!("no status row for {unit}"))
    }

    /// Checks `unit`'s state and last_exit and returns its restarts.
    fn assert_status(&mut self, unit: &str, state: &str, last_exit: &str) -> u64 {
        let row = self.status_of(unit);
        if row["state"].as_str() != Some(state) || row["last_exit"].as_str() != Some(last_exit) {
            self.fail(&format!(
                "{unit}: wanted state {state}, last_exit {last_exit}; status says {row}"
            ));
        }
        row["restarts"].as_u64().unwrap_or(u64::MAX)
    }
}

/// A config with a zone `web` serving a page on `[network.lan]` (with
/// `dhcp = true`) and a nested guest `g` after it on the same network
/// with address 10.88.0.9, doing GUEST_INIT's `action`, ready once its
/// port 80 answers, with `guest_keys` added to its section; `more` is
/// appended.
fn guest_on_lan(action: &str, guest_keys: &str, more: &str) -> String {
    let modules = NET_MODULES.replace("\"overlay\",", "\"overlay\", \"kvm_amd\", \"tun\",");
    format!(
        r#"
[host]
{modules}
shutdown_timeout = "20s"

[network.lan]
address = "10.88.0.1/24"
dhcp = true

[zone.web]
root = "/zones/web"
template = "/templates/base"
command = ["/bin/sh", "-c", "mkdir -p /srv && echo page-of-zone-web > /srv/index.html && exec httpd -f -p 80 -h /srv"]
network = "lan"
address = "10.88.0.2"
ready = {{ tcp = 80, interval = "200ms" }}

[guest.g]
kernel = "/guests/vmlinuz"
initrd = "/guests/guest.cpio.gz"
cmdline = "console=ttyS0 quiet panic=-1 zonit.test={action}"
memory = "256M"
nics = [{{ network = "lan", address = "10.88.0.9" }}]
after = ["web"]
ready = {{ tcp = 80, interval = "500ms", timeout = "240s" }}
{guest_keys}
{more}"#
    )
}

/// A nested guest on a network with `dhcp = true`: it takes the address
/// its nic is given in the config from zonit's DHCP server, reaches a
/// zone's web server, and is `ready` only once its own web server
/// answers a connect from the host (`ready = { tcp = 80 }`, and the same
/// connect keeps it `healthy`); the zone `after` it then starts and
/// fetches the guest's page by the guest's name.
#[test]
fn a_nested_guest_takes_its_address_from_zonits_dhcp_and_talks_with_zones_both_ways_once_ready() {
    let Some(_serial) = nested_guest_test() else {
        return;
    };
    let config = guest_on_lan(
        "net",
        "health = { tcp = 80, interval = \"1s\", timeout = \"5s\" }",
        r#"
[zone.client]
root = "/zones/client"
template = "/templates/base"
command = ["/bin/sh", "-c", "echo client got [$(wget -q -O - http://g/)]; exec sleep 1000"]
network = "lan"
after = ["g"]
"#,
    );
    let extra = guest_files();
    let mut m = Machine::boot_with("nested-guest-net", &config, &extra, "zonit.shell");
    m.wait_for("web: ready");
    m.wait_for("g: monitor started");
    let booted = Instant::now();
    m.wait_for("zonit[g]: guest: hello from Linux");
    let lease = m.wait_for("zonit[g]: guest: DHCP lease");
    if !lease.contains("10.88.0.9/255.255.255.0 router 10.88.0.1 on eth0") {
        m.fail(&format!("not the configured lease: {lease}"));
    }
    m.wait_for("zonit[g]: guest: zone web says [page-of-zone-web]");
    m.wait_for("zonit[g]: guest: starting httpd");
    m.wait_for("g: ready");
    let ready = booted.elapsed();
    m.wait_for("client got [page-of-guest]");
    m.assert_order(&[
        "zonit[g]: guest: starting httpd",
        "g: ready",
        "client: started",
        "client got [page-of-guest]",
    ]);
    // Health probes by the same connect begin an interval (1 s) after
    // ready; under TCG that can be several seconds of the test's time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut row = m.status_of("g");
    while row["health"] != "healthy" && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(300));
        row = m.status_of("g");
    }
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["health"], "healthy", "{row}");
    m.print_times(&format!(
        "guest ready {:.1} s after its monitor started",
        ready.as_secs_f64()
    ));
    m.poweroff();
}

/// A nested guest health-checked by a tcp connect to its address: once
/// its web server stops answering, `retries` failed probes in a row end
/// it as `unhealthy` and `on-failure` starts it again.
#[test]
fn a_nested_guest_whose_port_stops_answering_is_restarted_as_unhealthy() {
    let Some(_serial) = nested_guest_test() else {
        return;
    };
    let config = guest_on_lan(
        "flaky",
        "health = { tcp = 80, interval = \"1s\", timeout = \"2s\", retries = 2 }\nrestart = \"on-failure\"",
        "",
    );
    let mut m = Machine::boot_with(
        "nested-guest-unhealthy",
        &config,
        &guest_files(),
        "zonit.shell",
    );
    m.wait_for("g: ready");
    m.wait_for("zonit[g]: guest: stopping httpd");
    let stopped = Instant::now();
    m.wait_for("g: ended");
    let ended = stopped.elapsed();
    m.wait_for("g: monitor started");
    m.wait_for("zonit[g]: guest: hello from Linux");
    let row = m.status_of("g");
    assert_eq!(row["last_exit"], "unhealthy", "{row}");
    assert!(row["restarts"].as_u64() >= Some(1), "{row}");
    m.print_times(&format!(
        "ended {:.1} s after its server stopped",
        ended.as_secs_f64()
    ));
    m.poweroff();
}

/// `zonit ctl console` typed into from the appliance's own serial
/// console: the client puts that terminal in raw mode, what is typed
/// reaches the nested guest's shell through the agent, the monitor and
/// the guest's UART, the guest's answer comes back on the client, and
/// Ctrl-] detaches with status 0 and the appliance's shell back; the
/// same from a pipe instead of a terminal.
#[test]
fn a_command_typed_through_ctl_console_is_answered_by_the_nested_guests_shell() {
    let Some(_serial) = nested_guest_test() else {
        return;
    };
    let mut m = boot_one_guest("nested-guest-console", "g", "shell", "");
    m.wait_for("zonit[g]: guest: shell on the console");
    // The agent's own log of the guest's output (`zonit[g]: ...`) goes
    // to the console too: keep it off while attached, so what shows is
    // the client's alone.
    m.run("dmesg -n 1");
    m.type_line("zonit ctl console g");
    m.wait_for("Connected to the console of g; Ctrl-] detaches");
    // The guest's echo of the line shows `$((6*7))`; only its shell's
    // answer says 42.
    let typed = Instant::now();
    m.type_line("echo hello-$((6*7))");
    m.wait_for("hello-42");
    let answered = typed.elapsed();
    let stdin = m.stdin.as_mut().unwrap();
    stdin.write_all(b"\x1d").unwrap();
    stdin.flush().unwrap();
    m.wait_for("Detached from the console of g");
    // The appliance's shell reads lines again (its terminal is cooked).
    let out = m.run("echo detached-$((40+2))").join("\n");
    assert!(out.contains("detached-42"), "{out}");
    // Input from a pipe: no terminal to set raw, what is read is sent,
    // and a Ctrl-] byte in it detaches (once the answer is in).
    m.type_line(
        "(printf 'echo piped-$((5*5))\\n'; sleep 10; printf '\\035') | zonit ctl console g; echo pipe-exit-$?",
    );
    m.wait_for("piped-25");
    m.wait_for("Detached from the console of g");
    m.wait_for("pipe-exit-0");
    m.run("dmesg -n 7");
    if m.index_of("zonit[g]: hello-42").is_some() {
        m.fail("the agent's log reached the console while it was to be off");
    }
    m.print_times(&format!(
        "answered {:.1} s after typing",
        answered.as_secs_f64()
    ));
    m.poweroff();
}

/// Every kind of guest end, with the Debian kernel in
/// zonit's monitor, in one host boot. `off` powers off and, being a clean
/// end, is not restarted under `on-failure`. `vm` (GUEST_INIT's `cycle`,
/// started from the shell once `off` is done, so the two never share
/// the emulated CPU) reads the test's marker from its virtio-blk disk and
/// reboots, is restarted (`on_reboot`), panics (pvpanic: crash), is
/// restarted (`on-failure`), and is stopped by `zonit ctl stop`, which
/// the guest sees as Ctrl-Alt-Del; the host then reads what the guest
/// wrote to the disk image.
#[test]
fn a_nested_guest_powers_off_reboots_panics_uses_its_disk_and_stops() {
    let Some(_serial) = nested_guest_test() else {
        return;
    };
    let config = r#"
[host]
modules = ["overlay", "kvm_amd"]
shutdown_timeout = "20s"

[defaults]
restart = "on-failure"
backoff = { initial = "200ms", max = "1s", reset_after = "60s" }

[guest.off]
kernel = "/guests/vmlinuz"
initrd = "/guests/guest.cpio.gz"
cmdline = "console=ttyS0 quiet zonit.test=poweroff"
memory = "256M"

# No panic= on the command line: the Debian kernel's panic timeout is 0,
# so only pvpanic can end a panicked guest.
[guest.vm]
kernel = "/guests/vmlinuz"
initrd = "/guests/guest.cpio.gz"
cmdline = "console=ttyS0 quiet zonit.test=cycle"
memory = "256M"
autostart = false
on_reboot = "restart"
stop_timeout = "60s"
disks = [{ path = "/guests/disk.img" }]
"#;
    let disk = work_dir().join("cycle-disk.img");
    let mut image = vec![0u8; 64 * 1024];
    let marker = b"ZONIT-DISK-IN-from-the-test\n";
    image[..marker.len()].copy_from_slice(marker);
    std::fs::write(&disk, image).unwrap();
    let extra = format!(
        "dir /guests 755 0 0\nfile /guests/vmlinuz {} 644 0 0\nfile /guests/guest.cpio.gz {} 644 0 0\nfile /guests/disk.img {} 600 0 0\n",
        kernel_dir().join("vmlinuz").display(),
        guest_initrd().display(),
        disk.display()
    );
    let mut m = Machine::boot_with("nested-guest-cycle", config, &extra, "zonit.shell");

    // 1. A guest poweroff is a clean end: no restart under on-failure.
    m.wait_for("zonit[off]: guest: hello from Linux");
    m.wait_for("off: ended (poweroff)");
    let restarts = m.assert_status("off", "exited", "poweroff");
    assert_eq!(restarts, 0, "off was restarted");

    // 4a. The disk, found through ACPI (LNRO0005), holds the test's marker;
    // pvpanic-mmio bound the DSDT's QEMU0001 device.
    m.type_line("zonit ctl start vm");
    m.wait_for("vm: monitor started");
    m.wait_for("zonit[vm]: guest: hello from Linux");
    m.wait_for("zonit[vm]: guest: pvpanic bound to [QEMU0001:00]");
    m.wait_for("zonit[vm]: guest: vda holds 128 sectors");
    m.wait_for("zonit[vm]: guest: stage []");
    m.wait_for("zonit[vm]: guest: disk says [ZONIT-DISK-IN-from-the-test]");

    // 2. A reboot restarts it (on_reboot = "restart").
    m.wait_for("zonit[vm]: guest: rebooting");
    m.wait_for("vm: ended (reboot)");
    // Linux with hardware-reduced ACPI and no EFI reboots through the
    // BIOS reset vector, whose stub writes the reset register.
    m.index_of("guest reset (ACPI reset register)")
        .unwrap_or_else(|| m.fail("the reboot was not the ACPI reset register"));
    m.wait_for("zonit[vm]: guest: hello from Linux");
    m.wait_for("zonit[vm]: guest: stage [rebooted]");
    m.wait_for("zonit[vm]: guest: panicking in 8 s");
    // The guest waits 8 s before it panics, so the shell's status query
    // (slow under TCG) still sees the end of the reboot as the last one.
    let restarts = m.assert_status("vm", "running", "reboot");
    assert!(restarts >= 1, "vm restarts {restarts} after a reboot");

    // 3. A kernel panic ends it as a crash (pvpanic) and on-failure
    // restarts it.
    m.wait_for("sysrq triggered crash");
    m.wait_for("vm: ended (crash)");
    m.index_of("guest kernel panicked (pvpanic)")
        .unwrap_or_else(|| m.fail("the crash was not reported through pvpanic"));
    m.wait_for("zonit[vm]: guest: hello from Linux");
    m.wait_for("zonit[vm]: guest: stage [panicked]");
    m.wait_for("zonit[vm]: guest: power button bound to [PNP0C0C:00]");
    m.wait_for("zonit[vm]: guest: GED interrupts 0");
    m.wait_for("zonit[vm]: guest: waiting for ctrl-alt-del");
    let restarts = m.assert_status("vm", "running", "crash");
    assert_eq!(restarts, 2, "vm restarts after a reboot and a crash");

    // 5. `zonit ctl stop` asks the guest: Ctrl-Alt-Del through the i8042
    // reaches its init as SIGINT, and it powers off long before
    // stop_timeout (60 s).
    let asked = Instant::now();
    m.type_line("zonit ctl stop vm");
    // The GED interrupt (the power button) arrived too.
    m.wait_for("zonit[vm]: guest: ctrl-alt-del, powering off (GED interrupts 1)");
    m.wait_for("vm: ended (poweroff)");
    let took = asked.elapsed();
    if took > Duration::from_secs(20) {
        m.fail(&format!("graceful stop took {took:?}"));
    }
    let restarts = m.assert_status("vm", "stopped", "poweroff");
    assert_eq!(restarts, 2, "vm restarted after its stop");

    // 4b. What the guest wrote reached the image on the host.
    let out = m
        .run("busybox dd if=/guests/disk.img bs=512 skip=2 count=1 2>/dev/null | busybox head -n 1")
        .join("\n");
    assert!(
        out.contains("ZONIT-DISK-OUT-written-by-the-guest"),
        "sector 2 of the image: {out}"
    );
    let restarts = m.assert_status("off", "exited", "poweroff");
    assert_eq!(restarts, 0, "off was restarted");
    m.print_times(&format!("stop took {:.1} s", took.as_secs_f64()));
    m.poweroff();
}

#[test]
fn a_zone_over_memory_max_is_oom_killed_and_restarted() {
    if !prerequisites() {
        return;
    }
    let config = r#"
[host]
modules = ["overlay"]

[zone.hog]
root = "/zones/hog"
template = "/templates/base"
memory_max = "16M"
restart = "on-failure"
backoff = { initial = "500ms", max = "2s", reset_after = "60s" }
command = ["/bin/sh", "-c", "echo hog start; exec dd if=/dev/zero of=/dev/null bs=64M count=1"]
"#;
    let mut m = Machine::boot("oom", config, "zonit.shell");
    m.wait_for("hog start");
    m.wait_for("hog: ended (signal SIGKILL)");
    m.wait_for("hog: started");
    m.wait_for("hog: ended (signal SIGKILL)");
    let memevents = m
        .run("cat /sys/fs/cgroup/zonit/hog/memory.events")
        .join("\n");
    let oom_kills: u64 = memevents
        .lines()
        .find_map(|l| l.trim().strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(oom_kills >= 2, "memory.events: {memevents}");
    m.index_of("Memory cgroup out of memory")
        .unwrap_or_else(|| m.fail("no OOM report from the kernel"));
    m.poweroff();
}

#[test]
fn a_fork_bomb_under_pids_max_is_contained() {
    if !prerequisites() {
        return;
    }
    let config = r#"
[host]
modules = ["overlay"]
shutdown_timeout = "20s"

[defaults]
stop_timeout = "2s"

[zone.steady]
root = "/zones/steady"
template = "/templates/base"
command = ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo steady $i; sleep 1; done"]

# Every process forks a copy of itself, forever: held at 32 processes
# and a quarter of a CPU. A shell whose fork fails exits, and the zone
# starts over.
[zone.bomb]
root = "/zones/bomb"
template = "/templates/base"
after = ["steady"]
pids_max = 32
cpu_max = 0.25
restart = "always"
backoff = { initial = "100ms", max = "500ms", reset_after = "60s" }
command = ["/bin/sh", "-c", "echo bomb away; b() { b & b; }; b"]
"#;
    let mut m = Machine::boot("forkbomb", config, "zonit.shell");
    m.wait_for("bomb away");
    // The bomb hits its limit...
    m.wait_for("can't fork");
    // ...while the other zone goes on and PID 1 answers.
    let before = m.wait_for("steady ");
    let n: u32 = before.rsplit(' ').next().unwrap().parse().unwrap();
    m.wait_for(&format!("steady {}", n + 3));
    let status = m.run("zonit ctl status").join("\n");
    assert!(
        status
            .lines()
            .any(|l| l.contains("steady") && l.contains("running")),
        "{status}"
    );
    // The limit was hit (pids.events of the unit's group, whose pids.max
    // refused the forks, counts them), and the kernel said where.
    let events = m
        .run("cat /sys/fs/cgroup/zonit/bomb/pids.events")
        .join("\n");
    let refused: u64 = events
        .lines()
        .find_map(|l| l.trim().strip_prefix("max "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "pids.events: {events}");
    m.index_of("fork rejected by pids controller in /zonit/bomb")
        .unwrap_or_else(|| m.fail("no pids controller report"));
    m.poweroff();
    m.assert_order(&["steady: ended", "every unit is down"]);
}

/// `[host] watchdog` on the kernel's softdog: `db` is required; it runs
/// for 15 s (the watchdog, 4 s, is petted all along), then ends for good.
const WATCHDOG: &str = r#"
[host]
modules = ["overlay", "softdog"]
watchdog = { timeout = "4s", require = ["db"], grace = "2s" }

[zone.db]
root = "/zones/db"
template = "/templates/base"
command = ["/bin/sh", "-c", "echo db up; sleep 15; echo db giving up; exit 1"]
restart = "never"
"#;

#[test]
fn the_watchdog_resets_the_machine_once_a_required_unit_has_failed_for_good() {
    if !prerequisites() {
        return;
    }
    let mut m = Machine::boot("watchdog", WATCHDOG, "");
    m.wait_for("watchdog: /dev/watchdog armed, timeout 4 s, required: db");
    m.wait_for("zonit[db]: db up");
    let up = Instant::now();
    m.wait_for("zonit[db]: db giving up");
    let ran = up.elapsed();
    if ran < Duration::from_secs(12) {
        m.fail(&format!("db ran only {ran:?}: the machine reset early?"));
    }
    let ended = Instant::now();
    let line = m.wait_for("no longer petting");
    if !(line.contains("required unit db") && line.contains("exited")) {
        m.fail(&format!("the reason names no unit: {line}"));
    }
    // softdog fires `timeout` after the last pet: QEMU (-no-reboot) ends.
    m.wait_for("softdog: Initiating system reboot");
    let status = m.wait_exit();
    let took = ended.elapsed();
    if took > Duration::from_secs(2 + 4 + 4) {
        m.fail(&format!(
            "reset {took:?} after db ended (grace 2 s + timeout 4 s)"
        ));
    }
    if m.index_of("rebooting").is_some() {
        m.fail("zonit rebooted the machine itself; the watchdog was to do it");
    }
    if status.code() != Some(0) {
        m.fail(&format!("QEMU exit status {status}, wanted 0 (a reset)"));
    }
}

#[test]
fn the_appliance_nic_takes_a_dhcp_lease_from_qemus_user_network_and_releases_it() {
    if !prerequisites() {
        return;
    }
    let config = "[host]\nmodules = [\"virtio_pci\", \"virtio_net\"]\n\n[interface.eth0]\naddress = \"dhcp\"\n";
    let mut m = Machine::boot_qemu(
        "dhcp-client",
        config,
        "",
        "zonit.shell",
        &[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    );
    // QEMU's user network serves 10.0.2.15 from 10.0.2.2.
    m.wait_for("interface eth0: DHCP lease 10.0.2.15/24 from 10.0.2.2, router 10.0.2.2");
    let routes = m.run("cat /proc/net/route").join("\n");
    // The default route via 10.0.2.2 (0202000A in the kernel's byte order).
    assert!(routes.contains("eth0\t00000000\t0202000A"), "{routes}");
    m.type_line("zonit ctl poweroff");
    m.wait_for("interface eth0: DHCP lease 10.0.2.15 dropped");
    m.assert_orderly_end("reboot: Power down");
}

/// `[host] modules` for a zone network and its port forwards, on the
/// appliance's virtio-net NIC (the kernel has no modprobe to call).
const NET_MODULES: &str = r#"modules = ["overlay", "virtio_pci", "virtio_net", "bridge", "veth", "nft_chain_nat", "nft_nat", "nft_masq", "nft_ct", "nft_fib_inet"]"#;

/// A TCP port on the test machine's loopback that nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// `GET /` on 127.0.0.1:`port` of the test machine, tried until an
/// answer holds `want` or the deadline passes; returns the last answer
/// (or error).
fn http_get_until(port: u16, want: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: appliance\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match attempt {
            Ok(answer) if answer.contains(want) => return Ok(answer),
            Ok(answer) => last = format!("answer without `{want}`: {answer:?}"),
            Err(e) => last = e.to_string(),
        }
        // QEMU's user network accepts on the test machine's side before
        // the appliance answers; a refused attempt closes at once.
        thread::sleep(Duration::from_millis(500));
    }
    Err(last)
}

/// The path the demo shows: the test machine's port (QEMU's `hostfwd`)
/// reaches the appliance's eth0, which took its address by DHCP, and
/// zonit's port forward takes it on to a zone's web server on a bridge.
#[test]
fn a_hostfwd_port_on_the_test_machine_reaches_a_zones_web_server_through_zonits_port_forward() {
    if !prerequisites() {
        return;
    }
    let config = format!(
        r#"
[host]
{NET_MODULES}

[interface.eth0]
address = "dhcp"

[network.lan]
address = "10.88.0.1/24"

[zone.web]
root = "/zones/web"
template = "/templates/base"
command = ["/bin/sh", "-c", "mkdir -p /srv && echo page-of-zone-$(hostname) > /srv/index.html && exec httpd -f -p 80 -h /srv"]
network = "lan"
address = "10.88.0.2"
ports = ["8080:80"]
ready = {{ tcp = 80, interval = "200ms" }}
"#
    );
    let port = free_port();
    let nic = format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:8080");
    let mut m = Machine::boot_qemu("hostfwd", &config, "", "zonit.shell", &["-nic", &nic]);
    m.wait_for("interface eth0: DHCP lease 10.0.2.15/24");
    m.wait_anywhere("web: ready");
    let fetched = Instant::now();
    match http_get_until(port, "page-of-zone-web", LINE) {
        Ok(page) => eprintln!(
            "hostfwd: 127.0.0.1:{port} answered in {:.1} s: {}",
            fetched.elapsed().as_secs_f64(),
            page.lines().last().unwrap_or_default()
        ),
        Err(e) => m.fail(&format!("GET http://127.0.0.1:{port}/: {e}")),
    }
    m.poweroff();
}

#[test]
fn a_bad_config_is_reported_and_pid1_stays_up_for_a_reload() {
    if !prerequisites() {
        return;
    }
    // Two mistakes: an unknown key and an `after` naming no unit.
    let config = "[host]\nlog_level = \"info\"\ncolour = \"blue\"\n\n[zone.a]\nroot = \"/zones/a\"\ncommand = [\"/bin/true\"]\nafter = [\"nope\"]\n";
    let mut m = Machine::boot("bad-config", config, "zonit.rescue");
    m.fatal.retain(|f| *f != "cannot be loaded");
    m.wait_for("cannot be loaded (2 error(s))");
    m.wait_for("/etc/zonit.toml:3:1:");
    m.wait_for("/etc/zonit.toml:8:");
    m.wait_for("rescue shell /bin/sh started");
    // PID 1 is up and serving the control socket with no units.
    let status = m.run("zonit ctl status; echo rc=$?").join("\n");
    assert!(status.contains("rc=0"), "{status}");
    // Fix the file from the rescue shell and reload.
    m.run(concat!(
        "printf '[host]\\nmodules = [\"overlay\"]\\n[zone.fixed]\\nroot = \"/zones/fixed\"\\n",
        "template = \"/templates/base\"\\ncommand = [\"/bin/sh\", \"-c\", \"echo fixed up; sleep 1000\"]\\n'",
        " > /etc/zonit.toml"
    ));
    m.type_line("zonit ctl reload");
    m.wait_for("config loaded: 1 unit(s)");
    m.wait_for(&format!("all 1 {MARKER}"));
    m.wait_anywhere("fixed up");
    m.poweroff();
}

/// Ten zones from the busybox template, each a shell loop.
fn ten_zones() -> String {
    let mut c = String::from("[host]\nmodules = [\"overlay\"]\nshutdown_timeout = \"20s\"\n");
    for i in 0..10 {
        c.push_str(&format!(
            "\n[zone.z{i}]\nroot = \"/zones/z{i}\"\ntemplate = \"/templates/base\"\ncommand = [\"/bin/sh\", \"-c\", \"while true; do sleep 5; done\"]\n"
        ));
    }
    c
}

/// The number after `word` in `line` (`... word 12.5 ...`).
fn number_after(line: &str, word: &str) -> f64 {
    let rest = &line[line.find(word).unwrap() + word.len()..];
    rest.split_whitespace()
        .next()
        .unwrap()
        .trim_matches(|c: char| !c.is_ascii_digit() && c != '.')
        .parse()
        .unwrap()
}

/// BENCHMARKS.md: boot of ten zones as PID 1 under emulation, measured
/// with zonit's own CLOCK_MONOTONIC stamps, and PID 1's memory. Run with
/// `cargo test --release --test qemu -- --ignored --nocapture bench_`.
#[test]
#[ignore = "benchmark; see BENCHMARKS.md"]
fn bench_ten_zones_boot_and_pid1_rss() {
    if !prerequisites() {
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let config = ten_zones();
    for run in 0..runs {
        let mut m = Machine::boot(&format!("bench-{run}"), &config, "zonit.shell");
        let start = m.wait_for("as PID 1 (started at monotonic");
        let t0 = number_after(&start, "monotonic");
        let marker = m.wait_for(&format!("all 10 {MARKER}"));
        let t1 = number_after(&marker, "monotonic");
        let agent_ms = number_after(&marker, "after");
        let status = m.run("grep -E 'VmRSS|VmHWM' /proc/1/status").join("\n");
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .map(|l| number_after(l, key))
                .unwrap_or(f64::NAN)
        };
        println!(
            "run {run}: kernel->zonit {t0:.3} s, zonit first instruction -> all 10 running {:.1} ms (agent {agent_ms:.1} ms), PID 1 VmRSS {} KiB, VmHWM {} KiB",
            (t1 - t0) * 1000.0,
            kib("VmRSS:"),
            kib("VmHWM:")
        );
        m.poweroff();
    }
}

/// The kernel these tests boot (Debian's cloud kernel) has every option the
/// host fragment requires, built in or, where marked, as a module zonit
/// loads itself.
#[test]
fn the_test_kernel_passes_the_kernel_config_check() {
    if !prerequisites() {
        return;
    }
    let out = Command::new(repo().join("scripts/check-kernel-config.sh"))
        .arg(kernel_dir().join("config"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse `size` image formatted ext4 with `label`, for a data disk.
fn ext4_image(name: &str, label: &str, size: u64) -> PathBuf {
    let path = work_dir().join(format!("{name}.img"));
    let _ = std::fs::remove_file(&path);
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("mkfs.ext4 is needed (e2fsprogs, scripts/setup.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A zone whose root (and so its overlay's upper layer) is on the data
/// disk: it writes a file on its first boot and reads it on the next.
const KEEPER: &str = r#"
[host]
modules = ["overlay", "virtio_pci", "virtio_blk"]
shutdown_timeout = "10s"

[[host.mounts]]
source = "LABEL=zdata"
target = "/data"
fs = "ext4"
options = ["noatime"]

[zone.keeper]
root = "/data/zones/keeper"
template = "/templates/base"
command = ["/bin/sh", "-c", "if [ -f /var/state ]; then echo keeper found: $(cat /var/state); else mkdir -p /var && echo written-on-first-boot > /var/state && echo keeper wrote state; fi; exec sleep 1000"]
"#;

/// The appliance finds its data disk by label, mounts it before the
/// units start, and a zone rooted there keeps what it wrote across a
/// reboot (a second QEMU boot on the same image): the mount survives an
/// orderly shutdown, which unmounts it before powering off.
#[test]
fn a_zone_on_a_labelled_data_disk_keeps_its_state_across_a_reboot() {
    if !prerequisites() {
        return;
    }
    let disk = ext4_image("keeper-disk", "zdata", 64 << 20);
    let mut m = Machine::boot_with_disks("data-disk-1", KEEPER, "", "zonit.shell", &[&disk]);
    let mounted = m.wait_for("mounted LABEL=zdata");
    assert!(mounted.contains("(/dev/vda) on /data (ext4)"), "{mounted}");
    m.wait_for("keeper wrote state");
    m.wait_anywhere("all 1 autostart unit(s) running");
    m.assert_order(&["mounted LABEL=zdata", "keeper: started"]);
    m.poweroff();
    drop(m);

    let mut m = Machine::boot_with_disks("data-disk-2", KEEPER, "", "zonit.shell", &[&disk]);
    m.wait_for("mounted LABEL=zdata");
    let found = m.wait_for("keeper found:");
    assert!(found.contains("written-on-first-boot"), "{found}");
    m.poweroff();
}

/// A required data mount whose disk is absent fails only the units with
/// a path under it, each with the mount's reason; boot goes on and the
/// other units run.
#[test]
fn a_missing_required_data_disk_fails_only_the_units_under_it() {
    if !prerequisites() {
        return;
    }
    let config = r#"
[host]
modules = ["overlay", "virtio_pci", "virtio_blk"]

[[host.mounts]]
source = "LABEL=absent"
target = "/data"
fs = "ext4"
wait = "2s"

[zone.ondata]
root = "/data/zones/ondata"
template = "/templates/base"
command = ["/bin/sh", "-c", "echo ondata ran; exec sleep 1000"]

[zone.elsewhere]
root = "/zones/elsewhere"
template = "/templates/base"
command = ["/bin/sh", "-c", "echo elsewhere ran; exec sleep 1000"]
"#;
    let mut m = Machine::boot("data-disk-missing", config, "zonit.shell");
    m.wait_for("/data is not mounted: LABEL=absent not found after 2s");
    m.wait_for("elsewhere ran");
    let status = m.run("zonit ctl status").join("\n");
    let row = status
        .lines()
        .find(|l| l.contains("ondata") && !l.contains("zonit ctl"))
        .unwrap_or_else(|| m.fail(&format!("no ondata row in:\n{status}")))
        .to_string();
    assert!(row.contains("failed"), "{row}");
    let json = m.run("zonit ctl status --json").join("\n");
    assert!(
        json.contains("/data is not mounted: LABEL=absent not found after 2s"),
        "{json}"
    );
    if m.index_of("ondata ran").is_some() {
        m.fail("a zone under the missing mount ran");
    }
    m.poweroff();
}

/// A guest's memory is its monitor's, charged to the monitor's cgroup:
/// a guest that touches more than its `memory_max` is killed by the
/// kernel's OOM killer, and `status` reports the kill.
#[test]
fn a_guest_over_its_memory_max_is_oom_killed_and_reported() {
    let Some(_serial) = nested_guest_test() else {
        return;
    };
    let mut m = boot_one_guest(
        "guest-oom",
        "hog",
        "hog",
        "memory_max = \"160M\"\nrestart = \"never\"\n",
    );
    m.wait_for("zonit[hog]: guest: filling 200 MiB");
    m.wait_for("hog: ended (signal SIGKILL)");
    let row = m.status_of("hog");
    assert_eq!(row["last_exit"], "signal SIGKILL", "{row}");
    assert!(row["oom_kills"].as_u64() >= Some(1), "{row}");
    let max = m.run("cat /sys/fs/cgroup/zonit/hog/memory.max").join("\n");
    assert!(max.contains(&(160u64 << 20).to_string()), "{max}");
    if m.index_of("guest: still alive after filling").is_some() {
        m.fail("the guest outgrew memory_max and lived");
    }
    m.poweroff();
}

/// Boot to all units running with a data disk mounted by label against
/// the same appliance without the mount (the disk attached to both, so
/// the driver's load is common), under TCG. Reports T1 - T0 of each boot
/// as in `bench_ten_zones_boot_and_pid1_rss`; BENCHMARKS.md has the
/// figures and the command:
/// `cargo test --test qemu -- --ignored --nocapture bench_data_disk`.
#[test]
#[ignore = "benchmark; see BENCHMARKS.md"]
fn bench_data_disk_boot_against_none() {
    if !prerequisites() {
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let without = KEEPER
        .replace("root = \"/data/zones/keeper\"", "root = \"/zones/keeper\"")
        .replace("[[host.mounts]]", "")
        .replace("source = \"LABEL=zdata\"\n", "")
        .replace(
            "target = \"/data\"\nfs = \"ext4\"\noptions = [\"noatime\"]\n",
            "",
        );
    assert!(!without.contains("/data"), "{without}");
    let disk = ext4_image("bench-disk", "zdata", 64 << 20);
    for run in 0..runs {
        for (what, config) in [("with", KEEPER), ("without", without.as_str())] {
            let mut m = Machine::boot_with_disks(
                &format!("bench-disk-{what}-{run}"),
                config,
                "",
                "zonit.shell",
                &[&disk],
            );
            let start = m.wait_for("as PID 1 (started at monotonic");
            let t0 = number_after(&start, "monotonic");
            let marker = m.wait_for(&format!("all 1 {MARKER}"));
            let t1 = number_after(&marker, "monotonic");
            let mount = m
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("mounted LABEL=zdata"))
                .map(|l| number_after(l, " after"))
                .unwrap_or(0.0);
            println!(
                "run {run} {what} the data mount: zonit first instruction -> all running {:.1} ms (wait + mount {mount:.0} ms)",
                (t1 - t0) * 1000.0
            );
            m.poweroff();
        }
    }
}
