//! `plan`, `apply` and `destroy`: one path through the engine, with destroy as the plan to nothing.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use bootstrap_spec::Spec;

use crate::cli::{ApplyArgs, DestroyArgs, GlobalArgs, PlanArgs};
use bootstrap_engine::{self as engine, Mode, Plan, planner, render};

/// Loads and checks the plan file. Nothing touches the network before this succeeds.
pub fn load_spec(path: &Path) -> Result<Spec> {
    crate::plan_env::load_spec(path)
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

struct Planned {
    ctx: engine::Context,
    plan: Plan,
}

async fn make_plan(
    spec: &Spec,
    global: &GlobalArgs,
    mode: Mode,
    rotate_key: bool,
    keep_sa: bool,
) -> Result<Planned> {
    let ctx = engine::Context::connect(spec, global.gcp_endpoint.as_deref()).await?;
    let observed = engine::observe::observe(&ctx, spec, mode).await?;
    let options = planner::Options {
        mode,
        rotate_key,
        keep_service_account: keep_sa,
        prefect_api_url: ctx.worker_api_url(spec),
        has_api_key: ctx.api_key().is_some(),
    };
    let plan = planner::plan(spec, &observed, &options);
    Ok(Planned { ctx, plan })
}

fn color() -> bool {
    console::colors_enabled()
}

pub fn plan(args: &PlanArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.file.file)?;
    let planned = runtime()?.block_on(make_plan(&spec, global, Mode::Apply, false, false))?;
    if args.json {
        println!("{}", render::json(&planned.plan));
    } else {
        print!("{}", render::human(&planned.plan, color()));
    }
    Ok(if args.detailed_exitcode && planned.plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Asks before changing anything, unless `--auto-approve`. Without a terminal, refuses.
fn confirm(prompt: &str, expected: Option<&str>) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to make changes without confirmation: no terminal to ask on (pass --auto-approve)"
        );
    }
    let theme = dialoguer::theme::ColorfulTheme::default();
    match expected {
        None => Ok(dialoguer::Confirm::with_theme(&theme)
            .with_prompt(prompt)
            .default(false)
            .interact()?),
        Some(word) => {
            let typed: String = dialoguer::Input::with_theme(&theme)
                .with_prompt(format!("{prompt} Type the project id ({word}) to confirm"))
                .allow_empty(true)
                .interact_text()?;
            Ok(typed.trim() == word)
        }
    }
}

fn run_apply(
    spec: &Spec,
    global: &GlobalArgs,
    mode: Mode,
    auto_approve: bool,
    json: bool,
    rotate: bool,
    keep_sa: bool,
) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let planned = make_plan(spec, global, mode, rotate, keep_sa).await?;
        if !json {
            print!("{}", render::human(&planned.plan, color()));
        }
        if !planned.plan.has_changes() {
            if json {
                println!("{}", engine::apply::Changelog::default().to_json());
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !auto_approve {
            let ok = match mode {
                Mode::Apply => confirm("Apply these changes?", None)?,
                Mode::Destroy => {
                    confirm("Delete these resources?", Some(spec.gcp.project.as_str()))?
                }
            };
            if !ok {
                eprintln!("Nothing changed.");
                return Ok(ExitCode::from(1));
            }
        }
        let progress = engine::apply::Progress::new(!json && std::io::stderr().is_terminal());
        let result = engine::apply::apply(&planned.ctx, &planned.plan, &progress).await;
        match result {
            Ok(log) => {
                if json {
                    println!("{}", log.to_json());
                } else {
                    println!("{}", log.summary(mode));
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(failure) => {
                if json {
                    println!("{}", failure.log.to_json());
                }
                Err(failure.error)
            }
        }
    })
}

pub fn apply(args: &ApplyArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.file.file)?;
    run_apply(
        &spec,
        global,
        Mode::Apply,
        args.auto_approve,
        args.json,
        args.rotate_key,
        false,
    )
}

pub fn destroy(args: &DestroyArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.file.file)?;
    run_apply(
        &spec,
        global,
        Mode::Destroy,
        args.auto_approve,
        args.json,
        false,
        args.keep_service_account,
    )
}
