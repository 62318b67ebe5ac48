//! BGP with the `tabby-bgp` speaker: who this node peers with ([`plan`]: the node-to-node mesh, BGPPeers,
//! route reflectors), what it advertises ([`advertisements`]: own blocks as aggregates, borrowed /32s,
//! service CIDRs), and the glue ([`Mesh`]) that runs the speaker, originates and withdraws prefixes and
//! installs the best paths it learns as `proto tabby` routes.
//!
//! A change of the peer set is applied to the running speaker peer by peer ([`peer_diff`]): a new Node
//! adds one session, a deleted one removes one, a changed BGPPeer (password, timers) restarts only its
//! session; every other session stays Established. Only a change of the speaker itself (AS number,
//! router ID, IPv6 address, listen port, cluster ID, mesh restart time) restarts it, with the graceful-restart
//! Restart State bit set: peers keep our routes (and the kernel keeps theirs) while the new sessions
//! come up, so no traffic is dropped.
//!
//! | module | what |
//! |---|---|
//! | [`plan`] | pure: the peers and the speaker this node should have, and the difference between two peer sets |
//! | [`advertise`] | pure: the prefixes this node originates |
//! | [`mesh`] | the running speaker, its originated prefixes and learned routes |
//!
//! [`Bgp`] is the reconciler: desired = the plan, the advertisements and the encapsulation rules of
//! learned routes; apply = the mesh brought there.

pub mod advertise;
pub mod mesh;
pub mod plan;

use std::collections::BTreeSet;

use ipnet::IpNet;

pub use advertise::advertisements;
pub use mesh::Mesh;
pub use plan::{PeerDiff, PlannedPeer, SpeakerPlan, peer_diff, plan};

use crate::encap::ipip::Encap;
use crate::facts::Snapshot;
use crate::reconcile::{Local, Outcome, Reconciler};
use crate::routes::RouteTable;

/// What BGP wants this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `None`: BGP is off on this node (`TABBY_BGP=Disabled`), or the node has no IPv4 address yet.
    pub speaker: Option<SpeakerPlan>,
    pub adverts: BTreeSet<IpNet>,
    /// How learned routes become kernel routes (IPIP pools through `tunl0`).
    pub encap: Encap,
}

/// The BGP reconciler.
pub struct Bgp {
    enabled: bool,
    mesh: Mesh,
    table: RouteTable,
}

impl Bgp {
    pub fn new(enabled: bool, table: RouteTable, hold_time: u16) -> Bgp {
        Bgp { enabled, mesh: Mesh::new(table.clone(), hold_time), table }
    }
}

impl Reconciler for Bgp {
    const NAME: &'static str = "bgp";
    type Desired = Desired;

    fn desired(&self, facts: &Snapshot, local: &Local) -> Desired {
        let me = &facts.node;
        let speaker = self
            .enabled
            .then(|| plan(me, &facts.nodes, &facts.bgp_config, &facts.bgp_peers, &|s| facts.secret(s)))
            .flatten();
        Desired {
            speaker,
            adverts: advertisements(me, &facts.blocks, &facts.pools, &facts.bgp_config),
            encap: Encap::new(&facts.pools, local.addr_v4),
        }
    }

    async fn apply(&mut self, want: &Desired, local: &mut Local) -> Outcome {
        self.mesh.set_encap(want.encap.clone()).await;
        if !self.enabled {
            // Nothing will replace the routes a previous agent learned: stop keeping them.
            self.table.hold_remote(None);
            local.bgp = None;
            local.bgp_ready = true;
            return Outcome::default();
        }
        let r = self.mesh.apply(want.speaker.clone(), &want.adverts).await;
        local.bgp = self.mesh.status();
        local.bgp_ready = self.mesh.ready();
        match r {
            Ok(n) => Outcome::changed(n),
            Err(e) => Outcome { error: Some(e), ..Outcome::default() },
        }
    }
}
