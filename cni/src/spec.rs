//! The CNI specification's data: versions, error codes, the network configuration Tabby reads and the
//! result it prints (spec 1.1.0, also 1.0.0, 0.4.0, 0.3.1 and 0.3.0 output).

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Value, json};

/// The spec version this plugin implements.
pub const SPEC_VERSION: &str = "1.1.0";
/// Every config version accepted. 0.3.0 and 0.3.1 are still what Multus delegates with and what many
/// existing conflists say; Calico and the reference plugins accept them too.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Whether a configuration of `version` may ask for CHECK (the command came with 0.4.0).
pub fn allows_check(version: &str) -> bool {
    !matches!(version, "0.3.0" | "0.3.1")
}

/// Error codes: 1-99 are the spec's, 100+ Tabby's own (docs/cni.md lists them).
pub use tabby_wire::code;

/// An error as the spec prints it: `{"cniVersion","code","msg","details"}` on stdout, non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details}) [code {code}]")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The spec's error object.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// The plugin's entry of the network configuration (one plugin of a conflist, with `name` and
/// `cniVersion` copied in by the runtime).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Pod interface MTU; 0 or unset: the agent's.
    #[serde(default)]
    pub mtu: u32,
    /// The agent's socket.
    #[serde(default = "default_socket")]
    pub agent_socket: String,
    /// The plugin's log file; empty: no log.
    #[serde(default = "default_log_file")]
    pub log_file_path: String,
    /// `error`, `warn`, `info` (default) or `debug`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Seconds the plugin waits for the agent.
    #[serde(default = "default_timeout")]
    pub agent_timeout_seconds: u64,
    /// The previous plugin's result (CHECK, DEL, chained plugins).
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// GC: attachments the runtime still uses.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

fn default_socket() -> String {
    "/var/run/tabby/agent.sock".into()
}

fn default_log_file() -> String {
    "/var/log/tabby/cni.log".into()
}

fn default_timeout() -> u64 {
    30
}

/// Parses and validates the configuration from stdin.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE, "failed to decode the network configuration", e.to_string()))?;
    let Some(obj) = value.as_object() else {
        return Err(CniError::new(code::DECODE, "failed to decode the network configuration", "not a JSON object"));
    };
    let version = obj.get("cniVersion").and_then(Value::as_str).unwrap_or_default();
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("config has cniVersion {version:?}; supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let conf: NetConf = serde_json::from_value(value)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid network configuration", e.to_string()))?;
    if conf.name.is_empty() || !conf.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            format!("name {:?}: must be non-empty letters, digits, '-', '_' or '.'", conf.name),
        ));
    }
    if conf.mtu != 0 && !(576..=65535).contains(&conf.mtu) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            format!("mtu {}: must be 0 (the agent's) or 576-65535", conf.mtu),
        ));
    }
    if conf.agent_socket.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "invalid network configuration", "agent_socket is empty"));
    }
    Ok(conf)
}

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the container.
    pub sandbox: Option<String>,
}

/// The result of ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    /// Pod addresses (with their prefix: /32 or /128) and the index of the pod interface in `interfaces`.
    pub ips: Vec<(IpAddr, u8, Option<IpAddr>, usize)>,
    /// (destination network, prefix length, gateway).
    pub routes: Vec<(IpAddr, u8, Option<IpAddr>)>,
}

impl AddResult {
    /// The result in the shape of `cni_version` (0.3.0, 0.3.1 and 0.4.0 add `version` to each ip).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({"name": i.name, "mac": i.mac});
                if let Some(s) = &i.sandbox {
                    v["sandbox"] = json!(s);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|(addr, prefix, gw, iface)| {
                let mut v = json!({"address": format!("{addr}/{prefix}"), "interface": iface});
                if let Some(gw) = gw {
                    v["gateway"] = json!(gw.to_string());
                }
                if cni_version.starts_with("0.") {
                    v["version"] = json!(if addr.is_ipv4() { "4" } else { "6" });
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|(dst, len, gw)| {
                let mut v = json!({"dst": format!("{dst}/{len}")});
                if let Some(gw) = gw {
                    v["gw"] = json!(gw.to_string());
                }
                v
            })
            .collect();
        json!({"cniVersion": cni_version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": {}})
    }
}

/// The parts of a prevResult CHECK compares: pod addresses (with prefix) and route destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrevResult {
    pub ips: Vec<(IpAddr, u8)>,
    pub interfaces: Vec<Interface>,
}

/// Reads a prevResult (any supported version).
pub fn parse_prev_result(v: &Value) -> Result<PrevResult, CniError> {
    let bad = |what: &str| CniError::new(code::DECODE, "failed to decode prevResult", what.to_string());
    let mut out = PrevResult::default();
    for ip in v.get("ips").and_then(Value::as_array).ok_or_else(|| bad("no ips"))? {
        let addr = ip.get("address").and_then(Value::as_str).ok_or_else(|| bad("an ip without address"))?;
        out.ips.push(parse_cidr(addr).ok_or_else(|| bad(&format!("address {addr:?}")))?);
    }
    for i in v.get("interfaces").and_then(Value::as_array).into_iter().flatten() {
        out.interfaces.push(Interface {
            name: i.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
            mac: i.get("mac").and_then(Value::as_str).unwrap_or_default().to_string(),
            sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
        });
    }
    Ok(out)
}

/// `10.0.0.1/32` → (address, 32).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_validation() {
        let ok = br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tabby"}"#;
        let conf = parse_conf(ok).unwrap();
        assert_eq!(conf.agent_socket, "/var/run/tabby/agent.sock");
        assert_eq!(parse_conf(b"{").unwrap_err().code, code::DECODE);
        assert_eq!(parse_conf(b"[]").unwrap_err().code, code::DECODE);
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let old = format!(r#"{{"cniVersion":"{v}","name":"n","type":"tabby"}}"#);
            assert_eq!(parse_conf(old.as_bytes()).unwrap().cni_version, v);
        }
        let older = br#"{"cniVersion":"0.2.0","name":"n","type":"tabby"}"#;
        assert_eq!(parse_conf(older).unwrap_err().code, code::INCOMPATIBLE_VERSION);
        assert!(!allows_check("0.3.1") && !allows_check("0.3.0") && allows_check("0.4.0") && allows_check("1.1.0"));
        let noname = br#"{"cniVersion":"1.1.0","type":"tabby"}"#;
        assert_eq!(parse_conf(noname).unwrap_err().code, code::INVALID_CONFIG);
        let mtu = br#"{"cniVersion":"1.1.0","name":"n","type":"tabby","mtu":100}"#;
        assert_eq!(parse_conf(mtu).unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn result_shapes() {
        let r = AddResult {
            interfaces: vec![
                Interface { name: "tbyabc".into(), mac: "ee:ee:ee:ee:ee:ee".into(), sandbox: None },
                Interface { name: "eth0".into(), mac: "02:00:00:00:00:01".into(), sandbox: Some("/x".into()) },
            ],
            ips: vec![("10.244.0.5".parse().unwrap(), 32, None, 1)],
            routes: vec![("0.0.0.0".parse().unwrap(), 0, Some("169.254.1.1".parse().unwrap()))],
        };
        let v = r.to_json("1.1.0");
        assert_eq!(v["ips"][0]["address"], "10.244.0.5/32");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(r.to_json("0.4.0")["ips"][0]["version"], "4");
        for v in ["0.3.0", "0.3.1"] {
            let old = r.to_json(v);
            assert_eq!((old["cniVersion"].as_str(), old["ips"][0]["version"].as_str()), (Some(v), Some("4")));
            assert_eq!(old["ips"][0]["interface"], 1);
        }
        assert!(r.to_json("1.0.0")["ips"][0].get("version").is_none());
        let prev = parse_prev_result(&v).unwrap();
        assert_eq!(prev.ips, vec![("10.244.0.5".parse().unwrap(), 32)]);
        assert_eq!(prev.interfaces[1].sandbox.as_deref(), Some("/x"));
    }
}
