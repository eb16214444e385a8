//! `build:` on a 1,000-file context (issue #18 item 4): the guide's plan with its deployment
//! built from a generated folder instead of a ready image, against the sandbox's builds (Cloud
//! Run `:uploadSource` + `builds:submit`, Artifact Registry) with latency on every Google call.
//! Measured: a no-change `plan` (the context is hashed every time to know whether the image is
//! stale; the tool's own debug line gives the hashing time), then an `apply` after one file
//! changed (hash, upload, remote build, deployment update), each with its Google calls.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::env::Env;
use crate::scale::{self, Cmd, Measured, steps};

/// Files in the generated context (the figure).
pub const FILES: usize = 1000;

/// One command of the section, with the hashing time the tool logged.
#[derive(Debug, Clone, Serialize)]
pub struct Hashed {
    /// Wall time, calls.
    pub command: Measured,
    /// Files the tool hashed (the Dockerfile included).
    pub files: Option<u64>,
    /// Time the tool took to walk and hash the context, ms.
    pub hash_ms: Option<u64>,
}

/// The build section.
#[derive(Debug, Clone, Serialize)]
pub struct BuildFigures {
    /// Files written into the context (its Dockerfile is generated on top).
    pub files: usize,
    /// Their total size, bytes.
    pub bytes: u64,
    /// Latency added to every Google call, seconds.
    pub latency: f64,
    /// Long-running operation time, seconds.
    pub op_delay: f64,
    /// The first apply (everything created, the first build).
    pub first_apply: Hashed,
    /// `plan` with nothing changed.
    pub noop_plan: Hashed,
    /// `apply` after one file of the context changed.
    pub change_one_file: Hashed,
    /// The step the changed file planned (`~ image: source changed (1 files)`).
    pub change_detail: String,
}

/// Writes a context of `files` files: the flow, and modules of about 2 KB in 20 folders.
pub fn write_context(dir: &Path, files: usize) -> Result<u64> {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).with_context(|| format!("creating {}", flows.display()))?;
    let flow = "from prefect import flow\n\n\n@flow(log_prints=True)\n\
                def fetch_weather(lat: float = 0.0, lon: float = 0.0):\n    print(lat, lon)\n";
    std::fs::write(flows.join("weather_flow.py"), flow)?;
    let mut bytes = flow.len() as u64;
    for i in 1..files {
        let pkg = dir.join(format!("lib/pkg{:02}", i % 20));
        std::fs::create_dir_all(&pkg)?;
        let mut text = String::new();
        for line in 0..40 {
            let _ = writeln!(text, "VALUE_{i}_{line} = {:>40}", i * 1000 + line);
        }
        bytes += text.len() as u64;
        std::fs::write(pkg.join(format!("mod{i:04}.py")), text)?;
    }
    Ok(bytes)
}

/// The guide's plan (one deployment, via the scale section's generator) with that deployment
/// built from `context` instead of the guide's ready image.
pub fn build_plan(template: &str, suffix: &str, context: &str) -> Result<String> {
    let text = scale::generated_plan(template, 1, &format!("b{suffix}"), false);
    let image = "    image: gcr.io/prefect-project/gcp-weather-image:latest\n";
    if !text.contains(image) {
        bail!("the guide's deployment image line moved; update crates/bench/src/build.rs");
    }
    Ok(text.replace(
        image,
        &format!("    build:\n      context: {context}\n      repository: bench-{suffix}\n"),
    ))
}

/// Files and time of the tool's `build context hashed` debug line, if it logged one.
pub fn hashed(stderr: &str) -> (Option<u64>, Option<u64>) {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..].split_whitespace().next()?.parse().ok()
    };
    stderr
        .lines()
        .filter(|l| l.contains("build context hashed"))
        .map(|l| (field(l, "files"), field(l, "elapsed_ms")))
        .next_back()
        .unwrap_or((None, None))
}

async fn command(env: &Env, cmd: Cmd<'_>, api_key: &str) -> Result<(Hashed, String)> {
    let rust_log = "warn,gcp_auth=error,bootstrap_prefect=debug,bootstrap_engine::builds=debug";
    let (m, stdout, stderr) = scale::measured_with(env, cmd, api_key, rust_log).await?;
    let (files, hash_ms) = hashed(&stderr);
    Ok((
        Hashed {
            command: m,
            files,
            hash_ms,
        },
        stdout,
    ))
}

/// Measures the section.
pub async fn build(
    env: &Env,
    suffix: &str,
    latency: Duration,
    op_delay: Duration,
) -> Result<BuildFigures> {
    env.set_model_timings(latency, op_delay).await?;
    let template = std::fs::read_to_string(env.root.join("plans/guide.yaml"))
        .context("reading plans/guide.yaml")?;
    let ctx = env.work.join("build-ctx");
    let bytes = write_context(&ctx, FILES)?;
    let file = env.work.join("build.yaml");
    std::fs::write(&file, build_plan(&template, suffix, "build-ctx")?)
        .with_context(|| format!("writing {}", file.display()))?;
    let file = file.to_string_lossy().to_string();
    let api_key = format!("pnu_bench{}", uuid::Uuid::new_v4().simple());

    let (first_apply, _) = command(env, Cmd::Apply(&file), &api_key).await?;
    let (noop_plan, json) = command(env, Cmd::Plan(&file), &api_key).await?;
    if !steps(&json)?.is_empty() {
        bail!("the plan after apply still has changes: {json}");
    }
    let changed = ctx.join("lib/pkg01/mod0001.py");
    let mut text = std::fs::read_to_string(&changed)?;
    text.push_str("CHANGED = True\n");
    std::fs::write(&changed, text)?;
    let (_, json) = command(env, Cmd::Plan(&file), &api_key).await?;
    let planned = steps(&json)?;
    if planned.is_empty() {
        bail!("a changed file of the context planned no rebuild");
    }
    let change_detail = planned
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let (change_one_file, _) = command(env, Cmd::Apply(&file), &api_key).await?;
    Ok(BuildFigures {
        files: FILES,
        bytes,
        latency: latency.as_secs_f64(),
        op_delay: op_delay.as_secs_f64(),
        first_apply,
        noop_plan,
        change_one_file,
        change_detail,
    })
}

/// The section's lines in the table.
pub fn table(b: &BuildFigures) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "build: on a {}-file context ({:.1} MB; latency {:.0} ms per Google call, operations {:.1} s)",
        b.files,
        b.bytes as f64 / 1e6,
        b.latency * 1000.0,
        b.op_delay
    );
    let _ = writeln!(
        o,
        "  {:<26}{:>9}{:>10}{:>9}{:>9}",
        "command", "wall s", "hash ms", "google", "prefect"
    );
    for (name, h) in [
        ("apply (first build)", &b.first_apply),
        ("plan (no change)", &b.noop_plan),
        ("apply (one file changed)", &b.change_one_file),
    ] {
        let _ = writeln!(
            o,
            "  {:<26}{:>9.3}{:>10}{:>9}{:>9}",
            name,
            h.command.seconds,
            h.hash_ms
                .map(|v| v.to_string())
                .unwrap_or_else(|| "n/a".into()),
            h.command.google_calls,
            h.command.prefect_calls
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = include_str!("../../../plans/guide.yaml");

    #[test]
    fn the_build_plan_builds_its_deployment_from_the_context() {
        let text = build_plan(GUIDE, "abcd", "build-ctx").unwrap();
        assert!(
            text.contains("    build:\n      context: build-ctx\n      repository: bench-abcd\n")
        );
        assert!(!text.contains("gcp-weather-image"));
        assert_eq!(text.matches("\n  - name: ").count(), 1);
    }

    #[test]
    fn the_context_has_the_files_asked_for() {
        let dir = std::env::temp_dir().join(format!("bench-ctx-{}", std::process::id()));
        let bytes = write_context(&dir, 50).unwrap();
        let mut n = 0;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    n += 1;
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(n, 50);
        assert!(bytes > 50 * 1000);
    }

    #[test]
    fn the_hashing_line_is_read() {
        let err = "2026-12-06T03:00:00Z DEBUG bootstrap_engine::builds: build context hashed files=1001 elapsed_ms=42\n";
        assert_eq!(hashed(err), (Some(1001), Some(42)));
        assert_eq!(hashed("nothing"), (None, None));
    }
}
