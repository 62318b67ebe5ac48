//! tabby-lab: a real Kubernetes cluster on one machine (kubelet + containerd + kube-proxy per node, in
//! network and mount namespaces; the control plane on node-0), with Tabby installed. See `make lab`.

use std::path::PathBuf;
use std::process::ExitCode;

use tabby_e2e::lab::PodNetwork;
use tabby_e2e::lab::daemon::{self, LabConfig};

const USAGE: &str = "usage: tabby-lab <command> [options]

Commands:
  up                   start the cluster in the background, then install Tabby as README says
                       (kubectl create -f operator.yaml; kubectl create -f custom-resources.yaml;
                       kubectl wait --for=condition=Available tabbystatus/network)
  cluster              start the cluster only (no Tabby): for other network plugins and benchmarks
  down                 stop the lab and remove every namespace, link, process, mount, cgroup and file it made
  node NODE [CMD…]     a shell on lab node NODE (node-0, …): its network, mount and UTS namespaces;
                       with CMD, run `sh -c CMD` there (CMD is passed as one argument: quote it once)
  exec NS/POD CMD…     `kubectl exec -n NS POD -- sh -c CMD`
  serve                the lab itself (what `up` runs in the background)

Options:
  --state DIR      lab state (default .cache/lab): kubeconfig, kubectl, logs, node directories
  --nodes N        lab nodes (default 3); node-0 also runs the control plane
  --bin DIR        Tabby's binaries on this machine, for `kubectl tabby` (default target/lab-bin)
  --images DIR     image archives and images.json from `make images` (default target/images)
  --node-bin DIR   containerd, containerd-shim-runc-v2, ctr from `make node-software` (default .cache/node/bin)
  --dual-stack     IPv4 and IPv6: node addresses fd00:100::(100+N), Services 10.96.0.0/16 and fd00:10:96::/112,
                   kubelets with both node IPs (pods get both families from an Installation with both pools)
  --pod-network P  tabby (default) or reference: how kube-proxy tells pod traffic (Tabby's tby… veths, or
                   the reference plugins' bridge cni0); `cluster` with reference is a control for the suites";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let root = tabby_e2e::repo_root();
    let mut cfg = LabConfig::new(root.join(".cache/lab"));
    let mut positional = Vec::new();
    while !args.is_empty() {
        let a = args.remove(0);
        let mut value = || if args.is_empty() { None } else { Some(args.remove(0)) };
        match a.as_str() {
            "--state" => cfg.state = value().map(PathBuf::from).unwrap_or(cfg.state),
            "--bin" => cfg.bin_dir = value().map(PathBuf::from).unwrap_or(cfg.bin_dir),
            "--images" => cfg.images = value().map(PathBuf::from).unwrap_or(cfg.images),
            "--node-bin" => cfg.node_bin = value().map(PathBuf::from).unwrap_or(cfg.node_bin),
            "--nodes" => cfg.nodes = value().and_then(|v| v.parse().ok()).unwrap_or(cfg.nodes),
            "--dual-stack" => cfg.dual_stack = true,
            "--pod-network" => match value().as_deref().and_then(PodNetwork::parse) {
                Some(p) => cfg.pod_network = p,
                None => {
                    eprintln!("--pod-network is tabby or reference");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" if positional.is_empty() => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            // Everything after the pod or node is the command, flags included.
            _ if positional.first().is_some_and(|c| c == "exec" || c == "node") && positional.len() >= 2 => {
                positional.push(a);
                positional.append(&mut args);
            }
            _ => positional.push(a),
        }
    }
    // Paths end up in kubeconfigs and in processes started elsewhere: make them absolute.
    let cwd = std::env::current_dir().unwrap_or_default();
    for p in [&mut cfg.state, &mut cfg.bin_dir, &mut cfg.images, &mut cfg.node_bin] {
        *p = cwd.join(&*p);
    }
    let exit = |s: std::process::ExitStatus| {
        if !s.success() {
            std::process::exit(s.code().unwrap_or(1));
        }
    };
    let self_exe = std::env::current_exe().unwrap_or_default();
    let result = match positional.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["up"] => daemon::up(&cfg, &self_exe).map(|kubeconfig| {
            println!("\nThe lab is running: {} nodes on 192.168.100.0/24 (node-0 is the control plane).", cfg.nodes);
            println!("  export KUBECONFIG={}", kubeconfig.display());
            println!("  export PATH={}:$PATH   # kubectl, kubectl-tabby", cfg.state.display());
            println!("\nTry next:");
            println!("  kubectl get nodes,pods -A -o wide");
            println!("  kubectl tabby node status node-0");
            println!("  kubectl logs -n tabby-system -l k8s-app=tabby-node");
            println!("  make lab-node NODE=node-0 CMD='ip route'");
            println!("  make lab-exec POD=ns/name CMD='ping -c3 <pod IP>'");
            println!("  make lab-down");
        }),
        ["cluster"] => daemon::start_cluster(&cfg, &self_exe, std::time::Instant::now()).map(|()| {
            println!(
                "\nThe cluster is running (no network plugin yet): KUBECONFIG={}",
                cfg.state.join("kubeconfig").display()
            );
        }),
        ["down"] => daemon::down(&cfg.state),
        ["serve"] => match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt.block_on(daemon::serve(cfg.clone())),
            Err(e) => Err(e.to_string()),
        },
        ["exec", pod, command @ ..] if !command.is_empty() => {
            daemon::exec_pod(&cfg.state, pod, &command.join(" ")).map(exit)
        }
        ["node", node] => daemon::exec_node(&cfg.state, node, "exec ${SHELL:-sh} -i").map(exit),
        ["node", node, command @ ..] => daemon::exec_node(&cfg.state, node, &command.join(" ")).map(exit),
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
