//! What the store and memory benchmarks share: the reading they record,
//! the temporary directory they work in, the facts about the machine they
//! ran on, and the generated part of `docs/performance.md` they rewrite.

// Each benchmark uses only part of this module.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_bytes::ByteBuf;

use kouan_agent::clock;
use kouan_agent::keys::SigningKey;
use kouan_agent::record::{self, HASH_LEN, Payload, SCHEMA_VERSION, STREAM_ID_LEN};
use kouan_agent::store::{self, NewRecord};
use kouan_agent::writer::{Entry, Writer};

/// The agent id in every benchmark record (as long as a real one).
pub const NODE: &str = "gy-air-01";

/// The monitoring point in every benchmark record.
pub const SITE: &str = "guiyang-airport";

/// Bytes of raw instrument data per reading: one balance line, as the
/// `kouan debug append` readings carry by default.
const RAW_LEN: usize = 32;

/// Reading number `n`: the synthetic balance reading the agent itself uses
/// for `kouan debug append` and `kouan run --simulate-readings`.
pub fn reading(n: u64) -> anyhow::Result<Entry> {
    Ok(kouan_agent::run::synthetic_reading(n, RAW_LEN)?)
}

/// Signs an entry as record `seq` of `stream` after `prev`, the way the
/// writer thread does, ready for [`store::Store::append`].
pub fn sign_entry(
    entry: Entry,
    stream: [u8; STREAM_ID_LEN],
    seq: u64,
    prev: [u8; HASH_LEN],
    key: &SigningKey,
) -> anyhow::Result<NewRecord> {
    let payload = Payload {
        v: SCHEMA_VERSION,
        node: NODE.into(),
        site: SITE.into(),
        instrument: entry.instrument.clone(),
        kind: entry.kind,
        stream: ByteBuf::from(stream.to_vec()),
        seq,
        prev: ByteBuf::from(prev.to_vec()),
        time: entry.time,
        body: entry.body,
    };
    let bytes = record::sign(&payload, key)?;
    Ok(NewRecord {
        seq,
        kind: entry.kind,
        instrument: entry.instrument,
        captured_ms: entry.time.ms,
        hash: record::hash(&bytes),
        bytes,
    })
}

/// How a run of appends went: overall, and at its start and its end.
#[derive(Debug, Clone, Copy)]
pub struct Drive {
    /// From the first append to the last durable one.
    pub elapsed: Duration,
    /// Readings per second, overall.
    pub rate: f64,
    /// Readings per second over the first `window` to become durable.
    pub first_rate: f64,
    /// Readings per second over the last `window` to become durable.
    pub last_rate: f64,
}

/// Appends `count` readings through `writer` from `in_flight` tokio tasks,
/// each awaiting its own append before the next, like instruments waiting
/// for their acknowledgement; returns once all are durable.
pub fn drive(writer: &Writer, in_flight: usize, count: u64, window: u64) -> anyhow::Result<Drive> {
    // Two workers, like the agent's runtime: producers share the two cores
    // with the writer thread, as drivers and the uplink will.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let window = window.clamp(1, count.max(1));
    let next = Arc::new(AtomicU64::new(0));
    let durable = Arc::new(AtomicU64::new(0));
    let first_done = Arc::new(OnceLock::new());
    let last_begins = Arc::new(OnceLock::new());

    let start = Instant::now();
    runtime.block_on(async {
        let mut producers = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let writer = writer.clone();
            let (next, durable) = (Arc::clone(&next), Arc::clone(&durable));
            let (first_done, last_begins) = (Arc::clone(&first_done), Arc::clone(&last_begins));
            producers.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return anyhow::Ok(());
                    }
                    writer.append(reading(n)?).await?;
                    let done = durable.fetch_add(1, Ordering::Relaxed) + 1;
                    if done == window {
                        let _ = first_done.set(Instant::now());
                    }
                    if done == count - window {
                        let _ = last_begins.set(Instant::now());
                    }
                }
            });
        }
        while let Some(done) = producers.join_next().await {
            done.context("a producer task failed")??;
        }
        anyhow::Ok(())
    })?;
    let end = Instant::now();

    let per_second = |n: u64, from: Instant, to: Instant| {
        n as f64 / to.saturating_duration_since(from).as_secs_f64()
    };
    let first_done = first_done.get().copied().unwrap_or(end);
    let last_begins = last_begins.get().copied().unwrap_or(start);
    Ok(Drive {
        elapsed: end - start,
        rate: per_second(count, start, end),
        first_rate: per_second(window, start, first_done),
        last_rate: per_second(window, last_begins, end),
    })
}

/// A fresh directory under the workspace's `target/`, on the same
/// filesystem as the repository, removed when dropped.
pub fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let target = workspace_root().join("target");
    fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    tempfile::Builder::new()
        .prefix("kouan-bench-")
        .tempdir_in(&target)
        .with_context(|| format!("creating a scratch directory in {}", target.display()))
}

fn workspace_root() -> PathBuf {
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

/// Facts about the run that the figures depend on, as Markdown list items.
pub fn machine_facts(dir: &Path) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = read_trimmed("/proc/sys/kernel/osrelease");
    let (fs_type, mount) = filesystem_of(dir);
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = command_output("git", &["status", "--porcelain", "--", "agent/src"]);
    let source = if dirty == "unknown" || dirty.is_empty() {
        format!("commit {commit}")
    } else {
        format!("commit {commit} with uncommitted changes in agent/src")
    };
    format!(
        "- run: {} UTC, kouan {source}, release profile (thin LTO)\n\
         - machine: {cores} cores ({cpu}), Linux {kernel}\n\
         - scratch files: {fs_type} filesystem mounted at `{mount}`, the repository's own disk\n",
        store::utc_stamp(clock::unix_ms()),
    )
}

/// `/proc/loadavg`'s three averages, to tell a quiet run from a busy one.
pub fn load_average() -> String {
    read_trimmed("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

fn command_output(program: &str, args: &[&str]) -> String {
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

/// Filesystem type and mount point of `dir`, from `df -PT`.
fn filesystem_of(dir: &Path) -> (String, String) {
    let out = Command::new("df").arg("-PT").arg(dir).output();
    let text = out
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let fields: Vec<&str> = text
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    match (fields.get(1), fields.last()) {
        (Some(kind), Some(mount)) if fields.len() >= 7 => ((*kind).into(), (*mount).into()),
        _ => ("unknown".into(), "unknown".into()),
    }
}

/// Replaces the generated block named `name` in `docs/performance.md`:
/// everything between its begin and end comments. The prose around it is
/// written by hand and left alone.
pub fn write_figures(name: &str, figures: &str) -> anyhow::Result<PathBuf> {
    let path = workspace_root().join("docs").join("performance.md");
    let begin = format!("<!-- begin figures: {name} -->");
    let end = format!("<!-- end figures: {name} -->");
    let doc = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(start), Some(stop)) = (doc.find(&begin), doc.find(&end)) else {
        bail!(
            "{} has no `{begin}` … `{end}` block; figures not written",
            path.display()
        );
    };
    if stop < start {
        bail!("{}: `{end}` comes before `{begin}`", path.display());
    }
    let head = &doc[..start + begin.len()];
    let tail = &doc[stop..];
    // Blank lines around the block keep a table from running into the comment.
    let updated = format!("{head}\n\n{}\n\n{tail}", figures.trim());
    fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
