//! One function per subcommand. Each returns the exit code on success; errors are reported once,
//! at the top, by [`report_error`].

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, Command, Shell};

mod doctor;
mod init;
mod lifecycle;
mod run;
mod sandbox;

mod validate;
pub mod waker;
mod worker;

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    // Every Google client of this process (the embedded worker's too) finds credentials
    // with these flags.
    bootstrap_gcp::auth::set_process_options(bootstrap_gcp::DiscoverOptions {
        credentials_file: cli.global.credentials_file.clone(),
        impersonate: cli.global.impersonate_service_account.clone(),
        quota_project: cli.global.quota_project.clone(),
        plan_quota_project: None,
    });
    match cli.command {
        Command::Completions(args) => {
            let shell = match args.shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bootstrap",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(args) => init::run(args),
        Command::Validate(args) => validate::run(&args),
        Command::Plan(args) => lifecycle::plan(&args, &cli.global),
        Command::Apply(args) => lifecycle::apply(&args, &cli.global),
        Command::Destroy(args) => lifecycle::destroy(&args, &cli.global),
        Command::Doctor(args) => doctor::run(&args, &cli.global),
        Command::Worker(args) => worker::run(&args, &cli.global),
        Command::Waker(args) => waker::run(&args, &cli.global),
        Command::Run(args) => run::run(args),
        Command::Sandbox(args) => sandbox::run(&args, &cli.global),
    }
}

/// Prints an error and its causes once, with a hint where one was attached.
pub fn report_error(err: &anyhow::Error) {
    let red = console::Style::new().red().bold().for_stderr();
    eprintln!("{} {err}", red.apply_to("error:"));
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
