//! `TabbyStatus` (`operator.tabby.dev/v1`): the health of one Tabby component, written by the operator.
//!
//! One object per component (`network` for the core pod network), so users can run
//! `kubectl wait --for=condition=Available tabbystatus/network`.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// TabbyStatus has no desired state: it only reports.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "operator.tabby.dev",
    version = "v1",
    kind = "TabbyStatus",
    plural = "tabbystatuses",
    status = "TabbyStatusStatus",
    doc = "TabbyStatus reports whether a Tabby component is Available, Progressing or Degraded.",
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status",
        description = "The component works"
    ),
    printcolumn(
        name = "Progressing",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Progressing\")].status",
        description = "A change is rolling out"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].status",
        description = "Something needs attention"
    ),
    printcolumn(
        name = "Since",
        type_ = "date",
        json_path = ".status.conditions[?(@.type==\"Available\")].lastTransitionTime",
        description = "When Available last changed"
    )
)]
pub struct TabbyStatusSpec {}

/// Conditions of the component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TabbyStatusStatus {
    /// Available, Progressing and Degraded, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
