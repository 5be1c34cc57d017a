//! Tier 1: what the `zonit` command line prints, as a script or a person
//! reading a console sees it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};

/// Every line zonit prints must reach a terminal whole: a line written in
/// pieces can be cut by another writer of the same console (seen on a
/// serial console as `/etc/zonit.tom[    1.88] ...l:7:1: unknown key`).
/// stderr is a datagram socket here, so each write(2) arrives as one
/// datagram and a line written in two writes shows as two.
#[test]
fn config_errors_are_written_one_whole_line_per_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[host]\nbogus = 1\n\n[zone.a]\nroot = 7\ncommand = [\"/bin/true\"]\nnope = true\n",
    )
    .unwrap();
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_zonit"))
        .arg("check")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    ours.set_nonblocking(true).unwrap();
    let mut writes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = ours.recv(&mut buf) {
        writes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        writes.len() >= 3,
        "expected one write per error: {writes:?}"
    );
    let file = path.display().to_string();
    for w in &writes {
        assert!(
            w.starts_with(&file) && w.ends_with('\n') && w.matches('\n').count() == 1,
            "not one whole `FILE:LINE:COL: message` line per write: {w:?} (all: {writes:?})"
        );
    }
}

/// `[[host.mounts]]` is PID 1's business: `zonit check` accepts it, and
/// `zonit run` refuses to start with it, saying why, before it touches
/// anything (no socket, no cgroup).
#[test]
fn run_refuses_host_mounts_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mounts.toml");
    let socket = dir.path().join("ctl.sock");
    std::fs::write(
        &path,
        format!(
            "[host]\ncontrol_socket = \"{}\"\n[[host.mounts]]\nsource = \"LABEL=zdata\"\ntarget = \"/data\"\nfs = \"ext4\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_zonit"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let run = Command::new(env!("CARGO_BIN_EXE_zonit"))
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[[host.mounts]] is only for zonit as PID 1")
            && stderr.contains("host's own init"),
        "{stderr}"
    );
    assert!(!socket.exists());
}

fn zonit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zonit"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The commands a person can type: every one in the table but internal ones.
fn commands() -> impl Iterator<Item = &'static zonit::cli::Command> {
    zonit::cli::COMMANDS.iter().filter(|c| !c.hidden)
}

fn option_words(c: &zonit::cli::Command) -> Vec<String> {
    let mut words = vec!["--help".to_string()];
    for o in c.opts {
        words.push(format!("--{}", o.long));
        words.extend(o.short.map(|s| format!("-{s}")));
    }
    words
}

#[test]
fn help_for_every_command_exits_0_on_stdout_and_names_its_options() {
    for c in commands() {
        let words: Vec<&str> = c.path.split(' ').collect();
        let mut help = vec!["help"];
        help.extend(&words);
        let mut dash = words.clone();
        dash.push("--help");
        let mut short = words.clone();
        short.push("-h");
        for args in [help, dash, short] {
            let out = zonit(&args);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "zonit {args:?}: {out:?}");
            assert!(
                stdout.starts_with(&format!("usage: zonit {}", c.path)),
                "zonit {args:?}: {stdout}"
            );
            for w in option_words(c) {
                assert!(
                    stdout.contains(&w),
                    "zonit {args:?} does not name {w}: {stdout}"
                );
            }
            assert!(stdout.contains("exit status: "), "{stdout}");
        }
    }
    let out = zonit(&["ctl", "help", "exec"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: zonit ctl exec"));
    let out = zonit(&["help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for c in commands().filter(|c| !c.path.contains(' ')) {
        assert!(stdout.contains(&format!("\n  {} ", c.path)), "{stdout}");
    }
}

#[test]
fn a_bad_option_exits_2_naming_it_and_where_help_is() {
    for c in commands() {
        let mut args: Vec<&str> = c.path.split(' ').collect();
        args.push("--no-such-option");
        let out = zonit(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "zonit {args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "zonit {args:?}");
        assert!(
            stderr.contains("--no-such-option") && stderr.contains("zonit help"),
            "zonit {args:?}: {stderr}"
        );
    }
    let out = zonit(&["ctl", "frobnicate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("frobnicate") && stderr.contains("zonit help ctl"),
        "{stderr}"
    );
    let out = zonit(&["help", "ctl", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// An exec'd command's own options are never taken for zonit's.
#[test]
fn words_after_the_zone_of_exec_are_the_commands_own() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.to_str().unwrap();
    let out = zonit(&[
        "ctl", "--socket", sock, "exec", "web", "ls", "-h", "--bogus",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "reached the connect: {stderr}");
    assert!(stderr.contains("unable to talk to the agent"), "{stderr}");
}

/// Runs `script` in bash with zonit's completion loaded and zonit on PATH.
fn bash(script: &str) -> String {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_zonit"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "source <(zonit completion bash) || exit 9\n{script}"
        ))
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// What completing the last of `words` offers.
fn complete(words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let out = bash(&format!(
        "COMP_WORDS=({}); COMP_CWORD={}; _zonit; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        quoted.join(" "),
        words.len() - 1
    ));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn the_completion_script_is_valid_bash_and_registered_for_zonit() {
    let script = zonit(&["completion", "bash"]);
    assert_eq!(script.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zonit.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{check:?}");
    assert_eq!(bash("complete -p zonit").trim(), "complete -F _zonit zonit");
}

#[test]
fn completion_offers_every_command_and_every_option_of_the_table() {
    let top = complete(&["zonit", ""]);
    let ctl = complete(&["zonit", "ctl", ""]);
    let help_ctl = complete(&["zonit", "help", "ctl", ""]);
    for c in commands() {
        match c.path.split_once(' ') {
            None => assert!(top.contains(&c.path.to_string()), "{}: {top:?}", c.path),
            Some((_, sub)) => {
                assert!(ctl.contains(&sub.to_string()), "{}: {ctl:?}", c.path);
                assert!(
                    help_ctl.contains(&sub.to_string()),
                    "{}: {help_ctl:?}",
                    c.path
                );
            }
        }
        let mut words: Vec<&str> = vec!["zonit"];
        words.extend(c.path.split(' '));
        words.push("-");
        let offered = complete(&words);
        for w in option_words(c) {
            assert!(
                offered.contains(&w),
                "{words:?} does not offer {w}: {offered:?}"
            );
        }
    }
    assert_eq!(complete(&["zonit", "ctl", "ev"]), ["events"]);
    assert_eq!(complete(&["zonit", "ctl", "logs", "--f"]), ["--follow"]);
}

/// docs/cli.md is where a person looks: it names every command and option.
#[test]
fn docs_cli_names_every_command_and_option_of_the_table() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    for c in zonit::cli::COMMANDS {
        let named = match c.path.strip_prefix("ctl ") {
            // A row of the table of ctl commands.
            Some(sub) => doc
                .lines()
                .any(|l| l.starts_with("| `") && l.contains(&format!("`{sub}"))),
            None => doc.contains(&format!("| `zonit {}", c.path)),
        };
        assert!(named, "docs/cli.md lacks {}", c.path);
        for o in c.opts {
            assert!(
                doc.contains(&format!("--{}", o.long)),
                "docs/cli.md lacks {} --{}",
                c.path,
                o.long
            );
        }
    }
}
