//! `cargo xtask images`: the lab's container images, built without a registry or a container engine.
//!
//! Each image is one uncompressed layer assembled from Tabby's binaries (`--tabby-bin`), the node software
//! (`--node-bin`: pause, coredns, agnhost) and files of Debian packages installed on this machine: a program
//! goes in with its symlink chain (Debian alternatives included) and its shared-library closure (`ldd`,
//! the dynamic loader included), at its canonical merged-/usr path, with `/bin`, `/lib`, `/lib64` and
//! `/sbin` as symlinks into `/usr`. The layer and the OCI layout archive around it are reproducible: the same
//! inputs give the same bytes ([`tar`], [`oci`]).
//!
//! Output in `--out`: `<name>.tar` per image (an OCI image layout that `ctr -n k8s.io images import`
//! takes, naming the image by each of its references) and `images.json`, the list the lab reads:
//! `[{"name","refs","archive","digest","size"}]`.
//!
//! What goes in an image ([`specs`]) and how it is laid out ([`assemble`]) are pure over a [`Host`], the
//! file system and `ldd` of this machine in [`RealHost`], an in-memory one in the tests.

pub mod oci;
pub mod tar;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use self::oci::RunConfig;
use self::tar::{EXEC_MODE, FILE_MODE, Tree, TreeError};

pub const USAGE: &str = "cargo xtask images [--out DIR] [--tabby-bin DIR] [--node-bin DIR] [NAME...]

  Builds the lab's container images as OCI layout archives (DIR/<name>.tar) and DIR/images.json.
  --out DIR        where to write them (default target/images)
  --tabby-bin DIR  Tabby's binaries, as `make lab-binaries` lays them out (default target/lab-bin)
  --node-bin DIR   pause, coredns, agnhost, as `make node-software` builds them (default .cache/node/bin)
  NAME...          build only these images (tabby pause coredns agnhost netshoot busybox)";

/// `PATH` of every image, as in Debian's images.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MANIFEST: &str = "images.json";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const BUSYBOX: &str = "/usr/bin/busybox";
/// Directories of `PATH` as they are in the layer (merged /usr), where a real tool hides a busybox applet.
const PATH_DIRS: &[&str] = &["usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin"];
/// Top-level directories that are symlinks into /usr on merged-/usr Debian.
const MERGED_USR: &[(&str, &str)] =
    &[("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")];
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n\
protocols: files\nservices: files\nethers: files\nrpc: files\n";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}", usage_error(.0))]
    Usage(String),
    #[error("unknown image {0:?}; the images are: {1}")]
    UnknownImage(String, String),
    #[error("missing inputs:\n{}", list_missing(.0))]
    Missing(Vec<Missing>),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(PathBuf),
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{program} needs the shared library {library}, which is not installed (ldd: not found)")]
    LibraryNotFound { program: PathBuf, library: String },
    #[error("image {0}: {1}")]
    Tree(&'static str, TreeError),
    #[error("{0}: {1}")]
    Json(PathBuf, serde_json::Error),
}

fn usage_error(detail: &str) -> String {
    format!("{detail}\nusage: {USAGE}")
}

fn list_missing(missing: &[Missing]) -> String {
    missing.iter().map(|m| format!("  {m}")).collect::<Vec<_>>().join("\n")
}

/// An input that is not there, and how to get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub path: PathBuf,
    pub hint: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.hint)
    }
}

/// Where a built program comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinDir {
    /// `--tabby-bin`: Tabby's binaries.
    Tabby,
    /// `--node-bin`: the node software.
    Node,
}

impl BinDir {
    fn hint(self) -> &'static str {
        match self {
            BinDir::Tabby => "build Tabby's binaries: make lab-binaries, or pass --tabby-bin DIR",
            BinDir::Node => "build the node software: make node-software, or pass --node-bin DIR",
        }
    }
}

fn package_hint(package: &str) -> String {
    format!("from the Debian package {package}: apt-get install --no-install-recommends {package}")
}

/// An account of `/etc/passwd` and `/etc/group` (its group has the same id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    pub name: &'static str,
    pub group: &'static str,
    pub id: u32,
    pub home: &'static str,
    pub shell: &'static str,
}

const ROOT: User = User { name: "root", group: "root", id: 0, home: "/root", shell: "/bin/sh" };
const NOBODY: User =
    User { name: "nobody", group: "nogroup", id: 65534, home: "/nonexistent", shell: "/usr/sbin/nologin" };
/// The unprivileged user of distroless images, which the operator runs as.
const NONROOT: User =
    User { name: "nonroot", group: "nonroot", id: 65532, home: "/home/nonroot", shell: "/usr/sbin/nologin" };
/// The user Debian's nginx workers run as.
const WWW_DATA: User =
    User { name: "www-data", group: "www-data", id: 33, home: "/var/www", shell: "/usr/sbin/nologin" };
/// Debian's tcpdump drops root to this user after opening the capture, and stops when it does not exist.
const TCPDUMP: User =
    User { name: "tcpdump", group: "tcpdump", id: 101, home: "/nonexistent", shell: "/usr/sbin/nologin" };

/// One thing an image holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// `/bin -> usr/bin`, `/lib -> usr/lib`, `/lib64 -> usr/lib64`, `/sbin -> usr/sbin`.
    MergedUsr,
    /// A program of this machine at its path, its symlink chain and its shared-library closure.
    HostProgram {
        path: &'static str,
        package: &'static str,
    },
    /// A data file of this machine, copied as is (named one by one: a directory may hold this machine's
    /// own configuration, as /etc/iproute2/rt_protos.d does).
    HostData {
        path: &'static str,
        package: &'static str,
    },
    /// A built program copied into the directory `to`, with its shared-library closure when it is
    /// dynamically linked.
    Built {
        dir: BinDir,
        file: &'static str,
        to: &'static str,
    },
    Symlink {
        path: &'static str,
        target: &'static str,
    },
    Dir {
        path: &'static str,
        mode: u32,
    },
    /// `/etc/passwd` and `/etc/group`.
    Accounts(&'static [User]),
    /// `/etc/nsswitch.conf` (hosts: files dns).
    NsSwitch,
    /// A file written from the text given here (configuration the image's program reads).
    Text {
        path: &'static str,
        content: &'static str,
    },
    /// busybox-static at `/usr/bin/busybox`, linked as every applet no other program of the image provides.
    Busybox,
}

/// One image: its name (the archive's), references, content and configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    pub name: &'static str,
    pub refs: Vec<String>,
    pub items: Vec<Item>,
    pub run: RunConfig,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The labels of the Dockerfile's runtime stage.
fn tabby_labels(version: &str) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", "tabby"),
        (
            "org.opencontainers.image.description",
            "Tabby: a Kubernetes pod network (block IPAM, BGP, VXLAN) with its operator",
        ),
        ("org.opencontainers.image.source", "https://github.com/tabby-dev/tabby"),
        ("org.opencontainers.image.licenses", "Apache-2.0"),
        ("org.opencontainers.image.version", version),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

const fn host(path: &'static str, package: &'static str) -> Item {
    Item::HostProgram { path, package }
}

const fn data(path: &'static str, package: &'static str) -> Item {
    Item::HostData { path, package }
}

/// The files a shell-and-tools image has beside its programs.
fn tools_base(users: &'static [User]) -> Vec<Item> {
    vec![
        Item::MergedUsr,
        Item::Accounts(users),
        Item::NsSwitch,
        data("/etc/services", "netbase"),
        data("/etc/protocols", "netbase"),
        data(CA_BUNDLE, "ca-certificates"),
        Item::Dir { path: "/tmp", mode: 0o1777 },
        Item::Dir { path: "/root", mode: 0o700 },
    ]
}

/// The shell and the programs that run other programs, in the images with real tools.
///
/// Debian's busybox-static is built with `FEATURE_PREFER_APPLETS`: its shell, and its applets that run a
/// command (`timeout 5 nc ...`, `xargs`, `env`), run busybox's own applet of that name even when a real tool
/// of that name is in `PATH` (busybox's `nc` for `sh -c "nc -z ..."`). So `sh` is bash there, and these
/// come from Debian too; busybox keeps the applets that only do their own job (cat, sleep, grep, wget, …).
fn shell_and_runners() -> Vec<Item> {
    vec![
        host("/usr/bin/bash", "bash"),
        Item::Symlink { path: "/usr/bin/sh", target: "bash" },
        host("/usr/bin/env", "coreutils"),
        host("/usr/bin/timeout", "coreutils"),
        host("/usr/bin/nohup", "coreutils"),
        host("/usr/bin/nice", "coreutils"),
        host("/usr/sbin/chroot", "coreutils"),
        host("/usr/bin/xargs", "findutils"),
        host("/usr/bin/find", "findutils"),
        host("/usr/bin/setsid", "util-linux"),
        host("/usr/bin/nsenter", "util-linux"),
        host("/usr/bin/unshare", "util-linux"),
        host("/usr/bin/flock", "util-linux"),
        host("/usr/bin/taskset", "util-linux"),
        host("/usr/bin/chrt", "util-linux"),
        host("/usr/bin/ionice", "util-linux"),
        host("/usr/bin/setarch", "util-linux"),
    ]
}

/// The name tables of iproute2 (protocol, table, realm names in `ip route`): the package's files, not
/// the `.d` directories, where this machine keeps its own (FRR's, Tabby's protocol names).
fn iproute2_tables() -> Vec<Item> {
    const TABLES: &[&str] = &[
        "/etc/iproute2/bpf_pinning",
        "/etc/iproute2/ematch_map",
        "/etc/iproute2/group",
        "/etc/iproute2/nl_protos",
        "/etc/iproute2/rt_dsfield",
        "/etc/iproute2/rt_protos",
        "/etc/iproute2/rt_realms",
        "/etc/iproute2/rt_scopes",
        "/etc/iproute2/rt_tables",
    ];
    TABLES.iter().map(|path| data(path, "iproute2")).collect()
}

/// Every image, `version` being the workspace's (`0.1.0`).
pub fn specs(version: &str) -> Vec<ImageSpec> {
    let env = vec![PATH_ENV.to_string()];
    let tabby = {
        let mut items = vec![Item::MergedUsr];
        for file in ["tabby-operator", "tabby-agent", "tabby", "kubectl-tabby"] {
            items.push(Item::Built { dir: BinDir::Tabby, file, to: "/usr/local/bin" });
        }
        items.extend([
            host("/usr/sbin/nft", "nftables"),
            data(CA_BUNDLE, "ca-certificates"),
            Item::Accounts(&[ROOT, NOBODY, NONROOT]),
            Item::NsSwitch,
            Item::Dir { path: "/tmp", mode: 0o1777 },
        ]);
        ImageSpec {
            name: "tabby",
            refs: vec![format!("ghcr.io/tabby-dev/tabby:v{version}"), "ghcr.io/tabby-dev/tabby:dev".into()],
            items,
            run: RunConfig {
                entrypoint: strings(&["/usr/local/bin/tabby-operator"]),
                user: Some("65532:65532".into()),
                env: env.clone(),
                labels: tabby_labels(&format!("v{version}")),
                ..RunConfig::default()
            },
        }
    };
    let pause = ImageSpec {
        name: "pause",
        refs: strings(&["registry.k8s.io/pause:3.10.2"]),
        items: vec![Item::Built { dir: BinDir::Node, file: "pause", to: "/" }],
        run: RunConfig {
            entrypoint: strings(&["/pause"]),
            user: Some("65535:65535".into()),
            env: env.clone(),
            ..RunConfig::default()
        },
    };
    let coredns = ImageSpec {
        name: "coredns",
        refs: strings(&["registry.k8s.io/coredns/coredns:v1.14.6"]),
        items: vec![Item::Built { dir: BinDir::Node, file: "coredns", to: "/" }, data(CA_BUNDLE, "ca-certificates")],
        run: RunConfig {
            entrypoint: strings(&["/coredns"]),
            user: Some("65532:65532".into()),
            env: env.clone(),
            ..RunConfig::default()
        },
    };
    // As the upstream image (alpine + bind-tools curl netcat-openbsd iproute2 iperf bash util-linux-misc
    // socat, and coredns), with Debian's tools and busybox for the rest.
    let agnhost = {
        let mut items = tools_base(&[ROOT, NOBODY, NONROOT]);
        items.extend([
            Item::Built { dir: BinDir::Node, file: "agnhost", to: "/" },
            // The entrypoint tests run the image with this name as the entrypoint (a hard link upstream).
            Item::Symlink { path: "/agnhost-2", target: "agnhost" },
            // porter's TLS certificate and key (make node-software copies them from the Kubernetes module).
            Item::Built { dir: BinDir::Node, file: "localhost.crt", to: "/" },
            Item::Built { dir: BinDir::Node, file: "localhost.key", to: "/" },
            Item::Built { dir: BinDir::Node, file: "coredns", to: "/" },
            // The DNS specs' /etc/hosts probes run `getent hosts` in agnhost too.
            host("/usr/bin/getent", "libc-bin"),
            host("/usr/bin/dig", "bind9-dnsutils"),
            host("/usr/bin/nslookup", "bind9-dnsutils"),
            host("/usr/bin/curl", "curl"),
            host("/usr/bin/nc", "netcat-openbsd"),
            host("/usr/bin/ip", "iproute2"),
            host("/usr/bin/ss", "iproute2"),
        ]);
        items.extend(iproute2_tables());
        items.extend([
            host("/usr/bin/iperf", "iperf"),
            // Upstream links iperf here and some tests call it by this path.
            Item::Symlink { path: "/usr/local/bin/iperf", target: "/usr/bin/iperf" },
            host("/usr/bin/socat", "socat"),
        ]);
        items.extend(shell_and_runners());
        items.push(Item::Busybox);
        ImageSpec {
            name: "agnhost",
            refs: strings(&[
                "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
                "registry.k8s.io/e2e-test-images/agnhost:2.55",
                // The network-policy-api conformance suite's pods.
                "registry.k8s.io/e2e-test-images/agnhost:2.45",
                // cyclonus' probe pods (its v0.5.6 pins this tag; `make cyclonus`).
                "registry.k8s.io/e2e-test-images/agnhost:2.43",
            ]),
            items,
            run: RunConfig {
                entrypoint: strings(&["/agnhost"]),
                cmd: strings(&["pause"]),
                env: env.clone(),
                ..RunConfig::default()
            },
        }
    };
    let netshoot = {
        let mut items = tools_base(&[ROOT, NOBODY, TCPDUMP]);
        items.extend([
            host("/usr/bin/ping", "iputils-ping"),
            host("/usr/bin/traceroute", "traceroute"),
            host("/usr/bin/tcpdump", "tcpdump"),
            host("/usr/bin/ip", "iproute2"),
            host("/usr/bin/ss", "iproute2"),
        ]);
        items.extend(iproute2_tables());
        items.extend([
            host("/usr/bin/netstat", "net-tools"),
            host("/usr/bin/nslookup", "bind9-dnsutils"),
            host("/usr/bin/dig", "bind9-dnsutils"),
            host("/usr/bin/curl", "curl"),
            host("/usr/bin/nc", "netcat-openbsd"),
            host("/usr/bin/iperf3", "iperf3"),
        ]);
        items.extend(shell_and_runners());
        items.push(Item::Busybox);
        ImageSpec {
            name: "netshoot",
            refs: strings(&["docker.io/nicolaka/netshoot:latest"]),
            items,
            run: RunConfig { cmd: strings(&["bash"]), env: env.clone(), ..RunConfig::default() },
        }
    };
    let busybox = ImageSpec {
        name: "busybox",
        refs: strings(&["registry.k8s.io/e2e-test-images/busybox:1.37.0-2"]),
        items: vec![
            Item::MergedUsr,
            Item::Busybox,
            Item::Accounts(&[ROOT, NOBODY]),
            Item::NsSwitch,
            Item::Dir { path: "/tmp", mode: 0o1777 },
            Item::Dir { path: "/root", mode: 0o700 },
        ],
        run: RunConfig { cmd: strings(&["sh"]), env: env.clone(), ..RunConfig::default() },
    };
    // The e2e suite's DNS image (formerly jessie-dnsutils): a glibc userland with dig, for the DNS specs'
    // probe loops (`dig`, `getent hosts`, `seq`, `test`, `echo` under `sh -c`), as upstream's Debian-based one.
    let glibc_dns_testing = {
        let mut items = tools_base(&[ROOT, NOBODY]);
        items.extend([
            host("/usr/bin/dig", "bind9-dnsutils"),
            host("/usr/bin/nslookup", "bind9-dnsutils"),
            host("/usr/bin/getent", "libc-bin"),
            Item::Built { dir: BinDir::Node, file: "coredns", to: "/" },
        ]);
        items.extend(shell_and_runners());
        items.push(Item::Busybox);
        ImageSpec {
            name: "glibc-dns-testing",
            refs: strings(&["registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"]),
            items,
            run: RunConfig { cmd: strings(&["sh"]), env: env.clone(), ..RunConfig::default() },
        }
    };
    // The e2e suite's web server: Debian's nginx on port 80, serving a page, in the foreground.
    let nginx = {
        let mut items = tools_base(&[ROOT, NOBODY, WWW_DATA]);
        items.extend([
            host("/usr/sbin/nginx", "nginx-light"),
            data("/etc/nginx/mime.types", "nginx-common"),
            Item::Text { path: "/etc/nginx/nginx.conf", content: NGINX_CONF },
            Item::Text { path: "/usr/share/nginx/html/index.html", content: NGINX_INDEX },
            Item::Dir { path: "/var/log/nginx", mode: 0o755 },
            Item::Dir { path: "/var/lib/nginx", mode: 0o755 },
            Item::Dir { path: "/var/cache/nginx", mode: 0o755 },
            Item::Dir { path: "/run", mode: 0o755 },
        ]);
        items.extend(shell_and_runners());
        items.push(Item::Busybox);
        ImageSpec {
            name: "nginx",
            refs: strings(&[
                "registry.k8s.io/e2e-test-images/nginx:1.27.0-2",
                "registry.k8s.io/e2e-test-images/nginx:1.28.0-2",
            ]),
            items,
            run: RunConfig { cmd: strings(&["nginx", "-g", "daemon off;"]), env: env.clone(), ..RunConfig::default() },
        }
    };
    vec![tabby, pause, coredns, agnhost, netshoot, busybox, glibc_dns_testing, nginx]
}

/// nginx's configuration in the lab's nginx image: a server on port 80 (IPv4 and IPv6) with a page.
const NGINX_CONF: &str = "user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /dev/stderr;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    client_body_temp_path /var/lib/nginx/body;
    proxy_temp_path /var/lib/nginx/proxy;
    fastcgi_temp_path /var/lib/nginx/fastcgi;
    uwsgi_temp_path /var/lib/nginx/uwsgi;
    scgi_temp_path /var/lib/nginx/scgi;
    server {
        listen 80 default_server;
        listen [::]:80 default_server;
        root /usr/share/nginx/html;
        index index.html;
    }
}
";

const NGINX_INDEX: &str = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1></body></html>\n";

/// `/etc/passwd` of `users`.
pub fn passwd(users: &[User]) -> String {
    users.iter().map(|u| format!("{}:x:{}:{}:{}:{}:{}\n", u.name, u.id, u.id, u.name, u.home, u.shell)).collect()
}

/// `/etc/group` of `users`.
pub fn group(users: &[User]) -> String {
    users.iter().map(|u| format!("{}:x:{}:\n", u.group, u.id)).collect()
}

/// What is at a path of the host, not following a final symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File { executable: bool },
    Dir,
    Symlink(PathBuf),
    Other,
}

/// The machine the images take their files from.
pub trait Host {
    fn lstat(&self, path: &Path) -> io::Result<Kind>;
    /// The content of a file, following symlinks.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The shared libraries `program` loads, the dynamic loader included, as paths of this machine;
    /// empty for a statically linked program.
    fn libraries(&self, program: &Path) -> Result<Vec<PathBuf>, ImageError>;
    /// `busybox --list-full`: one applet path a line (`usr/bin/wget`, `sbin/ip`).
    fn busybox_applets(&self, busybox: &Path) -> Result<String, ImageError>;
}

/// This machine.
pub struct RealHost;

impl Host for RealHost {
    fn lstat(&self, path: &Path) -> io::Result<Kind> {
        let meta = std::fs::symlink_metadata(path)?;
        let ft = meta.file_type();
        Ok(if ft.is_symlink() {
            Kind::Symlink(std::fs::read_link(path)?)
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            Kind::File { executable: meta.permissions().mode() & 0o111 != 0 }
        } else {
            Kind::Other
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn libraries(&self, program: &Path) -> Result<Vec<PathBuf>, ImageError> {
        let command = format!("ldd {}", program.display());
        let output = Command::new("ldd")
            .arg(program)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD")
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| ImageError::Command { command: command.clone(), detail: e.to_string() })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let is_static = |s: &str| s.contains("not a dynamic executable") || s.contains("statically linked");
        if is_static(&stdout) || is_static(&stderr) {
            return Ok(Vec::new());
        }
        if !output.status.success() {
            return Err(ImageError::Command { command, detail: format!("{}{}", stderr.trim(), stdout.trim()) });
        }
        parse_ldd(&stdout).map_err(|library| ImageError::LibraryNotFound { program: program.to_path_buf(), library })
    }

    fn busybox_applets(&self, busybox: &Path) -> Result<String, ImageError> {
        let command = format!("{} --list-full", busybox.display());
        let output = Command::new(busybox)
            .arg("--list-full")
            .output()
            .map_err(|e| ImageError::Command { command: command.clone(), detail: e.to_string() })?;
        if !output.status.success() {
            let detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
            return Err(ImageError::Command { command, detail });
        }
        String::from_utf8(output.stdout)
            .map_err(|e| ImageError::Command { command, detail: format!("output is not UTF-8: {e}") })
    }
}

/// The library paths `ldd` printed, or the name of a library it did not find.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in output.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, resolved)) => {
                let resolved = resolved.trim();
                if resolved.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                resolved
            }
            None => line,
        };
        let path = path.split(" (").next().unwrap_or(path).trim();
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

/// The applet links busybox gets in an image: `(path in the image, applet name)` for every applet of
/// `list` (`busybox --list-full`) whose name no file of `provided` has. Paths are merged-/usr.
pub fn applet_links(list: &str, provided: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for line in list.lines().map(str::trim) {
        let Some((dir, name)) = line.rsplit_once('/') else { continue };
        if name.is_empty() || name == "busybox" || provided.contains(name) || !seen.insert(name.to_string()) {
            continue;
        }
        out.push((usr_merge(&format!("/{dir}/{name}")), name.to_string()));
    }
    out
}

/// The path in a merged-/usr tree: `/bin/x` is `/usr/bin/x`, and so for `/sbin`, `/lib`, `/lib64`.
pub fn usr_merge(path: &str) -> String {
    for (top, usr) in MERGED_USR {
        if let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(top))
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("/{usr}{rest}");
        }
    }
    path.to_string()
}

/// The directories a built program is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    pub tabby_bin: PathBuf,
    pub node_bin: PathBuf,
}

impl Inputs {
    fn dir(&self, dir: BinDir) -> &Path {
        match dir {
            BinDir::Tabby => &self.tabby_bin,
            BinDir::Node => &self.node_bin,
        }
    }
}

/// The inputs of `spec` that `exists` says are not there.
pub fn missing_inputs(spec: &ImageSpec, inputs: &Inputs, exists: impl Fn(&Path) -> bool) -> Vec<Missing> {
    let mut out = Vec::new();
    for item in &spec.items {
        let (path, hint) = match item {
            Item::HostProgram { path, package } | Item::HostData { path, package } => {
                (PathBuf::from(path), package_hint(package))
            }
            Item::Busybox => (PathBuf::from(BUSYBOX), package_hint("busybox-static")),
            Item::Built { dir, file, .. } => (inputs.dir(*dir).join(file), dir.hint().to_string()),
            _ => continue,
        };
        if !exists(&path) {
            out.push(Missing { path, hint });
        }
    }
    out
}

/// Builds the layer of one image.
struct Assembler<'a, H: Host> {
    host: &'a H,
    image: &'static str,
    tree: Tree,
    /// Host paths already copied with their closure.
    done: BTreeSet<PathBuf>,
}

impl<H: Host> Assembler<'_, H> {
    fn insert(&mut self, path: &str, node: tar::Node) -> Result<(), ImageError> {
        self.tree.insert(&usr_merge(path), node).map_err(|e| ImageError::Tree(self.image, e))
    }

    fn merged_usr(&mut self) -> Result<(), ImageError> {
        for (top, usr) in MERGED_USR {
            self.insert(top, tar::Node::Symlink { target: usr.to_string() })?;
        }
        Ok(())
    }

    /// `path` with every symlink of it resolved (a directory's path, for the parent of a file).
    fn resolve_dir(&self, path: &Path) -> Result<PathBuf, ImageError> {
        let mut out = PathBuf::from("/");
        let mut pending: VecDeque<PathBuf> = path.components().map(|c| PathBuf::from(c.as_os_str())).collect();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            match c.components().next() {
                Some(Component::RootDir) => out = PathBuf::from("/"),
                Some(Component::ParentDir) => {
                    out.pop();
                }
                Some(Component::Normal(name)) => {
                    let next = out.join(name);
                    match self.host.lstat(&next).map_err(|e| ImageError::Io(next.clone(), e))? {
                        Kind::Symlink(target) => {
                            hops += 1;
                            if hops > 40 {
                                return Err(ImageError::SymlinkLoop(path.to_path_buf()));
                            }
                            for c in target.components().rev() {
                                pending.push_front(PathBuf::from(c.as_os_str()));
                            }
                        }
                        _ => out = next,
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Copies the host path `path`: each symlink on the way as a symlink, then the file it ends at, which
    /// it returns.
    fn copy_chain(&mut self, path: &Path, hint: &dyn Fn() -> String) -> Result<PathBuf, ImageError> {
        let mut path = path.to_path_buf();
        for _ in 0..40 {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(ImageError::NotAFile(path));
            };
            let parent = match self.resolve_dir(parent) {
                Err(ImageError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ImageError::Missing(vec![Missing { path, hint: hint() }]));
                }
                other => other?,
            };
            let here = parent.join(name);
            match self.host.lstat(&here) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ImageError::Missing(vec![Missing { path: here, hint: hint() }]));
                }
                Err(e) => return Err(ImageError::Io(here, e)),
                Ok(Kind::Symlink(target)) => {
                    let target_str = target.to_string_lossy().into_owned();
                    self.insert(&here.to_string_lossy(), tar::Node::Symlink { target: target_str })?;
                    path = parent.join(target);
                }
                Ok(Kind::File { executable }) => {
                    if !self.done.contains(&here) {
                        let data = self.host.read(&here).map_err(|e| ImageError::Io(here.clone(), e))?;
                        let mode = if executable { EXEC_MODE } else { FILE_MODE };
                        self.insert(&here.to_string_lossy(), tar::Node::File { data, mode })?;
                    }
                    return Ok(here);
                }
                Ok(_) => return Err(ImageError::NotAFile(here)),
            }
        }
        Err(ImageError::SymlinkLoop(path))
    }

    /// Copies the shared libraries `program` (a host path) loads.
    fn copy_libraries(&mut self, program: &Path) -> Result<(), ImageError> {
        if !self.done.insert(program.to_path_buf()) {
            return Ok(());
        }
        let libraries = self.host.libraries(program)?;
        if !libraries.is_empty() {
            self.merged_usr()?;
        }
        for library in libraries {
            let hint = || format!("a shared library of {}", program.display());
            let file = self.copy_chain(&library, &hint)?;
            self.done.insert(file);
        }
        Ok(())
    }

    fn item(&mut self, item: &Item, inputs: &Inputs) -> Result<(), ImageError> {
        match item {
            Item::MergedUsr => self.merged_usr()?,
            Item::HostProgram { path, package } => {
                let file = self.copy_chain(Path::new(path), &|| package_hint(package))?;
                self.copy_libraries(&file)?;
            }
            Item::HostData { path, package } => {
                self.copy_chain(Path::new(path), &|| package_hint(package))?;
            }
            Item::Built { dir, file, to } => {
                let source = inputs.dir(*dir).join(file);
                let data = self
                    .host
                    .read(&source)
                    .map_err(|e| missing_or(ImageError::Io(source.clone(), e), &|| dir.hint().to_string()))?;
                let to = format!("{}/{file}", to.trim_end_matches('/'));
                self.insert(&to, tar::Node::File { data, mode: EXEC_MODE })?;
                self.copy_libraries(&source)?;
            }
            Item::Symlink { path, target } => self.insert(path, tar::Node::Symlink { target: target.to_string() })?,
            Item::Dir { path, mode } => self.insert(path, tar::Node::Dir { mode: *mode })?,
            Item::Accounts(users) => {
                self.insert("/etc/passwd", tar::Node::File { data: passwd(users).into_bytes(), mode: FILE_MODE })?;
                self.insert("/etc/group", tar::Node::File { data: group(users).into_bytes(), mode: FILE_MODE })?;
            }
            Item::NsSwitch => {
                self.insert("/etc/nsswitch.conf", tar::Node::File { data: NSSWITCH.into(), mode: FILE_MODE })?
            }
            Item::Text { path, content } => {
                self.insert(path, tar::Node::File { data: content.as_bytes().to_vec(), mode: FILE_MODE })?
            }
            Item::Busybox => {
                let file = self.copy_chain(Path::new(BUSYBOX), &|| package_hint("busybox-static"))?;
                self.copy_libraries(&file)?;
            }
        }
        Ok(())
    }

    /// Links every busybox applet no program of the image provides (after everything else is in).
    fn applets(&mut self) -> Result<(), ImageError> {
        let list = self.host.busybox_applets(Path::new(BUSYBOX))?;
        let provided: BTreeSet<String> = self
            .tree
            .iter()
            .filter_map(|(path, _)| path.rsplit_once('/'))
            .filter(|(dir, _)| PATH_DIRS.contains(dir))
            .map(|(_, name)| name.to_string())
            .collect();
        let target = usr_merge(BUSYBOX);
        for (path, _) in applet_links(&list, &provided) {
            self.insert(&path, tar::Node::Symlink { target: target.clone() })?;
        }
        Ok(())
    }
}

/// A missing file as [`ImageError::Missing`] with `hint`, any other error as it is.
fn missing_or(e: ImageError, hint: &dyn Fn() -> String) -> ImageError {
    match e {
        ImageError::Io(path, e) if e.kind() == io::ErrorKind::NotFound => {
            ImageError::Missing(vec![Missing { path, hint: hint() }])
        }
        e => e,
    }
}

/// The layer of `spec`: every item, then busybox's applet links.
pub fn assemble(spec: &ImageSpec, inputs: &Inputs, host: &impl Host) -> Result<Tree, ImageError> {
    let mut a = Assembler { host, image: spec.name, tree: Tree::new(), done: BTreeSet::new() };
    for item in &spec.items {
        a.item(item, inputs)?;
    }
    if spec.items.contains(&Item::Busybox) {
        a.applets()?;
    }
    Ok(a.tree)
}

/// Writes the layout archive of `spec` with `layer` to `out`.
pub fn write_image<W: Write>(out: W, spec: &ImageSpec, layer: &[u8], arch: &str) -> io::Result<oci::Written> {
    oci::write_layout(out, layer, &spec.run, &spec.refs, arch)
}

/// The `images.json` entry of a written image.
pub fn manifest_entry(spec: &ImageSpec, written: &oci::Written) -> Value {
    json!({
        "name": spec.name,
        "refs": spec.refs,
        "archive": format!("{}.tar", spec.name),
        "digest": written.manifest_digest,
        "size": written.size,
    })
}

/// `images.json` after a build: the entries just `built`, and those of `previous` for images not rebuilt
/// that are still known and whose archive `exists`, in the order of `order`.
pub fn merge_manifest(previous: &[Value], built: &[Value], order: &[&str], exists: impl Fn(&str) -> bool) -> Value {
    let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
    let mut entries: Vec<Value> = built.to_vec();
    for old in previous {
        let n = name(old);
        let archive = old["archive"].as_str().unwrap_or_default();
        if order.contains(&n.as_str()) && !entries.iter().any(|e| name(e) == n) && exists(archive) {
            entries.push(old.clone());
        }
    }
    entries.sort_by_key(|e| order.iter().position(|o| *o == name(e)));
    Value::Array(entries)
}

/// Command-line options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub out: PathBuf,
    pub inputs: Inputs,
    pub only: Vec<String>,
}

/// Parses the arguments after `images`; relative defaults are below `root`.
pub fn parse_args(args: &[String], root: &Path) -> Result<Options, ImageError> {
    let mut opts = Options {
        out: root.join("target/images"),
        inputs: Inputs { tabby_bin: root.join("target/lab-bin"), node_bin: root.join(".cache/node/bin") },
        only: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "--out" => &mut opts.out,
            "--tabby-bin" => &mut opts.inputs.tabby_bin,
            "--node-bin" => &mut opts.inputs.node_bin,
            f if f.starts_with('-') => return Err(ImageError::Usage(format!("unknown flag {f}"))),
            name => {
                opts.only.push(name.to_string());
                continue;
            }
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().cloned().ok_or_else(|| ImageError::Usage(format!("{flag} needs a value")))?,
        };
        *slot = PathBuf::from(value);
    }
    Ok(opts)
}

/// The images `only` names (all when empty).
pub fn select(all: Vec<ImageSpec>, only: &[String]) -> Result<Vec<ImageSpec>, ImageError> {
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    if let Some(unknown) = only.iter().find(|n| !names.contains(&n.as_str())) {
        return Err(ImageError::UnknownImage(unknown.clone(), names.join(" ")));
    }
    Ok(all.into_iter().filter(|s| only.is_empty() || only.iter().any(|n| n == s.name)).collect())
}

fn human(size: u64) -> String {
    format!("{:.1} MiB", size as f64 / (1024.0 * 1024.0))
}

/// `cargo xtask images ...`.
pub fn run(root: &Path, args: &[String]) -> Result<(), ImageError> {
    let opts = parse_args(args, root)?;
    let all = specs(env!("CARGO_PKG_VERSION"));
    let order: Vec<&str> = all.iter().map(|s| s.name).collect();
    let selected = select(all.clone(), &opts.only)?;
    let missing: Vec<Missing> = selected.iter().flat_map(|s| missing_inputs(s, &opts.inputs, |p| p.exists())).collect();
    if !missing.is_empty() {
        let mut unique = Vec::new();
        for m in missing {
            if !unique.contains(&m) {
                unique.push(m);
            }
        }
        return Err(ImageError::Missing(unique));
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e| ImageError::Io(path, e)
    };
    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let arch = oci::go_arch(std::env::consts::ARCH);
    let mut built = Vec::new();
    for spec in &selected {
        let start = Instant::now();
        let layer = assemble(spec, &opts.inputs, &RealHost)?.to_tar();
        let path = opts.out.join(format!("{}.tar", spec.name));
        let tmp = opts.out.join(format!(".{}.tar.tmp", spec.name));
        let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let written = write_image(BufWriter::new(file), spec, &layer, arch).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        println!(
            "{:<9} {:>10}  {}  {:>5.1}s  {}",
            spec.name,
            human(written.size),
            written.manifest_digest,
            start.elapsed().as_secs_f64(),
            spec.refs.join(" ")
        );
        built.push(manifest_entry(spec, &written));
    }
    let manifest_path = opts.out.join(MANIFEST);
    let previous: Vec<Value> = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let merged = merge_manifest(&previous, &built, &order, |archive| opts.out.join(archive).is_file());
    let mut text = serde_json::to_string_pretty(&merged).map_err(|e| ImageError::Json(manifest_path.clone(), e))?;
    text.push('\n');
    std::fs::write(&manifest_path, text).map_err(io_err(&manifest_path))?;
    println!("wrote {}", manifest_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tar::tests::read_tar;
    use super::*;
    use sha2::Digest;

    /// An in-memory host: files, symlinks and directories by path; `ldd` answers from `libs`.
    #[derive(Default)]
    struct FakeHost {
        entries: BTreeMap<PathBuf, FakeEntry>,
        libs: BTreeMap<PathBuf, Vec<PathBuf>>,
        applets: String,
    }

    enum FakeEntry {
        File(Vec<u8>, bool),
        Link(&'static str),
        Dir,
    }

    impl FakeHost {
        fn file(mut self, path: &str, data: &str, exec: bool) -> Self {
            self.entries.insert(path.into(), FakeEntry::File(data.as_bytes().to_vec(), exec));
            self
        }
        fn link(mut self, path: &str, target: &'static str) -> Self {
            self.entries.insert(path.into(), FakeEntry::Link(target));
            self
        }
        fn dir(mut self, path: &str) -> Self {
            self.entries.insert(path.into(), FakeEntry::Dir);
            self
        }
        fn libs(mut self, program: &str, libs: &[&str]) -> Self {
            self.libs.insert(program.into(), libs.iter().map(PathBuf::from).collect());
            self
        }
        fn debian() -> Self {
            FakeHost::default()
                .link("/bin", "usr/bin")
                .link("/lib", "usr/lib")
                .link("/lib64", "usr/lib64")
                .link("/sbin", "usr/sbin")
                .link("/usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
                .file("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "ld", true)
                .file("/usr/lib/x86_64-linux-gnu/libc.so.6", "libc", true)
                .link("/usr/lib/x86_64-linux-gnu/libz.so.1", "libz.so.1.2.13")
                .file("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "libz", false)
        }
    }

    const LIBC: &[&str] = &["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"];

    impl Host for FakeHost {
        fn lstat(&self, path: &Path) -> io::Result<Kind> {
            match self.entries.get(path) {
                Some(FakeEntry::File(_, exec)) => Ok(Kind::File { executable: *exec }),
                Some(FakeEntry::Link(t)) => Ok(Kind::Symlink(PathBuf::from(t))),
                Some(FakeEntry::Dir) => Ok(Kind::Dir),
                // Parents of known entries are directories.
                None if self.entries.keys().any(|k| k.starts_with(path)) => Ok(Kind::Dir),
                None => Err(io::ErrorKind::NotFound.into()),
            }
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let mut path = path.to_path_buf();
            loop {
                match self.entries.get(&path) {
                    Some(FakeEntry::File(d, _)) => return Ok(d.clone()),
                    Some(FakeEntry::Link(t)) => path = path.parent().unwrap().join(t),
                    _ => return Err(io::ErrorKind::NotFound.into()),
                }
            }
        }
        fn libraries(&self, program: &Path) -> Result<Vec<PathBuf>, ImageError> {
            Ok(self.libs.get(program).cloned().unwrap_or_default())
        }
        fn busybox_applets(&self, _: &Path) -> Result<String, ImageError> {
            Ok(self.applets.clone())
        }
    }

    fn node<'a>(tree: &'a Tree, path: &str) -> &'a tar::Node {
        tree.get(path).unwrap_or_else(|| panic!("{path} is not in the layer"))
    }

    fn link(target: &str) -> tar::Node {
        tar::Node::Symlink { target: target.into() }
    }

    fn inputs() -> Inputs {
        Inputs { tabby_bin: "/tb".into(), node_bin: "/nb".into() }
    }

    fn spec(items: Vec<Item>) -> ImageSpec {
        ImageSpec { name: "t", refs: vec!["example.org/t:1".into()], items, run: RunConfig::default() }
    }

    #[test]
    fn programs_come_with_their_symlink_chain_and_library_closure() {
        let host = FakeHost::debian()
            .link("/usr/bin/traceroute", "/etc/alternatives/traceroute")
            .link("/etc/alternatives/traceroute", "/usr/bin/traceroute.db")
            .file("/usr/bin/traceroute.db", "tr", true)
            .libs("/usr/bin/traceroute.db", &[LIBC[0], LIBC[1], "/lib/x86_64-linux-gnu/libz.so.1"]);
        let tree = assemble(&spec(vec![host_item("/usr/bin/traceroute")]), &inputs(), &host).unwrap();
        assert_eq!(node(&tree, "usr/bin/traceroute"), &link("/etc/alternatives/traceroute"));
        assert_eq!(node(&tree, "etc/alternatives/traceroute"), &link("/usr/bin/traceroute.db"));
        assert_eq!(node(&tree, "usr/bin/traceroute.db"), &tar::Node::File { data: b"tr".to_vec(), mode: EXEC_MODE });
        for (top, usr) in MERGED_USR {
            assert_eq!(node(&tree, top), &link(usr));
        }
        assert_eq!(
            node(&tree, "usr/lib64/ld-linux-x86-64.so.2"),
            &link("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        );
        assert!(matches!(node(&tree, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), tar::Node::File { .. }));
        assert!(matches!(node(&tree, "usr/lib/x86_64-linux-gnu/libc.so.6"), tar::Node::File { .. }));
        assert_eq!(node(&tree, "usr/lib/x86_64-linux-gnu/libz.so.1"), &link("libz.so.1.2.13"));
        assert_eq!(
            node(&tree, "usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
            &tar::Node::File { data: b"libz".to_vec(), mode: FILE_MODE }
        );
        // Nothing but the chain, the closure and the directories above them.
        let files: Vec<_> = tree.iter().filter(|(_, n)| !matches!(n, tar::Node::Dir { .. })).map(|(p, _)| p).collect();
        assert_eq!(files.len(), 12, "{files:?}");
    }

    fn host_item(path: &'static str) -> Item {
        Item::HostProgram { path, package: "pkg" }
    }

    #[test]
    fn a_static_built_program_needs_no_usr_layout() {
        let host = FakeHost::default().file("/nb/pause", "pause", true);
        let pause = specs("0.1.0").into_iter().find(|s| s.name == "pause").unwrap();
        let tree = assemble(&pause, &inputs(), &host).unwrap();
        let paths: Vec<_> = tree.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["pause"]);
        assert_eq!(node(&tree, "pause"), &tar::Node::File { data: b"pause".to_vec(), mode: EXEC_MODE });
    }

    #[test]
    fn busybox_applets_fill_only_the_names_no_tool_provides() {
        let list = "usr/bin/[\nbin/sh\nbin/cat\nsbin/ip\nusr/bin/wget\nbin/busybox\nlinuxrc\nusr/sbin/ip\n";
        let provided: BTreeSet<String> = ["ip".to_string(), "bash".to_string()].into();
        let links = applet_links(list, &provided);
        let paths: Vec<&str> = links.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/usr/bin/[", "/usr/bin/sh", "/usr/bin/cat", "/usr/bin/wget"]);

        let mut host = FakeHost::debian()
            .file("/usr/bin/busybox", "bb", true)
            .file("/usr/bin/ip", "ip", true)
            .libs("/usr/bin/ip", LIBC);
        host.applets = list.to_string();
        let tree = assemble(&spec(vec![Item::Busybox, host_item("/usr/bin/ip")]), &inputs(), &host).unwrap();
        assert_eq!(node(&tree, "usr/bin/sh"), &link("/usr/bin/busybox"));
        assert_eq!(node(&tree, "usr/bin/cat"), &link("/usr/bin/busybox"));
        assert!(matches!(node(&tree, "usr/bin/ip"), tar::Node::File { .. }));
        assert!(tree.get("usr/sbin/ip").is_none());
    }

    #[test]
    fn data_is_named_file_by_file() {
        let host = FakeHost::debian().dir("/etc/iproute2").file("/etc/iproute2/rt_protos", "protos", false);
        let item = |path| Item::HostData { path, package: "iproute2" };
        let tree = assemble(&spec(vec![item("/etc/iproute2/rt_protos")]), &inputs(), &host).unwrap();
        assert_eq!(
            node(&tree, "etc/iproute2/rt_protos"),
            &tar::Node::File { data: b"protos".to_vec(), mode: FILE_MODE }
        );
        let err = assemble(&spec(vec![item("/etc/iproute2")]), &inputs(), &host).unwrap_err();
        assert!(matches!(err, ImageError::NotAFile(_)), "{err}");
    }

    #[test]
    fn missing_inputs_name_what_to_run_or_install() {
        let specs = specs("0.1.0");
        let agnhost = specs.iter().find(|s| s.name == "agnhost").unwrap();
        let missing =
            missing_inputs(agnhost, &inputs(), |p| p != Path::new("/nb/agnhost") && p != Path::new("/usr/bin/socat"));
        let text = ImageError::Missing(missing).to_string();
        assert!(text.contains("/nb/agnhost (build the node software: make node-software"), "{text}");
        assert!(text.contains("/usr/bin/socat (from the Debian package socat: apt-get install"), "{text}");

        // A file that disappears between the check and the build is reported the same way.
        let err = assemble(&spec(vec![host_item("/usr/bin/socat")]), &inputs(), &FakeHost::debian()).unwrap_err();
        assert!(err.to_string().contains("/usr/bin/socat (from the Debian package pkg"), "{err}");
        let built = Item::Built { dir: BinDir::Tabby, file: "tabby-agent", to: "/usr/local/bin" };
        let err = assemble(&spec(vec![built]), &inputs(), &FakeHost::debian()).unwrap_err();
        assert!(err.to_string().contains("/tb/tabby-agent (build Tabby's binaries: make lab-binaries"), "{err}");
    }

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
        assert_eq!(parse_ldd("\tlibfoo.so.2 => not found\n"), Err("libfoo.so.2".to_string()));
        assert_eq!(parse_ldd("\tstatically linked\n").unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn merged_usr_paths() {
        assert_eq!(usr_merge("/bin/sh"), "/usr/bin/sh");
        assert_eq!(usr_merge("/lib64/ld-linux-x86-64.so.2"), "/usr/lib64/ld-linux-x86-64.so.2");
        assert_eq!(usr_merge("/lib"), "/usr/lib");
        assert_eq!(usr_merge("/library/x"), "/library/x");
        assert_eq!(usr_merge("/usr/bin/sh"), "/usr/bin/sh");
    }

    /// A host that has every file asked for: the content of a file is its path, every program is dynamic.
    struct AnyHost(FakeHost);

    impl Host for AnyHost {
        fn lstat(&self, path: &Path) -> io::Result<Kind> {
            self.0.lstat(path).or(Ok(Kind::File { executable: true }))
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.0.read(path).or_else(|_| Ok(path.to_string_lossy().into_owned().into_bytes()))
        }
        fn libraries(&self, program: &Path) -> Result<Vec<PathBuf>, ImageError> {
            // The CNI plugin is static; so are the node's Go programs.
            let static_ = ["/tb/tabby", "/nb/pause", "/nb/coredns", "/nb/agnhost", BUSYBOX];
            let is_static = static_.iter().any(|s| program == Path::new(s));
            Ok(if is_static { Vec::new() } else { LIBC.iter().map(PathBuf::from).collect() })
        }
        fn busybox_applets(&self, _: &Path) -> Result<String, ImageError> {
            Ok("bin/sh\nbin/cat\nbin/sleep\nbin/ping\nsbin/ip\nusr/bin/nc\nusr/bin/wget\nusr/bin/timeout\n".into())
        }
    }

    fn any_host() -> AnyHost {
        AnyHost(
            FakeHost::debian()
                .link("/usr/bin/nc", "/etc/alternatives/nc")
                .link("/etc/alternatives/nc", "/bin/nc.openbsd")
                .file("/etc/iproute2/rt_tables", "tables", false),
        )
    }

    fn layers() -> BTreeMap<&'static str, Tree> {
        specs("0.1.0").iter().map(|s| (s.name, assemble(s, &inputs(), &any_host()).unwrap())).collect()
    }

    fn is_file(tree: &Tree, path: &str) -> bool {
        matches!(tree.get(path), Some(tar::Node::File { .. }))
    }

    fn text(tree: &Tree, path: &str) -> String {
        match node(tree, path) {
            tar::Node::File { data, .. } => String::from_utf8(data.clone()).unwrap(),
            other => panic!("{path} is {other:?}"),
        }
    }

    #[test]
    fn every_image_has_what_its_users_run() {
        let layers = layers();
        let tabby = &layers["tabby"];
        for bin in ["tabby-operator", "tabby-agent", "tabby", "kubectl-tabby"] {
            assert_eq!(text(tabby, &format!("usr/local/bin/{bin}")), format!("/tb/{bin}"));
        }
        assert!(is_file(tabby, "usr/sbin/nft"));
        assert!(is_file(tabby, "usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_file(tabby, "etc/ssl/certs/ca-certificates.crt"));
        assert!(text(tabby, "etc/passwd").contains("nonroot:x:65532:65532:"));
        assert!(text(tabby, "etc/group").contains("nonroot:x:65532:"));
        assert_eq!(node(tabby, "tmp"), &tar::Node::Dir { mode: 0o1777 });

        let agnhost = &layers["agnhost"];
        for f in ["agnhost", "coredns", "usr/bin/dig", "usr/bin/nslookup", "usr/bin/curl", "usr/bin/nc.openbsd"] {
            assert!(is_file(agnhost, f), "agnhost: {f}");
        }
        for f in ["usr/bin/ip", "usr/bin/ss", "usr/bin/iperf", "usr/bin/bash", "usr/bin/socat", "etc/services"] {
            assert!(is_file(agnhost, f), "agnhost: {f}");
        }
        assert_eq!(node(agnhost, "usr/bin/nc"), &link("/etc/alternatives/nc"));
        assert_eq!(node(agnhost, "agnhost-2"), &link("agnhost"));
        assert_eq!(text(agnhost, "etc/iproute2/rt_tables"), "tables");
        assert!(text(agnhost, "etc/nsswitch.conf").contains("hosts: files dns\n"));
        // busybox fills in cat, sleep, wget and ping, not ip, nc, or sh and timeout (see shell_and_runners).
        assert_eq!(node(agnhost, "usr/bin/sh"), &link("bash"));
        assert!(is_file(agnhost, "usr/bin/timeout"));
        for applet in ["cat", "sleep", "wget", "ping"] {
            assert_eq!(node(agnhost, &format!("usr/bin/{applet}")), &link("/usr/bin/busybox"), "{applet}");
        }
        assert!(agnhost.get("usr/sbin/ip").is_none());

        let netshoot = &layers["netshoot"];
        for f in ["usr/bin/bash", "usr/bin/ping", "usr/bin/tcpdump", "usr/bin/netstat", "usr/bin/iperf3"] {
            assert!(is_file(netshoot, f), "netshoot: {f}");
        }
        assert!(text(netshoot, "etc/passwd").contains("tcpdump:x:"));
        assert!(netshoot.get("usr/bin/traceroute").is_some());
        assert_eq!(node(netshoot, "usr/bin/sleep"), &link("/usr/bin/busybox"));
        assert!(is_file(netshoot, "usr/bin/ping"), "the real ping, not busybox's");
        assert_eq!(node(netshoot, "usr/bin/sh"), &link("bash"));

        let busybox = &layers["busybox"];
        assert!(is_file(busybox, "usr/bin/busybox"));
        assert_eq!(node(busybox, "bin"), &link("usr/bin"));
        assert_eq!(node(busybox, "usr/bin/sh"), &link("/usr/bin/busybox"));
        assert_eq!(node(busybox, "usr/sbin/ip"), &link("/usr/bin/busybox"));

        let coredns = &layers["coredns"];
        let paths: Vec<_> = coredns.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["coredns", "etc", "etc/ssl", "etc/ssl/certs", "etc/ssl/certs/ca-certificates.crt"]);
    }

    #[test]
    fn references_and_configs() {
        let specs = specs("0.1.0");
        let get = |n: &str| specs.iter().find(|s| s.name == n).unwrap();
        assert_eq!(get("tabby").refs, ["ghcr.io/tabby-dev/tabby:v0.1.0", "ghcr.io/tabby-dev/tabby:dev"]);
        assert_eq!(get("tabby").run.entrypoint, ["/usr/local/bin/tabby-operator"]);
        assert_eq!(get("tabby").run.user.as_deref(), Some("65532:65532"));
        assert_eq!(get("tabby").run.env, [PATH_ENV]);
        assert_eq!(get("pause").refs, ["registry.k8s.io/pause:3.10.2"]);
        assert_eq!(get("pause").run.user.as_deref(), Some("65535:65535"));
        assert_eq!(get("coredns").refs, ["registry.k8s.io/coredns/coredns:v1.14.6"]);
        assert_eq!(
            get("agnhost").refs,
            [
                "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
                "registry.k8s.io/e2e-test-images/agnhost:2.55",
                "registry.k8s.io/e2e-test-images/agnhost:2.45",
                "registry.k8s.io/e2e-test-images/agnhost:2.43"
            ]
        );
        assert_eq!(get("netshoot").refs, ["docker.io/nicolaka/netshoot:latest"]);
        assert_eq!(get("netshoot").run.cmd, ["bash"]);
        assert_eq!(get("busybox").refs, ["registry.k8s.io/e2e-test-images/busybox:1.37.0-2"]);
        assert_eq!(get("busybox").run.cmd, ["sh"]);
        assert_eq!(get("glibc-dns-testing").refs, ["registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"]);
        assert_eq!(get("nginx").refs[0], "registry.k8s.io/e2e-test-images/nginx:1.27.0-2");
        assert_eq!(get("nginx").run.cmd, ["nginx", "-g", "daemon off;"]);
        // The workspace version is the one xtask is built with.
        let cargo = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml")).unwrap();
        assert!(cargo.contains(&format!("version = \"{}\"", env!("CARGO_PKG_VERSION"))));
    }

    /// The tabby image carries the labels of the Dockerfile's runtime stage.
    #[test]
    fn tabby_labels_match_the_dockerfile() {
        let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile")).unwrap();
        let labels = tabby_labels("v0.1.0");
        let mut seen = 0;
        for line in dockerfile.lines() {
            let Some((key, value)) = line.trim().trim_end_matches('\\').trim().split_once('=') else { continue };
            if !key.trim_start_matches("LABEL ").starts_with("org.opencontainers.image.") {
                continue;
            }
            let key = key.trim_start_matches("LABEL ").trim();
            let value = value.trim().trim_matches('"');
            seen += 1;
            if value.contains("${VERSION}") {
                assert!(labels.contains_key(key), "{key}");
            } else {
                assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
            }
        }
        assert_eq!(seen, labels.len());
    }

    fn archive(spec: &ImageSpec) -> (Vec<u8>, oci::Written) {
        let layer = assemble(spec, &inputs(), &any_host()).unwrap().to_tar();
        let mut out = Vec::new();
        let written = write_image(&mut out, spec, &layer, "amd64").unwrap();
        (out, written)
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{:x}", sha2::Sha256::digest(data))
    }

    #[test]
    fn archives_are_reproducible_oci_layouts() {
        let spec = specs("0.1.0").into_iter().find(|s| s.name == "tabby").unwrap();
        let (a, written) = archive(&spec);
        let (b, _) = archive(&spec);
        assert!(a == b, "two builds of the same inputs differ");
        assert_eq!(written.size, a.len() as u64);

        let entries = read_tar(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let file = |name: &str| -> &[u8] {
            &entries.iter().find(|e| e.0 == name).unwrap_or_else(|| panic!("{name} missing")).3
        };
        let json = |name: &str| -> Value { serde_json::from_slice(file(name)).unwrap() };
        let blob = |digest: &str| file(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")));

        assert_eq!(json("oci-layout"), json!({"imageLayoutVersion": "1.0.0"}));
        for (name, _, mode, data, _) in &entries {
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha(data), format!("sha256:{hex}"), "blob {name}");
                assert_eq!(*mode, FILE_MODE);
            }
        }
        let index = json("index.json");
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], oci::MEDIA_INDEX);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        for (m, (name, tag)) in
            manifests.iter().zip([("ghcr.io/tabby-dev/tabby:v0.1.0", "v0.1.0"), ("ghcr.io/tabby-dev/tabby:dev", "dev")])
        {
            assert_eq!(m["annotations"]["io.containerd.image.name"], name);
            assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], tag);
            assert_eq!(m["digest"], written.manifest_digest);
            assert_eq!(m["mediaType"], oci::MEDIA_MANIFEST);
            assert_eq!(m["platform"], json!({"architecture": "amd64", "os": "linux"}));
        }
        let manifest_bytes = blob(&written.manifest_digest);
        assert_eq!(manifests[0]["size"], manifest_bytes.len());
        let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
        assert_eq!(manifest["mediaType"], oci::MEDIA_MANIFEST);
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(layer_digest, written.layer_digest);
        assert_eq!(manifest["layers"][0]["mediaType"], oci::MEDIA_LAYER);
        assert_eq!(manifest["layers"][0]["size"], blob(layer_digest).len());
        let config: Value = serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(config["rootfs"], json!({"type": "layers", "diff_ids": [layer_digest]}));
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Entrypoint"], json!(["/usr/local/bin/tabby-operator"]));
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Env"], json!([PATH_ENV]));
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], "v0.1.0");

        // The layer itself: sorted, every entry owned by root at mtime 0 (read_tar checks), fixed modes.
        let layer = read_tar(blob(layer_digest));
        let bin = layer.iter().find(|e| e.0 == "bin").unwrap();
        assert_eq!((bin.1, bin.4.as_str()), (b'2', "usr/bin"));
        let op = layer.iter().find(|e| e.0 == "usr/local/bin/tabby-operator").unwrap();
        assert_eq!((op.2, op.3.as_slice()), (EXEC_MODE, b"/tb/tabby-operator".as_slice()));

        // Different content, different digest.
        let mut other = spec.clone();
        other.run.user = None;
        assert_ne!(archive(&other).1.manifest_digest, written.manifest_digest);
    }

    #[test]
    fn arguments() {
        let root = Path::new("/repo");
        let args = |a: &[&str]| parse_args(&strings(a), root);
        let defaults = args(&[]).unwrap();
        assert_eq!(defaults.out, Path::new("/repo/target/images"));
        assert_eq!(defaults.inputs.tabby_bin, Path::new("/repo/target/lab-bin"));
        assert_eq!(defaults.inputs.node_bin, Path::new("/repo/.cache/node/bin"));
        let o = args(&["--out", "/o", "--node-bin=/n", "pause", "--tabby-bin", "/t", "busybox"]).unwrap();
        assert_eq!((o.out.as_path(), o.inputs.node_bin.as_path()), (Path::new("/o"), Path::new("/n")));
        assert_eq!(o.inputs.tabby_bin, Path::new("/t"));
        assert_eq!(o.only, ["pause", "busybox"]);
        assert!(matches!(args(&["--out"]), Err(ImageError::Usage(_))));
        assert!(matches!(args(&["--bogus"]), Err(ImageError::Usage(_))));
        let err = select(specs("0.1.0"), &strings(&["nope"])).unwrap_err();
        assert!(err.to_string().contains("tabby pause coredns agnhost netshoot busybox"), "{err}");
        assert_eq!(select(specs("0.1.0"), &strings(&["busybox"])).unwrap().len(), 1);
    }

    #[test]
    fn images_json_keeps_what_was_not_rebuilt() {
        let order = ["tabby", "pause", "busybox"];
        let entry = |n: &str, d: &str| json!({"name": n, "archive": format!("{n}.tar"), "digest": d});
        let previous = [entry("busybox", "old"), entry("pause", "old"), entry("gone", "old"), entry("tabby", "old")];
        let merged = merge_manifest(&previous, &[entry("pause", "new")], &order, |a| a != "tabby.tar");
        assert_eq!(merged, json!([entry("pause", "new"), entry("busybox", "old")]));
    }
}
