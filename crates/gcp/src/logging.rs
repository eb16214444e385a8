//! Cloud Logging v2, `logging.entries.list` (`POST https://logging.googleapis.com/v2/entries:list`,
//! discovery document `logging.v2.json`): the container output of a Cloud Run job execution,
//! which the embedded worker copies into a failed flow run's Prefect logs.
//!
//! Cloud Run writes a job's stdout/stderr as entries of resource type `cloud_run_job` (labels
//! `job_name`, `location`, `project_id`) with the entry label `run.googleapis.com/execution_name`
//! ("Logging and viewing logs in Cloud Run", cloud.google.com/run/docs/logging). Reading them
//! needs `logging.logEntries.list` (roles/logging.viewer) on the project.

use bootstrap_ids::{ProjectId, Region};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp};

/// The most entries one `entries:list` page may hold (`ListLogEntriesRequest.pageSize`).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// One entry, reduced to what a reader shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// RFC 3339, as Google sent it.
    pub timestamp: Option<String>,
    /// `DEFAULT`, `INFO`, `ERROR`, ...
    pub severity: Option<String>,
    /// `textPayload`, else `jsonPayload.message`, else the JSON payload as text.
    pub text: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    entries: Vec<Value>,
    #[serde(default)]
    next_page_token: Option<String>,
}

fn line_of(entry: &Value) -> LogLine {
    let text = match (
        entry.get("textPayload").and_then(Value::as_str),
        entry.get("jsonPayload"),
    ) {
        (Some(t), _) => t.to_string(),
        (None, Some(j)) => j
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| j.to_string()),
        (None, None) => String::new(),
    };
    let field = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_string);
    LogLine {
        timestamp: field("timestamp"),
        severity: field("severity"),
        text,
    }
}

/// A string literal of the logging query language (quotes and backslashes escaped).
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The filter for one execution's container output.
pub fn execution_filter(region: &Region, job: &str, execution: &str) -> String {
    format!(
        "resource.type=\"cloud_run_job\" AND resource.labels.job_name={} AND \
         resource.labels.location={} AND labels.\"run.googleapis.com/execution_name\"={}",
        quote(job),
        quote(region.as_str()),
        quote(execution),
    )
}

/// One page of `project`'s entries matching `filter`, newest first when `newest_first`.
pub async fn list_entries(
    http: &GcpHttp,
    project: &ProjectId,
    filter: &str,
    newest_first: bool,
    page_size: u32,
    page_token: Option<&str>,
) -> Result<(Vec<LogLine>, Option<String>), GcpError> {
    let mut body = json!({
        "resourceNames": [format!("projects/{project}")],
        "filter": filter,
        "orderBy": if newest_first { "timestamp desc" } else { "timestamp asc" },
        "pageSize": page_size.clamp(1, MAX_PAGE_SIZE),
    });
    if let Some(t) = page_token {
        body["pageToken"] = json!(t);
    }
    // A read: repeating it is harmless.
    let call = Call::new(
        "logging.entries.list",
        Method::POST,
        Api::Logging,
        "v2/entries:list".into(),
    )
    .body(body)
    .idempotent();
    let page: Page = http.send(call).await?;
    Ok((
        page.entries.iter().map(line_of).collect(),
        page.next_page_token.filter(|t| !t.is_empty()),
    ))
}

/// The last `lines` lines an execution printed, oldest first (one page, newest first, turned
/// around). `execution` is the short execution id or a full v2 name.
pub async fn execution_tail(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    job: &str,
    execution: &str,
    lines: u32,
) -> Result<Vec<LogLine>, GcpError> {
    let execution = execution.rsplit('/').next().unwrap_or(execution);
    let filter = execution_filter(region, job, execution);
    let (mut got, _) = list_entries(http, project, &filter, true, lines, None).await?;
    got.reverse();
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_execution_filter_quotes_its_values() {
        let r = Region::parse("us-central1").unwrap();
        let f = execution_filter(&r, "job-1", "projects/p/x\"y");
        assert!(f.starts_with("resource.type=\"cloud_run_job\" AND "), "{f}");
        assert!(f.contains("resource.labels.job_name=\"job-1\""), "{f}");
        assert!(f.ends_with("=\"projects/p/x\\\"y\""), "{f}");
    }

    #[test]
    fn entries_read_as_text() {
        let t = line_of(&json!({"textPayload": "boom", "severity": "ERROR", "timestamp": "t"}));
        assert_eq!(t.text, "boom");
        assert_eq!(t.severity.as_deref(), Some("ERROR"));
        let j = line_of(&json!({"jsonPayload": {"message": "hi", "x": 1}}));
        assert_eq!(j.text, "hi");
        let j = line_of(&json!({"jsonPayload": {"x": 1}}));
        assert_eq!(j.text, "{\"x\":1}");
    }
}
