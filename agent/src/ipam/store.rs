//! The API side of IPAM: reading and writing IPAMBlocks, BlockAffinities and IPAMHandles, each write a
//! compare-and-swap on the object's resourceVersion where another writer may race.

use std::collections::BTreeSet;

use ipnet::IpNet;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use tabby_api::ipam::block;
use tabby_api::ipam::{
    AffinityState, AllocationAttribute, BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMHandle, IPAMHandleSpec,
    block_affinity_name, cidr_object_name, host_affinity,
};

use super::IpamError;

/// How often a write is retried after compare-and-swap conflicts.
pub const MAX_ROUNDS: usize = 20;

pub fn api_err(e: kube::Error) -> IpamError {
    IpamError::Api(e.to_string())
}

pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The object name of a handle: the handle lower-cased with characters names cannot hold turned into `-`.
pub fn handle_object_name(handle: &str) -> String {
    let s: String = handle
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    s.trim_matches(|c| c == '-' || c == '.').chars().take(253).collect()
}

/// This node's view of the IPAM objects in the API.
#[derive(Clone)]
pub struct Store {
    client: Client,
    node: String,
}

impl Store {
    pub fn new(client: Client, node: &str) -> Store {
        Store { client, node: node.to_string() }
    }

    pub fn blocks(&self) -> Api<IPAMBlock> {
        Api::all(self.client.clone())
    }

    fn affinities(&self) -> Api<BlockAffinity> {
        Api::all(self.client.clone())
    }

    fn handles(&self) -> Api<IPAMHandle> {
        Api::all(self.client.clone())
    }

    pub async fn list_blocks(&self) -> Result<Vec<IPAMBlock>, IpamError> {
        Ok(self.blocks().list(&ListParams::default()).await.map_err(api_err)?.items)
    }

    pub async fn get_block(&self, cidr: &IpNet) -> Result<Option<IPAMBlock>, IpamError> {
        self.blocks().get_opt(&cidr_object_name(&cidr.to_string())).await.map_err(api_err)
    }

    /// Writes a block planned from the copy read at its resourceVersion (a conflict: someone wrote it since).
    pub async fn replace_block(&self, b: &IPAMBlock) -> Result<IPAMBlock, kube::Error> {
        self.blocks().replace(&b.name_any(), &PostParams::default(), b).await
    }

    /// Finishes or undoes the claims a previous run of this node left pending (`owned`: its blocks).
    pub async fn settle_affinities(&self, owned: &BTreeSet<IpNet>) -> Result<(), IpamError> {
        let affinities = self.affinities().list(&ListParams::default()).await.map_err(api_err)?;
        for a in affinities.into_iter().filter(|a| a.spec.node == self.node) {
            let Some(c) = block::parse_cidr(&a.spec.cidr) else { continue };
            match (a.spec.state, owned.contains(&c)) {
                (AffinityState::Pending, true) => self.confirm(a).await?,
                (AffinityState::Pending, false) => {
                    let _ = self.affinities().delete(&a.name_any(), &DeleteParams::default()).await;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn confirm(&self, mut a: BlockAffinity) -> Result<(), IpamError> {
        for _ in 0..MAX_ROUNDS {
            a.spec.state = AffinityState::Confirmed;
            match self.affinities().replace(&a.name_any(), &PostParams::default(), &a).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => {
                    a = self.affinities().get(&a.name_any()).await.map_err(api_err)?;
                }
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(IpamError::Conflicts(MAX_ROUNDS))
    }

    /// Claims a block of the pool `pnet` (blocks of `block_len`) for this node: `want`, else the first one
    /// no block exists for. Two phases, as Calico: a pending BlockAffinity, the IPAMBlock, then the
    /// affinity confirmed. `None` when every candidate is taken (or `want` belongs to another node).
    pub async fn claim_block(
        &self,
        pnet: IpNet,
        block_len: u8,
        want: Option<IpNet>,
    ) -> Result<Option<IPAMBlock>, IpamError> {
        let taken: BTreeSet<String> = self.list_blocks().await?.into_iter().map(|b| b.spec.cidr).collect();
        // Lazily: an IPv6 pool's blocks are countless (a /48 holds 2^74 blocks of /122), so the first free
        // one is found by walking, never by listing them all.
        let candidates: Box<dyn Iterator<Item = IpNet> + Send> = match want {
            Some(w) => Box::new(std::iter::once(w)),
            None => Box::new(pnet.subnets(block_len).into_iter().flatten()),
        };
        let me = host_affinity(&self.node);
        for cidr in candidates.into_iter().filter(|c| !taken.contains(&c.to_string()) || want.is_some()) {
            let aname = block_affinity_name(&self.node, &cidr.to_string());
            let affinity = BlockAffinity {
                metadata: ObjectMeta { name: Some(aname.clone()), ..Default::default() },
                spec: BlockAffinitySpec {
                    state: AffinityState::Pending,
                    node: self.node.clone(),
                    cidr: cidr.to_string(),
                    deleted: false,
                },
            };
            let affinity = match self.affinities().create(&PostParams::default(), &affinity).await {
                Ok(a) => a,
                Err(e) if is_status(&e, 409) => self.affinities().get(&aname).await.map_err(api_err)?,
                Err(e) => return Err(api_err(e)),
            };
            let blk = IPAMBlock {
                metadata: ObjectMeta { name: Some(cidr_object_name(&cidr.to_string())), ..Default::default() },
                spec: block::new_block(&cidr, &self.node),
            };
            let created = match self.blocks().create(&PostParams::default(), &blk).await {
                Ok(b) => b,
                Err(e) if is_status(&e, 409) => {
                    let existing = self.blocks().get(&blk.name_any()).await.map_err(api_err)?;
                    if existing.spec.affinity.as_deref() != Some(me.as_str()) {
                        // Another node owns it: withdraw our claim and try the next block.
                        let _ = self.affinities().delete(&aname, &DeleteParams::default()).await;
                        if want.is_some() {
                            return Ok(None);
                        }
                        continue;
                    }
                    existing
                }
                Err(e) => {
                    let _ = self.affinities().delete(&aname, &DeleteParams::default()).await;
                    return Err(api_err(e));
                }
            };
            self.confirm(affinity).await?;
            tracing::info!(block = %cidr, "claimed a block");
            return Ok(Some(created));
        }
        Ok(None)
    }

    /// Creates or updates the IPAMHandle of `handle` with its addresses per block.
    pub async fn write_handle(
        &self,
        handle: &str,
        counts: &std::collections::BTreeMap<String, i32>,
    ) -> Result<(), IpamError> {
        let api = self.handles();
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

    /// Deletes the IPAMHandle of `handle` (gone already is fine).
    pub async fn delete_handle(&self, handle: &str) {
        if let Err(e) = self.handles().delete(&handle_object_name(handle), &DeleteParams::default()).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_names() {
        assert_eq!(handle_object_name("k8s-pod-network.ABC123"), "k8s-pod-network.abc123");
        assert_eq!(handle_object_name("my_net.x"), "my-net.x");
    }
}
