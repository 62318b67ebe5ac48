//! A real Kubernetes control plane per test.
//!
//! [`ControlPlane::start`] launches etcd and kube-apiserver (and, on request, kube-controller-manager and
//! kube-scheduler) from the multi-call binary `make controlplane` builds, on free loopback ports with a
//! temporary data directory, a generated service-account key and a static admin token. It waits for
//! `/readyz` and hands back a [`kube::Client`], the kubeconfig path and the path of `kubectl`.
//! Dropping it (or [`ControlPlane::stop`]) kills every process and removes the directory.
//!
//! Tests call [`start_or_skip`]: in CI (`CI=true`) a control plane that cannot start fails the test;
//! elsewhere the test is skipped with a visible message.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::skip::in_ci;

/// Which components to run beside etcd and kube-apiserver, and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// kube-controller-manager: DaemonSet, Deployment, namespace and garbage-collection controllers.
    pub controller_manager: bool,
    /// kube-scheduler: binds pods to nodes.
    pub scheduler: bool,
    /// Address kube-apiserver listens on and advertises (default 127.0.0.1). The lab uses its control-plane
    /// node's address, so the lab's nodes reach the API server and the API server reaches their pods.
    pub address: Option<std::net::Ipv4Addr>,
    /// Network namespace (a name under /run/netns) every component runs in; `None`: this machine's.
    pub netns: Option<String>,
    /// Users of the static token file besides the admin: lines `token,user,uid,"group1,group2"`.
    pub tokens: Vec<String>,
    /// kube-apiserver flags (`--name=value`) that replace the default of the same name, or add to them.
    pub apiserver_flags: Vec<String>,
    /// kube-controller-manager flags, the same way.
    pub controller_manager_flags: Vec<String>,
}

impl Options {
    /// etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
    pub fn full() -> Self {
        Options { controller_manager: true, scheduler: true, ..Default::default() }
    }
}

/// `base` with every flag that `overrides` names replaced by the override, then the new flags of `overrides`.
/// A flag's name is what precedes `=` (`--authorization-mode=Node,RBAC` names `--authorization-mode`).
pub fn merge_flags(base: &[String], overrides: &[String]) -> Vec<String> {
    let name = |f: &String| f.split('=').next().unwrap_or_default().to_string();
    let replaced: Vec<String> = overrides.iter().map(name).collect();
    base.iter().filter(|f| !replaced.contains(&name(f))).chain(overrides).cloned().collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the control plane binary is missing at {0} (run `make controlplane`)")]
    NotBuilt(PathBuf),
    #[error("openssl is needed to generate the service-account key: {0}")]
    OpenSsl(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{component} did not become ready in {seconds}s; last log lines:\n{log}")]
    NotReady { component: &'static str, seconds: u64, log: String },
    #[error("{component} exited during start-up; last log lines:\n{log}")]
    Exited { component: &'static str, log: String },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A running control plane. Everything it started goes away when it is dropped.
pub struct ControlPlane {
    processes: Vec<(&'static str, Child)>,
    netns: Option<String>,
    dir: Option<tempfile::TempDir>,
    /// The kubeconfig of the cluster admin (a static token in group system:masters).
    pub kubeconfig: PathBuf,
    /// `kubectl` (a link to the multi-call binary).
    pub kubectl: PathBuf,
    /// `https://<address>:<port>` (127.0.0.1 unless [`Options::address`] says otherwise).
    pub server: String,
    /// The admin bearer token.
    pub token: String,
    client: Client,
}

/// The control plane binary: `$TABBY_CONTROLPLANE`, else the one `make controlplane` builds.
pub fn binary() -> PathBuf {
    std::env::var_os("TABBY_CONTROLPLANE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/controlplane/bin/controlplane"))
}

/// `helm`: `$TABBY_HELM`, else the one `make helm` builds.
pub fn helm() -> PathBuf {
    std::env::var_os("TABBY_HELM").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/tools/bin/helm"))
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ is inside the repository").to_path_buf()
}

/// Starts a control plane, or, when it cannot start outside CI, prints why and returns `None`.
/// In CI it panics with the reason instead.
pub async fn start_or_skip(test: &str, options: Options) -> Option<ControlPlane> {
    match ControlPlane::start_with(options).await {
        Ok(cp) => Some(cp),
        Err(e @ (Error::NotBuilt(_) | Error::OpenSsl(_))) if !in_ci() => {
            crate::skip::skip(test, &e.to_string());
            None
        }
        Err(e) => panic!("{test}: the control plane did not start: {e}"),
    }
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("reserving a port"))?;
    Ok(listener.local_addr().map_err(io("reserving a port"))?.port())
}

/// The error lines of a component's log (klog `E`/`F` lines, or lines mentioning an error), else its last lines.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let errors: Vec<&str> =
        text.lines().filter(|l| l.starts_with('E') || l.starts_with('F') || l.contains("\"error\"")).collect();
    let lines: Vec<&str> = if errors.is_empty() { text.lines().collect() } else { errors };
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl ControlPlane {
    /// etcd and kube-apiserver.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(Options::default()).await
    }

    /// etcd, kube-apiserver and the components `options` asks for.
    pub async fn start_with(options: Options) -> Result<Self, Error> {
        let netns = options.netns.clone();
        let binary = binary();
        if !binary.is_file() {
            return Err(Error::NotBuilt(binary));
        }
        let dir = tempfile::Builder::new().prefix("tabby-cp-").tempdir().map_err(io("creating the data dir"))?;
        let root = dir.path().to_path_buf();
        let bin = root.join("bin");
        fs::create_dir_all(&bin).map_err(io("creating bin/"))?;
        for name in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"] {
            std::os::unix::fs::symlink(&binary, bin.join(name)).map_err(io("linking the binary"))?;
        }
        let mut cp = ControlPlane {
            processes: Vec::new(),
            netns,
            kubeconfig: root.join("kubeconfig"),
            kubectl: bin.join("kubectl"),
            server: String::new(),
            token: format!("tabby-admin-{}", std::process::id()),
            dir: Some(dir),
            client: Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().expect("static URL")))
                .map_err(|e| Error::Kubeconfig(e.to_string()))?,
        };
        cp.generate_keys(&root)?;

        // etcd
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cp.spawn(
            "etcd",
            &bin,
            &root,
            &[
                "--name=default".into(),
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;

        // kube-apiserver
        let port = free_port()?;
        let address = options.address.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        cp.server = format!("https://{address}:{port}");
        let mut tokens = format!("{},admin,admin,\"system:masters\"\n", cp.token);
        for line in &options.tokens {
            tokens.push_str(line);
            tokens.push('\n');
        }
        fs::write(root.join("tokens.csv"), tokens).map_err(io("writing tokens.csv"))?;
        let pki = root.join("pki");
        let apiserver = merge_flags(
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={address}"),
                format!("--advertise-address={address}"),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", pki.display()),
                format!("--token-auth-file={}", root.join("tokens.csv").display()),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", root.join("sa.pub").display()),
                format!("--service-account-signing-key-file={}", root.join("sa.key").display()),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                // A loopback address cannot back the `kubernetes` Service's endpoints; nothing here needs them.
                "--endpoint-reconciler-type=none".into(),
            ],
            &options.apiserver_flags,
        );
        cp.spawn("kube-apiserver", &bin, &root, &apiserver)?;
        // The apiserver writes a self-signed certificate chain (serving cert, then its CA) at start-up.
        let chain = pki.join("apiserver.crt");
        cp.wait("kube-apiserver", Duration::from_secs(60), || {
            chain.is_file() && fs::metadata(&chain).is_ok_and(|m| m.len() > 0)
        })?;
        let pem = fs::read_to_string(&chain).map_err(io("reading the apiserver certificate"))?;
        let ca = pem
            .rfind("-----BEGIN CERTIFICATE-----")
            .map(|i| &pem[i..])
            .ok_or_else(|| Error::Kubeconfig("no certificate in apiserver.crt".into()))?;
        fs::write(root.join("ca.crt"), ca).map_err(io("writing ca.crt"))?;
        cp.write_kubeconfig(&root)?;
        let kubectl = cp.kubectl.clone();
        let kubeconfig = cp.kubeconfig.clone();
        cp.wait("kube-apiserver", Duration::from_secs(90), || {
            Command::new(&kubectl)
                .args(["get", "--raw", "/readyz"])
                .env("KUBECONFIG", &kubeconfig)
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ok"))
        })?;

        let kubeconfig_arg = format!("--kubeconfig={}", cp.kubeconfig.display());
        if options.controller_manager {
            let flags = merge_flags(
                &[
                    kubeconfig_arg.clone(),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", free_port()?),
                    format!("--service-account-private-key-file={}", root.join("sa.key").display()),
                    format!("--root-ca-file={}", root.join("ca.crt").display()),
                    "--use-service-account-credentials=false".into(),
                    "--concurrent-daemonset-syncs=2".into(),
                    // No kubelet heartbeats in tests without nodes: without this, nodes that test code registers
                    // turn NotReady after the grace period and their pods are marked unready. The lab, whose
                    // kubelets heartbeat, turns it back on.
                    "--controllers=*,-node-lifecycle-controller".into(),
                ],
                &options.controller_manager_flags,
            );
            cp.spawn("kube-controller-manager", &bin, &root, &flags)?;
        }
        if options.scheduler {
            cp.spawn(
                "kube-scheduler",
                &bin,
                &root,
                &[
                    kubeconfig_arg,
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", free_port()?),
                ],
            )?;
        }

        let config = Kubeconfig::read_from(&cp.kubeconfig).map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        cp.client = Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
        Ok(cp)
    }

    fn generate_keys(&self, root: &Path) -> Result<(), Error> {
        let run = |args: &[&str]| -> Result<(), Error> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(root)
                .output()
                .map_err(|e| Error::OpenSsl(e.to_string()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(Error::OpenSsl(String::from_utf8_lossy(&out.stderr).into_owned()))
            }
        };
        run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key"])?;
        run(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
    }

    fn write_kubeconfig(&self, root: &Path) -> Result<(), Error> {
        let config = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: tabby-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: tabby-test
  context: {{cluster: tabby-test, user: admin}}
current-context: tabby-test
",
            server = self.server,
            ca = root.join("ca.crt").display(),
            token = self.token
        );
        fs::write(&self.kubeconfig, config).map_err(io("writing the kubeconfig"))
    }

    fn spawn(&mut self, component: &'static str, bin: &Path, root: &Path, args: &[String]) -> Result<(), Error> {
        let log = fs::File::create(root.join(format!("{component}.log"))).map_err(io("creating a log file"))?;
        // In a network namespace: nsenter execs the component, so the child is the component itself.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}")).arg("--").arg(bin.join(component));
                c
            }
            None => Command::new(bin.join(component)),
        };
        let child = command
            .args(args)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("log file"))?)
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {component}")))?;
        self.processes.push((component, child));
        Ok(())
    }

    /// Polls `ready` until it holds, failing early when a component has exited.
    fn wait(
        &mut self,
        component: &'static str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            let exited = self
                .processes
                .iter_mut()
                .find_map(|(name, child)| matches!(child.try_wait(), Ok(Some(_))).then_some(*name));
            if let Some(name) = exited {
                return Err(Error::Exited { component: name, log: tail(&self.log_path(name)) });
            }
            if start.elapsed() > timeout {
                return Err(Error::NotReady {
                    component,
                    seconds: timeout.as_secs(),
                    log: tail(&self.log_path(component)),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_path(&self, component: &str) -> PathBuf {
        self.dir().join(format!("{component}.log"))
    }

    /// The temporary directory holding data, keys, logs and the kubeconfig.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("present until dropped").path()
    }

    /// A client of the cluster admin.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs `kubectl` against this cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl).args(args).env("KUBECONFIG", &self.kubeconfig).output().expect("kubectl runs")
    }

    /// Runs `kubectl` with `input` on its standard input (e.g. `["apply", "-f", "-"]`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("kubectl reads its input");
        }
        child.wait_with_output().expect("kubectl runs")
    }

    /// Runs `kubectl` and returns its stdout, panicking with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last log lines of a component, for assertion messages.
    pub fn log_tail(&self, component: &str) -> String {
        tail(&self.log_path(component))
    }

    /// Kills every process and removes the data directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Reverse order: clients of the apiserver first, etcd last.
        while let Some((_, mut child)) = self.processes.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::merge_flags;

    #[test]
    fn overrides_replace_flags_of_the_same_name_and_new_ones_are_added() {
        let base: Vec<String> =
            ["--authorization-mode=RBAC", "--secure-port=6443", "--profiling=false"].map(String::from).into();
        let overrides: Vec<String> =
            ["--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction"].map(String::from).into();
        assert_eq!(
            merge_flags(&base, &overrides),
            [
                "--secure-port=6443",
                "--profiling=false",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction"
            ]
        );
        assert_eq!(merge_flags(&base, &[]), base);
    }
}
