//! One lab node: its namespaces, directories, cgroups and configuration, and running commands in it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::render::{self, NodeFacts};
use super::{BRIDGE, GATEWAY, LINK_PREFIX, NETNS_PREFIX, NODE_NET6, PREFIX, PREFIX6, cgroups, sh};

/// Directories every node has its own copy of, bound at these paths in its mount namespace. `/run` is not
/// here: each node gets a fresh tmpfs there, as after a boot.
pub const NODE_DIRS: &[&str] = &[
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/etc/containerd",
    "/etc/kubernetes",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/var/lib/tabby",
    "/var/log/tabby",
    "/var/log/pods",
    "/var/log/containers",
    // Route protocol names: the agent names its protocol `tabby` here, per node.
    "/etc/iproute2/rt_protos.d",
    // The agent's DaemonSet mounts it (type Directory); this machine's kernel has no modules, so the
    // directory does not exist here. Each node gets an empty one, as a node whose kernel has its drivers built in.
    "/lib/modules",
];

/// Kernel settings the kubelet writes at start (`setupNode`): inside a node they are node files bound over
/// `/proc/sys/...`, with the values the kubelet would set, so neither its Modify nor its Error mode touches
/// the machine.
pub const KERNEL_SETTINGS: &[(&str, &str)] = &[
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// One lab node.
#[derive(Clone, Debug)]
pub struct LabNode {
    pub name: String,
    pub index: usize,
    /// Network namespace name (under /run/netns).
    pub netns: String,
    pub address: Ipv4Addr,
    /// The node's directory on this machine: `rootfs/` (its own directories), `ns/`, `log/`.
    pub root: PathBuf,
    /// The node's cgroup root (the kubelet's `cgroupRoot`); its own processes are in `<cgroup_root>/system`.
    pub cgroup_root: String,
}

impl LabNode {
    pub fn new(state: &Path, index: usize) -> LabNode {
        let name = format!("node-{index}");
        LabNode {
            netns: format!("{NETNS_PREFIX}{index}"),
            address: Ipv4Addr::new(192, 168, 100, 100 + index as u8),
            root: state.join("nodes").join(&name),
            cgroup_root: format!("{}/{name}", cgroups::lab_root()),
            name,
            index,
        }
    }

    /// Where node path `path` (one of [`NODE_DIRS`] or below) lives on this machine.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join("rootfs").join(path.trim_start_matches('/'))
    }

    pub fn log_path(&self, component: &str) -> PathBuf {
        self.root.join("log").join(format!("{component}.log"))
    }

    fn ns_file(&self, kind: &str) -> PathBuf {
        self.root.join("ns").join(kind)
    }

    fn system_cgroup(&self) -> String {
        format!("{}/system", self.cgroup_root)
    }

    fn veth(&self) -> String {
        format!("{LINK_PREFIX}{}", self.index)
    }

    /// The node's IPv6 address in a dual-stack lab.
    pub fn address6(&self) -> String {
        format!("{NODE_NET6}{}", 100 + self.index)
    }

    /// The network namespace and its link to the bridge: `eth0` at the node's address (and IPv6 address in a
    /// dual-stack lab), default routes via this machine, forwarding on (a node routes its pods' traffic).
    pub fn create_network(&self, dual_stack: bool) -> Result<(), String> {
        sh::ip(&["netns", "add", &self.netns])?;
        let veth = self.veth();
        sh::ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &self.netns])?;
        sh::ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
        let addr = format!("{}/{PREFIX}", self.address);
        let gw = GATEWAY.to_string();
        for args in [
            &["addr", "add", addr.as_str(), "dev", "eth0"][..],
            &["link", "set", "eth0", "up"],
            &["link", "set", "lo", "up"],
            &["route", "add", "default", "via", gw.as_str()],
        ] {
            let mut full = vec!["-n", self.netns.as_str()];
            full.extend_from_slice(args);
            sh::ip(&full)?;
        }
        sh::run("nsenter", &[&format!("--net=/run/netns/{}", self.netns), "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        if dual_stack {
            let addr6 = format!("{}/{PREFIX6}", self.address6());
            let gw6 = format!("{NODE_NET6}1");
            sh::ip(&["-n", &self.netns, "addr", "add", &addr6, "dev", "eth0", "nodad"])?;
            sh::ip(&["-n", &self.netns, "-6", "route", "add", "default", "via", &gw6])?;
            sh::run(
                "nsenter",
                &[&format!("--net=/run/netns/{}", self.netns), "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
            )?;
        }
        Ok(())
    }

    /// The node's directories, cgroups and persistent mount and UTS namespaces. Mount points this machine
    /// lacks are created and appended to `created` (removed by `down`).
    pub fn create_namespaces(&self, created: &mut Vec<PathBuf>) -> Result<(), String> {
        for d in NODE_DIRS {
            std::fs::create_dir_all(self.host_path(d)).map_err(|e| format!("{d}: {e}"))?;
            created.extend(sh::create_dir(Path::new(d)).map_err(|e| format!("{d}: {e}"))?);
        }
        for dir in ["ns", "log", "sysctl"] {
            std::fs::create_dir_all(self.root.join(dir)).map_err(|e| format!("{dir}: {e}"))?;
        }
        for (key, value) in KERNEL_SETTINGS {
            std::fs::write(self.root.join("sysctl").join(key.replace('/', ".")), format!("{value}\n"))
                .map_err(|e| format!("{key}: {e}"))?;
        }
        std::fs::write(self.root.join("machine-id"), format!("{}\n", super::pki::token()?))
            .map_err(|e| format!("machine-id: {e}"))?;
        // A reference-plugins node: loopback (containerd needs it), portmap, bridge, host-local…
        if let Ok(entries) = std::fs::read_dir(super::REFERENCE_PLUGINS) {
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), self.host_path("/opt/cni/bin").join(entry.file_name()));
            }
        }
        cgroups::create(&self.system_cgroup(), created)?;

        // The namespace files are bind mounts of /proc/<pid>/ns/*: their directory must be a private mount.
        let ns = self.root.join("ns");
        for kind in ["mnt", "uts"] {
            std::fs::write(self.ns_file(kind), "").map_err(|e| format!("ns/{kind}: {e}"))?;
        }
        let ns_str = ns.display().to_string();
        sh::run("mount", &["--bind", &ns_str, &ns_str])?;
        sh::run("mount", &["--make-private", &ns_str])?;
        let script = self.mount_script();
        sh::run(
            "nsenter",
            &[
                &format!("--net=/run/netns/{}", self.netns),
                "unshare",
                &format!("--mount={}", self.ns_file("mnt").display()),
                &format!("--uts={}", self.ns_file("uts").display()),
                "--propagation",
                "private",
                "sh",
                "-ec",
                &script,
            ],
        )?;
        Ok(())
    }

    /// What makes the new mount namespace the node's (run inside it, in the node's network namespace).
    fn mount_script(&self) -> String {
        let mut s = format!("hostname {}\n", self.name);
        // sysfs of the node's network namespace (its links), then the cgroup hierarchies again under it.
        s.push_str("mount -t sysfs sysfs /sys\nmount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup\n");
        for h in cgroups::hierarchies(true) {
            let name = h.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let options = match name.as_str() {
                "unified" => None,
                "systemd" => Some("none,name=systemd".to_string()),
                other => Some(other.to_string()),
            };
            let target = h.display();
            match options {
                None => s.push_str(&format!("mkdir -p {target}\nmount -t cgroup2 none {target}\n")),
                Some(o) => s.push_str(&format!("mkdir -p {target}\nmount -t cgroup -o {o} cgroup {target}\n")),
            }
        }
        // The node's own /run, as after a boot.
        s.push_str("mount -t tmpfs -o mode=755 tmpfs /run\nmkdir -p /run/netns /run/lock\n");
        for d in NODE_DIRS {
            s.push_str(&format!("mount --bind {} {d}\n", sh::quote(&self.host_path(d).display().to_string())));
        }
        s.push_str(&format!(
            "mount --bind {} /etc/machine-id\n",
            sh::quote(&self.root.join("machine-id").display().to_string())
        ));
        for (key, _) in KERNEL_SETTINGS {
            let file = self.root.join("sysctl").join(key.replace('/', "."));
            s.push_str(&format!("mount --bind {} /proc/sys/{key}\n", sh::quote(&file.display().to_string())));
        }
        s
    }

    /// Writes the node's configuration files (containerd, kubelet, kube-proxy, kubeconfigs, CAs).
    pub fn write_config(
        &self,
        facts: &NodeFacts,
        kubelet_token: &str,
        proxy_token: &str,
        cluster_ca: &Path,
        client_ca: &Path,
    ) -> Result<(), String> {
        let write = |path: &str, text: String| -> Result<(), String> {
            let p = self.host_path(path);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        write(render::CONTAINERD_CONFIG, render::containerd_config(facts))?;
        write(&format!("{}/_default/hosts.toml", render::CONTAINERD_HOSTS_DIR), render::registry_hosts())?;
        write(render::KUBELET_CONFIG, render::kubelet_config(facts))?;
        write(
            render::KUBELET_KUBECONFIG,
            render::kubeconfig(&facts.server, render::CLUSTER_CA, &format!("system:node:{}", self.name), kubelet_token),
        )?;
        write(render::PROXY_CONFIG, render::proxy_config(facts))?;
        write(
            render::PROXY_KUBECONFIG,
            render::kubeconfig(&facts.server, render::CLUSTER_CA, "system:kube-proxy", proxy_token),
        )?;
        write(render::CLUSTER_CA, read(cluster_ca)?)?;
        write(render::KUBELET_CLIENT_CA, read(client_ca)?)?;
        write(render::RESOLV_CONF, render::resolv_conf())?;
        Ok(())
    }

    /// A command that runs `argv` on the node: in its network, mount and UTS namespaces, in its system cgroup,
    /// with `path_dirs` first on the PATH.
    pub fn command(&self, argv: &[String], path_dirs: &[&Path]) -> Command {
        let mut path: Vec<String> = path_dirs.iter().map(|p| p.display().to_string()).collect();
        path.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        let script = format!("{}\nexec \"$@\"", cgroups::join_script(&self.system_cgroup()));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(format!("--mount={}", self.ns_file("mnt").display()))
            .arg(format!("--uts={}", self.ns_file("uts").display()))
            .args(["--", "sh", "-c", &script, "sh"])
            .args(argv)
            .env("PATH", path.join(":"));
        cmd
    }

    /// A shell on the node running `script` (`sh -c script`).
    pub fn shell(&self, script: &str) -> Command {
        self.command(&["sh".into(), "-c".into(), script.into()], &[])
    }

    /// Stops every process of the node (its cgroups), then removes its namespaces, link and cgroups.
    pub fn destroy(&self) {
        let left = cgroups::kill_all(&self.cgroup_root, Duration::from_secs(10));
        if !left.is_empty() {
            eprintln!("{}: processes still running after SIGKILL: {left:?}", self.name);
        }
        for kind in ["mnt", "uts"] {
            let _ = sh::run("umount", &[&self.ns_file(kind).display().to_string()]);
        }
        let _ = sh::run("umount", &[&self.root.join("ns").display().to_string()]);
        let _ = sh::ip(&["link", "del", &self.veth()]);
        let _ = sh::ip(&["netns", "del", &self.netns]);
        cgroups::remove(&self.cgroup_root);
    }
}
