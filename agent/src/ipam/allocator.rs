//! The node's allocator: owns this node's blocks, claims new ones, and group-commits allocations and
//! releases. A request is resolved here ([`super::request`]), queued, planned with the others pending at
//! that moment ([`super::assign`], pure) and written by the committer ([`super::commit`]) through the
//! store ([`super::store`]): each changed block once, with a resourceVersion compare-and-swap. A request
//! is answered only after its block write (and its IPAMHandle) is stored, so an address is durable before
//! the CNI ADD returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use tabby_api::ipam::{IPAMBlock, IPPool, block, host_affinity};
use tabby_api::pod::LeanPod;
use tabby_api::{IPAMConfigSpec, names};
use tokio::sync::{mpsc, oneshot};

pub use super::assign::{Granted, ReleaseSel};
use super::commit::Job;
use super::request::{self, Resolved};
pub use super::request::{AllocRequest, Purpose};
use super::store::{Store, api_err};
use crate::facts::Facts;

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
    /// Something that always holds did not: a bug, not a condition to wait out.
    #[error("IPAM invariant broken: {0}")]
    Invariant(&'static str),
}

/// The node's allocator. Cheap to clone.
#[derive(Clone)]
pub struct Allocator {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) node: String,
    pub(super) store: Store,
    pub(super) client: Client,
    pub(super) facts: Facts,
    /// This node's blocks as last written or read (with their resourceVersion), by CIDR.
    pub(super) blocks: Mutex<BTreeMap<IpNet, IPAMBlock>>,
    /// Handles with addresses borrowed from other nodes' blocks, and those blocks.
    pub(super) borrowed: Mutex<BTreeMap<String, BTreeSet<IpNet>>>,
    tx: mpsc::UnboundedSender<Job>,
}

impl Allocator {
    /// Loads this node's blocks, resolves half-finished claims, and starts the committer task.
    pub async fn start(client: Client, node: &str, facts: Facts) -> Result<Allocator, IpamError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            node: node.to_string(),
            store: Store::new(client.clone(), node),
            client,
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

    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpNet, IPAMBlock>> {
        self.inner.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn borrowed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<IpNet>>> {
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
        let mut mine = BTreeMap::new();
        let mut borrowed: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
        for b in self.inner.store.list_blocks().await? {
            let Some(c) = block::parse_cidr(&b.spec.cidr) else { continue };
            if b.spec.affinity.as_deref() == Some(me.as_str()) {
                mine.insert(c, b);
                continue;
            }
            // Addresses this node borrowed from other nodes' blocks.
            for a in block::allocated(&c, &b.spec) {
                if a.secondary(block::ATTR_NODE) == Some(self.inner.node.as_str())
                    && let Some(h) = a.handle()
                {
                    borrowed.entry(h.to_string()).or_default().insert(c);
                }
            }
        }
        *self.borrowed() = borrowed;
        self.inner.store.settle_affinities(&mine.keys().copied().collect()).await?;
        tracing::info!(blocks = mine.len(), "loaded this node's blocks");
        *self.cache() = mine;
        Ok(())
    }

    pub(super) fn ipam_config(&self) -> IPAMConfigSpec {
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

    /// Every pool, as the cache has it.
    pub(super) fn pools(&self) -> Vec<Arc<IPPool>> {
        self.inner.facts.pools.state()
    }

    /// The pools a pod's address of a family may come from.
    pub fn eligible_pools(&self, v6: bool) -> Vec<IPPool> {
        request::eligible_pools(&self.pools(), &self.node_labels(), v6)
    }

    /// The pools a tunnel address may come from.
    pub fn tunnel_pools(&self, purpose: Purpose) -> Vec<IPPool> {
        request::tunnel_pools(&self.pools(), &self.node_labels(), purpose)
    }

    /// Resolves a request: the annotations of its pod (from the cache, else the API) and namespace, and
    /// the pools.
    async fn resolve(&self, req: &AllocRequest) -> Result<Resolved, IpamError> {
        let facts = &self.inner.facts;
        let (mut pod, mut namespace) = (BTreeMap::new(), BTreeMap::new());
        if let (Some(ns), Some(name)) = (&req.namespace, &req.pod) {
            pod = match facts.pods.get(&ObjectRef::new(name).within(ns)) {
                Some(p) => p.annotations().clone(),
                None => {
                    let api: Api<LeanPod> = Api::namespaced(self.inner.client.clone(), ns);
                    api.get_opt(name).await.map_err(api_err)?.map(|p| p.annotations().clone()).unwrap_or_default()
                }
            };
            namespace = facts.namespaces.get(&ObjectRef::new(ns)).map(|n| n.annotations().clone()).unwrap_or_default();
        }
        request::resolve(req, &self.inner.node, &self.pools(), &self.node_labels(), &pod, &namespace)
    }

    /// Allocates (or returns the existing) addresses of a handle; durable when it returns.
    pub async fn allocate(&self, req: AllocRequest) -> Result<Vec<Granted>, IpamError> {
        let existing = self.held_by(&req.handle).await?;
        if !existing.is_empty() {
            return Ok(existing);
        }
        let resolved = self.resolve(&req).await?;
        if resolved.v4.is_empty() && resolved.v6.is_empty() && resolved.fixed.is_empty() {
            return Err(IpamError::NoPool("no enabled IP pool matches this node".into()));
        }
        let (reply, rx) = oneshot::channel();
        self.inner.tx.send(Job::Alloc { req, resolved, reply }).map_err(|_| IpamError::Stopped)?;
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
            if let Some(b) = self.inner.store.get_block(&cidr).await? {
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
        if !self.ipam_config().auto_allocate_blocks {
            return Ok(());
        }
        for pool in self.eligible_pools(false).into_iter().chain(self.eligible_pools(true)) {
            let Some(pnet) = block::parse_cidr(&pool.spec.cidr) else { continue };
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

    /// Claims a block of `pool` for this node (`want`: that block, else the first free one), or `None`
    /// when the pool has no free block or this node reached maxBlocksPerHost.
    pub(super) async fn claim_block(&self, pool: &IPPool, want: Option<IpNet>) -> Result<Option<IPAMBlock>, IpamError> {
        let Some(pnet) = block::parse_cidr(&pool.spec.cidr) else { return Ok(None) };
        let owned = self.cache().keys().filter(|c| pnet.contains(*c)).count();
        if want.is_none() && owned as u32 >= self.ipam_config().effective_max_blocks_per_host() {
            return Ok(None);
        }
        let claimed = self.inner.store.claim_block(pnet, pool.spec.effective_block_size() as u8, want).await?;
        if let Some(b) = &claimed
            && let Some(c) = block::parse_cidr(&b.spec.cidr)
        {
            self.cache().insert(c, b.clone());
        }
        Ok(claimed)
    }
}
