//! `nft -j list table` output, read as far as the writer reads it (the drift check every resync): sets
//! and maps with their elements, chains with their hooks, rules with their chain and comment. Everything
//! else (the rules' expressions, the table, `metainfo`) is skipped by the parser without being built,
//! names are borrowed from the text, and a set's elements are converted one at a time as they are read.
//!
//! The reader used to build a `serde_json::Value` of the whole listing first: for a table of 1,000
//! policies (2,000 sets, 3,000 rules) that tree was tens of megabytes of small blocks every read, which is
//! what kept the agent's heap fragmented long after each read was freed.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, SeqAccess, Visitor};
use serde_json::Value;

use super::nft::Element;

/// The objects of a listing, in the order nft prints them.
#[derive(Debug, Deserialize)]
pub struct Listing<'a> {
    #[serde(borrow)]
    pub nftables: Vec<Object<'a>>,
}

/// One object of a listing: at most one of these is set; kinds the agent does not read are none of them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Object<'a> {
    #[serde(borrow)]
    pub set: Option<SetJson<'a>>,
    #[serde(borrow)]
    pub map: Option<SetJson<'a>>,
    #[serde(borrow)]
    pub chain: Option<ChainJson<'a>>,
    #[serde(borrow)]
    pub rule: Option<RuleJson<'a>>,
}

/// A set or a map.
#[derive(Debug, Deserialize)]
pub struct SetJson<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// A concatenation's type is a list of types.
    #[serde(rename = "type", default, deserialize_with = "type_text")]
    pub ty: String,
    /// A map's value type.
    #[serde(default)]
    pub map: Option<String>,
    #[serde(rename = "flags", default, deserialize_with = "flags")]
    pub interval: bool,
    #[serde(default, deserialize_with = "elements")]
    pub elem: BTreeSet<Element>,
}

/// A chain; a base chain has a hook.
#[derive(Debug, Deserialize)]
pub struct ChainJson<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(rename = "type", default)]
    pub ty: Option<String>,
    #[serde(default)]
    pub hook: Option<String>,
    #[serde(default)]
    pub prio: Option<i64>,
    #[serde(default)]
    pub policy: Option<String>,
}

/// A rule: where it is and its comment (its expressions are skipped).
#[derive(Debug, Deserialize)]
pub struct RuleJson<'a> {
    #[serde(borrow)]
    pub chain: Cow<'a, str>,
    #[serde(borrow, default)]
    pub comment: Option<Cow<'a, str>>,
}

/// Parses a listing.
pub fn parse(json: &str) -> Result<Listing<'_>, serde_json::Error> {
    serde_json::from_str(json)
}

/// `"ipv4_addr"` or `["ipv4_addr", "inet_proto", "inet_service"]` as written: `a . b . c`.
fn type_text<'de, D: de::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ty {
        One(String),
        Concat(Vec<String>),
    }
    Ok(match Ty::deserialize(d)? {
        Ty::One(s) => s,
        Ty::Concat(parts) => parts.join(" . "),
    })
}

/// Whether the flags (a list, or one flag as a string) include `interval`.
fn flags<'de, D: de::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flags<'a> {
        One(#[serde(borrow)] Cow<'a, str>),
        Many(#[serde(borrow)] Vec<Cow<'a, str>>),
    }
    Ok(match Flags::deserialize(d)? {
        Flags::One(f) => f == "interval",
        Flags::Many(fs) => fs.iter().any(|f| f == "interval"),
    })
}

/// A set's elements, each converted as it is read (an element nft prints in a form the writer never
/// writes is left out: the next commit then adds it again, the way it repairs any drift).
fn elements<'de, D: de::Deserializer<'de>>(d: D) -> Result<BTreeSet<Element>, D::Error> {
    struct Elements;
    impl<'de> Visitor<'de> for Elements {
        type Value = BTreeSet<Element>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of set elements")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeSet::new();
            while let Some(v) = seq.next_element::<Value>()? {
                out.extend(element(&v));
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Elements)
}

fn scalar(v: &Value) -> Option<Cow<'_, str>> {
    v.as_str().map(Cow::Borrowed).or_else(|| v.as_i64().map(|n| Cow::Owned(n.to_string())))
}

/// One element as nft prints it, in the writer's syntax.
fn element(e: &Value) -> Option<Element> {
    if let Some(s) = e.as_str() {
        return Some(Element::raw(s));
    }
    if let Some(parts) = e.get("concat").and_then(Value::as_array) {
        let parts: Option<Vec<Cow<str>>> = parts.iter().map(scalar).collect();
        return Some(Element::raw(parts?.join(" . ")));
    }
    // A map element: [key, verdict].
    if let Some([k, v]) = e.as_array().map(Vec::as_slice) {
        let key = element(k)?;
        let verdict = ["goto", "jump"]
            .iter()
            .find_map(|t| v.get(t).and_then(|x| x.get("target")).and_then(Value::as_str).map(|c| format!("{t} {c}")))
            .or_else(|| v.as_object().and_then(|o| o.keys().next().cloned()))?;
        return Some(Element::map_entry(key.as_str(), &verdict));
    }
    if let Some(p) = e.get("prefix") {
        let addr = p.get("addr")?.as_str()?;
        let len = p.get("len")?.as_u64()?;
        return Some(Element::raw(format!("{addr}/{len}")));
    }
    if let Some(r) = e.get("range").and_then(Value::as_array) {
        return Some(Element::raw(format!("{}-{}", r.first()?.as_str()?, r.get(1)?.as_str()?)));
    }
    if let Some(inner) = e.get("elem") {
        return element(inner.get("val").unwrap_or(inner));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_read_without_its_expressions() {
        let j = r#"{"nftables":[{"metainfo":{"version":"1.0.6","json_schema_version":1}},
          {"table":{"family":"inet","name":"tabby","handle":3}},
          {"set":{"family":"inet","name":"s\"1","table":"tabby","type":"ipv4_addr","flags":"interval",
            "elem":[{"prefix":{"addr":"10.0.0.0","len":16}},"10.9.9.9",{"elem":{"val":"10.1.1.1","counter":{"packets":1,"bytes":2}}}]}},
          {"chain":{"family":"inet","table":"tabby","name":"input","handle":1,"type":"filter","hook":"input","prio":0,"policy":"accept"}},
          {"rule":{"family":"inet","table":"tabby","chain":"input","handle":7,"comment":"tabby:0a",
            "expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"tby1"}},
                    {"counter":"named"},{"counter":{"packets":12,"bytes":720}},{"drop":null}]}},
          {"rule":{"family":"inet","table":"tabby","chain":"input","handle":8,"expr":[{"accept":null}]}}]}"#;
        let l = parse(j).unwrap();
        assert_eq!(l.nftables.len(), 6);
        let set = l.nftables[2].set.as_ref().unwrap();
        assert_eq!(set.name, "s\"1", "an escaped name is unescaped");
        assert!(set.interval, "a single flag as a string");
        let elems: Vec<&str> = set.elem.iter().map(Element::as_str).collect();
        assert_eq!(elems, vec!["10.0.0.0/16", "10.1.1.1", "10.9.9.9"]);
        let chain = l.nftables[3].chain.as_ref().unwrap();
        assert_eq!((chain.hook.as_deref(), chain.prio), (Some("input"), Some(0)));
        let rule = l.nftables[4].rule.as_ref().unwrap();
        assert!(matches!(rule.chain, Cow::Borrowed("input")), "names are borrowed from the text");
        assert_eq!(rule.comment.as_deref(), Some("tabby:0a"));
        let bare = l.nftables[5].rule.as_ref().unwrap();
        assert_eq!(bare.comment, None);
        assert!(l.nftables[0].set.is_none() && l.nftables[0].rule.is_none(), "metainfo is none of them");
        assert!(parse("nope").is_err());
    }
}
