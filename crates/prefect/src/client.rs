//! The HTTP transport: authentication, timeouts, bounded retries and error mapping.
//!
//! The API calls themselves live in `api/`, one file per kind of object, as `impl PrefectClient`
//! blocks on top of the helpers here.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::PrefectConfig;
use crate::error::{PrefectError, one_line, summarise_detail};

/// How failed requests are retried: the HTTP layer's policy shape, shared with the Google
/// clients. This client's numbers are [`prefect_default`].
pub use bootstrap_http::{Jitter, RetryPolicy};

/// The Prefect client's retry numbers: exponential backoff with "equal" jitter (each wait is at
/// least half its cap), about 8-15 s over six attempts, within 60 s.
///
/// Prefect's own client makes six attempts too (`PREFECT_CLIENT_MAX_RETRIES` = 5) but waits 2,
/// 4, 8, 16, 32 s; a CLI waits less, yet a SQLite-backed server answering 503 "database is
/// locked" under a burst of writes needs several seconds to clear, which a full-jitter draw
/// from a 4 s budget often did not give.
pub fn prefect_default() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(16),
        deadline: Duration::from_secs(60),
        jitter: Jitter::Equal,
    }
}

/// The policy with Prefect's `PREFECT_CLIENT_MAX_RETRIES` applied (attempts = retries + 1).
pub(crate) fn with_settings(
    mut policy: RetryPolicy,
    settings: &crate::config::ClientRetrySettings,
) -> RetryPolicy {
    if let Some(retries) = settings.max_retries {
        policy.max_attempts = retries.saturating_add(1);
    }
    policy
}

/// Connect timeout of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one Prefect API (Prefect Cloud workspace or self-hosted server).
#[derive(Clone)]
pub struct PrefectClient {
    pub(crate) http: reqwest::Client,
    pub(crate) config: PrefectConfig,
    pub(crate) retry: RetryPolicy,
    /// `Authorization` header value, marked sensitive so `Debug` of requests hides it.
    pub(crate) auth: Option<HeaderValue>,
}

impl std::fmt::Debug for PrefectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefectClient")
            .field("api_url", &self.config.api_url.as_str())
            .field("authenticated", &self.auth.is_some())
            .finish()
    }
}

/// A successful answer's body.
pub(crate) struct RawResponse {
    pub(crate) body: bytes::Bytes,
}

impl PrefectClient {
    /// A client for `config`, with the default retry policy.
    pub fn new(config: PrefectConfig) -> Result<Self, PrefectError> {
        let http = bootstrap_http::client(
            concat!("bootstrap-prefect/", env!("CARGO_PKG_VERSION")),
            CONNECT_TIMEOUT,
            REQUEST_TIMEOUT,
        )
        .map_err(|e| PrefectError::Config(format!("cannot build the HTTP client: {e}")))?;
        let auth = auth_header(&config)?;
        Ok(PrefectClient {
            http,
            retry: with_settings(prefect_default(), &config.retries),
            config,
            auth,
        })
    }

    /// Replaces the retry policy (`PREFECT_CLIENT_MAX_RETRIES`, when set, still decides the
    /// number of attempts: the user's setting wins over the caller's default).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = with_settings(retry, &self.config.retries);
        self
    }

    /// The settings this client uses.
    pub fn config(&self) -> &PrefectConfig {
        &self.config
    }

    /// `{api_url}{path}`; `path` starts with `/`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.config.api_url.as_str().trim_end_matches('/')
        )
    }

    /// Sends one request with retries; non-2xx answers become errors (404 as `NotFound{what}`).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<RawResponse, PrefectError> {
        let url = self.url(path);
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), &url).query(query);
            if let Some(auth) = &self.auth {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let t0 = Instant::now();
            let outcome = req.send().await;
            // Only the method, path and status are logged: never headers or bodies.
            let (err, retry_after, retryable) = match outcome {
                Ok(resp) => {
                    let status = resp.status();
                    tracing::debug!(%method, path, %status, elapsed_ms = t0.elapsed().as_millis() as u64, attempt, "prefect api");
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| bootstrap_http::parse_retry_after(v, SystemTime::now()));
                    let bytes = resp.bytes().await.map_err(|e| PrefectError::Decode {
                        what: what.to_string(),
                        detail: format!("the body was cut off ({})", root_cause(&e)),
                    })?;
                    if status.is_success() {
                        return Ok(RawResponse { body: bytes });
                    }
                    // 503 is also what a SQLite-backed server answers for "database is locked".
                    let retryable = retryable_status(status, &self.config.retries.extra_codes);
                    let err = self.status_error(status, &method, path, &bytes, what);
                    (err, retry_after, retryable)
                }
                Err(e) => {
                    tracing::debug!(%method, path, attempt, error = %root_cause(&e), "prefect api transport error");
                    // A refused connection never reached the server, so any method may be
                    // retried; a timeout or a reset might have, so only requests that are
                    // safe to repeat are: reads, filters and the upserts by name.
                    let retryable =
                        e.is_connect() || (repeatable(&method, path) && !e.is_builder());
                    (self.unreachable(&e), None, retryable)
                }
            };
            if !retryable {
                return Err(err);
            }
            let Some(wait) =
                self.retry
                    .next_delay(attempt, started.elapsed(), retry_after, &mut rand::rng())
            else {
                return Err(err);
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> PrefectError {
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else {
            root_cause(e)
        };
        PrefectError::Unreachable {
            url: self.config.api_url.to_string(),
            reason,
        }
    }

    fn status_error(
        &self,
        status: StatusCode,
        method: &Method,
        path: &str,
        body: &[u8],
        what: &str,
    ) -> PrefectError {
        let text = String::from_utf8_lossy(body);
        match status {
            StatusCode::UNAUTHORIZED => PrefectError::Unauthorized {
                hint: if self.config.api_key.is_some() {
                    "; check PREFECT_API_KEY".to_string()
                } else if self.config.auth_string.is_some() {
                    "; check PREFECT_API_AUTH_STRING".to_string()
                } else {
                    "; no PREFECT_API_KEY or PREFECT_API_AUTH_STRING was set".to_string()
                },
            },
            StatusCode::FORBIDDEN => PrefectError::Forbidden {
                detail: summarise_detail(&text),
            },
            StatusCode::NOT_FOUND => PrefectError::NotFound {
                what: what.to_string(),
            },
            StatusCode::CONFLICT => PrefectError::Conflict {
                detail: summarise_detail(&text),
            },
            StatusCode::UNPROCESSABLE_ENTITY => PrefectError::Unprocessable {
                detail: summarise_detail(&text),
            },
            _ => PrefectError::Http {
                status,
                method: method.to_string(),
                path: path.to_string(),
                body: summarise_detail(&text),
            },
        }
    }

    /// A request whose JSON answer is decoded into `T`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<T, PrefectError> {
        let raw = self.send(method, path, query, body, what).await?;
        decode(&raw.body, what)
    }

    /// A request whose answer has no body worth reading (204).
    pub(crate) async fn no_content(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(), PrefectError> {
        self.send(method, path, &[], body, what).await.map(|_| ())
    }

    /// A DELETE: `true` when deleted, `false` when it was already gone.
    pub(crate) async fn delete(&self, path: &str, what: &str) -> Result<bool, PrefectError> {
        let deleted = self.send(Method::DELETE, path, &[], None, what).await;
        deleted.optional().map(|r| r.is_some())
    }
}

/// A 404 read as absence: reads by id or name answer `None`, a delete `false`.
pub(crate) trait OptionalExt<T> {
    fn optional(self) -> Result<Option<T>, PrefectError>;
}

impl<T> OptionalExt<T> for Result<T, PrefectError> {
    fn optional(self) -> Result<Option<T>, PrefectError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(PrefectError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Decodes a JSON body. The message never quotes the body's values (they may be secrets).
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, PrefectError> {
    serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(body);
        let trimmed = text.trim_start();
        let detail = if trimmed.starts_with('<') {
            "got an HTML page instead of JSON (is the URL the API, ending in /api?)".to_string()
        } else if e.is_eof() {
            format!(
                "the JSON ends early (line {}, column {})",
                e.line(),
                e.column()
            )
        } else if e.is_syntax() {
            format!("malformed JSON at line {}, column {}", e.line(), e.column())
        } else {
            format!("unexpected shape: {}", redact_quoted(&e.to_string()))
        };
        PrefectError::Decode {
            what: what.to_string(),
            detail: one_line(&detail),
        }
    })
}

/// Replaces the contents of `"..."` in serde's messages, which quote offending values.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut inside = false;
    for c in msg.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// Whether sending the request twice leaves the server as sending it once. Besides reads,
/// `POST .../filter` only reads, and `POST /flows/` and `POST /deployments/` are upserts by name
/// (`prefect/server/models/flows.py` `create_flow`: insert or nothing on the name;
/// `models/deployments.py` `create_deployment`: insert or update on flow and name). Found by the
/// scale bench: ten deployments applied at once made the SQLite server reset a connection on
/// one of them, and the whole apply failed.
fn repeatable(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD => true,
        Method::POST => path.ends_with("/filter") || path == "/flows/" || path == "/deployments/",
        _ => false,
    }
}

fn auth_header(config: &PrefectConfig) -> Result<Option<HeaderValue>, PrefectError> {
    let value = if let Some(key) = &config.api_key {
        format!("Bearer {}", key.expose_secret())
    } else if let Some(auth) = &config.auth_string {
        let encoded = base64::engine::general_purpose::STANDARD.encode(auth.expose_secret());
        format!("Basic {encoded}")
    } else {
        return Ok(None);
    };
    let mut header = HeaderValue::from_str(&value).map_err(|_| {
        PrefectError::Config(
            "the Prefect API key or auth string contains characters not allowed in a header"
                .to_string(),
        )
    })?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// The statuses Prefect's own client retries (429, 502, 503, 408; `prefect/client/base.py`), 504
/// (a proxy in front of a server that is still working), and `PREFECT_CLIENT_RETRY_EXTRA_CODES`.
fn retryable_status(status: StatusCode, extra: &[u16]) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::REQUEST_TIMEOUT
    ) || extra.contains(&status.as_u16())
}

/// The innermost cause of a transport error (`Connection refused (os error 111)`), which says
/// more than reqwest's outer "error sending request".
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

#[cfg(test)]
mod stub_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = prefect_default();
        let mut rng = rand::rng();
        for retry in 0..20 {
            assert!(p.delay(retry, None, &mut rng) <= p.max_delay);
        }
        let waits: std::collections::HashSet<_> =
            (0..20).map(|_| p.delay(5, None, &mut rng)).collect();
        assert!(waits.len() > 1, "jitter draws different waits");
        // Equal jitter: every wait is at least half its cap (the SQLite server needs a pause).
        for retry in 0..5 {
            let ceiling = p.base_delay * (1 << retry);
            let d = p.delay(retry, None, &mut rng);
            assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
        }
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2)), &mut rng),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn prefect_retry_settings_shape_the_policy() {
        use crate::config::ClientRetrySettings;
        let set = ClientRetrySettings {
            max_retries: Some(2),
            extra_codes: vec![500],
        };
        assert_eq!(with_settings(prefect_default(), &set).max_attempts, 3);
        let unset = ClientRetrySettings::default();
        assert_eq!(with_settings(prefect_default(), &unset).max_attempts, 6);
        assert!(retryable_status(StatusCode::REQUEST_TIMEOUT, &[]));
        assert!(!retryable_status(StatusCode::INTERNAL_SERVER_ERROR, &[]));
        assert!(retryable_status(StatusCode::INTERNAL_SERVER_ERROR, &[500]));
        assert!(!retryable_status(StatusCode::NOT_FOUND, &[500]));
    }

    #[test]
    fn only_requests_safe_to_repeat_are_repeatable() {
        assert!(repeatable(&Method::GET, "/deployments/x"));
        assert!(repeatable(&Method::POST, "/deployments/filter"));
        assert!(repeatable(&Method::POST, "/flows/"));
        assert!(repeatable(&Method::POST, "/deployments/"));
        assert!(!repeatable(&Method::POST, "/block_documents/"));
        assert!(!repeatable(&Method::POST, "/deployments/x/create_flow_run"));
        assert!(!repeatable(&Method::PATCH, "/deployments/x"));
        assert!(!repeatable(&Method::DELETE, "/deployments/x"));
    }

    #[test]
    fn decode_errors_do_not_quote_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            n: u32,
        }
        let e = decode::<T>(br#"{"n":"hunter2-secret"}"#, "x").expect_err("type error");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = decode::<T>(br#"{"n":1"#, "x").expect_err("eof");
        assert!(e.to_string().contains("ends early"), "{e}");
        let e = decode::<T>(b"<html>oops</html>", "x").expect_err("html");
        assert!(e.to_string().contains("HTML page"), "{e}");
    }

    #[test]
    fn auth_headers_are_sensitive() {
        let mut c = PrefectConfig::for_url("http://127.0.0.1:1/api").expect("url");
        c.auth_string = Some(SecretString::from("user:pw"));
        let h = auth_header(&c).expect("ok").expect("some");
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().expect("ascii"), "Basic dXNlcjpwdw==");
        c.api_key = Some(SecretString::from("pnu_k"));
        let h = auth_header(&c).expect("ok").expect("some");
        assert_eq!(h.to_str().expect("ascii"), "Bearer pnu_k");
        let client = PrefectClient::new(c).expect("client");
        assert!(!format!("{client:?}").contains("pnu_k"));
    }
}
