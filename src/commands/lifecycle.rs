//! `plan`, `apply` and `destroy`: one path through the engine, with destroy as the plan to nothing.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, anyhow, bail};
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
    if let Some(out) = &args.out {
        save(&planned.plan, out)?;
    }
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

/// Writes the plan for `apply SAVED_PLAN`: the `--json` text, which carries no secret (a key or
/// an API key is never part of a plan, only the fact that one is made or stored).
fn save(plan: &Plan, path: &Path) -> Result<()> {
    std::fs::write(path, render::json(plan) + "\n")
        .with_context(|| format!("saving the plan to {}", path.display()))?;
    eprintln!(
        "Saved the plan to {}; `bootstrap apply {}` carries out exactly it.",
        path.display(),
        path.display()
    );
    Ok(())
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
        execute(&planned.ctx, &planned.plan, json).await
    })
}

/// Carries out `plan` and prints the changelog (JSON) or its summary.
async fn execute(ctx: &engine::Context, plan: &Plan, json: bool) -> Result<ExitCode> {
    let progress = crate::progress::Progress::new(!json && std::io::stderr().is_terminal());
    match engine::apply::apply(ctx, plan, &progress).await {
        Ok(log) => {
            if json {
                println!("{}", log.to_json());
            } else {
                println!("{}", log.summary(plan.mode));
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
}

/// `apply SAVED_PLAN`: observes and plans again, and carries out the saved plan only when the
/// plan made now is the same value (see `engine::plan::read_saved`); no question is asked, the
/// saved plan was the one reviewed.
fn apply_saved(spec: &Spec, global: &GlobalArgs, path: &Path, json: bool) -> Result<ExitCode> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the saved plan {}", path.display()))?;
    let saved = engine::plan::read_saved(&text).map_err(|e| {
        anyhow!(
            "{} is not a plan `bootstrap plan --out` saved: {e}",
            path.display()
        )
    })?;
    if saved.mode != Mode::Apply {
        bail!(
            "{} is a destroy plan; `apply` carries out apply plans only",
            path.display()
        );
    }
    runtime()?.block_on(async {
        let now = make_plan(spec, global, Mode::Apply, false, false).await?;
        let differences = engine::plan::differences(&saved, &now.plan);
        if !differences.is_empty() {
            bail!(
                "the saved plan {} is stale: GCP, Prefect or the plan file changed since it was \
                 made, and the plan made now differs:\n  {}\nnothing was changed; run \
                 `bootstrap plan --out {}` again, review it, and apply that",
                path.display(),
                differences.join("\n  "),
                path.display()
            );
        }
        if !saved.has_changes() {
            if json {
                println!("{}", engine::apply::Changelog::default().to_json());
            } else {
                print!("{}", render::human(&saved, color()));
            }
            return Ok(ExitCode::SUCCESS);
        }
        execute(&now.ctx, &saved, json).await
    })
}

pub fn apply(args: &ApplyArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.file.file)?;
    if let Some(saved) = &args.saved_plan {
        return apply_saved(&spec, global, saved, args.json);
    }
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
