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

/// A token bucket: `burst` lines at once, refilled at `per_second`.
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
    dropped: u64,
}

impl RateLimit {
    /// A full bucket at time `now`.
    pub fn new(burst: u32, per_second: u32, now: Instant) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: now,
            dropped: 0,
        }
    }

    /// Whether a line may pass at `now`. When lines were dropped and the
    /// bucket has refilled, returns how many were dropped first, so the
    /// caller can say so.
    pub fn admit(&mut self, now: Instant) -> Admit {
        let dt = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + dt.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            let dropped = std::mem::take(&mut self.dropped);
            Admit::Pass { dropped }
        } else {
            self.dropped += 1;
            Admit::Drop
        }
    }
}

/// The verdict of [`RateLimit::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log the line; `dropped` lines were suppressed before it.
    Pass {
        /// Lines suppressed since the last one that passed.
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
        assert_eq!(rl.admit(t + LOG_TOKEN_TIME), Admit::Pass { dropped: 2 });
    }
}
