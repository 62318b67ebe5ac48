//! Running commands: plain, inside a lab node (its network namespace and its own view of the node
//! directories), or inside a pod's network namespace.

use std::path::Path;
use std::process::{Command, Output, Stdio};

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

/// A bind mount: `source` (a path on this machine) appears at `target` inside the process's mount namespace.
#[derive(Clone, Debug)]
pub struct Bind {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A `Command` that runs `argv` inside network namespace `netns` with `binds` in a private mount namespace
/// (`ip netns exec` gives each process its own mount namespace), optionally as `uid`.
pub fn in_node(netns: &str, binds: &[Bind], uid: Option<i64>, argv: &[String]) -> Command {
    let mut script = String::from("set -e\n");
    for b in binds {
        script.push_str(&format!("mount --bind {} {}\n", quote(&b.source), quote(&b.target)));
        if b.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {}\n", quote(&b.target)));
        }
    }
    match uid {
        Some(uid) if uid != 0 => {
            script.push_str(&format!("exec setpriv --reuid={uid} --regid={uid} --clear-groups -- \"$@\"\n"))
        }
        _ => script.push_str("exec \"$@\"\n"),
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "sh", "-c", &script, "sh"]).args(argv);
    cmd
}

/// Output of `sh -c command` inside network namespace `netns`.
pub fn exec_in_netns(netns: &str, command: &str) -> std::io::Result<Output> {
    Command::new("ip").args(["netns", "exec", netns, "sh", "-c", command]).output()
}

/// Creates `path` (and parents) when missing; returns the top-most directory it created, for removal later.
pub fn create_dir(path: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
    let mut first_missing = None;
    let mut p = path.to_path_buf();
    while !p.exists() {
        first_missing = Some(p.clone());
        if !p.pop() {
            break;
        }
    }
    std::fs::create_dir_all(path)?;
    Ok(first_missing)
}
