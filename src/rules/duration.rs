//! Durations as marketers write them: `30s`, `15m`, `2h`, `3d`, `1w` (one unit, a whole number).

use chrono::Duration;

/// Parses `30s 15m 2h 3d 1w`. The error says what was expected, for `validate` hints.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let hint = || {
        format!(
            "invalid duration `{text}`: expected a whole number and a unit s, m, h, d or w (e.g. 30s, 15m, 2h, 3d, 1w)"
        )
    };
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(hint)?;
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().map_err(|_| hint())?;
    let d = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        "w" => Duration::try_weeks(n),
        _ => None,
    };
    d.ok_or_else(hint)
}

/// The inverse of [`parse_duration`], choosing the largest whole unit.
pub fn format_duration(d: Duration) -> String {
    let s = d.num_seconds();
    for (unit, len) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s != 0 && s % len == 0 {
            return format!("{}{unit}", s / len);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::seconds(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::minutes(15));
        assert_eq!(parse_duration("2h").unwrap(), Duration::hours(2));
        assert_eq!(parse_duration("3d").unwrap(), Duration::days(3));
        assert_eq!(parse_duration("1w").unwrap(), Duration::weeks(1));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "2",
            "h",
            "2 hours",
            "1.5h",
            "-3d",
            "3y",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::hours(48)), "2d");
        assert_eq!(format_duration(Duration::seconds(90)), "90s");
    }
}
