//! Planning a batch (pure): each job of the committer applied to its working copy of the blocks. An
//! allocation takes the next free address of an owned block of its pools, else asks the committer for
//! what only the API can give — a newly claimed block, another node's block to borrow from, the block of
//! a fixed address — as a [`Need`]; the committer gets it, adds it to the working copy and plans the job
//! again. Planning a job twice is safe: a family (or fixed address) the handle already holds in the working
//! copy is not assigned again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use tabby_api::IPAMConfigSpec;
use tabby_api::ipam::block;
use tabby_api::ipam::{AllocationAttribute, IPAMBlock, IPPool, host_affinity};

use super::IpamError;
use super::request::Resolved;

/// A granted address with the prefix length of its block.
pub type Granted = (IpAddr, u8);

/// Which allocations a release frees.
#[derive(Debug, Clone)]
pub enum ReleaseSel {
    /// Every address of one handle.
    Handle(String),
    /// CNI GC: handles of `<network>.` not in the valid set.
    NotIn { network: String, valid: HashSet<String> },
    /// Exact (block, ordinal, handle) triples, re-checked against the handle before release.
    Exact(Vec<(IpNet, usize, Option<String>)>),
}

/// What a job does to the blocks, and what it answers once they are written.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// The blocks the job's answer depends on.
    pub touched: BTreeSet<IpNet>,
    pub granted: Vec<Granted>,
    /// Addresses held per block (the job's IPAMHandle).
    pub counts: BTreeMap<String, i32>,
    pub released: u32,
    /// Handles whose IPAMHandle a release deletes.
    pub handles: BTreeSet<String>,
}

/// What planning needs from the API before it can go on.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// A new block of the pool of this name for this node (none may be left: the plan then moves on).
    Claim(String),
    /// A block of another node in these pools with a free address, to borrow from.
    Borrow(Vec<IpNet>),
    /// The block `cidr` of `pool` that holds the fixed address `ip`: read, or claimed when it does not exist.
    Fixed { ip: IpAddr, pool: String, cidr: IpNet },
}

/// Where planning a job got.
#[derive(Debug, PartialEq)]
pub enum Step {
    Done(Outcome),
    Need(Need),
}

/// What planning reads besides the blocks.
pub struct Ctx<'a> {
    pub node: &'a str,
    pub cfg: &'a IPAMConfigSpec,
    /// Every pool (a fixed address may lie in any).
    pub pools: &'a [IPPool],
}

/// What the committer already got for a job: claims of these pools were asked for, a borrow was tried.
#[derive(Debug, Default)]
pub struct Tried {
    pub claimed: BTreeSet<String>,
    pub borrowed: bool,
}

/// The (block, ordinal) pairs `handle` holds in `work`.
fn held(work: &BTreeMap<IpNet, IPAMBlock>, handle: &str) -> Vec<(IpNet, usize)> {
    work.iter().flat_map(|(c, b)| block::ordinals_of(&b.spec, handle).into_iter().map(move |ord| (*c, ord))).collect()
}

/// Plans an allocation of `handle` drawing from `r`: its fixed addresses if it has any, else one address
/// of each family it has pools for.
pub fn plan_alloc(
    handle: &str,
    r: &Resolved,
    work: &mut BTreeMap<IpNet, IPAMBlock>,
    dirty: &mut BTreeSet<IpNet>,
    ctx: &Ctx,
    tried: &Tried,
) -> Result<Step, IpamError> {
    let attr = AllocationAttribute { handle_id: Some(handle.to_string()), secondary: r.secondary.clone() };
    if !r.fixed.is_empty() {
        for ip in &r.fixed {
            if held(work, handle).iter().any(|(c, ord)| block::addr_at(c, *ord) == *ip) {
                continue;
            }
            let (cidr, ord) = match fixed_slot(*ip, work, ctx)? {
                Ok(slot) => slot,
                Err(need) => return Ok(Step::Need(need)),
            };
            let b = work.get_mut(&cidr).ok_or(IpamError::Invariant("the block of a fixed address is in the batch"))?;
            if !block::assign_ordinal(&mut b.spec, ord, attr.clone()) {
                let who = block::handle_at(&b.spec, ord).unwrap_or("?").to_string();
                return Err(IpamError::AddressTaken(*ip, format!("held by {who}")));
            }
            dirty.insert(cidr);
        }
    } else {
        for (v6, pools) in [(false, &r.v4), (true, &r.v6)] {
            if pools.is_empty() || held(work, handle).iter().any(|(c, _)| matches!(c, IpNet::V6(_)) == v6) {
                continue;
            }
            let cidr = match pick_block(pools, work, ctx, tried) {
                Pick::Use(c) => c,
                Pick::Need(need) => return Ok(Step::Need(need)),
                Pick::Exhausted => {
                    // Roll back this job's other family before failing it.
                    for (c, _) in held(work, handle) {
                        if let Some(b) = work.get_mut(&c) {
                            block::release_where(&mut b.spec, |_, a| a.handle_id == attr.handle_id);
                        }
                    }
                    let names: Vec<String> = pools.iter().map(|p| p.name_any()).collect();
                    return Err(IpamError::Exhausted(names.join(",")));
                }
            };
            let b = work.get_mut(&cidr).ok_or(IpamError::Invariant("a picked block is in the batch"))?;
            block::assign_next(&mut b.spec, attr.clone())
                .ok_or(IpamError::Invariant("a picked block has a free address"))?;
            dirty.insert(cidr);
        }
    }
    let mut o = Outcome { handles: [handle.to_string()].into(), ..Outcome::default() };
    for (c, ord) in held(work, handle) {
        o.touched.insert(c);
        o.granted.push((block::addr_at(&c, ord), c.prefix_len()));
        *o.counts.entry(c.to_string()).or_insert(0) += 1;
    }
    Ok(Step::Done(o))
}

/// Where an address can come from.
enum Pick {
    Use(IpNet),
    Need(Need),
    Exhausted,
}

/// A block of `pools` with a free address: an owned one, else a newly claimed one, else (without
/// strictAffinity) one borrowed from another node.
fn pick_block(pools: &[IPPool], work: &BTreeMap<IpNet, IPAMBlock>, ctx: &Ctx, tried: &Tried) -> Pick {
    let nets: Vec<IpNet> = pools.iter().filter_map(|p| block::parse_cidr(&p.spec.cidr)).collect();
    let me = host_affinity(ctx.node);
    let find = |owned_only: bool| {
        work.iter()
            .filter(|(c, b)| {
                nets.iter().any(|n| n.contains(*c))
                    && block::free(&b.spec) > 0
                    && (!owned_only || b.spec.affinity.as_deref() == Some(me.as_str()))
            })
            .map(|(c, _)| *c)
            .next()
    };
    if let Some(c) = find(true) {
        return Pick::Use(c);
    }
    if ctx.cfg.auto_allocate_blocks
        && let Some(p) = pools.iter().find(|p| !tried.claimed.contains(&p.name_any()))
    {
        return Pick::Need(Need::Claim(p.name_any()));
    }
    if ctx.cfg.strict_affinity {
        return Pick::Exhausted;
    }
    if let Some(c) = find(false) {
        return Pick::Use(c);
    }
    if !tried.borrowed {
        return Pick::Need(Need::Borrow(nets));
    }
    Pick::Exhausted
}

/// The block and ordinal of a fixed address in `work`, or what to get for it.
#[allow(clippy::type_complexity)]
fn fixed_slot(
    ip: IpAddr,
    work: &BTreeMap<IpNet, IPAMBlock>,
    ctx: &Ctx,
) -> Result<Result<(IpNet, usize), Need>, IpamError> {
    if let Some(c) = work.keys().find(|c| c.contains(&ip)) {
        let ord = block::ordinal_of(c, ip).ok_or(IpamError::Invariant("an address inside a block has an ordinal"))?;
        return Ok(Ok((*c, ord)));
    }
    let pool = ctx
        .pools
        .iter()
        .find(|p| block::parse_cidr(&p.spec.cidr).is_some_and(|n| n.contains(&ip)))
        .ok_or_else(|| IpamError::AddressTaken(ip, "not inside any IP pool".into()))?;
    let pnet = block::parse_cidr(&pool.spec.cidr).ok_or(IpamError::Invariant("a pool found by its CIDR parses"))?;
    let cidr = block::block_containing(&pnet, pool.spec.effective_block_size() as u8, ip)
        .ok_or_else(|| IpamError::AddressTaken(ip, "outside its pool".into()))?;
    Ok(Err(Need::Fixed { ip, pool: pool.name_any(), cidr }))
}

/// Plans a release: frees what `sel` picks in every block of `work`.
pub fn plan_release(sel: &ReleaseSel, work: &mut BTreeMap<IpNet, IPAMBlock>, dirty: &mut BTreeSet<IpNet>) -> Outcome {
    let mut o = Outcome::default();
    for (cidr, b) in work.iter_mut() {
        let released = block::release_where(&mut b.spec, |ord, attr| {
            let h = attr.handle_id.as_deref();
            match sel {
                ReleaseSel::Handle(handle) => h == Some(handle.as_str()),
                ReleaseSel::NotIn { network, valid } => h.is_some_and(|h| {
                    h.strip_prefix(network.as_str()).is_some_and(|r| r.starts_with('.')) && !valid.contains(h)
                }),
                ReleaseSel::Exact(list) => list.iter().any(|(c, o2, h2)| c == cidr && *o2 == ord && h2.as_deref() == h),
            }
        });
        if !released.is_empty() {
            dirty.insert(*cidr);
            o.touched.insert(*cidr);
            o.released += released.len() as u32;
            o.handles.extend(released.into_iter().filter_map(|(_, h)| h));
        }
    }
    if let ReleaseSel::Handle(h) = sel {
        o.handles.insert(h.clone());
    }
    o
}

/// Whether `handle` is selected by a release (for the addresses it borrowed from other nodes' blocks).
pub fn selects(sel: &ReleaseSel, handle: &str) -> bool {
    match sel {
        ReleaseSel::Handle(x) => handle == x,
        ReleaseSel::NotIn { network, valid } => {
            handle.strip_prefix(network.as_str()).is_some_and(|r| r.starts_with('.')) && !valid.contains(handle)
        }
        ReleaseSel::Exact(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::request::tests::pool;
    use tabby_api::ipam::cidr_object_name;

    fn block_of(cidr: &str, node: &str) -> (IpNet, IPAMBlock) {
        let c: IpNet = cidr.parse().unwrap();
        (c, IPAMBlock::new(&cidr_object_name(cidr), block::new_block(&c, node)))
    }

    fn resolved(v4: &[IPPool], v6: &[IPPool], fixed: &[&str]) -> Resolved {
        Resolved {
            v4: v4.to_vec(),
            v6: v6.to_vec(),
            fixed: fixed.iter().map(|s| s.parse().unwrap()).collect(),
            secondary: [("node".to_string(), "a".to_string())].into(),
        }
    }

    fn cfg(auto: bool, strict: bool) -> IPAMConfigSpec {
        IPAMConfigSpec { auto_allocate_blocks: auto, strict_affinity: strict, ..IPAMConfigSpec::default() }
    }

    fn done(s: Result<Step, IpamError>) -> Outcome {
        match s {
            Ok(Step::Done(o)) => o,
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn an_owned_block_serves_first_and_a_second_plan_changes_nothing() {
        let p = pool("p", "10.0.0.0/24", serde_json::json!({"blockSize": 30}));
        let mut work: BTreeMap<IpNet, IPAMBlock> = [block_of("10.0.0.4/30", "a")].into();
        let (mut dirty, c) = (BTreeSet::new(), cfg(true, false));
        let ctx = Ctx { node: "a", cfg: &c, pools: std::slice::from_ref(&p) };
        let r = resolved(std::slice::from_ref(&p), &[], &[]);
        let o = done(plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &Tried::default()));
        assert_eq!(o.granted, vec![("10.0.0.4".parse().unwrap(), 30)]);
        assert_eq!(o.counts, [("10.0.0.4/30".to_string(), 1)].into());
        assert_eq!(dirty.len(), 1);
        let again = done(plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &Tried::default()));
        assert_eq!(again.granted, o.granted, "planning a job twice assigns nothing twice");
    }

    #[test]
    fn needs_a_block_then_claims_and_plans_again() {
        let p = pool("p", "10.0.0.0/24", serde_json::json!({"blockSize": 30}));
        let mut work = BTreeMap::new();
        let (mut dirty, c) = (BTreeSet::new(), cfg(true, false));
        let ctx = Ctx { node: "a", cfg: &c, pools: std::slice::from_ref(&p) };
        let r = resolved(std::slice::from_ref(&p), &[], &[]);
        let mut tried = Tried::default();
        let step = plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &tried).unwrap();
        assert_eq!(step, Step::Need(Need::Claim("p".into())));
        // The committer claimed 10.0.0.8/30 for this node.
        tried.claimed.insert("p".into());
        work.extend([block_of("10.0.0.8/30", "a")]);
        let o = done(plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &tried));
        assert_eq!(o.granted[0].0.to_string(), "10.0.0.8");
        assert!(o.touched.contains(&"10.0.0.8/30".parse().unwrap()));
    }

    #[test]
    fn without_a_claim_it_borrows_unless_affinity_is_strict() {
        let p = pool("p", "10.0.0.0/24", serde_json::json!({"blockSize": 30}));
        let r = resolved(std::slice::from_ref(&p), &[], &[]);
        let claimed = Tried { claimed: ["p".to_string()].into(), borrowed: false };
        let mut dirty = BTreeSet::new();
        let strict = cfg(true, true);
        let ctx = Ctx { node: "a", cfg: &strict, pools: std::slice::from_ref(&p) };
        let err = plan_alloc("h", &r, &mut BTreeMap::new(), &mut dirty, &ctx, &claimed).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted(ref pools) if pools == "p"), "{err}");
        let loose = cfg(true, false);
        let ctx = Ctx { node: "a", cfg: &loose, pools: std::slice::from_ref(&p) };
        let mut work = BTreeMap::new();
        let step = plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &claimed).unwrap();
        assert_eq!(step, Step::Need(Need::Borrow(vec!["10.0.0.0/24".parse().unwrap()])));
        // The committer found node b's block with room.
        let tried = Tried { borrowed: true, ..claimed };
        work.extend([block_of("10.0.0.12/30", "b")]);
        let o = done(plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &tried));
        assert_eq!(o.granted[0].0.to_string(), "10.0.0.12");
        // Nothing to borrow either: exhausted.
        let mut full = BTreeMap::new();
        assert!(plan_alloc("x", &r, &mut full, &mut dirty, &ctx, &tried).is_err());
    }

    #[test]
    fn dual_stack_plans_both_families_and_rolls_back_the_first_when_the_second_is_exhausted() {
        let p4 = pool("p4", "10.0.0.0/24", serde_json::json!({"blockSize": 30}));
        let p6 = pool("p6", "fd00::/120", serde_json::json!({"blockSize": 126}));
        let pools = [p4.clone(), p6.clone()];
        let r = resolved(std::slice::from_ref(&p4), std::slice::from_ref(&p6), &[]);
        let mut work: BTreeMap<IpNet, IPAMBlock> = [block_of("10.0.0.4/30", "a")].into();
        let (mut dirty, c) = (BTreeSet::new(), cfg(true, true));
        let ctx = Ctx { node: "a", cfg: &c, pools: &pools };
        let step = plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &Tried::default()).unwrap();
        assert_eq!(step, Step::Need(Need::Claim("p6".into())), "IPv4 taken, IPv6 needs a block");
        work.extend([block_of("fd00::4/126", "a")]);
        let tried = Tried { claimed: ["p6".to_string()].into(), borrowed: false };
        let o = done(plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &tried));
        assert_eq!(o.granted.len(), 2, "{o:?}");
        assert_eq!(o.granted.iter().filter(|(ip, _)| ip.is_ipv4()).count(), 1, "IPv4 once");
        // Another handle: IPv4 fits, IPv6 does not: the IPv4 address is given back.
        for _ in 0..3 {
            let b = work.get_mut(&"fd00::4/126".parse().unwrap()).unwrap();
            block::assign_next(&mut b.spec, AllocationAttribute::default());
        }
        let tried = Tried { claimed: ["p4".to_string(), "p6".to_string()].into(), borrowed: true };
        let err = plan_alloc("g", &r, &mut work, &mut dirty, &ctx, &tried).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted(ref p) if p == "p6"), "{err}");
        assert!(held(&work, "g").is_empty(), "the IPv4 address of the failed job is free again");
    }

    #[test]
    fn fixed_addresses_take_their_ordinal_or_ask_for_their_block() {
        let p = pool("p", "10.0.0.0/24", serde_json::json!({"blockSize": 30}));
        let (mut dirty, c) = (BTreeSet::new(), cfg(true, false));
        let ctx = Ctx { node: "a", cfg: &c, pools: std::slice::from_ref(&p) };
        let mut work = BTreeMap::new();
        let r = resolved(&[], &[], &["10.0.0.6"]);
        let step = plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &Tried::default()).unwrap();
        let cidr = "10.0.0.4/30".parse().unwrap();
        assert_eq!(step, Step::Need(Need::Fixed { ip: "10.0.0.6".parse().unwrap(), pool: "p".into(), cidr }));
        work.extend([block_of("10.0.0.4/30", "b")]);
        let o = done(plan_alloc("h", &r, &mut work, &mut dirty, &ctx, &Tried::default()));
        assert_eq!(o.granted, vec![("10.0.0.6".parse().unwrap(), 30)]);
        let taken = plan_alloc("g", &r, &mut work, &mut dirty, &ctx, &Tried::default()).unwrap_err();
        assert_eq!(taken.to_string(), "requested address 10.0.0.6 is not available: held by h");
        let outside = resolved(&[], &[], &["192.0.2.1"]);
        let err = plan_alloc("g", &outside, &mut work, &mut dirty, &ctx, &Tried::default()).unwrap_err();
        assert!(matches!(err, IpamError::AddressTaken(_, ref why) if why == "not inside any IP pool"));
    }

    #[test]
    fn releases_pick_by_handle_network_or_exact_ordinal() {
        let (c, mut b) = block_of("10.0.0.0/30", "a");
        for h in ["net.a", "net.b", "other.c"] {
            block::assign_next(&mut b.spec, AllocationAttribute { handle_id: Some(h.into()), ..Default::default() });
        }
        let mut dirty = BTreeSet::new();
        let mut work: BTreeMap<IpNet, IPAMBlock> = [(c, b)].into();
        let gc = ReleaseSel::NotIn { network: "net".into(), valid: ["net.a".to_string()].into() };
        let o = plan_release(&gc, &mut work.clone(), &mut dirty);
        assert_eq!((o.released, o.handles), (1, ["net.b".to_string()].into()));
        let exact = ReleaseSel::Exact(vec![(c, 2, Some("other.c".into())), (c, 1, Some("wrong".into()))]);
        assert_eq!(plan_release(&exact, &mut work.clone(), &mut dirty).released, 1);
        let o = plan_release(&ReleaseSel::Handle("gone".into()), &mut work, &mut dirty);
        assert_eq!((o.released, o.handles), (0, ["gone".to_string()].into()), "the handle object goes anyway");
        assert!(selects(&gc, "net.b") && !selects(&gc, "net.a") && !selects(&gc, "network.x"));
    }
}
