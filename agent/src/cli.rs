//! Command-line arguments and the dispatch to subcommands.

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
pub enum Command {}

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
        .init();
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        None => {
            use clap::CommandFactory;
            Args::command().print_help()?;
            Ok(())
        }
    }
}
