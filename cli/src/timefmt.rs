//! Times as the tables print them: kubectl's ages (`5m`) and calicoctl's SINCE (`08:27:05`, or a date).

use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Parses an RFC 3339 time such as `2026-01-02T03:04:05Z`.
pub fn parse(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// kubectl's short age: `45s`, `12m`, `3h`, `5d`.
pub fn age(then: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(then).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// How long ago, for sentences: `3m20s`.
pub fn elapsed(then: Timestamp, now: Timestamp) -> SignedDuration {
    now.duration_since(then)
}

/// calicoctl's SINCE: the time of day when `then` is today in `tz`, else the date.
pub fn since(then: Timestamp, now: Timestamp, tz: &TimeZone) -> String {
    let (then, now) = (then.to_zoned(tz.clone()), now.to_zoned(tz.clone()));
    if then.date() == now.date() {
        then.strftime("%H:%M:%S").to_string()
    } else {
        then.strftime("%Y-%m-%d").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_since() {
        let now = parse("2026-03-04T10:00:00Z").unwrap();
        assert_eq!(age(parse("2026-03-04T09:59:15Z").unwrap(), now), "45s");
        assert_eq!(age(parse("2026-03-04T09:48:00Z").unwrap(), now), "12m");
        assert_eq!(age(parse("2026-03-04T07:00:00Z").unwrap(), now), "3h");
        assert_eq!(age(parse("2026-02-27T10:00:00Z").unwrap(), now), "5d");
        assert_eq!(age(parse("2026-03-04T10:00:09Z").unwrap(), now), "0s");
        assert_eq!(since(parse("2026-03-04T08:27:05Z").unwrap(), now, &TimeZone::UTC), "08:27:05");
        assert_eq!(since(parse("2026-03-01T08:27:05Z").unwrap(), now, &TimeZone::UTC), "2026-03-01");
        assert!(parse("yesterday").is_none());
        assert_eq!(elapsed(parse("2026-03-04T09:59:00Z").unwrap(), now).as_secs(), 60);
    }
}
