//! `zonit ctl`: the control client. Sends one request, prints the replies.
//!
//! Its commands and options are those of `ctl` in [`crate::cli::COMMANDS`].
//! Exit status: 0 on success, 1 when the agent answered with an error,
//! 2 for a usage error, 3 when the agent could not be reached.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lexopt::Arg::{Long, Short, Value};
use lexopt::ValueExt;

use super::event::Event;
use super::proto::{self, Request, UnitRow, WindowSize};
use super::terminal;
use crate::cli;
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::config::parse_duration;

enum Output {
    Table,
    Json,
    Plain,
}

/// What the words after `zonit ctl` ask for.
enum Parsed {
    /// Send this request, print its replies so.
    Go(Request, Output),
    /// Print the help of this command (`ctl`, `ctl logs`).
    Help(String),
}

/// How long `zonit ctl` waits for the agent unless told otherwise; a
/// `stop` waits for the unit to stop, which takes up to its stop_timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Entry point of `zonit ctl`; `args` are the words after `ctl`.
pub fn main(args: &[String]) -> ExitCode {
    let mut socket = PathBuf::from(DEFAULT_CONTROL_SOCKET);
    let mut timeout = None;
    let mut p = lexopt::Parser::from_args(args);
    // Options come before the command, so an exec'd command's own
    // arguments are never taken for ours.
    let cmd = loop {
        let arg = match p.next() {
            Ok(None) => return cli::usage_error("ctl", "no command given"),
            Ok(Some(Short('h') | Long("help"))) => return cli::print_help(&["ctl"]),
            Ok(Some(Long("socket"))) => p.value().map(|v| socket = v.into()),
            Ok(Some(Long("timeout"))) => p.value().and_then(|v| {
                let t = parse_duration(&v.string()?).map_err(|e| format!("--timeout: {e}"))?;
                timeout = Some(t);
                Ok(())
            }),
            Ok(Some(Value(v))) => match v.string() {
                Ok(cmd) => break cmd,
                Err(e) => Err(e),
            },
            Ok(Some(arg)) => Err(arg.unexpected()),
            Err(e) => Err(e),
        };
        if let Err(e) = arg {
            return cli::usage_error("ctl", &e.to_string());
        }
    };
    let path = format!("ctl {cmd}");
    if cli::find(&path).is_none() {
        return cli::usage_error("ctl", &format!("unknown command `{cmd}`"));
    }
    let (mut req, output) = match command(&cmd, &mut p) {
        Ok(Parsed::Go(req, output)) => (req, output),
        Ok(Parsed::Help(path)) => {
            let words: Vec<&str> = path.split(' ').collect();
            return cli::print_help(&words);
        }
        Err(e) => return cli::usage_error(&path, &e.to_string()),
    };
    if let Request::Exec {
        tty: Some(size), ..
    } = &mut req
    {
        match terminal::local_size() {
            Ok(s) => *size = s,
            Err(msg) => {
                eprintln!("zonit ctl: {msg}");
                return ExitCode::from(2);
            }
        }
    }
    let timeout = timeout
        .or_else(|| (!streams(&req)).then_some(DEFAULT_TIMEOUT))
        .filter(|t| !t.is_zero());
    match run(&socket, &req, output, timeout) {
        Ok(code) => code,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            eprintln!(
                "zonit ctl: no reply from the agent at {} within {:?}",
                socket.display(),
                timeout.unwrap_or_default()
            );
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!(
                "zonit ctl: unable to talk to the agent at {}: {e}",
                socket.display()
            );
            ExitCode::from(3)
        }
    }
}

/// Requests whose replies keep coming for as long as the client wants.
fn streams(req: &Request) -> bool {
    matches!(
        req,
        Request::Logs { follow: true, .. }
            | Request::Exec { .. }
            | Request::Console { .. }
            | Request::Events { .. }
    )
}

/// Parses the words of `zonit ctl CMD` (`cmd` is a command of the
/// table in [`cli::COMMANDS`]).
fn command(cmd: &str, p: &mut lexopt::Parser) -> Result<Parsed, lexopt::Error> {
    let mut name: Option<String> = None;
    let mut argv: Vec<String> = Vec::new();
    let (mut json, mut follow, mut tty, mut read_only, mut force) =
        (false, false, false, false, false);
    let (mut lines, mut since_ms) = (None, None);
    let named = matches!(
        cmd,
        "start" | "stop" | "restart" | "logs" | "exec" | "console"
    );
    while let Some(arg) = p.next()? {
        match (cmd, arg) {
            (_, Short('h') | Long("help")) => return Ok(Parsed::Help(format!("ctl {cmd}"))),
            ("help", Value(v)) if name.is_none() => name = Some(v.string()?),
            ("status" | "events", Long("json")) => json = true,
            ("logs", Short('n') | Long("lines")) => lines = Some(p.value()?.parse()?),
            ("logs", Short('f') | Long("follow")) => follow = true,
            ("exec", Short('t') | Long("tty")) if name.is_none() => tty = true,
            ("console", Long("read-only")) => read_only = true,
            ("console", Long("force")) => force = true,
            ("events", Long("since")) => {
                let d =
                    parse_duration(&p.value()?.string()?).map_err(|e| format!("--since: {e}"))?;
                since_ms = Some(d.as_millis() as u64);
            }
            (_, Value(v)) if named && name.is_none() => {
                name = Some(v.string()?);
                if cmd == "exec" {
                    // The rest is the command's own, options and all.
                    for a in p.raw_args()? {
                        argv.push(a.into_string().map_err(|a| {
                            format!("argument {} is not valid UTF-8", a.to_string_lossy())
                        })?);
                    }
                    if argv.first().is_some_and(|a| a == "--") {
                        argv.remove(0);
                    }
                }
            }
            (_, arg) => return Err(arg.unexpected()),
        }
    }
    if cmd == "help" {
        return Ok(Parsed::Help(match name {
            Some(sub) => format!("ctl {sub}"),
            None => "ctl".into(),
        }));
    }
    let name = match name {
        Some(n) => n,
        None if named => return Err(format!("{cmd} needs a unit name").into()),
        None => String::new(),
    };
    let out = if json { Output::Json } else { Output::Plain };
    let req = match cmd {
        "status" => {
            let out = if json { Output::Json } else { Output::Table };
            return Ok(Parsed::Go(Request::Status {}, out));
        }
        "start" => Request::Start { name },
        "stop" => Request::Stop { name },
        "restart" => Request::Restart { name },
        "logs" => Request::Logs {
            name,
            lines,
            follow,
        },
        "exec" if argv.is_empty() => {
            return Err("exec needs a command: exec ZONE -- CMD [ARGS...]".into());
        }
        "exec" => Request::Exec {
            name,
            argv,
            // The size is the terminal's, read when the request goes.
            tty: tty.then_some(WindowSize { rows: 0, cols: 0 }),
        },
        "console" if read_only && force => {
            return Err("--read-only and --force exclude each other".into());
        }
        "console" => Request::Console {
            name,
            read_only,
            force,
        },
        "events" => Request::Events { since_ms },
        "reload" => Request::Reload {},
        "poweroff" => Request::Poweroff {},
        "reboot" => Request::Reboot {},
        "halt" => Request::Halt {},
        other => return Err(format!("unknown command `{other}`").into()),
    };
    Ok(Parsed::Go(req, out))
}

fn run(
    socket: &PathBuf,
    req: &Request,
    output: Output,
    timeout: Option<Duration>,
) -> std::io::Result<ExitCode> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(timeout)?;
    if let Request::Exec {
        name,
        argv,
        tty: Some(size),
    } = req
    {
        let done = terminal::exec(&mut stream, name.clone(), argv.clone(), *size)?;
        if let Some(code) = done {
            return Ok(code);
        }
        // No terminal came back: the agent's reply says why.
        return replies(stream, req, output, deadline);
    }
    if matches!(req, Request::Console { .. }) {
        return terminal::console(&mut stream, req);
    }
    let line = proto::encode_request(req);
    if matches!(req, Request::Exec { .. }) {
        // Our own stdio travels with the request: the command in the zone
        // reads and writes this terminal directly.
        let sent = crate::sys::socket::send_with_fds(stream.as_fd(), &line, &[0, 1, 2])?;
        stream.write_all(&line[sent..])?;
    } else {
        stream.write_all(&line)?;
    }
    replies(stream, req, output, deadline)
}

/// Prints the agent's replies to `req` until the last one (or the
/// `deadline`); returns the exit status they call for.
fn replies(
    stream: UnixStream,
    req: &Request,
    output: Output,
    deadline: Option<Instant>,
) -> std::io::Result<ExitCode> {
    let reader_stream = stream.try_clone()?;
    let mut reader = BufReader::new(reader_stream);
    let stdout = std::io::stdout();
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::TimedOut.into());
            }
            stream.set_read_timeout(Some(left))?;
        }
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches('\n');
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("zonit ctl: agent sent a line that is not JSON ({e}): {line}");
                return Ok(ExitCode::from(1));
            }
        };
        if v["ok"] != serde_json::Value::Bool(true) {
            let msg = v["error"].as_str().unwrap_or("unknown error");
            eprintln!("zonit ctl: {msg}");
            let code = v["exit"].as_i64().map_or(1, |c| c.clamp(1, 255) as u8);
            return Ok(ExitCode::from(code));
        }
        if let Some(text) = v["log"].as_str() {
            let mut out = stdout.lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            continue;
        }
        if let Some(e) = v.get("event") {
            let mut out = stdout.lock();
            match output {
                Output::Json => writeln!(out, "{e}")?,
                _ => match serde_json::from_value::<Event>(e.clone()) {
                    Ok(e) => writeln!(out, "{}", e.text())?,
                    Err(_) => writeln!(out, "{e}")?,
                },
            }
            out.flush()?;
            continue;
        }
        if v.get("end").is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(code) = v["exit"].as_i64() {
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        if let Some(units) = v.get("units") {
            match output {
                Output::Json => println!("{units}"),
                _ => {
                    let rows: Vec<UnitRow> =
                        serde_json::from_value(units.clone()).unwrap_or_default();
                    print!("{}", table(&rows));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(msg) = v["message"].as_str() {
            println!("{msg}");
        }
        if !streams(req) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Formats `status` rows as an aligned table.
pub fn table(rows: &[UnitRow]) -> String {
    let header = [
        "NAME",
        "KIND",
        "STATE",
        "PID",
        "RESTARTS",
        "UPTIME",
        "LAST EXIT",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mut last = r.last_exit.clone().unwrap_or_else(|| "-".into());
        if let Some(reason) = &r.reason {
            last = format!("{last} ({reason})");
        }
        if r.oom_kills > 0 {
            last = format!("{last} [{} OOM kill(s)]", r.oom_kills);
        }
        cells.push(vec![
            r.name.clone(),
            r.kind.clone(),
            match &r.health {
                Some(h) => format!("{} ({h})", r.state),
                None => r.state.clone(),
            },
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.restarts.to_string(),
            r.uptime_ms.map_or("-".into(), human_ms),
            last,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| cells.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in cells {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `words` as they would follow `zonit ctl`.
    fn parse(words: &[&str]) -> Result<(Request, Output), String> {
        let (cmd, rest) = words.split_first().ok_or("no command")?;
        let mut p = lexopt::Parser::from_args(rest.iter().copied());
        match command(cmd, &mut p).map_err(|e| e.to_string())? {
            Parsed::Go(req, out) => Ok((req, out)),
            Parsed::Help(path) => Err(format!("help for {path}")),
        }
    }

    #[test]
    fn parses_logs_options() {
        let (req, _) = parse(&["logs", "web", "-n", "5", "-f"]).unwrap();
        assert_eq!(
            req,
            Request::Logs {
                name: "web".into(),
                lines: Some(5),
                follow: true
            }
        );
    }

    #[test]
    fn parses_exec_with_and_without_separator() {
        let (req, _) = parse(&["exec", "web", "--", "ls", "-l"]).unwrap();
        assert_eq!(
            req,
            Request::Exec {
                name: "web".into(),
                argv: vec!["ls".into(), "-l".into()],
                tty: None,
            }
        );
        let (req, _) = parse(&["exec", "web", "id"]).unwrap();
        assert!(matches!(req, Request::Exec { argv, .. } if argv == ["id"]));
        assert!(parse(&["exec", "web", "--"]).is_err());
        let (req, _) = parse(&["exec", "-t", "web", "--", "sh"]).unwrap();
        assert!(
            matches!(req, Request::Exec { name, tty: Some(_), .. } if name == "web"),
            "-t asks for a terminal"
        );
        assert!(parse(&["exec", "-t"]).is_err());
    }

    #[test]
    fn parses_console_options() {
        let (req, _) = parse(&["console", "vm", "--read-only"]).unwrap();
        assert_eq!(
            req,
            Request::Console {
                name: "vm".into(),
                read_only: true,
                force: false
            }
        );
        assert!(parse(&["console"]).is_err());
        assert!(parse(&["console", "vm", "--read-only", "--force"]).is_err());
    }

    #[test]
    fn only_streams_go_without_a_default_timeout() {
        assert!(!streams(&parse(&["status"]).unwrap().0));
        assert!(!streams(&parse(&["stop", "a"]).unwrap().0));
        assert!(!streams(&parse(&["logs", "a"]).unwrap().0));
        assert!(streams(&parse(&["logs", "a", "-f"]).unwrap().0));
        assert!(streams(&parse(&["exec", "a", "--", "sh"]).unwrap().0));
        assert!(streams(&parse(&["events"]).unwrap().0));
    }

    #[test]
    fn parses_events_options() {
        let (req, out) = parse(&["events", "--json", "--since", "2m"]).unwrap();
        assert_eq!(
            req,
            Request::Events {
                since_ms: Some(120_000)
            }
        );
        assert!(matches!(out, Output::Json));
        let (req, _) = parse(&["events"]).unwrap();
        assert_eq!(req, Request::Events { since_ms: None });
        assert!(parse(&["events", "--since"]).is_err());
        assert!(parse(&["events", "--since", "soon"]).is_err());
        assert!(parse(&["events", "--xml"]).is_err());
    }

    #[test]
    fn rejects_missing_names_and_unknown_commands() {
        assert!(parse(&["stop"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["status", "--xml"]).is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![UnitRow {
            name: "web".into(),
            kind: "zone".into(),
            state: "running".into(),
            pid: Some(42),
            restarts: 3,
            uptime_ms: Some(61_000),
            last_exit: Some("exit 1".into()),
            reason: None,
            oom_kills: 0,
            health: None,
            addresses: vec![],
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  KIND  STATE    PID  RESTARTS  UPTIME  LAST EXIT"
        );
        assert_eq!(
            lines[1],
            "web   zone  running  42   3         1m1s    exit 1"
        );
    }

    #[test]
    fn the_table_shows_health_with_the_state() {
        let row = UnitRow {
            name: "db".into(),
            kind: "zone".into(),
            state: "running".into(),
            pid: Some(7),
            restarts: 0,
            uptime_ms: None,
            last_exit: None,
            reason: None,
            oom_kills: 0,
            health: Some("healthy".into()),
            addresses: vec![],
        };
        let t = table(&[row]);
        assert!(
            t.lines().nth(1).unwrap().contains("running (healthy)"),
            "{t}"
        );
    }
}
