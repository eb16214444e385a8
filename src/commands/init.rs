//! `bootstrap init`: the wizard (crates/wizard), then an offer to run `plan` and `apply`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use bootstrap_wizard::{Flags, Locations, WizardError};

use crate::cli::{InitAnswers, InitArgs};

/// Exit code after Ctrl-C, as shells report SIGINT.
const INTERRUPTED: u8 = 130;

/// Runs the wizard; on a terminal, offers to run `plan` and then `apply` on the new plan.
pub fn run(args: InitArgs) -> Result<ExitCode> {
    let path = args.file.file.clone();
    let flags = flags(*args.answers);
    let outcome = match bootstrap_wizard::run(&flags, &path, &Locations::from_env()) {
        Ok(outcome) => outcome,
        Err(WizardError::Interrupted) => {
            eprintln!("\ninterrupted; no plan file was written");
            return Ok(ExitCode::from(INTERRUPTED));
        }
        Err(err) => return Err(err.into()),
    };
    if !outcome.interactive {
        print_next_steps(&outcome.path);
        return Ok(ExitCode::SUCCESS);
    }
    match offer_plan_then_apply(&outcome.path) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(WizardError::Interrupted) => Ok(ExitCode::from(INTERRUPTED)),
        Err(err) => Err(err.into()),
    }
}

fn flags(a: InitAnswers) -> Flags {
    Flags {
        project: a.project,
        region: a.region,
        service_account: a.service_account,
        key: a.key,
        pool: a.pool,
        pool_type: a.pool_type,
        worker_image: a.worker_image,
        worker_runtime: a.worker_runtime,
        min_instances: a.min_instances,
        prefect_api_url: a.prefect_api_url,
        api_key: a.api_key,
        deployment_flow: a.deployment_flow,
        deployment_name: a.deployment_name,
        entrypoint: a.entrypoint,
        image: a.image,
        params: a.params,
        no_deployment: a.no_deployment,
        yes: a.yes,
        force: a.force,
    }
}

fn print_next_steps(path: &Path) {
    let p = shown(path);
    eprintln!("next: bootstrap plan -f {p}   then   bootstrap apply -f {p}");
}

/// Runs `bootstrap plan` (and, if it succeeds and the user agrees, `bootstrap apply`) as child
/// processes of this same binary, so what runs is exactly what the user would type. A
/// subcommand that is not built yet says so itself and exits 1; then only the commands to run
/// later are printed.
fn offer_plan_then_apply(path: &Path) -> Result<(), WizardError> {
    let asker = bootstrap_wizard::ask::Asker::new(true);
    let p = shown(path);
    if !asker.confirm(&format!("Run `bootstrap plan -f {p}` now?"), true)? {
        print_next_steps(path);
        return Ok(());
    }
    // `plan` exits 0 (no changes) or 2 (changes) with --detailed-exitcode; 1 is an error.
    match run_self(&["plan", "--detailed-exitcode", "-f", &p]) {
        Some(0) => {
            eprintln!("nothing to apply: GCP and Prefect already match the plan");
            Ok(())
        }
        Some(2) => {
            if asker.confirm(&format!("Run `bootstrap apply -f {p}` now?"), false)? {
                if run_self(&["apply", "-f", &p]) != Some(0) {
                    eprintln!(
                        "`bootstrap apply` did not finish; run it again with: bootstrap apply -f {p}"
                    );
                }
            } else {
                eprintln!("when ready: bootstrap apply -f {p}");
            }
            Ok(())
        }
        _ => {
            eprintln!("`bootstrap plan` did not succeed; the plan file is written. Later, run:");
            print_next_steps(path);
            Ok(())
        }
    }
}

/// Runs this binary with `args`, sharing the terminal; its exit code, or `None` if it could
/// not be started or was killed.
fn run_self(args: &[&str]) -> Option<i32> {
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe).args(args).status().ok()?;
    status.code()
}

/// The path as the user would type it.
fn shown(path: &Path) -> String {
    path.display().to_string()
}
