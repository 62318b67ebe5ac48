//! An inverted index of the endpoints' labels (pure): which endpoints carry `key=value`, which carry
//! `key`, which live in a namespace, which have a named port. A selector's candidates are read from it
//! ([`Index::selector`]); the caller confirms each with the full match, so the index only has to be a
//! superset, never exact. It is what makes [`compile`](super::model::compile) cost the size of what the
//! policies select instead of policies × pods.
//!
//! | selector | candidates |
//! |---|---|
//! | `k == 'v'`, `k in {…}`, `has(k)` | the lists of those pairs or that key |
//! | `a && b` | the intersection (or the one side that narrows) |
//! | `a \|\| b` | the union, when both sides narrow |
//! | `global()` | none (endpoints are namespaced) |
//! | anything else (`!`, `!=`, `contains`, `all()`) | every endpoint |

use std::collections::HashMap;
use std::sync::Arc;

use super::model::{
    Cluster, Endpoint, LABEL_NAMESPACE, LABEL_ORCHESTRATOR, LABEL_SERVICE_ACCOUNT, NsScope, PeerSel, SA_LABEL_PREFIX,
    Subject,
};
use crate::selector::Selector;

/// Endpoint positions, ascending; `All` when a selector does not narrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postings {
    All,
    Some(Vec<u32>),
}

impl Postings {
    /// Both: the intersection, or the side that narrows.
    pub fn and(self, other: Postings) -> Postings {
        match (self, other) {
            (Postings::All, x) | (x, Postings::All) => x,
            (Postings::Some(a), Postings::Some(b)) => Postings::Some(intersect(&a, &b)),
        }
    }

    /// Either: the union, `All` unless both narrow.
    pub fn or(self, other: Postings) -> Postings {
        match (self, other) {
            (Postings::Some(a), Postings::Some(b)) => Postings::Some(union(&a, &b)),
            _ => Postings::All,
        }
    }
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(a.len() + b.len()));
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
                *x
            }
            (Some(x), Some(y)) if x < y => {
                i += 1;
                *x
            }
            (Some(x), None) => {
                i += 1;
                *x
            }
            (_, Some(y)) => {
                j += 1;
                *y
            }
            (None, None) => break,
        };
        out.push(next);
    }
    out
}

/// The index of a slice of endpoints (positions are indices into it).
#[derive(Debug, Default)]
pub struct Index<'a> {
    endpoints: &'a [Arc<Endpoint>],
    pairs: HashMap<(&'a str, &'a str), Vec<u32>>,
    keys: HashMap<&'a str, Vec<u32>>,
    /// The ServiceAccounts' labels (keys without [`SA_LABEL_PREFIX`]).
    sa_pairs: HashMap<(&'a str, &'a str), Vec<u32>>,
    sa_keys: HashMap<&'a str, Vec<u32>>,
    namespaces: HashMap<&'a str, Vec<u32>>,
    ports: HashMap<&'a str, Vec<u32>>,
}

impl<'a> Index<'a> {
    /// Indexes every label selectors see on each endpoint: its own and the implicit ones
    /// (as [`EndpointLabels`](super::model::EndpointLabels) reads them).
    pub fn new(endpoints: &'a [Arc<Endpoint>]) -> Index<'a> {
        let mut x = Index { endpoints, ..Index::default() };
        for (i, e) in endpoints.iter().enumerate() {
            let i = i as u32;
            let implicit = |k: &str| {
                k == LABEL_NAMESPACE
                    || k == LABEL_ORCHESTRATOR
                    || (k == LABEL_SERVICE_ACCOUNT && e.service_account.is_some())
                    || k.starts_with(SA_LABEL_PREFIX)
            };
            for (k, v) in &e.sa_labels {
                x.sa_pairs.entry((k.as_str(), v.as_str())).or_default().push(i);
                x.sa_keys.entry(k.as_str()).or_default().push(i);
            }
            let own = e.labels.iter().filter(|(k, _)| !implicit(k));
            let sa = e.service_account.as_deref().map(|s| (LABEL_SERVICE_ACCOUNT, s));
            let all = own.chain([(LABEL_NAMESPACE, e.namespace.as_str()), (LABEL_ORCHESTRATOR, "k8s")]).chain(sa);
            for (k, v) in all {
                x.pairs.entry((k, v)).or_default().push(i);
                x.keys.entry(k).or_default().push(i);
            }
            x.namespaces.entry(e.namespace.as_str()).or_default().push(i);
            let mut names: Vec<&str> = e.ports.iter().map(|p| p.name.as_str()).collect();
            names.dedup();
            for n in names {
                let list = x.ports.entry(n).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        x
    }

    fn list(v: Option<&Vec<u32>>) -> Postings {
        Postings::Some(v.cloned().unwrap_or_default())
    }

    /// The endpoints with label `k` = `v` (a `pcsa.` key: their ServiceAccount's label).
    fn pair(&self, k: &str, v: &str) -> Postings {
        Self::list(match k.strip_prefix(SA_LABEL_PREFIX) {
            Some(k) => self.sa_pairs.get(&(k, v)),
            None => self.pairs.get(&(k, v)),
        })
    }

    /// A superset of the endpoints `s` matches.
    pub fn selector(&self, s: &Selector) -> Postings {
        match s {
            Selector::Eq(k, v) => self.pair(k, v),
            Selector::In(k, vs) => vs.iter().map(|v| self.pair(k, v)).fold(Postings::Some(vec![]), Postings::or),
            Selector::Has(k) => Self::list(match k.strip_prefix(SA_LABEL_PREFIX) {
                Some(k) => self.sa_keys.get(k),
                None => self.keys.get(k.as_str()),
            }),
            Selector::Global => Postings::Some(vec![]),
            Selector::And(a, b) => self.selector(a).and(self.selector(b)),
            Selector::Or(a, b) => self.selector(a).or(self.selector(b)),
            _ => Postings::All,
        }
    }

    /// A superset of the endpoints in namespace scope `scope`.
    pub fn scope(&self, c: &Cluster, scope: &NsScope) -> Postings {
        match scope {
            NsScope::Any => Postings::All,
            NsScope::Same(n) => Self::list(self.namespaces.get(n.as_str())),
            NsScope::Select(s) => self.namespaces_matching(c, s),
        }
    }

    /// The endpoints of the namespaces `s` selects.
    fn namespaces_matching(&self, c: &Cluster, s: &Selector) -> Postings {
        if *s == Selector::All {
            return Postings::All;
        }
        let mut v: Vec<u32> = self
            .namespaces
            .iter()
            .filter(|(ns, _)| s.matches_in(&c.namespace_view(ns), false))
            .flat_map(|(_, l)| l.iter().copied())
            .collect();
        v.sort_unstable();
        Postings::Some(v)
    }

    /// A superset of the endpoints peer selector `p` matches.
    pub fn peer(&self, c: &Cluster, p: &PeerSel) -> Postings {
        self.selector(&p.selector).and(self.scope(c, &p.scope))
    }

    /// A superset of the endpoints a policy's subject selects.
    pub fn subject(&self, c: &Cluster, s: &Subject) -> Postings {
        let ns = match &s.namespace {
            Some(n) => Self::list(self.namespaces.get(n.as_str())),
            None => Postings::All,
        };
        self.selector(&s.selector).and(ns).and(self.namespaces_matching(c, &s.namespace_selector))
    }

    /// The endpoints with a port named `name`.
    pub fn with_port(&self, name: &str) -> Vec<u32> {
        self.ports.get(name).cloned().unwrap_or_default()
    }

    /// The endpoints of `p` (every one for `All`).
    pub fn endpoints(&self, p: Postings) -> Box<dyn Iterator<Item = &'a Endpoint> + 'a> {
        let eps = self.endpoints;
        match p {
            Postings::All => Box::new(eps.iter().map(|e| &**e)),
            Postings::Some(v) => Box::new(v.into_iter().map(move |i| &*eps[i as usize])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ns: &str, name: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            service_account: Some("default".into()),
            ..Endpoint::default()
        }
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn candidates_are_a_superset_and_narrow_where_they_can() {
        let eps = vec![
            ep("a", "0", &[("app", "web"), ("tier", "front")]),
            ep("a", "1", &[("app", "db")]),
            ep("b", "2", &[("app", "web")]),
            ep("b", "3", &[(LABEL_NAMESPACE, "forged")]),
        ];
        let eps: Vec<Arc<Endpoint>> = eps.into_iter().map(Arc::new).collect();
        let x = Index::new(&eps);
        let c = Cluster { endpoints: eps.clone(), ..Cluster::default() };
        let cases = [
            ("app == 'web'", Postings::Some(vec![0, 2])),
            ("app in {'db', 'web'}", Postings::Some(vec![0, 1, 2])),
            ("has(tier)", Postings::Some(vec![0])),
            ("app == 'web' && has(tier)", Postings::Some(vec![0])),
            ("app == 'db' || tier == 'front'", Postings::Some(vec![0, 1])),
            ("app == 'db' || app != 'x'", Postings::All),
            ("app != 'web'", Postings::All),
            ("app == 'none'", Postings::Some(vec![])),
            // Implicit labels win over a pod's own label of the same key.
            ("projectcalico.org/namespace == 'forged'", Postings::Some(vec![])),
            ("projectcalico.org/namespace == 'b'", Postings::Some(vec![2, 3])),
            ("projectcalico.org/serviceaccount == 'default'", Postings::Some(vec![0, 1, 2, 3])),
        ];
        for (s, want) in cases {
            let s = sel(s);
            let got = x.selector(&s);
            assert_eq!(got, want, "{s}");
            // Whatever it returns, every true match is among the candidates.
            for (i, e) in eps.iter().enumerate() {
                if s.matches_in(&super::super::model::EndpointLabels(e), false) {
                    assert!(
                        matches!(&got, Postings::All) || matches!(&got, Postings::Some(v) if v.contains(&(i as u32)))
                    );
                }
            }
        }
        let peer = PeerSel { selector: sel("app == 'web'"), scope: NsScope::Same("b".into()), sa_names: vec![] };
        assert_eq!(x.peer(&c, &peer), Postings::Some(vec![2]));
        let any_ns = PeerSel { selector: Selector::All, scope: NsScope::Select(sel("has(x)")), sa_names: vec![] };
        assert_eq!(x.peer(&c, &any_ns), Postings::Some(vec![]), "no namespace has label x");
    }
}
