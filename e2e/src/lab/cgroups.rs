//! Each lab node's cgroup root, on a cgroup v1 machine with no systemd.
//!
//! A kubelet with `cgroupsPerQOS` needs its `cgroupRoot` to exist in every v1 hierarchy, and removes every
//! pod cgroup under `<cgroupRoot>/kubepods` it does not know: two kubelets sharing one root would kill each
//! other's pods. So each node gets `<lab parent>/tabby-lab/node-N`, created in every hierarchy, where the
//! lab parent is this process's memory cgroup (the pods stay accounted where the lab is). The node's own
//! processes (containerd and its shims, the kubelet, kube-proxy) live in `<root>/system`, so that
//! [`kill_all`] finds every process of a node, whoever started it, and `down` leaves nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the hierarchies are mounted.
pub const MOUNT: &str = "/sys/fs/cgroup";

/// The mount points of the cgroup hierarchies (v1, and v2 when `unified` is true), from `/proc/self/mountinfo`.
pub fn hierarchies(unified: bool) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_hierarchies(&info, unified)
}

/// The hierarchies of a mountinfo text (pure, for tests).
pub fn parse_hierarchies(mountinfo: &str, unified: bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fstype = right.split_whitespace().next()?;
            let wanted = fstype == "cgroup" || (unified && fstype == "cgroup2");
            (wanted && mount_point.starts_with(MOUNT)).then(|| PathBuf::from(mount_point))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// This process's cgroup in the memory hierarchy (e.g. `/` or `/some/sandbox`), from `/proc/self/cgroup`.
pub fn lab_parent() -> String {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    parse_memory_cgroup(&text).unwrap_or_else(|| "/".into())
}

/// The memory controller's path in a `/proc/<pid>/cgroup` text (pure, for tests).
pub fn parse_memory_cgroup(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
    })
}

/// `<lab parent>/tabby-lab`: every node's root is below it.
pub fn lab_root() -> String {
    format!("{}/tabby-lab", lab_parent().trim_end_matches('/'))
}

/// Creates `path` (absolute within a hierarchy) in every v1 hierarchy, with `cpuset.cpus`/`cpuset.mems` copied
/// from the parent where they are empty (a cpuset cgroup takes no process until both are set). Every directory
/// it creates is appended to `created`, shallowest first, so that it can be removed later.
pub fn create(path: &str, created: &mut Vec<PathBuf>) -> Result<(), String> {
    for hierarchy in hierarchies(false) {
        let mut dir = hierarchy.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let parent = dir.clone();
            dir.push(part);
            // Nodes are set up in parallel: another may create a shared parent between the check and here.
            match fs::create_dir(&dir) {
                Ok(()) => created.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating cgroup {}: {e}", dir.display())),
            }
            if dir.join("cpuset.cpus").exists() {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let mine = fs::read_to_string(dir.join(file)).unwrap_or_default();
                    if mine.trim().is_empty() {
                        let value = fs::read_to_string(parent.join(file)).unwrap_or_default();
                        fs::write(dir.join(file), value.trim())
                            .map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The processes in `path` and below, in any hierarchy.
pub fn processes(path: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for hierarchy in hierarchies(true) {
        collect(&hierarchy.join(path.trim_start_matches('/')), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect(dir: &Path, pids: &mut Vec<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&entry.path(), pids);
        }
    }
}

/// Kills (SIGKILL) every process in `path` and below until none is left, or `timeout` passes. Returns what is
/// left. The node's processes are killed together, so a containerd shim cannot restart a container meanwhile.
pub fn kill_all(path: &str, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = processes(path);
        if pids.is_empty() || Instant::now() > deadline {
            return pids;
        }
        let args: Vec<String> = pids.iter().map(u32::to_string).collect();
        let _ =
            std::process::Command::new("kill").arg("-KILL").args(&args).stderr(std::process::Stdio::null()).status();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes `path` and every cgroup below it in every hierarchy (deepest first). The processes must be gone.
pub fn remove(path: &str) {
    for hierarchy in hierarchies(true) {
        remove_tree(&hierarchy.join(path.trim_start_matches('/')));
    }
}

fn remove_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    // A cgroup that just lost its last process may take a moment to become removable.
    for _ in 0..20 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The line that puts a shell into cgroup `path` in every hierarchy (the node's processes start this way).
pub fn join_script(path: &str) -> String {
    join_script_in(MOUNT, path)
}

fn join_script_in(mount: &str, path: &str) -> String {
    format!(
        "for h in {mount}/*/; do if [ -d \"${{h}}{p}\" ]; then echo $$ > \"${{h}}{p}/cgroup.procs\"; fi; done",
        p = path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_hierarchies_and_optionally_v2() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
34 25 0:30 / /proc rw - proc proc rw";
        assert_eq!(
            parse_hierarchies(info, false),
            [PathBuf::from("/sys/fs/cgroup/cpu"), PathBuf::from("/sys/fs/cgroup/memory")]
        );
        assert_eq!(parse_hierarchies(info, true).len(), 3);
    }

    #[test]
    fn reads_the_memory_cgroup() {
        let text = "9:name=systemd:/\n4:memory:/sandbox/abc\n1:cpu,cpuacct:/\n0::/\n";
        assert_eq!(parse_memory_cgroup(text).as_deref(), Some("/sandbox/abc"));
        assert_eq!(parse_memory_cgroup("0::/\n"), None);
    }

    #[test]
    fn the_join_line_names_the_path_in_each_hierarchy() {
        // Run it: the shell must write its pid into the path in every hierarchy that has it.
        let dir = tempfile::tempdir().expect("tempdir");
        for h in ["memory", "cpu"] {
            std::fs::create_dir_all(dir.path().join(h).join("lab/node-0/system")).expect("mkdir");
        }
        std::fs::create_dir_all(dir.path().join("pids")).expect("mkdir");
        let script = format!("{}; echo $$", join_script_in(&dir.path().display().to_string(), "/lab/node-0/system"));
        let out = std::process::Command::new("sh").args(["-c", &script]).output().expect("sh runs");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        for h in ["memory", "cpu"] {
            let procs = std::fs::read_to_string(dir.path().join(h).join("lab/node-0/system/cgroup.procs"));
            assert_eq!(procs.expect("written").trim(), pid, "{h}");
        }
        assert!(!dir.path().join("pids/lab").exists());
        assert_eq!(
            join_script("/a/tabby-lab/node-0/system"),
            "for h in /sys/fs/cgroup/*/; do if [ -d \"${h}a/tabby-lab/node-0/system\" ]; then echo $$ > \"${h}a/tabby-lab/node-0/system/cgroup.procs\"; fi; done"
        );
    }
}
