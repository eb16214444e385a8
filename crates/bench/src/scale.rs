//! How `plan` and `apply` grow with the work: generated plans of the whole guide with N
//! deployments (and N schedules spread over half of them), against the sandbox with latency on
//! every Google call. For each N: the first `apply`, a no-op `plan`, and an `apply` that changes
//! one deployment, each with its wall time, Google calls (the sandbox's per-method counters) and
//! Prefect calls (the tool's own debug log of every request it sends, so nothing stands between
//! the tool and the server to skew the times).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;

use crate::critical::{self, Costs};
use crate::env::Env;

/// One command of one N.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Google calls the sandbox served.
    pub google_calls: u64,
    /// Prefect requests the tool sent (retries included).
    pub prefect_calls: u64,
    /// Of those, reads (GET, and POST `.../filter`).
    pub prefect_reads: u64,
    /// Of those, repeats of a request the client retried (after a 503, a reset...).
    pub prefect_retries: u64,
    /// Answers that asked the client to come back later (429, 503).
    pub prefect_busy: u64,
    /// The server's answer time of every write, summed, seconds (refused ones included): the
    /// time SQLite's one writer spent on them when they do not overlap.
    pub prefect_write_seconds: f64,
    /// From the first Prefect write's start to the last one's answer, seconds (from the log's
    /// timestamps; 0 without writes).
    pub prefect_write_span: f64,
    /// The server's answer time of the slowest Prefect request, ms (from the same log).
    pub prefect_slowest_ms: u64,
    /// Google calls by discovery method.
    pub google_by_method: BTreeMap<String, u64>,
    /// Prefect calls by `METHOD path` (ids as `{id}`), each counted once however often the
    /// client retried it (a retry of the same write is not a second call).
    pub prefect_by_call: BTreeMap<String, u64>,
}

/// What one Prefect request line of the tool's debug log says.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `METHOD path`, ids as `{id}`.
    pub call: String,
    /// 1 for the first attempt, more for the client's retries of the same request.
    pub attempt: u32,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// The server's answer time, ms.
    pub elapsed_ms: u64,
    /// When the line was logged (the answer), when the line has a timestamp.
    pub at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The request of one line of the tool's debug log, `None` for any other line.
pub fn request(line: &str) -> Option<Request> {
    let call = prefect_call(line)?;
    let number = |name: &str| -> Option<u64> {
        let key = format!(" {name}=");
        let at = line.find(&key)? + key.len();
        line[at..].split_whitespace().next()?.parse().ok()
    };
    Some(Request {
        call,
        attempt: number("attempt").map_or(1, |a| a as u32),
        status: number("status").map(|s| s as u16),
        elapsed_ms: number("elapsed_ms").unwrap_or(0),
        at: line
            .split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
    })
}

/// The Prefect figures of one command's requests.
fn prefect_figures(requests: &[Request]) -> Measured {
    let mut m = Measured {
        seconds: 0.0,
        google_calls: 0,
        prefect_calls: requests.len() as u64,
        prefect_reads: 0,
        prefect_retries: 0,
        prefect_busy: 0,
        prefect_write_seconds: 0.0,
        prefect_write_span: 0.0,
        prefect_slowest_ms: 0,
        google_by_method: BTreeMap::new(),
        prefect_by_call: BTreeMap::new(),
    };
    let mut first: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut last: Option<chrono::DateTime<chrono::Utc>> = None;
    for r in requests {
        let read = is_read(&r.call);
        m.prefect_reads += u64::from(read);
        if r.attempt > 1 {
            m.prefect_retries += 1;
        } else {
            *m.prefect_by_call.entry(r.call.clone()).or_default() += 1;
        }
        m.prefect_busy += u64::from(matches!(r.status, Some(429 | 503)));
        m.prefect_slowest_ms = m.prefect_slowest_ms.max(r.elapsed_ms);
        if !read {
            m.prefect_write_seconds += r.elapsed_ms as f64 / 1000.0;
            if let Some(at) = r.at {
                let start = at - chrono::Duration::milliseconds(r.elapsed_ms as i64);
                first = Some(first.map_or(start, |f| f.min(start)));
                last = Some(last.map_or(at, |l| l.max(at)));
            }
        }
    }
    if let (Some(f), Some(l)) = (first, last) {
        m.prefect_write_span = (l - f).as_seconds_f64().max(0.0);
    }
    m
}

/// The figures of one N.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Deployments in the plan.
    pub deployments: usize,
    /// Schedules across them.
    pub schedules: usize,
    /// Flows they belong to.
    pub flows: usize,
    /// Steps of the first plan.
    pub steps: usize,
    /// The first apply (everything created).
    pub first_apply: Measured,
    /// The model floor of the first apply, seconds.
    pub critical_path: f64,
    /// first apply / critical path.
    pub apply_ratio: f64,
    /// The floor with the server doing the first apply's writes one after another (SQLite's
    /// one writer; `CriticalPath::with_serial_writes` of their answer times), seconds.
    pub serial_floor: f64,
    /// first apply / that floor.
    pub apply_ratio_serial: f64,
    /// `plan` with nothing to do.
    pub noop_plan: Measured,
    /// no-op plan wall time in round trips of Google latency.
    pub noop_round_trips: f64,
    /// `apply` after one deployment's parameters changed.
    pub change_one: Measured,
    /// Calls the change-one apply sent beyond what the no-op plan's reads sent, `METHOD path`.
    pub change_one_extra: BTreeMap<String, i64>,
    /// Whether those extra calls touch the changed deployment (and its flow) only.
    pub change_one_only_that: bool,
}

/// The scale section.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    /// Latency added to every Google call, seconds.
    pub latency: f64,
    /// Long-running operation time, seconds.
    pub op_delay: f64,
    /// Median Prefect round trip (`GET /health`), seconds.
    pub prefect_rtt: f64,
    /// One point per N that could be measured.
    pub points: Vec<Point>,
    /// The N that could not be, with the error (the others are still measured).
    pub errors: Vec<String>,
}

/// Deployments and schedules of a plan with `n` deployments: deployment `i` belongs to flow
/// `i % flows` (one flow per ten deployments); the even ones carry two schedules each (a yearly
/// cron, so the server schedules few runs), so that `n` schedules are spread across them.
/// Every name carries `n`: the plans of different N share no deployment or flow (before, the
/// N = 30 plan "updated" the N = 10 plan's deployments, so its first apply was not one).
pub fn generated_plan(template: &str, n: usize, suffix: &str, changed: bool) -> String {
    let flows = n.div_ceil(10).max(1);
    let tag = format!("{n}-{suffix}");
    let mut text = template
        .replace(
            "name: prefect-service-account",
            &format!("name: bs{n}-{suffix}"),
        )
        .replace("name: gcp-credentials", &format!("name: gcp-cred-{tag}"))
        .replace(
            "name: my-cloud-run-pool",
            &format!("name: scale-pool-{tag}"),
        )
        .replace(
            "service: prefect-worker",
            &format!("service: scale-worker-{tag}"),
        );
    // The worker's API key secret, one per plan (the default name would be shared).
    text = text.replace(
        "  allow_unauthenticated: false\n",
        &format!("  allow_unauthenticated: false\n  api_key_secret: scale-key-{tag}\n"),
    );
    let cut = text
        .find("deployments:")
        .expect("the guide has a deployments section");
    text.truncate(cut);
    text.push_str("deployments:\n");
    for i in 0..n {
        let schedules = match (n, i % 2) {
            (1, _) => 1,
            (_, 0) => 2,
            _ => 0,
        };
        let version = if changed && i == 0 { 2 } else { 1 };
        let _ = writeln!(
            text,
            "  - name: d{i:03}-{tag}\n    flow: scale-flow-{f}-{tag}\n    \
             entrypoint: flows/weather_flow.py:fetch_weather\n    \
             image: gcr.io/prefect-project/gcp-weather-image:latest\n    \
             parameters: {{i: {i}, version: {version}}}\n    work_queue: default",
            f = i % flows
        );
        if schedules > 0 {
            text.push_str("    schedules:\n");
            for s in 0..schedules {
                let _ = writeln!(
                    text,
                    "      - {{cron: \"{} 0 1 1 *\", timezone: UTC}}",
                    (i + s) % 60
                );
            }
        }
    }
    text
}

/// Schedules in a generated plan of `n` deployments.
pub fn schedules_of(n: usize) -> usize {
    if n == 1 { 1 } else { n.div_ceil(2) * 2 }
}

/// `METHOD path` of one line of the tool's debug log when it is a Prefect request, ids as
/// `{id}`; `None` for any other line.
pub fn prefect_call(line: &str) -> Option<String> {
    if !line.contains(" prefect api") {
        return None;
    }
    let field = |name: &str| -> Option<String> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        let rest = &line[at..];
        if let Some(quoted) = rest.strip_prefix('"') {
            Some(quoted[..quoted.find('"')?].to_string())
        } else {
            Some(rest.split_whitespace().next()?.to_string())
        }
    };
    let method = field("method")?;
    let path = field("path")?;
    let path: Vec<String> = path
        .split('/')
        .map(|seg| {
            if uuid::Uuid::parse_str(seg).is_ok() {
                "{id}".to_string()
            } else {
                seg.to_string()
            }
        })
        .collect();
    Some(format!("{method} {}", path.join("/")))
}

fn is_read(call: &str) -> bool {
    call.starts_with("GET ") || call.ends_with("/filter")
}

/// The two commands the sections measure, on a plan file, as a user runs them for a script
/// (`--json`).
#[derive(Debug, Clone, Copy)]
pub enum Cmd<'a> {
    /// `bootstrap plan -f FILE --json` (exit 2 is a plan with changes).
    Plan(&'a str),
    /// `bootstrap apply -f FILE --auto-approve --json`.
    Apply(&'a str),
}

impl<'a> Cmd<'a> {
    fn args(self) -> Vec<&'a str> {
        match self {
            Cmd::Plan(file) => vec!["plan", "-f", file, "--json"],
            Cmd::Apply(file) => vec!["apply", "-f", file, "--auto-approve", "--json"],
        }
    }

    /// The exit codes that are not a failure.
    fn codes(self) -> &'static [i32] {
        match self {
            Cmd::Plan(_) => &[0, 2],
            Cmd::Apply(_) => &[0],
        }
    }
}

/// Runs `cmd` with Prefect requests logged, and counts its calls.
async fn measured(env: &Env, cmd: Cmd<'_>, api_key: &str) -> Result<(Measured, String)> {
    let rust_log = "warn,gcp_auth=error,bootstrap_prefect=debug";
    let (m, stdout, _) = measured_with(env, cmd, api_key, rust_log).await?;
    Ok((m, stdout))
}

/// [`measured`] with this `RUST_LOG` (it must keep `bootstrap_prefect=debug`); also its stderr.
pub async fn measured_with(
    env: &Env,
    cmd: Cmd<'_>,
    api_key: &str,
    rust_log: &str,
) -> Result<(Measured, String, String)> {
    let run = run(env, cmd, api_key, Some(rust_log)).await?;
    let requests: Vec<Request> = run.stderr.lines().filter_map(request).collect();
    let m = Measured {
        seconds: run.seconds,
        google_calls: run.google_by_method.values().sum(),
        google_by_method: run.google_by_method,
        ..prefect_figures(&requests)
    };
    Ok((m, run.stdout, run.stderr))
}

/// One finished `bootstrap ARGS`: its wall time, output, and the Google calls it made.
pub struct Run {
    pub seconds: f64,
    pub stdout: String,
    pub stderr: String,
    pub google_by_method: BTreeMap<String, u64>,
}

/// Runs `cmd` (with `RUST_LOG` when given, else none) after resetting the sandbox's call
/// count. An exit code that is a failure is an error that shows the output.
pub async fn run(env: &Env, cmd: Cmd<'_>, api_key: &str, rust_log: Option<&str>) -> Result<Run> {
    let (args, codes) = (cmd.args(), cmd.codes());
    env.reset_calls().await?;
    let mut cmd = env.bootstrap_cmd(&args);
    cmd.env("PREFECT_API_KEY", api_key);
    if let Some(rust_log) = rust_log {
        cmd.env("RUST_LOG", rust_log);
    }
    let mut cmd = tokio::process::Command::from(cmd);
    let t = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .map_err(|_| anyhow!("bootstrap {} did not finish within 900 s", args.join(" ")))??;
    let seconds = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    if !codes.contains(&code) {
        let tail: Vec<&str> = stderr
            .lines()
            .filter(|l| prefect_call(l).is_none())
            .collect();
        bail!(
            "bootstrap {} exited {code}\n--- stdout\n{}\n--- stderr (Prefect request lines left out)\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            tail.join("\n")
        );
    }
    Ok(Run {
        seconds,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: stderr.into_owned(),
        google_by_method: env.calls().await?,
    })
}

/// The calls in `after` beyond those in `before` (Prefect `METHOD path` and Google methods).
fn extra(before: &Measured, after: &Measured) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let both = |m: &Measured| {
        let mut all: BTreeMap<String, i64> = BTreeMap::new();
        for (k, v) in &m.prefect_by_call {
            all.insert(format!("prefect {k}"), *v as i64);
        }
        for (k, v) in &m.google_by_method {
            all.insert(format!("google {k}"), *v as i64);
        }
        all
    };
    let (b, a) = (both(before), both(after));
    for k in b.keys().chain(a.keys()) {
        let d = a.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0);
        if d != 0 {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// Whether the extra calls of a one-deployment change are that deployment's own: one
/// deployment upsert (the deployment's name is in the body, not the path, so "only that one"
/// shows as a count of one) and nothing else. The flow's id comes from the batch read, so no
/// flow upsert (before issue #20 item 2 apply sent `POST /flows/` for it too).
pub fn only_one_deployment(extra: &BTreeMap<String, i64>) -> bool {
    extra.iter().all(|(k, v)| match k.as_str() {
        "prefect POST /deployments/" => *v <= 1,
        _ => *v <= 0,
    }) && extra.get("prefect POST /deployments/") == Some(&1)
}

/// Measures every N in `ns`.
pub async fn scale(
    env: &Env,
    ns: &[usize],
    suffix: &str,
    latency: Duration,
    op_delay: Duration,
) -> Result<Scale> {
    env.set_model_timings(latency, op_delay).await?;
    let prefect_rtt = env.prefect_rtt().await?;
    let template = std::fs::read_to_string(env.root.join("plans/guide.yaml"))
        .context("reading plans/guide.yaml")?;
    let api_key = format!("pnu_bench{}", uuid::Uuid::new_v4().simple());
    let costs = Costs {
        latency: latency.as_secs_f64(),
        op_delay: op_delay.as_secs_f64(),
        prefect_rtt,
    };
    let mut points = Vec::new();
    let mut errors = Vec::new();
    for &n in ns {
        eprintln!("    N = {n}");
        match point(env, &template, n, suffix, &api_key, &costs).await {
            Ok(p) => points.push(p),
            Err(e) => {
                eprintln!("    N = {n} failed (the other N go on)");
                errors.push(format!("N = {n}: {e:#}"));
            }
        }
    }
    Ok(Scale {
        latency: costs.latency,
        op_delay: costs.op_delay,
        prefect_rtt,
        points,
        errors,
    })
}

fn write_plan(env: &Env, name: &str, text: &str) -> Result<PathBuf> {
    let path = env.work.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The steps of a `bootstrap plan --json` document.
pub fn steps(json: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(json).context("`bootstrap plan --json` printed no JSON")?;
    Ok(v.get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

async fn point(
    env: &Env,
    template: &str,
    n: usize,
    suffix: &str,
    api_key: &str,
    costs: &Costs,
) -> Result<Point> {
    let file = write_plan(
        env,
        &format!("scale-{n}.yaml"),
        &generated_plan(template, n, suffix, false),
    )?;
    let changed = write_plan(
        env,
        &format!("scale-{n}-changed.yaml"),
        &generated_plan(template, n, suffix, true),
    )?;
    let f = |p: &Path| p.to_string_lossy().to_string();
    let (file, changed) = (f(&file), f(&changed));

    // The plan only feeds the model; it is not one of the figures.
    let (_, plan_json) = measured(env, Cmd::Plan(&file), api_key).await?;
    let plan_value: Value = serde_json::from_str(&plan_json).context("plan JSON")?;
    let steps_n = steps(&plan_json)?.len();
    let critical = critical::critical_path(&plan_value, costs)?;
    let (first_apply, _) = measured(env, Cmd::Apply(&file), api_key).await?;
    let (noop_plan, noop_json) = measured(env, Cmd::Plan(&file), api_key).await?;
    if !steps(&noop_json)?.is_empty() {
        bail!("the plan after apply still has changes: {noop_json}");
    }
    let (change_one, _) = measured(env, Cmd::Apply(&changed), api_key).await?;
    let change_one_extra = extra(&noop_plan, &change_one);
    // The server's own time for the first apply's writes (refused ones included), as if one
    // after another: SQLite's one writer cannot overlap them.
    let serial_floor = critical.with_serial_writes(first_apply.prefect_write_seconds);
    Ok(Point {
        serial_floor,
        apply_ratio_serial: first_apply.seconds / serial_floor,
        deployments: n,
        schedules: schedules_of(n),
        flows: n.div_ceil(10).max(1),
        steps: steps_n,
        critical_path: critical.seconds,
        apply_ratio: first_apply.seconds / critical.seconds,
        noop_round_trips: noop_plan.seconds / costs.latency,
        change_one_only_that: only_one_deployment(&change_one_extra),
        change_one_extra,
        first_apply,
        noop_plan,
        change_one,
    })
}

/// The scale table.
pub fn table(s: &Scale) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "scale (latency {:.0} ms per Google call, operations {:.1} s, Prefect round trip {:.1} ms)",
        s.latency * 1000.0,
        s.op_delay,
        s.prefect_rtt * 1000.0
    );
    let _ = writeln!(
        o,
        "  {:>5} {:>6} | {:>8} {:>7} {:>7} {:>6} | {:>8} {:>6} {:>8} {:>7} {:>7} {:>7} | {:>8} {:>7} {:>7} {:>6}",
        "N",
        "sched",
        "plan s",
        "RTs",
        "google",
        "prefect",
        "apply s",
        "x floor",
        "x serial",
        "google",
        "prefect",
        "retried",
        "1-chg s",
        "extra",
        "only it",
        ""
    );
    for p in &s.points {
        let extra: i64 = p.change_one_extra.values().filter(|v| **v > 0).sum();
        let _ = writeln!(
            o,
            "  {:>5} {:>6} | {:>8.3} {:>7.2} {:>7} {:>6} | {:>8.2} {:>6.2}x {:>7.2}x {:>7} {:>7} {:>7} | {:>8.3} {:>7} {:>7}",
            p.deployments,
            p.schedules,
            p.noop_plan.seconds,
            p.noop_round_trips,
            p.noop_plan.google_calls,
            p.noop_plan.prefect_calls,
            p.first_apply.seconds,
            p.apply_ratio,
            p.apply_ratio_serial,
            p.first_apply.google_calls,
            p.first_apply.prefect_calls,
            p.first_apply.prefect_retries,
            p.change_one.seconds,
            extra,
            if p.change_one_only_that { "yes" } else { "NO" },
        );
        let _ = writeln!(
            o,
            "        apply: floor {:.2} s; with the server's time for its writes one after another \
             {:.2} s; Prefect writes from {:.2} s of server time spanned {:.2} s; {} answers \
             429/503",
            p.critical_path,
            p.serial_floor,
            p.first_apply.prefect_write_seconds,
            p.first_apply.prefect_write_span,
            p.first_apply.prefect_busy,
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = include_str!("../../../plans/guide.yaml");

    #[test]
    fn generated_plans_have_n_deployments_and_schedules() {
        let text = generated_plan(GUIDE, 10, "abcd", false);
        assert_eq!(text.matches("\n  - name: d0").count(), 10);
        assert_eq!(text.matches("cron:").count(), schedules_of(10));
        assert_eq!(schedules_of(10), 10);
        assert_eq!(schedules_of(100), 100);
        assert!(text.contains("name: bs10-abcd"));
        // No name is shared between two N (each N's first apply creates everything).
        let other = generated_plan(GUIDE, 30, "abcd", false);
        for line in text
            .lines()
            .filter(|l| l.contains("name: ") || l.contains("flow: "))
        {
            assert!(!other.contains(line.trim()), "{line} is in both plans");
        }
        assert!(text.contains("api_key_secret: scale-key-10-abcd"));
        assert!(!text.contains("gcp-weather-deploy"));
        let changed = generated_plan(GUIDE, 10, "abcd", true);
        let diff: Vec<_> = text
            .lines()
            .zip(changed.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(diff.len(), 1, "only one deployment changes: {diff:?}");
        assert_eq!(
            generated_plan(GUIDE, 1, "x", false)
                .matches("cron:")
                .count(),
            1
        );
    }

    #[test]
    fn prefect_log_lines_become_calls() {
        let line = "2026-12-01T21:00:00.000Z DEBUG prefect api method=GET \
                    path=\"/deployments/0b6c5d0e-9a1c-4c8e-8d57-1f3e9e8f0a11\" status=200 OK \
                    elapsed_ms=3 attempt=1";
        assert_eq!(prefect_call(line).as_deref(), Some("GET /deployments/{id}"));
        let r = request(line).expect("a request");
        assert_eq!((r.attempt, r.status, r.elapsed_ms), (1, Some(200), 3));
        assert!(r.at.is_some());
        let err =
            "DEBUG prefect api transport error method=POST path=\"/flows/\" attempt=1 error=reset";
        assert_eq!(prefect_call(err).as_deref(), Some("POST /flows/"));
        assert_eq!(prefect_call("DEBUG Google API call method=x"), None);
        assert!(is_read("POST /deployments/filter") && is_read("GET /health"));
        assert!(!is_read("POST /deployments/"));
    }

    /// Regression: the scale check "a one-deployment change sends calls for that deployment
    /// only" said NO at N = 10 because the client's retry of the same upsert after a 503 was
    /// counted as a second call. A retry is now counted as a retry, not as a call.
    #[test]
    fn a_retried_write_is_one_call() {
        let log = "\
2026-12-06T05:00:00.100Z DEBUG prefect api method=POST path=\"/deployments/filter\" status=200 OK elapsed_ms=5 attempt=1
2026-12-06T05:00:00.300Z DEBUG prefect api method=POST path=\"/deployments/\" status=503 Service Unavailable elapsed_ms=100 attempt=1
2026-12-06T05:00:01.000Z DEBUG prefect api transport error method=POST path=\"/deployments/\" attempt=2 error=reset
2026-12-06T05:00:02.000Z DEBUG prefect api method=POST path=\"/deployments/\" status=201 Created elapsed_ms=200 attempt=3
2026-12-06T05:00:02.001Z DEBUG something else
";
        let requests: Vec<Request> = log.lines().filter_map(request).collect();
        let m = prefect_figures(&requests);
        assert_eq!(m.prefect_calls, 4, "requests sent, retries included");
        assert_eq!(
            (m.prefect_retries, m.prefect_busy, m.prefect_reads),
            (2, 1, 1)
        );
        assert_eq!(m.prefect_by_call.get("POST /deployments/"), Some(&1));
        assert!((m.prefect_write_seconds - 0.3).abs() < 1e-9);
        // From the first write's start (00.300 - 100 ms) to the last answer (02.000).
        assert!(
            (m.prefect_write_span - 1.8).abs() < 1e-9,
            "{}",
            m.prefect_write_span
        );
        let before = prefect_figures(&requests[..1]);
        let e = extra(&before, &m);
        assert!(only_one_deployment(&e), "{e:?}");
    }

    #[test]
    fn one_deployment_change_is_recognised() {
        let m = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        assert!(only_one_deployment(&m(&[(
            "prefect POST /deployments/",
            1
        )])));
        // The flow's id is known from the batch read: a flow upsert is one call too many.
        assert!(!only_one_deployment(&m(&[
            ("prefect POST /flows/", 1),
            ("prefect POST /deployments/", 1)
        ])));
        assert!(!only_one_deployment(&m(&[(
            "prefect POST /deployments/",
            2
        )])));
        assert!(!only_one_deployment(&m(&[
            ("prefect POST /deployments/", 1),
            ("prefect GET /deployments/name/f/other", 1)
        ])));
        assert!(
            !only_one_deployment(&m(&[])),
            "no write at all is not a change"
        );
    }
}
