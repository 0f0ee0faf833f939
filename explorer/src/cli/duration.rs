//! Human durations for `--duration` (`30s`, `10m`, `2h`, `1d`, `1h30m`),
//! turned into the protocol's integer nanoseconds.

/// Nanoseconds of `s`, a sequence of `<number><unit>` with unit one of
/// `s`, `m`, `h`, `d`, `w`. Must be positive and fit an `i64`.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("duration {s:?}: {why} (examples: 30s, 10m, 2h, 1d, 1h30m)");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: i64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs: i64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "" => return Err(bad("every number needs a unit: s, m, h, d or w")),
            _ => return Err(bad(&format!("unknown unit {unit:?}: use s, m, h, d or w"))),
        };
        let ns = n
            .checked_mul(secs)
            .and_then(|v| v.checked_mul(1_000_000_000))
            .ok_or_else(|| bad("too long"))?;
        total = total.checked_add(ns).ok_or_else(|| bad("too long"))?;
    }
    if total <= 0 {
        return Err(bad("must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("30s").unwrap(), 30_000_000_000);
        assert_eq!(parse_duration("10m").unwrap(), 600_000_000_000);
        assert_eq!(parse_duration("1h").unwrap(), 3_600_000_000_000);
        assert_eq!(parse_duration("1d").unwrap(), 86_400_000_000_000);
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000_000_000);
    }

    #[test]
    fn refusals_say_why() {
        assert!(parse_duration("90").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("2y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("999999999999d")
            .unwrap_err()
            .contains("too long"));
    }
}
