//! `tabby-agent cleanup`: every reconciler's teardown, then install-cni's files and the socket — so the
//! node is as it was before Tabby. The pod host veths and every `proto tabby` route go (their devices'
//! routes with them), `vxlan.tabby`, tunl0's address (`tunl0` itself belongs to the kernel's `ipip` module
//! and cannot be deleted: it is left down without an address), policy's and NAT's objects of table
//! `inet tabby` (and the table once nothing else is in it), the CNI plugin binary and conflist, the route protocol name and the
//! agent's state files. Run by the agent on SIGTERM when the Installation is being deleted (an uninstall,
//! not a rolling update), and by hand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::{Api, Client};
use tabby_api::installation::Installation;
use tabby_api::names;

use crate::config::Paths;
use crate::encap::ipip::Ipip;
use crate::encap::vxlan::Vxlan;
use crate::kernel::nft::Nft;
use crate::kernel::{Kernel, KernelError};
use crate::nat::Nat;
use crate::node::{Identity, remove_file};
use crate::reconcile::{Reconciler, Removed, TeardownError};
use crate::routes::RouteTable;
use crate::routes::pods::PodRoutes;

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Teardown(#[from] TeardownError),
    #[error("{0}")]
    File(String),
}

/// Removes Tabby's host state.
pub async fn cleanup(paths: &Paths) -> Result<Removed, CleanupError> {
    let k = Kernel::open()?;
    let mut removed = Removed::default();
    removed.add(Vxlan::new("", k.clone(), RouteTable::new(), None).teardown().await?);
    removed.add(PodRoutes::new(RouteTable::new()).teardown().await?);
    removed.add(Ipip::new("", k, None, false).teardown().await?);
    // Policy before NAT: NAT removes the table once nothing else is in it.
    let gate = crate::policy::gate::Gate::new("", Arc::default(), None);
    removed.add(
        crate::policy::Policy::new(Arc::new(Mutex::new(Nft::default())), Duration::ZERO, gate, None).teardown().await?,
    );
    removed.add(Nat::new(Arc::new(Mutex::new(Nft::default())), Duration::ZERO).teardown().await?);
    removed.add(Identity::for_teardown(paths).teardown().await?);
    for f in [paths.plugin(), paths.conflist(), paths.socket.clone()] {
        if remove_file(&f).map_err(CleanupError::File)? {
            removed.files.push(f);
        }
    }
    Ok(removed)
}

/// True when Installation/default exists with a deletionTimestamp.
pub async fn uninstalling(client: &Client) -> bool {
    match Api::<Installation>::all(client.clone()).get_opt(names::DEFAULT_NAME).await {
        Ok(Some(i)) => i.metadata.deletion_timestamp.is_some(),
        _ => false,
    }
}
