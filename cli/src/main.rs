//! `kubectl-tabby`: the calicoctl verbs for Tabby as a kubectl plugin (`kubectl tabby …`).
//!
//! Exit codes as kubectl: 0 success, 1 error, 2 usage error.

mod args;
mod cluster;
mod columns;
mod error;
mod get;
mod ipam;
mod neat;
mod node;
mod output;
mod policy;
mod table;
mod timefmt;
mod version;
mod wep;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command, IpamCommand, NodeCommand, PolicyCommand};
use crate::cluster::Cluster;
use crate::error::{Error, Result};

fn main() -> ExitCode {
    // clap prints usage errors and exits 2; --help and --version exit 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&Error::Runtime(e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "kubectl-tabby", &mut std::io::stdout());
            Ok(())
        }
        Command::Version => match Cluster::connect(&cli.global).await {
            Ok(cluster) => version::run(Some(&cluster)).await,
            Err(e) => {
                version::run(None).await?;
                Err(e)
            }
        },
        Command::Get(get) => {
            // An unknown type is reported before any connection is attempted.
            columns::ResourceType::parse(&get.resource)?;
            get::run(&Cluster::connect(&cli.global).await?, get).await
        }
        Command::Node { command: NodeCommand::Status { node } } => {
            node::status(&Cluster::connect(&cli.global).await?, node.as_deref()).await
        }
        Command::Policy { command: PolicyCommand::Trace { from, to, port, live } } => {
            policy::run(&Cluster::connect(&cli.global).await?, from, to, port, *live).await
        }
        Command::Ipam { command } => {
            let cluster = Cluster::connect(&cli.global).await?;
            match command {
                IpamCommand::Show { show_blocks, ip } => ipam::show(&cluster, *show_blocks, *ip).await,
                IpamCommand::Check { output } => ipam::check(&cluster, output.as_deref()).await,
                IpamCommand::Release { ip, from_report } => ipam::release(&cluster, *ip, from_report.as_deref()).await,
            }
        }
    }
}
