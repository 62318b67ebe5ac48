//! Every CustomResourceDefinition Tabby installs, in the order they are written to `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{
    BGPConfiguration, BGPPeer, BlockAffinity, IPAMBlock, IPAMConfig, IPAMHandle, IPPool, Installation, NodeStatus,
    TabbyStatus,
};

/// All CRDs, each generated from its Rust type.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Installation::crd(),
        TabbyStatus::crd(),
        IPPool::crd(),
        IPAMConfig::crd(),
        IPAMBlock::crd(),
        BlockAffinity::crd(),
        IPAMHandle::crd(),
        BGPConfiguration::crd(),
        BGPPeer::crd(),
        NodeStatus::crd(),
    ]
}
