//! Benchmark: durable signed records per second, next to the two limits
//! that bound it, all measured in the same run on the same disk.
//!
//! ```sh
//! cargo bench -p kouan-agent --bench store
//! ```
//!
//! Each of three rounds measures, one after the other:
//!
//! 1. **raw group commit**: batches of byte records as long as a signed
//!    reading, appended to a plain file with one `fdatasync` per batch, for
//!    batches of 1, 16, 64 and 256 records. This is what the disk allows
//!    before any database or signature.
//! 2. **signing alone**: Ed25519 over the exact bytes a reading's
//!    COSE_Sign1 signs, one after the other; then the writer's whole
//!    per-record work (CBOR, COSE, Ed25519, SHA-256). Each record's `prev`
//!    covers the one before, so signing cannot be spread over cores.
//! 3. **kouan**: [`Writer::append`] from 64 and then 256 concurrent tokio
//!    tasks into a fresh [`Store`], until [`KOUAN_RECORDS`] are durable;
//!    the rates over the first and the last [`WINDOW`] readings are shown
//!    too, since a rate that falls as the store fills is a finding.
//!
//! The rounds are interleaved so that a noisy neighbour slows all three
//! alike. The table shows the median of the rounds; each ratio is taken
//! within a round, then the median of those. The table is printed and
//! written into the generated block of `docs/performance.md`; the prose
//! there is written by hand. This is not a test: nothing fails on a time,
//! and the goal is reported, not enforced.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use kouan_agent::keys::{self, Algorithm, SigningKey};
use kouan_agent::record::{self, HASH_LEN, STREAM_ID_LEN};
use kouan_agent::store::{Opened, Store};
use kouan_agent::writer::{MAX_BATCH, Writer, WriterConfig};

/// Rounds of every measurement; the table gives their median.
const ROUNDS: usize = 3;

/// Records per `fdatasync` in the raw baseline.
const RAW_BATCHES: [usize; 4] = [1, 16, 64, 256];

/// Appends awaiting durability at once in the kouan runs, like that many
/// instruments each waiting for its acknowledgement.
const IN_FLIGHT: [usize; 2] = [64, 256];

/// Readings per kouan run: a few seconds at the rates this machine reaches.
const KOUAN_RECORDS: u64 = 50_000;

/// Readings at the start and at the end of a kouan run whose rates are
/// shown apart, to tell whether the rate depends on what the store holds.
const WINDOW: u64 = 10_000;

/// How long each raw and signing measurement runs.
const TIMED: Duration = Duration::from_secs(2);

/// The store issue's goal: kouan at least this share of the raw rate.
const GOAL: f64 = 0.5;

/// One round's figures, in records per second.
struct Round {
    /// Per entry of [`RAW_BATCHES`].
    raw: Vec<f64>,
    ed25519: f64,
    record_sign: f64,
    /// Per entry of [`IN_FLIGHT`].
    kouan: Vec<common::Drive>,
}

fn main() -> anyhow::Result<()> {
    let dir = common::scratch_dir()?;
    let load_before = common::load_average();
    let pkcs8 = keys::generate(Algorithm::Ed25519)?;
    let key = SigningKey::from_pkcs8(&pkcs8).map_err(anyhow::Error::msg)?;

    // The baseline writes records exactly as long as the ones kouan stores:
    // sign one mid-run reading (seq and sample id at their typical width).
    let n = KOUAN_RECORDS / 2;
    let sample = common::sign_entry(
        common::reading(n)?,
        [7; STREAM_ID_LEN],
        n,
        [1; HASH_LEN],
        &key,
    )?;
    let (sign1, _) = record::parse_unverified(&sample.bytes)?;
    let signed_part = sign1.tbs_data(b"");
    eprintln!(
        "signed reading: {} bytes, of which Ed25519 signs {}; scratch files in {}",
        sample.bytes.len(),
        signed_part.len(),
        dir.path().display()
    );

    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        eprintln!("round {round} of {ROUNDS}: raw group commit");
        let raw = RAW_BATCHES
            .iter()
            .map(|&batch| raw_group_commit(dir.path(), &sample.bytes, batch))
            .collect::<anyhow::Result<Vec<_>>>()?;
        eprintln!("round {round} of {ROUNDS}: signing alone");
        let ed25519 = ed25519_rate(&key, &signed_part)?;
        let record_sign = record_sign_rate(&key)?;
        eprintln!("round {round} of {ROUNDS}: kouan");
        let kouan = IN_FLIGHT
            .iter()
            .map(|&in_flight| kouan_rate(dir.path(), &pkcs8, in_flight, round))
            .collect::<anyhow::Result<Vec<_>>>()?;
        rounds.push(Round {
            raw,
            ed25519,
            record_sign,
            kouan,
        });
    }

    let facts = common::machine_facts(dir.path());
    let load = format!(
        "- load average (1, 5, 15 min): {load_before} before the run, {} after\n",
        common::load_average()
    );
    let figures = render(
        &rounds,
        sample.bytes.len(),
        signed_part.len(),
        &(facts + &load),
    );
    println!("{figures}");
    match common::write_figures("store", &figures) {
        Ok(path) => eprintln!("figures written to {}", path.display()),
        Err(error) => eprintln!("{error:#}"),
    }
    Ok(())
}

/// Appends `batch` copies of `record` to a new file and `fdatasync`s, over
/// and over for [`TIMED`]; returns records per second.
fn raw_group_commit(dir: &Path, record: &[u8], batch: usize) -> anyhow::Result<f64> {
    use std::io::Write as _;

    let path = dir.join(format!("raw-{batch}.log"));
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let chunk = record.repeat(batch);

    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < TIMED {
        file.write_all(&chunk)
            .with_context(|| format!("appending to {}", path.display()))?;
        file.sync_data()
            .with_context(|| format!("fdatasync of {}", path.display()))?;
        records += batch as u64;
    }
    let rate = records as f64 / start.elapsed().as_secs_f64();

    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(rate)
}

/// Ed25519 signatures per second over `message`, one after another.
fn ed25519_rate(key: &SigningKey, message: &[u8]) -> anyhow::Result<f64> {
    let mut message = message.to_vec();
    let start = Instant::now();
    let mut signed = 0u64;
    while start.elapsed() < TIMED {
        let signature = key.sign(&message)?;
        // Feed each signature into the next message, as each record's
        // prev feeds on the one before: no signature can start early.
        let n = signature.len().min(message.len());
        message[..n].copy_from_slice(&signature[..n]);
        signed += 1;
    }
    Ok(signed as f64 / start.elapsed().as_secs_f64())
}

/// Chained readings signed per second with the writer's own steps: the
/// payload built, CBOR-encoded, signed as COSE_Sign1, and hashed for the
/// next record's `prev`.
fn record_sign_rate(key: &SigningKey) -> anyhow::Result<f64> {
    let entry = common::reading(KOUAN_RECORDS / 2)?;
    let mut prev = [0; HASH_LEN];
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < TIMED {
        let record = common::sign_entry(entry.clone(), [7; STREAM_ID_LEN], seq, prev, key)?;
        prev = record.hash;
        seq += 1;
    }
    Ok(seq as f64 / start.elapsed().as_secs_f64())
}

/// Readings made durable per second by the real writer and store, with
/// `in_flight` producers each awaiting its own append.
fn kouan_rate(
    dir: &Path,
    pkcs8: &[u8],
    in_flight: usize,
    round: usize,
) -> anyhow::Result<common::Drive> {
    let path = dir.join(format!("kouan-{in_flight}-{round}.db"));
    let store = Store::create(&path)?;
    let key = SigningKey::from_pkcs8(pkcs8).map_err(anyhow::Error::msg)?;
    let config = WriterConfig::new(common::NODE, common::SITE);
    let (writer, thread) = Writer::start(store, &Opened::Created, key, config)?;

    let drive = common::drive(&writer, in_flight, KOUAN_RECORDS, WINDOW)?;

    let stats = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting a runtime for the stats request")?
        .block_on(writer.stats())?;
    drop(writer);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    // The genesis and the checkpoints are stored too; fewer would mean lost readings.
    anyhow::ensure!(
        stats.records > KOUAN_RECORDS,
        "{} holds {} records after {KOUAN_RECORDS} durable readings",
        path.display(),
        stats.records
    );
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("removing {}", path.display())),
        }
    }
    Ok(drive)
}

/// The figures block of `docs/performance.md`.
fn render(rounds: &[Round], record_len: usize, signed_len: usize, facts: &str) -> String {
    let column = |f: &dyn Fn(&Round) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    let row = |what: String, values: Vec<f64>| {
        format!(
            "| {what} | {} | {} |\n",
            common::grouped(common::median(&values)),
            common::spread(&values)
        )
    };

    let mut out = format!(
        "Generated by `cargo bench -p kouan-agent --bench store`; median of {} rounds.\n\n\
         {facts}\
         - signed reading: {record_len} bytes stored; Ed25519 signs {signed_len} bytes of it\n\
         - kouan runs: {} readings each, writer defaults (MAX_BATCH {MAX_BATCH}, \
         a checkpoint every 1000 records)\n\n\
         | measurement | records/s | range over the rounds |\n\
         | --- | ---: | ---: |\n",
        rounds.len(),
        common::grouped(KOUAN_RECORDS as f64),
    );
    for (i, batch) in RAW_BATCHES.iter().enumerate() {
        let what = format!("raw append + fdatasync, {batch} per sync");
        out += &row(what, column(&|r| r.raw[i]));
    }
    out += &row(
        "Ed25519 signing alone (ring), one after another".into(),
        column(&|r| r.ed25519),
    );
    out += &row(
        "record signing alone (CBOR, COSE_Sign1, Ed25519, SHA-256)".into(),
        column(&|r| r.record_sign),
    );
    for (i, in_flight) in IN_FLIGHT.iter().enumerate() {
        let what = format!("**kouan**, {in_flight} appends in flight");
        out += &row(what, column(&|r| r.kouan[i].rate));
    }

    out += "\n| kouan | ÷ raw, same batch | ÷ Ed25519 alone | ÷ record signing alone |\n\
            | --- | ---: | ---: | ---: |\n";
    let mut verdicts = Vec::new();
    for (i, in_flight) in IN_FLIGHT.iter().enumerate() {
        let Some(b) = RAW_BATCHES.iter().position(|batch| batch == in_flight) else {
            continue;
        };
        let raw = common::median(&column(&|r| r.kouan[i].rate / r.raw[b]));
        let ed = common::median(&column(&|r| r.kouan[i].rate / r.ed25519));
        let rec = common::median(&column(&|r| r.kouan[i].rate / r.record_sign));
        out += &format!(
            "| {in_flight} in flight | {raw:.2} (raw {in_flight} per sync) | {ed:.2} | {rec:.2} |\n"
        );
        let met = if raw >= GOAL { "met" } else { "**not met**" };
        verdicts.push(format!("{met} at {in_flight} in flight ({raw:.2})"));
    }
    out += &format!(
        "\nGoal, at least {GOAL:.2} of the raw rate: {}.\n",
        verdicts.join("; ")
    );

    out += &format!(
        "\nThe same kouan runs, over the first and the last {} readings to become \
         durable (while the store grows from 0, and from {} records):\n\n\
         | kouan | first {}, records/s | last {}, records/s | last ÷ first |\n\
         | --- | ---: | ---: | ---: |\n",
        common::grouped(WINDOW as f64),
        common::grouped((KOUAN_RECORDS - WINDOW) as f64),
        common::grouped(WINDOW as f64),
        common::grouped(WINDOW as f64),
    );
    for (i, in_flight) in IN_FLIGHT.iter().enumerate() {
        let first = common::median(&column(&|r| r.kouan[i].first_rate));
        let last = common::median(&column(&|r| r.kouan[i].last_rate));
        let ratio = common::median(&column(&|r| r.kouan[i].last_rate / r.kouan[i].first_rate));
        out += &format!(
            "| {in_flight} in flight | {} | {} | {ratio:.2} |\n",
            common::grouped(first),
            common::grouped(last)
        );
    }
    out
}
