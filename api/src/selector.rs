//! The pool `nodeSelector` language (Calico's, the subset pools use): `all()`, `has(k)`, `k == 'v'`,
//! `k != 'v'`, `k in {'a','b'}`, `k not in {…}`, `!`, `&&`, `||` and parentheses.

use std::collections::BTreeMap;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    In(String, Vec<String>),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {input:?}: {reason}")]
pub struct ParseError {
    pub input: String,
    pub reason: String,
}

impl Selector {
    /// Whether `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k) == Some(v),
            Selector::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }

    /// Parses a selector; empty means `all()`.
    pub fn parse(input: &str) -> Result<Selector, ParseError> {
        let mut p = Parser { s: input.as_bytes(), i: 0 };
        p.ws();
        if p.i == p.s.len() {
            return Ok(Selector::All);
        }
        let sel = p.or().map_err(|reason| ParseError { input: input.into(), reason })?;
        p.ws();
        if p.i != p.s.len() {
            return Err(ParseError { input: input.into(), reason: format!("unexpected text at {}", p.i) });
        }
        Ok(sel)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, t: &str) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Selector, String> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, String> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, String> {
        if self.eat("!") && !self.s[self.i..].starts_with(b"=") {
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err("missing ')'".into());
            }
            return Ok(inner);
        }
        if self.eat("all()") {
            return Ok(Selector::All);
        }
        if self.eat("has(") {
            let k = self.key()?;
            if !self.eat(")") {
                return Err("missing ')' after has(".into());
            }
            return Ok(Selector::Has(k));
        }
        let k = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Eq(k, self.value()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Not(Box::new(Selector::Eq(k, self.value()?))));
        }
        if self.eat("not in") {
            return Ok(Selector::Not(Box::new(Selector::In(k, self.set()?))));
        }
        if self.eat("in") {
            return Ok(Selector::In(k, self.set()?));
        }
        Err(format!("expected an operator after {k:?}"))
    }

    fn key(&mut self) -> Result<String, String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || b"-_./".contains(&self.s[self.i])) {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("expected a label key at {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn value(&mut self) -> Result<String, String> {
        self.ws();
        let Some(&q) = self.s.get(self.i).filter(|c| **c == b'\'' || **c == b'"') else {
            return Err(format!("expected a quoted value at {}", self.i));
        };
        let start = self.i + 1;
        let end = self.s[start..].iter().position(|c| *c == q).ok_or("unterminated string")? + start;
        self.i = end + 1;
        Ok(String::from_utf8_lossy(&self.s[start..end]).into_owned())
    }

    fn set(&mut self) -> Result<Vec<String>, String> {
        if !self.eat("{") {
            return Err("expected '{'".into());
        }
        let mut out = Vec::new();
        if self.eat("}") {
            return Ok(out);
        }
        loop {
            out.push(self.value()?);
            if self.eat("}") {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err("expected ',' or '}'".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> =
            [("zone".to_string(), "a".to_string()), ("kubernetes.io/os".to_string(), "linux".to_string())].into();
        let m = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(m("all()"));
        assert!(m(""));
        assert!(m("zone == 'a'"));
        assert!(!m("zone != 'a'"));
        assert!(m("has(kubernetes.io/os) && zone in {'a', 'b'}"));
        assert!(m("zone == 'b' || !has(gpu)"));
        assert!(!m("zone not in {'a'}"));
        assert!(m("(zone == 'x' || zone == \"a\") && all()"));
        assert!(Selector::parse("zone ==").is_err());
        assert!(Selector::parse("zone == 'a' junk").is_err());
        assert!(Selector::parse("has(zone").is_err());
    }
}
