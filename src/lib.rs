//! `bootstrap`: Prefect's Google Cloud Run worker guide as code.

pub mod cli;
pub mod commands;
pub mod logging;
pub mod plan_env;
pub mod progress;

use std::process::ExitCode;

use clap::Parser;

/// Runs the command line and turns the outcome into the process exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.global.verbose, cli.global.quiet);
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            commands::report_error(&err);
            ExitCode::from(1)
        }
    }
}
