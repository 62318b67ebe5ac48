//! Reading the JUnit report of upstream's `e2e.test` (Ginkgo v2) and summing it up: passed, failed and skipped
//! specs, with the reason of every skip. Pure: the runner (`tabby-conformance`) does the I/O.

use std::fmt::Write as _;

/// The outcome of one spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    /// Skipped at run time, with the suite's reason (e.g. "Only supported for providers [gce gke]").
    Skipped(String),
}

/// One spec of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub outcome: Outcome,
    pub seconds: f64,
}

/// The specs a report ran. Specs that the focus left out (Ginkgo lists them as skipped with no reason of
/// their own) and the suite's setup nodes are not specs of the run and are dropped.
pub fn parse_junit(xml: &str) -> Vec<Spec> {
    let mut specs = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase ") {
        rest = &rest[start..];
        let head_end = rest.find('>').unwrap_or(rest.len());
        let head = &rest[..head_end];
        let self_closing = head.ends_with('/');
        let (body, next) = if self_closing {
            ("", &rest[head_end.min(rest.len())..])
        } else {
            match rest.find("</testcase>") {
                Some(end) => (&rest[head_end + 1..end], &rest[end + "</testcase>".len()..]),
                None => ("", ""),
            }
        };
        rest = next;
        let name = attribute(head, "name").unwrap_or_default();
        let status = attribute(head, "status").unwrap_or_default();
        let seconds = attribute(head, "time").and_then(|t| t.parse().ok()).unwrap_or(0.0);
        let spec_name = match name.strip_prefix("[It] ") {
            Some(n) => n.to_string(),
            // [SynchronizedBeforeSuite], [ReportAfterSuite] …: not specs.
            None if name.starts_with('[') => continue,
            None => name,
        };
        let outcome = match status.as_str() {
            "passed" => Outcome::Passed,
            "skipped" | "pending" => {
                let message = element_attribute(body, "skipped", "message").unwrap_or_default();
                let reason = message.strip_prefix("skipped - ").unwrap_or(&message).trim().to_string();
                if reason.is_empty() || reason == "skipped" {
                    continue;
                }
                Outcome::Skipped(reason)
            }
            _ => {
                let message = element_attribute(body, "failure", "message")
                    .or_else(|| element_attribute(body, "error", "message"))
                    .unwrap_or_else(|| status.clone());
                Outcome::Failed(message)
            }
        };
        specs.push(Spec { name: spec_name, outcome, seconds });
    }
    specs
}

/// The leaf tests of `go test -v` output (a test that has subtests is their sum, not a spec of its own), with
/// the reason of every skip (the first log line under its `--- SKIP`) and the first log line of a failure.
pub fn parse_go_test(output: &str) -> Vec<Spec> {
    let lines: Vec<&str> = output.lines().collect();
    let mut specs: Vec<Spec> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some((verdict, rest)) =
            ["PASS", "FAIL", "SKIP"].iter().find_map(|v| trimmed.strip_prefix(&format!("--- {v}: ")).map(|r| (*v, r)))
        else {
            continue;
        };
        let (name, seconds) = match rest.rsplit_once(" (") {
            Some((n, t)) => (n.to_string(), t.trim_end_matches(')').trim_end_matches('s').parse().unwrap_or(0.0)),
            None => (rest.to_string(), 0.0),
        };
        // The log lines indented under the verdict, up to the next test line.
        let detail = lines[i + 1..]
            .iter()
            .take_while(|l| {
                !l.trim_start().starts_with("--- ")
                    && !l.starts_with("=== ")
                    && !l.starts_with("PASS")
                    && !l.starts_with("FAIL")
            })
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .map(|l| l.split_once(": ").map(|(_, m)| m).unwrap_or(l).to_string())
            .unwrap_or_default();
        let outcome = match verdict {
            "PASS" => Outcome::Passed,
            "SKIP" => Outcome::Skipped(if detail.is_empty() { "skipped".into() } else { detail }),
            _ => Outcome::Failed(detail),
        };
        specs.push(Spec { name, outcome, seconds });
    }
    let names: Vec<String> = specs.iter().map(|s| format!("{}/", s.name)).collect();
    specs.retain(|s| !names.iter().any(|n| n.len() > s.name.len() + 1 && n.starts_with(&format!("{}/", s.name))));
    specs
}

/// On a kernel without SCTP: the failed tests of `go test -v` output (the network-policy-api suite's) that
/// stopped at an SCTP probe become skips saying so; returns how many. A test stops at its first failed
/// probe, so the probes before it passed and none after it ran; a test that failed at any other probe stays
/// failed. The probe is the last `Command was [...]` line the test logged (streamed under its `=== RUN` or
/// `=== NAME`, or under its `--- FAIL`).
pub fn sctp_stops(output: &str, specs: &mut [Spec]) -> usize {
    // Each test's last probe, in the order the lines came: a header names the test whose lines follow.
    let mut last: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut current: Option<&str> = None;
    for line in output.lines() {
        let t = line.trim_start();
        if let Some(name) = ["=== RUN   ", "=== NAME  ", "=== CONT  "].iter().find_map(|h| t.strip_prefix(h)) {
            current = Some(name.trim_end());
        } else if let Some(rest) = ["--- FAIL: ", "--- PASS: ", "--- SKIP: "].iter().find_map(|h| t.strip_prefix(h)) {
            current = rest.rsplit_once(" (").map(|(name, _)| name);
        } else if t.contains("Command was")
            && let Some(name) = current
        {
            last.insert(name, t);
        }
    }
    let mut stopped = 0;
    for spec in specs.iter_mut() {
        if matches!(spec.outcome, Outcome::Failed(_))
            && last.get(spec.name.as_str()).is_some_and(|l| l.contains("--protocol=sctp"))
        {
            stopped += 1;
            spec.outcome = Outcome::Skipped(
                "stopped at an SCTP probe, which this kernel cannot carry (no SCTP: EPROTONOSUPPORT); its probes \
                 before that one passed"
                    .into(),
            );
        }
    }
    stopped
}

fn attribute(head: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = head.find(&key)? + key.len();
    let end = head[start..].find('"')? + start;
    Some(unescape(&head[start..end]))
}

fn element_attribute(body: &str, element: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{element}"))?;
    let head_end = body[start..].find('>')? + start;
    attribute(&body[start..head_end], name)
}

/// XML character references and the five predefined entities.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

pub fn counts(specs: &[Spec]) -> Counts {
    let mut c = Counts::default();
    for s in specs {
        match s.outcome {
            Outcome::Passed => c.passed += 1,
            Outcome::Failed(_) => c.failed += 1,
            Outcome::Skipped(_) => c.skipped += 1,
        }
    }
    c
}

/// A Markdown table of the run: one row per spec (failures first, then skips with their reasons, then passes),
/// and the counts.
pub fn table(title: &str, specs: &[Spec]) -> String {
    let mut out = String::new();
    let c = counts(specs);
    let _ = writeln!(out, "{title}: {} passed, {} failed, {} skipped\n", c.passed, c.failed, c.skipped);
    let _ = writeln!(out, "| result | spec | time | reason |");
    let _ = writeln!(out, "|---|---|---|---|");
    let rank = |o: &Outcome| match o {
        Outcome::Failed(_) => 0,
        Outcome::Skipped(_) => 1,
        Outcome::Passed => 2,
    };
    let mut sorted: Vec<&Spec> = specs.iter().collect();
    sorted.sort_by(|a, b| rank(&a.outcome).cmp(&rank(&b.outcome)).then(a.name.cmp(&b.name)));
    for s in sorted {
        let (result, reason) = match &s.outcome {
            Outcome::Passed => ("passed", String::new()),
            Outcome::Failed(m) => ("**failed**", first_line(m)),
            Outcome::Skipped(m) => ("skipped", first_line(m)),
        };
        let _ = writeln!(out, "| {result} | {} | {:.0} s | {} |", cell(&s.name), s.seconds, cell(&reason));
    }
    out
}

fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
    if line.chars().count() > 160 { format!("{}…", line.chars().take(160).collect::<String>()) } else { line.into() }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
  <testsuites tests="5" disabled="6000" errors="0" failures="1" time="92.5">
      <testsuite name="Kubernetes e2e suite" tests="5" skipped="2" failures="1" time="92.5">
          <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.2"></testcase>
          <testcase name="[It] [sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="passed" time="27.6"></testcase>
          <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" status="failed" time="60.1">
              <failure message="Told to stop trying after 60s.&#xA;endpoints &quot;x&quot; not ready &amp; more" type="failed">[FAILED] …</failure>
          </testcase>
          <testcase name="[It] [sig-network] Services should have session affinity work for LoadBalancer service [Slow] [LinuxOnly]" classname="Kubernetes e2e suite" status="skipped" time="0.4">
              <skipped message="skipped - Only supported for providers [gce gke aws] (not local)"></skipped>
          </testcase>
          <testcase name="[It] [sig-storage] Volumes should store data" classname="Kubernetes e2e suite" status="skipped" time="0">
              <skipped message="skipped"></skipped>
          </testcase>
          <testcase name="[ReportAfterSuite] Kubernetes e2e suite report" classname="Kubernetes e2e suite" status="passed" time="0"></testcase>
      </testsuite>
  </testsuites>"#;

    #[test]
    fn specs_of_the_run_with_their_outcome_and_reason() {
        let specs = parse_junit(REPORT);
        assert_eq!(specs.len(), 3, "{specs:#?}");
        assert_eq!(specs[0].outcome, Outcome::Passed);
        assert!(specs[0].name.starts_with("[sig-network] Networking Granular Checks"));
        assert_eq!(specs[0].seconds, 27.6);
        assert_eq!(
            specs[1].outcome,
            Outcome::Failed("Told to stop trying after 60s.\nendpoints \"x\" not ready & more".into())
        );
        assert_eq!(specs[2].outcome, Outcome::Skipped("Only supported for providers [gce gke aws] (not local)".into()));
        assert_eq!(counts(&specs), Counts { passed: 1, failed: 1, skipped: 1 });
    }

    #[test]
    fn the_table_puts_failures_first_and_gives_every_skip_its_reason() {
        let t = table("sig-network conformance", &parse_junit(REPORT));
        assert!(t.starts_with("sig-network conformance: 1 passed, 1 failed, 1 skipped\n"), "{t}");
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| result")).collect();
        assert!(rows[0].starts_with("| **failed** | [sig-network] Services should serve"), "{t}");
        assert!(rows[0].ends_with("| Told to stop trying after 60s. |"), "{t}");
        assert!(
            rows[1].contains("| skipped |") && rows[1].contains("Only supported for providers [gce gke aws]"),
            "{t}"
        );
        assert!(rows[2].starts_with("| passed |"), "{t}");
    }

    #[test]
    fn leaf_tests_of_go_test_output() {
        let out = "=== RUN   TestConformance
    conformance_test.go:60: Running conformance tests with cleanup: true
=== RUN   TestConformance/CNPAdminTierEgressSCTP
    suite.go:178: Skipping CNPAdminTierEgressSCTP: suite does not support SCTP
=== RUN   TestConformance/CNPAdminTierEgressTCP
=== RUN   TestConformance/CNPAdminTierEgressTCP/Should_deny_traffic
    connectivity.go:51: Expected connection to be blocked, but it succeeded
--- FAIL: TestConformance (45.02s)
    --- SKIP: TestConformance/CNPAdminTierEgressSCTP (0.00s)
        suite.go:178: Skipping CNPAdminTierEgressSCTP: suite does not support SCTP
    --- FAIL: TestConformance/CNPAdminTierEgressTCP (40.10s)
        --- FAIL: TestConformance/CNPAdminTierEgressTCP/Should_deny_traffic (30.00s)
            connectivity.go:51: Expected connection to be blocked, but it succeeded
        --- PASS: TestConformance/CNPAdminTierEgressTCP/Should_allow_traffic (10.10s)
FAIL
";
        let specs = parse_go_test(out);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "TestConformance/CNPAdminTierEgressSCTP",
                "TestConformance/CNPAdminTierEgressTCP/Should_deny_traffic",
                "TestConformance/CNPAdminTierEgressTCP/Should_allow_traffic"
            ]
        );
        assert_eq!(
            specs[0].outcome,
            Outcome::Skipped("Skipping CNPAdminTierEgressSCTP: suite does not support SCTP".into())
        );
        assert_eq!(specs[1].outcome, Outcome::Failed("Expected connection to be blocked, but it succeeded".into()));
        assert_eq!((specs[2].outcome.clone(), specs[2].seconds), (Outcome::Passed, 10.1));
    }

    #[test]
    fn a_test_stopped_at_an_sctp_probe_is_told_apart_from_a_real_failure() {
        let out = "=== RUN   TestConformance/Gress/Should_allow
    helper.go:100: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.0.0.1:80]
    helper.go:100: FAILED Command was [/agnhost connect --timeout=3s --protocol=sctp 10.0.0.1:9003]
=== NAME  TestConformance
    helper.go:111: FAILED Command was [/agnhost connect --timeout=3s --protocol=sctp 10.0.0.1:9003]
=== NAME  TestConformance/Gress/Should_allow
    helper.go:74: Error: Should be true
=== RUN   TestConformance/Gress/Should_allow_at_port
    helper.go:100: FAILED Command was [/agnhost connect --timeout=3s --protocol=sctp 10.0.0.1:9003]
    helper.go:100: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.0.0.1:80]
=== RUN   TestConformance/Gress/Should_deny
    helper.go:107: FAILED Command was [/agnhost connect --timeout=3s --protocol=udp 10.0.0.1:53]
    helper.go:108: Expected connection to fail, but instead it successfully connected.
=== RUN   TestConformance/Gress/Should_pass
--- FAIL: TestConformance (45.02s)
    --- FAIL: TestConformance/Gress (40.10s)
        --- FAIL: TestConformance/Gress/Should_allow (10.00s)
        --- FAIL: TestConformance/Gress/Should_allow_at_port (10.00s)
        --- FAIL: TestConformance/Gress/Should_deny (10.00s)
        --- PASS: TestConformance/Gress/Should_pass (1.00s)
FAIL
";
        let mut specs = parse_go_test(out);
        assert_eq!(sctp_stops(out, &mut specs), 1);
        assert!(matches!(&specs[0].outcome, Outcome::Skipped(m) if m.contains("SCTP")), "{:?}", specs[0]);
        assert!(matches!(specs[1].outcome, Outcome::Failed(_)), "its last probe was TCP: {:?}", specs[1]);
        assert!(matches!(specs[2].outcome, Outcome::Failed(_)), "a UDP probe's failure stays: {:?}", specs[2]);
        assert_eq!(specs[3].outcome, Outcome::Passed);
    }

    #[test]
    fn unescapes_entities_and_character_references() {
        assert_eq!(unescape("a &amp; b &lt;c&gt; &quot;d&quot; &#39;e&#39; &#xA;"), "a & b <c> \"d\" 'e' \n");
        assert_eq!(unescape("AT&T & co"), "AT&T & co");
    }
}
