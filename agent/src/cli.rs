//! Command-line arguments and the dispatch to subcommands.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use kouan_agent::config::{Config, TlsSection};
use kouan_agent::keys::{self, Algorithm, PublicKey, SigningKey};
use kouan_agent::receive::ReceiveConfig;
use kouan_agent::run::RunOptions;
use kouan_agent::store::{self, Store};
use kouan_agent::verify;

/// Edge agent for import/export quality-monitoring points.
///
/// kouan reads lab instruments, scanners and sensor nodes over serial or
/// USB, signs every reading when it is captured, keeps it durably on disk
/// while the network is down, and forwards it over MQTT to the central
/// platform.
#[derive(Debug, Parser)]
#[command(name = "kouan", version, about, long_about)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every subcommand takes.
#[derive(Debug, ClapArgs)]
pub struct GlobalArgs {
    /// Log filter, in tracing's EnvFilter syntax (for example `info` or
    /// `kouan=debug`); overrides the KOUAN_LOG environment variable.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: read instruments, sign and store readings, send them.
    Run {
        /// The configuration file.
        #[arg(long, value_name = "PATH", default_value = "/etc/kouan/kouan.toml")]
        config: PathBuf,
        /// Feed this many synthetic readings (tests and demos).
        #[arg(long, hide = true, default_value_t = 0)]
        simulate_readings: u64,
        /// Bytes of raw data in each synthetic reading.
        #[arg(long, hide = true, default_value_t = 32)]
        simulate_raw_bytes: usize,
    },
    /// The platform side: receive, verify, store and acknowledge records.
    ///
    /// A reference implementation for platform teams and a test peer
    /// (docs/platform.md). Prints one line per event on stdout.
    Receive(Box<ReceiveArgs>),
    /// Generate a signing key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        /// Where to write the private key; an existing file is never overwritten.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Signature algorithm.
        #[arg(long, value_enum, default_value = "ed25519")]
        alg: Algorithm,
    },
    /// Inspect keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Verify a file of records: signatures, seq continuity and the prev chain.
    ///
    /// The file is a CBOR sequence of signed records, as `kouan store export`
    /// writes. Every problem is reported; the exit status is 1 if there is any.
    Verify {
        /// Public key file (SPKI PEM, as `kouan key show` prints); repeat for
        /// records signed by several keys.
        #[arg(long = "key", value_name = "PUBKEY", required = true)]
        keys: Vec<PathBuf>,
        /// The records, or `-` for standard input.
        file: PathBuf,
    },
    /// Inspect and export the record store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Ask the running agent how it is: uplink, backlog, instruments, alerts.
    Status(kouan_agent::status::client::StatusArgs),
    /// Stream records as the running agent stores them (Ctrl-C to stop).
    Tail(kouan_agent::status::client::TailArgs),
    /// The whole pipeline on this machine, no hardware, no broker to install.
    Demo(kouan_agent::demo::DemoArgs),
    /// List the alerts raised at this point, or acknowledge one.
    Alerts(kouan_agent::rapid::cli::AlertsArgs),
    /// Validate a configuration without starting anything: every problem
    /// with its file, line, field and fix; exit status 1 if there is any.
    Check(kouan_agent::check::CheckArgs),
    /// List serial ports and USB keyboards with their stable paths and USB ids.
    Ports(kouan_agent::ports::PortsArgs),
    /// Listen to a serial port at common settings and say what the device speaks.
    Probe(kouan_agent::probe::ProbeArgs),
    /// Tools for tests and benchmarks.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: crate::debug::DebugCommand,
    },
}

#[derive(Debug, ClapArgs)]
pub struct ReceiveArgs {
    /// Broker host (as in its certificate).
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// CA certificate of the broker (PEM).
    #[arg(long, value_name = "PATH", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// The platform's client certificate (PEM; CN `platform`).
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM, mode 0600).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Connect without TLS (a broker on this machine only).
    #[arg(long, conflicts_with = "ca")]
    pub plain_tcp: bool,
    /// MQTT client id; the session persists, so the broker queues while away.
    #[arg(long, default_value = "platform")]
    pub client_id: String,
    /// Directory of agents' public keys, `NODE.pub` each.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: PathBuf,
    /// The platform's private signing key (acks and commands).
    #[arg(long, value_name = "PATH")]
    pub platform_key: PathBuf,
    /// Database of accepted records.
    #[arg(long, value_name = "PATH")]
    pub store: PathBuf,
    /// Publish this host id's online state.
    #[arg(long, value_name = "ID")]
    pub host_id: Option<String>,
    /// Milliseconds between ack publications.
    #[arg(long, default_value_t = 200)]
    pub ack_interval_ms: u64,
    /// Milliseconds a hole may stay open before a replay is asked.
    #[arg(long, default_value_t = 3000)]
    pub replay_after_ms: u64,
    /// Watch this directory for control orders (`*.toml`, docs/platform.md)
    /// to sign with the platform key and publish, retained.
    #[arg(long, value_name = "DIR")]
    pub orders: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a key's public key (raw hex and SPKI PEM) and key id.
    ///
    /// PATH may be a private key (whose permissions are checked) or a public key.
    Show {
        /// The key file.
        path: PathBuf,
        /// Print only the SPKI PEM (to save as the public key file).
        #[arg(long)]
        pem: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// What the store holds: records, bytes, the chain head, the oldest record.
    Stats {
        /// The store database.
        #[arg(long, value_name = "PATH")]
        store: PathBuf,
    },
    /// Check the whole store: SQLite integrity, every record's hash and chain
    /// link, and with --key every signature. Exit status 1 if it is damaged.
    Check {
        /// The store database.
        #[arg(long, value_name = "PATH")]
        store: PathBuf,
        /// The agent's public key, to verify every signature too.
        #[arg(long, value_name = "PUBKEY")]
        key: Option<PathBuf>,
    },
    /// Export signed records as a CBOR sequence, to carry to the platform by hand.
    Export {
        /// The store database.
        #[arg(long, value_name = "PATH")]
        store: PathBuf,
        /// First seq to export; the oldest stored record by default.
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// Output file, or `-` for standard output.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Logs go to stderr, so that stdout stays clean for command output.
pub fn init_tracing(global: &GlobalArgs) -> anyhow::Result<()> {
    let (filter, source) = match &global.log {
        Some(filter) => (filter.clone(), "--log"),
        None => match std::env::var("KOUAN_LOG") {
            Ok(filter) => (filter, "KOUAN_LOG"),
            Err(_) => ("info".to_owned(), "the default"),
        },
    };
    let filter = EnvFilter::try_new(&filter).with_context(|| {
        format!("invalid log filter {filter:?} from {source}; try `info` or `kouan=debug`")
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// Runs a subcommand; `Ok(false)` means it ran but found problems.
pub fn run(args: Args) -> anyhow::Result<bool> {
    match args.command {
        None => {
            use clap::CommandFactory;
            Args::command().print_help()?;
            Ok(true)
        }
        Some(Command::Run {
            config,
            simulate_readings,
            simulate_raw_bytes,
        }) => {
            let options = RunOptions {
                simulate_readings,
                simulate_raw_bytes,
            };
            run_agent(&config, options).map(|()| true)
        }
        Some(Command::Receive(args)) => receive(*args).map(|()| true),
        Some(Command::Keygen { out, alg }) => keygen(&out, alg).map(|()| true),
        Some(Command::Key {
            command: KeyCommand::Show { path, pem },
        }) => key_show(&path, pem).map(|()| true),
        Some(Command::Verify { keys, file }) => verify_file(&keys, &file),
        Some(Command::Store {
            command: StoreCommand::Stats { store },
        }) => store_stats(&store).map(|()| true),
        Some(Command::Store {
            command: StoreCommand::Check { store, key },
        }) => store_check(&store, key.as_deref()),
        Some(Command::Store {
            command: StoreCommand::Export { store, from, out },
        }) => store_export(&store, from, &out).map(|()| true),
        Some(Command::Status(args)) => kouan_agent::status::client::status(&args),
        Some(Command::Tail(args)) => kouan_agent::status::client::tail(&args),
        Some(Command::Demo(args)) => kouan_agent::demo::run(&args),
        Some(Command::Alerts(args)) => kouan_agent::rapid::cli::alerts(&args),
        Some(Command::Check(args)) => kouan_agent::check::run(&args),
        Some(Command::Ports(args)) => kouan_agent::ports::run(&args),
        Some(Command::Probe(args)) => kouan_agent::probe::run(&args),
        Some(Command::Debug { command }) => crate::debug::run(command).map(|()| true),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run_agent(config: &Path, options: RunOptions) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    runtime()?.block_on(kouan_agent::run::run(config, options))
}

fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let tls = match (args.ca, args.cert, args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsSection { ca, cert, key }),
        (None, None, None) if args.plain_tcp => None,
        _ => bail!("give --ca, --cert and --key for TLS, or --plain-tcp for a local broker"),
    };
    let config = ReceiveConfig {
        host: args.host,
        port: args.port,
        tls,
        client_id: args.client_id,
        keys_dir: args.keys_dir,
        platform_key: args.platform_key,
        store: args.store,
        host_id: args.host_id,
        ack_interval: Duration::from_millis(args.ack_interval_ms.max(10)),
        replay_after: Duration::from_millis(args.replay_after_ms.max(100)),
        orders_dir: args.orders.clone(),
    };
    runtime()?.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut receiver = tokio::spawn(kouan_agent::receive::run(config, stopped));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            outcome = &mut receiver => return outcome.context("the receiver task failed")?,
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // Let it commit, publish its last acks and go offline.
        stop.send_replace(true);
        receiver.await.context("the receiver task failed")?
    })
}

fn keygen(out: &Path, alg: Algorithm) -> anyhow::Result<()> {
    let pkcs8 = keys::generate(alg)?;
    keys::write_private_key(out, &pkcs8).map_err(|error| match &error {
        keys::KeyError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            let dir = out.parent().filter(|dir| !dir.as_os_str().is_empty());
            anyhow::anyhow!(
                "{error}; this user cannot create files in {}: make the key as the user the \
                 agent runs as, in a directory it owns (the package makes /etc/kouan/keys for \
                 the kouan user: `sudo -u kouan kouan keygen --out /etc/kouan/keys/agent.key`)",
                dir.unwrap_or(Path::new(".")).display()
            )
        }
        _ => error.into(),
    })?;
    let key = SigningKey::from_pkcs8(&pkcs8)
        .map_err(|reason| anyhow::anyhow!("reading back the new key: {reason}"))?;
    eprintln!("wrote {alg} private key to {} (mode 0600)", out.display());
    print_public(key.public_key());
    Ok(())
}

fn key_show(path: &Path, pem_only: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let public = if bytes.starts_with(b"-----BEGIN PUBLIC KEY-----") {
        PublicKey::load(path)?
    } else {
        SigningKey::load(path)?.public_key().clone()
    };
    if pem_only {
        print!("{}", public.spki_pem());
    } else {
        print_public(&public);
    }
    Ok(())
}

fn print_public(public: &PublicKey) {
    println!("algorithm  {}", public.alg());
    println!("key id     {}", hex::encode(public.key_id()));
    println!("public     {}", hex::encode(public.raw()));
    print!("{}", public.spki_pem());
}

fn verify_file(key_paths: &[PathBuf], file: &Path) -> anyhow::Result<bool> {
    let keys = key_paths
        .iter()
        .map(|path| PublicKey::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = Vec::new();
    let source = if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading records from standard input")?;
        "standard input".to_owned()
    } else {
        data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        file.display().to_string()
    };

    let report = verify::verify_sequence(&data, &keys);
    for problem in &report.problems {
        println!("FAIL {problem}");
    }
    let range = match (report.first, report.last) {
        (Some(first), Some(last)) => format!("seq {first} to {last}"),
        _ => "no seqs".to_owned(),
    };
    let head = report.head.map(hex::encode).unwrap_or_else(|| "-".into());
    if report.ok() {
        println!(
            "ok: {} records from {source} verify ({range}); head {head}",
            report.records
        );
    } else {
        println!(
            "{} problems in {} records from {source} ({} verified, {range})",
            report.problems.len(),
            report.records,
            report.verified
        );
    }
    Ok(report.ok())
}

fn store_stats(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        bail!(
            "no store at {}: check the path (the agent creates it on first start)",
            path.display()
        );
    }
    let store = Store::open_read_only(path)?;
    let stats = store.stats()?;
    println!("store      {}", path.display());
    match store.head() {
        Some(head) => {
            println!("stream     {}", hex::encode(head.stream));
            println!("head       seq {} ({})", head.seq, hex::encode(head.hash));
        }
        None => println!("stream     none yet"),
    }
    match stats.first {
        Some(first) => println!(
            "records    {} (seq {first} to {})",
            stats.records,
            first + stats.records - 1
        ),
        None => println!("records    0 (everything delivered)"),
    }
    println!("bytes      {}", stats.bytes);
    if let Some(ms) = stats.oldest_captured_ms {
        let age_s = (kouan_agent::clock::unix_ms() - ms).max(0) / 1000;
        println!(
            "oldest     captured {} ({} ago)",
            store::utc_stamp(ms),
            human_duration(age_s)
        );
    }
    Ok(())
}

fn store_check(path: &Path, key: Option<&Path>) -> anyhow::Result<bool> {
    if !path.exists() {
        bail!("no store at {}: check the path", path.display());
    }
    let keys = key.map(PublicKey::load).transpose()?;
    let keys = keys.as_slice();
    match Store::check_all(path, keys) {
        Ok(store) => {
            let stats = store.stats()?;
            let signatures = if keys.is_empty() {
                "signatures not checked (no --key)"
            } else {
                "every signature verifies"
            };
            println!(
                "ok: store {}: {} records, hashes and chain links check, {signatures}",
                path.display(),
                stats.records
            );
            Ok(true)
        }
        Err(store::StoreError::Damaged { damage, .. }) => {
            println!("DAMAGED: store {}: {damage}", path.display());
            Ok(false)
        }
        Err(other) => Err(other.into()),
    }
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn store_export(path: &Path, from: Option<u64>, out: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        bail!("no store at {}: check the path", path.display());
    }
    let store = Store::open_read_only(path)?;
    let stats = store.stats()?;
    let from = from.or(stats.first).unwrap_or(0);
    let to_stdout = out == Path::new("-");
    let mut sink: Box<dyn std::io::Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };

    // Page through the store so that memory stays flat whatever the backlog.
    let mut next = from;
    let mut count = 0u64;
    let mut last = None;
    loop {
        let page = store.read_from(next, 256)?;
        let Some(tail) = page.last() else { break };
        next = tail.seq + 1;
        for record in &page {
            sink.write_all(&record.bytes)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        count += page.len() as u64;
        last = Some(next - 1);
    }
    sink.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    drop(sink);
    if !to_stdout {
        std::fs::File::open(out)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", out.display()))?;
        keys::sync_parent_dir(out)
            .with_context(|| format!("syncing the directory of {}", out.display()))?;
    }
    match last {
        Some(last) => eprintln!(
            "exported {count} records (seq {from} to {last}) to {}",
            out.display()
        ),
        None => eprintln!(
            "no records from seq {from} on; wrote an empty file {}",
            out.display()
        ),
    }
    Ok(())
}
