//! The container output of a failed execution, copied from Cloud Logging into the flow run's
//! Prefect logs (issue #17 item 6): a flow that crashes before Prefect starts in the container
//! (an entrypoint that does not import) otherwise leaves only a console link in Prefect
//! (prefect-archive/prefect-gcp#183).
//!
//! Bounded: at most [`TAIL_LINES`] lines of at most [`MAX_LINE`] characters. Redacted: the
//! values of the worker's own secret settings (Prefect API key, auth string) that the worker
//! handed to the container are replaced before anything is sent.

use std::time::Duration;

use rand::Rng as _;
use secrecy::{ExposeSecret as _, SecretString};

use bootstrap_gcp::logging::LogLine;

/// Lines copied from the end of the execution's output.
pub const TAIL_LINES: u32 = 50;
/// Longest line copied (the rest is cut, marked with `…`).
pub const MAX_LINE: usize = 2000;
/// Cloud Logging shows entries a few seconds after they were written: an empty answer is
/// asked again this many times, waiting 2 s, 4 s (± 20 %) in between.
const ATTEMPTS: u32 = 3;

/// Settings whose values never leave the worker in a copied line.
fn is_secret_setting(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["KEY", "SECRET", "TOKEN", "PASSWORD", "AUTH_STRING"]
        .iter()
        .any(|w| n.contains(w))
}

/// `text` with every secret value replaced by `<redacted>` (values shorter than 8 characters
/// are not looked for: they would redact ordinary words).
pub fn redact(text: &str, secrets: &[(String, SecretString)]) -> String {
    let mut out = text.to_string();
    for (name, value) in secrets {
        let v = value.expose_secret();
        if is_secret_setting(name) && v.len() >= 8 {
            out = out.replace(v, "<redacted>");
        }
    }
    out
}

/// The Prefect log message for the lines (oldest first), or `None` when there are none.
pub fn message(
    job: &str,
    execution: &str,
    lines: &[LogLine],
    secrets: &[(String, SecretString)],
) -> Option<String> {
    if lines.is_empty() {
        return None;
    }
    let short = execution.rsplit('/').next().unwrap_or(execution);
    let mut out = format!(
        "Last {} line{} of the container output of Cloud Run job {job}, execution {short} (from Cloud Logging):",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
    for l in lines {
        let mut text = redact(&l.text, secrets);
        if text.chars().count() > MAX_LINE {
            text = text.chars().take(MAX_LINE).collect::<String>() + "…";
        }
        out.push('\n');
        out.push_str(text.trim_end_matches(['\n', '\r']));
    }
    Some(out)
}

/// Reads the tail, asking again while Cloud Logging has nothing yet.
pub async fn read(
    jobs: &super::cloudrun::RunJobs,
    job: &str,
    execution: &str,
) -> Result<Vec<LogLine>, bootstrap_gcp::GcpError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let lines = jobs.log_tail(job, execution, TAIL_LINES).await?;
        if !lines.is_empty() || attempt >= ATTEMPTS {
            return Ok(lines);
        }
        let wait =
            Duration::from_secs(2u64 << (attempt - 1)).mul_f64(rand::rng().random_range(0.8..1.2));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &str) -> LogLine {
        LogLine {
            timestamp: None,
            severity: None,
            text: t.into(),
        }
    }

    #[test]
    fn secrets_are_redacted_and_lines_bounded() {
        let secrets = vec![
            (
                "PREFECT_API_KEY".to_string(),
                SecretString::from("pnu_abcdefgh1234"),
            ),
            (
                "PREFECT_API_URL".to_string(),
                SecretString::from("http://127.0.0.1:4200/api"),
            ),
        ];
        let lines = vec![
            line("Traceback (most recent call last):"),
            line("key=pnu_abcdefgh1234 url=http://127.0.0.1:4200/api"),
            line(&"x".repeat(MAX_LINE + 10)),
        ];
        let m = message(
            "job-1",
            "projects/p/locations/r/jobs/job-1/executions/job-1-abc",
            &lines,
            &secrets,
        )
        .expect("message");
        assert!(
            m.starts_with(
                "Last 3 lines of the container output of Cloud Run job job-1, execution job-1-abc"
            ),
            "{m}"
        );
        assert!(!m.contains("pnu_abcdefgh1234"), "{m}");
        assert!(
            m.contains("key=<redacted> url=http://127.0.0.1:4200/api"),
            "{m}"
        );
        let last = m.lines().next_back().expect("a last line");
        assert!(last.ends_with('…'));
        assert_eq!(last.chars().count(), MAX_LINE + 1);
        assert!(message("j", "e", &[], &secrets).is_none());
    }
}
