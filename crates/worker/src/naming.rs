//! Cloud Run job names for flow runs.
//!
//! prefect-gcp 0.6.22 names jobs after the `name` job variable, rendered with
//! `{{ ctx.flow.* }}` / `{{ ctx.flow_run.* }}` by Prefect's base worker
//! (`BaseJobConfiguration.prepare_for_flow_run`, prefect 3.9.1 `workers/base.py`), or after the
//! flow run's name:
//! - v2: `slugify(name, ≤55)-<7 random hex>` (`cloud_run_v2.py`, `job_name`);
//! - v1: the job body's `metadata.name` verbatim when the template sets it (the default
//!   template has `metadata.name: "{{ name }}"`), else `slugify(name, ≤30)-<32 random hex>`
//!   (`cloud_run.py`, `_populate_name_if_not_present`).
//!
//! Deliberate difference: where prefect-gcp adds random hex, this worker adds the flow run id
//! (`slug ≤30 - <32 hex>`), so the same run always gets the same job (a retried or restarted
//! submission adopts its job instead of creating a second one) and two runs never collide
//! (prefect-gcp#254). A v1 name used verbatim is kept verbatim, as in prefect-gcp; it must be
//! a valid job id, and a job of that name that belongs to another run is not adopted.

use bootstrap_ids::RunJobName;
use bootstrap_prefect::{Flow, FlowRun};
use serde_json::{Value, json};

use super::template::{apply_values, py_str};

/// Cloud Run's limit on job names.
pub const MAX_JOB_NAME: usize = 63;

/// Renders `{{ ctx.flow.* }}` and `{{ ctx.flow_run.* }}` in a `name` job variable, as Prefect's
/// base worker does (`apply_values(name, {"ctx": {"flow": ..., "flow_run": ...}})`): a name that
/// is one placeholder with no value stays as written; embedded unknown placeholders become "".
pub fn render_name(name: &str, flow: Option<&Flow>, run: &FlowRun) -> String {
    let ctx = json!({
        "ctx": {
            "flow": flow.and_then(|f| serde_json::to_value(f).ok()).unwrap_or_else(|| json!({})),
            "flow_run": serde_json::to_value(run).unwrap_or_else(|_| json!({})),
        }
    });
    match apply_values(&Value::String(name.to_string()), &ctx, &|_| None) {
        None => name.to_string(),
        Some(Value::String(s)) => s,
        Some(other) => py_str(&other),
    }
}

/// Lowercase, `[a-z0-9-]` only, runs of other characters collapsed to one `-`, no dashes at the
/// ends, at most `max` characters.
pub fn slug(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.truncate(max);
    out.trim_end_matches('-').to_string()
}

/// The job name for a flow run: `<slug of name, ≤30>-<flow run id as 32 hex>`; prefixed
/// `prefect-` when the slug does not start with a letter. The same run always gets the same
/// name, so a retried or restarted submission finds its job instead of making a second one.
pub fn job_name(name: &str, flow_run_id: uuid::Uuid) -> String {
    let hex = flow_run_id.simple().to_string();
    let room = MAX_JOB_NAME - hex.len() - 1;
    let mut base = slug(name, room.min(30));
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = slug(&format!("prefect-{base}"), room.min(30));
    }
    format!("{base}-{hex}")
}

/// A v1 job body's own `metadata.name`, used verbatim as prefect-gcp does; the error says why
/// it is not a job id Cloud Run accepts.
pub fn verbatim_job_name(name: &str) -> Result<String, String> {
    RunJobName::parse(name)
        .map(|n| n.as_str().to_string())
        .map_err(|e| {
            format!(
                "the job name `{name}` (the `name` job variable, used as the v1 job's \
                 `metadata.name` as prefect-gcp does) is not a valid Cloud Run job name: {e}; \
                 use lowercase letters, digits and hyphens, or unset `name` for a generated one"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> FlowRun {
        serde_json::from_value(json!({
            "id": "0b7c5a3e-1111-4222-8333-944455556666", "name": "chirpy-cuttlefish",
            "flow_id": "0b7c5a3e-1111-4222-8333-944455550000", "parameters": {"n": 3},
            "tags": ["a", "b"]
        }))
        .expect("run")
    }

    #[test]
    fn ctx_placeholders_render_like_prefect() {
        let flow: Flow = serde_json::from_value(
            json!({"id": "0b7c5a3e-1111-4222-8333-944455550000", "name": "hello-flow"}),
        )
        .expect("flow");
        let r = run();
        assert_eq!(
            render_name(
                "{{ ctx.flow.name }}-{{ ctx.flow_run.name }}",
                Some(&flow),
                &r
            ),
            "hello-flow-chirpy-cuttlefish"
        );
        assert_eq!(
            render_name("{{ ctx.flow_run.name }}", None, &r),
            "chirpy-cuttlefish"
        );
        assert_eq!(
            render_name("n{{ ctx.flow_run.parameters.n }}", None, &r),
            "n3"
        );
        // A lone unknown placeholder is kept as written (prefect: NotSet leaves the name).
        assert_eq!(render_name("{{ ctx.nope }}", None, &r), "{{ ctx.nope }}");
        assert_eq!(render_name("x-{{ ctx.nope }}", None, &r), "x-");
        assert_eq!(render_name("plain", None, &r), "plain");
    }

    #[test]
    fn verbatim_names_must_be_job_ids() {
        assert_eq!(verbatim_job_name("my-job").as_deref(), Ok("my-job"));
        let e = verbatim_job_name("My Job").expect_err("invalid");
        assert!(
            e.contains("`My Job`") && e.contains("not a valid Cloud Run job name"),
            "{e}"
        );
        assert!(verbatim_job_name(&"a".repeat(64)).is_err());
    }
}
