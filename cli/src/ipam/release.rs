//! Releasing one leaked address: re-check, then compare-and-swap the block, then the handle.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use tabby_api::ipam::block;
use tabby_api::{IPAMBlock, IPAMHandle};

use super::check::Problem;
use super::{live_pods, name};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::wep::pod_ips;

/// Compare-and-swap attempts before giving up on a busy object.
const CAS_ATTEMPTS: usize = 10;

/// The reads and writes a release needs. `replace_*` are compare-and-swaps on resourceVersion:
/// `Ok(false)` means the object changed since it was read.
pub(crate) trait Store {
    async fn blocks(&self) -> Result<Vec<IPAMBlock>>;
    async fn pods(&self) -> Result<Vec<Pod>>;
    async fn replace_block(&self, block: &IPAMBlock) -> Result<bool>;
    async fn handle(&self, handle_id: &str) -> Result<Option<IPAMHandle>>;
    async fn replace_handle(&self, handle: &IPAMHandle) -> Result<bool>;
    async fn delete_handle(&self, name: &str) -> Result<()>;
}

impl Store for Cluster {
    async fn blocks(&self) -> Result<Vec<IPAMBlock>> {
        self.list::<IPAMBlock>().await
    }

    async fn pods(&self) -> Result<Vec<Pod>> {
        Cluster::pods(self, true).await
    }

    async fn replace_block(&self, block: &IPAMBlock) -> Result<bool> {
        self.replace(block).await
    }

    /// The IPAMHandle of a handle: usually named after it, else found by its `handleID`.
    async fn handle(&self, handle_id: &str) -> Result<Option<IPAMHandle>> {
        match self.get::<IPAMHandle>(handle_id).await? {
            Some(h) if h.spec.handle_id == handle_id => Ok(Some(h)),
            _ => Ok(self.list::<IPAMHandle>().await?.into_iter().find(|h| h.spec.handle_id == handle_id)),
        }
    }

    async fn replace_handle(&self, handle: &IPAMHandle) -> Result<bool> {
        self.replace(handle).await
    }

    async fn delete_handle(&self, name: &str) -> Result<()> {
        self.delete::<IPAMHandle>(name).await
    }
}

/// Re-checks and releases one address. `expected` is the report's entry: if the allocation changed since,
/// nothing is released. Returns a note on what was released (`" (handle h, pod ns/p)"`).
pub(crate) async fn release_one(store: &impl Store, ip: IpAddr, expected: Option<&Problem>) -> Result<String> {
    for _ in 0..CAS_ATTEMPTS {
        let blocks = store.blocks().await?;
        let Some((cidr, mut held)) = blocks
            .into_iter()
            .find_map(|b| block::parse_cidr(&b.spec.cidr).filter(|c| c.contains(&ip)).map(|c| (c, b)))
        else {
            return Err(Error::Ipam(format!("{ip} is in no IPAM block; nothing to release")));
        };
        let Some(allocation) = block::allocated(&cidr, &held.spec).into_iter().find(|a| a.ip == ip) else {
            return Err(Error::Ipam(format!("{ip} is not allocated; nothing to release")));
        };
        let handle = allocation.handle().map(str::to_string);
        let owner = match (allocation.secondary("namespace"), allocation.secondary("pod")) {
            (Some(ns), Some(p)) => Some((ns.to_string(), p.to_string())),
            _ => None,
        };
        if let Some(p) = expected
            && p.handle != handle
        {
            return Err(Error::Ipam(format!(
                "{ip} changed since the report (its handle is now {}); run kubectl tabby ipam check again",
                handle.as_deref().unwrap_or("unset")
            )));
        }
        // The re-check: read the pods now, right before writing.
        let pods = live_pods(store.pods().await?);
        if let Some(user) = pods.iter().find(|p| pod_ips(p).contains(&ip)) {
            return Err(Error::Ipam(format!(
                "refusing to release {ip}: pod {}/{} uses it",
                user.metadata.namespace.as_deref().unwrap_or_default(),
                user.metadata.name.as_deref().unwrap_or_default()
            )));
        }
        if let Some((ns, pod)) = &owner
            && pods.iter().any(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && p.metadata.name.as_deref() == Some(pod.as_str())
                    && pod_ips(p).is_empty()
            })
        {
            return Err(Error::Ipam(format!(
                "refusing to release {ip}: its pod {ns}/{pod} exists and has no address in its status yet (it may be starting)"
            )));
        }
        block::release(&mut held.spec, &cidr, ip).map_err(|e| Error::Ipam(e.to_string()))?;
        if !store.replace_block(&held).await? {
            continue; // someone wrote the block since we read it: read again and re-check
        }
        if let Some(h) = &handle {
            forget_in_handle(store, h, &cidr).await?;
        }
        let mut note = Vec::new();
        if let Some(h) = &handle {
            note.push(format!("handle {h}"));
        }
        if let Some((ns, pod)) = owner {
            note.push(format!("pod {ns}/{pod}"));
        }
        return Ok(if note.is_empty() { String::new() } else { format!(" ({})", note.join(", ")) });
    }
    Err(Error::Ipam(format!("{ip}: the block kept changing while releasing; try again")))
}

/// Takes one address in `cidr` off handle `handle_id`'s IPAMHandle; deletes the handle when it holds none.
async fn forget_in_handle(store: &impl Store, handle_id: &str, cidr: &IpNet) -> Result<()> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(mut handle) = store.handle(handle_id).await? else { return Ok(()) };
        let key = handle.spec.block.keys().find(|k| block::parse_cidr(k) == Some(*cidr)).cloned();
        let Some(key) = key else { return Ok(()) };
        let left = handle.spec.block.get(&key).copied().unwrap_or(0) - 1;
        if left > 0 {
            handle.spec.block.insert(key, left);
        } else {
            handle.spec.block.remove(&key);
        }
        if handle.spec.block.is_empty() {
            return store.delete_handle(&name(&handle)).await;
        }
        if store.replace_handle(&handle).await? {
            return Ok(());
        }
    }
    Err(Error::Ipam(format!("handle {handle_id} kept changing while releasing; run kubectl tabby ipam check")))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use tabby_api::ipam::AllocationAttribute;
    use tabby_api::{IPAMBlockSpec, IPAMHandleSpec};

    use super::*;

    /// What another writer does to the store just before one of our block writes.
    type OtherWriter = Box<dyn Fn(&Fake)>;

    /// An in-memory store whose objects carry resourceVersions; `on_replace` runs before each block write,
    /// playing another writer.
    struct Fake {
        block: RefCell<IPAMBlock>,
        handles: RefCell<Vec<IPAMHandle>>,
        pods: RefCell<Vec<Pod>>,
        on_replace: RefCell<Vec<OtherWriter>>,
        block_writes: RefCell<u32>,
    }

    fn rv(meta: &kube::api::ObjectMeta) -> u64 {
        meta.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    fn bump(meta: &mut kube::api::ObjectMeta) {
        meta.resource_version = Some((rv(meta) + 1).to_string());
    }

    impl Store for Fake {
        async fn blocks(&self) -> Result<Vec<IPAMBlock>> {
            Ok(vec![self.block.borrow().clone()])
        }
        async fn pods(&self) -> Result<Vec<Pod>> {
            Ok(self.pods.borrow().clone())
        }
        async fn replace_block(&self, block: &IPAMBlock) -> Result<bool> {
            let hook = self.on_replace.borrow_mut().pop();
            if let Some(other_writer) = hook {
                other_writer(self);
            }
            let mut stored = self.block.borrow_mut();
            if rv(&stored.metadata) != rv(&block.metadata) {
                return Ok(false);
            }
            *stored = block.clone();
            bump(&mut stored.metadata);
            *self.block_writes.borrow_mut() += 1;
            Ok(true)
        }
        async fn handle(&self, handle_id: &str) -> Result<Option<IPAMHandle>> {
            Ok(self.handles.borrow().iter().find(|h| h.spec.handle_id == handle_id).cloned())
        }
        async fn replace_handle(&self, handle: &IPAMHandle) -> Result<bool> {
            let mut handles = self.handles.borrow_mut();
            let Some(stored) = handles.iter_mut().find(|h| h.metadata.name == handle.metadata.name) else {
                return Ok(false);
            };
            if rv(&stored.metadata) != rv(&handle.metadata) {
                return Ok(false);
            }
            *stored = handle.clone();
            bump(&mut stored.metadata);
            Ok(true)
        }
        async fn delete_handle(&self, name: &str) -> Result<()> {
            self.handles.borrow_mut().retain(|h| h.metadata.name.as_deref() != Some(name));
            Ok(())
        }
    }

    fn attr(handle: &str, pod: &str) -> AllocationAttribute {
        AllocationAttribute {
            handle_id: Some(handle.into()),
            secondary: BTreeMap::from([("namespace".into(), "web".into()), ("pod".into(), pod.into())]),
        }
    }

    /// Block 10.0.0.0/29: .1 leaked (pod gone, handle h-gone holding 2 addresses, .1 and .2), .2 the same.
    fn fake() -> Fake {
        let mut block = IPAMBlock::new(
            "10-0-0-0-29",
            IPAMBlockSpec {
                cidr: "10.0.0.0/29".into(),
                allocations: vec![None, Some(0), Some(0), None, None, None, None, None],
                unallocated: vec![0, 3, 4, 5, 6, 7],
                attributes: vec![attr("h-gone", "gone")],
                ..Default::default()
            },
        );
        block.metadata.resource_version = Some("1".into());
        let mut handle = IPAMHandle::new(
            "h-gone",
            IPAMHandleSpec {
                handle_id: "h-gone".into(),
                block: BTreeMap::from([("10.0.0.0/29".into(), 2)]),
                deleted: false,
            },
        );
        handle.metadata.resource_version = Some("1".into());
        Fake {
            block: RefCell::new(block),
            handles: RefCell::new(vec![handle]),
            pods: RefCell::new(vec![]),
            on_replace: RefCell::new(vec![]),
            block_writes: RefCell::new(0),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod_with_ip(name: &str, address: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "web"},
            "status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn release_retries_after_a_conflict_and_keeps_the_other_write() {
        let store = fake();
        // Another writer allocates ordinal 5 between our read and our write.
        store.on_replace.borrow_mut().push(Box::new(|s: &Fake| {
            let mut b = s.block.borrow_mut();
            b.spec.allocations[5] = Some(0);
            b.spec.unallocated.retain(|&o| o != 5);
            bump(&mut b.metadata);
        }));
        let note = release_one(&store, ip("10.0.0.1"), None).await.unwrap();
        assert_eq!(note, " (handle h-gone, pod web/gone)");
        let block = store.block.borrow();
        assert_eq!(block.spec.allocations, vec![None, None, Some(0), None, None, Some(0), None, None]);
        assert_eq!(block.spec.unallocated, vec![0, 3, 4, 6, 7, 1]);
        assert_eq!(*store.block_writes.borrow(), 1);
        let handles = store.handles.borrow();
        assert_eq!(handles[0].spec.block, BTreeMap::from([("10.0.0.0/29".to_string(), 1)]));
    }

    #[tokio::test]
    async fn a_pod_taking_the_address_during_the_retry_stops_the_release() {
        let store = fake();
        store.on_replace.borrow_mut().push(Box::new(|s: &Fake| {
            bump(&mut s.block.borrow_mut().metadata);
            s.pods.borrow_mut().push(pod_with_ip("new", "10.0.0.1"));
        }));
        let err = release_one(&store, ip("10.0.0.1"), None).await.unwrap_err();
        assert_eq!(err.to_string(), "refusing to release 10.0.0.1: pod web/new uses it");
        assert_eq!(store.block.borrow().spec.allocations[1], Some(0));
        assert_eq!(*store.block_writes.borrow(), 0);
    }

    #[tokio::test]
    async fn the_last_address_of_a_handle_deletes_it() {
        let store = fake();
        release_one(&store, ip("10.0.0.1"), None).await.unwrap();
        release_one(&store, ip("10.0.0.2"), None).await.unwrap();
        assert!(store.handles.borrow().is_empty());
        assert_eq!(store.block.borrow().spec.attributes, vec![]);
        assert_eq!(store.block.borrow().spec.sequence_number, 2);
    }

    #[tokio::test]
    async fn refusals() {
        let store = fake();
        let free = release_one(&store, ip("10.0.0.3"), None).await.unwrap_err();
        assert_eq!(free.to_string(), "10.0.0.3 is not allocated; nothing to release");
        let outside = release_one(&store, ip("10.9.0.1"), None).await.unwrap_err();
        assert_eq!(outside.to_string(), "10.9.0.1 is in no IPAM block; nothing to release");
        let mut starting: Pod = pod_with_ip("gone", "10.0.0.1");
        starting.status = None;
        store.pods.borrow_mut().push(starting);
        let err = release_one(&store, ip("10.0.0.1"), None).await.unwrap_err();
        assert!(err.to_string().contains("its pod web/gone exists and has no address"), "{err}");
        store.pods.borrow_mut().clear();
        let report = Problem {
            kind: super::super::check::ProblemKind::AllocatedWithoutPod,
            ip: Some("10.0.0.1".into()),
            block: None,
            handle: Some("h-other".into()),
            namespace: None,
            pod: None,
            node: None,
            detail: String::new(),
        };
        let changed = release_one(&store, ip("10.0.0.1"), Some(&report)).await.unwrap_err();
        assert!(changed.to_string().contains("changed since the report (its handle is now h-gone)"), "{changed}");
        // Every attempt conflicting: it gives up rather than loop.
        for _ in 0..CAS_ATTEMPTS {
            store.on_replace.borrow_mut().push(Box::new(|s: &Fake| bump(&mut s.block.borrow_mut().metadata)));
        }
        let busy = release_one(&store, ip("10.0.0.1"), None).await.unwrap_err();
        assert!(busy.to_string().contains("kept changing"), "{busy}");
        assert_eq!(*store.block_writes.borrow(), 0);
    }
}
