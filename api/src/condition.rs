//! Condition types and reasons shared by Installation, TabbyStatus and NodeStatus.
//!
//! Conditions follow `metav1.Condition`; the type itself comes from k8s-openapi.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// TabbyStatus: the component works.
pub const AVAILABLE: &str = "Available";
/// TabbyStatus and Installation: a change is being rolled out.
pub const PROGRESSING: &str = "Progressing";
/// TabbyStatus and Installation: something is wrong and needs attention.
pub const DEGRADED: &str = "Degraded";
/// Installation and NodeStatus: everything asked for is in place.
pub const READY: &str = "Ready";

/// Reason: every rendered object exists and is available.
pub const REASON_ALL_OBJECTS_AVAILABLE: &str = "AllObjectsAvailable";
/// Reason: an object is not ready yet.
pub const REASON_RESOURCE_NOT_READY: &str = "ResourceNotReady";
/// Reason: pods crash-loop or stay unready.
pub const REASON_POD_FAILURE: &str = "PodFailure";
/// Reason: the Installation is invalid; nothing was applied.
pub const REASON_INVALID_CONFIGURATION: &str = "InvalidConfiguration";
/// Reason: a required object is missing.
pub const REASON_RESOURCE_NOT_FOUND: &str = "ResourceNotFound";
/// Reason: writing an object failed.
pub const REASON_RESOURCE_UPDATE_ERROR: &str = "ResourceUpdateError";

/// Finds the condition of `type_` in a list.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}
