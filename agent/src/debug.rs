//! Hidden subcommands that drive the real code paths for tests and
//! benchmarks (`kouan debug ...`). Not for technicians; not in `--help`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use kouan_agent::keys::SigningKey;
use kouan_agent::store::{Opened, Store};
use kouan_agent::writer::{AppendError, FullPolicy, Writer, WriterConfig};

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Append synthetic readings through the writer, printing `durable SEQ`
    /// on stdout for each one as soon as it is durable.
    Append {
        /// The store database (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// The signing key.
        #[arg(long)]
        key: PathBuf,
        /// How many readings; 0 appends until killed.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Bytes of raw instrument data per reading.
        #[arg(long, default_value_t = 32)]
        raw_size: usize,
        /// Readings awaiting durability at once (like that many instruments).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Store size cap in bytes.
        #[arg(long, default_value_t = 1 << 30)]
        max_bytes: u64,
        /// Policy at the cap.
        #[arg(long, value_enum, default_value = "backpressure")]
        policy: FullPolicy,
        /// A checkpoint every this many records.
        #[arg(long, default_value_t = 1000)]
        checkpoint_every: u64,
        /// Acknowledge (delete) everything through this seq first.
        #[arg(long)]
        acknowledge: Option<u64>,
        /// The node id the records name.
        #[arg(long, default_value = "debug-node")]
        node: String,
    },
}

pub fn run(command: DebugCommand) -> anyhow::Result<()> {
    let DebugCommand::Append {
        store,
        key,
        count,
        raw_size,
        concurrency,
        max_bytes,
        policy,
        checkpoint_every,
        acknowledge,
        node,
    } = command;
    let key = SigningKey::load(&key)?;
    let public = key.public_key().clone();
    let (db, opened) = Store::open_or_recover(&store, &[public])?;
    if let Opened::Recovered {
        damage, moved_to, ..
    } = &opened
    {
        tracing::error!(%damage, moved_to = %moved_to.display(), "store was damaged; moved aside");
    }
    let mut config = WriterConfig::new(node, "debug-site");
    config.max_bytes = max_bytes;
    config.policy = policy;
    config.checkpoint_every = checkpoint_every;
    config.checkpoint_interval = Duration::from_secs(3600);
    let (writer, thread) = Writer::start(db, &opened, key, config)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(append_all(
        writer,
        count,
        raw_size,
        concurrency.max(1),
        acknowledge,
    ))?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    Ok(())
}

async fn append_all(
    writer: Writer,
    count: u64,
    raw_size: usize,
    concurrency: usize,
    acknowledge: Option<u64>,
) -> anyhow::Result<()> {
    if let Some(through) = acknowledge {
        writer.acknowledge(through).await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut submitted = 0u64;
    let mut refused = 0u64;
    loop {
        while tasks.len() < concurrency && (count == 0 || submitted < count) {
            let writer = writer.clone();
            let entry = kouan_agent::run::synthetic_reading(submitted, raw_size)?;
            tasks.spawn(async move { writer.append(entry).await });
            submitted += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        match done.context("an append task failed")? {
            Ok(appended) => {
                // One line per durable record; flushed so a killed process
                // never claims more than it printed.
                let mut out = std::io::stdout().lock();
                writeln!(out, "durable {}", appended.seq)?;
                out.flush()?;
            }
            Err(error @ AppendError::Full { .. }) => {
                refused += 1;
                let mut out = std::io::stdout().lock();
                writeln!(out, "refused {error}")?;
                out.flush()?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    if refused > 0 {
        eprintln!("{refused} readings refused");
    }
    Ok(())
}
