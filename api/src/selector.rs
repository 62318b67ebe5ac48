//! Calico's selector language, whole: what pools' `nodeSelector`, BGP peers and every policy selector
//! are written in.
//!
//! | form | true when |
//! |---|---|
//! | `all()` (or empty) | always |
//! | `global()` | the entity is not namespaced (meaningful only as an entity rule's `namespaceSelector`) |
//! | `has(k)` | label `k` is present |
//! | `k == 'v'` | `k` is present with value `v` |
//! | `k != 'v'` | `k` is absent or has another value |
//! | `k in {'a', 'b'}` | `k` is present with one of the values |
//! | `k not in {'a', 'b'}` | `k` is absent or has none of the values |
//! | `k contains 's'`, `k starts with 's'`, `k ends with 's'` | `k` is present and its value does so |
//! | `!e`, `e && e`, `e \|\| e`, `(e)` | negation, conjunction, disjunction, grouping (`!` binds tightest, then `&&`) |
//!
//! Strings are quoted with `'` or `"` and have no escapes; label keys are letters, digits and `-_./`;
//! a selector is at most [`MAX_LEN`] characters. [`Selector`]'s `Display` prints the canonical form
//! (one spelling per meaning of the parsed tree), which names the sets the dataplane builds from it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The longest selector accepted (Calico's limit).
pub const MAX_LEN: usize = 1024;

/// Where a selector reads an entity's labels: a map, or a view that adds implicit labels to one.
pub trait LabelSource {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSource for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    All,
    /// Not namespaced (global network sets).
    Global,
    Has(String),
    Eq(String, String),
    In(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
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
    /// Whether `labels` match (a namespaced entity: `global()` is false).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_entity(labels, false)
    }

    /// Whether an entity with `labels` matches; `global` says whether it is not namespaced.
    pub fn matches_entity(&self, labels: &BTreeMap<String, String>, global: bool) -> bool {
        self.matches_in(labels, global)
    }

    /// Whether an entity whose labels `labels` reads matches (a view adds implicit labels without
    /// copying the map); `global` says whether it is not namespaced.
    pub fn matches_in(&self, labels: &impl LabelSource, global: bool) -> bool {
        let get = |k: &String| labels.label(k);
        match self {
            Selector::All => true,
            Selector::Global => global,
            Selector::Has(k) => get(k).is_some(),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Selector::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(s) => !s.matches_in(labels, global),
            Selector::And(a, b) => a.matches_in(labels, global) && b.matches_in(labels, global),
            Selector::Or(a, b) => a.matches_in(labels, global) || b.matches_in(labels, global),
        }
    }

    /// `a && b`, simplified where one side is `all()`.
    pub fn and(a: Selector, b: Selector) -> Selector {
        match (a, b) {
            (Selector::All, x) | (x, Selector::All) => x,
            (a, b) => Selector::And(Box::new(a), Box::new(b)),
        }
    }

    /// The same selector over keys with `prefix` in front (how a ServiceAccount's labels are read on
    /// its pods: `k == 'v'` becomes `pcsa.k == 'v'`).
    pub fn prefixed(&self, prefix: &str) -> Selector {
        let k = |key: &String| format!("{prefix}{key}");
        match self {
            Selector::All => Selector::All,
            Selector::Global => Selector::Global,
            Selector::Has(key) => Selector::Has(k(key)),
            Selector::Eq(key, v) => Selector::Eq(k(key), v.clone()),
            Selector::In(key, vs) => Selector::In(k(key), vs.clone()),
            Selector::Contains(key, v) => Selector::Contains(k(key), v.clone()),
            Selector::StartsWith(key, v) => Selector::StartsWith(k(key), v.clone()),
            Selector::EndsWith(key, v) => Selector::EndsWith(k(key), v.clone()),
            Selector::Not(s) => Selector::Not(Box::new(s.prefixed(prefix))),
            Selector::And(a, b) => Selector::And(Box::new(a.prefixed(prefix)), Box::new(b.prefixed(prefix))),
            Selector::Or(a, b) => Selector::Or(Box::new(a.prefixed(prefix)), Box::new(b.prefixed(prefix))),
        }
    }

    /// Whether `global()` occurs anywhere in it.
    pub fn mentions_global(&self) -> bool {
        match self {
            Selector::Global => true,
            Selector::Not(s) => s.mentions_global(),
            Selector::And(a, b) | Selector::Or(a, b) => a.mentions_global() || b.mentions_global(),
            _ => false,
        }
    }

    /// A Kubernetes label selector (`matchLabels`, `matchExpressions` with In, NotIn, Exists,
    /// DoesNotExist) as a selector; an empty one is `all()`. An unknown operator is an error.
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Selector, ParseError> {
        let mut out = Selector::All;
        for (k, v) in ls.match_labels.iter().flatten() {
            out = Selector::and(out, Selector::Eq(k.clone(), v.clone()));
        }
        for e in ls.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let s = match e.operator.as_str() {
                "In" => Selector::In(e.key.clone(), values),
                "NotIn" => Selector::Not(Box::new(Selector::In(e.key.clone(), values))),
                "Exists" => Selector::Has(e.key.clone()),
                "DoesNotExist" => Selector::Not(Box::new(Selector::Has(e.key.clone()))),
                other => {
                    return Err(ParseError {
                        input: format!("{e:?}"),
                        reason: format!("unknown matchExpressions operator {other:?}"),
                    });
                }
            };
            out = Selector::and(out, s);
        }
        Ok(out)
    }

    /// Parses a selector; empty means `all()`.
    pub fn parse(input: &str) -> Result<Selector, ParseError> {
        let fail = |reason: String| ParseError { input: input.into(), reason };
        if input.chars().count() > MAX_LEN {
            return Err(fail(format!("longer than {MAX_LEN} characters")));
        }
        let mut p = Parser { s: input.as_bytes(), i: 0 };
        p.ws();
        if p.i == p.s.len() {
            return Ok(Selector::All);
        }
        let sel = p.or().map_err(fail)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(fail(format!("unexpected text at {}", p.i)));
        }
        Ok(sel)
    }
}

fn quote(s: &str) -> String {
    if s.contains('\'') { format!("\"{s}\"") } else { format!("'{s}'") }
}

impl fmt::Display for Selector {
    /// The canonical form: parsing it gives the same tree back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |vs: &[String]| vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ");
        // Operands of && and || are parenthesised unless they are atoms.
        let operand = |s: &Selector| match s {
            Selector::And(..) | Selector::Or(..) => format!("({s})"),
            _ => s.to_string(),
        };
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Global => write!(f, "global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::In(k, vs) => write!(f, "{k} in {{{}}}", set(vs)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(s) => match s.as_ref() {
                Selector::Eq(k, v) => write!(f, "{k} != {}", quote(v)),
                Selector::In(k, vs) => write!(f, "{k} not in {{{}}}", set(vs)),
                inner => write!(f, "!{}", operand(inner)),
            },
            Selector::And(a, b) => write!(f, "{} && {}", operand(a), operand(b)),
            Selector::Or(a, b) => write!(f, "{} || {}", operand(a), operand(b)),
        }
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

    /// A keyword operator: `t` followed by a character that cannot continue a word.
    fn eat_word(&mut self, t: &str) -> bool {
        self.ws();
        let rest = &self.s[self.i..];
        let ends = rest.get(t.len()).is_none_or(|c| !c.is_ascii_alphanumeric());
        if rest.starts_with(t.as_bytes()) && ends {
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
        self.ws();
        if self.s[self.i..].starts_with(b"!") && !self.s[self.i..].starts_with(b"!=") {
            self.i += 1;
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
        if self.eat("global()") {
            return Ok(Selector::Global);
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
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(format!("expected 'in' after {k:?} not"));
            }
            return Ok(Selector::Not(Box::new(Selector::In(k, self.set()?))));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(k, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(k, self.value()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(format!("expected 'with' after {k:?} starts"));
            }
            return Ok(Selector::StartsWith(k, self.value()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(format!("expected 'with' after {k:?} ends"));
            }
            return Ok(Selector::EndsWith(k, self.value()?));
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Calico's documented grammar, row by row: selector, labels, expected match.
    #[test]
    fn grammar_table() {
        let web = labels(&[("app", "web"), ("tier", "frontend"), ("kubernetes.io/os", "linux"), ("env", "prod-eu")]);
        let none = labels(&[]);
        let table: &[(&str, &BTreeMap<String, String>, bool)] = &[
            ("", &web, true),
            ("all()", &none, true),
            ("app == 'web'", &web, true),
            ("app == \"web\"", &web, true),
            ("app == 'db'", &web, false),
            ("app == 'web'", &none, false),
            ("app != 'db'", &web, true),
            ("app != 'web'", &web, false),
            ("app != 'web'", &none, true),
            ("app in {'web', 'db'}", &web, true),
            ("app in {}", &web, false),
            ("app in {'db'}", &none, false),
            ("app not in {'db', 'cache'}", &web, true),
            ("app not in {'web'}", &web, false),
            ("app not in {'web'}", &none, true),
            ("has(app)", &web, true),
            ("has(app)", &none, false),
            ("!has(app)", &none, true),
            ("! has(app)", &web, false),
            ("has(kubernetes.io/os)", &web, true),
            ("env contains 'od-e'", &web, true),
            ("env contains 'x'", &web, false),
            ("env contains ''", &none, false),
            ("env starts with 'prod'", &web, true),
            ("env starts with 'eu'", &web, false),
            ("env ends with '-eu'", &web, true),
            ("env ends with 'prod'", &web, false),
            ("env ends with 'eu'", &none, false),
            ("app == 'web' && tier == 'frontend'", &web, true),
            ("app == 'web' && tier == 'backend'", &web, false),
            ("app == 'db' || tier == 'frontend'", &web, true),
            ("app == 'db' || tier == 'backend'", &web, false),
            // && binds tighter than ||.
            ("app == 'db' && tier == 'x' || has(env)", &web, true),
            ("app == 'db' && (tier == 'x' || has(env))", &web, false),
            ("!(app == 'db' || app == 'cache')", &web, true),
            ("!!has(app)", &web, true),
            ("global()", &web, false),
            ("(((all())))", &web, true),
            ("app=='web'&&has(tier)", &web, true),
            ("a-b_c.d/e == 'x'", &labels(&[("a-b_c.d/e", "x")]), true),
            ("ins in {'a'}", &labels(&[("ins", "a")]), true),
            ("notes not in {'a'}", &labels(&[("notes", "b")]), true),
        ];
        for (sel, l, want) in table {
            let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(l), *want, "{sel} against {l:?}");
            // The canonical form parses to the same tree.
            assert_eq!(Selector::parse(&s.to_string()).unwrap(), s, "{sel} printed as {s}");
        }
        assert!(Selector::Global.matches_entity(&none, true));
        assert!(!Selector::parse("!global()").unwrap().matches_entity(&none, true));
    }

    #[test]
    fn bad_selectors() {
        for bad in [
            "app ==",
            "app == 'a' junk",
            "has(app",
            "app",
            "app = 'web'",
            "app in 'web'",
            "app in {'a' 'b'}",
            "app not {'a'}",
            "app starts 'x'",
            "app ends 'x'",
            "app == 'unterminated",
            "(app == 'a'",
            "app == 'a' &&",
            "|| app == 'a'",
            "&& has(a)",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad} must not parse");
        }
        let long = format!("app == '{}'", "x".repeat(MAX_LEN));
        assert!(Selector::parse(&long).unwrap_err().reason.contains("longer than"));
    }

    #[test]
    fn canonical_forms() {
        let c = |s: &str| Selector::parse(s).unwrap().to_string();
        assert_eq!(c("a=='1'&&(b!=\"2\"||!has(c))"), "a == '1' && (b != '2' || !has(c))");
        assert_eq!(c("a not in {'x','y'}"), "a not in {'x', 'y'}");
        assert_eq!(c("!(a == 'x')"), "a != 'x'");
        assert_eq!(c("v == \"it's\""), "v == \"it's\"");
        assert_eq!(c(""), "all()");
    }

    #[test]
    fn kubernetes_label_selectors() {
        let ls = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: Some(vec!["a".into()]) },
                LabelSelectorRequirement { key: "x".into(), operator: "NotIn".into(), values: Some(vec!["1".into()]) },
                LabelSelectorRequirement { key: "os".into(), operator: "Exists".into(), values: None },
                LabelSelectorRequirement { key: "gpu".into(), operator: "DoesNotExist".into(), values: None },
            ]),
        };
        let s = Selector::from_label_selector(&ls).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a"), ("os", "l")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("os", "l"), ("x", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("os", "l"), ("gpu", "")])));
        assert_eq!(Selector::from_label_selector(&LabelSelector::default()).unwrap(), Selector::All);
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Gt".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(Selector::from_label_selector(&bad).is_err());
    }
}
