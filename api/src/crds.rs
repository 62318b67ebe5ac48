//! Every CustomResourceDefinition Tabby installs, in the order they are written to `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::policy::{
    GlobalNetworkPolicy, GlobalNetworkSet, NetworkPolicy, NetworkSet, StagedGlobalNetworkPolicy, StagedNetworkPolicy,
    Tier,
};
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
        Tier::crd(),
        NetworkPolicy::crd(),
        GlobalNetworkPolicy::crd(),
        StagedNetworkPolicy::crd(),
        StagedGlobalNetworkPolicy::crd(),
        NetworkSet::crd(),
        GlobalNetworkSet::crd(),
    ]
}

/// ClusterNetworkPolicy (`policy.networking.k8s.io`): not among [`all`], because it is the
/// network-policy-api project's; the operator creates it only when the cluster has none. As the project's
/// v0.3.0 CRD does, it serves `v1beta1` (stored) and `v1alpha2`, with the same schema and no conversion: an
/// object written in either version reads in the other, so manifests and clients of both keep working.
pub fn cluster_network_policy() -> CustomResourceDefinition {
    let mut crd = crate::policy::cnp::ClusterNetworkPolicy::crd();
    // `*.k8s.io` groups are protected: the API server wants the approval of the group's API review.
    crd.metadata.annotations = Some(
        [(
            "api-approved.kubernetes.io".to_string(),
            "https://github.com/kubernetes-sigs/network-policy-api/pull/30".to_string(),
        )]
        .into(),
    );
    let mut alpha = crd.spec.versions[0].clone();
    alpha.name = crate::policy::cnp::SERVED_ALSO.to_string();
    alpha.storage = false;
    crd.spec.versions.insert(0, alpha);
    crd
}
