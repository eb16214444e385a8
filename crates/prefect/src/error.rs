//! The one error type of the Prefect client.
//!
//! Every variant renders as one line a user can act on; the server's own `detail` is summarised,
//! never dumped, and no variant ever carries a credential.

use reqwest::StatusCode;

/// What went wrong talking to the Prefect API.
#[derive(Debug, thiserror::Error)]
pub enum PrefectError {
    /// 401: the key (or basic-auth string) was refused.
    #[error("the Prefect API rejected the API key (401 Unauthorized){hint}")]
    Unauthorized {
        /// A hint about which credential was sent (never the credential itself).
        hint: String,
    },
    /// 403: authenticated, but not allowed to do this.
    #[error("the Prefect API refused the request (403 Forbidden): {detail}")]
    Forbidden {
        /// The server's detail, on one line.
        detail: String,
    },
    /// 404 on an object the caller expected to exist.
    #[error("{what} was not found on the Prefect server")]
    NotFound {
        /// What was looked for, e.g. `work pool "demo"`.
        what: String,
    },
    /// 409: the object exists already, or a parameter failed an enforced schema.
    #[error("the Prefect API reported a conflict (409): {detail}")]
    Conflict {
        /// The server's detail, on one line.
        detail: String,
    },
    /// 422: the server could not validate the request body.
    #[error("the Prefect API rejected the request as invalid (422): {detail}")]
    Unprocessable {
        /// The server's validation errors, summarised on one line.
        detail: String,
    },
    /// The server could not be reached at all (DNS, refused connection, timeouts).
    #[error(
        "cannot reach the Prefect API at {url} ({reason}); check PREFECT_API_URL and that the server is running"
    )]
    Unreachable {
        /// The URL that was tried (never contains credentials).
        url: String,
        /// A short reason: `connection refused`, `timed out`, ...
        reason: String,
    },
    /// Any other unexpected HTTP status.
    #[error("the Prefect API answered {status} to {method} {path}: {body}")]
    Http {
        /// The HTTP status.
        status: StatusCode,
        /// The request method.
        method: String,
        /// The request path below the API URL.
        path: String,
        /// An excerpt of the body, on one line.
        body: String,
    },
    /// The answer was not what the API documents (HTML from a proxy, truncated JSON, ...).
    #[error("could not read the Prefect API's answer to {what}: {detail}")]
    Decode {
        /// Which call's answer.
        what: String,
        /// What was wrong with it, on one line.
        detail: String,
    },
    /// The Prefect settings (URL, profile file) are missing or malformed.
    #[error("Prefect settings: {0}")]
    Config(String),
    /// The event stream failed (handshake, auth, abnormal close).
    #[error("Prefect event stream at {url}: {detail}")]
    Events {
        /// The websocket URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl PrefectError {
    /// True when the error is a "not found" answer (callers often turn it into `None`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, PrefectError::NotFound { .. })
    }
}

/// Longest excerpt of a server body kept in an error message.
const EXCERPT: usize = 400;

/// Squeezes text onto one line and cuts it to a readable length.
pub(crate) fn one_line(text: &str) -> String {
    let squeezed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if squeezed.chars().count() <= EXCERPT {
        return squeezed;
    }
    let cut: String = squeezed.chars().take(EXCERPT).collect();
    format!("{cut}…")
}

/// The `detail` of a FastAPI error body, summarised on one line.
///
/// FastAPI answers `{"detail": "text"}` for most errors and
/// `{"detail": [{"loc": [...], "msg": "..."}, ...]}` (or `{"exception_detail": [...]}`) for
/// validation errors. Anything else (HTML from a proxy, plain text) is excerpted as it is.
pub(crate) fn summarise_detail(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return excerpt_non_json(body);
    };
    let detail = value
        .get("detail")
        .or_else(|| value.get("exception_detail"))
        .unwrap_or(&value);
    match detail {
        serde_json::Value::String(s) => one_line(s),
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(summarise_validation_item).collect();
            one_line(&parts.join("; "))
        }
        other => one_line(&other.to_string()),
    }
}

fn summarise_validation_item(item: &serde_json::Value) -> String {
    let msg = item
        .get("msg")
        .and_then(|m| m.as_str())
        .unwrap_or("invalid");
    let loc = item
        .get("loc")
        .and_then(|l| l.as_array())
        .map(|parts| {
            parts
                .iter()
                .map(|p| match p {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_default();
    if loc.is_empty() {
        msg.to_string()
    } else {
        format!("{loc}: {msg}")
    }
}

fn excerpt_non_json(body: &str) -> String {
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return "(empty body)".to_string();
    }
    if trimmed.starts_with('<') {
        // An HTML page usually means a proxy or the UI answered instead of the API.
        return format!(
            "an HTML page instead of JSON (is the URL the API, ending in /api?): {}",
            one_line(&strip_tags(trimmed))
        );
    }
    one_line(trimmed)
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_detail_is_kept_on_one_line() {
        assert_eq!(
            summarise_detail(r#"{"detail":"A work pool\nwith this name already exists."}"#),
            "A work pool with this name already exists."
        );
    }

    #[test]
    fn validation_detail_names_the_field() {
        let body = r#"{"exception_message":"Invalid request received.","exception_detail":[{"loc":["body","name"],"msg":"Field required","type":"missing"}],"request_body":{}}"#;
        assert_eq!(summarise_detail(body), "body.name: Field required");
    }

    #[test]
    fn html_is_called_out() {
        let s = summarise_detail("<html><head><title>502 Bad Gateway</title></head></html>");
        assert!(s.starts_with("an HTML page instead of JSON"), "{s}");
        assert!(s.contains("502 Bad Gateway"), "{s}");
        assert!(!s.contains('<'), "{s}");
    }

    #[test]
    fn long_bodies_are_cut() {
        let long = "x ".repeat(1000);
        let s = summarise_detail(&long);
        assert!(s.chars().count() <= EXCERPT + 1);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn empty_body_says_so() {
        assert_eq!(summarise_detail("  "), "(empty body)");
    }
}
