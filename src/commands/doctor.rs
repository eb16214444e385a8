//! `bootstrap doctor`: preflight checks on one screen (or `--json`); exit 0 when apply has what
//! it needs, 1 otherwise.

use std::process::ExitCode;

use anyhow::Result;
use bootstrap_engine::doctor;

use super::lifecycle::{load_spec, runtime};
use crate::cli::{DoctorArgs, GlobalArgs};

pub fn run(args: &DoctorArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.file.file)?;
    let options = doctor::Options {
        gcp_endpoint: global.gcp_endpoint.clone(),
        ..doctor::Options::default()
    };
    let report = runtime()?.block_on(doctor::run(&spec, &options))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        let heading = format!(
            "{} (project {}, region {})",
            spec.source.display(),
            spec.gcp.project,
            spec.gcp.region
        );
        print!("{}", report.human(&heading, console::colors_enabled()));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
