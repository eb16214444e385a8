//! `bootstrap run <flow>/<deployment>`: start a flow run of a deployment (the UI's Quick Run)
//! and follow it to its end: state changes, its logs as they arrive, then its artifacts.

mod markdown;

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bootstrap_prefect::{
    Artifact, Deployment, FlowRun, FlowRunFromDeployment, Log, PrefectClient, StateType,
};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::cli::RunArgs;

/// How often the run's state and logs are polled while following it.
const POLL: Duration = Duration::from_millis(1000);
/// Logs may be stored after a later one (the flow ships them in batches): each poll looks this
/// far behind the newest line already shown, and already shown lines are skipped by id.
const LOG_SLACK: chrono::Duration = chrono::Duration::seconds(30);
/// After the run ends: poll the logs this often, until this many polls in a row brought
/// nothing new, for at most this long.
const LOG_DRAIN_POLL: Duration = Duration::from_millis(500);
const LOG_QUIET_POLLS: u32 = 6;
const LOG_DRAIN_MAX: Duration = Duration::from_secs(15);

/// Runs the subcommand.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<ExitCode> {
    let (flow_name, dep_name) = split_deployment(&args.deployment)?;
    let parameters = parse_params(&args.params)?;
    // The same resolution as plan/apply: the plan's Prefect settings first, when one is given.
    let spec = args
        .file
        .as_deref()
        .map(crate::plan_env::load_spec)
        .transpose()?;
    // No Google API is called here: the GCP endpoint is not needed.
    let config = bootstrap_engine::Connections::resolve(spec.as_ref(), None)?.prefect;
    let client = PrefectClient::new(config.clone())?;

    let deployment = find_deployment(&client, flow_name, dep_name).await?;
    let run = client
        .create_flow_run_from_deployment(
            deployment.id,
            &FlowRunFromDeployment {
                parameters: (!parameters.is_empty()).then_some(parameters),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot start a run of deployment `{flow_name}/{dep_name}`"))?;
    let ui_url = config.flow_run_ui_url(run.id);
    if !args.json {
        println!("Created flow run {} ({})", bold(&run.name), run.id);
        println!("  {ui_url}");
    }
    if !args.watch {
        if args.json {
            print_json(&run, &ui_url, &[])?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let final_run = follow(&client, &run, Duration::from_secs(args.timeout), !args.json).await?;
    let artifacts = client
        .flow_run_artifacts(run.id)
        .await
        .context("cannot read the run's artifacts")?;
    if args.json {
        print_json(&final_run, &ui_url, &artifacts)?;
    } else {
        for artifact in &artifacts {
            print_artifact(artifact);
        }
    }
    let state = final_run.state.as_ref();
    if final_run.state_type() == StateType::Completed {
        return Ok(ExitCode::SUCCESS);
    }
    let name = state
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| "?".into());
    let message = state.and_then(|s| s.message.clone()).unwrap_or_default();
    bail!(
        "flow run `{}` ended {name}{}",
        final_run.name,
        if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        }
    )
}

/// `flow/deployment` -> the two names.
fn split_deployment(text: &str) -> Result<(&str, &str)> {
    match text.split_once('/') {
        Some((f, d)) if !f.is_empty() && !d.is_empty() && !d.contains('/') => Ok((f, d)),
        _ => bail!(
            "`{text}` is not a deployment name: expected `<flow>/<deployment>`, e.g. `weather/daily`"
        ),
    }
}

/// `key=value` pairs; a value that is valid JSON is taken as JSON (`n=3`, `tags=["a"]`), any
/// other as a string (`city=Berlin`).
fn parse_params(params: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param `{p}` must be `key=value`");
        };
        let k = k.trim();
        if k.is_empty() {
            bail!("--param `{p}` has an empty key");
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

/// Reads the deployment; when it does not exist, says which ones do.
async fn find_deployment(client: &PrefectClient, flow: &str, name: &str) -> Result<Deployment> {
    if let Some(d) = client.deployment_by_name(flow, name).await? {
        return Ok(d);
    }
    let wanted = format!("{flow}/{name}");
    let flows = client.flows().await?;
    let deployments = client.deployments().await?;
    let mut known: Vec<String> = deployments
        .iter()
        .filter_map(|d| {
            let f = flows.iter().find(|f| f.id == d.flow_id)?;
            Some(format!("{}/{}", f.name, d.name))
        })
        .collect();
    known.sort_by_key(|k| edit_distance(k, &wanted));
    let hint = match known.first() {
        None => "the server has no deployments".to_string(),
        Some(best) if edit_distance(best, &wanted) <= wanted.len() / 3 + 1 => {
            format!("did you mean `{best}`?")
        }
        Some(_) => {
            let listed: Vec<&str> = known.iter().take(10).map(String::as_str).collect();
            format!("deployments on the server: {}", listed.join(", "))
        }
    };
    Err(anyhow!("deployment `{wanted}` was not found; {hint}"))
}

/// Polls the run until it ends or `timeout` passes, printing state changes and logs.
async fn follow(
    client: &PrefectClient,
    run: &FlowRun,
    timeout: Duration,
    print: bool,
) -> Result<FlowRun> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen_states: HashSet<String> = HashSet::new();
    let mut seen_logs: HashSet<Uuid> = HashSet::new();
    let mut newest_log: Option<DateTime<Utc>> = None;
    loop {
        let current = client.flow_run(run.id).await?.ok_or_else(|| {
            anyhow!(
                "flow run {} was deleted while it was being followed",
                run.id
            )
        })?;
        // The history, not the current state: a state that lasted less than a poll is shown too.
        for state in client.flow_run_states(run.id).await? {
            let key = state.id.map_or_else(
                || {
                    format!(
                        "{:?}{:?}{:?}",
                        state.state_type, state.name, state.timestamp
                    )
                },
                |id| id.to_string(),
            );
            let new = seen_states.insert(key);
            if print && new {
                let name = state.name.as_deref().unwrap_or(state.state_type.as_str());
                let message = state
                    .message
                    .as_deref()
                    .filter(|m| !m.is_empty() && state.state_type != StateType::Completed)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                println!("{} state {}{message}", stamp(state.timestamp), bold(name));
            }
        }
        show_new_logs(client, run.id, &mut seen_logs, &mut newest_log, print).await?;
        if current.state_type().is_terminal() {
            // The flow's last log lines are shipped in a batch as its process exits, after the
            // final state: keep reading until the logs have been quiet for a while (bounded).
            let drain_until = tokio::time::Instant::now() + LOG_DRAIN_MAX;
            let mut quiet_polls = 0;
            while quiet_polls < LOG_QUIET_POLLS && tokio::time::Instant::now() < drain_until {
                tokio::time::sleep(LOG_DRAIN_POLL).await;
                let before = seen_logs.len();
                show_new_logs(client, run.id, &mut seen_logs, &mut newest_log, print).await?;
                quiet_polls = if seen_logs.len() == before {
                    quiet_polls + 1
                } else {
                    0
                };
            }
            return Ok(current);
        }
        if tokio::time::Instant::now() + POLL > deadline {
            let state = current
                .state
                .as_ref()
                .and_then(|s| s.name.clone())
                .unwrap_or_else(|| current.state_type().as_str().to_string());
            bail!(
                "gave up following flow run `{}` after {} s (--timeout); it is still {state}",
                current.name,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn show_new_logs(
    client: &PrefectClient,
    run_id: Uuid,
    seen: &mut HashSet<Uuid>,
    newest: &mut Option<DateTime<Utc>>,
    print: bool,
) -> Result<()> {
    let since = newest.map(|t| t - LOG_SLACK);
    let logs = client.all_flow_run_logs(run_id, since, 10).await?;
    for log in logs {
        if let Some(id) = log.id
            && !seen.insert(id)
        {
            continue;
        }
        *newest = Some(newest.map_or(log.timestamp, |n| n.max(log.timestamp)));
        if print {
            print_log(&log);
        }
    }
    Ok(())
}

fn print_log(log: &Log) {
    let level = match log.level {
        ..=10 => "DEBUG",
        11..=20 => "INFO",
        21..=30 => "WARNING",
        31..=40 => "ERROR",
        _ => "CRITICAL",
    };
    let styled = match log.level {
        31.. => console::style(level).red(),
        21..=30 => console::style(level).yellow(),
        _ => console::style(level).dim(),
    };
    for (i, line) in log.message.lines().enumerate() {
        if i == 0 {
            println!("{} {styled:<8} {line}", stamp(Some(log.timestamp)));
        } else {
            println!("{:>10} {:<8} {line}", "", "");
        }
    }
}

fn print_artifact(a: &Artifact) {
    let kind = a.artifact_type.as_deref().unwrap_or("artifact");
    let title = a.key.as_deref().or(a.description.as_deref()).unwrap_or("");
    println!();
    println!(
        "{} {}",
        console::style(format!("── {kind} artifact")).dim(),
        bold(title)
    );
    match (kind, &a.data) {
        ("markdown", Value::String(md)) => print!("{}", markdown::render(md)),
        ("table", data) => print!("{}", markdown::render_table_data(data)),
        ("link", Value::String(url)) => println!("{url}"),
        (_, Value::String(s)) => println!("{s}"),
        (_, other) => println!("{other}"),
    }
}

fn print_json(run: &FlowRun, ui_url: &str, artifacts: &[Artifact]) -> Result<()> {
    let state = run.state.as_ref();
    let out = json!({
        "flow_run_id": run.id,
        "name": run.name,
        "state": run.state_type().as_str(),
        "state_name": state.and_then(|s| s.name.clone()),
        "message": state.and_then(|s| s.message.clone()),
        "ui_url": ui_url,
        "artifacts": artifacts.iter().map(|a| json!({
            "key": a.key, "type": a.artifact_type, "description": a.description, "data": a.data,
        })).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn stamp(t: Option<DateTime<Utc>>) -> String {
    let text = t.map_or_else(
        || "--:--:--".to_string(),
        |t| t.format("%H:%M:%S").to_string(),
    );
    console::style(text).dim().to_string()
}

fn bold(s: &str) -> String {
    console::style(s).bold().to_string()
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_names() {
        assert_eq!(split_deployment("a/b").ok(), Some(("a", "b")));
        for bad in ["ab", "/b", "a/", "a/b/c"] {
            let e = split_deployment(bad).expect_err(bad);
            assert!(e.to_string().contains("<flow>/<deployment>"), "{e}");
        }
    }

    #[test]
    fn params_are_json_when_they_can_be() {
        let p = parse_params(&[
            "n=3".into(),
            "city=Berlin".into(),
            "tags=[\"a\"]".into(),
            "eq=a=b".into(),
            "empty=".into(),
        ])
        .expect("parses");
        assert_eq!(p["n"], json!(3));
        assert_eq!(p["city"], json!("Berlin"));
        assert_eq!(p["tags"], json!(["a"]));
        assert_eq!(p["eq"], json!("a=b"));
        assert_eq!(p["empty"], json!(""));
        assert!(parse_params(&["novalue".into()]).is_err());
        assert!(parse_params(&["=x".into()]).is_err());
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("weather/daily", "weather/daily"), 0);
        assert_eq!(edit_distance("weather/daly", "weather/daily"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
