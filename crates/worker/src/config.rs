//! From a rendered job configuration to the Cloud Run job to create, as prefect-gcp's
//! `CloudRunWorkerJobV2Configuration` / `CloudRunWorkerJobConfiguration.prepare_for_flow_run` do:
//! environment, labels, command, image, timeout, and a job name derived from the flow run id.

use bootstrap_prefect::{Deployment, Flow, FlowRun, WorkPool};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Map, Value, json};

use super::naming;
use super::template::{Object, py_str};

/// The Prefect version whose worker protocol this worker follows (the `prefect.io/version` label).
pub const PREFECT_PROTOCOL_VERSION: &str = "3.9.1";
/// Image used when the job body names none: prefect-gcp uses `docker.io/` + Prefect's
/// `get_prefect_image_name()`, i.e. the worker's own Prefect and Python versions
/// (`cloud_run_v2.py` `_populate_image_if_not_present`; measured `3.9.1-python3.11`). This worker
/// has no Prefect of its own: it pins the version whose protocol it follows
/// ([`PREFECT_PROTOCOL_VERSION`], the same value as the `prefect.io/version` label) and the
/// project's Python, so a job's Prefect never floats ahead of what the worker was tested with
/// (the server's `/api/admin/version` could differ from the client protocol, and Prefect Cloud
/// reports no OSS version).
pub const DEFAULT_IMAGE: &str = "docker.io/prefecthq/prefect:3.9.1-python3.11";
pub use super::naming::{MAX_JOB_NAME, job_name, slug};
/// Label marking jobs this worker may delete once finished (absent when `keep_job` is set).
/// It counts within Cloud Run's 64 labels: a Prefect label makes room for it.
pub const CLEANUP_LABEL: &str = "bootstrap-worker-cleanup";
/// Cloud Run's limit on labels of a resource (prefect-gcp `_GCP_LABEL_MAX_COUNT`).
const MAX_LABELS: usize = 64;
/// prefect-gcp's timeout bounds (pydantic `gt=0`, `le=...`): v2 604800 s (7 days), v1 3600 s.
const MAX_TIMEOUT_V2: u64 = 604_800;
const MAX_TIMEOUT_V1: u64 = 3_600;

/// The two Cloud Run pool types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// `cloud-run-v2`: the Run Admin v2 API.
    V2,
    /// `cloud-run`: the Knative-style v1 API on regional hosts.
    V1,
}

impl PoolKind {
    /// The kind for a work pool type, `None` for types this worker cannot run.
    pub fn from_pool_type(pool_type: &str) -> Option<Self> {
        match pool_type {
            "cloud-run-v2" => Some(PoolKind::V2),
            "cloud-run" => Some(PoolKind::V1),
            _ => None,
        }
    }
}

/// Credentials from the pool's `credentials` block. The key never prints.
#[derive(Clone, Default)]
pub struct GcpCredentials {
    /// The block's `project` (or the key's `project_id`).
    pub project: Option<String>,
    /// The service-account key JSON, when the block holds one.
    pub service_account_info: Option<SecretString>,
}

impl std::fmt::Debug for GcpCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpCredentials")
            .field("project", &self.project)
            .field(
                "service_account_info",
                &self.service_account_info.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The objects a flow run's configuration is prepared with.
pub struct RunContext<'a> {
    /// The run.
    pub flow_run: &'a FlowRun,
    /// Its flow.
    pub flow: Option<&'a Flow>,
    /// Its deployment.
    pub deployment: Option<&'a Deployment>,
    /// The pool.
    pub pool: &'a WorkPool,
    /// This worker's name.
    pub worker_name: &'a str,
    /// The worker's own Prefect settings passed to the container (`PREFECT_API_URL`, and the
    /// API key or auth string when set), in this order.
    pub worker_env: Vec<(String, SecretString)>,
}

/// Everything needed to run one flow run as a Cloud Run job.
pub struct JobConfig {
    /// Which API.
    pub kind: PoolKind,
    /// Deterministic job name (see [`job_name`]).
    pub job_name: String,
    /// Region.
    pub region: String,
    /// Keep the job after the run.
    pub keep_job: bool,
    /// Cloud Run's task timeout in seconds.
    pub timeout: u64,
    /// Pool credentials.
    pub credentials: GcpCredentials,
    /// The job body to create. It may carry the API key in its env: never log it.
    pub body: Value,
}

impl std::fmt::Debug for JobConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobConfig")
            .field("kind", &self.kind)
            .field("job_name", &self.job_name)
            .field("region", &self.region)
            .field("keep_job", &self.keep_job)
            .field("timeout", &self.timeout)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// GCP label rules: keys start with a letter; keys and values `[a-z0-9_-]`, ≤63 characters.
pub fn sanitize_labels(labels: &Object) -> Object {
    let clean = |s: &str| -> String {
        s.to_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let mut out = Object::new();
    for (k, v) in labels {
        let key: String = clean(k)
            .trim_start_matches(|c: char| !c.is_ascii_lowercase())
            .chars()
            .take(63)
            .collect();
        if key.is_empty() {
            continue;
        }
        let value: String = clean(&py_str(v)).chars().take(63).collect();
        out.insert(key, Value::String(value));
    }
    out
}

/// Sanitised Prefect labels merged under the body's own (which win); at most 64, dropping the
/// last Prefect labels first (prefect-gcp `merge_labels_for_gcp`). `ours` (the cleanup label)
/// counts as one of the body's own.
fn merge_labels(prefect: &Object, existing: Option<&Value>, ours: &[(&str, &str)]) -> Value {
    let mut existing = existing
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in ours {
        existing.insert((*k).to_string(), json!(v));
    }
    let sanitized = sanitize_labels(prefect);
    let mut merged = sanitized.clone();
    for (k, v) in &existing {
        merged.insert(k.clone(), v.clone());
    }
    let ours: Vec<&String> = sanitized
        .keys()
        .filter(|k| !existing.contains_key(*k))
        .collect();
    let excess = merged.len().saturating_sub(MAX_LABELS);
    for k in ours.iter().rev().take(excess) {
        merged.shift_remove(*k);
    }
    Value::Object(merged)
}

/// POSIX-shell word splitting (Python's `shlex.split`) for `command` and `args` strings.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed quote in `{s}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unclosed quote in `{s}`")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed quote in `{s}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(format!("trailing backslash in `{s}`")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Python's `datetime.isoformat()` of a UTC time (`2026-01-02T03:04:05.123456+00:00`).
fn py_isoformat(t: chrono::DateTime<chrono::Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

fn as_u64(v: Option<&Value>, what: &str, default: u64) -> Result<u64, String> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("`{what}` must be a positive whole number, not {n}")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{what}` must be a whole number, not `{s}`")),
        Some(other) => Err(format!("`{what}` must be a whole number, not {other}")),
    }
}

/// Credentials from a resolved `credentials` value (a GcpCredentials block's data, or nothing).
pub fn credentials_from(v: &Value) -> Result<GcpCredentials, String> {
    credentials_of(Some(v))
}

fn credentials_of(v: Option<&Value>) -> Result<GcpCredentials, String> {
    let Some(Value::Object(block)) = v else {
        return Ok(GcpCredentials::default());
    };
    let info =
        match block.get("service_account_info") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(obj @ Value::Object(_)) => Some(obj.to_string()),
            Some(_) => return Err(
                "the credentials block's service_account_info is neither an object nor JSON text"
                    .into(),
            ),
        };
    let file = match block.get("service_account_file") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err("the credentials block's service_account_file is not a path".into());
        }
    };
    // prefect-gcp's GcpCredentials validators (credentials.py `_provide_one_service_account_source`,
    // `_check_service_account_file`): one source only; a file that exists (`~` expanded).
    let info = match (info, file) {
        (Some(_), Some(_)) => {
            return Err("the credentials block sets both service_account_info and \
                        service_account_file; only one of them can be specified at once"
                .into());
        }
        (info, None) => info,
        (None, Some(path)) => Some(read_key_file(&path)?),
    };
    let key_project = info.as_deref().and_then(|s| {
        serde_json::from_str::<Value>(s)
            .ok()?
            .get("project_id")?
            .as_str()
            .map(str::to_string)
    });
    let project = block
        .get("project")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .or(key_project);
    Ok(GcpCredentials {
        project,
        service_account_info: info.map(SecretString::from),
    })
}

/// The text of a `service_account_file` (read by the worker, which is where prefect-gcp's worker
/// reads it too). The key stays in memory.
fn read_key_file(path: &str) -> Result<String, String> {
    let expanded = match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(rest))
            .unwrap_or_else(|| path.into()),
        None => path.into(),
    };
    let text = std::fs::read_to_string(&expanded).map_err(|e| {
        format!(
            "the credentials block's service_account_file `{}` cannot be read: {e} \
             (the path is read on the worker's machine)",
            expanded.display()
        )
    })?;
    if serde_json::from_str::<Value>(&text).is_err() {
        return Err(format!(
            "the credentials block's service_account_file `{}` is not a JSON key file",
            expanded.display()
        ));
    }
    Ok(text)
}

/// `timeout` within prefect-gcp's bounds for the pool type.
fn check_timeout(kind: PoolKind, t: u64) -> Result<u64, String> {
    let (max, what) = match kind {
        PoolKind::V2 => (
            MAX_TIMEOUT_V2,
            "604800 seconds (7 days) on cloud-run-v2 pools",
        ),
        PoolKind::V1 => (MAX_TIMEOUT_V1, "3600 seconds (1 hour) on cloud-run pools"),
    };
    if t == 0 || t > max {
        return Err(format!(
            "job variable `timeout` is {t}; it must be greater than 0 and at most {what}, \
             as prefect-gcp requires"
        ));
    }
    Ok(t)
}

/// A region of the right form (`us-central1`, `europe-west10`): Google decides whether it
/// exists (an unknown one is its 404, reported on the run); new regions need no update here.
fn check_region(r: &str) -> Result<(), String> {
    bootstrap_ids::Region::parse(r)
        .map(drop)
        .map_err(|e| format!("job variable `region` is `{r}`: {e}"))
}

/// The container env list entries for a `SecretKeySelector` (`{secret, version}`).
fn secret_ref(kind: PoolKind, name: &str, selector: &Value) -> Result<Value, String> {
    let secret = selector
        .get("secret")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{name}`: the secret selector has no `secret`"))?;
    let version = selector
        .get("version")
        .map(py_str)
        .unwrap_or_else(|| "latest".into());
    Ok(match kind {
        PoolKind::V2 => {
            json!({"name": name, "valueSource": {"secretKeyRef": {"secret": secret, "version": version}}})
        }
        PoolKind::V1 => {
            json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": version}}})
        }
    })
}

/// Prepares a rendered configuration (template applied, references resolved) for one run.
pub fn prepare(
    kind: PoolKind,
    rendered: Object,
    ctx: &RunContext<'_>,
) -> Result<JobConfig, String> {
    let mut cfg = rendered;
    let Some(Value::Object(mut body)) = cfg.remove("job_body") else {
        return Err("the job configuration has no `job_body` object".into());
    };
    let run = ctx.flow_run;
    // Environment: the worker's settings, the run's identity, then the configuration's env.
    let mut env = Map::new();
    for (k, v) in &ctx.worker_env {
        env.insert(k.clone(), Value::String(v.expose_secret().to_string()));
    }
    env.insert("PREFECT__FLOW_RUN_ID".into(), json!(run.id.to_string()));
    env.insert("PREFECT__WORKER_NAME".into(), json!(ctx.worker_name));
    env.insert("PREFECT__FLOW_ID".into(), json!(run.flow_id.to_string()));
    if let Some(flow) = ctx.flow {
        env.insert("PREFECT__FLOW_NAME".into(), json!(flow.name));
    }
    if let Some(d) = ctx.deployment {
        env.insert("PREFECT__DEPLOYMENT_ID".into(), json!(d.id.to_string()));
        env.insert("PREFECT__DEPLOYMENT_NAME".into(), json!(d.name));
    }
    match cfg.get("env") {
        Some(Value::Object(e)) => {
            for (k, v) in e {
                env.insert(k.clone(), v.clone());
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => return Err("`env` must be an object of names to values".into()),
    }
    // Labels: Prefect's, then the configuration's.
    let mut labels = Map::new();
    let mut put = |k: &str, v: String| {
        labels.insert(format!("prefect.io/{k}"), Value::String(v));
    };
    put("flow-run-id", run.id.to_string());
    put("flow-run-name", run.name.clone());
    put("version", PREFECT_PROTOCOL_VERSION.into());
    put("work-pool-name", ctx.pool.name.clone());
    put("work-pool-id", ctx.pool.id.to_string());
    put("worker-name", ctx.worker_name.to_string());
    if let Some(flow) = ctx.flow {
        put("flow-id", flow.id.to_string());
        put("flow-name", flow.name.clone());
    }
    if let Some(d) = ctx.deployment {
        put("deployment-id", d.id.to_string());
        put("deployment-name", d.name.clone());
        if let Some(updated) = d.updated {
            put("deployment-updated", py_isoformat(updated));
        }
    }
    if let Some(Value::Object(l)) = cfg.get("labels") {
        for (k, v) in l {
            labels.insert(k.clone(), v.clone());
        }
    }
    let name = match cfg.get("name") {
        Some(Value::String(s)) if !s.is_empty() => naming::render_name(s, ctx.flow, run),
        _ => run.name.clone(),
    };
    let key_secret = cfg.get("prefect_api_key_secret").filter(|v| !v.is_null());
    let auth_secret = cfg
        .get("prefect_api_auth_string_secret")
        .filter(|v| !v.is_null());
    let from_secrets = match cfg.get("env_from_secrets") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    // Env list: plain values (minus those a secret replaces), then secret references.
    let mut entries = Vec::new();
    for (k, v) in &env {
        let replaced = (k == "PREFECT_API_KEY"
            && (key_secret.is_some() || (kind == PoolKind::V2 && from_secrets.contains_key(k))))
            || (k == "PREFECT_API_AUTH_STRING"
                && (auth_secret.is_some()
                    || (kind == PoolKind::V2 && from_secrets.contains_key(k))));
        if replaced || v.is_null() {
            continue;
        }
        entries.push(json!({"name": k, "value": py_str(v)}));
    }
    if kind == PoolKind::V2 {
        for (k, sel) in &from_secrets {
            entries.push(secret_ref(kind, k, sel)?);
        }
    }
    if let Some(sel) = key_secret {
        entries.push(secret_ref(kind, "PREFECT_API_KEY", sel)?);
    }
    if let Some(sel) = auth_secret {
        entries.push(secret_ref(kind, "PREFECT_API_AUTH_STRING", sel)?);
    }
    let timeout = check_timeout(kind, as_u64(cfg.get("timeout"), "timeout", 600)?)?;
    let keep_job = match cfg.get("keep_job") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        _ => false,
    };
    let ours: &[(&str, &str)] = if keep_job {
        &[]
    } else {
        &[(CLEANUP_LABEL, "true")]
    };
    let cloudsql: Vec<Value> = match cfg.get("cloudsql_instances") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let job_name;
    match kind {
        PoolKind::V2 => {
            job_name = naming::job_name(&name, run.id);
            body.insert(
                "labels".into(),
                merge_labels(&labels, body.get("labels"), ours),
            );
            let tmpl = object_at(&mut body, "template")?;
            tmpl.insert(
                "labels".into(),
                merge_labels(&labels, tmpl.get("labels"), &[]),
            );
            let inner = object_at(tmpl, "template")?;
            let container = first_container(inner)?;
            append_env(container, entries, false)?;
            if !cloudsql.is_empty() {
                container
                    .entry("volumeMounts")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or("`volumeMounts` must be a list")?
                    .push(json!({"name": "cloudsql", "mountPath": "/cloudsql"}));
            }
            finish_container(container)?;
            if !cloudsql.is_empty() {
                inner
                    .entry("volumes")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or("`volumes` must be a list")?
                    .push(json!({"name": "cloudsql", "cloudSqlInstance": {"instances": cloudsql}}));
            }
            inner.insert("timeout".into(), json!(format!("{timeout}s")));
            let drop_vpc = match inner.get("vpcAccess") {
                Some(Value::Object(v)) => {
                    v.is_empty() || (v.len() == 1 && v.get("connector").is_some_and(Value::is_null))
                }
                Some(Value::Null) => true,
                _ => false,
            };
            if drop_vpc {
                inner.remove("vpcAccess");
            }
        }
        PoolKind::V1 => {
            let meta = object_at(&mut body, "metadata")?;
            meta.insert(
                "labels".into(),
                merge_labels(&labels, meta.get("labels"), ours),
            );
            job_name = match meta.get("name") {
                // The template's own name (the default `{{ name }}` with `name` set): verbatim.
                Some(Value::String(n)) => {
                    let n = if cfg.get("name") == Some(&json!(n)) {
                        name.clone()
                    } else {
                        n.clone()
                    };
                    naming::verbatim_job_name(&n)?
                }
                _ => naming::job_name(&name, run.id),
            };
            meta.insert("name".into(), json!(job_name));
            let spec_tmpl = object_at(object_at(&mut body, "spec")?, "template")?;
            let exec_meta = object_at(spec_tmpl, "metadata")?;
            exec_meta.insert(
                "labels".into(),
                merge_labels(&labels, exec_meta.get("labels"), &[]),
            );
            // v1 containers live at spec.template.spec.template.spec.containers.
            let inner = object_at(
                object_at(object_at(spec_tmpl, "spec")?, "template")?,
                "spec",
            )?;
            let container = first_container(inner)?;
            append_env(container, entries, true)?;
            finish_container(container)?;
        }
    }
    let region = match cfg.get("region") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        None | Some(Value::Null) => "us-central1".into(),
        Some(other) => return Err(format!("`region` must be a string, not {other}")),
    };
    check_region(&region)?;
    Ok(JobConfig {
        kind,
        job_name,
        region,
        keep_job,
        timeout,
        credentials: credentials_of(cfg.get("credentials"))?,
        body: Value::Object(body),
    })
}

/// The object at `key`, created when absent.
fn object_at<'a>(m: &'a mut Object, key: &str) -> Result<&'a mut Object, String> {
    m.entry(key)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| format!("the job body's `{key}` must be an object"))
}

fn first_container(m: &mut Object) -> Result<&mut Object, String> {
    m.get_mut("containers")
        .and_then(Value::as_array_mut)
        .and_then(|c| c.first_mut())
        .and_then(Value::as_object_mut)
        .ok_or_else(|| "the job body has no container".to_string())
}

/// v2 extends the template's env list; v1 replaces it (as prefect-gcp does).
fn append_env(container: &mut Object, entries: Vec<Value>, replace: bool) -> Result<(), String> {
    if replace {
        container.insert("env".into(), Value::Array(entries));
        return Ok(());
    }
    container
        .entry("env")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("the container's `env` must be a list")?
        .extend(entries);
    Ok(())
}

/// Command as a list (default `prefect flow-run execute`), args as a list, an image.
fn finish_container(c: &mut Object) -> Result<(), String> {
    match c.get("command") {
        None | Some(Value::Null) => {
            c.insert("command".into(), json!(["prefect", "flow-run", "execute"]));
        }
        Some(Value::String(s)) => {
            let words = shell_split(s)?;
            c.insert("command".into(), json!(words));
        }
        _ => {}
    }
    if let Some(Value::String(s)) = c.get("args") {
        let words = shell_split(s)?;
        c.insert("args".into(), json!(words));
    }
    if !c.contains_key("image") {
        c.insert("image".into(), json!(DEFAULT_IMAGE));
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
