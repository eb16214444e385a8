//! Cloud Logging v2 `entries:list` (`POST /v2/entries:list`, `logging.v2.json`
//! `logging.entries.list`), served from what the sandbox's containers really printed.
//!
//! # Where entries come from
//! - **Job executions and services**: read when a request comes, from the output buffers the
//!   Run module keeps per execution and per service ([`crate::run::RunState::all_logs`]). Each
//!   line becomes an entry shaped as Cloud Run writes them ("Logging and viewing logs in Cloud
//!   Run", cloud.google.com/run/docs/logging): resource type `cloud_run_job` with labels
//!   `project_id`, `job_name`, `location` and the entry label
//!   `run.googleapis.com/execution_name`; or `cloud_run_revision` with `project_id`,
//!   `service_name`, `configuration_name`, `location`. `logName` is
//!   `projects/P/logs/run.googleapis.com%2Fstdout` (`%2Fstderr`; the sandbox's own start/exit
//!   lines `run.googleapis.com%2Fvarlog%2Fsystem`). Unstructured text has severity `DEFAULT`, as
//!   Cloud Run gives it (the system lines are `INFO`). Not modelled: the per-line
//!   `run.googleapis.com/task_index` / `task_attempt` labels (the buffers do not keep which
//!   task printed a line) and `instanceId`.
//! - **The sink**: other sandbox modules append entries of their own (e.g. build logs, resource
//!   type `build`). The whole API is:
//!
//!   ```ignore
//!   state.logging.append(LogEntry::text(
//!       "my-project",                                  // the project the entry belongs to
//!       "cloudbuild",                                  // the log id (URL-encoded into logName)
//!       Resource::new("build", [("build_id", "b-1"), ("project_id", "my-project")]),
//!       Severity::Info,
//!       "Step #0: hello",
//!   ));
//!   ```
//!
//!   `LogEntry` fields are public for anything else (`labels`, `timestamp`). The sink keeps the
//!   newest [`SINK_LIMIT`] entries.
//!
//! # Filters
//! The subset of the logging query language (cloud.google.com/logging/docs/view/logging-query-language)
//! that Google's clients and this tool send: comparisons `FIELD OP VALUE` joined by `AND` (or by
//! juxtaposition, which the language reads as AND). Fields: `resource.type`,
//! `resource.labels.KEY`, `labels.KEY` / `labels."KEY"`, `logName`, `severity`, `timestamp`,
//! `textPayload`, `insertId`. Operators: `=`, `!=` on every field; `<`, `<=`, `>`, `>=` on
//! `timestamp` (RFC 3339) and `severity` (by level); `:` (contains) on `textPayload` and
//! `logName`. Anything else (OR, NOT, parentheses, regular expressions, other fields) is a 400
//! INVALID_ARGUMENT that names what is not supported, never a silently wrong answer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::executor::Stream;
use crate::state::AppState;

/// Entries kept in the sink (the oldest go first).
pub const SINK_LIMIT: usize = 100_000;
/// `pageSize` when none is given, and the most one page holds (Google: default 50, max 1000).
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

/// A `LogEntry` severity (`logging.v2.json` `LogEntry.severity`), in Google's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Default,
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl Severity {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "DEFAULT" => Self::Default,
            "DEBUG" => Self::Debug,
            "INFO" => Self::Info,
            "NOTICE" => Self::Notice,
            "WARNING" => Self::Warning,
            "ERROR" => Self::Error,
            "CRITICAL" => Self::Critical,
            "ALERT" => Self::Alert,
            "EMERGENCY" => Self::Emergency,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Notice => "NOTICE",
            Self::Warning => "WARNING",
            Self::Error => "ERROR",
            Self::Critical => "CRITICAL",
            Self::Alert => "ALERT",
            Self::Emergency => "EMERGENCY",
        }
    }
}

/// A `MonitoredResource`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: String,
    pub labels: BTreeMap<String, String>,
}

impl Resource {
    /// A resource of `kind` with `labels`.
    pub fn new<'a>(kind: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            kind: kind.to_owned(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// A `LogEntry` with a text payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub log_name: String,
    pub resource: Resource,
    pub timestamp: DateTime<Utc>,
    pub receive_timestamp: DateTime<Utc>,
    pub severity: Severity,
    pub insert_id: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub text_payload: String,
}

impl LogEntry {
    /// A text entry of `project`'s log `log_id`, timestamped now.
    pub fn text(
        project: &str,
        log_id: &str,
        resource: Resource,
        severity: Severity,
        text: impl Into<String>,
    ) -> Self {
        let now = Utc::now();
        Self {
            log_name: log_name(project, log_id),
            resource,
            timestamp: now,
            receive_timestamp: now,
            severity,
            insert_id: String::new(),
            labels: BTreeMap::new(),
            text_payload: text.into(),
        }
    }

    fn project(&self) -> Option<&str> {
        self.log_name
            .strip_prefix("projects/")
            .and_then(|r| r.split('/').next())
    }
}

/// `projects/P/logs/LOG_ID` with the log id URL-encoded (`/` is `%2F`), as Google writes it.
fn log_name(project: &str, log_id: &str) -> String {
    format!("projects/{project}/logs/{}", log_id.replace('/', "%2F"))
}

/// Entries appended by other sandbox modules (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Sink {
    inner: Arc<Mutex<SinkInner>>,
}

#[derive(Debug, Default)]
struct SinkInner {
    entries: VecDeque<LogEntry>,
    next: u64,
}

impl Sink {
    /// Appends an entry (its `insertId` is set when empty); the oldest goes beyond [`SINK_LIMIT`].
    pub fn append(&self, mut entry: LogEntry) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.next += 1;
        if entry.insert_id.is_empty() {
            entry.insert_id = format!("sink-{:012}", inner.next);
        }
        inner.entries.push_back(entry);
        while inner.entries.len() > SINK_LIMIT {
            inner.entries.pop_front();
        }
    }

    fn entries(&self) -> Vec<LogEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.entries.iter().cloned().collect()
    }
}

/// The resource of a Run log buffer's key: an execution
/// (`projects/P/locations/R/jobs/J/executions/E`) or a service (`projects/P/locations/R/services/S`).
fn run_resource(name: &str) -> Option<(String, Resource, BTreeMap<String, String>)> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["projects", p, "locations", r, "jobs", j, "executions", e] => Some((
            (*p).to_owned(),
            Resource::new(
                "cloud_run_job",
                [("project_id", *p), ("job_name", *j), ("location", *r)],
            ),
            BTreeMap::from([(
                "run.googleapis.com/execution_name".to_owned(),
                (*e).to_owned(),
            )]),
        )),
        ["projects", p, "locations", r, "services", s] => Some((
            (*p).to_owned(),
            Resource::new(
                "cloud_run_revision",
                [
                    ("project_id", *p),
                    ("service_name", *s),
                    ("configuration_name", *s),
                    ("location", *r),
                ],
            ),
            BTreeMap::new(),
        )),
        _ => None,
    }
}

/// Every entry the sandbox holds now: container output, then the sink's.
fn all_entries(state: &AppState) -> Vec<LogEntry> {
    let mut out = Vec::new();
    for (name, buffer) in state.run.all_logs() {
        let Some((project, resource, labels)) = run_resource(&name) else {
            continue;
        };
        for (i, line) in buffer.lines().into_iter().enumerate() {
            let (log_id, severity) = match line.stream {
                Stream::Stdout => ("run.googleapis.com/stdout", Severity::Default),
                Stream::Stderr => ("run.googleapis.com/stderr", Severity::Default),
                Stream::System => ("run.googleapis.com/varlog/system", Severity::Info),
            };
            out.push(LogEntry {
                log_name: log_name(&project, log_id),
                resource: resource.clone(),
                timestamp: line.time,
                receive_timestamp: line.time,
                severity,
                // Stable across reads (page tokens stay valid): the buffer's name and line
                // number; lines dropped from a full buffer shift it, which Google's ids do not.
                insert_id: format!("{:016x}-{i:08}", fnv(&name)),
                labels: labels.clone(),
                text_payload: line.text,
            });
        }
    }
    out.extend(state.logging.entries());
    out
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Filters

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    ResourceType,
    ResourceLabel(String),
    Label(String),
    LogName,
    Severity,
    Timestamp,
    TextPayload,
    InsertId,
}

#[derive(Debug, Clone)]
struct Term {
    field: Field,
    op: Op,
    value: String,
}

/// A parsed filter: every term must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    terms: Vec<Term>,
}

fn invalid(filter: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_argument(format!(
        "Unsupported or invalid filter \"{filter}\": {why} (the sandbox supports comparisons \
         joined by AND on resource.type, resource.labels.*, labels.*, logName, severity, \
         timestamp, textPayload and insertId)"
    ))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(Op),
    Dot,
}

fn tokenize(src: &str) -> Result<Vec<Tok>, ApiError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(invalid(src, "a quoted string is not closed")),
                        Some('"') => break,
                        Some('\\') => {
                            i += 1;
                            match chars.get(i) {
                                Some(c) => s.push(*c),
                                None => return Err(invalid(src, "a quoted string is not closed")),
                            }
                        }
                        Some(c) => s.push(*c),
                    }
                    i += 1;
                }
                i += 1;
                out.push(Tok::Quoted(s));
            }
            '.' => {
                out.push(Tok::Dot);
                i += 1;
            }
            '=' => {
                if chars.get(i + 1) == Some(&'~') {
                    return Err(invalid(src, "regular expressions (=~) are not supported"));
                }
                out.push(Tok::Op(Op::Eq));
                i += 1;
            }
            '!' => {
                match chars.get(i + 1) {
                    Some('=') => out.push(Tok::Op(Op::Ne)),
                    Some('~') => {
                        return Err(invalid(src, "regular expressions (!~) are not supported"));
                    }
                    _ => return Err(invalid(src, "`!` must be part of `!=`")),
                }
                i += 2;
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                out.push(Tok::Op(match (c, eq) {
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    _ => Op::Ge,
                }));
                i += if eq { 2 } else { 1 };
            }
            ':' => {
                out.push(Tok::Op(Op::Has));
                i += 1;
            }
            '(' | ')' => return Err(invalid(src, "parentheses are not supported")),
            _ => {
                let start = i;
                // A bare word: a name, a value (timestamps, severities, ids), up to the next
                // space or operator. `.` splits field names but not values (handled by the parser).
                while i < chars.len() && !ends_word(chars[i], out_is_field_side(&out)) {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

/// Whether the token being read is on the field side of a comparison (no operator since the
/// last complete term), where `.` and `:` are separators rather than part of a value.
/// Whether `c` ends a bare word: space, an operator, or (on the field side) `:` / `.`.
fn ends_word(c: char, field_side: bool) -> bool {
    c.is_whitespace()
        || matches!(c, '"' | '=' | '!' | '<' | '>' | '(' | ')')
        || (field_side && matches!(c, ':' | '.'))
}

fn out_is_field_side(out: &[Tok]) -> bool {
    !matches!(out.last(), Some(Tok::Op(_)))
}

impl Filter {
    /// Parses `src`; an empty filter matches everything.
    pub fn parse(src: &str) -> Result<Self, ApiError> {
        let toks = tokenize(src)?;
        let mut terms = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            if let Tok::Word(w) = &toks[i] {
                match w.as_str() {
                    "AND" if !terms.is_empty() => {
                        i += 1;
                        continue;
                    }
                    "OR" => return Err(invalid(src, "OR is not supported")),
                    "NOT" => return Err(invalid(src, "NOT is not supported")),
                    _ => {}
                }
            }
            if matches!(toks[i], Tok::Op(_) | Tok::Dot) {
                return Err(invalid(src, "a comparison has no field"));
            }
            // field: WORD (. (WORD | QUOTED))*
            let mut path = Vec::new();
            loop {
                match toks.get(i) {
                    Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => path.push(w.clone()),
                    _ => return Err(invalid(src, "expected a field name")),
                }
                i += 1;
                if toks.get(i) == Some(&Tok::Dot) {
                    i += 1;
                    continue;
                }
                break;
            }
            let op = match toks.get(i) {
                Some(Tok::Op(op)) => *op,
                _ => {
                    return Err(invalid(
                        src,
                        format!(
                            "`{}` is not followed by a comparison (global restrictions are not supported)",
                            path.join(".")
                        ),
                    ));
                }
            };
            i += 1;
            let value = match toks.get(i) {
                Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => w.clone(),
                _ => return Err(invalid(src, format!("`{}` has no value", path.join(".")))),
            };
            i += 1;
            let field = field_of(src, &path)?;
            check_op(src, &field, op, &value)?;
            terms.push(Term { field, op, value });
        }
        Ok(Self { terms })
    }

    /// Whether `e` passes every term.
    pub fn matches(&self, e: &LogEntry) -> bool {
        self.terms.iter().all(|t| term_matches(t, e))
    }
}

fn field_of(src: &str, path: &[String]) -> Result<Field, ApiError> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    Ok(match p.as_slice() {
        ["resource", "type"] => Field::ResourceType,
        ["resource", "labels", key] => Field::ResourceLabel((*key).to_owned()),
        ["labels", key] => Field::Label((*key).to_owned()),
        ["logName"] | ["log_name"] => Field::LogName,
        ["severity"] => Field::Severity,
        ["timestamp"] => Field::Timestamp,
        ["textPayload"] | ["text_payload"] => Field::TextPayload,
        ["insertId"] | ["insert_id"] => Field::InsertId,
        _ => {
            return Err(invalid(
                src,
                format!("the field `{}` is not supported", path.join(".")),
            ));
        }
    })
}

fn check_op(src: &str, field: &Field, op: Op, value: &str) -> Result<(), ApiError> {
    match (field, op) {
        (_, Op::Eq | Op::Ne) => {}
        (Field::Timestamp | Field::Severity, Op::Lt | Op::Le | Op::Gt | Op::Ge) => {}
        (Field::TextPayload | Field::LogName, Op::Has) => {}
        _ => return Err(invalid(src, "this operator is not supported on this field")),
    }
    match field {
        Field::Timestamp if DateTime::parse_from_rfc3339(value).is_err() => Err(invalid(
            src,
            format!("`{value}` is not an RFC 3339 timestamp"),
        )),
        Field::Severity if Severity::parse(value).is_none() => {
            Err(invalid(src, format!("`{value}` is not a severity")))
        }
        _ => Ok(()),
    }
}

fn compare<T: PartialOrd>(a: T, op: Op, b: T) -> bool {
    match op {
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Has => false,
    }
}

fn term_matches(t: &Term, e: &LogEntry) -> bool {
    let text = |actual: Option<&str>| match (t.op, actual) {
        (Op::Has, Some(a)) => a.to_lowercase().contains(&t.value.to_lowercase()),
        (Op::Eq, Some(a)) => a == t.value,
        (Op::Ne, a) => a != Some(t.value.as_str()),
        _ => false,
    };
    match &t.field {
        Field::ResourceType => text(Some(&e.resource.kind)),
        Field::ResourceLabel(k) => text(e.resource.labels.get(k).map(String::as_str)),
        Field::Label(k) => text(e.labels.get(k).map(String::as_str)),
        // Google accepts the log id unencoded in a filter as well.
        Field::LogName => text(Some(&e.log_name)) || text(Some(&e.log_name.replace("%2F", "/"))),
        Field::TextPayload => text(Some(&e.text_payload)),
        Field::InsertId => text(Some(&e.insert_id)),
        Field::Severity => Severity::parse(&t.value).is_some_and(|v| compare(e.severity, t.op, v)),
        Field::Timestamp => DateTime::parse_from_rfc3339(&t.value)
            .is_ok_and(|v| compare(e.timestamp, t.op, v.with_timezone(&Utc))),
    }
}

// ---------------------------------------------------------------------------------------------
// The method

/// The `resourceNames` a request may read: `projects/P` (and the deprecated `projectIds`).
fn projects_of(body: &Value) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for r in body["resourceNames"].as_array().into_iter().flatten() {
        let r = r
            .as_str()
            .ok_or_else(|| ApiError::invalid_argument("resourceNames must be strings"))?;
        match r.strip_prefix("projects/") {
            Some(p) if !p.is_empty() && !p.contains('/') => out.push(p.to_owned()),
            _ => {
                return Err(ApiError::invalid_argument(format!(
                    "Unsupported resource name \"{r}\": the sandbox reads projects/PROJECT_ID only"
                )));
            }
        }
    }
    for p in body["projectIds"].as_array().into_iter().flatten() {
        if let Some(p) = p.as_str() {
            out.push(p.to_owned());
        }
    }
    if out.is_empty() {
        return Err(ApiError::invalid_argument(
            "resourceNames: at least one resource name is required",
        ));
    }
    Ok(out)
}

fn page_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn parse_token(token: &str) -> Result<usize, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::invalid_argument(format!("Invalid page token \"{token}\"")))
}

/// `logging.entries.list`: `{resourceNames, filter, orderBy, pageSize, pageToken}` ->
/// `{entries, nextPageToken}`.
pub fn list(state: &AppState, body: &Value) -> Result<Value, ApiError> {
    let projects = projects_of(body)?;
    {
        let data = state.read();
        if let Some(p) = projects.iter().find(|p| data.project(p).is_none()) {
            return Err(ApiError::not_found(format!("Project {p} not found")));
        }
    }
    let filter = Filter::parse(body["filter"].as_str().unwrap_or(""))?;
    let desc = match body["orderBy"]
        .as_str()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .as_deref()
    {
        None | Some("") | Some("timestamp asc") | Some("timestamp") => false,
        Some("timestamp desc") => true,
        Some(other) => {
            return Err(ApiError::invalid_argument(format!(
                "Invalid orderBy \"{other}\": only \"timestamp asc\" and \"timestamp desc\" are supported"
            )));
        }
    };
    let size = match &body["pageSize"] {
        Value::Null => DEFAULT_PAGE,
        v => {
            let n = v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| ApiError::invalid_argument("pageSize must be an integer"))?;
            if n < 0 {
                return Err(ApiError::invalid_argument("pageSize must not be negative"));
            }
            if n == 0 {
                DEFAULT_PAGE
            } else {
                (n as usize).min(MAX_PAGE)
            }
        }
    };
    let offset = match body["pageToken"].as_str() {
        None | Some("") => 0,
        Some(t) => parse_token(t)?,
    };
    let mut entries: Vec<LogEntry> = all_entries(state)
        .into_iter()
        .filter(|e| e.project().is_some_and(|p| projects.iter().any(|q| q == p)))
        .filter(|e| filter.matches(e))
        .collect();
    // Stable: lines of one buffer keep their order at equal timestamps.
    entries.sort_by_key(|e| e.timestamp);
    if desc {
        entries.reverse();
    }
    let page: Vec<Value> = entries
        .iter()
        .skip(offset)
        .take(size)
        .map(entry_json)
        .collect();
    let mut answer = serde_json::json!({ "entries": page });
    if offset + size < entries.len() {
        answer["nextPageToken"] = Value::String(page_token(offset + size));
    }
    if page.is_empty() {
        // Google leaves out an empty list.
        if let Some(o) = answer.as_object_mut() {
            o.remove("entries");
        }
    }
    Ok(answer)
}

fn entry_json(e: &LogEntry) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    let ts = |t: &DateTime<Utc>| Value::String(t.to_rfc3339_opts(SecondsFormat::Nanos, true));
    v["timestamp"] = ts(&e.timestamp);
    v["receiveTimestamp"] = ts(&e.receive_timestamp);
    v["severity"] = Value::String(e.severity.name().to_owned());
    v
}

/// `POST /v2/entries:list` (authenticated by the guard middleware).
pub async fn list_handler(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let body: Value = if body.is_empty() {
        Value::Object(Default::default())
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return ApiError::invalid_argument(format!("Invalid JSON payload received. {e}"))
                    .into_response();
            }
        }
    };
    match list(&state, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: &str, exec: &str, text: &str, sev: Severity) -> LogEntry {
        let (_, resource, labels) = run_resource(&format!(
            "projects/p/locations/us-central1/jobs/{job}/executions/{exec}"
        ))
        .expect("execution");
        LogEntry {
            labels,
            ..LogEntry::text("p", "run.googleapis.com/stderr", resource, sev, text)
        }
    }

    #[test]
    fn filters_of_googles_clients_parse_and_match() {
        let e = entry(
            "j1",
            "j1-abc",
            "Traceback (most recent call last):",
            Severity::Default,
        );
        let yes = [
            "resource.type=\"cloud_run_job\"",
            "resource.type = cloud_run_job AND resource.labels.job_name = \"j1\"",
            "resource.labels.location=us-central1 labels.\"run.googleapis.com/execution_name\"=\"j1-abc\"",
            "timestamp>=\"2020-01-01T00:00:00Z\" AND severity>=DEFAULT",
            "textPayload:traceback",
            "logName=\"projects/p/logs/run.googleapis.com%2Fstderr\"",
            "logName=\"projects/p/logs/run.googleapis.com/stderr\"",
            "resource.labels.job_name!=other",
            "",
        ];
        for f in yes {
            assert!(Filter::parse(f).expect(f).matches(&e), "{f}");
        }
        let no = [
            "resource.type=\"cloud_run_revision\"",
            "labels.\"run.googleapis.com/execution_name\"=\"j1-other\"",
            "severity>=ERROR",
            "timestamp>=\"2999-01-01T00:00:00Z\"",
            "resource.labels.job_name=j1 AND resource.labels.location=europe-west1",
        ];
        for f in no {
            assert!(!Filter::parse(f).expect(f).matches(&e), "{f}");
        }
    }

    #[test]
    fn unsupported_filters_are_invalid_argument_saying_why() {
        for (f, why) in [
            ("resource.type=a OR resource.type=b", "OR is not supported"),
            ("NOT severity=ERROR", "NOT is not supported"),
            ("(severity=ERROR)", "parentheses"),
            ("textPayload=~\"x.*\"", "regular expressions"),
            (
                "jsonPayload.message=x",
                "`jsonPayload.message` is not supported",
            ),
            ("timestamp>=yesterday", "RFC 3339"),
            ("severity>=LOUD", "not a severity"),
            ("resource.type:cloud", "operator is not supported"),
            ("hello", "not followed by a comparison"),
            ("severity=\"ERROR", "not closed"),
        ] {
            let err = Filter::parse(f).expect_err(f);
            let text = format!("{err:?}");
            assert!(text.contains(why), "{f}: {text}");
            assert!(
                text.contains("INVALID_ARGUMENT") || text.contains("400"),
                "{f}: {text}"
            );
        }
    }

    #[test]
    fn services_are_revisions_and_unknown_buffers_are_skipped() {
        let (p, r, _) = run_resource("projects/p/locations/europe-west1/services/s").unwrap();
        assert_eq!(p, "p");
        assert_eq!(r.kind, "cloud_run_revision");
        assert_eq!(r.labels["service_name"], "s");
        assert!(run_resource("something-else").is_none());
    }

    #[test]
    fn the_sink_is_bounded_and_numbers_entries() {
        let sink = Sink::default();
        for i in 0..3 {
            sink.append(LogEntry::text(
                "p",
                "cloudbuild",
                Resource::new("build", [("build_id", "b")]),
                Severity::Info,
                format!("line {i}"),
            ));
        }
        let all = sink.entries();
        assert_eq!(all.len(), 3);
        assert_ne!(all[0].insert_id, all[1].insert_id);
        assert_eq!(all[0].log_name, "projects/p/logs/cloudbuild");
    }

    #[test]
    fn page_tokens_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_token(&page_token(150)).unwrap(), 150);
        assert!(parse_token("garbage!").is_err());
    }
}
