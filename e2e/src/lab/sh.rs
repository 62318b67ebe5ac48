//! Running commands on this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Quotes `s` for `sh`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs a command and returns its output; Err with stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `ip` with `args`.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

/// Creates `path` (and parents) when missing; returns every directory it created, shallowest first, so that
/// they can be removed (deepest first) later.
pub fn create_dir(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = path.to_path_buf();
    while !p.exists() {
        missing.push(p.clone());
        if !p.pop() {
            break;
        }
    }
    std::fs::create_dir_all(path)?;
    missing.reverse();
    Ok(missing)
}

/// Polls `ok` (every 500 ms) until it holds; an error naming `what` after `timeout`. For the lab's own steps,
/// which report failures instead of panicking (tests use testkit's `poll`).
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?}: {what}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// `kubectl` of the lab in `state` (its binary and kubeconfig there), run from the repository root: its
/// standard output, or the command and its standard error.
pub fn kubectl(state: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(state.join("kubectl"))
        .args(args)
        .env("KUBECONFIG", state.join("kubeconfig"))
        .current_dir(crate::repo_root())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
