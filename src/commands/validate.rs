//! `bootstrap validate`: check a plan offline. Makes no network call.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::ValidateArgs;

/// Checks the plan; prints a one-line summary (or, with `--json`, the checked plan without
/// secrets) on success, every problem on stderr and exit code 1 otherwise.
pub fn run(args: &ValidateArgs) -> Result<ExitCode> {
    let path = &args.file.file;
    match crate::plan_env::load(path) {
        Ok(spec) => {
            let out = if args.json {
                serde_json::to_string_pretty(&spec)?
            } else {
                format!("{}: ok ({})", path.display(), summary(&spec))
            };
            // A closed pipe (`| head`) is the reader's choice, not an error of ours.
            match writeln!(std::io::stdout().lock(), "{out}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Err(diags) => {
            eprintln!("{diags}");
            let n = diags.len();
            let plural = if n == 1 { "" } else { "s" };
            eprintln!("{}: {n} error{plural}", path.display());
            Ok(ExitCode::from(1))
        }
    }
}

fn summary(spec: &bootstrap_spec::Spec) -> String {
    let n = spec.deployments.len();
    let mut parts = vec![format!("{n} deployment{}", if n == 1 { "" } else { "s" })];
    parts.push(format!("project {}", spec.gcp.project));
    parts.push(format!(
        "work pool {} ({})",
        spec.work_pool.name,
        spec.work_pool.pool_type.as_str()
    ));
    match &spec.worker {
        Some(w) => parts.push(format!("worker service {}", w.service)),
        None => parts.push("no worker service".into()),
    }
    parts.join(", ")
}
