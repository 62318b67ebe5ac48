//! When a test cannot run: in CI (`CI=true`) it fails; elsewhere it is skipped with a message written
//! straight to stderr (the harness captures `eprintln!` of passing tests, and a skip must be seen).

use std::io::Write;
use std::path::{Path, PathBuf};

/// True in CI, where a test that cannot run must fail rather than skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips `test` because of `why`: prints `SKIP <test>: <why>` and returns false; in CI, panics instead.
pub fn skip(test: &str, why: &str) -> bool {
    if in_ci() {
        panic!("{test}: {why}, and CI=true");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    false
}

/// Whether the test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when the test runs as root (network namespaces); otherwise skips it.
pub fn require_root(test: &str) -> bool {
    is_root() || skip(test, "needs root for network namespaces")
}

/// True when every program in `tools` is installed; otherwise skips the test naming the missing ones.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| which(t).is_none()).collect();
    missing.is_empty() || skip(test, &format!("needs {} (deps/apt-packages.txt)", missing.join(", ")))
}

/// True when the test can build a network lab: root, iproute2 and `tools`; otherwise skips it.
pub fn require_lab(test: &str, tools: &[&str]) -> bool {
    require_root(test) && require_tools(test, &[&["ip"][..], tools].concat())
}

/// Where `program` is: on `PATH`, or in the system directories daemons install to.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| PathBuf::from(program));
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/lib/frr"])
        .map(|d| Path::new(d).join(program))
        .find(|c| c.is_file())
}
