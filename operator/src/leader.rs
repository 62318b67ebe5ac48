//! Leader election on a `coordination.k8s.io` Lease, so that of several operator replicas only one writes.
//!
//! The holder renews the lease every [`RENEW`]; another replica takes over once the lease has not been
//! renewed for [`LEASE_DURATION`]. A leader that cannot renew within the lease duration stops leading
//! (the process exits and restarts as a follower). Timings follow Calico's: 15 s lease, 10 s renew, 2 s retry.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW: Duration = Duration::from_secs(10);
pub const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {0}: {1}")]
    Api(String, kube::Error),
    #[error("lost the lease {0}: not renewed within {1:?}")]
    Lost(String, Duration),
}

/// One replica's view of the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

/// Whether `holder`'s lease, last renewed at `renewed` for `duration`, has expired at `now`.
pub fn expired(renewed: Option<Timestamp>, duration: Duration, now: Timestamp) -> bool {
    match renewed {
        None => true,
        Some(t) => now.duration_since(t).as_secs_f64() > duration.as_secs_f64(),
    }
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: LEASE_DURATION,
        }
    }

    /// Tries once to take or keep the lease; true when this replica holds it afterwards.
    pub async fn try_acquire(&self) -> Result<bool, LeaderError> {
        let err = |e| LeaderError::Api(self.name.clone(), e);
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        match self.api.get_opt(&self.name).await.map_err(err)? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(spec(0, None)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(err(e)),
                }
            }
            Some(mut lease) => {
                let current = lease.spec.clone().unwrap_or_default();
                let holder = current.holder_identity.clone().unwrap_or_default();
                let duration = current
                    .lease_duration_seconds
                    .map(|s| Duration::from_secs(s.max(0) as u64))
                    .unwrap_or(self.lease_duration);
                let ours = holder == self.identity;
                if !ours && !holder.is_empty() && !expired(current.renew_time.as_ref().map(|t| t.0), duration, now) {
                    return Ok(false);
                }
                let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
                let acquired = if ours { current.acquire_time.clone() } else { None };
                lease.spec = Some(spec(transitions, acquired));
                // replace() sends the resourceVersion we read: if another replica wrote in between, we get a
                // conflict and did not take the lease.
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(err(e)),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        loop {
            match self.try_acquire().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the lease until renewal fails for longer than the lease duration; then returns the loss.
    pub async fn keep(&self) -> LeaderError {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(if last_renewed.elapsed() < RENEW {
                RENEW - last_renewed.elapsed().min(RENEW)
            } else {
                RETRY
            })
            .await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => return LeaderError::Lost(self.name.clone(), self.lease_duration),
                Err(e) => tracing::warn!(error = %e, "renewing the lease"),
            }
            if last_renewed.elapsed() > self.lease_duration {
                return LeaderError::Lost(self.name.clone(), self.lease_duration);
            }
        }
    }

    /// Gives the lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
        }
    }
}

/// Waits to lead, then runs `work` while renewing the lease. Returns when `work` ends or the lease is
/// lost (the error); the caller exits so a fresh process starts as a follower.
pub async fn lead<F: std::future::Future<Output = ()>>(elector: &LeaderElector, work: F) -> Result<(), LeaderError> {
    elector.acquire().await?;
    tracing::info!(identity = %elector.identity, "leading");
    tokio::select! {
        _ = work => Ok(()),
        lost = elector.keep() => Err(lost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let t2: Timestamp = "2026-01-01T00:00:16Z".parse().unwrap();
        assert!(!expired(Some(t0), LEASE_DURATION, t1));
        assert!(expired(Some(t0), LEASE_DURATION, t2));
        assert!(expired(None, LEASE_DURATION, t0));
    }
}
