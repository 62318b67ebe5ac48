//! The Kubernetes project's own network tests against a fresh lab: start the lab, install the network plugin,
//! run upstream's `e2e.test` focused on a suite, read its JUnit report, print the table, remove the lab. The
//! cyclonus suite runs cyclonus' generated NetworkPolicy cases instead of `e2e.test` (`crate::cyclonus`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::{self, LabConfig};
use super::{PodNetwork, reference, sh};
use crate::conformance::{self, Counts};
use crate::cyclonus;

/// Which specs to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// `[sig-network] … [Conformance]` and the Networking Granular Checks.
    Conformance,
    /// The Networking Granular Checks.
    Granular,
    /// What CI runs: the pod Granular Checks over HTTP and UDP, one Service spec, one DNS spec.
    Ci,
    /// The NetworkPolicy e2e suite.
    Netpol,
    /// cyclonus' generated NetworkPolicy cases (`cyclonus generate`), not `e2e.test`.
    Cyclonus,
}

impl Suite {
    pub fn parse(s: &str) -> Option<Suite> {
        match s {
            "conformance" => Some(Suite::Conformance),
            "granular" => Some(Suite::Granular),
            "ci" => Some(Suite::Ci),
            "netpol" => Some(Suite::Netpol),
            "cyclonus" => Some(Suite::Cyclonus),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::Conformance => "conformance",
            Suite::Granular => "granular",
            Suite::Ci => "ci",
            Suite::Netpol => "netpol",
            Suite::Cyclonus => "cyclonus",
        }
    }

    /// The `--ginkgo.focus` regular expression (none for cyclonus, which does not run `e2e.test`).
    pub fn focus(self) -> &'static str {
        match self {
            Suite::Conformance => r"\[sig-network\].*\[Conformance\]|\[sig-network\] Networking Granular Checks",
            Suite::Granular => r"\[sig-network\] Networking Granular Checks",
            Suite::Ci => {
                r"\[sig-network\] Networking Granular Checks: Pods should function for (intra|node)-pod communication: (http|udp)|\[sig-network\] Services should serve a basic endpoint from pods|\[sig-network\] DNS should provide DNS for services |\[sig-network\] Netpol NetworkPolicy between server and client should (support a 'default-deny-ingress' policy|not mistakenly treat 'protocol: SCTP'|properly isolate pods that are selected by a policy allowing SCTP)"
            }
            Suite::Netpol => r"\[Feature:NetworkPolicy\]",
            Suite::Cyclonus => "",
        }
    }
}

/// Specs the lab leaves out before they start, each for a reason no real single-machine lab can change.
pub const NOT_RUN: &[(&str, &str)] = &[(
    // The two NetworkPolicy specs that name SCTP "even if the plugin doesn't support SCTP" probe over TCP
    // and run; the SCTP HostPort and SCTP Service specs are outside every focus here.
    r"\[Feature:SCTPConnectivity\]|SCTP HostPort|basic SCTP service",
    "this machine's kernel has no SCTP (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT)",
)];

/// The network plugin under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// Tabby, installed as README says.
    Tabby,
    /// Debian's reference plugins (bridge + host-local, a /24 per node, static routes between nodes): the
    /// control run. A spec that fails with both is the lab's problem, not Tabby's.
    Reference,
}

impl Plugin {
    pub fn parse(s: &str) -> Option<Plugin> {
        match s {
            "tabby" => Some(Plugin::Tabby),
            "reference" => Some(Plugin::Reference),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Plugin::Tabby => "tabby",
            Plugin::Reference => "reference",
        }
    }
}

/// One run.
pub struct Run {
    pub suite: Suite,
    pub plugin: Plugin,
    /// Where the JUnit report, e2e.test's log and the summary go.
    pub report: PathBuf,
    /// Upstream's e2e.test.
    pub e2e_test: PathBuf,
    /// The network-policy-api conformance suite and its CRD (`make netpol-api-test`), for the netpol suite.
    pub netpol_api: PathBuf,
    /// Leave the lab running afterwards.
    pub keep: bool,
    /// A focus of one's own instead of the suite's (to run a few specs again).
    pub focus: Option<String>,
    /// IPv4 and IPv6 (the lab, and Tabby's Installation with a pool of each family).
    pub dual_stack: bool,
    /// What the cyclonus suite runs.
    pub cyclonus: CyclonusRun,
}

/// The cyclonus suite's binary and knobs.
#[derive(Clone, Debug, Default)]
pub struct CyclonusRun {
    /// The cyclonus binary (`make cyclonus-bin`).
    pub bin: PathBuf,
    /// Only cases with any of these tags (cyclonus `--include`; empty: every case).
    pub include: Vec<String>,
    /// Cases with any of these tags are left out, besides [`cyclonus::EXCLUDED_TAGS`] (cyclonus `--exclude`).
    pub exclude: Vec<String>,
    /// How long one probe (`agnhost connect --timeout`) waits before it counts as blocked.
    pub job_timeout_seconds: u32,
}

impl CyclonusRun {
    /// Every tag a run leaves out, with the reason: the lab's, then the caller's.
    pub fn excluded(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            cyclonus::EXCLUDED_TAGS.iter().map(|(t, why)| (format!("tag `{t}`"), why.to_string())).collect();
        out.extend(self.exclude.iter().map(|t| (format!("tag `{t}`"), "left out for this run (--exclude)".into())));
        out
    }

    /// The arguments of `cyclonus generate`.
    pub fn args(&self) -> Vec<String> {
        let mut exclude: Vec<String> = cyclonus::EXCLUDED_TAGS.iter().map(|(t, _)| t.to_string()).collect();
        exclude.extend(self.exclude.iter().cloned());
        let mut args = vec![
            "generate".into(),
            // The probe pods serve TCP and UDP on ports 80 and 81: SCTP cannot run here (EXCLUDED_TAGS).
            "--server-protocol=TCP,UDP".into(),
            // Always given: cyclonus' own default leaves out five tags of cases this lab can run.
            format!("--exclude={}", exclude.join(",")),
            "--ignore-loopback".into(),
            format!("--job-timeout-seconds={}", self.job_timeout_seconds),
            // The probe pods' first start on a busy 2-core machine; cyclonus' 60 s is short for it.
            "--pod-creation-timeout-seconds=300".into(),
            "--retries=1".into(),
        ];
        if !self.include.is_empty() {
            args.push(format!("--include={}", self.include.join(",")));
        }
        args
    }
}

/// What a failed install leaves to read once the lab is gone: the plugin's status objects, every pod, the
/// agents' and the operator's last log lines, in `<report>/diagnostics.txt`.
fn diagnose(cfg: &LabConfig, report: &Path) {
    let mut out = String::new();
    for args in [
        &["get", "installation,tabbystatus", "-o", "yaml"][..],
        &["get", "nodestatuses", "-o", "yaml"],
        &["get", "pods", "-A", "-o", "wide"],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"],
        &["logs", "-n", "tabby-operator", "deployment/tabby-operator", "--tail=100"],
        &["logs", "-n", "tabby-system", "-l", "k8s-app=tabby-node", "--all-containers", "--tail=100", "--prefix"],
    ] {
        out.push_str(&format!("$ kubectl {}\n", args.join(" ")));
        out.push_str(&kubectl(cfg, args).unwrap_or_else(|e| e));
        out.push_str("\n\n");
    }
    let path = report.join("diagnostics.txt");
    match std::fs::write(&path, out) {
        Ok(()) => println!("    the install failed; what the cluster said: {}", path.display()),
        Err(e) => eprintln!("{}: {e}", path.display()),
    }
}

fn kubectl(cfg: &LabConfig, args: &[&str]) -> Result<String, String> {
    sh::kubectl(&cfg.state, args)
}

/// The Installation of a dual-stack run: the default IPv4 pool of custom-resources.yaml and an IPv6 pool.
pub const DUAL_STACK_INSTALLATION: &str = r#"apiVersion: operator.tabby.dev/v1
kind: Installation
metadata:
  name: default
spec:
  network:
    bgp: Enabled
    ipPools:
    - {name: default-ipv4-ippool, cidr: 192.168.0.0/16, blockSize: 26, encapsulation: None, natOutgoing: Enabled, nodeSelector: all()}
    - {name: default-ipv6-ippool, cidr: "fd00:10:244::/48", blockSize: 122, encapsulation: None, natOutgoing: Disabled, nodeSelector: all()}
"#;

/// Installs the plugin on the running lab and waits until every node is Ready and CoreDNS is available.
fn install(cfg: &LabConfig, plugin: Plugin) -> Result<(), String> {
    match plugin {
        Plugin::Tabby => {
            println!("==> kubectl create -f operator.yaml; kubectl create -f custom-resources.yaml");
            kubectl(cfg, &["create", "-f", "operator.yaml"])?;
            kubectl(cfg, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
            if cfg.dual_stack {
                let path = cfg.state.join("installation-dual-stack.yaml");
                std::fs::write(&path, DUAL_STACK_INSTALLATION).map_err(|e| e.to_string())?;
                kubectl(cfg, &["create", "-f", &path.display().to_string()])?;
            } else {
                kubectl(cfg, &["create", "-f", "custom-resources.yaml"])?;
            }
            sh::wait_until("TabbyStatus network", Duration::from_secs(120), || {
                kubectl(cfg, &["get", "tabbystatus", "network"]).is_ok()
            })?;
            kubectl(cfg, &["wait", "--for=condition=Available", "tabbystatus/network", "--timeout=300s"])?;
        }
        Plugin::Reference if cfg.dual_stack => {
            return Err("the reference control runs single-stack (its conflist has one IPv4 range)".into());
        }
        Plugin::Reference => {
            println!("==> the reference plugins: bridge + host-local on every node, routes between nodes");
            reference::install(&cfg.state, cfg.nodes, reference::bridge_conflist)?;
        }
    }
    sh::wait_until("every node Ready", Duration::from_secs(120), || {
        kubectl(cfg, &["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"])
            .is_ok_and(|s| s.split_whitespace().count() == cfg.nodes && s.split_whitespace().all(|v| v == "True"))
    })?;
    kubectl(cfg, &["rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=180s"])?;
    Ok(())
}

/// Runs e2e.test against the lab; its output goes to `<report>/e2e.log`, with a progress line every minute.
fn run_e2e(cfg: &LabConfig, run: &Run) -> Result<(), String> {
    let skip: Vec<&str> = NOT_RUN.iter().map(|(pattern, _)| *pattern).collect();
    let log_path = run.report.join("e2e.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let path = format!("{}:{}", cfg.state.display(), std::env::var("PATH").unwrap_or_default());
    let focus = run.focus.as_deref().unwrap_or(run.suite.focus());
    println!("==> e2e.test --ginkgo.focus='{focus}' --ginkgo.skip='{}'", skip.join("|"));
    let mut child = Command::new(&run.e2e_test)
        .arg(format!("--kubeconfig={}", cfg.state.join("kubeconfig").display()))
        .arg(format!("--kubectl-path={}", cfg.state.join("kubectl").display()))
        .args(["--provider=local", &format!("--num-nodes={}", cfg.nodes)])
        .arg(format!("--report-dir={}", run.report.display()))
        .arg(format!("--ginkgo.focus={focus}"))
        .arg(format!("--ginkgo.skip={}", skip.join("|")))
        .args(["--ginkgo.no-color", "--ginkgo.timeout=4h", "--disable-log-dump"])
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e} (make e2e-test)", run.e2e_test.display()))?;
    let start = Instant::now();
    let mut last = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            println!("    e2e.test ended after {}s ({status})", start.elapsed().as_secs());
            return Ok(());
        }
        if last.elapsed() > Duration::from_secs(60) {
            last = Instant::now();
            // Lossy: failure dumps may hold bytes that are not UTF-8.
            let text = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap_or_default()).into_owned();
            let done = text.matches('•').count();
            let failed = text.matches("[FAILED] [").count();
            println!("    [{:>4}s] {done} specs done, {failed} failed", start.elapsed().as_secs());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The network-policy-api conformance suite (ClusterNetworkPolicy) against the lab: its CRD installed as a
/// cluster that offers the API has it, then its Go test with every feature; output in `<report>/netpol-api.log`.
fn run_netpol_api(cfg: &LabConfig, run: &Run) -> Result<Vec<conformance::Spec>, String> {
    // On a kernel without SCTP the suite's base pods cannot start (their SCTP servers exit): the same tests
    // then run over its manifests without those servers (`make netpol-api-test` builds both).
    let sctp = tabby_testkit::traffic::sctp_supported();
    let test = run.netpol_api.join(if sctp { "netpol-api.test" } else { "netpol-api-without-sctp.test" });
    let crd = run.netpol_api.join("crd.yaml");
    if !test.is_file() || !crd.is_file() {
        return Err(format!("{} is missing (make netpol-api-test)", test.display()));
    }
    // Tabby's operator installs ClusterNetworkPolicy's CRD when the cluster lacks it: the suite then runs
    // against that one, as a user's cluster would; the module's own is applied only where none is there.
    if kubectl(cfg, &["get", "crd", "clusternetworkpolicies.policy.networking.k8s.io"]).is_ok() {
        println!("==> ClusterNetworkPolicy's CRD is installed (by the plugin): the suite runs against it");
    } else {
        kubectl(cfg, &["apply", "--server-side", "-f", &crd.display().to_string()])?;
    }
    kubectl(cfg, &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"])?;
    println!("==> the network-policy-api conformance suite (all features)");
    if !sctp {
        println!(
            "    this kernel has no SCTP: the base pods run without their SCTP servers, and a test that stops at \
             an SCTP probe is reported as such"
        );
    }
    let log_path = run.report.join("netpol-api.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let status = Command::new(&test)
        .args(["-test.v", "-test.run", "TestConformance", "-test.timeout", "2h", "-all-features"])
        .env("KUBECONFIG", cfg.state.join("kubeconfig"))
        .current_dir(&run.report)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("{}: {e}", test.display()))?;
    println!("    the suite ended ({status})");
    let output = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap_or_default()).into_owned();
    let mut specs = conformance::parse_go_test(&output);
    let stopped = if sctp { 0 } else { conformance::sctp_stops(&output, &mut specs) };
    // A suite that fails before any test reports (bad flags, its setup never ready) is a failure too; one
    // whose only failures were SCTP stops has said why.
    if !status.success() && stopped == 0 && !specs.iter().any(|s| matches!(s.outcome, conformance::Outcome::Failed(_)))
    {
        let last = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        specs.push(conformance::Spec {
            name: "network-policy-api conformance suite (the whole run)".into(),
            outcome: conformance::Outcome::Failed(format!("{status}: {last}")),
            seconds: 0.0,
        });
    }
    Ok(specs)
}

/// cyclonus' generated cases against the lab, from this machine with the lab's kubeconfig (it probes with
/// `agnhost connect` through the API server's exec, as it does on any cluster). Its standard output goes to
/// `<report>/cyclonus.log` (what [`cyclonus::parse`] reads), its logging to `<report>/cyclonus-stderr.log`,
/// with a progress line every minute. Returns the cases and, when it stopped on an error, that error.
/// A run that cyclonus stops on a lost write race ([`cyclonus::retryable`]) is run again on the same lab,
/// up to [`CYCLONUS_ATTEMPTS`] times, and the attempts' cases merged ([`cyclonus::merge`]).
fn run_cyclonus(cfg: &LabConfig, run: &Run) -> Result<(Vec<cyclonus::Case>, Option<String>), String> {
    let mut runs = Vec::new();
    for attempt in 1..=CYCLONUS_ATTEMPTS {
        let (cases, fatal) = cyclonus_attempt(cfg, run, attempt)?;
        runs.push(cases);
        match fatal {
            Some(f) if cyclonus::retryable(&f) && attempt < CYCLONUS_ATTEMPTS => {
                println!("    cyclonus stopped on a write conflict ({f}); running it again on the same lab");
            }
            fatal => return Ok((cyclonus::merge(&runs), fatal)),
        }
    }
    Ok((cyclonus::merge(&runs), None))
}

/// How many times cyclonus runs when it keeps stopping on write conflicts.
const CYCLONUS_ATTEMPTS: usize = 3;

fn cyclonus_attempt(
    cfg: &LabConfig,
    run: &Run,
    attempt: usize,
) -> Result<(Vec<cyclonus::Case>, Option<String>), String> {
    let args = run.cyclonus.args();
    println!("==> cyclonus {}", args.join(" "));
    let suffix = if attempt == 1 { String::new() } else { format!("-{attempt}") };
    let log_path = run.report.join(format!("cyclonus{suffix}.log"));
    let err_path = run.report.join(format!("cyclonus{suffix}-stderr.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err = std::fs::File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
    let mut child = Command::new(&run.cyclonus.bin)
        .args(&args)
        .arg(format!("--junit-results-file={}", run.report.join(format!("junit-cyclonus{suffix}.xml")).display()))
        .env("KUBECONFIG", cfg.state.join("kubeconfig"))
        .current_dir(&run.report)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{}: {e} (make cyclonus-bin)", run.cyclonus.bin.display()))?;
    let start = Instant::now();
    let mut last = Instant::now();
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            println!("    cyclonus ended after {}s ({status})", start.elapsed().as_secs());
            break;
        }
        if last.elapsed() > Duration::from_secs(60) {
            last = Instant::now();
            let cases = cyclonus::parse(&read(&log_path));
            let done =
                cases.iter().filter(|c| matches!(c.verdict, cyclonus::Verdict::Passed | cyclonus::Verdict::Failed));
            let failed = done.clone().filter(|c| !c.passed()).count();
            println!(
                "    [{:>4}s] {} of {} cases done, {failed} failed",
                start.elapsed().as_secs(),
                done.count(),
                cases.len()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let cases = cyclonus::parse(&read(&log_path));
    if cases.is_empty() {
        return Err(format!("cyclonus listed no case; see {} and {}", log_path.display(), err_path.display()));
    }
    Ok((cases, cyclonus::fatal(&read(&err_path))))
}

/// The cyclonus suite's summary: the table by tag, the failing cases, what was left out and why.
fn cyclonus_summary(
    cfg: &LabConfig,
    run: &Run,
    cases: &[cyclonus::Case],
    stopped: Option<&str>,
    minutes: u64,
) -> Result<Counts, String> {
    let version = cyclonus_version(&run.cyclonus.bin);
    let title = format!(
        "cyclonus {version}, {} plugin, Kubernetes {}, {} nodes, {} ({minutes} min){}",
        run.plugin.name(),
        kubernetes_version(),
        cfg.nodes,
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d"),
        if run.cyclonus.include.is_empty() {
            String::new()
        } else {
            format!(", cases tagged {}", run.cyclonus.include.join(" or "))
        }
    );
    let mut excluded = run.cyclonus.excluded();
    excluded.push(("pod-to-itself probes (`--ignore-loopback`)".into(), cyclonus::LOOPBACK_REASON.into()));
    let summary = cyclonus::summary(&title, cases, stopped, &excluded);
    std::fs::write(run.report.join("summary.md"), &summary).map_err(|e| e.to_string())?;
    println!("\n{summary}\nreport: {}", run.report.display());
    let c = cyclonus::counts(cases);
    Ok(Counts { passed: c.passed, failed: c.failed, skipped: 0 })
}

/// cyclonus' module version, as its binary was built (`go version -m`: the `mod` line, as the command's
/// own module, or a `dep` line), or "?".
fn cyclonus_version(bin: &Path) -> String {
    let out = sh::run("go", &["version", "-m", &bin.display().to_string()]).unwrap_or_default();
    out.lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["mod" | "dep", "github.com/mattfenwick/cyclonus", version, ..] => Some(version.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "?".into())
}

/// The lab's Kubernetes version (its kubectl's), or "?".
fn kubernetes_version() -> String {
    let version =
        sh::run(&crate::binary().display().to_string(), &["kubectl", "version", "--client"]).unwrap_or_default();
    version.lines().find_map(|l| l.strip_prefix("Client Version: ")).unwrap_or("?").trim().to_string()
}

/// A fresh lab, the plugin, the suite, the table. Returns the counts (the lab is removed unless `keep`).
pub fn run(cfg: &mut LabConfig, run: &Run, lab_exe: &Path) -> Result<Counts, String> {
    if run.suite == Suite::Cyclonus {
        if !run.cyclonus.bin.is_file() {
            return Err(format!("{} is missing (make cyclonus-bin)", run.cyclonus.bin.display()));
        }
    } else if !run.e2e_test.is_file() {
        return Err(format!("{} is missing (make e2e-test)", run.e2e_test.display()));
    }
    cfg.dual_stack = run.dual_stack;
    cfg.pod_network = match run.plugin {
        Plugin::Tabby => PodNetwork::Tabby,
        Plugin::Reference => PodNetwork::Reference,
    };
    std::fs::create_dir_all(&run.report).map_err(|e| format!("{}: {e}", run.report.display()))?;
    for old in std::fs::read_dir(&run.report).into_iter().flatten().flatten() {
        if old.file_name().to_string_lossy().starts_with("junit") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let start = Instant::now();
    let mut api_specs = Vec::new();
    let mut cyclonus_cases = (Vec::new(), None);
    let result = daemon::start_cluster(cfg, lab_exe, start)
        .and_then(|()| install(cfg, run.plugin).inspect_err(|_| diagnose(cfg, &run.report)))
        .and_then(|()| {
            if run.suite == Suite::Cyclonus {
                cyclonus_cases = run_cyclonus(cfg, run)?;
                return Ok(());
            }
            run_e2e(cfg, run)?;
            if run.suite == Suite::Netpol {
                api_specs = run_netpol_api(cfg, run)?;
            }
            Ok(())
        });
    if run.keep {
        println!(
            "the lab stays: KUBECONFIG={} (tabby-lab down --state {})",
            cfg.state.join("kubeconfig").display(),
            cfg.state.display()
        );
    } else if let Err(e) = daemon::down(&cfg.state) {
        eprintln!("lab down: {e}");
    }
    result?;
    if run.suite == Suite::Cyclonus {
        let (cases, stopped) = cyclonus_cases;
        return cyclonus_summary(cfg, run, &cases, stopped.as_deref(), start.elapsed().as_secs() / 60);
    }

    let mut specs = Vec::new();
    for entry in std::fs::read_dir(&run.report).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("junit") && name.ends_with(".xml") {
            let xml = String::from_utf8_lossy(&std::fs::read(entry.path()).map_err(|e| e.to_string())?).into_owned();
            specs.extend(conformance::parse_junit(&xml));
        }
    }
    if specs.is_empty() {
        return Err(format!("no spec ran; see {}", run.report.join("e2e.log").display()));
    }
    let k8s = kubernetes_version();
    let title = format!(
        "{} suite, {} plugin{}, Kubernetes {k8s}, {} nodes, {} ({} min)",
        run.suite.name(),
        run.plugin.name(),
        if run.dual_stack { ", dual stack (IPv4 + IPv6)" } else { "" },
        cfg.nodes,
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d"),
        start.elapsed().as_secs() / 60
    );
    let mut summary = conformance::table(&title, &specs);
    if run.suite == Suite::Netpol {
        summary.push('\n');
        if api_specs.is_empty() {
            summary.push_str(&format!(
                "network-policy-api conformance suite: no test reached a verdict; see {}\n",
                run.report.join("netpol-api.log").display()
            ));
        } else {
            let title = if tabby_testkit::traffic::sctp_supported() {
                "network-policy-api conformance suite (all features)"
            } else {
                "network-policy-api conformance suite (all features; the base pods without their SCTP servers: \
                 no SCTP in this kernel)"
            };
            summary.push_str(&conformance::table(title, &api_specs));
        }
    }
    summary.push_str("\nNot run (left out before they start):\n\n");
    for (pattern, reason) in NOT_RUN {
        summary.push_str(&format!("- `{pattern}`: {reason}\n"));
    }
    std::fs::write(run.report.join("summary.md"), &summary).map_err(|e| e.to_string())?;
    println!("\n{summary}\nreport: {}", run.report.display());
    let mut counts = conformance::counts(&specs);
    let api = conformance::counts(&api_specs);
    counts.failed += api.failed;
    Ok(counts)
}
