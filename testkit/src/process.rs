//! Running commands and processes: checked one-shot commands, long-running processes killed on drop,
//! unique names for what a test creates, and the binaries of sibling crates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A number no other caller in this test process gets.
pub fn next_seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A name no other object of this test process has: `tb<pid>-<n>-<tag>`.
pub fn unique(tag: &str) -> String {
    format!("tb{}-{}-{tag}", std::process::id() % 100_000, next_seq())
}

/// Runs `args`, panicking with its stderr when it fails; returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args`: whether it succeeded, and its stdout and stderr.
pub fn run_quiet(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// A child process, killed (after SIGCONT, in case it was stopped) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log file"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { child, name: name.to_string() }
    }

    /// Sends `sig` (`TERM`, `STOP`, …).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).output();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The target directory of the running test or bench (`target/debug`, `target/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let deps = exe.parent().expect("the test binary is in a directory");
    deps.parent().expect("the deps directory is in the profile directory").to_path_buf()
}

/// Builds `targets` of `package` (e.g. `["--bin", "tabby"]`) once per test process, with the running
/// test's profile and into its target directory, so what the test runs is never stale.
pub fn cargo_build(package: &str, targets: &[&str]) {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let key = format!("{package} {}", targets.join(" "));
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built.contains(&key) {
        return;
    }
    let dir = profile_dir();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", package]).args(targets);
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let st = cmd.current_dir(crate::repo_root()).status().expect("cargo runs");
    assert!(st.success(), "cargo build -p {package} {} failed", targets.join(" "));
    built.push(key);
}

/// Where prebuilt binaries are taken from instead of building them (`TABBY_TEST_BINS`: a directory with
/// the binaries and an `examples/` directory), so sources may change while a long run goes on.
fn prebuilt(rel: &Path) -> Option<PathBuf> {
    std::env::var_os("TABBY_TEST_BINS").map(|d| PathBuf::from(d).join(rel))
}

/// A binary of a crate of this workspace (`sibling_bin("tabby-cni", "tabby")`), built once per test
/// process (cargo builds a dependency's library for tests, never its binaries).
pub fn sibling_bin(package: &str, bin: &str) -> PathBuf {
    if let Some(p) = prebuilt(Path::new(bin)) {
        return p;
    }
    static PATHS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut paths = PATHS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = paths.get_or_insert_with(HashMap::new).get(bin) {
        return p.clone();
    }
    cargo_build(package, &["--bin", bin]);
    let path = profile_dir().join(bin);
    assert!(path.is_file(), "{} is missing after the build", path.display());
    paths.get_or_insert_with(HashMap::new).insert(bin.to_string(), path.clone());
    path
}

/// An example of a crate of this workspace, built (with every example named in `build_with`) once per
/// test process.
pub fn sibling_example(package: &str, example: &str, build_with: &[&str]) -> PathBuf {
    if let Some(p) = prebuilt(&Path::new("examples").join(example)) {
        return p;
    }
    let targets: Vec<&str> = build_with.iter().flat_map(|e| ["--example", e]).collect();
    cargo_build(package, &targets);
    let path = profile_dir().join("examples").join(example);
    assert!(path.is_file(), "{} is missing after the build", path.display());
    path
}

/// `tabby-agent`.
pub fn agent_bin() -> PathBuf {
    sibling_bin("tabby-agent", "tabby-agent")
}

/// The `tabby` CNI plugin: the one `TABBY_CNI_PLUGIN` names (`make bench-cni` runs the statically linked
/// plugin the image ships), else cargo's build of it.
pub fn plugin_bin() -> PathBuf {
    std::env::var_os("TABBY_CNI_PLUGIN").map(PathBuf::from).unwrap_or_else(|| sibling_bin("tabby-cni", "tabby"))
}
