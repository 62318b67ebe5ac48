//! The committer: one task drains every job pending at that moment, plans them against a copy of this
//! node's blocks ([`super::assign`]), gets from the API what a plan needs (a claimed block, a block to
//! borrow from, the block of a fixed address) and plans again, then writes each changed block once with a
//! compare-and-swap, the IPAMHandles beside them, and answers. Jobs whose blocks hit a conflict are
//! planned again from fresh copies.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use ipnet::IpNet;
use kube::ResourceExt;
use tabby_api::ipam::{IPAMBlock, IPPool, block, host_affinity};
use tokio::sync::{mpsc, oneshot};

use super::allocator::{AllocRequest, Allocator, IpamError};
use super::assign::{self, Ctx, Granted, Need, Outcome, ReleaseSel, Step, Tried};
use super::request::Resolved;
use super::store::{MAX_ROUNDS, api_err, is_status, release_in_block};

/// Needs one job may have before its plan is complete (a block per family, a fixed address's block,
/// a borrow): past this, something keeps undoing what was got.
const MAX_NEEDS: usize = 16;

/// A queued request.
pub enum Job {
    Alloc { req: AllocRequest, resolved: Resolved, reply: oneshot::Sender<Result<Vec<Granted>, IpamError>> },
    Release { sel: ReleaseSel, reply: oneshot::Sender<Result<u32, IpamError>> },
}

impl Job {
    fn fail(self, e: IpamError) {
        match self {
            Job::Alloc { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Job::Release { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// What a planned job does to the IPAMHandles, written beside its blocks.
enum HandleOp {
    None,
    /// An allocation's handle with its addresses per block.
    Write {
        handle: String,
        counts: BTreeMap<String, i32>,
    },
    /// A release's handles, gone.
    Delete(Vec<String>),
}

impl HandleOp {
    fn of(job: &Job, r: &Result<Outcome, IpamError>) -> HandleOp {
        match (job, r) {
            (Job::Alloc { req, .. }, Ok(o)) if !o.touched.is_empty() => {
                HandleOp::Write { handle: req.handle.clone(), counts: o.counts.clone() }
            }
            (Job::Release { .. }, Ok(o)) if !o.handles.is_empty() => {
                HandleOp::Delete(o.handles.iter().cloned().collect())
            }
            _ => HandleOp::None,
        }
    }
}

impl Allocator {
    pub(super) async fn commit_loop(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
        }
    }

    /// Plans and writes one batch, retrying the jobs whose blocks hit a conflict.
    async fn commit(&self, batch: Vec<Job>) {
        let store = &self.inner.store;
        let mut pending: Vec<Job> = batch;
        for round in 0..MAX_ROUNDS {
            let mut work = self.cache().clone();
            let mut dirty: BTreeSet<IpNet> = BTreeSet::new();
            let mut planned: Vec<(Job, Result<Outcome, IpamError>)> = Vec::new();
            for job in pending.drain(..) {
                let r = self.plan_job(&job, &mut work, &mut dirty).await;
                planned.push((job, r));
            }
            // Every changed block once, and the IPAMHandles beside them (not after them): one round trip.
            let writes = dirty.iter().map(|cidr| {
                let blk = work[cidr].clone();
                async move { (*cidr, store.replace_block(&blk).await) }
            });
            let handle_ops = planned.iter().map(|(job, r)| {
                let op = HandleOp::of(job, r);
                async move {
                    match op {
                        HandleOp::Write { handle, counts } => store.write_handle(&handle, &counts).await,
                        HandleOp::Delete(handles) => {
                            join_all(handles.iter().map(|h| store.delete_handle(h))).await;
                            Ok(())
                        }
                        HandleOp::None => Ok(()),
                    }
                }
            });
            let written = std::time::Instant::now();
            let (block_results, handle_results) = futures::join!(join_all(writes), join_all(handle_ops));
            tracing::debug!(
                jobs = planned.len(),
                blocks = dirty.len(),
                ms = written.elapsed().as_secs_f64() * 1e3,
                "batch written"
            );
            let mut failed: BTreeSet<IpNet> = BTreeSet::new();
            let mut fatal: Option<IpamError> = None;
            for (cidr, r) in block_results {
                tracing::debug!(
                    block = %cidr,
                    from = ?work[&cidr].metadata.resource_version,
                    to = ?r.as_ref().ok().and_then(|b| b.metadata.resource_version.clone()),
                    error = ?r.as_ref().err().map(|e| e.to_string()),
                    "block write"
                );
                match r {
                    Ok(b) => {
                        // Borrowed blocks of other nodes were only in `work` for this batch.
                        if b.spec.affinity.as_deref() == Some(host_affinity(&self.inner.node).as_str()) {
                            self.cache().insert(cidr, b);
                        }
                    }
                    Err(e) => {
                        failed.insert(cidr);
                        if !is_status(&e, 409) {
                            fatal = Some(api_err(e));
                        }
                        self.refresh_block(cidr).await;
                    }
                }
            }
            for ((job, r), handle_result) in planned.into_iter().zip(handle_results) {
                match r {
                    Ok(o) if o.touched.iter().any(|c| failed.contains(c)) => {
                        if let Some(e) = &fatal {
                            self.fail_alloc(job, e.clone());
                        } else {
                            pending.push(job);
                        }
                    }
                    Ok(o) => match handle_result {
                        Ok(()) => self.finish(job, o),
                        Err(e) => job.fail(e),
                    },
                    // A job planned again after a conflict may have had its handle written in an earlier round.
                    Err(e) => self.fail_alloc(job, e),
                }
            }
            if pending.is_empty() {
                return;
            }
            tracing::debug!(round, retry = pending.len(), "block write conflicts; retrying");
        }
        for job in pending {
            self.fail_alloc(job, IpamError::Conflicts(MAX_ROUNDS));
        }
    }

    async fn refresh_block(&self, cidr: IpNet) {
        let me = host_affinity(&self.inner.node);
        match self.inner.store.get_block(&cidr).await {
            Ok(Some(b)) if b.spec.affinity.as_deref() == Some(me.as_str()) => {
                self.cache().insert(cidr, b);
            }
            Ok(_) => {
                self.cache().remove(&cidr);
            }
            Err(e) => tracing::warn!(block = %cidr, error = %e, "re-reading a block failed"),
        }
    }

    /// Applies one job to `work`, getting what its plan needs from the API; returns what to answer once
    /// the touched blocks are written.
    async fn plan_job(
        &self,
        job: &Job,
        work: &mut BTreeMap<IpNet, IPAMBlock>,
        dirty: &mut BTreeSet<IpNet>,
    ) -> Result<Outcome, IpamError> {
        let (req, resolved) = match job {
            Job::Release { sel, .. } => return Ok(assign::plan_release(sel, work, dirty)),
            Job::Alloc { req, resolved, .. } => (req, resolved),
        };
        let cfg = self.ipam_config();
        let pools: Vec<IPPool> = self.pools().iter().map(|p| (**p).clone()).collect();
        let ctx = Ctx { node: &self.inner.node, cfg: &cfg, pools: &pools };
        let mut tried = Tried::default();
        for _ in 0..MAX_NEEDS {
            match assign::plan_alloc(&req.handle, resolved, work, dirty, &ctx, &tried)? {
                Step::Done(o) => return Ok(o),
                Step::Need(need) => self.get(need, &pools, work, &mut tried, cfg.strict_affinity).await?,
            }
        }
        Err(IpamError::Invariant("a plan completes once the API gave what it needs"))
    }

    /// Gets from the API what a plan needs, into `work`.
    async fn get(
        &self,
        need: Need,
        pools: &[IPPool],
        work: &mut BTreeMap<IpNet, IPAMBlock>,
        tried: &mut Tried,
        strict: bool,
    ) -> Result<(), IpamError> {
        let pool = |name: &str| {
            pools.iter().find(|p| p.name_any() == name).ok_or(IpamError::Invariant("a planned pool is a known pool"))
        };
        match need {
            Need::Claim(name) => {
                let pool = pool(&name)?;
                tried.claimed.insert(name);
                if let Some(b) = self.claim_block(pool, None).await?
                    && let Some(c) = block::parse_cidr(&b.spec.cidr)
                {
                    work.entry(c).or_insert(b);
                }
            }
            Need::Borrow(nets) => {
                tried.borrowed = true;
                // Another node's block with room; it joins `work` (not the owned cache) for this batch. A
                // block already in `work` carries this batch's assignments: never replace it.
                let found = self.inner.store.list_blocks().await?.into_iter().find_map(|b| {
                    let c = block::parse_cidr(&b.spec.cidr)?;
                    let usable = nets.iter().any(|n| n.contains(&c))
                        && !b.spec.deleted
                        && block::free(&b.spec) > 0
                        && !work.contains_key(&c);
                    usable.then_some((c, b))
                });
                if let Some((c, b)) = found {
                    tracing::info!(block = %c, owner = ?b.spec.affinity, "borrowing from another node's block");
                    work.insert(c, b);
                }
            }
            Need::Fixed { ip, pool: pool_name, cidr } => {
                let blk = match self.inner.store.get_block(&cidr).await? {
                    Some(b) if strict => {
                        return Err(IpamError::AddressTaken(ip, format!("its block belongs to {:?}", b.spec.affinity)));
                    }
                    Some(b) => b,
                    None => self
                        .claim_block(pool(&pool_name)?, Some(cidr))
                        .await?
                        .ok_or_else(|| IpamError::AddressTaken(ip, "its block could not be claimed".into()))?,
                };
                work.entry(cidr).or_insert(blk);
            }
        }
        Ok(())
    }

    /// Fails a job whose IPAMHandle may already have been written beside its block: the handle goes too.
    fn fail_alloc(&self, job: Job, e: IpamError) {
        if let Job::Alloc { req, .. } = &job {
            let (this, h) = (self.clone(), req.handle.clone());
            if this.addresses_of(&h).is_none_or(|a| a.is_empty()) {
                // Answer once the handle is gone, so a failed ADD leaves nothing behind.
                tokio::spawn(async move {
                    this.inner.store.delete_handle(&h).await;
                    job.fail(e);
                });
                return;
            }
        }
        job.fail(e);
    }

    /// Answers a committed job (its blocks and handles are written).
    fn finish(&self, job: Job, o: Outcome) {
        let me = host_affinity(&self.inner.node);
        match job {
            Job::Alloc { req, reply, .. } => {
                let owned = self.cache();
                let foreign: BTreeSet<IpNet> = o
                    .touched
                    .iter()
                    .filter(|c| owned.get(c).is_none_or(|b| b.spec.affinity.as_deref() != Some(me.as_str())))
                    .copied()
                    .collect();
                drop(owned);
                if !foreign.is_empty() {
                    self.borrowed().entry(req.handle.clone()).or_default().extend(foreign);
                }
                let _ = reply.send(Ok(o.granted));
            }
            Job::Release { sel, reply } => {
                // Borrowed addresses live in other nodes' blocks: release them there (compare-and-swap).
                let borrowed: Vec<(String, BTreeSet<IpNet>)> = {
                    let mut map = self.borrowed();
                    let keys: Vec<String> = map.keys().filter(|h| assign::selects(&sel, h)).cloned().collect();
                    keys.into_iter().filter_map(|k| map.remove(&k).map(|v| (k, v))).collect()
                };
                if borrowed.is_empty() {
                    let _ = reply.send(Ok(o.released));
                    return;
                }
                let this = self.clone();
                tokio::spawn(async move {
                    let store = &this.inner.store;
                    let mut released = o.released;
                    for (h, cidrs) in borrowed {
                        for c in cidrs {
                            let mine = |_: usize, a: &tabby_api::ipam::AllocationAttribute| {
                                a.handle_id.as_deref() == Some(h.as_str())
                            };
                            released += release_in_block(&store.blocks(), &c, mine).await.unwrap_or(0);
                        }
                        store.delete_handle(&h).await;
                    }
                    let _ = reply.send(Ok(released));
                });
            }
        }
    }
}
