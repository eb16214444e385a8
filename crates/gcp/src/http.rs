//! One HTTP client for every Google API: endpoints, auth header, retries, error parsing.
//!
//! Nothing here logs a request or response body or a header: bodies carry private keys
//! (`privateKeyData`), secret payloads and job environments, and headers carry the token.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bootstrap_ids::Region;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use crate::auth::TokenSource;
use crate::error::{self, GcpError};
use crate::retry::{self, Decision, RetryOptions, RetryPolicy};

/// Environment variable naming one base URL that every API is sent to (the sandbox).
pub const ENDPOINT_ENV: &str = "BOOTSTRAP_GCP_ENDPOINT";

/// The header that names the quota project of a request.
pub const USER_PROJECT_HEADER: &str = "x-goog-user-project";

/// Connect timeout for every request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The Google APIs this crate calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Api {
    Iam,
    ResourceManager,
    ServiceUsage,
    SecretManager,
    RunV2,
    /// Cloud Run v1 (Knative style) is served on regional hosts.
    RunV1(Region),
    /// IAM Credentials (`generateAccessToken`, for impersonation).
    IamCredentials,
    /// Cloud Logging v2 (`entries:list`).
    Logging,
    /// Cloud Build v1 (build operations and builds, for remote image builds).
    CloudBuild,
    /// Artifact Registry v1 (the docker repository built images go to).
    ArtifactRegistry,
}

/// Where each API is reached: Google's hosts, or one local base URL for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoints {
    base: Option<Url>,
}

impl Endpoints {
    /// Google's production hosts.
    pub fn google() -> Self {
        Self { base: None }
    }

    /// Every API at `base` (for example `http://127.0.0.1:8085`).
    pub fn with_base(base: &str) -> Result<Self, GcpError> {
        let mut url = Url::parse(base.trim())
            .map_err(|e| GcpError::Config(format!("invalid GCP endpoint `{base}`: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(GcpError::Config(format!(
                "invalid GCP endpoint `{base}`: expected http(s)://host[:port]"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(GcpError::Config(format!(
                "invalid GCP endpoint `{base}`: no query or fragment allowed"
            )));
        }
        // A trailing slash makes relative paths append instead of replacing the last segment.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self { base: Some(url) })
    }

    /// `BOOTSTRAP_GCP_ENDPOINT` if set, else Google's hosts.
    pub fn from_env() -> Result<Self, GcpError> {
        match std::env::var(ENDPOINT_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::with_base(&v),
            _ => Ok(Self::google()),
        }
    }

    /// The override base URL, if any.
    pub fn override_base(&self) -> Option<&Url> {
        self.base.as_ref()
    }

    /// The root URL of `api`, ending in `/`.
    pub fn root(&self, api: &Api) -> Result<Url, GcpError> {
        if let Some(base) = &self.base {
            return Ok(base.clone());
        }
        let host = match api {
            Api::Iam => "iam.googleapis.com".to_owned(),
            Api::ResourceManager => "cloudresourcemanager.googleapis.com".to_owned(),
            Api::ServiceUsage => "serviceusage.googleapis.com".to_owned(),
            Api::SecretManager => "secretmanager.googleapis.com".to_owned(),
            Api::RunV2 => "run.googleapis.com".to_owned(),
            Api::RunV1(region) => format!("{region}-run.googleapis.com"),
            Api::IamCredentials => "iamcredentials.googleapis.com".to_owned(),
            Api::Logging => "logging.googleapis.com".to_owned(),
            Api::CloudBuild => "cloudbuild.googleapis.com".to_owned(),
            Api::ArtifactRegistry => "artifactregistry.googleapis.com".to_owned(),
        };
        Url::parse(&format!("https://{host}/"))
            .map_err(|e| GcpError::Config(format!("cannot build a URL for host `{host}`: {e}")))
    }

    /// The full URL of `path` (relative, already encoded, e.g. `v1/projects/p/serviceAccounts`).
    pub fn url(&self, api: &Api, path: &str) -> Result<Url, GcpError> {
        self.root(api)?
            .join(path.trim_start_matches('/'))
            .map_err(|e| GcpError::Config(format!("cannot build a URL for `{path}`: {e}")))
    }
}

/// One path segment, percent-encoded (the HTTP layer's, shared with the Prefect client: an id
/// can never add a segment or a query).
pub use bootstrap_http::seg;

/// Checks and encodes a full resource name returned by an API (an operation or execution
/// name such as `projects/p/locations/r/operations/o`).
pub fn resource_path(name: &str) -> Result<String, GcpError> {
    let parts: Vec<&str> = name.split('/').collect();
    if name.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(GcpError::Config(format!("invalid resource name `{name}`")));
    }
    Ok(parts.iter().map(|p| seg(p)).collect::<Vec<_>>().join("/"))
}

/// One API call, described as data. Its `Debug` leaves the body out (it may hold secrets).
#[derive(Clone)]
pub struct Call {
    /// The discovery document's method id, for error messages (e.g. `run.projects.locations.services.get`).
    pub name: Cow<'static, str>,
    pub method: Method,
    pub api: Api,
    /// Relative, encoded path.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
    /// A raw body with its content type instead of JSON (media uploads); wins over `body`.
    pub media: Option<Media>,
    pub retry: RetryOptions,
}

/// A raw request body (e.g. a `multipart/related` media upload). Cheap to clone for retries.
#[derive(Clone)]
pub struct Media {
    pub content_type: String,
    pub bytes: bytes::Bytes,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("api", &self.api)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("body", &self.body.as_ref().map(|_| "(not shown)"))
            .field("retry", &self.retry)
            .finish()
    }
}

impl Call {
    /// A call with the usual retry options for its HTTP method: GET, PUT and DELETE are
    /// idempotent; POST and PATCH are not unless [`Call::idempotent`] says so.
    pub fn new(name: impl Into<Cow<'static, str>>, method: Method, api: Api, path: String) -> Self {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        Self {
            name: name.into(),
            method,
            api,
            path,
            query: Vec::new(),
            body: None,
            media: None,
            retry: RetryOptions {
                idempotent,
                conflicts: false,
            },
        }
    }

    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Sends `bytes` as the body with `content_type` (a media upload).
    pub fn media(
        mut self,
        content_type: impl Into<String>,
        bytes: impl Into<bytes::Bytes>,
    ) -> Self {
        self.media = Some(Media {
            content_type: content_type.into(),
            bytes: bytes.into(),
        });
        self
    }

    /// The caller knows repeating this request is harmless.
    pub fn idempotent(mut self) -> Self {
        self.retry.idempotent = true;
        self
    }

    /// Also retry 409 `ABORTED` / "operationInProgress".
    pub fn retry_conflicts(mut self) -> Self {
        self.retry.conflicts = true;
        self
    }
}

/// The shared HTTP client of all Google API calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GcpHttp {
    client: reqwest::Client,
    endpoints: Endpoints,
    tokens: Arc<dyn TokenSource>,
    retry: RetryPolicy,
}

impl GcpHttp {
    /// Builds the client (connect timeout 10 s, request timeout 60 s).
    pub fn new(
        endpoints: Endpoints,
        tokens: Arc<dyn TokenSource>,
        retry: RetryPolicy,
    ) -> Result<Self, GcpError> {
        let client = bootstrap_http::client(
            concat!("bootstrap/", env!("CARGO_PKG_VERSION")),
            CONNECT_TIMEOUT,
            REQUEST_TIMEOUT,
        )
        .map_err(|e| GcpError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            endpoints,
            tokens,
            retry,
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub fn token_source(&self) -> &Arc<dyn TokenSource> {
        &self.tokens
    }

    /// Sends `call`, retrying per the policy, and decodes the JSON answer (an empty body reads
    /// as `{}`).
    pub async fn send<T: DeserializeOwned>(&self, call: Call) -> Result<T, GcpError> {
        let bytes = self.send_bytes(&call).await?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|e| GcpError::Decode {
            method: call.name.to_string(),
            source: e,
        })
    }

    /// [`GcpHttp::send`] for answers that carry secrets: a decode error does not quote the body.
    pub async fn send_sensitive<T: DeserializeOwned>(&self, call: Call) -> Result<T, GcpError> {
        use secrecy::zeroize::Zeroize;
        let mut bytes = self.send_bytes(&call).await?;
        let decoded = serde_json::from_slice(&bytes).map_err(|e| GcpError::DecodeRedacted {
            method: call.name.to_string(),
            line: e.line(),
            column: e.column(),
        });
        bytes.zeroize();
        decoded
    }

    /// Sends `call` and returns the raw body of a successful answer.
    pub async fn send_bytes(&self, call: &Call) -> Result<Vec<u8>, GcpError> {
        let url = self.endpoints.url(&call.api, &call.path)?;
        let started = Instant::now();
        let policy = self.retry;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = policy.deadline.saturating_sub(started.elapsed());
            let outcome = tokio::time::timeout(remaining, self.attempt(call, &url)).await;
            let (err, decision) = match outcome {
                Err(_) => {
                    return Err(GcpError::Timeout {
                        method: call.name.to_string(),
                        after: policy.deadline,
                    });
                }
                Ok(Ok(Answer::Success(bytes))) => return Ok(bytes),
                Ok(Ok(Answer::Failure {
                    status,
                    body,
                    retry_after,
                })) => {
                    let decision = retry::decide_status(status, &body, retry_after, call.retry);
                    (
                        error::from_response(&call.name, status.as_u16(), &body),
                        decision,
                    )
                }
                Ok(Err(AttemptError::Auth(e))) => return Err(e),
                Ok(Err(AttemptError::Transport(e))) => {
                    let decision = retry::decide_transport(&e, call.retry);
                    let err = if e.is_timeout() {
                        GcpError::Timeout {
                            method: call.name.to_string(),
                            after: REQUEST_TIMEOUT,
                        }
                    } else {
                        GcpError::Network {
                            method: call.name.to_string(),
                            source: e,
                        }
                    };
                    (err, decision)
                }
            };
            let Decision::Retry { retry_after } = decision else {
                return Err(err);
            };
            let Some(delay) =
                policy.next_delay(attempt, started.elapsed(), retry_after, &mut rand::rng())
            else {
                return Err(exhausted(err));
            };
            tracing::debug!(
                method = &*call.name,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "retrying Google API call"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, call: &Call, url: &Url) -> Result<Answer, AttemptError> {
        let token = self.tokens.token().await.map_err(AttemptError::Auth)?;
        tracing::debug!(method = &*call.name, http = %call.method, url = %url, "Google API call");
        let mut req = self
            .client
            .request(call.method.clone(), url.clone())
            .bearer_auth(token.expose_secret());
        // The quota project, as Google's libraries send it (google-auth `credentials.py`
        // `apply_quota_project`): without it a user credential's calls to client-based APIs
        // (Service Usage, Resource Manager) are billed to gcloud's OAuth client project and
        // refused.
        if let Some(project) = self.tokens.quota_project() {
            req = req.header(USER_PROJECT_HEADER, project);
        }
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        req = match (&call.media, &call.body) {
            (Some(media), _) => req
                .header(reqwest::header::CONTENT_TYPE, media.content_type.as_str())
                .body(media.bytes.clone()),
            (None, Some(body)) => req.json(body),
            // Google answers 411 to a POST without Content-Length.
            (None, None) if call.method == Method::POST => req.body(Vec::new()),
            (None, None) => req,
        };
        let resp = req.send().await.map_err(AttemptError::Transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let body = resp
            .bytes()
            .await
            .map_err(AttemptError::Transport)?
            .to_vec();
        tracing::debug!(
            method = &*call.name,
            status = status.as_u16(),
            "Google API answer"
        );
        if status.is_success() {
            Ok(Answer::Success(body))
        } else {
            Ok(Answer::Failure {
                status,
                body,
                retry_after,
            })
        }
    }
}

enum Answer {
    Success(Vec<u8>),
    Failure {
        status: StatusCode,
        body: Vec<u8>,
        retry_after: Option<Duration>,
    },
}

enum AttemptError {
    Auth(GcpError),
    Transport(reqwest::Error),
}

/// A retryable Google error that outlasted the budget is reported as transient.
fn exhausted(err: GcpError) -> GcpError {
    match err {
        GcpError::Other {
            method,
            code,
            status,
            message,
        } if code == 429 || code >= 500 => GcpError::Transient {
            method,
            code,
            status,
            message,
        },
        other => other,
    }
}

/// Pages a list call has at most before we assume the server loops.
const MAX_PAGES: usize = 1000;

/// Fetches every page of a list call. `token_param` is the query parameter that carries the
/// page token (`pageToken`, or `continue` for Cloud Run v1); `split` returns a page's items
/// and its next token.
pub(crate) async fn list_all<P, T>(
    http: &GcpHttp,
    call: Call,
    token_param: &'static str,
    split: impl Fn(P) -> Result<(Vec<T>, Option<String>), GcpError>,
) -> Result<Vec<T>, GcpError>
where
    P: DeserializeOwned,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..MAX_PAGES {
        let mut page_call = call.clone();
        if let Some(t) = &token {
            page_call = page_call.query(token_param, t.clone());
        }
        let (items, next) = split(http.send::<P>(page_call).await?)?;
        out.extend(items);
        match next.filter(|t| !t.is_empty()) {
            None => return Ok(out),
            Some(t) if !seen.insert(t.clone()) => {
                return Err(GcpError::Config(format!(
                    "{}: the server sent the same page token twice",
                    call.name
                )));
            }
            Some(t) => token = Some(t),
        }
    }
    Err(GcpError::Config(format!(
        "{}: more than {MAX_PAGES} pages",
        call.name
    )))
}

/// Fetches every page of a list call whose answers are Google's usual list page: the items
/// under a field named after the collection (`items`: `jobs`, `versions`, ...) and
/// `nextPageToken`, the next page asked for with `pageToken`.
pub(crate) async fn list_pages<T: DeserializeOwned>(
    http: &GcpHttp,
    call: Call,
    items: &'static str,
) -> Result<Vec<T>, GcpError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        next_page_token: Option<String>,
        #[serde(flatten)]
        fields: serde_json::Map<String, Value>,
    }
    let method = call.name.clone();
    list_all(http, call, "pageToken", |mut page: Page| {
        let Some(list) = page.fields.remove(items) else {
            return Ok((Vec::new(), page.next_page_token));
        };
        let list = serde_json::from_value(list).map_err(|e| GcpError::Decode {
            method: method.to_string(),
            source: e,
        })?;
        Ok((list, page.next_page_token))
    })
    .await
}

/// Turns "not found" into `None`, for `get_*` calls.
pub trait OptionalExt<T> {
    fn optional(self) -> Result<Option<T>, GcpError>;
}

impl<T> OptionalExt<T> for Result<T, GcpError> {
    fn optional(self) -> Result<Option<T>, GcpError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_hosts() {
        let e = Endpoints::google();
        let region = Region::parse("europe-west1").unwrap();
        assert_eq!(
            e.url(&Api::Iam, "v1/projects/p/serviceAccounts")
                .unwrap()
                .as_str(),
            "https://iam.googleapis.com/v1/projects/p/serviceAccounts"
        );
        for (api, host) in [
            (Api::ResourceManager, "cloudresourcemanager"),
            (Api::ServiceUsage, "serviceusage"),
            (Api::SecretManager, "secretmanager"),
            (Api::RunV2, "run"),
            (Api::IamCredentials, "iamcredentials"),
            (Api::Logging, "logging"),
            (Api::CloudBuild, "cloudbuild"),
            (Api::ArtifactRegistry, "artifactregistry"),
        ] {
            let root = e.root(&api).unwrap();
            assert_eq!(root.as_str(), format!("https://{host}.googleapis.com/"));
        }
        assert_eq!(
            e.url(
                &Api::RunV1(region),
                "apis/run.googleapis.com/v1/namespaces/p/jobs"
            )
            .unwrap()
            .as_str(),
            "https://europe-west1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/p/jobs"
        );
    }

    #[test]
    fn override_sends_everything_to_one_base() {
        let e = Endpoints::with_base("http://127.0.0.1:8085").unwrap();
        for api in [
            Api::Iam,
            Api::RunV2,
            Api::RunV1(Region::parse("us-central1").unwrap()),
        ] {
            assert_eq!(
                e.url(&api, "v2/x").unwrap().as_str(),
                "http://127.0.0.1:8085/v2/x"
            );
        }
        let e = Endpoints::with_base("http://127.0.0.1:8085/prefix").unwrap();
        assert_eq!(
            e.url(&Api::Iam, "v1/a").unwrap().as_str(),
            "http://127.0.0.1:8085/prefix/v1/a"
        );
        assert!(Endpoints::with_base("ftp://x").is_err());
        assert!(Endpoints::with_base("not a url").is_err());
        assert!(Endpoints::with_base("http://h/?q=1").is_err());
    }

    #[test]
    fn resource_names_are_checked_and_encoded() {
        // `seg` itself is bootstrap-http's, tested there.
        assert_eq!(
            resource_path("projects/p/locations/r/operations/o-1").unwrap(),
            "projects/p/locations/r/operations/o-1"
        );
        assert!(resource_path("projects/../x").is_err());
        assert!(resource_path("projects//x").is_err());
        assert!(resource_path("").is_err());
        assert_eq!(resource_path("operations/a?b").unwrap(), "operations/a%3Fb");
    }

    #[test]
    fn exhausted_server_errors_become_transient() {
        for (code, transient) in [(429, true), (500, true), (503, true), (418, false)] {
            let e = exhausted(GcpError::Other {
                method: "m".into(),
                code,
                status: String::new(),
                message: "x".into(),
            });
            match e {
                GcpError::Transient { code: c, .. } => assert!(transient && c == code, "{code}"),
                GcpError::Other { code: c, .. } => assert!(!transient && c == code, "{code}"),
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn optional_maps_not_found_only() {
        let nf: Result<u8, GcpError> = Err(GcpError::NotFound {
            method: "m".into(),
            message: String::new(),
        });
        assert_eq!(nf.optional().unwrap(), None);
        let other: Result<u8, GcpError> = Err(GcpError::Config("x".into()));
        assert!(other.optional().is_err());
        assert_eq!(Ok::<u8, GcpError>(3).optional().unwrap(), Some(3));
    }
}
