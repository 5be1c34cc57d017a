//! Measuring harness for the monitor benchmarks of `BENCHMARKS.md`
//! ("Monitor"), run by `scripts/bench-vmm.sh` as
//! `cargo bench --bench monitor -- MODE [OPTIONS] -- COMMAND...`.
//!
//! COMMAND is a whole monitor command line (`zonit vmm ...` or
//! `qemu-system-x86_64 ...`) whose guest console is on its stdout; the
//! harness starts it with stdout on a pipe and reads the console itself, so
//! every monitor is measured by the same code:
//!
//! - `first-byte --runs N [--expect LINE]`: time from the spawn call to
//!   the first console byte read from the pipe, and to the monitor's exit;
//!   the first console line must equal LINE (both monitors boot the same
//!   payload and must say the same thing).
//! - `marks --runs N --from PREFIX --to PREFIX`: time between the arrival
//!   of the console line starting with PREFIX and of the one after it
//!   starting with the other; with `--count N` also N / time, the rate of
//!   whatever the guest did in between (the `pio` payload action).
//! - `rss --runs N --wait MARKER --guest-mib M`: once MARKER is on the
//!   console and 200 ms have passed, the monitor's memory from
//!   `/proc/PID/smaps`: all of it, the guest-RAM mapping (the anonymous
//!   mapping of M MiB), and the rest; then the monitor is killed (SIGKILL:
//!   SIGTERM only asks the guest to stop).
//!
//! Not a test: nothing here passes or fails on a number.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long one run may take before the harness gives up on it.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

struct Args {
    mode: String,
    runs: usize,
    expect: Option<String>,
    from: String,
    to: String,
    count: Option<u64>,
    wait: String,
    guest_mib: u64,
    command: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    // `cargo bench` passes `--bench` to every bench target.
    let mut mode = it.next().ok_or(USAGE)?;
    if mode == "--bench" {
        mode = it.next().ok_or(USAGE)?;
    }
    let mut a = Args {
        mode,
        runs: 50,
        expect: None,
        from: String::new(),
        to: String::new(),
        count: None,
        wait: String::new(),
        guest_mib: 0,
        command: Vec::new(),
    };
    while let Some(flag) = it.next() {
        if flag == "--" {
            a.command = it.by_ref().collect();
            break;
        }
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--runs" => a.runs = number(&value)? as usize,
            "--expect" => a.expect = Some(value),
            "--from" => a.from = value,
            "--to" => a.to = value,
            "--count" => a.count = Some(number(&value)?),
            "--wait" => a.wait = value,
            "--guest-mib" => a.guest_mib = number(&value)?,
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if a.command.is_empty() || a.runs == 0 {
        return Err(USAGE.to_string());
    }
    Ok(a)
}

const USAGE: &str = "usage: monitor first-byte --runs N [--expect LINE] -- COMMAND...\n\
       monitor marks --runs N --from PREFIX --to PREFIX [--count N] -- COMMAND...\n\
       monitor rss --runs N --wait MARKER --guest-mib M -- COMMAND...";

fn spawn(command: &[String]) -> Result<(Child, ChildStdout), String> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", command[0]))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    Ok((child, stdout))
}

/// Waits for the child, killing it if it outlives the deadline.
fn reap(child: &mut Child, started: Instant) -> Result<std::process::ExitStatus, String> {
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            return Err("monitor still running after the deadline".to_string());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Milliseconds of a duration.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, quartiles and extremes of `v`, printed as one line with
/// `digits` decimals.
fn summary(name: &str, unit: &str, digits: usize, v: &mut [f64]) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name}: median {:.digits$} {unit} (p25 {:.digits$}, p75 {:.digits$}, \
         min {:.digits$}, max {:.digits$}, n={})",
        at(0.5),
        at(0.25),
        at(0.75),
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

fn first_byte(a: &Args) -> Result<(), String> {
    let mut first = Vec::with_capacity(a.runs);
    let mut exit = Vec::with_capacity(a.runs);
    for run in 0..a.runs {
        let started = Instant::now();
        let (mut child, stdout) = spawn(&a.command)?;
        let mut console = BufReader::new(stdout);
        let mut byte = [0u8; 1];
        let n = console.read(&mut byte).map_err(|e| e.to_string())?;
        let at_first = started.elapsed();
        if n == 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("run {run}: the console closed before any byte"));
        }
        let mut line = vec![byte[0]];
        console
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if let Some(want) = &a.expect
            && &line != want
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("run {run}: first line {line:?}, expected {want:?}"));
        }
        // Drain the console so the guest never blocks on a full pipe.
        std::io::copy(&mut console, &mut std::io::sink()).map_err(|e| e.to_string())?;
        let status = reap(&mut child, started)?;
        let at_exit = started.elapsed();
        if !status.success() {
            return Err(format!("run {run}: monitor ended with {status}"));
        }
        if run == 0 {
            println!("first line: {line}");
        }
        first.push(ms(at_first));
        exit.push(ms(at_exit));
    }
    summary("spawn to first console byte", "ms", 2, &mut first);
    summary("spawn to monitor exit", "ms", 1, &mut exit);
    Ok(())
}

fn marks(a: &Args) -> Result<(), String> {
    let mut spans = Vec::with_capacity(a.runs);
    for run in 0..a.runs {
        let started = Instant::now();
        let (mut child, stdout) = spawn(&a.command)?;
        let mut from = None;
        let mut span = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| e.to_string())?;
            if from.is_none() && line.starts_with(&a.from) {
                from = Some(Instant::now());
            } else if let Some(t) = from
                && span.is_none()
                && line.starts_with(&a.to)
            {
                span = Some(t.elapsed());
            }
        }
        let status = reap(&mut child, started)?;
        let span = span.ok_or(format!(
            "run {run}: no {:?} then {:?} on the console ({status})",
            a.from, a.to
        ))?;
        spans.push(span.as_secs_f64());
    }
    let mut millis: Vec<f64> = spans.iter().map(|s| s * 1e3).collect();
    summary("time between the marks", "ms", 0, &mut millis);
    if let Some(n) = a.count {
        let mut rates: Vec<f64> = spans.iter().map(|s| n as f64 / s / 1e3).collect();
        summary("rate", "thousand/s", 1, &mut rates);
    }
    Ok(())
}

/// Sums of the fields of interest over a set of smaps mappings, in KiB.
#[derive(Default, Debug)]
struct Mem {
    rss: u64,
    pss: u64,
    private: u64,
    anon: u64,
    mappings: u64,
}

/// Parses `/proc/PID/smaps`: (total, guest RAM) where guest RAM is every
/// anonymous mapping of exactly `guest_kib`.
fn smaps(pid: u32, guest_kib: u64) -> Result<(Mem, Mem), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("cannot read smaps of {pid}: {e}"))?;
    let (mut total, mut guest) = (Mem::default(), Mem::default());
    let mut current = Mem::default();
    let mut anonymous = false;
    let mut size = 0;
    let mut close = |m: &mut Mem, anonymous: bool, size: u64| {
        let into = |acc: &mut Mem| {
            acc.rss += m.rss;
            acc.pss += m.pss;
            acc.private += m.private;
            acc.anon += m.anon;
            acc.mappings += 1;
        };
        into(&mut total);
        if anonymous && size == guest_kib {
            into(&mut guest);
        }
        *m = Mem::default();
    };
    let mut open = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            if open {
                close(&mut current, anonymous, size);
            }
            open = true;
            // address perms offset dev inode [path]: anonymous if no path.
            anonymous = words.nth(4).is_none();
            continue;
        }
        let value = words
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match first {
            "Size:" => size = value,
            "Rss:" => current.rss = value,
            "Pss:" => current.pss = value,
            "Private_Clean:" | "Private_Dirty:" => current.private += value,
            "Anonymous:" => current.anon = value,
            _ => {}
        }
    }
    if open {
        close(&mut current, anonymous, size);
    }
    Ok((total, guest))
}

/// One sample of `rss`: (total, guest RAM) of a monitor whose console
/// showed the marker.
fn rss_once(a: &Args) -> Result<(Mem, Mem), String> {
    let started = Instant::now();
    let (mut child, stdout) = spawn(&a.command)?;
    let mut console = BufReader::new(stdout);
    let mut line = String::new();
    let found = loop {
        line.clear();
        match console.read_line(&mut line) {
            Ok(0) | Err(_) => break false,
            Ok(_) if line.contains(&a.wait) => break true,
            Ok(_) => {}
        }
    };
    let measured = if found {
        std::thread::sleep(Duration::from_millis(200));
        smaps(child.id(), a.guest_mib * 1024)
    } else {
        Err(format!("no {:?} on the console", a.wait))
    };
    let _ = child.kill();
    let _ = reap(&mut child, started);
    let (total, guest) = measured?;
    if guest.mappings == 0 {
        return Err("no anonymous mapping of the guest's size".to_string());
    }
    Ok((total, guest))
}

fn rss(a: &Args) -> Result<(), String> {
    let mut samples = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        samples.push(rss_once(a)?);
    }
    if let Some((total, guest)) = samples.first() {
        println!(
            "first run: total rss {} KiB in {} mappings; guest RAM ({} mapping(s) of {} MiB) rss {} KiB",
            total.rss, total.mappings, guest.mappings, a.guest_mib, guest.rss
        );
    }
    let field = |f: fn(&Mem) -> u64| -> Vec<f64> {
        samples.iter().map(|(t, g)| (f(t) - f(g)) as f64).collect()
    };
    summary("rss without guest RAM", "KiB", 0, &mut field(|m| m.rss));
    summary("pss without guest RAM", "KiB", 0, &mut field(|m| m.pss));
    summary(
        "private (clean + dirty) without guest RAM",
        "KiB",
        0,
        &mut field(|m| m.private),
    );
    summary(
        "anonymous without guest RAM",
        "KiB",
        0,
        &mut field(|m| m.anon),
    );
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|a| match a.mode.as_str() {
        "first-byte" => first_byte(&a),
        "marks" => marks(&a),
        "rss" => rss(&a),
        other => Err(format!("unknown mode {other}\n{USAGE}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitor bench: {e}");
            ExitCode::FAILURE
        }
    }
}
