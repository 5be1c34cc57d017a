//! Per-unit output capture: a fixed-capacity byte ring holding the newest
//! output, and a line splitter with a rate limit for what goes to the log.
//!
//! Invariants: a [`Ring`] never holds more than [`RING_CAPACITY`] bytes and
//! never allocates after creation; a [`LineSplitter`] holds at most
//! [`MAX_LINE`] bytes of an unfinished line.

use std::time::{Duration, Instant};

/// Bytes of output kept per unit.
pub const RING_CAPACITY: usize = 16 * 1024;
/// Longest line passed to the log; longer lines are cut into pieces.
pub const MAX_LINE: usize = 1024;

/// The newest [`RING_CAPACITY`] bytes a unit printed.
pub struct Ring {
    buf: Box<heapless::Deque<u8, RING_CAPACITY>>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            buf: Box::new(heapless::Deque::new()),
        }
    }
}

impl Ring {
    /// Appends `data`, dropping the oldest bytes when full.
    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(RING_CAPACITY)..];
        for &b in data {
            if self.buf.is_full() {
                self.buf.pop_front();
            }
            // Cannot fail: a slot was just freed.
            let _ = self.buf.push_back(b);
        }
    }

    /// The last `n` lines (all if `n` is `None`), oldest first. A partial
    /// first line (cut by the ring) is dropped when lines are counted.
    pub fn tail(&self, n: Option<usize>) -> Vec<u8> {
        let (a, b) = self.buf.as_slices();
        let mut all = Vec::with_capacity(a.len() + b.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        let Some(n) = n else {
            return all;
        };
        // Walk back over n newlines (ignoring a trailing one).
        let end = if all.last() == Some(&b'\n') {
            all.len() - 1
        } else {
            all.len()
        };
        let mut count = 0;
        let mut start = 0;
        for i in (0..end).rev() {
            if all[i] == b'\n' {
                count += 1;
                if count == n {
                    start = i + 1;
                    break;
                }
            }
        }
        if n == 0 {
            return Vec::new();
        }
        all.split_off(start)
    }
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; calls `emit` for every complete (or over-long) line,
    /// without its newline.
    pub fn feed(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        for &b in data {
            if b == b'\n' {
                emit(&self.partial);
                self.partial.clear();
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    emit(&self.partial);
                    self.partial.clear();
                }
            }
        }
    }

    /// Emits what is left of an unfinished line.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// A unit's output line as text safe to put in a log line: invalid UTF-8
/// becomes U+FFFD, and every control character (C0 but tab, DEL, C1) is
/// written as `\xNN` or `\u{NN}`, so a unit can neither move the cursor,
/// rewrite the line (`\r`) nor colour it on a terminal or console, and so
/// cannot forge a line that looks like zonit's own. The ring keeps the
/// raw bytes.
pub fn escape_line(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A token bucket: `burst` lines at once, refilled at `per_second`. The
/// notices that say how many lines were dropped take tokens too, and come
/// at most once per [`NOTICE_INTERVAL`], so a flooding unit never gets
/// more than the rate into the log, notices included.
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
    dropped: u64,
    last_notice: Option<Instant>,
}

/// Shortest time between two "lines not logged" notices of one unit.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(1);

impl RateLimit {
    /// A full bucket at time `now`.
    pub fn new(burst: u32, per_second: u32, now: Instant) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: now,
            dropped: 0,
            last_notice: None,
        }
    }

    /// Whether a line may pass at `now`, and whether a notice of the lines
    /// dropped before it is due (each costs a token).
    pub fn admit(&mut self, now: Instant) -> Admit {
        let dt = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + dt.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens < 1.0 {
            self.dropped += 1;
            return Admit::Drop;
        }
        let notice_due = self.dropped > 0
            && self
                .last_notice
                .is_none_or(|t| now.saturating_duration_since(t) >= NOTICE_INTERVAL);
        if !notice_due {
            self.tokens -= 1.0;
            return Admit::Pass { dropped: 0 };
        }
        self.last_notice = Some(now);
        let dropped = std::mem::take(&mut self.dropped);
        if self.tokens >= 2.0 {
            self.tokens -= 2.0;
            Admit::Pass { dropped }
        } else {
            // Room for the notice alone: this line is dropped in its turn.
            self.tokens -= 1.0;
            self.dropped = 1;
            Admit::Notice { dropped }
        }
    }
}

/// The verdict of [`RateLimit::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log the line; when `dropped` is not 0, first say that many lines
    /// were suppressed.
    Pass {
        /// Lines suppressed and not yet reported.
        dropped: u64,
    },
    /// Say that `dropped` lines were suppressed; suppress this one.
    Notice {
        /// Lines suppressed and not yet reported.
        dropped: u64,
    },
    /// Suppress the line.
    Drop,
}

/// Default burst of unit lines passed to the log.
pub const LOG_BURST: u32 = 200;
/// Default sustained rate of unit lines passed to the log.
pub const LOG_PER_SECOND: u32 = 100;
/// How long [`RateLimit`] needs to refill one token at the default rate.
pub const LOG_TOKEN_TIME: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_newest_bytes() {
        let mut r = Ring::default();
        r.push(&vec![b'a'; RING_CAPACITY]);
        r.push(b"xyz");
        let all = r.tail(None);
        assert_eq!(all.len(), RING_CAPACITY);
        assert!(all.ends_with(b"aaxyz"));
    }

    #[test]
    fn ring_tail_returns_last_n_lines() {
        let mut r = Ring::default();
        r.push(b"one\ntwo\nthree\n");
        assert_eq!(r.tail(Some(2)), b"two\nthree\n");
        assert_eq!(r.tail(Some(10)), b"one\ntwo\nthree\n");
        assert_eq!(r.tail(Some(0)), b"");
    }

    #[test]
    fn ring_push_larger_than_capacity_keeps_tail() {
        let mut r = Ring::default();
        let mut data = vec![b'a'; RING_CAPACITY * 2];
        data.extend_from_slice(b"end");
        r.push(&data);
        assert!(r.tail(None).ends_with(b"end"));
        assert_eq!(r.tail(None).len(), RING_CAPACITY);
    }

    #[test]
    fn splitter_emits_lines_and_cuts_long_ones() {
        let mut s = LineSplitter::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        s.feed(b"ab\ncd", |l| got.push(l.to_vec()));
        s.feed(b"e\n", |l| got.push(l.to_vec()));
        s.feed(&vec![b'x'; MAX_LINE + 5], |l| got.push(l.to_vec()));
        s.flush(|l| got.push(l.to_vec()));
        assert_eq!(got[0], b"ab");
        assert_eq!(got[1], b"cde");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3].len(), 5);
    }

    #[test]
    fn rate_limit_drops_past_burst_and_reports_the_count() {
        let t = Instant::now();
        let mut rl = RateLimit::new(2, 100, t);
        assert_eq!(rl.admit(t), Admit::Pass { dropped: 0 });
        assert_eq!(rl.admit(t), Admit::Pass { dropped: 0 });
        assert_eq!(rl.admit(t), Admit::Drop);
        assert_eq!(rl.admit(t), Admit::Drop);
        // One token: the notice takes it, the line waits.
        assert_eq!(rl.admit(t + LOG_TOKEN_TIME), Admit::Notice { dropped: 2 });
        assert_eq!(rl.admit(t + LOG_TOKEN_TIME * 3), Admit::Pass { dropped: 0 });
    }

    #[test]
    fn a_flood_gets_at_most_the_rate_into_the_log_notices_included() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(LOG_BURST, LOG_PER_SECOND, t0);
        let (mut logged, mut reported, mut passed) = (0u64, 0u64, 0u64);
        // 10 s of 10,000 lines a second.
        let total = 100_000u64;
        for i in 0..total {
            let now = t0 + Duration::from_micros(i * 100);
            match rl.admit(now) {
                Admit::Pass { dropped } => {
                    passed += 1;
                    logged += 1 + u64::from(dropped > 0);
                    reported += dropped;
                }
                Admit::Notice { dropped } => {
                    logged += 1;
                    reported += dropped;
                }
                Admit::Drop => {}
            }
        }
        let limit = u64::from(LOG_BURST) + 10 * u64::from(LOG_PER_SECOND) + 1;
        assert!(logged <= limit, "{logged} log lines in 10 s, limit {limit}");
        assert!(passed > 900, "the flood still gets lines through: {passed}");
        // Every line is either logged or counted in a notice (the last
        // drops are reported with the next line).
        assert!(passed + reported + rl.dropped == total);
    }

    #[test]
    fn control_characters_are_escaped_in_log_lines() {
        assert_eq!(
            escape_line(b"ok\rzonit: error: forged\x1b[31m"),
            "ok\\x0dzonit: error: forged\\x1b[31m"
        );
        assert_eq!(escape_line(b"tab\tkept \x7f"), "tab\tkept \\x7f");
        assert_eq!(escape_line("csi \u{9b}2J".as_bytes()), "csi \\u{9b}2J");
        assert_eq!(escape_line(b"bad \xff utf8"), "bad \u{fffd} utf8");
    }
}
