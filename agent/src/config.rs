//! The agent's configuration, read once from the environment the operator renders
//! ([`tabby_api::agentenv`]) plus the agent's own settings (paths and timings, so several agents can share
//! one machine in tests). [`Paths`] is what `install-cni` and `cleanup` need too, without a node name.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
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
/// Seconds between full route and NAT resyncs (default 30).
pub const ENV_RESYNC: &str = "TABBY_ROUTE_RESYNC_SECONDS";
/// Seconds between NodeStatus heartbeats (default 60).
pub const ENV_HEARTBEAT: &str = "TABBY_STATUS_HEARTBEAT_SECONDS";
/// Hold time the BGP speaker proposes (default 90; 0 or at least 3).
pub const ENV_BGP_HOLD_TIME: &str = "TABBY_BGP_HOLD_TIME";
/// Where the route protocol's name is written (tests).
pub const ENV_RT_PROTOS_FILE: &str = "TABBY_RT_PROTOS_FILE";
/// Where iproute2 learns the name of Tabby's route protocol.
pub const RT_PROTOS_FILE: &str = "/etc/iproute2/rt_protos.d/tabby.conf";
/// Name of the garbage collector's Lease.
pub const GC_LEASE_NAME: &str = "tabby-ipam-gc";

/// An autodetection method.
#[derive(Debug, Clone)]
pub enum Method {
    FirstFound,
    KubernetesInternalIp,
    Interface(regex::Regex),
    SkipInterface(regex::Regex),
    CanReach(String),
    Cidrs(Vec<IpNet>),
    /// `none`: no address of this family.
    None,
}

/// An autodetection method that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("autodetection method {0:?}: {1}")]
pub struct MethodError(pub String, pub String);

impl Method {
    /// Parses Calico's syntax (`first-found`, `kubernetes-internal-ip`, `interface=RE`, `skip-interface=RE`,
    /// `can-reach=DEST`, `cidr=CIDR[,CIDR…]`, `none`).
    pub fn parse(s: &str) -> Result<Method, MethodError> {
        let bad = |why: String| MethodError(s.to_string(), why);
        let s = s.trim();
        let (k, v) = s.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((s, ""));
        let re = |v: &str| regex::Regex::new(&format!("^(?:{v})$")).map_err(|e| bad(e.to_string()));
        Ok(match k {
            "" | "first-found" | "firstFound" => Method::FirstFound,
            "kubernetes-internal-ip" | "kubernetes" => Method::KubernetesInternalIp,
            "interface" => Method::Interface(re(v)?),
            "skip-interface" => Method::SkipInterface(re(v)?),
            "can-reach" if !v.is_empty() => Method::CanReach(v.to_string()),
            "cidr" | "cidrs" => Method::Cidrs(
                v.split(',')
                    .filter(|c| !c.trim().is_empty())
                    .map(|c| c.trim().parse::<IpNet>().map_err(|e| bad(e.to_string())))
                    .collect::<Result<_, _>>()?,
            ),
            "none" => Method::None,
            _ => return Err(bad("unknown method".into())),
        })
    }
}

/// A setting that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (the DaemonSet passes it from spec.nodeName)")]
    Missing(&'static str),
    #[error("{name}={value:?}: {reason}")]
    Invalid { name: &'static str, value: String, reason: String },
}

/// A variable of the environment, `None` when unset or blank (one convention for "empty").
fn var(env: &dyn Fn(&str) -> Option<String>, k: &str) -> Option<String> {
    env(k).filter(|v| !v.trim().is_empty())
}

/// Every file the agent and install-cni put on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub protos_file: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_conf_name: String,
}

impl Paths {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Paths {
        let path = |k: &str, default: &str| PathBuf::from(var(env, k).unwrap_or_else(|| default.into()));
        Paths {
            socket: var(env, ENV_SOCKET)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(names::RUN_DIR).join("agent.sock")),
            state_dir: path(ENV_STATE_DIR, names::STATE_DIR),
            protos_file: path(ENV_RT_PROTOS_FILE, RT_PROTOS_FILE),
            cni_bin_dir: path(agentenv::CNI_BIN_DIR, agentenv::CONTAINER_CNI_BIN_DIR),
            cni_conf_dir: path(agentenv::CNI_CONF_DIR, agentenv::CONTAINER_CNI_CONF_DIR),
            cni_conf_name: var(env, agentenv::CNI_CONF_NAME).unwrap_or_else(|| names::CNI_CONFLIST_FILE.into()),
        }
    }

    /// The plugin binary install-cni writes.
    pub fn plugin(&self) -> PathBuf {
        self.cni_bin_dir.join(names::CNI_PLUGIN_BINARY)
    }

    /// The conflist install-cni writes.
    pub fn conflist(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.cni_conf_name)
    }

    /// The agent's state files: the pod MTU and the node name.
    pub fn state_files(&self) -> [PathBuf; 2] {
        [self.state_dir.join("mtu"), self.state_dir.join("nodename")]
    }
}

/// Everything `tabby-agent run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub paths: Paths,
    /// Pod MTU; 0: detect (the smallest underlay MTU minus the encapsulation's overhead).
    pub mtu: u32,
    pub log_level: String,
    /// Health and metrics port; 0 picks a free one.
    pub health_port: u16,
    pub leak_grace: Duration,
    pub gc_interval: Duration,
    pub gc_enabled: bool,
    pub lease_namespace: String,
    /// Whether the BGP speaker runs (`TABBY_BGP`, default Enabled).
    pub bgp: bool,
    /// Autodetection of the node's IPv4 address, and of its IPv6 address (unset: none).
    pub v4: Method,
    pub v6: Option<Method>,
    pub resync: Duration,
    pub heartbeat: Duration,
    pub hold_time: u16,
}

fn num<T: std::str::FromStr>(name: &'static str, v: Option<String>, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match v {
        None => Ok(default),
        Some(s) => {
            s.trim().parse().map_err(|e: T::Err| ConfigError::Invalid { name, value: s.clone(), reason: e.to_string() })
        }
    }
}

impl Config {
    /// Reads the configuration through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| var(env, k);
        let node = get(agentenv::NODENAME).ok_or(ConfigError::Missing(agentenv::NODENAME))?;
        let switch = |name: &'static str, default: &str| {
            let v = get(name).unwrap_or_else(|| default.into());
            match v.to_ascii_lowercase().as_str() {
                "enabled" | "true" => Ok(true),
                "disabled" | "false" => Ok(false),
                _ => Err(ConfigError::Invalid { name, value: v, reason: "Enabled or Disabled".into() }),
            }
        };
        let method = |name: &'static str, v: String| {
            Method::parse(&v).map_err(|e| ConfigError::Invalid { name, value: v, reason: e.to_string() })
        };
        let secs = |name: &'static str, default: u64| Ok(Duration::from_secs(num(name, get(name), default)?.max(1)));
        let hold: u16 = num(ENV_BGP_HOLD_TIME, get(ENV_BGP_HOLD_TIME), 90)?;
        if (1..3).contains(&hold) {
            return Err(ConfigError::Invalid {
                name: ENV_BGP_HOLD_TIME,
                value: hold.to_string(),
                reason: "0 or at least 3 seconds".into(),
            });
        }
        Ok(Config {
            paths: Paths::from_env(env),
            mtu: num(agentenv::MTU, get(agentenv::MTU), 0)?,
            log_level: tabby_obs::level_from_severity(&get(agentenv::LOG_SEVERITY).unwrap_or_default()).to_string(),
            health_port: num(agentenv::HEALTH_PORT, get(agentenv::HEALTH_PORT), agentenv::DEFAULT_HEALTH_PORT)?,
            leak_grace: Duration::from_secs(num(ENV_LEAK_GRACE, get(ENV_LEAK_GRACE), 900)?),
            gc_interval: secs(ENV_GC_INTERVAL, 60)?,
            gc_enabled: switch(ENV_GC, "Enabled")?,
            lease_namespace: get(ENV_LEASE_NAMESPACE).unwrap_or_else(|| names::SYSTEM_NAMESPACE.into()),
            bgp: switch(agentenv::BGP, "Enabled")?,
            v4: method(
                agentenv::IP_AUTODETECTION_METHOD,
                get(agentenv::IP_AUTODETECTION_METHOD).unwrap_or_else(|| "first-found".into()),
            )?,
            v6: get(agentenv::IP6_AUTODETECTION_METHOD)
                .map(|m| method(agentenv::IP6_AUTODETECTION_METHOD, m))
                .transpose()?,
            resync: secs(ENV_RESYNC, 30)?,
            heartbeat: secs(ENV_HEARTBEAT, 60)?,
            hold_time: hold,
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_and_errors() {
        assert!(matches!(Config::from_env(&env(&[])), Err(ConfigError::Missing("NODENAME"))));
        let c = Config::from_env(&env(&[("NODENAME", "n1")])).unwrap();
        assert_eq!(c.paths.socket, PathBuf::from("/var/run/tabby/agent.sock"));
        assert_eq!(c.health_port, 9099);
        assert_eq!(c.leak_grace, Duration::from_secs(900));
        assert!(c.gc_enabled && c.bgp);
        assert_eq!((c.resync, c.heartbeat, c.hold_time), (Duration::from_secs(30), Duration::from_secs(60), 90));
        assert!(matches!(c.v4, Method::FirstFound) && c.v6.is_none());
        let c = Config::from_env(&env(&[("NODENAME", "n1"), ("TABBY_MTU", "1400"), ("TABBY_IPAM_GC", "Disabled")]))
            .unwrap();
        assert_eq!((c.mtu, c.gc_enabled), (1400, false));
        assert!(Config::from_env(&env(&[("NODENAME", "n1"), ("TABBY_MTU", "big")])).is_err());
        let c = Config::from_env(&env(&[
            ("NODENAME", "n1"),
            ("TABBY_BGP", "Disabled"),
            ("TABBY_BGP_HOLD_TIME", "9"),
            ("TABBY_IP6_AUTODETECTION_METHOD", "interface=eth0"),
            ("TABBY_ROUTE_RESYNC_SECONDS", "0"),
        ]))
        .unwrap();
        assert!(!c.bgp && matches!(c.v6, Some(Method::Interface(_))));
        assert_eq!((c.hold_time, c.resync), (9, Duration::from_secs(1)));
        let bad = Config::from_env(&env(&[("NODENAME", "n1"), ("TABBY_IP_AUTODETECTION_METHOD", "interface=(")]));
        assert!(bad.unwrap_err().to_string().starts_with("TABBY_IP_AUTODETECTION_METHOD=\"interface=(\""));
        assert!(Config::from_env(&env(&[("NODENAME", "n1"), ("TABBY_BGP_HOLD_TIME", "2")])).is_err());
        // Blank is unset, everywhere.
        let c = Config::from_env(&env(&[("NODENAME", "n1"), ("TABBY_STATE_DIR", " ")])).unwrap();
        assert_eq!(c.paths.state_dir, PathBuf::from("/var/lib/tabby"));
    }

    #[test]
    fn paths_follow_the_environment() {
        let p = Paths::from_env(&env(&[
            ("TABBY_CNI_BIN_DIR", "/x/bin"),
            ("TABBY_CNI_CONF_DIR", "/x/net.d"),
            ("TABBY_STATE_DIR", "/x/state"),
        ]));
        assert_eq!(p.plugin(), PathBuf::from("/x/bin/tabby"));
        assert_eq!(p.conflist(), PathBuf::from("/x/net.d/10-tabby.conflist"));
        assert_eq!(p.state_files()[0], PathBuf::from("/x/state/mtu"));
        assert_eq!(p.protos_file, PathBuf::from(RT_PROTOS_FILE));
    }

    #[test]
    fn methods_parse_in_calico_syntax() {
        assert!(matches!(Method::parse("first-found").unwrap(), Method::FirstFound));
        assert!(matches!(Method::parse("").unwrap(), Method::FirstFound));
        assert!(matches!(Method::parse("kubernetes-internal-ip").unwrap(), Method::KubernetesInternalIp));
        assert!(matches!(Method::parse("interface=eth.*").unwrap(), Method::Interface(_)));
        assert!(matches!(Method::parse("can-reach=8.8.8.8").unwrap(), Method::CanReach(_)));
        match Method::parse("cidr=10.0.0.0/8, 192.168.0.0/16").unwrap() {
            Method::Cidrs(c) => assert_eq!(c.len(), 2),
            m => panic!("{m:?}"),
        }
        assert!(Method::parse("cidr=nonsense").is_err());
        assert!(Method::parse("interface=(").is_err());
        assert!(Method::parse("guess").is_err());
    }
}
