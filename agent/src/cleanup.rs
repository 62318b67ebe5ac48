//! `tabby-agent cleanup`: removes everything Tabby put on the node — its routes (protocol tabby), its
//! devices (`vxlan.tabby`, pod host veths `tby…`), tunl0's address, the nftables table, the CNI plugin
//! binary and conflist, the route protocol name and the agent's state files — so the node is as it was
//! before. `tunl0` itself belongs to the kernel's `ipip` module and cannot be deleted: it is left down
//! without an address. Run by the
//! agent on SIGTERM when the Installation is being deleted (an uninstall, not a rolling update), and by
//! hand.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use tabby_api::{agentenv, names};

use crate::routes::kernel::{Kernel, KernelError, link_name};
use crate::routes::{self, RT_PROTOS_FILE};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("nftables: {0}")]
    Nat(#[from] crate::nat::NatError),
    #[error("removing {0}: {1}")]
    File(String, std::io::Error),
}

/// What cleanup removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub routes: usize,
    pub links: Vec<String>,
    /// tunl0 was in service and is now down without an address (or deleted, if Tabby had added it).
    pub tunl0_cleared: bool,
    pub nft_table: bool,
    pub files: Vec<PathBuf>,
}

/// The files cleanup removes, from the same environment install-cni and the agent read.
pub fn files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let bin = PathBuf::from(get(agentenv::CNI_BIN_DIR).unwrap_or_else(|| agentenv::CONTAINER_CNI_BIN_DIR.into()));
    let conf = PathBuf::from(get(agentenv::CNI_CONF_DIR).unwrap_or_else(|| agentenv::CONTAINER_CNI_CONF_DIR.into()));
    let conf_name = get(agentenv::CNI_CONF_NAME).unwrap_or_else(|| names::CNI_CONFLIST_FILE.into());
    let state = PathBuf::from(get(crate::config::ENV_STATE_DIR).unwrap_or_else(|| names::STATE_DIR.into()));
    let socket = get(crate::config::ENV_SOCKET)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(names::RUN_DIR).join("agent.sock"));
    let protos = get(ENV_RT_PROTOS_FILE).unwrap_or_else(|| RT_PROTOS_FILE.into());
    vec![
        bin.join(names::CNI_PLUGIN_BINARY),
        conf.join(conf_name),
        state.join("mtu"),
        state.join("nodename"),
        socket,
        PathBuf::from(protos),
    ]
}

/// Overrides where the route protocol name is written (tests).
pub const ENV_RT_PROTOS_FILE: &str = "TABBY_RT_PROTOS_FILE";

/// Removes Tabby's host state.
pub async fn cleanup(env: &dyn Fn(&str) -> Option<String>) -> Result<Report, CleanupError> {
    let mut rep = Report::default();
    let k = Kernel::open()?;
    // Devices first: their routes go with them.
    let links: Vec<_> = k.handle.link().get().execute().try_collect().await.map_err(KernelError::from)?;
    for l in &links {
        let Some(name) = link_name(l) else { continue };
        if name == crate::encap::vxlan::DEVICE || name.starts_with(tabby_wire::VETH_PREFIX) {
            match k.handle.link().del(l.header.index).execute().await {
                Ok(()) => rep.links.push(name),
                Err(e) => tracing::warn!(link = %name, error = %e, "deleting link"),
            }
        }
    }
    rep.tunl0_cleared = crate::encap::ipip::clear_device(&k).await?;
    let names = k.links().await?;
    let all = k.routes(&names).await?;
    rep.routes = all.len();
    let failed = k.delete(&all, &names).await;
    if let Some((dst, why)) = failed.first() {
        tracing::warn!(%dst, %why, left = failed.len(), "some routes were not removed");
    }
    rep.nft_table = crate::nat::delete()?;
    for f in files(env) {
        if remove(&f)? {
            rep.files.push(f);
        }
    }
    let _ = routes::RTPROT_TABBY;
    Ok(rep)
}

fn remove(p: &Path) -> Result<bool, CleanupError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CleanupError::File(p.display().to_string(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_follow_the_environment() {
        let env = |k: &str| match k {
            "TABBY_CNI_BIN_DIR" => Some("/x/bin".to_string()),
            "TABBY_CNI_CONF_DIR" => Some("/x/net.d".to_string()),
            "TABBY_STATE_DIR" => Some("/x/state".to_string()),
            _ => None,
        };
        let f = files(&env);
        assert_eq!(f[0], PathBuf::from("/x/bin/tabby"));
        assert_eq!(f[1], PathBuf::from("/x/net.d/10-tabby.conflist"));
        assert_eq!(f[2], PathBuf::from("/x/state/mtu"));
        assert_eq!(f[5], PathBuf::from(RT_PROTOS_FILE));
    }
}
