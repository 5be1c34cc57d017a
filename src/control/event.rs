//! Events of `zonit ctl events`: what one looks like on the wire (a JSON
//! object) and to a person (one line of text). Pure: the agent makes them,
//! the client prints them.

use serde::{Deserialize, Serialize};

/// One thing that happened on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in UTC, RFC 3339 with milliseconds (`2026-11-29T23:40:00.123Z`).
    pub ts: String,
    /// When, in milliseconds since the Unix epoch (what `since` compares).
    pub ts_ms: u64,
    /// What: `starting`, `running`, `stopping`, `stopped`, `exited`,
    /// `restarting`, `failed`, `health`, `oom`, `reload`, `shutdown`.
    pub event: String,
    /// The unit it happened to; none for host events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `exited`: how the process ended (`exit 3`, `signal SIGKILL`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// `restarting`: milliseconds until the restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `health`: what the unit's health probes now say: `starting`,
    /// `healthy` or `unhealthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// `oom`: the unit's OOM kills so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// `failed` and `health` (unhealthy): why; `reload`: its outcome;
    /// `shutdown`: what it ends in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Event {
    /// An event named `event` at `ts_ms`, with no details yet.
    pub fn new(ts_ms: u64, event: &str, unit: Option<&str>) -> Event {
        Event {
            ts: rfc3339(ts_ms),
            ts_ms,
            event: event.into(),
            unit: unit.map(Into::into),
            end: None,
            delay_ms: None,
            health: None,
            oom_kills: None,
            message: None,
        }
    }

    /// The one-line text form: time, unit (or `host`), event, details.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} {} {}",
            self.ts,
            self.unit.as_deref().unwrap_or("host"),
            self.event
        );
        if let Some(end) = &self.end {
            out.push_str(&format!(" ({end})"));
        }
        if let Some(h) = &self.health {
            out.push(' ');
            out.push_str(h);
        }
        if let Some(ms) = self.delay_ms {
            out.push_str(&format!(" in {ms}ms"));
        }
        if let Some(n) = self.oom_kills {
            out.push_str(&format!(" ({n} OOM kill(s) so far)"));
        }
        if let Some(msg) = &self.message {
            out.push_str(&format!(": {msg}"));
        }
        out
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the
/// era-based conversion: 400-year eras of 146097 days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789.
        assert_eq!(rfc3339(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_restart_event_encodes_as_one_json_line_without_empty_fields() {
        let mut e = Event::new(1_000, "restarting", Some("web"));
        e.delay_ms = Some(250);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"ts":"1970-01-01T00:00:01.000Z","ts_ms":1000,"event":"restarting","unit":"web","delay_ms":250}"#
        );
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            back.text(),
            "1970-01-01T00:00:01.000Z web restarting in 250ms"
        );
    }

    #[test]
    fn a_health_event_encodes_its_state_in_the_health_key() {
        let mut e = Event::new(2_000, "health", Some("db"));
        e.health = Some("healthy".into());
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"ts":"1970-01-01T00:00:02.000Z","ts_ms":2000,"event":"health","unit":"db","health":"healthy"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        assert_eq!(e.text(), "1970-01-01T00:00:02.000Z db health healthy");
    }

    #[test]
    fn text_names_the_host_and_carries_each_detail() {
        let mut e = Event::new(0, "exited", Some("db"));
        e.end = Some("signal SIGKILL".into());
        assert_eq!(
            e.text(),
            "1970-01-01T00:00:00.000Z db exited (signal SIGKILL)"
        );
        let mut r = Event::new(0, "reload", None);
        r.message = Some("reloaded: 1 added, 0 changed, 0 removed".into());
        assert_eq!(
            r.text(),
            "1970-01-01T00:00:00.000Z host reload: reloaded: 1 added, 0 changed, 0 removed"
        );
        let mut h = Event::new(0, "health", Some("db"));
        h.health = Some("unhealthy".into());
        h.message = Some("health probe failed 3 times in a row".into());
        assert_eq!(
            h.text(),
            "1970-01-01T00:00:00.000Z db health unhealthy: health probe failed 3 times in a row"
        );
        let mut o = Event::new(0, "oom", Some("web"));
        o.oom_kills = Some(2);
        assert!(o.text().ends_with("web oom (2 OOM kill(s) so far)"));
    }
}
