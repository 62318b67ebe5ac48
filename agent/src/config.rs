//! The agent's configuration, from the environment the operator renders (tabby_api::agentenv) plus the
//! agent's own settings (paths and IPAM timings), so several agents can share one machine in tests.

use std::path::PathBuf;
use std::time::Duration;

use tabby_api::{agentenv, names};

/// Path of the CNI socket (default `/var/run/tabby/agent.sock`).
pub const ENV_SOCKET: &str = "TABBY_AGENT_SOCKET";
/// State directory (default `/var/lib/tabby`): `mtu` and `nodename` are written there.
pub const ENV_STATE_DIR: &str = "TABBY_STATE_DIR";
/// Seconds an allocation must look leaked before it is released (default 900, Calico's 15 minutes).
pub const ENV_LEAK_GRACE: &str = "TABBY_IPAM_LEAK_GRACE_SECONDS";
/// Seconds between passes of the cluster IPAM garbage collector and of the resync (default 60).
pub const ENV_GC_INTERVAL: &str = "TABBY_IPAM_GC_INTERVAL_SECONDS";
/// `Enabled` (default) or `Disabled`: whether this agent competes for the IPAM garbage collector lease.
pub const ENV_GC: &str = "TABBY_IPAM_GC";
/// Namespace of the garbage collector's Lease (default tabby-system).
pub const ENV_LEASE_NAMESPACE: &str = "TABBY_LEASE_NAMESPACE";
/// Name of the garbage collector's Lease.
pub const GC_LEASE_NAME: &str = "tabby-ipam-gc";

/// A setting that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (the DaemonSet passes it from spec.nodeName)")]
    Missing(&'static str),
    #[error("{name}={value:?}: {reason}")]
    Invalid { name: &'static str, value: String, reason: String },
}

/// Everything `tabby-agent run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Pod MTU; 0: detect from the interface of the default route.
    pub mtu: u32,
    pub log_level: String,
    /// Health and metrics port; 0 picks a free one.
    pub health_port: u16,
    pub leak_grace: Duration,
    pub gc_interval: Duration,
    pub gc_enabled: bool,
    pub lease_namespace: String,
}

impl Config {
    /// Reads the configuration through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        fn num<T: std::str::FromStr>(name: &'static str, v: Option<String>, default: T) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match v {
                None => Ok(default),
                Some(s) => s.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    value: s.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        let node = get(agentenv::NODENAME).ok_or(ConfigError::Missing(agentenv::NODENAME))?;
        let gc = get(ENV_GC).unwrap_or_else(|| "Enabled".into());
        let gc_enabled = match gc.to_ascii_lowercase().as_str() {
            "enabled" | "true" => true,
            "disabled" | "false" => false,
            _ => return Err(ConfigError::Invalid { name: ENV_GC, value: gc, reason: "Enabled or Disabled".into() }),
        };
        Ok(Config {
            node,
            socket: get(ENV_SOCKET)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(names::RUN_DIR).join("agent.sock")),
            state_dir: get(ENV_STATE_DIR).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(names::STATE_DIR)),
            mtu: num(agentenv::MTU, get(agentenv::MTU), 0)?,
            log_level: tabby_obs::level_from_severity(&get(agentenv::LOG_SEVERITY).unwrap_or_default()).to_string(),
            health_port: num(agentenv::HEALTH_PORT, get(agentenv::HEALTH_PORT), agentenv::DEFAULT_HEALTH_PORT)?,
            leak_grace: Duration::from_secs(num(ENV_LEAK_GRACE, get(ENV_LEAK_GRACE), 900)?),
            gc_interval: Duration::from_secs(num(ENV_GC_INTERVAL, get(ENV_GC_INTERVAL), 60)?.max(1)),
            gc_enabled,
            lease_namespace: get(ENV_LEASE_NAMESPACE).unwrap_or_else(|| names::SYSTEM_NAMESPACE.into()),
        })
    }
}

/// The pod MTU: the configured one, else the MTU of the interface holding the IPv4 default route, else 1500.
pub fn detect_mtu(configured: u32) -> u32 {
    if configured != 0 {
        return configured;
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    iface
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(matches!(Config::from_env(&env(&[])), Err(ConfigError::Missing("NODENAME"))));
        let c = Config::from_env(&env(&[("NODENAME", "n1")])).unwrap();
        assert_eq!(c.socket, PathBuf::from("/var/run/tabby/agent.sock"));
        assert_eq!(c.health_port, 9099);
        assert_eq!(c.leak_grace, Duration::from_secs(900));
        assert!(c.gc_enabled);
        let c = Config::from_env(&env(&[("NODENAME", "n1"), ("TABBY_MTU", "1400"), ("TABBY_IPAM_GC", "Disabled")]))
            .unwrap();
        assert_eq!((c.mtu, c.gc_enabled), (1400, false));
        assert!(Config::from_env(&env(&[("NODENAME", "n1"), ("TABBY_MTU", "big")])).is_err());
    }
}
