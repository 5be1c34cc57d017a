//! Shared harness for the root tests (tier 2): a busybox zone template,
//! `zonit run` as PID 1 of a new PID namespace, the control client, and
//! zonit's log with the time each line arrived.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub const ZONIT: &str = env!("CARGO_BIN_EXE_zonit");

/// Fails (under CI=true) or skips (otherwise) when not root.
/// Returns false when the test should return early.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "tier-2 tests need root (CI=true forbids skipping)"
    );
    eprintln!("skipped: needs root");
    false
}

/// The busybox zone template (scripts/make-template.sh), built once per
/// test binary.
pub fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        // Under the build's own scratch directory, rebuilt per test binary
        // run, so test runs leave nothing in /tmp.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("zonit-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-template.sh");
        let out = Command::new(&script).arg(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "{} failed (busybox-static is needed):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// A running `zonit run` with its own directory and socket.
pub struct Zonit {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    pub started: Instant,
    keep_dir: bool,
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fresh directory for one test.
pub fn test_dir(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("zonit-t2-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A zone section using the busybox template, rooted in `dir`.
pub fn zone(dir: &Path, name: &str, command: &str, extra: &str) -> String {
    format!(
        "[zone.{name}]\nroot = \"{root}\"\ntemplate = \"{tpl}\"\ncommand = [\"/bin/sh\", \"-c\", {cmd}]\n{extra}\n",
        root = dir.join("zones").join(name).display(),
        tpl = template().display(),
        cmd = toml_string(command),
    )
}

pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Zonit {
    /// Writes the config (a `[host]` section pointing the control socket
    /// into the test dir is prepended) and starts zonit under
    /// `unshare --pid --fork --mount`, so it is PID 1 of a namespace.
    pub fn start(name: &str, units: impl FnOnce(&Path) -> String) -> Zonit {
        Self::start_with_host(name, "", units)
    }

    pub fn start_with_host(name: &str, host: &str, units: impl FnOnce(&Path) -> String) -> Zonit {
        Self::start_wrapped(name, host, units, &[])
    }

    /// As [`Zonit::start_with_host`], with zonit started through
    /// `wrapper` (see [`Zonit::launch_wrapped`]).
    pub fn start_wrapped(
        name: &str,
        host: &str,
        units: impl FnOnce(&Path) -> String,
        wrapper: &[&str],
    ) -> Zonit {
        let dir = test_dir(name);
        let socket = dir.join("ctl.sock");
        let config = dir.join("zonit.toml");
        let body = format!(
            "[host]\ncontrol_socket = \"{}\"\n{host}\n{}",
            socket.display(),
            units(&dir)
        );
        std::fs::write(&config, body).unwrap();
        Self::launch_wrapped(dir, config, socket, wrapper)
    }

    /// Starts zonit on an existing `config` (whose control socket is
    /// `socket`) and waits until the socket answers; `dir` is removed when
    /// the returned value is dropped.
    pub fn launch(dir: PathBuf, config: PathBuf, socket: PathBuf) -> Zonit {
        Self::launch_wrapped(dir, config, socket, &[])
    }

    /// As [`Zonit::launch`], with zonit started through `wrapper` (a
    /// command that execs its arguments, such as `prlimit --nofile=N:M`).
    pub fn launch_wrapped(
        dir: PathBuf,
        config: PathBuf,
        socket: PathBuf,
        wrapper: &[&str],
    ) -> Zonit {
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount", "--kill-child"])
            .args(wrapper)
            .arg(ZONIT)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) is needed");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        let z = Zonit {
            dir,
            config,
            socket,
            child: Some(child),
            log,
            started: Instant::now(),
            keep_dir: false,
        };
        // A socket file alone may be a dead predecessor's.
        z.wait_for("control socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&z.socket).is_ok()
        });
        z
    }

    /// SIGKILLs zonit (and with it its PID namespace) without letting it
    /// clean up; returns the test directory, the config and the socket,
    /// which stay in place for a successor.
    pub fn kill_hard(mut self) -> (PathBuf, PathBuf, PathBuf) {
        let mut child = self.child.take().unwrap();
        let zonit = child_of(child.id()).expect("zonit process under unshare");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(zonit),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        self.keep_dir = true;
        (self.dir.clone(), self.config.clone(), self.socket.clone())
    }

    /// Runs `zonit ctl` against this agent; returns (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(ZONIT)
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `status --json` as parsed rows.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let (code, out, err) = self.ctl(&["status", "--json"]);
        assert_eq!(code, 0, "status failed: {err}");
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// One unit's status row.
    pub fn unit(&self, name: &str) -> serde_json::Value {
        self.status()
            .into_iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("no unit {name} in status"))
    }

    pub fn state(&self, name: &str) -> String {
        self.unit(name)["state"].as_str().unwrap_or("").to_string()
    }

    /// Waits until `cond` holds, or fails the test after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\nlog:\n{}",
            self.log_text()
        );
    }

    pub fn wait_state(&self, name: &str, state: &str) {
        self.wait_for(
            &format!("{name} to be {state}"),
            Duration::from_secs(10),
            || self.state(name) == state,
        );
    }

    /// Every line zonit printed so far, with arrival times.
    pub fn log_lines(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines()
            .into_iter()
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_for(
            &format!("log line `{needle}`"),
            Duration::from_secs(10),
            || self.log_text().contains(needle),
        );
    }

    /// Sends SIGTERM to zonit (PID 1 of its namespace) and waits for the
    /// whole namespace to exit; returns zonit's exit status.
    pub fn terminate(&mut self) -> i32 {
        let child = self.child.as_mut().unwrap();
        // unshare --fork: signal its child (zonit), which is the only
        // process of the namespace's PID 1.
        let zonit_pid = child_of(child.id()).expect("zonit process under unshare");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(zonit_pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "zonit did not exit after SIGTERM\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Host PID of zonit itself (the child of unshare).
    pub fn pid(&self) -> i32 {
        child_of(self.child.as_ref().unwrap().id()).unwrap()
    }
}

/// The first child of `pid`, from /proc.
pub fn child_of(pid: u32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Host PIDs whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

impl Drop for Zonit {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first, so zonit removes its cgroups and stops its
            // zones in order; SIGKILL only if it does not exit in time.
            let zonit = child_of(child.id());
            if let Some(pid) = zonit {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            if let Some(pid) = zonit {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `zonit run --config config` in this PID namespace, for an agent
/// that is expected to refuse to start; kills it after `timeout`.
/// `cgroup`, when given, is the cgroup2 directory it is started in.
/// Returns its exit code (None when it had to be killed) and its output.
pub fn run_expecting_exit(
    config: &Path,
    cgroup: Option<&Path>,
    timeout: Duration,
) -> (Option<i32>, String) {
    let script = match cgroup {
        Some(cg) => format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$0\" run --config \"$1\"",
            cg.display()
        ),
        None => "exec \"$0\" run --config \"$1\"".into(),
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(ZONIT)
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut code = None;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            code = st.code();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if code.is_none() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        thread::sleep(Duration::from_secs(2));
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, text)
}

/// The cgroup2 directory this test process is in.
pub fn own_cgroup2() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim()
        .to_string();
    Some(mount.join(own.trim_start_matches('/')))
}

/// Puts `probe` (tests/probe/probe.c, built with `gcc -static`) into the
/// test template as `/bin/probe`, plus a setuid-root copy `/bin/suidprobe`;
/// once per test binary. Returns the template.
pub fn install_probe() -> &'static Path {
    static DONE: OnceLock<()> = OnceLock::new();
    let tpl = template();
    DONE.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/probe.c");
        let out = tpl.join("bin/probe");
        let status = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc is needed for the probe: apt-get install gcc libc6-dev");
        assert!(status.success(), "building {} failed", src.display());
        let suid = tpl.join("bin/suidprobe");
        std::fs::copy(&out, &suid).unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    });
    tpl
}

impl Zonit {
    /// For a zone whose health probe tests for /tmp/ok (which its command
    /// creates): waits until it is healthy, removes the file so the probe
    /// fails, and waits until the zone has been restarted once and is
    /// healthy again.
    pub fn fail_health_once(&self, unit: &str) {
        self.wait_for(&format!("{unit} healthy"), Duration::from_secs(10), || {
            self.unit(unit)["health"] == "healthy"
        });
        assert_eq!(self.ctl(&["exec", unit, "--", "rm", "/tmp/ok"]).0, 0);
        self.wait_for(
            &format!("{unit} healthy after a restart"),
            Duration::from_secs(10),
            || {
                let u = self.unit(unit);
                u["restarts"] == 1 && u["health"] == "healthy"
            },
        );
    }

    /// The unit's captured output (`zonit ctl logs`), once a line equal to
    /// `marker` has appeared in it.
    pub fn output_until(&self, unit: &str, marker: &str) -> String {
        let mut out = String::new();
        self.wait_for(
            &format!("`{marker}` from {unit}"),
            Duration::from_secs(15),
            || {
                out = self.ctl(&["logs", unit]).1;
                out.lines().any(|l| l == marker)
            },
        );
        out
    }
}

/// The value of `key=` in `out` (the text up to the next space or line end).
pub fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    out.lines()
        .flat_map(|l| l.split(' '))
        .find_map(|w| w.strip_prefix(needle.as_str()))
}

/// Set in the copy of a test that runs inside its private namespace.
const NETNS_INNER: &str = "ZONIT_TEST_IN_PRIVATE_NETNS";

/// Runs the calling test again inside a fresh network namespace (a
/// stand-in for the host: the machine's own interfaces are never
/// touched); returns true in the copy that should do the work.
pub fn in_private_netns(test: &str) -> bool {
    if std::env::var_os(NETNS_INNER).is_some() {
        return true;
    }
    if !require_root() {
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_INNER, "1")
        .output()
        .expect("unshare (util-linux) is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} failed in its namespace:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in its namespace:\n{text}"
    );
    false
}

/// A process in a network namespace of its own (a stand-in zone, guest
/// or outside host), killed when dropped.
pub struct NetnsProc {
    child: Child,
}

impl NetnsProc {
    pub fn new() -> NetnsProc {
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let path = format!("/proc/{}/ns/net", child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        // unshare(1) enters its namespace just before it execs sleep.
        while std::fs::metadata(&path).map(|m| m.ino()).ok() == Some(own) {
            assert!(Instant::now() < deadline, "unshare never made its netns");
            thread::sleep(Duration::from_millis(5));
        }
        NetnsProc { child }
    }

    /// The pid whose network namespace this is.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn netns(&self) -> std::fs::File {
        std::fs::File::open(format!("/proc/{}/ns/net", self.child.id())).unwrap()
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg("--")
            .args(args);
        cmd
    }

    /// Runs a command inside the namespace: success and output.
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NetnsProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command in the test's own namespace: success and output.
pub fn run_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
