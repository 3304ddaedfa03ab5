//! `kouan`, the edge agent of an import/export quality-monitoring point.
//!
//! It reads laboratory instruments, scanners and sensor nodes, signs every
//! reading when it is captured, keeps it on disk until the central platform
//! confirms it, and forwards it over MQTT. This file is the command line;
//! each subcommand lives in its own module.

use clap::Parser;

mod cli;
mod debug;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let outcome = cli::init_tracing(&args.global).and_then(|()| cli::run(args));
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            // The chain of contexts names what failed and where; print all of it.
            eprintln!("kouan: {}", kouan_agent::error_text(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
