//! What the benchmarks share: facts about the machine they ran on, small
//! statistics, and the generated blocks of `docs/performance.md` they
//! rewrite.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

/// Facts about the run that the figures depend on, as Markdown list items.
pub fn machine_facts() -> String {
    let cpu = read_text(Path::new("/proc/cpuinfo"))
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".into(), |m| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = read_text(Path::new("/proc/sys/kernel/osrelease"));
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = command_output("git", &["status", "--porcelain", "--", "agent/src"]);
    let source = if dirty == "unknown" || dirty.is_empty() {
        format!("commit {commit}")
    } else {
        format!("commit {commit} with uncommitted changes in agent/src")
    };
    format!(
        "- run: {} UTC, kouan {source}, release profile (thin LTO)\n\
         - machine: {cores} cores ({cpu}), Linux {}\n",
        kouan_agent::store::utc_stamp(kouan_agent::clock::unix_ms()),
        kernel.trim()
    )
}

/// `/proc/loadavg`'s three averages, to tell a quiet run from a busy one.
pub fn load_average() -> String {
    read_text(Path::new("/proc/loadavg"))
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(
            || "unknown".into(),
            |out| String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
}

pub fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last lines of a log, for an error message.
pub fn tail(path: &Path) -> String {
    let text = read_text(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.join(".."), Path::to_path_buf)
}

/// The median of a few measurements (the middle one of three).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `min–max` of a few rates, for the spread column.
pub fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", grouped(min), grouped(max))
}

/// A whole number with thousands separators: `12,345`.
pub fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Replaces the generated block `name` of `docs/performance.md`: everything
/// between its begin and end comments. The prose around it is left alone.
pub fn write_figures(name: &str, figures: &str) -> anyhow::Result<PathBuf> {
    let path = workspace_root().join("docs").join("performance.md");
    let begin = format!("<!-- begin figures: {name} -->");
    let end = format!("<!-- end figures: {name} -->");
    let doc =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(start), Some(stop)) = (doc.find(&begin), doc.find(&end)) else {
        bail!(
            "{} has no `{begin}` … `{end}` block; figures not written",
            path.display()
        );
    };
    ensure!(
        start < stop,
        "{}: `{end}` comes before `{begin}`",
        path.display()
    );
    let head = &doc[..start + begin.len()];
    let tail = &doc[stop..];
    // Blank lines around the block keep a table from running into the comment.
    let updated = format!("{head}\n\n{}\n\n{tail}", figures.trim());
    std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
