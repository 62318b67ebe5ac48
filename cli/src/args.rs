//! The command line: commands, flags and the examples `--help` shows.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # BGP sessions of the node this runs on (or name one)
  kubectl tabby node status
  kubectl tabby node status worker-1

  # The IP pools, with every column
  kubectl tabby get ippool -o wide

  # The pods' interfaces and addresses in every namespace
  kubectl tabby get workloadendpoint -A

  # Address usage per pool and block; who holds an address
  kubectl tabby ipam show --show-blocks
  kubectl tabby ipam show --ip 10.244.1.5

  # Find leaked addresses, then release them
  kubectl tabby ipam check -o report.json
  kubectl tabby ipam release --from-report report.json";

/// The calicoctl verbs for Tabby, as a kubectl plugin.
#[derive(Debug, Parser)]
#[command(name = "kubectl-tabby", bin_name = "kubectl tabby", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, as kubectl spells them.
#[derive(Debug, Clone, Default, Args)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of namespaced resources (default: the context's namespace).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A node's Tabby agent and its BGP sessions.
    #[command(after_help = "Examples:\n  kubectl tabby node status\n  kubectl tabby node status worker-1")]
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// List Tabby resources as calicoctl shows them.
    #[command(after_help = GET_EXAMPLES)]
    Get(GetArgs),
    /// IP address management: usage, consistency and leaks.
    #[command(after_help = IPAM_EXAMPLES)]
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Network policy: why a connection is allowed or denied.
    #[command(after_help = POLICY_EXAMPLES)]
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The client's version, and the operator's and agents' images in the cluster.
    #[command(after_help = "Examples:\n  kubectl tabby version\n  kubectl tabby version --context prod")]
    Version,
    /// Print a shell completion script.
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

const GET_EXAMPLES: &str = "\
Resource types (plural and short names work too):
  ippool, ipamblock, blockaffinity, bgpconfig, bgppeer, nodestatus, workloadendpoint (wep),
  networkpolicy (tnp, Tabby's), globalnetworkpolicy (gnp), tier, globalnetworkset (gns)

Examples:
  kubectl tabby get ippool
  kubectl tabby get ippool default-ipv4-ippool -o wide
  kubectl tabby get bgpconfig default -o yaml > bgpconfig.yaml && kubectl apply -f bgpconfig.yaml
  kubectl tabby get workloadendpoint -n prod
  kubectl tabby get wep -A -o wide
  kubectl tabby get gnp -o wide
  kubectl tabby get networkpolicy -A";

const POLICY_EXAMPLES: &str = "\
Examples:
  kubectl tabby policy trace --from shop/web-0 --to shop/db-0 --port 5432/TCP
  kubectl tabby policy trace --from shop/web-0 --to 203.0.113.7 --port 443
  kubectl tabby policy trace --from 10.0.3.4 --to shop/web-0 --port 53/UDP --live";

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The verdict of one connection, and the tier, policy and rule that decide it in each direction.
    #[command(after_help = POLICY_EXAMPLES)]
    Trace {
        /// The source: NAMESPACE/POD, POD (in -n's namespace) or an address.
        #[arg(long)]
        from: String,
        /// The destination: NAMESPACE/POD, POD or an address.
        #[arg(long)]
        to: String,
        /// The destination port and protocol: 80/TCP, 53/UDP, 9000/SCTP (default TCP).
        #[arg(long)]
        port: String,
        /// Also show the deciding rule's packet counter from the agent of each pod's node.
        #[arg(long)]
        live: bool,
    },
}

const IPAM_EXAMPLES: &str = "\
Examples:
  kubectl tabby ipam show
  kubectl tabby ipam show --show-blocks
  kubectl tabby ipam show --ip 10.244.1.5
  kubectl tabby ipam check -o report.json
  kubectl tabby ipam release --ip 10.244.1.5
  kubectl tabby ipam release --from-report report.json";

const COMPLETION_EXAMPLES: &str = "\
Examples:
  # bash: load now, or install for every session
  source <(kubectl-tabby completion bash)
  kubectl-tabby completion bash > /etc/bash_completion.d/kubectl-tabby
  # zsh
  kubectl-tabby completion zsh > \"${fpath[1]}/_kubectl-tabby\"
  # fish
  kubectl-tabby completion fish > ~/.config/fish/completions/kubectl-tabby.fish";

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// The agent's state and BGP peers of NODE (default: $NODENAME, else this host's name), from its NodeStatus.
    #[command(
        after_help = "Examples:\n  kubectl tabby node status\n  NODENAME=worker-1 kubectl tabby node status\n  kubectl tabby node status worker-1"
    )]
    Status {
        /// The node (default: $NODENAME, else the hostname).
        node: Option<String>,
    },
}

/// `get TYPE [NAME] [-o wide|yaml|json]`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// ippool, ipamblock, blockaffinity, bgpconfig, bgppeer, nodestatus, workloadendpoint, networkpolicy,
    /// globalnetworkpolicy, tier or globalnetworkset.
    pub resource: String,
    /// Only this object.
    pub name: Option<String>,
    /// Output format: wide (more columns), yaml or json (re-applicable with kubectl apply).
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
}

/// `-o` of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Wide,
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Addresses in use and free, per pool (and per block with --show-blocks), or who holds one address.
    #[command(
        after_help = "Examples:\n  kubectl tabby ipam show\n  kubectl tabby ipam show --show-blocks\n  kubectl tabby ipam show --ip 10.244.1.5"
    )]
    Show {
        /// Add a row per block.
        #[arg(long)]
        show_blocks: bool,
        /// Say who holds this address instead.
        #[arg(long, value_name = "ADDR")]
        ip: Option<std::net::IpAddr>,
    },
    /// Look for leaked addresses, pods without allocations, stray handles and inconsistent blocks.
    #[command(after_help = "Examples:\n  kubectl tabby ipam check\n  kubectl tabby ipam check -o report.json")]
    Check {
        /// Also write the problems as JSON to FILE, for `ipam release --from-report`.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Release leaked addresses after re-checking that no pod uses them.
    #[command(
        group(ArgGroup::new("what").required(true).args(["ip", "from_report"])),
        after_help = "Examples:\n  kubectl tabby ipam release --ip 10.244.1.5\n  kubectl tabby ipam check -o report.json && kubectl tabby ipam release --from-report report.json"
    )]
    Release {
        /// The address to release.
        #[arg(long, value_name = "ADDR")]
        ip: Option<std::net::IpAddr>,
        /// Release every leaked address listed in a report of `ipam check -o`.
        #[arg(long, value_name = "FILE")]
        from_report: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn release_needs_exactly_one_source() {
        assert!(Cli::try_parse_from(["kubectl-tabby", "ipam", "release"]).is_err());
        assert!(
            Cli::try_parse_from(["kubectl-tabby", "ipam", "release", "--ip", "10.0.0.1", "--from-report", "r"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["kubectl-tabby", "ipam", "release", "--ip", "10.0.0.1"]).is_ok());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(["kubectl-tabby", "get", "wep", "-A", "--context", "c", "-o", "wide"]).unwrap();
        assert!(cli.global.all_namespaces);
        assert_eq!(cli.global.context.as_deref(), Some("c"));
    }
}
