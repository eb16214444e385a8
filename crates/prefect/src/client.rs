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

/// The Prefect client's retry numbers for a request that is not safe to repeat (a create
/// that is not an upsert, a state change): exponential backoff with "equal" jitter (each wait
/// is at least half its cap), about 8-15 s over six attempts, within 60 s. A 503 "database is
/// locked" from a SQLite server rolled its transaction back, so even these are retried, but
/// briefly: a 503 from a proxy in front of a server may not mean the request was not done.
pub fn prefect_default() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(8),
        deadline: Duration::from_secs(60),
        jitter: Jitter::Equal,
    }
}

/// Prefect's own client keeps retrying a refused request for about 62 s: prefect 3.9.1,
/// `prefect/client/base.py` `PrefectHttpxAsyncClient._send_with_retry` waits `2 ** try_count`
/// seconds (2, 4, 8, 16, 32) over `PREFECT_CLIENT_MAX_RETRIES` = 5 retries
/// (`prefect/settings/models/client.py`), each wait jittered by
/// `PREFECT_CLIENT_RETRY_JITTER_FACTOR` = 0.2 (a clamped Poisson draw), and a `Retry-After`
/// header is the least it waits; it does so for 429, 502, 503 and 408 on every method.
const PREFECT_OWN_RETRY_WINDOW: Duration = Duration::from_secs(2 + 4 + 8 + 16 + 32);

/// The retry numbers of requests safe to repeat (reads, filters, the upserts by name, PUT,
/// PATCH, DELETE; see `repeatable`): retried for as long as Prefect's own client would
/// ([`PREFECT_OWN_RETRY_WINDOW`], 62 s), with the same equal-jitter backoff as
/// [`prefect_default`] but each wait capped at 8 s instead of growing to 32 s: a SQLite server
/// that refused a burst of writes is free again within seconds, and an apply waiting 32 s on
/// one deployment would leave the server idle. Found by the scale bench: with 100 deployments,
/// two upserts still met 503 after the 8-15 s of [`prefect_default`] and the apply failed.
pub fn prefect_repeatable() -> RetryPolicy {
    RetryPolicy {
        // The deadline ends the retries first (about ten waits of 4-8 s fit in 62 s); the
        // count only bounds a server that answers instantly.
        max_attempts: 20,
        deadline: PREFECT_OWN_RETRY_WINDOW,
        ..prefect_default()
    }
}

/// The policy for the next wait: a refused connection gets the short [`prefect_default`]
/// budget even on a request safe to repeat. The long window is for a server that answered
/// "busy" (429/502/503) or was slow; a refused connection is most often a wrong or stopped
/// `PREFECT_API_URL`, and a user should hear so in seconds, not after a minute. Prefect's own
/// client does not retry a refused connection at all until it has once connected (prefect
/// 3.9.1, `prefect/client/base.py`, "Only retry ConnectError after we've successfully connected
/// once"); the short budget still rides out a server restarting.
fn policy_after<'a>(
    refused: bool,
    request: &'a RetryPolicy,
    default: &'a RetryPolicy,
) -> &'a RetryPolicy {
    if refused { default } else { request }
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
    /// The retry policy of requests that are safe to repeat (see `repeatable`).
    pub(crate) retry_repeatable: RetryPolicy,
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

/// One request to the API, as the retry loop sends it again.
pub(crate) struct Request<'a> {
    pub(crate) method: Method,
    /// The path under the API URL, starting with `/`.
    pub(crate) path: &'a str,
    pub(crate) query: &'a [(&'a str, String)],
    pub(crate) body: Option<&'a Value>,
    /// What the request is about, for errors (`deployment x`; 404 is `NotFound { what }`).
    pub(crate) what: &'a str,
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
            retry_repeatable: with_settings(prefect_repeatable(), &config.retries),
            config,
            auth,
        })
    }

    /// Replaces the retry policy of every request, those safe to repeat included
    /// (`PREFECT_CLIENT_MAX_RETRIES`, when set, still decides the number of attempts: the
    /// user's setting wins over the caller's default).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = with_settings(retry, &self.config.retries);
        self.retry_repeatable = self.retry;
        self
    }

    /// The retry policy of one request: the longer one when sending it twice is harmless.
    fn retry_for(&self, method: &Method, path: &str) -> &RetryPolicy {
        if repeatable(method, path) {
            &self.retry_repeatable
        } else {
            &self.retry
        }
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
    pub(crate) async fn send(&self, req: Request<'_>) -> Result<RawResponse, PrefectError> {
        let Request {
            method,
            path,
            query,
            body,
            what,
        } = req;
        let url = self.url(path);
        let retry = self.retry_for(&method, path);
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
            let (err, retry_after, retryable, refused) = match outcome {
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
                    (err, retry_after, retryable, false)
                }
                Err(e) => {
                    tracing::debug!(%method, path, attempt, error = %root_cause(&e), "prefect api transport error");
                    // A refused connection never reached the server, so any method may be
                    // retried; a timeout or a reset might have, so only requests that are
                    // safe to repeat are: reads, filters and the upserts by name.
                    let retryable =
                        e.is_connect() || (repeatable(&method, path) && !e.is_builder());
                    let refused = e.is_connect() && !e.is_timeout();
                    (self.unreachable(&e), None, retryable, refused)
                }
            };
            if !retryable {
                return Err(err);
            }
            let policy = policy_after(refused, retry, &self.retry);
            let Some(wait) =
                policy.next_delay(attempt, started.elapsed(), retry_after, &mut rand::rng())
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
        let raw = self
            .send(Request {
                method,
                path,
                query,
                body,
                what,
            })
            .await?;
        decode(&raw.body, what)
    }

    /// A GET without query parameters, decoded into `T`.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, PrefectError> {
        self.json(Method::GET, path, &[], None, what).await
    }

    /// A POST of a JSON `body` (a create, an upsert, a filter), the answer decoded into `T`.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<T, PrefectError> {
        self.json(Method::POST, path, &[], Some(body), what).await
    }

    /// A request whose answer has no body worth reading (204).
    pub(crate) async fn no_content(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(), PrefectError> {
        let req = Request {
            method,
            path,
            query: &[],
            body,
            what,
        };
        self.send(req).await.map(|_| ())
    }

    /// A DELETE: `true` when deleted, `false` when it was already gone.
    pub(crate) async fn delete(&self, path: &str, what: &str) -> Result<bool, PrefectError> {
        let req = Request {
            method: Method::DELETE,
            path,
            query: &[],
            body: None,
            what,
        };
        let deleted = self.send(req).await;
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
/// one of them, and the whole apply failed. PUT and PATCH set the fields they carry (the
/// client's PATCHes of pools, blocks, deployments and flow runs set values, they add nothing),
/// and a repeated DELETE finds the object gone (404, which `delete` reports as already gone).
/// Not repeatable: the other POSTs, which create (`/deployments/{id}/create_flow_run`,
/// `/block_documents/`, `/logs/`) or move a state (`/flow_runs/{id}/set_state`).
fn repeatable(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::PUT | Method::PATCH | Method::DELETE => true,
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
        assert!(!repeatable(&Method::POST, "/flow_runs/x/set_state"));
        assert!(!repeatable(&Method::POST, "/logs/"));
        assert!(repeatable(&Method::PATCH, "/deployments/x"));
        assert!(repeatable(&Method::PUT, "/automations/x"));
        assert!(repeatable(&Method::DELETE, "/deployments/x"));
    }

    /// The waits one request meets when every attempt is refused at once: `policy`'s draws
    /// until it gives up, with the time they add up to as the elapsed time.
    fn waits_until_given_up(policy: &RetryPolicy) -> Vec<Duration> {
        let mut rng = rand::rng();
        let mut waits = Vec::new();
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        while let Some(w) = policy.next_delay(attempts, elapsed, None, &mut rng) {
            waits.push(w);
            elapsed += w;
            attempts += 1;
        }
        waits
    }

    /// Regression (the scale bench, N = 100): deployment upserts met 503 for longer than the
    /// 8-15 s the client waited, while Prefect's own client waits about 62 s (2+4+8+16+32).
    /// Requests safe to repeat now wait as long as Prefect's would, never more, in short steps;
    /// the others keep the short budget.
    #[test]
    fn repeatable_requests_retry_as_long_as_prefects_own_client() {
        let long = prefect_repeatable();
        let short = prefect_default();
        for _ in 0..200 {
            let waits = waits_until_given_up(&long);
            let total: Duration = waits.iter().sum();
            // It stops when the next wait (at most 8 s) would end past 62 s.
            assert!(
                total <= PREFECT_OWN_RETRY_WINDOW
                    && total + long.max_delay > PREFECT_OWN_RETRY_WINDOW,
                "{total:?} over {} waits",
                waits.len()
            );
            assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)));
            // The first retries come quickly (a short refusal costs little).
            assert!(
                waits[0] <= Duration::from_millis(500) && waits[0] >= Duration::from_millis(250)
            );
            let total_short: Duration = waits_until_given_up(&short).iter().sum();
            assert_eq!(waits_until_given_up(&short).len(), 5);
            assert!(
                total_short >= Duration::from_millis(7750)
                    && total_short <= Duration::from_millis(15500),
                "{total_short:?}"
            );
        }
        // A server's Retry-After is the least a wait is, within the window.
        let mut rng = rand::rng();
        assert_eq!(
            long.next_delay(1, Duration::ZERO, Some(Duration::from_secs(20)), &mut rng),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            long.next_delay(
                3,
                Duration::from_secs(50),
                Some(Duration::from_secs(20)),
                &mut rng
            ),
            None
        );
    }

    /// Regression (the full `./test` after the 62 s window landed): `plan` with
    /// `PREFECT_API_URL` at a closed port took 62 s to say "cannot reach the Prefect API",
    /// because a refused read got the long window meant for a busy server. A refused
    /// connection now gets the short budget on every request (the clock is paused, so the
    /// waits cost no real time; the elapsed time is the sum of the waits).
    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_gives_up_within_the_short_budget_even_on_a_read() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let c = PrefectClient::new(
            PrefectConfig::for_url(&format!("http://127.0.0.1:{closed}/api")).expect("url"),
        )
        .expect("client");
        assert_eq!(
            *c.retry_for(&Method::GET, "/deployments/x"),
            prefect_repeatable()
        );
        let t0 = tokio::time::Instant::now();
        let Err(e) = c
            .json::<Value>(Method::GET, "/deployments/x", &[], None, "deployment x")
            .await
        else {
            panic!("nothing listens at 127.0.0.1:{closed}");
        };
        assert!(matches!(e, PrefectError::Unreachable { .. }), "{e:?}");
        let waited = t0.elapsed();
        assert!(waited <= Duration::from_millis(15_500), "{waited:?}");
        assert!(waited >= Duration::from_millis(7_750), "{waited:?}");
    }

    #[test]
    fn a_refused_connection_takes_the_short_policy_and_a_busy_answer_the_requests_own() {
        let long = prefect_repeatable();
        let short = prefect_default();
        assert_eq!(*policy_after(true, &long, &short), short);
        assert_eq!(*policy_after(false, &long, &short), long);
        assert_eq!(*policy_after(false, &short, &short), short);
    }

    #[test]
    fn each_request_gets_the_policy_its_method_allows() {
        let c = PrefectClient::new(PrefectConfig::for_url("http://127.0.0.1:1/api").expect("url"))
            .expect("client");
        assert_eq!(
            *c.retry_for(&Method::POST, "/deployments/"),
            prefect_repeatable()
        );
        assert_eq!(
            *c.retry_for(&Method::GET, "/deployments/x"),
            prefect_repeatable()
        );
        assert_eq!(
            *c.retry_for(&Method::PATCH, "/work_pools/p"),
            prefect_repeatable()
        );
        assert_eq!(
            *c.retry_for(&Method::POST, "/deployments/x/create_flow_run"),
            prefect_default()
        );
        // PREFECT_CLIENT_MAX_RETRIES bounds both.
        let mut config = PrefectConfig::for_url("http://127.0.0.1:1/api").expect("url");
        config.retries.max_retries = Some(2);
        let c = PrefectClient::new(config).expect("client");
        assert_eq!(c.retry_for(&Method::POST, "/deployments/").max_attempts, 3);
        assert_eq!(c.retry_for(&Method::POST, "/logs/").max_attempts, 3);
        // A caller's own policy (doctor's short one, the tests' quick one) is every request's.
        let quick = RetryPolicy::none();
        let c = c.with_retry(quick);
        assert_eq!(*c.retry_for(&Method::GET, "/health"), c.retry);
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
