//! Benchmark: the agent's resident memory with ten records in the store
//! and with a million, which the store issue wants to be the same.
//!
//! ```sh
//! cargo bench -p kouan-agent --bench memory
//! ```
//!
//! Three stores are filled with real signed readings: ten records, a
//! hundred thousand and a million (the middle one tells a cache that fills
//! up from growth). Each is a genesis record written by the real
//! [`Writer`], then readings signed by `record::sign` and chained by hash,
//! appended through [`Store::append`] in large transactions (fast, and the
//! same bytes the writer would store). Then the real `kouan` binary runs as a child process
//! against each store for the operations whose work grows with the backlog:
//!
//! - `kouan store stats`, which opens the store read-only;
//! - `kouan store export`, which pages through every record;
//! - `kouan debug append --count 1000`, which opens the store for writing
//!   (checking every record's hash and link on the way) and appends through
//!   the writer.
//!
//! The figure is the child's peak resident set size (`ru_maxrss`, KiB),
//! read by `wait4(2)` for that child alone (`getrusage(RUSAGE_CHILDREN)`
//! would report the largest child so far and hide a smaller later one), in
//! a small helper process that this executable becomes (see
//! [`measure_child`] for why). Each operation runs three times per store
//! and the median is reported; `kouan --version` gives the floor.
//!
//! Last, in this process, each store is opened with [`Store::open`] and a
//! few thousand readings are appended through the writer, to show whether
//! opening and appending slow down with the backlog. The tables are
//! printed and written into the generated block of `docs/performance.md`.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use kouan_agent::keys::{self, Algorithm, SigningKey};
use kouan_agent::store::{Opened, Store};
use kouan_agent::writer::{Writer, WriterConfig};

use common::Drive;

/// Records in the stores compared: the issue's ten and million, and one
/// between, to tell a bounded cache filling up from growth with the backlog.
const SIZES: [u64; 3] = [10, 100_000, 1_000_000];

/// Records per transaction while filling: large, so that the fill costs
/// signing time, not fsyncs.
const FILL_BATCH: usize = 20_000;

/// Runs of each operation per store; the table gives their median.
const ROUNDS: usize = 3;

/// Readings each `kouan debug append` run adds.
const APPEND_COUNT: u64 = 1000;

/// Readings appended in process to each store, to see whether the append
/// rate depends on the backlog.
const BACKLOG_APPENDS: u64 = 2000;

/// Appends in flight for those.
const BACKLOG_IN_FLIGHT: usize = 64;

/// Set in the environment when this executable runs as its own measuring
/// helper (see [`measure_child`]).
const HELPER: &str = "KOUAN_BENCH_MEASURE_CHILD";

/// The real binary, built by cargo for this benchmark.
const KOUAN: &str = env!("CARGO_BIN_EXE_kouan");

/// One child run: its peak resident memory and how long it took.
#[derive(Clone, Copy)]
struct Run {
    max_rss_kib: f64,
    seconds: f64,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    if std::env::var_os(HELPER).is_some() {
        return measure_child();
    }
    let dir = common::scratch_dir()?;
    let load_before = common::load_average();
    let key_path = dir.path().join("agent.key");
    keys::write_private_key(&key_path, &keys::generate(Algorithm::Ed25519)?)?;
    let key_path_str = path_str(&key_path)?;

    let mut stores = Vec::with_capacity(SIZES.len());
    let mut fills = Vec::with_capacity(SIZES.len());
    for size in SIZES {
        let path = dir.path().join(format!("store-{size}.db"));
        eprintln!("filling {} with {size} records", path.display());
        let took = fill(&path, &key_path, size)?;
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        eprintln!("filled in {:.1} s", took.as_secs_f64());
        stores.push(path);
        fills.push((took, bytes));
    }
    let largest = stores.len() - 1;

    // Rows of the table: what runs, and its runs against each store.
    let operations = ["--version", "store stats", "store export", "debug append"];
    let mut runs = vec![vec![Vec::<Run>::new(); SIZES.len()]; operations.len()];
    for round in 1..=ROUNDS {
        eprintln!("round {round} of {ROUNDS}");
        for (s, store) in stores.iter().enumerate() {
            let store_str = path_str(store)?;
            // What any kouan process costs, store or not: the floor.
            runs[0][s].push(kouan(&["--version"], dir.path())?);
            let args = ["store", "stats", "--store", store_str];
            runs[1][s].push(kouan(&args, dir.path())?);

            let out = dir.path().join("export.cbor");
            let out_str = path_str(&out)?;
            let args = ["store", "export", "--store", store_str, "--out", out_str];
            runs[2][s].push(kouan(&args, dir.path())?);
            std::fs::remove_file(&out).with_context(|| format!("removing {}", out.display()))?;

            // Smaller stores are copied first so that every run appends to
            // the same backlog; the largest grows by a negligible 0.1 % a run.
            let target = if s == largest {
                store.clone()
            } else {
                copy_store(store, &format!("append-{round}"))?
            };
            let count = APPEND_COUNT.to_string();
            let args = [
                "debug",
                "append",
                "--store",
                path_str(&target)?,
                "--key",
                key_path_str,
                "--count",
                &count,
            ];
            runs[3][s].push(kouan(&args, dir.path())?);
        }
    }

    // In process, with no child: how long the check on open takes and how
    // fast the writer appends with each backlog behind it.
    eprintln!("appending in process to each store");
    let mut backlog = Vec::with_capacity(SIZES.len());
    for (s, store) in stores.iter().enumerate() {
        let target = if s == largest {
            store.clone()
        } else {
            copy_store(store, "rate")?
        };
        backlog.push(append_with_backlog(&target, &key_path)?);
    }

    let sizes: Vec<String> = SIZES.iter().map(|&n| common::grouped(n as f64)).collect();
    let (first, last) = (&sizes[0], &sizes[largest]);
    let mut figures = format!(
        "Generated by `cargo bench -p kouan-agent --bench memory`; median of {ROUNDS} runs.\n\n\
         {}\
         - load average (1, 5, 15 min): {load_before} before the run, {} after\n",
        common::machine_facts(dir.path()),
        common::load_average(),
    );
    for (size, (took, bytes)) in sizes.iter().zip(&fills) {
        figures += &format!(
            "- fill of the {size}-record store: {:.1} s, {:.1} MiB database\n",
            took.as_secs_f64(),
            *bytes as f64 / f64::from(1 << 20),
        );
    }
    figures += "\n| `kouan …` |";
    for size in &sizes {
        figures += &format!(" peak RSS, {size} records |");
    }
    figures += &format!(
        " {last} ÷ {first} | time, {first} | time, {last} |\n| --- |{}\n",
        " ---: |".repeat(SIZES.len() + 3)
    );
    let rss =
        |runs: &[Run]| common::median(&runs.iter().map(|r| r.max_rss_kib).collect::<Vec<_>>());
    let secs = |runs: &[Run]| common::median(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>());
    for (operation, per_size) in operations.iter().zip(&runs) {
        figures += &format!("| {operation} |");
        for runs in per_size {
            figures += &format!(" {} KiB |", common::grouped(rss(runs)));
        }
        figures += &format!(
            " {:.2} | {:.2} s | {:.2} s |\n",
            rss(&per_size[largest]) / rss(&per_size[0]),
            secs(&per_size[0]),
            secs(&per_size[largest]),
        );
    }
    figures += &format!(
        "\n`debug append` adds {APPEND_COUNT} readings with 64 in flight after opening \
         the store.\n\n\
         In process, each store opened with `Store::open` (which checks every \
         record), then {BACKLOG_APPENDS} readings appended through the writer, \
         {BACKLOG_IN_FLIGHT} in flight, once per store:\n\n\
         | store holds | open and check | appended, records/s | last {} appended, records/s |\n\
         | --- | ---: | ---: | ---: |\n",
        BACKLOG_APPENDS / 4,
    );
    for (size, (open, drive)) in sizes.iter().zip(&backlog) {
        figures += &format!(
            "| {size} records | {:.2} s | {} | {} |\n",
            open.as_secs_f64(),
            common::grouped(drive.rate),
            common::grouped(drive.last_rate),
        );
    }

    println!("{figures}");
    match common::write_figures("memory", &figures) {
        Ok(path) => eprintln!("figures written to {}", path.display()),
        Err(error) => eprintln!("{error:#}"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Copies a closed store's database file beside it, named with `tag`.
fn copy_store(store: &Path, tag: &str) -> anyhow::Result<std::path::PathBuf> {
    let copy = store.with_extension(format!("{tag}.db"));
    std::fs::copy(store, &copy).with_context(|| format!("copying {}", store.display()))?;
    Ok(copy)
}

/// Creates a store of `records` records at `path`: the genesis by the real
/// writer, then chained readings in large transactions. Returns the time taken.
fn fill(path: &Path, key_path: &Path, records: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let key = SigningKey::load(key_path)?;
    let public = key.public_key().clone();
    let store = Store::create(path)?;
    let config = WriterConfig::new(common::NODE, common::SITE);
    let (writer, thread) = Writer::start(store, &Opened::Created, key, config)?;
    drop(writer);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;

    let key = SigningKey::load(key_path)?;
    let mut store = Store::open(path, &[public])?;
    let head = store
        .head()
        .with_context(|| format!("{} has no genesis record", path.display()))?;
    let mut prev = head.hash;
    let mut batch = Vec::with_capacity(FILL_BATCH);
    for seq in head.seq + 1..records {
        let record = common::sign_entry(common::reading(seq)?, head.stream, seq, prev, &key)?;
        prev = record.hash;
        batch.push(record);
        if batch.len() == FILL_BATCH || seq + 1 == records {
            store.append(&batch, head.stream, None)?;
            batch.clear();
        }
    }
    Ok(start.elapsed())
}

/// Opens the store at `path` (timing the check of every record), then
/// appends [`BACKLOG_APPENDS`] readings through the writer.
fn append_with_backlog(path: &Path, key_path: &Path) -> anyhow::Result<(Duration, Drive)> {
    let key = SigningKey::load(key_path)?;
    let public = key.public_key().clone();
    let start = Instant::now();
    let store = Store::open(path, &[public])?;
    let open = start.elapsed();

    let config = WriterConfig::new(common::NODE, common::SITE);
    let (writer, thread) = Writer::start(store, &Opened::Existing, key, config)?;
    let drive = common::drive(
        &writer,
        BACKLOG_IN_FLIGHT,
        BACKLOG_APPENDS,
        BACKLOG_APPENDS / 4,
    )?;
    drop(writer);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    Ok((open, drive))
}

/// Runs `kouan ARGS` to completion under the measuring helper (see
/// [`measure_child`]); fails with kouan's stderr if it fails.
fn kouan(args: &[&str], dir: &Path) -> anyhow::Result<Run> {
    let log = dir.join("kouan.stderr");
    let stderr =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let this = std::env::current_exe().context("finding this benchmark's executable")?;
    let start = Instant::now();
    let helper = Command::new(this)
        .env(HELPER, "1")
        .arg(KOUAN)
        .args(["--log", "warn"])
        .args(args)
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .with_context(|| format!("running kouan {}", args.join(" ")))?;
    let seconds = start.elapsed().as_secs_f64();

    if !helper.status.success() {
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        anyhow::bail!(
            "kouan {} failed ({}): {output}",
            args.join(" "),
            helper.status
        );
    }
    let stdout = String::from_utf8_lossy(&helper.stdout);
    let max_rss_kib = stdout
        .trim()
        .parse()
        .with_context(|| format!("the helper printed {stdout:?}, not a size in KiB"))?;
    Ok(Run {
        max_rss_kib,
        seconds,
    })
}

/// The helper side of [`kouan`]: runs the command line it was given and
/// prints that child's peak resident set size in KiB; exits as it did.
///
/// The helper exists because Linux carries the peak RSS of the address
/// space a process leaves at `execve` into its own `ru_maxrss`. A child
/// spawned straight from this benchmark, which holds tens of MiB after
/// filling a store, would report at least that much whatever kouan itself
/// used. The helper is small when it spawns kouan, so kouan's figure is
/// kouan's own (plus at most the helper's few MiB, visible in the
/// `--version` row).
fn measure_child() -> anyhow::Result<std::process::ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let program = args.next().context("the helper needs a command line")?;
    let child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let (status, max_rss_kib) = wait_with_max_rss(child.id())?;
    println!("{max_rss_kib}");
    let code = status.code().unwrap_or(1);
    Ok(std::process::ExitCode::from(
        u8::try_from(code).unwrap_or(1),
    ))
}

/// Reaps the child `pid` and returns its exit status and its own peak
/// resident set size in KiB.
#[allow(unsafe_code)]
fn wait_with_max_rss(pid: u32) -> anyhow::Result<(ExitStatus, i64)> {
    use std::os::unix::process::ExitStatusExt as _;

    let pid = libc::pid_t::try_from(pid).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: rusage is plain integers, so all-zero is a valid value;
        // wait4 writes only into `status` and `usage`, which live on this
        // stack frame for the whole call, and reaps only our own child.
        let (got, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let got = libc::wait4(pid, &mut status, 0, &mut usage);
            (got, usage)
        };
        if got == pid {
            // Linux reports ru_maxrss in KiB.
            return Ok((ExitStatus::from_raw(status), usage.ru_maxrss));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error.into());
        }
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
