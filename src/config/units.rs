//! Durations and sizes as the config file spells them.
//!
//! Durations are a decimal number followed by a unit, `ms`, `s`, `m` or `h`
//! (`"100ms"`, `"1.5s"`, `"5m"`); the unit is never optional, so `"10"` is an
//! error rather than a guess. Sizes are a whole number followed by a binary
//! unit, `K`, `M`, `G`, `T` or the same spelled `KiB`, `MiB`, `GiB`, `TiB`
//! (powers of 1024); a plain number of bytes is written as a TOML integer,
//! not as a string. Arithmetic is checked: a value that does not fit is an
//! error, never a wrap-around. Both parsers are pure and return messages
//! that are completed with the key and position by the caller.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration such as `"100ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"2h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Some(positive) = text.strip_prefix('-') {
        return Err(format!(
            "duration \"{text}\" is negative; durations are zero or more, as in \"{positive}\""
        ));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        "" if number.is_empty() => {
            return Err("duration is empty; write it like \"100ms\" or \"10s\"".into());
        }
        "" => {
            return Err(format!(
                "duration \"{text}\" has no unit; write it like \"{text}s\" (units: ms, s, m, h)"
            ));
        }
        _ => {
            return Err(format!(
                "duration \"{text}\" has an unknown unit \"{unit}\"; use ms, s, m or h, as in \"100ms\" or \"10s\""
            ));
        }
    };
    let nanos = scale_decimal(number, nanos_per_unit).map_err(|why| match why {
        DecimalError::Malformed => format!(
            "duration \"{text}\" is not a number followed by a unit; write it like \"100ms\", \"1.5s\" or \"5m\""
        ),
        DecimalError::Overflow => format!("duration \"{text}\" is too large"),
        DecimalError::Inexact => format!(
            "duration \"{text}\" is finer than a nanosecond, the smallest step zonit keeps"
        ),
    })?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC)
        .map_err(|_| format!("duration \"{text}\" is too large"))?;
    // The remainder of a division by 10^9 always fits in u32.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// Parses a size string such as `"64M"`, `"2G"`, `"512KiB"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "size \"{text}\" does not start with a whole number; write it like \"64M\" or \"2G\""
        ));
    }
    let shift = match unit {
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        "" => {
            return Err(format!(
                "size \"{text}\" has no unit; write it like \"{text}M\" (units: K, M, G, T), or give plain bytes as an integer without quotes"
            ));
        }
        _ => {
            return Err(format!(
                "size \"{text}\" has an unknown unit \"{unit}\"; use K, M, G or T (powers of 1024), as in \"64M\""
            ));
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("size \"{text}\" is too large"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

/// Formats `bytes` the way a person would write it in the config.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        let scale = 1u64 << shift;
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes} bytes")
}

enum DecimalError {
    Malformed,
    Overflow,
    Inexact,
}

/// `number * scale` for a non-negative decimal `number` ("12", "1.5", ".5"),
/// exactly, in integers: floats would turn "0.1s" into 99_999_999 ns.
fn scale_decimal(number: &str, scale: u128) -> Result<u128, DecimalError> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (number.contains('.') && frac.is_empty())
    {
        return Err(DecimalError::Malformed);
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| DecimalError::Overflow)?
    };
    let mut total = whole_value
        .checked_mul(scale)
        .ok_or(DecimalError::Overflow)?;
    // Each fractional digit is worth scale / 10^k; digits past the scale's
    // precision must be zero, or the value is not a whole number of units.
    let mut place = scale;
    for digit in frac.bytes() {
        let digit = u128::from(digit - b'0');
        if !place.is_multiple_of(10) {
            if digit != 0 {
                return Err(DecimalError::Inexact);
            }
            continue;
        }
        place /= 10;
        total = total
            .checked_add(digit * place)
            .ok_or(DecimalError::Overflow)?;
    }
    Ok(total)
}

// A failed test should stop right where it fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit_parse() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn fractional_durations_are_exact() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration(".25m"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
    }

    #[test]
    fn zero_duration_is_accepted() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
    }

    #[test]
    fn duration_without_unit_is_rejected_with_a_hint() {
        let err = parse_duration("10").unwrap_err();
        assert!(err.contains("no unit"), "{err}");
        assert!(err.contains("\"10s\""), "{err}");
    }

    #[test]
    fn duration_with_unknown_unit_or_junk_is_rejected() {
        assert!(
            parse_duration("10sec")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("10 s").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a number"));
        assert!(parse_duration("1.s").unwrap_err().contains("not a number"));
        assert!(
            parse_duration("1.2.3s")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_duration("").unwrap_err().contains("empty"));
    }

    #[test]
    fn duration_overflow_is_an_error_not_a_wrap() {
        assert!(
            parse_duration("99999999999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_duration("999999999999999999999999999999999999999999s")
                .unwrap_err()
                .contains("too large")
        );
        // Fits in u128 nanoseconds but not in Duration's u64 seconds.
        assert!(
            parse_duration("18446744073709551616s")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn a_negative_duration_is_called_negative() {
        let err = parse_duration("-5s").unwrap_err();
        assert!(err.contains("negative"), "{err}");
        assert!(err.contains("\"5s\""), "{err}");
    }

    #[test]
    fn sub_nanosecond_fractions_are_rejected_as_too_fine_not_too_large() {
        let err = parse_duration("0.0000000001ms").unwrap_err();
        assert!(err.contains("finer than a nanosecond"), "{err}");
        assert!(!err.contains("too large"), "{err}");
        assert!(parse_duration("0.0000000001s").is_err());
        assert_eq!(parse_duration("0.0000000010s"), Ok(Duration::from_nanos(1)));
    }

    #[test]
    fn sizes_use_powers_of_1024() {
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        assert_eq!(parse_size("0M"), Ok(0));
    }

    #[test]
    fn size_without_unit_or_with_a_bad_unit_is_rejected() {
        assert!(parse_size("1024").unwrap_err().contains("no unit"));
        assert!(parse_size("64MB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("64m").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.5G").unwrap_err().contains("unknown unit"));
        assert!(parse_size("M").unwrap_err().contains("whole number"));
        assert!(parse_size("").unwrap_err().contains("whole number"));
    }

    #[test]
    fn size_overflow_is_an_error() {
        assert!(parse_size("16777216T").unwrap_err().contains("too large"));
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
        assert!(
            parse_size("99999999999999999999K")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_format_in_the_largest_exact_unit() {
        assert_eq!(format_size(16 << 20), "16M");
        assert_eq!(format_size(1536), "1536 bytes");
        assert_eq!(format_size(2 << 30), "2G");
        assert_eq!(format_size(100), "100 bytes");
    }
}
