//! Reading what cyclonus (`cyclonus generate`, the generated NetworkPolicy cases) printed and summing it up:
//! every case with its tags and verdict, a table of passed/failed/total per tag, and the failing cases by
//! name. Pure: the runner (`tabby-conformance --suite cyclonus`) does the I/O.
//!
//! cyclonus lists its cases before it runs them (`test #N: <description>` and ` - tags: a, b`), then for each
//! case prints `starting test case #N`, one `<w> wrong, <i> ignored, <c> correct` line per step (pairs of
//! pods in the last probe try of that step: a pair is wrong when a probe between them, on any port and
//! protocol, differs from cyclonus' own simulation of the policies) and `finished policy #N`. A case passes when no step has a wrong probe. A case that started and
//! never finished stopped cyclonus (it exits on the first error setting up a case); the cases after it never
//! ran. Both count as failures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Tags left out of every run, each for something this lab cannot do, and why.
pub const EXCLUDED_TAGS: &[(&str, &str)] = &[(
    "sctp",
    "this machine's kernel has no SCTP: socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT, \
     so no pod can serve or connect over SCTP (the probe pods run TCP and UDP servers only)",
)];

/// Why the runner passes `--ignore-loopback`: a pod's traffic to itself.
pub const LOOPBACK_REASON: &str = "a probe from a pod to its own address never leaves the pod's network namespace \
     (the kernel delivers it on the pod's loopback), so no network plugin sees it, and Kubernetes documents that \
     pods cannot block localhost access; cyclonus' simulation expects policy on it. (By Service name the probe \
     hairpins through the node and Tabby does apply policy to it.) The pod's probes to the eight other pods count";

/// The pod pairs of one step (its last probe try).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub wrong: usize,
    pub ignored: usize,
    pub correct: usize,
}

/// What became of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// At least one step had pod pairs whose probes differ from the expected result.
    Failed,
    /// Started but never finished: cyclonus stopped (its reason is in its error output).
    Stopped,
    /// Listed but never started (cyclonus stopped earlier).
    NotRun,
}

/// One generated case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub number: usize,
    pub description: String,
    pub tags: Vec<String>,
    pub steps: Vec<Step>,
    pub verdict: Verdict,
}

impl Case {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Passed
    }

    /// Wrong pod pairs over all steps.
    pub fn wrong(&self) -> usize {
        self.steps.iter().map(|s| s.wrong).sum()
    }
}

/// The cases of cyclonus' standard output, in its order.
pub fn parse(stdout: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut index: BTreeMap<usize, usize> = BTreeMap::new();
    let mut current: Option<usize> = None;
    let mut finished: Vec<usize> = Vec::new();
    let mut started: Vec<usize> = Vec::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("test #") {
            if let Some((n, description)) = rest.split_once(": ")
                && let Ok(number) = n.parse::<usize>()
            {
                index.insert(number, cases.len());
                cases.push(Case {
                    number,
                    description: description.to_string(),
                    tags: Vec::new(),
                    steps: Vec::new(),
                    verdict: Verdict::NotRun,
                });
            }
        } else if let Some(tags) = line.strip_prefix(" - tags: ") {
            if let Some(case) = cases.last_mut() {
                case.tags = tags.split(", ").map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
            }
        } else if let Some(n) = line.strip_prefix("starting test case #") {
            current = n.trim().parse().ok().and_then(|n: usize| index.get(&n).copied());
            started.extend(current);
        } else if let Some(n) = line.strip_prefix("finished policy #") {
            finished.extend(n.trim().parse().ok().and_then(|n: usize| index.get(&n).copied()));
            current = None;
        } else if let Some(step) = step_counts(line)
            && let Some(i) = current
        {
            cases[i].steps.push(step);
        }
    }
    for i in started {
        cases[i].verdict = Verdict::Stopped;
    }
    for i in finished {
        let case = &mut cases[i];
        case.verdict = if case.wrong() == 0 && !case.steps.is_empty() { Verdict::Passed } else { Verdict::Failed };
    }
    cases
}

/// `[Discrepancy found:]<w> wrong, <i> ignored, <c> correct`.
fn step_counts(line: &str) -> Option<Step> {
    let line = line.strip_prefix("Discrepancy found:").unwrap_or(line).trim();
    let mut words = line.split(' ');
    let mut number = |label: &str| {
        let n = words.next()?.parse().ok()?;
        (words.next()?.trim_end_matches(',') == label).then_some(n)
    };
    let step = Step { wrong: number("wrong")?, ignored: number("ignored")?, correct: number("correct")? };
    words.next().is_none().then_some(step)
}

/// The fatal error cyclonus stopped with (logrus' `level=fatal msg="…"` on its error output), if any.
pub fn fatal(stderr: &str) -> Option<String> {
    let line = stderr.lines().rev().find(|l| l.contains("level=fatal"))?;
    let msg = line.split_once("msg=").map(|(_, m)| m).unwrap_or(line);
    let msg = msg.trim();
    let msg = msg.strip_prefix('"').and_then(|m| m.strip_suffix('"')).unwrap_or(msg);
    Some(msg.replace("\\n", " ").replace("\\\"", "\""))
}

/// Whether cyclonus stopped on a write that lost a race (a get then an update of a whole Pod or
/// Namespace, without retrying on a conflict): running it again on the same lab goes on (it reuses the
/// probe pods it finds).
pub fn retryable(fatal: &str) -> bool {
    fatal.contains("the object has been modified")
}

/// The cases of several runs of the same case list on one lab, each case as the latest run that reached a
/// verdict on it saw it (a rerun repeats the cases before the stop, then goes further).
pub fn merge(runs: &[Vec<Case>]) -> Vec<Case> {
    let Some(last) = runs.last() else { return vec![] };
    last.iter()
        .map(|case| {
            runs.iter()
                .rev()
                .filter_map(|r| r.iter().find(|c| c.number == case.number))
                .find(|c| matches!(c.verdict, Verdict::Passed | Verdict::Failed))
                .unwrap_or(case)
                .clone()
        })
        .collect()
}

/// Counts of a run: passed and failed cases (stopped and never run count as failed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
}

pub fn counts(cases: &[Case]) -> Counts {
    let passed = cases.iter().filter(|c| c.passed()).count();
    Counts { passed, failed: cases.len() - passed }
}

/// Passed and total cases per tag, tags by name.
pub fn by_tag(cases: &[Case]) -> BTreeMap<&str, (usize, usize)> {
    let mut tags: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for case in cases {
        for tag in &case.tags {
            let entry = tags.entry(tag.as_str()).or_default();
            entry.0 += usize::from(case.passed());
            entry.1 += 1;
        }
    }
    tags
}

/// The Markdown summary: the counts, a row per tag, the failing cases by number and name with what went
/// wrong, and `excluded` (what was left out, with why).
pub fn summary(title: &str, cases: &[Case], stopped_reason: Option<&str>, excluded: &[(String, String)]) -> String {
    let mut out = String::new();
    let c = counts(cases);
    let _ = writeln!(out, "{title}: {} of {} cases passed, {} failed\n", c.passed, cases.len(), c.failed);
    let _ = writeln!(out, "| tag | passed | failed | total |");
    let _ = writeln!(out, "|---|---|---|---|");
    for (tag, (passed, total)) in by_tag(cases) {
        let failed = total - passed;
        let failed = if failed > 0 { format!("**{failed}**") } else { "0".into() };
        let _ = writeln!(out, "| {tag} | {passed} | {failed} | {total} |");
    }
    let failing: Vec<&Case> = cases.iter().filter(|c| !c.passed()).collect();
    if !failing.is_empty() {
        let _ = writeln!(out, "\nFailing cases:\n");
        let _ = writeln!(out, "| # | case | tags | what |");
        let _ = writeln!(out, "|---|---|---|---|");
        for case in failing {
            let what = match case.verdict {
                Verdict::Failed => {
                    let steps: Vec<String> = case
                        .steps
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.wrong > 0)
                        .map(|(i, s)| format!("step {}: {} of {} pod pairs wrong", i + 1, s.wrong, s.wrong + s.correct))
                        .collect();
                    steps.join("; ")
                }
                Verdict::Stopped => format!("cyclonus stopped here: {}", stopped_reason.unwrap_or("see its log")),
                Verdict::NotRun => "not run (cyclonus stopped before it)".into(),
                Verdict::Passed => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                case.number,
                cell(&case.description),
                case.tags.join(", "),
                cell(&what)
            );
        }
    }
    if !excluded.is_empty() {
        let _ = writeln!(out, "\nLeft out:\n");
        for (what, why) in excluded {
            let _ = writeln!(out, "- {what}: {why}");
        }
    }
    out
}

fn cell(s: &str) -> String {
    let s = s.replace('|', "\\|").replace('\n', " ");
    if s.chars().count() > 200 { format!("{}…", s.chars().take(200).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of `cyclonus generate` v0.5.6 output, cut down: three cases listed, the first passes in one
    // step, the second fails its second step, the third starts and cyclonus stops.
    const OUTPUT: &str = "args: 
{\"Include\":null}
test cases to run by tag:
- egress: 2
testing 4 cases

test #1: egress: deny all
 - tags: deny-all, direction, egress, rule
test #2: update policy: allow all → deny all | x
 - tags: action, update-policy
test #3: set pod labels
 - tags: action, set-pod-labels
test #4: ingress: allow all
 - tags: allow-all, direction, ingress, rule
starting test case #1
evaluating test case: egress: deny all
step 1 on all available ports/protocols:
Policy explanation:
some table
0 wrong, 9 ignored, 72 correct
+--------+
| x/a    |
finished policy #1
starting test case #2
evaluating test case: update policy: allow all → deny all | x
step 1 on port 80, protocol TCP:
0 wrong, 0 ignored, 81 correct
step 2 on port 80, protocol TCP:
Discrepancy found:3 wrong, 0 ignored, 78 correct
Expected ingress:
finished policy #2
starting test case #3
";

    #[test]
    fn a_rerun_after_a_conflict_completes_the_cases() {
        let case = |n, verdict| Case { number: n, description: format!("c{n}"), tags: vec![], steps: vec![], verdict };
        let first = vec![
            case(1, Verdict::Passed),
            case(2, Verdict::Failed),
            case(3, Verdict::Stopped),
            case(4, Verdict::NotRun),
        ];
        let second = vec![
            case(1, Verdict::Passed),
            case(2, Verdict::Passed),
            case(3, Verdict::Passed),
            case(4, Verdict::Stopped),
        ];
        let verdicts: Vec<Verdict> = merge(&[first.clone(), second]).into_iter().map(|c| c.verdict).collect();
        assert_eq!(verdicts, [Verdict::Passed, Verdict::Passed, Verdict::Passed, Verdict::Stopped]);
        // A rerun that stopped earlier keeps the first run's verdicts past its stop.
        let short = vec![
            case(1, Verdict::Stopped),
            case(2, Verdict::NotRun),
            case(3, Verdict::NotRun),
            case(4, Verdict::NotRun),
        ];
        let verdicts: Vec<Verdict> = merge(&[first, short]).into_iter().map(|c| c.verdict).collect();
        assert_eq!(verdicts, [Verdict::Passed, Verdict::Failed, Verdict::NotRun, Verdict::NotRun]);
        assert!(retryable(
            "unable to update pod y/a: Operation cannot be fulfilled on pods \"a\": the object has been modified; please apply your changes to the latest version and try again"
        ));
        assert!(!retryable("pods not ready"));
    }

    #[test]
    fn every_listed_case_with_its_tags_steps_and_verdict() {
        let cases = parse(OUTPUT);
        assert_eq!(cases.len(), 4);
        assert_eq!(cases[0].description, "egress: deny all");
        assert_eq!(cases[0].tags, ["deny-all", "direction", "egress", "rule"]);
        assert_eq!(cases[0].steps, [Step { wrong: 0, ignored: 9, correct: 72 }]);
        assert_eq!(cases[0].verdict, Verdict::Passed);
        assert_eq!(cases[1].description, "update policy: allow all → deny all | x");
        assert_eq!(cases[1].steps.len(), 2);
        assert_eq!(cases[1].verdict, Verdict::Failed);
        assert_eq!(cases[1].wrong(), 3);
        assert_eq!(cases[2].verdict, Verdict::Stopped);
        assert_eq!(cases[3].verdict, Verdict::NotRun);
        assert_eq!(counts(&cases), Counts { passed: 1, failed: 3 });
    }

    #[test]
    fn a_finished_case_without_a_step_line_is_not_a_pass() {
        let cases = parse("test #1: a\n - tags: x\nstarting test case #1\nfinished policy #1\n");
        assert_eq!(cases[0].verdict, Verdict::Failed);
    }

    #[test]
    fn step_lines_and_nothing_else() {
        assert_eq!(step_counts("12 wrong, 0 ignored, 69 correct"), Some(Step { wrong: 12, ignored: 0, correct: 69 }));
        assert_eq!(step_counts("Discrepancy found:1 wrong, 2 ignored, 3 correct").map(|s| s.ignored), Some(2));
        assert_eq!(step_counts("| x/a | 1 wrong, 2 ignored, 3 correct |"), None);
        assert_eq!(step_counts("1 wrong, 2 ignored, 3 correct and more"), None);
        assert_eq!(step_counts("no network policies"), None);
    }

    #[test]
    fn per_tag_counts_and_the_failing_cases_by_name() {
        let cases = parse(OUTPUT);
        let tags = by_tag(&cases);
        assert_eq!(tags["action"], (0, 2));
        assert_eq!(tags["egress"], (1, 1));
        let excluded = [("tag `sctp`".to_string(), "no SCTP".to_string())];
        let s = summary("cyclonus", &cases, Some("pods not ready"), &excluded);
        assert!(s.starts_with("cyclonus: 1 of 4 cases passed, 3 failed\n"), "{s}");
        assert!(s.contains("| action | 0 | **2** | 2 |"), "{s}");
        assert!(s.contains("| egress | 1 | 0 | 1 |"), "{s}");
        assert!(
            s.contains("| 2 | update policy: allow all → deny all \\| x | action, update-policy | step 2: 3 of 81 pod pairs wrong |"),
            "{s}"
        );
        assert!(
            s.contains("| 3 | set pod labels | action, set-pod-labels | cyclonus stopped here: pods not ready |"),
            "{s}"
        );
        assert!(s.contains("| 4 | ingress: allow all |") && s.contains("not run (cyclonus stopped before it)"), "{s}");
        assert!(!s.contains("| 1 | egress: deny all"), "{s}");
        assert!(s.ends_with("- tag `sctp`: no SCTP\n"), "{s}");
    }

    #[test]
    fn the_fatal_message_of_the_error_output() {
        let stderr = "time=\"2026-12-06T08:34:04Z\" level=info msg=\"cluster state verified\"\n\
                      time=\"2026-12-06T08:35:04Z\" level=fatal msg=\"unable to create pod x/a:\\n \\\"timeout\\\"\"\n";
        assert_eq!(fatal(stderr).as_deref(), Some("unable to create pod x/a:  \"timeout\""));
        assert_eq!(fatal("level=info msg=ok\n"), None);
    }
}
