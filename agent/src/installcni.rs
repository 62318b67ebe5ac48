//! `tabby-agent install-cni` (the DaemonSet's init container): puts the `tabby` plugin binary into the
//! host's CNI binary directory and the conflist into its configuration directory. Desired state → diff →
//! minimal change: a file whose content already matches is left alone; changed files are replaced
//! atomically (write beside, then rename) so a runtime never reads half a file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tabby_api::{agentenv, names};

/// Where the plugin binary is copied from (default: `tabby` beside this executable).
pub const ENV_PLUGIN_SOURCE: &str = "TABBY_CNI_PLUGIN_SOURCE";

/// An install that failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0} is not set (the operator renders it from its ConfigMap)")]
    Missing(&'static str),
    #[error("{0}: the CNI network configuration is not a conflist: {1}")]
    BadConfig(&'static str, String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// What changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub plugin_written: bool,
    pub config_written: bool,
}

/// Writes `content` to `path` with `mode` unless it is already there; true when it wrote.
pub fn ensure_file(path: &Path, content: &[u8], mode: u32) -> Result<bool, InstallError> {
    let io = |what, source| InstallError::Io { what, path: path.to_path_buf(), source };
    let same_mode = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
    if same_mode && std::fs::read(path).is_ok_and(|c| c == content) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let tmp = path.with_extension(format!("tabby-tmp-{}", std::process::id()));
    std::fs::write(&tmp, content).map_err(|e| io("writing", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))?;
    Ok(true)
}

/// Installs the plugin and the conflist as the environment says.
pub fn install(env: &dyn Fn(&str) -> Option<String>) -> Result<Report, InstallError> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let config = get(agentenv::CNI_NETWORK_CONFIG).ok_or(InstallError::Missing(agentenv::CNI_NETWORK_CONFIG))?;
    let parsed: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| InstallError::BadConfig(agentenv::CNI_NETWORK_CONFIG, e.to_string()))?;
    if !parsed.get("plugins").is_some_and(serde_json::Value::is_array) {
        return Err(InstallError::BadConfig(agentenv::CNI_NETWORK_CONFIG, "no \"plugins\" list".into()));
    }
    let paths = crate::config::Paths::from_env(env);
    let source = match get(ENV_PLUGIN_SOURCE) {
        Some(s) => PathBuf::from(s),
        None => std::env::current_exe()
            .map_err(|e| InstallError::Io { what: "finding", path: "/proc/self/exe".into(), source: e })?
            .with_file_name(names::CNI_PLUGIN_BINARY),
    };
    let plugin =
        std::fs::read(&source).map_err(|e| InstallError::Io { what: "reading the plugin", path: source, source: e })?;
    Ok(Report {
        plugin_written: ensure_file(&paths.plugin(), &plugin, 0o755)?,
        config_written: ensure_file(&paths.conflist(), config.as_bytes(), 0o600)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_then_leaves_alone() {
        let dir = std::env::temp_dir().join(format!("tabby-install-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("tabby-src");
        std::fs::write(&src, b"plugin").unwrap();
        let vars: Vec<(String, String)> = vec![
            (
                "TABBY_CNI_NETWORK_CONFIG".into(),
                r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[]}"#.into(),
            ),
            ("TABBY_CNI_BIN_DIR".into(), dir.join("bin").display().to_string()),
            ("TABBY_CNI_CONF_DIR".into(), dir.join("net.d").display().to_string()),
            ("TABBY_CNI_PLUGIN_SOURCE".into(), src.display().to_string()),
        ];
        let env = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(install(&env).unwrap(), Report { plugin_written: true, config_written: true });
        assert_eq!(install(&env).unwrap(), Report::default());
        let conf = dir.join("net.d/10-tabby.conflist");
        assert_eq!(std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.join("bin/tabby")).unwrap().permissions().mode() & 0o777, 0o755);
        let bad = |k: &str| if k == "TABBY_CNI_NETWORK_CONFIG" { Some("{}".to_string()) } else { env(k) };
        assert!(matches!(install(&bad), Err(InstallError::BadConfig(..))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
