//! Go-style durations (`90s`, `2m`, `1h30m`, `500ms`), as Calico's metav1.Duration fields take them:
//! [`RULE`] is the CEL rule the API server checks them with, [`parse_secs`] how the agent reads them.

/// The CEL rule of a duration field.
pub(crate) const RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";

/// Parses a Go-style duration (`120s`, `2m`, `1m30s`, `500ms`) into whole seconds.
pub fn parse_secs(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += v * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        any = true;
    }
    (any && num.is_empty()).then_some(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_secs("120s"), Some(120));
        assert_eq!(parse_secs("2m"), Some(120));
        assert_eq!(parse_secs("1m30s"), Some(90));
        assert_eq!(parse_secs("1500ms"), Some(2));
        assert_eq!(parse_secs("1.5h"), Some(5400));
        assert_eq!(parse_secs("12"), None);
        assert_eq!(parse_secs("3x"), None);
    }
}
