//! `kouan alerts`: the alerts at this point, and operators' acknowledgements.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::AlertRow;
use crate::config::Config;

/// `kouan alerts`.
#[derive(Debug, Clone, clap::Args)]
pub struct AlertsArgs {
    /// The agent's configuration file (for the store's location).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/kouan/kouan.toml",
        global = true
    )]
    pub config: PathBuf,
    /// List acknowledged alerts too.
    #[arg(long)]
    pub all: bool,
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
}

/// `kouan alerts ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AlertsCommand {
    /// Acknowledge an alert: the agent signs the acknowledgement as a record.
    Ack {
        /// The alert's number, as `kouan alerts` lists it.
        id: u64,
        /// Who acknowledges it (name or badge number of the officer).
        #[arg(long, value_name = "NAME")]
        by: String,
    },
}

/// Runs `kouan alerts`; `Ok(false)` when something asked for is missing.
pub fn alerts(args: &AlertsArgs) -> anyhow::Result<bool> {
    let config = Config::load(&args.config)?;
    let store = &config.store.path;
    let db = super::database_path(store);
    if !db.exists() {
        println!(
            "no alerts: {} does not exist yet (the agent creates it)",
            db.display()
        );
        return Ok(args.command.is_none());
    }
    match &args.command {
        None => list(store, args.all),
        Some(AlertsCommand::Ack { id, by }) => acknowledge(store, *id, by),
    }
}

fn list(store: &Path, all: bool) -> anyhow::Result<bool> {
    let rows = super::list_alerts(store, all).context("reading the alerts")?;
    if rows.is_empty() {
        println!("no {}alerts", if all { "" } else { "active " });
        return Ok(true);
    }
    println!(
        "{:>5}  {:<20}  {:>4}  {:<7}  {:<16}  {:<14}  subject",
        "alert", "raised (UTC)", "risk", "action", "source", "instrument"
    );
    for row in rows {
        print_row(&row);
    }
    Ok(true)
}

fn print_row(row: &AlertRow) {
    let acked = row
        .acked_by
        .as_ref()
        .map(|by| format!("  (acknowledged by {by})"))
        .unwrap_or_default();
    println!(
        "{:>5}  {:<20}  {:>4}  {:<7}  {:<16}  {:<14}  {}{acked}",
        row.id,
        crate::store::utc_stamp(row.time),
        row.risk,
        row.action,
        row.source,
        row.instrument,
        row.subject,
    );
}

fn acknowledge(store: &Path, id: u64, by: &str) -> anyhow::Result<bool> {
    if by.trim().is_empty() {
        anyhow::bail!("--by must name the operator");
    }
    let Some(row) = super::queue_acknowledgement(store, id, by).context("queueing")? else {
        eprintln!("kouan: no alert {id}: `kouan alerts --all` lists them");
        return Ok(false);
    };
    if let Some(already) = &row.acked_by {
        println!("alert {id} was already acknowledged by {already}");
        return Ok(true);
    }
    // The running agent signs queued acknowledgements twice a second.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(row) = super::alert(store, id).context("reading the alert")?
            && row.acked_by.is_some()
        {
            println!("alert {id} acknowledged by {by}: signed as a record");
            return Ok(true);
        }
    }
    println!(
        "alert {id}: acknowledgement by {by} queued; the agent signs it when it runs \
         (it is not running, or busy)"
    );
    Ok(true)
}
