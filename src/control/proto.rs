//! The control protocol (documented in docs/control-protocol.md): one JSON
//! object per line, request then response(s), each with `"v": 1`.
//! This module is the pure codec; the server and client do the I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::sys::tty::WindowSize;

/// Protocol version spoken by this build.
pub const VERSION: u64 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// One row per unit.
    Status {},
    /// Start a unit.
    Start {
        /// Unit name.
        name: String,
    },
    /// Stop a unit; the reply comes once it is stopped.
    Stop {
        /// Unit name.
        name: String,
    },
    /// Restart a unit.
    Restart {
        /// Unit name.
        name: String,
    },
    /// A unit's captured output.
    Logs {
        /// Unit name.
        name: String,
        /// Only the last N lines.
        #[serde(default)]
        lines: Option<usize>,
        /// Keep streaming new output.
        #[serde(default)]
        follow: bool,
    },
    /// Run a command inside a running zone. Without `tty`, the caller's
    /// stdin, stdout and stderr travel with the request line as
    /// SCM_RIGHTS; with it, one socket does, on which the pseudo-terminal's
    /// master comes back. The final reply carries the command's exit
    /// status.
    Exec {
        /// Zone name.
        name: String,
        /// The command and its arguments.
        argv: Vec<String>,
        /// Run the command on a new terminal of this size.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tty: Option<WindowSize>,
    },
    /// Attach to a guest's serial console: its recent output, then what
    /// it prints, as `log` replies; a writer may send `input`.
    Console {
        /// Guest name.
        name: String,
        /// Watch only; any number of read-only clients may attach.
        #[serde(default)]
        read_only: bool,
        /// Take the console over from its current writer.
        #[serde(default)]
        force: bool,
    },
    /// Bytes for the guest's console, from its writer; no reply unless it
    /// is refused or input is being dropped.
    Input {
        /// One character per byte, U+0000 to U+00FF.
        data: String,
    },
    /// Stream events as they happen, after those of the last `since_ms`
    /// milliseconds the agent still keeps.
    Events {
        /// How far back to start.
        #[serde(default)]
        since_ms: Option<u64>,
    },
    /// Re-read the config.
    Reload {},
    /// Orderly power-off (PID 1 only).
    Poweroff {},
    /// Orderly reboot (PID 1 only).
    Reboot {},
    /// Orderly halt (PID 1 only).
    Halt {},
}

/// Why a request line could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or not an object.
    #[error("request is not a JSON object: {0}")]
    NotJson(String),
    /// `v` missing or not 1.
    #[error("unsupported protocol version {0}; this agent speaks \"v\": 1")]
    Version(String),
    /// Unknown command or bad fields.
    #[error("bad request: {0}")]
    Bad(String),
}

/// Decodes one request line.
pub fn decode(line: &[u8]) -> Result<Request, DecodeError> {
    let mut value: Value =
        serde_json::from_slice(line).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(DecodeError::NotJson("expected an object".into()));
    };
    match obj.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(other) => return Err(DecodeError::Version(other.to_string())),
        None => return Err(DecodeError::Version("(missing)".into())),
    }
    serde_json::from_value(value).map_err(|e| DecodeError::Bad(e.to_string()))
}

/// Encodes a request as a line (with newline).
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut v = serde_json::to_value(req).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("v".into(), json!(VERSION));
    }
    line(&v)
}

/// One row of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRow {
    /// Unit name.
    pub name: String,
    /// `zone` or `guest`.
    pub kind: String,
    /// State name.
    pub state: String,
    /// Host PID of the top process.
    pub pid: Option<i32>,
    /// Automatic restarts.
    pub restarts: u32,
    /// Milliseconds since the unit became ready, while running.
    pub uptime_ms: Option<u64>,
    /// Last end (`exit 3`, `signal SIGKILL`, `reboot`, ...).
    pub last_exit: Option<String>,
    /// Why the unit failed, if it did.
    #[serde(default)]
    pub reason: Option<String>,
    /// Times the kernel's OOM killer acted in the unit's cgroup.
    #[serde(default)]
    pub oom_kills: u64,
    /// What the health probes say (`starting`, `healthy`, `unhealthy`),
    /// while a unit with `health` has a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The unit's addresses on `[network.X]` bridges.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A success reply with extra fields.
pub fn ok(fields: Value) -> Vec<u8> {
    let mut v = json!({"v": VERSION, "ok": true});
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
        obj.extend(extra);
    }
    line(&v)
}

/// An error reply.
pub fn error(message: &str) -> Vec<u8> {
    line(&json!({"v": VERSION, "ok": false, "error": message}))
}

/// An error reply that also carries the exit status `zonit ctl` ends with
/// (an `exec` whose command could not be executed: 127 or 126).
pub fn error_with_exit(message: &str, exit: i32) -> Vec<u8> {
    line(&json!({"v": VERSION, "ok": false, "error": message, "exit": exit}))
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_command() {
        assert_eq!(decode(br#"{"v":1,"cmd":"status"}"#), Ok(Request::Status {}));
        assert_eq!(
            decode(br#"{"v":1,"cmd":"logs","name":"web","lines":5}"#),
            Ok(Request::Logs {
                name: "web".into(),
                lines: Some(5),
                follow: false
            })
        );
        assert_eq!(
            decode(br#"{"cmd":"stop","v":1,"name":"a"}"#),
            Ok(Request::Stop { name: "a".into() })
        );
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let r = Request::Logs {
            name: "x".into(),
            lines: None,
            follow: true,
        };
        let bytes = encode_request(&r);
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), Ok(r));
    }

    #[test]
    fn exec_carries_the_terminal_size_only_when_it_asks_for_a_terminal() {
        let tty = Request::Exec {
            name: "z".into(),
            argv: vec!["sh".into()],
            tty: Some(WindowSize { rows: 24, cols: 80 }),
        };
        let line = encode_request(&tty);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["tty"], json!({"rows": 24, "cols": 80}));
        assert_eq!(decode(&line[..line.len() - 1]), Ok(tty));
        let plain = encode_request(&Request::Exec {
            name: "z".into(),
            argv: vec!["sh".into()],
            tty: None,
        });
        let v: Value = serde_json::from_slice(&plain).unwrap();
        assert!(v.get("tty").is_none(), "{v}");
        for bad in [
            r#"{"v":1,"cmd":"exec","name":"z","argv":["sh"],"tty":{"rows":24}}"#,
            r#"{"v":1,"cmd":"exec","name":"z","argv":["sh"],"tty":{"rows":70000,"cols":80}}"#,
            r#"{"v":1,"cmd":"exec","name":"z","argv":["sh"],"tty":{"rows":1,"cols":2,"x":3}}"#,
        ] {
            assert!(
                matches!(decode(bad.as_bytes()), Err(DecodeError::Bad(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_garbage_wrong_version_and_unknown_fields() {
        assert!(matches!(decode(b"hello"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode(b"[1]"), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            decode(br#"{"v":2,"cmd":"status"}"#),
            Err(DecodeError::Version(_))
        ));
        assert!(matches!(
            decode(br#"{"cmd":"status"}"#),
            Err(DecodeError::Version(_))
        ));
        assert!(matches!(
            decode(br#"{"v":1,"cmd":"explode"}"#),
            Err(DecodeError::Bad(_))
        ));
        assert!(matches!(
            decode(br#"{"v":1,"cmd":"start"}"#),
            Err(DecodeError::Bad(_))
        ));
        assert!(matches!(
            decode(br#"{"v":1,"cmd":"status","extra":1}"#),
            Err(DecodeError::Bad(_))
        ));
    }

    #[test]
    fn replies_carry_version_and_ok() {
        let v: Value = serde_json::from_slice(&ok(json!({"a": 1}))).unwrap();
        assert_eq!(v, json!({"v": 1, "ok": true, "a": 1}));
        let v: Value = serde_json::from_slice(&error("nope")).unwrap();
        assert_eq!(v, json!({"v": 1, "ok": false, "error": "nope"}));
    }
}
