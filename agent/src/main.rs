//! `tabby-agent [run]` (the node agent), `tabby-agent install-cni` (the init container),
//! `tabby-agent version`. Settings come from the environment (docs/cni.md lists them).

use std::process::ExitCode;

use tabby_agent::config::Config;

const USAGE: &str = "usage: tabby-agent [run | install-cni | cleanup | version]
  run          serve IPAM on the CNI socket (default)
  install-cni  install the tabby plugin and the conflist (init container)
  cleanup      remove Tabby's routes, devices, nftables table, CNI plugin and conflist from this node
  version      print the version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = |k: &str| std::env::var(k).ok();
    match args.first().map(String::as_str).unwrap_or("run") {
        "run" => {
            let cfg = match Config::from_env(&env) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tabby-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            tabby_obs::init_logging(&cfg.log_level, tabby_obs::LogFormat::Json);
            tabby_agent::memory::limit_arenas();
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tabby-agent: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(tabby_agent::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "tabby-agent failed");
                    ExitCode::FAILURE
                }
            }
        }
        "install-cni" => match tabby_agent::installcni::install(&env) {
            Ok(r) => {
                println!("install-cni: plugin {}, conflist {}", changed(r.plugin_written), changed(r.config_written));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("install-cni: {e}");
                ExitCode::FAILURE
            }
        },
        "cleanup" => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tabby-agent: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let paths = tabby_agent::config::Paths::from_env(&env);
            match rt.block_on(tabby_agent::cleanup::cleanup(&paths)) {
                Ok(r) => {
                    println!(
                        "cleanup: {} routes, {} links, nftables table {}, {} files removed",
                        r.routes,
                        r.links.len(),
                        if r.nft_table { "removed" } else { "absent" },
                        r.files.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cleanup: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "version" | "--version" => {
            println!("tabby-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("tabby-agent: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn changed(written: bool) -> &'static str {
    if written { "written" } else { "unchanged" }
}
