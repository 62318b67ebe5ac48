//! The lab's credentials: a CA whose client certificate the API server shows the kubelets (exec, logs,
//! port-forward, attach), and bearer tokens for the node identities (`system:node:<name>` in group
//! `system:nodes`, checked by the Node authorizer) and for kube-proxy (`system:kube-proxy`, bound to
//! `system:node-proxier` by default RBAC).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Files under the lab's `pki/` directory.
pub struct Pki {
    /// CA certificate the kubelets trust for client certificates.
    pub kubelet_client_ca: PathBuf,
    /// The API server's client certificate and key for talking to kubelets.
    pub apiserver_kubelet_client_cert: PathBuf,
    pub apiserver_kubelet_client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl (Debian package openssl): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Creates the CA and the API server's kubelet-client certificate in `dir`.
pub fn create(dir: &Path) -> Result<Pki, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=tabby-lab-kubelet-client-ca"]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    // Group system:masters, as kubeadm's apiserver-kubelet-client: the kubelet's webhook authorizer asks the
    // API server, which allows it everything on the node API.
    csr.extend([
        "-keyout",
        "apiserver-kubelet-client.key",
        "-out",
        "apiserver-kubelet-client.csr",
        "-subj",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
    ]);
    openssl(dir, &csr)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver-kubelet-client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            "apiserver-kubelet-client.crt",
        ],
    )?;
    Ok(Pki {
        kubelet_client_ca: dir.join("ca.crt"),
        apiserver_kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        apiserver_kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    })
}

/// A random bearer token (32 hex digits from the kernel's random source).
pub fn token() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(|e| e.to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The static token file line of a node's kubelet.
pub fn node_token_line(token: &str, node: &str) -> String {
    format!("{token},system:node:{node},{node},\"system:nodes\"")
}

/// The static token file line of kube-proxy (all nodes share the identity, as with kubeadm's ServiceAccount).
pub fn proxy_token_line(token: &str) -> String {
    format!("{token},system:kube-proxy,kube-proxy,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines_name_the_node_identity() {
        assert_eq!(node_token_line("t", "node-2"), "t,system:node:node-2,node-2,\"system:nodes\"");
        assert_eq!(proxy_token_line("p"), "p,system:kube-proxy,kube-proxy,");
        let t = token().expect("urandom");
        assert_eq!(t.len(), 32);
        assert_ne!(t, token().expect("urandom"));
    }
}
