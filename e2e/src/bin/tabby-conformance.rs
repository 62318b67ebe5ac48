//! tabby-conformance: the Kubernetes project's own network tests (upstream's `e2e.test`) against a fresh lab.
//! See `make conformance` and docs/conformance.md.

use std::path::PathBuf;
use std::process::ExitCode;

use tabby_e2e::lab::daemon::LabConfig;
use tabby_e2e::lab::suites::{self, CyclonusRun, Plugin, Run, Suite};

const USAGE: &str = "usage: tabby-conformance [options]

Starts a fresh 3-node lab, installs the network plugin, runs upstream's e2e.test focused on a suite, writes the
JUnit report and a summary under --report, prints a table (passed / failed / skipped with every skip's reason),
removes the lab, and exits non-zero when any spec failed.

Options:
  --suite S        conformance (default): [sig-network] … [Conformance] and the Networking Granular Checks
                   ci: the CI subset (Granular Checks for pods, one Service and one DNS spec)
                   granular: the Networking Granular Checks only
                   netpol: the NetworkPolicy e2e suite ([Feature:NetworkPolicy])
                   cyclonus: cyclonus' generated NetworkPolicy cases (not e2e.test; SCTP cases left out)
  --plugin P       tabby (default, installed as README says) or reference (Debian's bridge + host-local)
  --dual-stack     IPv4 + IPv6: the lab (nodes, Services, kubelets) and Tabby's Installation with a pool of each
  --report DIR     where the JUnit report and summary go (default target/conformance/<suite>-<plugin>)
  --e2e-test PATH  upstream's e2e.test (default .cache/e2e/bin/e2e.test, from make e2e-test)
  --netpol-api DIR the network-policy-api suite and its CRD (default .cache/e2e/netpol-api, make netpol-api-test)
  --images DIR     image archives (default target/images)   --node-bin DIR  (default .cache/node/bin)
  --bin DIR        Tabby's binaries for kubectl tabby (default target/lab-bin)
  --state DIR      lab state (default: a new directory under /tmp)
  --focus REGEX    run these specs instead of the suite's (e.g. to run the failures again)
  --keep           leave the lab running afterwards (remove it with tabby-lab down --state DIR)

cyclonus suite:
  --cyclonus PATH  the cyclonus binary (default .cache/e2e/cyclonus/cyclonus, make cyclonus-bin)
  --include TAGS   only cases with any of these comma-separated tags (cyclonus --include; default: all)
  --exclude TAGS   leave out cases with any of these tags as well as the lab's (sctp)
  --job-timeout S  seconds one probe waits before it counts as blocked (default 1)";

fn main() -> ExitCode {
    let root = tabby_e2e::repo_root();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut suite = Suite::Conformance;
    let mut plugin = Plugin::Tabby;
    let mut report = None;
    let mut keep = false;
    let mut dual_stack = false;
    let mut focus = None;
    let mut e2e_test = root.join(".cache/e2e/bin/e2e.test");
    let mut netpol_api = root.join(".cache/e2e/netpol-api");
    let mut cyclonus = CyclonusRun {
        bin: root.join(".cache/e2e/cyclonus/cyclonus"),
        job_timeout_seconds: 1,
        ..CyclonusRun::default()
    };
    let tags = |s: String| s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
    let mut cfg = LabConfig::new(std::env::temp_dir().join(format!("tabby-lab-conformance-{}", std::process::id())));
    while !args.is_empty() {
        let a = args.remove(0);
        let mut value = || if args.is_empty() { String::new() } else { args.remove(0) };
        match a.as_str() {
            "--suite" => match Suite::parse(&value()) {
                Some(s) => suite = s,
                None => return usage(),
            },
            "--plugin" => match Plugin::parse(&value()) {
                Some(p) => plugin = p,
                None => return usage(),
            },
            "--keep" => keep = true,
            "--dual-stack" => dual_stack = true,
            "--focus" => focus = Some(value()),
            "--report" => report = Some(PathBuf::from(value())),
            "--e2e-test" => e2e_test = PathBuf::from(value()),
            "--netpol-api" => netpol_api = PathBuf::from(value()),
            "--cyclonus" => cyclonus.bin = PathBuf::from(value()),
            "--include" => cyclonus.include = tags(value()),
            "--exclude" => cyclonus.exclude = tags(value()),
            "--job-timeout" => match value().parse() {
                Ok(s) if s > 0 => cyclonus.job_timeout_seconds = s,
                _ => return usage(),
            },
            "--images" => cfg.images = PathBuf::from(value()),
            "--node-bin" => cfg.node_bin = PathBuf::from(value()),
            "--bin" => cfg.bin_dir = PathBuf::from(value()),
            "--state" => cfg.state = PathBuf::from(value()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    for p in [
        &mut cfg.state,
        &mut cfg.bin_dir,
        &mut cfg.images,
        &mut cfg.node_bin,
        &mut e2e_test,
        &mut netpol_api,
        &mut cyclonus.bin,
    ] {
        *p = cwd.join(&*p);
    }
    let report = cwd.join(report.unwrap_or_else(|| {
        root.join("target/conformance").join(format!(
            "{}-{}{}",
            suite.name(),
            plugin.name(),
            if dual_stack { "-dual-stack" } else { "" }
        ))
    }));
    // The lab daemon is tabby-lab, built beside this binary.
    let lab_exe = std::env::current_exe().unwrap_or_default().with_file_name("tabby-lab");
    let run = Run { suite, plugin, report, e2e_test, netpol_api, keep, dual_stack, focus, cyclonus };
    match suites::run(&mut cfg, &run, &lab_exe) {
        Ok(counts) if counts.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tabby-conformance: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
