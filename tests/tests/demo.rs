//! The README's demo, run to its summary: every reading made by the
//! simulated instruments is stored, delivered through an outage and
//! verified by the platform, none lost (issue 10, acceptance 5).

use kouan_tests::{kouan, text};

/// The number on the summary line that starts with `label`.
fn figure(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .skip_while(|l| *l != "summary")
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no summary line {label:?}:\n{stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number on {line:?}"))
}

#[test]
fn demo_runs_through_an_outage_to_a_summary_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    // 20 s of readings with the link cut from 6 s to 12 s.
    let out = kouan()
        .args([
            "demo",
            "--duration",
            "20",
            "--outage-at",
            "6",
            "--outage-secs",
            "6",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("kouan demo runs");
    let stdout = text(&out.stdout);
    let logs = ["agent.log", "platform.log", "broker.log"]
        .map(|log| {
            let body = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
            format!("--- {log}\n{body}")
        })
        .join("\n");
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{}\n{logs}",
        out.status,
        text(&out.stderr)
    );

    let made = figure(&stdout, "readings made");
    let stored = figure(&stdout, "stored");
    let delivered = figure(&stdout, "delivered");
    let verified = figure(&stdout, "verified");
    assert!(made > 0, "{stdout}");
    assert_eq!(figure(&stdout, "lost"), 0, "{stdout}");
    assert!(stored >= made, "{stdout}");
    assert!(delivered >= made, "{stdout}");
    assert!(verified >= made, "{stdout}");
    assert!(stdout.contains("ok: every reading was signed"), "{stdout}");

    // The outage happened while the instruments kept reporting, and the
    // readings held then were verified after it.
    assert!(stdout.contains("--- outage"), "{stdout}");
    assert!(stdout.contains("(held: link down)"), "{stdout}");
    assert!(stdout.contains("--- link restored"), "{stdout}");
    for instrument in ["balance-1", "scanner-1", "analyzer-1", "node-1"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("verified") && l.contains(instrument)),
            "no verified reading of {instrument}:\n{stdout}"
        );
    }
}

#[test]
fn demo_refuses_a_zero_duration() {
    let out = kouan().args(["demo", "--duration", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--duration must be at least 1 second"),
        "{}",
        text(&out.stderr)
    );
}
