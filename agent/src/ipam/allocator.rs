//! The node's allocator: owns this node's blocks, claims new ones (two-phase BlockAffinity + IPAMBlock
//! create), and group-commits allocations and releases: one task drains every request pending at that
//! moment, plans them against its copy of the blocks, and writes each changed block once with a
//! resourceVersion compare-and-swap. A request is answered only after its block write (and its IPAMHandle)
//! is stored, so an address is durable before the CNI ADD returns.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use tabby_api::ipam::block;
use tabby_api::ipam::{
    AffinityState, AllocationAttribute, AllowedUse, BlockAffinity, BlockAffinitySpec, EncapsulationMode, IPAMBlock,
    IPAMHandle, IPAMHandleSpec, IPPool, block_affinity_name, cidr_object_name, host_affinity,
};
use tabby_api::selector::Selector;
use tabby_api::{IPAMConfigSpec, names};
use tokio::sync::{mpsc, oneshot};

use crate::facts::Facts;

/// How often a block write is retried after compare-and-swap conflicts.
const MAX_ROUNDS: usize = 20;

/// An IPAM failure, in terms the CNI plugin can print.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IpamError {
    #[error("no address left in pools {0}")]
    Exhausted(String),
    #[error("no IP pool is eligible for this pod: {0}")]
    NoPool(String),
    #[error("requested address {0} is not available: {1}")]
    AddressTaken(IpAddr, String),
    #[error("invalid annotation {0}: {1}")]
    BadAnnotation(String, String),
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("gave up after {0} conflicting writes")]
    Conflicts(usize),
    #[error("the allocator stopped")]
    Stopped,
}

fn api_err(e: kube::Error) -> IpamError {
    IpamError::Api(e.to_string())
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// What ADD (or the node's tunnel set-up) asks for.
#[derive(Debug, Clone, Default)]
pub struct AllocRequest {
    pub handle: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub purpose: Purpose,
}

/// What an address is for: it decides the pools it may come from and the allocation's `type` attribute
/// (Calico's `ipipTunnelAddress` / `vxlanTunnelAddress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Purpose {
    /// A pod's address, from the pod's eligible workload pools (IPv4 and IPv6).
    #[default]
    Pod,
    /// The node's `vxlan.tabby` address: IPv4, from a pool with `vxlanMode` on and the Tunnel use.
    VxlanTunnel,
    /// The node's `tunl0` address: IPv4, from a pool with `ipipMode` on and the Tunnel use.
    IpipTunnel,
}

impl Purpose {
    fn type_attribute(self) -> &'static str {
        match self {
            Purpose::Pod => "pod",
            Purpose::VxlanTunnel => "vxlanTunnelAddress",
            Purpose::IpipTunnel => "ipipTunnelAddress",
        }
    }
}

/// A granted address with the prefix length of its block.
pub type Granted = (IpAddr, u8);

/// The pools and fixed addresses an allocation draws from, resolved before it is queued.
#[derive(Debug, Clone, Default)]
struct Plan {
    v4: Vec<IPPool>,
    v6: Vec<IPPool>,
    fixed: Vec<IpAddr>,
    secondary: BTreeMap<String, String>,
}

/// Which allocations a release job frees.
#[derive(Debug, Clone)]
pub enum ReleaseSel {
    /// Every address of one handle.
    Handle(String),
    /// CNI GC: handles of `<network>.` not in the valid set.
    NotIn { network: String, valid: HashSet<String> },
    /// Exact (block, ordinal, handle) triples, re-checked against the handle before release.
    Exact(Vec<(IpNet, usize, Option<String>)>),
}

enum Job {
    Alloc { req: AllocRequest, plan: Plan, reply: oneshot::Sender<Result<Vec<Granted>, IpamError>> },
    Release { sel: ReleaseSel, reply: oneshot::Sender<Result<u32, IpamError>> },
}

/// The node's allocator. Cheap to clone.
#[derive(Clone)]
pub struct Allocator {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    node: String,
    facts: Facts,
    /// This node's blocks as last written or read (with their resourceVersion), by CIDR.
    blocks: Mutex<BTreeMap<IpNet, IPAMBlock>>,
    /// Handles with addresses borrowed from other nodes' blocks, and those blocks.
    borrowed: Mutex<BTreeMap<String, BTreeSet<IpNet>>>,
    tx: mpsc::UnboundedSender<Job>,
}

impl Allocator {
    /// Loads this node's blocks, resolves half-finished claims, and starts the committer task.
    pub async fn start(client: Client, node: &str, facts: Facts) -> Result<Allocator, IpamError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            client,
            node: node.to_string(),
            facts,
            blocks: Mutex::new(BTreeMap::new()),
            borrowed: Mutex::new(BTreeMap::new()),
            tx,
        });
        let a = Allocator { inner };
        a.load().await?;
        let committer = a.clone();
        tokio::spawn(async move { committer.commit_loop(rx).await });
        Ok(a)
    }

    fn blocks_api(&self) -> Api<IPAMBlock> {
        Api::all(self.inner.client.clone())
    }

    fn affinities_api(&self) -> Api<BlockAffinity> {
        Api::all(self.inner.client.clone())
    }

    fn handles_api(&self) -> Api<IPAMHandle> {
        Api::all(self.inner.client.clone())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpNet, IPAMBlock>> {
        self.inner.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn borrowed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<IpNet>>> {
        self.inner.borrowed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// A copy of this node's blocks.
    pub fn blocks(&self) -> Vec<IPAMBlock> {
        self.cache().values().cloned().collect()
    }

    async fn load(&self) -> Result<(), IpamError> {
        let me = host_affinity(&self.inner.node);
        let blocks = self.blocks_api().list(&ListParams::default()).await.map_err(api_err)?;
        let mut mine = BTreeMap::new();
        let mut borrowed: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
        for b in blocks {
            let Ok(c) = b.spec.cidr.parse::<IpNet>() else { continue };
            if b.spec.affinity.as_deref() == Some(me.as_str()) {
                mine.insert(c, b);
                continue;
            }
            // Addresses this node borrowed from other nodes' blocks.
            for ord in 0..b.spec.allocations.len() {
                if let Some(a) = block::attribute_at(&b.spec, ord)
                    && a.secondary.get(block::ATTR_NODE) == Some(&self.inner.node)
                    && let Some(h) = &a.handle_id
                {
                    borrowed.entry(h.clone()).or_default().insert(c);
                }
            }
        }
        *self.borrowed() = borrowed;
        // Finish or undo claims a previous run left pending.
        let affinities = self.affinities_api().list(&ListParams::default()).await.map_err(api_err)?;
        for a in affinities.into_iter().filter(|a| a.spec.node == self.inner.node) {
            let Ok(c) = a.spec.cidr.parse::<IpNet>() else { continue };
            match (a.spec.state, mine.contains_key(&c)) {
                (AffinityState::Pending, true) => self.confirm(a).await?,
                (AffinityState::Pending, false) => {
                    let _ = self.affinities_api().delete(&a.name_any(), &DeleteParams::default()).await;
                }
                _ => {}
            }
        }
        tracing::info!(blocks = mine.len(), "loaded this node's blocks");
        *self.cache() = mine;
        Ok(())
    }

    fn ipam_config(&self) -> IPAMConfigSpec {
        self.inner
            .facts
            .ipam_config
            .get(&ObjectRef::new(names::DEFAULT_NAME))
            .map(|c| c.spec.clone())
            .unwrap_or_default()
    }

    fn node_labels(&self) -> BTreeMap<String, String> {
        self.inner.facts.nodes.get(&ObjectRef::new(&self.inner.node)).map(|n| n.labels().clone()).unwrap_or_default()
    }

    /// Enabled pools of a family whose nodeSelector matches this node and that `keep` accepts, by name.
    fn pools_where(&self, v6: bool, keep: impl Fn(&IPPool) -> bool) -> Vec<IPPool> {
        let labels = self.node_labels();
        let mut pools: Vec<IPPool> = self
            .inner
            .facts
            .pools
            .state()
            .iter()
            .filter(|p| !p.spec.disabled && keep(p))
            .filter(|p| p.spec.cidr.parse::<IpNet>().is_ok_and(|c| matches!(c, IpNet::V6(_)) == v6))
            .filter(|p| Selector::parse(&p.spec.node_selector).is_ok_and(|s| s.matches(&labels)))
            .map(|p| (**p).clone())
            .collect();
        pools.sort_by_key(|p| p.name_any());
        pools
    }

    /// The pools a pod's address of a family may come from: workload use.
    pub fn eligible_pools(&self, v6: bool) -> Vec<IPPool> {
        self.pools_where(v6, |p| p.spec.allowed_uses.contains(&AllowedUse::Workload))
    }

    /// The pools a tunnel address may come from: IPv4, tunnel use, the tunnel's encapsulation on.
    pub fn tunnel_pools(&self, purpose: Purpose) -> Vec<IPPool> {
        self.pools_where(false, |p| {
            p.spec.allowed_uses.contains(&AllowedUse::Tunnel)
                && match purpose {
                    Purpose::VxlanTunnel => p.spec.vxlan_mode != EncapsulationMode::Never,
                    Purpose::IpipTunnel => p.spec.ipip_mode != EncapsulationMode::Never,
                    Purpose::Pod => false,
                }
        })
    }

    /// Resolves the pools and fixed addresses for a pod from its and its namespace's annotations (for a
    /// tunnel address: the tunnel pools).
    async fn plan(&self, req: &AllocRequest) -> Result<Plan, IpamError> {
        let mut plan = Plan::default();
        plan.secondary.insert(block::ATTR_NODE.into(), self.inner.node.clone());
        plan.secondary.insert(block::ATTR_TYPE.into(), req.purpose.type_attribute().into());
        if req.purpose != Purpose::Pod {
            plan.v4 = self.tunnel_pools(req.purpose);
            return Ok(plan);
        }
        (plan.v4, plan.v6) = (self.eligible_pools(false), self.eligible_pools(true));
        let (Some(ns), Some(name)) = (&req.namespace, &req.pod) else { return Ok(plan) };
        plan.secondary.insert(block::ATTR_NAMESPACE.into(), ns.clone());
        plan.secondary.insert(block::ATTR_POD.into(), name.clone());
        let pod_annotations = match self.inner.facts.pods.get(&ObjectRef::new(name).within(ns)) {
            Some(p) => p.annotations().clone(),
            None => {
                let api: Api<Pod> = Api::namespaced(self.inner.client.clone(), ns);
                api.get_opt(name).await.map_err(api_err)?.map(|p| p.annotations().clone()).unwrap_or_default()
            }
        };
        let ns_annotations =
            self.inner.facts.namespaces.get(&ObjectRef::new(ns)).map(|n| n.annotations().clone()).unwrap_or_default();
        let list = |key: &str| -> Result<Option<Vec<String>>, IpamError> {
            let Some(v) = pod_annotations.get(key).or_else(|| ns_annotations.get(key)) else { return Ok(None) };
            serde_json::from_str::<Vec<String>>(v)
                .map(Some)
                .map_err(|e| IpamError::BadAnnotation(key.into(), format!("{v:?}: {e}")))
        };
        let all: Vec<IPPool> = self.inner.facts.pools.state().iter().map(|p| (**p).clone()).collect();
        for (key, v6) in [(names::IPV4_POOLS_ANNOTATION, false), (names::IPV6_POOLS_ANNOTATION, true)] {
            if let Some(wanted) = list(key)? {
                let eligible = if v6 { &plan.v6 } else { &plan.v4 };
                let mut chosen = Vec::new();
                for w in &wanted {
                    let pool = all.iter().find(|p| p.name_any() == *w || p.spec.cidr == *w).ok_or_else(|| {
                        IpamError::NoPool(format!("annotation {key} names {w:?}, which is not an IP pool"))
                    })?;
                    if eligible.iter().any(|e| e.name_any() == pool.name_any()) {
                        chosen.push(pool.clone());
                    }
                }
                if chosen.is_empty() {
                    return Err(IpamError::NoPool(format!(
                        "annotation {key} names {wanted:?}, none enabled for this node"
                    )));
                }
                if v6 {
                    plan.v6 = chosen;
                } else {
                    plan.v4 = chosen;
                }
            }
        }
        if let Some(addrs) = list(names::IP_ADDRS_ANNOTATION)? {
            for a in addrs {
                let ip: IpAddr = a
                    .parse()
                    .map_err(|e| IpamError::BadAnnotation(names::IP_ADDRS_ANNOTATION.into(), format!("{a:?}: {e}")))?;
                plan.fixed.push(ip);
            }
        }
        Ok(plan)
    }

    /// Allocates (or returns the existing) addresses of a handle; durable when it returns.
    pub async fn allocate(&self, req: AllocRequest) -> Result<Vec<Granted>, IpamError> {
        let existing = self.held_by(&req.handle).await?;
        if !existing.is_empty() {
            return Ok(existing);
        }
        let plan = self.plan(&req).await?;
        if plan.v4.is_empty() && plan.v6.is_empty() && plan.fixed.is_empty() {
            return Err(IpamError::NoPool("no enabled IP pool matches this node".into()));
        }
        let (reply, rx) = oneshot::channel();
        self.inner.tx.send(Job::Alloc { req, plan, reply }).map_err(|_| IpamError::Stopped)?;
        rx.await.map_err(|_| IpamError::Stopped)?
    }

    /// Releases allocations; returns how many addresses were freed.
    pub async fn release(&self, sel: ReleaseSel) -> Result<u32, IpamError> {
        let (reply, rx) = oneshot::channel();
        self.inner.tx.send(Job::Release { sel, reply }).map_err(|_| IpamError::Stopped)?;
        rx.await.map_err(|_| IpamError::Stopped)?
    }

    /// The addresses a handle holds in this node's blocks.
    pub fn addresses_of(&self, handle: &str) -> Option<Vec<Granted>> {
        let cache = self.cache();
        let mut out = Vec::new();
        for (cidr, b) in cache.iter() {
            for o in block::ordinals_of(&b.spec, handle) {
                out.push((block::addr_at(cidr, o), cidr.prefix_len()));
            }
        }
        Some(out)
    }

    /// Every address a handle holds: in this node's blocks, and in other nodes' blocks it borrowed from
    /// (read from the API, so a repeated ADD or a CHECK sees borrowed addresses too).
    pub async fn held_by(&self, handle: &str) -> Result<Vec<Granted>, IpamError> {
        let mut out = self.addresses_of(handle).unwrap_or_default();
        let lent: Vec<IpNet> = self.borrowed().get(handle).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for cidr in lent {
            let name = cidr_object_name(&cidr.to_string());
            if let Some(b) = self.blocks_api().get_opt(&name).await.map_err(api_err)? {
                out.extend(
                    block::ordinals_of(&b.spec, handle)
                        .into_iter()
                        .map(|o| (block::addr_at(&cidr, o), cidr.prefix_len())),
                );
            }
        }
        Ok(out)
    }

    /// Claims one block in every eligible pool where this node has none yet.
    pub async fn preclaim(&self) -> Result<(), IpamError> {
        let cfg = self.ipam_config();
        if !cfg.auto_allocate_blocks {
            return Ok(());
        }
        for pool in self.eligible_pools(false).into_iter().chain(self.eligible_pools(true)) {
            let Ok(pnet) = pool.spec.cidr.parse::<IpNet>() else { continue };
            if self.cache().keys().any(|c| pnet.contains(c)) {
                continue;
            }
            match self.claim_block(&pool, None).await? {
                Some(b) => tracing::info!(pool = %pool.name_any(), block = %b.spec.cidr, "pre-claimed a block"),
                None => tracing::warn!(pool = %pool.name_any(), "no free block to pre-claim"),
            }
        }
        Ok(())
    }

    async fn confirm(&self, mut a: BlockAffinity) -> Result<(), IpamError> {
        for _ in 0..MAX_ROUNDS {
            a.spec.state = AffinityState::Confirmed;
            match self.affinities_api().replace(&a.name_any(), &PostParams::default(), &a).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => {
                    a = self.affinities_api().get(&a.name_any()).await.map_err(api_err)?;
                }
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(IpamError::Conflicts(MAX_ROUNDS))
    }

    /// Claims a block of `pool` for this node (`want`: that block, else the first free one), or `None`
    /// when the pool has no free block or this node reached maxBlocksPerHost.
    async fn claim_block(&self, pool: &IPPool, want: Option<IpNet>) -> Result<Option<IPAMBlock>, IpamError> {
        let Ok(pnet) = pool.spec.cidr.parse::<IpNet>() else { return Ok(None) };
        let cfg = self.ipam_config();
        let owned = self.cache().keys().filter(|c| pnet.contains(*c)).count();
        if want.is_none() && owned as u32 >= cfg.effective_max_blocks_per_host() {
            return Ok(None);
        }
        let block_len = pool.spec.effective_block_size() as u8;
        let taken: BTreeSet<String> = self
            .blocks_api()
            .list(&ListParams::default())
            .await
            .map_err(api_err)?
            .into_iter()
            .map(|b| b.spec.cidr)
            .collect();
        let candidates: Vec<IpNet> = match want {
            Some(w) => vec![w],
            None => pnet.subnets(block_len).map(|s| s.collect()).unwrap_or_default(),
        };
        let me = host_affinity(&self.inner.node);
        for cidr in candidates.into_iter().filter(|c| !taken.contains(&c.to_string()) || want.is_some()) {
            let aname = block_affinity_name(&self.inner.node, &cidr.to_string());
            let affinity = BlockAffinity {
                metadata: ObjectMeta { name: Some(aname.clone()), ..Default::default() },
                spec: BlockAffinitySpec {
                    state: AffinityState::Pending,
                    node: self.inner.node.clone(),
                    cidr: cidr.to_string(),
                    deleted: false,
                },
            };
            let affinity = match self.affinities_api().create(&PostParams::default(), &affinity).await {
                Ok(a) => a,
                Err(e) if is_status(&e, 409) => self.affinities_api().get(&aname).await.map_err(api_err)?,
                Err(e) => return Err(api_err(e)),
            };
            let blk = IPAMBlock {
                metadata: ObjectMeta { name: Some(cidr_object_name(&cidr.to_string())), ..Default::default() },
                spec: block::new_block(&cidr, &self.inner.node),
            };
            let created = match self.blocks_api().create(&PostParams::default(), &blk).await {
                Ok(b) => b,
                Err(e) if is_status(&e, 409) => {
                    let existing = self.blocks_api().get(&blk.name_any()).await.map_err(api_err)?;
                    if existing.spec.affinity.as_deref() != Some(me.as_str()) {
                        // Another node owns it: withdraw our claim and try the next block.
                        let _ = self.affinities_api().delete(&aname, &DeleteParams::default()).await;
                        if want.is_some() {
                            return Ok(None);
                        }
                        continue;
                    }
                    existing
                }
                Err(e) => {
                    let _ = self.affinities_api().delete(&aname, &DeleteParams::default()).await;
                    return Err(api_err(e));
                }
            };
            self.confirm(affinity).await?;
            self.cache().insert(cidr, created.clone());
            tracing::info!(block = %cidr, "claimed a block");
            return Ok(Some(created));
        }
        Ok(None)
    }

    async fn commit_loop(self, mut rx: mpsc::UnboundedReceiver<Job>) {
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
        let mut pending: Vec<Job> = batch;
        for round in 0..MAX_ROUNDS {
            let mut work = self.cache().clone();
            let mut dirty: BTreeSet<IpNet> = BTreeSet::new();
            let mut planned: Vec<(Job, Result<Outcome, IpamError>)> = Vec::new();
            for job in pending.drain(..) {
                let r = self.plan_job(&job, &mut work, &mut dirty).await;
                planned.push((job, r));
            }
            // Write every changed block once, concurrently.
            let writes = dirty.iter().map(|cidr| {
                let blk = work[cidr].clone();
                let api = self.blocks_api();
                async move { (*cidr, api.replace(&blk.name_any(), &PostParams::default(), &blk).await) }
            });
            // IPAMHandles are written beside the blocks (not after them), so a request costs one round trip.
            let handle_ops = planned.iter().map(|(job, r)| {
                let this = self.clone();
                let op = match (job, r) {
                    (Job::Alloc { req, .. }, Ok(o)) if !o.touched.is_empty() => {
                        Some((req.handle.clone(), Some(o.counts.clone())))
                    }
                    (Job::Release { .. }, Ok(o)) => Some((String::new(), None)).filter(|_| !o.handles.is_empty()),
                    _ => None,
                };
                let handles: Vec<String> = match r {
                    Ok(o) if matches!(job, Job::Release { .. }) => o.handles.iter().cloned().collect(),
                    _ => Vec::new(),
                };
                async move {
                    match op {
                        Some((h, Some(counts))) => this.write_handle(&h, &counts).await,
                        Some((_, None)) => {
                            join_all(handles.iter().map(|h| this.delete_handle(h))).await;
                            Ok(())
                        }
                        None => Ok(()),
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
                    // A job re-planned after a conflict may have had its handle written in an earlier round.
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
        match self.blocks_api().get_opt(&cidr_object_name(&cidr.to_string())).await {
            Ok(Some(b)) if b.spec.affinity.as_deref() == Some(me.as_str()) => {
                self.cache().insert(cidr, b);
            }
            Ok(_) => {
                self.cache().remove(&cidr);
            }
            Err(e) => tracing::warn!(block = %cidr, error = %e, "re-reading a block failed"),
        }
    }

    /// Applies one job to `work`; returns what to answer once the touched blocks are written.
    async fn plan_job(
        &self,
        job: &Job,
        work: &mut BTreeMap<IpNet, IPAMBlock>,
        dirty: &mut BTreeSet<IpNet>,
    ) -> Result<Outcome, IpamError> {
        match job {
            Job::Alloc { req, plan, .. } => self.plan_alloc(req, plan, work, dirty).await,
            Job::Release { sel, .. } => {
                let mut o = Outcome::default();
                for (cidr, b) in work.iter_mut() {
                    let released = block::release_where(&mut b.spec, |ord, attr| {
                        let h = attr.handle_id.as_deref();
                        match sel {
                            ReleaseSel::Handle(handle) => h == Some(handle.as_str()),
                            ReleaseSel::NotIn { network, valid } => h.is_some_and(|h| {
                                h.strip_prefix(network.as_str()).is_some_and(|r| r.starts_with('.'))
                                    && !valid.contains(h)
                            }),
                            ReleaseSel::Exact(list) => {
                                list.iter().any(|(c, o2, h2)| c == cidr && *o2 == ord && h2.as_deref() == h)
                            }
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
                Ok(o)
            }
        }
    }

    async fn plan_alloc(
        &self,
        req: &AllocRequest,
        plan: &Plan,
        work: &mut BTreeMap<IpNet, IPAMBlock>,
        dirty: &mut BTreeSet<IpNet>,
    ) -> Result<Outcome, IpamError> {
        let attr = AllocationAttribute { handle_id: Some(req.handle.clone()), secondary: plan.secondary.clone() };
        let mut o = Outcome { handles: [req.handle.clone()].into(), ..Outcome::default() };
        let held = |work: &BTreeMap<IpNet, IPAMBlock>| -> Vec<(IpNet, usize)> {
            work.iter()
                .flat_map(|(c, b)| block::ordinals_of(&b.spec, &req.handle).into_iter().map(move |ord| (*c, ord)))
                .collect()
        };
        if !plan.fixed.is_empty() {
            for ip in &plan.fixed {
                if held(work).iter().any(|(c, ord)| block::addr_at(c, *ord) == *ip) {
                    continue;
                }
                let (cidr, ord) = self.fixed_slot(*ip, work).await?;
                let b = work.get_mut(&cidr).ok_or_else(|| IpamError::AddressTaken(*ip, "block vanished".into()))?;
                if !block::assign_ordinal(&mut b.spec, ord, attr.clone()) {
                    let who = block::handle_at(&b.spec, ord).unwrap_or("?").to_string();
                    return Err(IpamError::AddressTaken(*ip, format!("held by {who}")));
                }
                dirty.insert(cidr);
                o.touched.insert(cidr);
            }
        } else {
            for (v6, pools) in [(false, &plan.v4), (true, &plan.v6)] {
                if pools.is_empty() || held(work).iter().any(|(c, _)| matches!(c, IpNet::V6(_)) == v6) {
                    continue;
                }
                let cidr = match self.pick_block(pools, work).await? {
                    Some(c) => c,
                    None => {
                        // Roll back this job's other family before failing it.
                        for c in o.touched.iter() {
                            if let Some(b) = work.get_mut(c) {
                                block::release_where(&mut b.spec, |_, a| a.handle_id == attr.handle_id);
                            }
                        }
                        let names: Vec<String> = pools.iter().map(|p| p.name_any()).collect();
                        return Err(IpamError::Exhausted(names.join(",")));
                    }
                };
                let b = work.get_mut(&cidr).ok_or(IpamError::Stopped)?;
                block::assign_next(&mut b.spec, attr.clone()).ok_or(IpamError::Stopped)?;
                dirty.insert(cidr);
                o.touched.insert(cidr);
            }
        }
        for (c, ord) in held(work) {
            o.granted.push((block::addr_at(&c, ord), c.prefix_len()));
            o.counts.entry(c.to_string()).and_modify(|n| *n += 1).or_insert(1);
        }
        Ok(o)
    }

    /// A block of `pools` with a free address: an owned one, else a newly claimed one, else (without
    /// strictAffinity) one borrowed into `work` from another node.
    async fn pick_block(
        &self,
        pools: &[IPPool],
        work: &mut BTreeMap<IpNet, IPAMBlock>,
    ) -> Result<Option<IpNet>, IpamError> {
        let nets: Vec<IpNet> = pools.iter().filter_map(|p| p.spec.cidr.parse().ok()).collect();
        let me = host_affinity(&self.inner.node);
        let find = |work: &BTreeMap<IpNet, IPAMBlock>, owned_only: bool| {
            work.iter()
                .filter(|(c, b)| {
                    nets.iter().any(|n| n.contains(*c))
                        && block::free(&b.spec) > 0
                        && (!owned_only || b.spec.affinity.as_deref() == Some(me.as_str()))
                })
                .map(|(c, _)| *c)
                .next()
        };
        if let Some(c) = find(work, true) {
            return Ok(Some(c));
        }
        let cfg = self.ipam_config();
        if cfg.auto_allocate_blocks {
            for pool in pools {
                if let Some(b) = self.claim_block(pool, None).await? {
                    let c: IpNet = b.spec.cidr.parse().map_err(|_| IpamError::Stopped)?;
                    let entry = work.entry(c).or_insert(b);
                    if block::free(&entry.spec) > 0 {
                        return Ok(Some(c));
                    }
                }
            }
        }
        if cfg.strict_affinity {
            return Ok(None);
        }
        if let Some(c) = find(work, false) {
            return Ok(Some(c));
        }
        // Borrow: another node's block with room. It joins `work` (not the owned cache) for this batch.
        for b in self.blocks_api().list(&ListParams::default()).await.map_err(api_err)? {
            let Ok(c) = b.spec.cidr.parse::<IpNet>() else { continue };
            // A block already in `work` carries this batch's assignments: never replace it with the API's copy.
            if nets.iter().any(|n| n.contains(&c))
                && !b.spec.deleted
                && block::free(&b.spec) > 0
                && !work.contains_key(&c)
            {
                tracing::info!(block = %c, owner = ?b.spec.affinity, "borrowing from another node's block");
                work.insert(c, b);
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The block and ordinal of a fixed address, claiming or borrowing its block when needed.
    async fn fixed_slot(&self, ip: IpAddr, work: &mut BTreeMap<IpNet, IPAMBlock>) -> Result<(IpNet, usize), IpamError> {
        if let Some((c, _)) = work.iter().find(|(c, _)| c.contains(&ip)) {
            let c = *c;
            return Ok((c, block::ordinal_of(&c, ip).ok_or(IpamError::Stopped)?));
        }
        let pools: Vec<IPPool> = self.inner.facts.pools.state().iter().map(|p| (**p).clone()).collect();
        let pool = pools
            .iter()
            .find(|p| p.spec.cidr.parse::<IpNet>().is_ok_and(|n| n.contains(&ip)))
            .ok_or_else(|| IpamError::AddressTaken(ip, "not inside any IP pool".into()))?;
        let pnet: IpNet = pool.spec.cidr.parse().map_err(|_| IpamError::Stopped)?;
        let cidr = block::block_containing(&pnet, pool.spec.effective_block_size() as u8, ip)
            .ok_or_else(|| IpamError::AddressTaken(ip, "outside its pool".into()))?;
        let name = cidr_object_name(&cidr.to_string());
        let blk = match self.blocks_api().get_opt(&name).await.map_err(api_err)? {
            Some(b) => {
                if self.ipam_config().strict_affinity {
                    return Err(IpamError::AddressTaken(ip, format!("its block belongs to {:?}", b.spec.affinity)));
                }
                b
            }
            None => self
                .claim_block(pool, Some(cidr))
                .await?
                .ok_or_else(|| IpamError::AddressTaken(ip, "its block could not be claimed".into()))?,
        };
        work.entry(cidr).or_insert(blk);
        Ok((cidr, block::ordinal_of(&cidr, ip).ok_or(IpamError::Stopped)?))
    }

    /// Fails a job whose IPAMHandle may already have been written beside its block: the handle goes too.
    fn fail_alloc(&self, job: Job, e: IpamError) {
        if let Job::Alloc { req, .. } = &job {
            let (this, h) = (self.clone(), req.handle.clone());
            if this.addresses_of(&h).is_none_or(|a| a.is_empty()) {
                // Answer once the handle is gone, so a failed ADD leaves nothing behind.
                tokio::spawn(async move {
                    this.delete_handle(&h).await;
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
                    let keys: Vec<String> = map
                        .keys()
                        .filter(|h| match &sel {
                            ReleaseSel::Handle(x) => *h == x,
                            ReleaseSel::NotIn { network, valid } => {
                                h.strip_prefix(network.as_str()).is_some_and(|r| r.starts_with('.'))
                                    && !valid.contains(*h)
                            }
                            ReleaseSel::Exact(_) => false,
                        })
                        .cloned()
                        .collect();
                    keys.into_iter().filter_map(|k| map.remove(&k).map(|v| (k, v))).collect()
                };
                if borrowed.is_empty() {
                    let _ = reply.send(Ok(o.released));
                    return;
                }
                let this = self.clone();
                tokio::spawn(async move {
                    let mut released = o.released;
                    for (h, cidrs) in borrowed {
                        for c in cidrs {
                            released += release_in_block(&this.blocks_api(), &c, |_, a| {
                                a.handle_id.as_deref() == Some(h.as_str())
                            })
                            .await
                            .unwrap_or(0);
                        }
                        this.delete_handle(&h).await;
                    }
                    let _ = reply.send(Ok(released));
                });
            }
        }
    }

    async fn write_handle(&self, handle: &str, counts: &BTreeMap<String, i32>) -> Result<(), IpamError> {
        let api = self.handles_api();
        let name = handle_object_name(handle);
        let obj = IPAMHandle {
            metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
            spec: IPAMHandleSpec { handle_id: handle.to_string(), block: counts.clone(), deleted: false },
        };
        for _ in 0..MAX_ROUNDS {
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => {
                    let Some(mut existing) = api.get_opt(&name).await.map_err(api_err)? else { continue };
                    if existing.spec.block == *counts {
                        return Ok(());
                    }
                    existing.spec.block = counts.clone();
                    match api.replace(&name, &PostParams::default(), &existing).await {
                        Ok(_) => return Ok(()),
                        Err(e) if is_status(&e, 409) => continue,
                        Err(e) => return Err(api_err(e)),
                    }
                }
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(IpamError::Conflicts(MAX_ROUNDS))
    }

    async fn delete_handle(&self, handle: &str) {
        if let Err(e) = self.handles_api().delete(&handle_object_name(handle), &DeleteParams::default()).await
            && !is_status(&e, 404)
        {
            tracing::warn!(handle, error = %e, "deleting an IPAMHandle failed");
        }
    }
}

/// Releases matching allocations of any block with compare-and-swap retries (used for blocks this agent
/// does not own: borrowed addresses and the garbage collector's releases).
pub async fn release_in_block(
    api: &Api<IPAMBlock>,
    cidr: &IpNet,
    pick: impl Fn(usize, &AllocationAttribute) -> bool,
) -> Result<u32, IpamError> {
    let name = cidr_object_name(&cidr.to_string());
    for _ in 0..MAX_ROUNDS {
        let Some(mut b) = api.get_opt(&name).await.map_err(api_err)? else { return Ok(0) };
        let released = block::release_where(&mut b.spec, &pick);
        if released.is_empty() {
            return Ok(0);
        }
        match api.replace(&name, &PostParams::default(), &b).await {
            Ok(_) => return Ok(released.len() as u32),
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => return Err(api_err(e)),
        }
    }
    Err(IpamError::Conflicts(MAX_ROUNDS))
}

/// Deletes a block only if it is still at `resource_version` (and so still empty).
pub async fn delete_block_if_unchanged(api: &Api<IPAMBlock>, b: &IPAMBlock) -> Result<bool, IpamError> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions { resource_version: b.resource_version(), uid: None }),
        ..Default::default()
    };
    match api.delete(&b.name_any(), &dp).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(false),
        Err(e) => Err(api_err(e)),
    }
}

/// The object name of a handle: the handle lower-cased with characters names cannot hold turned into `-`.
pub fn handle_object_name(handle: &str) -> String {
    let s: String = handle
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    s.trim_matches(|c| c == '-' || c == '.').chars().take(253).collect()
}

#[derive(Debug, Default)]
struct Outcome {
    touched: BTreeSet<IpNet>,
    granted: Vec<Granted>,
    counts: BTreeMap<String, i32>,
    released: u32,
    handles: BTreeSet<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_names() {
        assert_eq!(handle_object_name("k8s-pod-network.ABC123"), "k8s-pod-network.abc123");
        assert_eq!(handle_object_name("my_net.x"), "my-net.x");
    }
}
