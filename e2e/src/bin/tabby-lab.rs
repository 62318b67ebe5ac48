//! tabby-lab: Tabby on a local multi-node cluster (network namespaces joined by a bridge, a real control
//! plane, a node runner standing in for the kubelet). See `make lab`.

use std::path::PathBuf;
use std::process::ExitCode;

use tabby_e2e::lab::daemon::{self, LabConfig};

const USAGE: &str = "usage: tabby-lab <command> [--state DIR] [--nodes N] [--bin DIR]

  up                       start the lab in the background and install Tabby (operator.yaml, custom-resources.yaml)
  down                     stop the lab and remove every namespace, link, process and file it created
  exec-pod NS/NAME CMD     run CMD (sh -c) in a pod's network namespace
  exec-node NODE CMD       run CMD (sh -c) on a lab node (its netns and node directories)
  serve                    the lab itself (what `up` runs in the background)

  --state DIR   lab state (default .cache/lab)   --nodes N   lab nodes (default 3)
  --bin DIR     Tabby's binaries (default target/release)";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let root = tabby_e2e::repo_root();
    let mut cfg = LabConfig { state: root.join(".cache/lab"), nodes: 3, bin_dir: root.join("target/release") };
    let mut positional = Vec::new();
    while !args.is_empty() {
        let a = args.remove(0);
        let mut value = || if args.is_empty() { None } else { Some(args.remove(0)) };
        match a.as_str() {
            "--state" => cfg.state = value().map(PathBuf::from).unwrap_or(cfg.state),
            "--bin" => cfg.bin_dir = value().map(PathBuf::from).unwrap_or(cfg.bin_dir),
            "--nodes" => cfg.nodes = value().and_then(|v| v.parse().ok()).unwrap_or(cfg.nodes),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => positional.push(a),
        }
    }
    // Paths end up in kubeconfigs and in processes started elsewhere: make them absolute.
    let cwd = std::env::current_dir().unwrap_or_default();
    cfg.state = cwd.join(&cfg.state);
    cfg.bin_dir = cwd.join(&cfg.bin_dir);
    let result = match positional.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["up"] => daemon::up(&cfg, &std::env::current_exe().unwrap_or_default()).map(|kubeconfig| {
            println!("\nThe lab is running: {} nodes on 192.168.100.0/24.", cfg.nodes);
            println!("  export KUBECONFIG={}", kubeconfig.display());
            println!("  export PATH={}:$PATH   # kubectl, kubectl-tabby", cfg.state.display());
            println!("\nTry next:");
            println!("  kubectl get pods -A -o wide");
            println!("  kubectl tabby node status node-0");
            println!("  make lab-node NODE=node-0 CMD='ip route'");
            println!("  make lab-exec POD=ns/name CMD='ping -c3 <pod IP>'");
            println!("  make lab-down");
        }),
        ["down"] => daemon::down(&cfg.state),
        ["serve"] => match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt.block_on(daemon::serve(cfg.clone())).inspect_err(|e| eprintln!("lab failed: {e}")),
            Err(e) => Err(e.to_string()),
        },
        ["exec-pod", pod, command @ ..] => daemon::exec_pod(&cfg.state, pod, &command.join(" ")).map(|s| {
            if !s.success() {
                std::process::exit(s.code().unwrap_or(1));
            }
        }),
        ["exec-node", node, command @ ..] => daemon::exec_node(&cfg.state, node, &command.join(" ")).map(|s| {
            if !s.success() {
                std::process::exit(s.code().unwrap_or(1));
            }
        }),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tabby-lab: {e}");
            ExitCode::FAILURE
        }
    }
}
