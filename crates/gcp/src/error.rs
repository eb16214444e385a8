//! Typed errors for every Google call, parsed from Google's error envelope
//! `{"error":{"code","message","status","details"}}` or from a long-running operation's
//! `google.rpc.Status`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// What went wrong talking to Google. `method` names the API method (for example
/// `iam.projects.serviceAccounts.create`) so that a message says which call failed.
#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    /// 404 / `NOT_FOUND`. `get_*` calls turn this into `Ok(None)`.
    #[error("{method}: not found: {message}")]
    NotFound { method: String, message: String },
    /// 409 / `ALREADY_EXISTS`.
    #[error("{method}: already exists: {message}")]
    AlreadyExists { method: String, message: String },
    /// 403 / `PERMISSION_DENIED`; `permission` when Google names it.
    #[error("{method}: permission denied{}: {message}", permission.as_deref().map(|p| format!(" ({p})")).unwrap_or_default())]
    PermissionDenied {
        method: String,
        permission: Option<String>,
        message: String,
    },
    /// 403 with reason `SERVICE_DISABLED`: the API has to be enabled first, in the project
    /// ErrorInfo's `metadata.consumer` names (`projects/NUMBER`), when it names one.
    #[error("{method}: the API {service} is not enabled in {}: {message}", consumer.as_deref().unwrap_or("this project"))]
    ServiceDisabled {
        method: String,
        service: String,
        consumer: Option<String>,
        message: String,
    },
    /// 403 `SERVICE_DISABLED` for a user credential that named no quota project: Google
    /// checked the API against gcloud's shared OAuth client project, not the target project.
    #[error(
        "{method}: {service} needs a quota project for user credentials and none was sent \
         (Google checked {consumer}, not your project): {message}\n  \
         hint: run `gcloud auth application-default set-quota-project <project>`, or pass \
         --quota-project <project> (also `gcp.quota_project` in the plan, or \
         GOOGLE_CLOUD_QUOTA_PROJECT)"
    )]
    QuotaProjectMissing {
        method: String,
        service: String,
        consumer: String,
        message: String,
    },
    /// 400 / `FAILED_PRECONDITION` (for example key creation forbidden by an org policy).
    #[error("{method}: failed precondition: {message}")]
    FailedPrecondition { method: String, message: String },
    /// 409 / `ABORTED` (for example a concurrent IAM policy change; the etag was stale).
    #[error("{method}: aborted: {message}")]
    Aborted { method: String, message: String },
    /// 400 / `INVALID_ARGUMENT`.
    #[error("{method}: invalid argument: {message}")]
    InvalidArgument { method: String, message: String },
    /// 401 / `UNAUTHENTICATED`: the token was refused.
    #[error("{method}: unauthenticated: {message}")]
    Unauthenticated { method: String, message: String },
    /// 429 / 5xx that was still failing when the retry budget ran out.
    #[error("{method}: {status} (HTTP {code}) after retrying: {message}")]
    Transient {
        method: String,
        code: u16,
        status: String,
        message: String,
    },
    /// Any other Google error.
    #[error("{method}: {status} (HTTP {code}): {message}")]
    Other {
        method: String,
        code: u16,
        status: String,
        message: String,
    },
    /// An error response that is not Google's JSON (an HTML page from a proxy, a cut-off body).
    #[error("{method}: HTTP {code} with a body that is not a Google error: {excerpt:?}")]
    NonJson {
        method: String,
        code: u16,
        excerpt: String,
    },
    /// A successful response whose body does not match the documented schema.
    #[error("{method}: the response could not be read")]
    Decode {
        method: String,
        #[source]
        source: serde_json::Error,
    },
    /// Like [`GcpError::Decode`] for a response that carries secrets: the parser's message
    /// (which can quote the body) is left out.
    #[error("{method}: the response could not be read (line {line}, column {column})")]
    DecodeRedacted {
        method: String,
        line: usize,
        column: usize,
    },
    /// The request never got an answer (connection refused, reset, DNS, TLS).
    #[error("{method}: network error")]
    Network {
        method: String,
        #[source]
        source: reqwest::Error,
    },
    /// The request, or the whole retry budget, took longer than allowed.
    #[error("{method}: no answer within {after:?}")]
    Timeout { method: String, after: Duration },
    /// A long-running operation was still running at the caller's deadline.
    #[error("operation {name} did not finish within {waited:?}")]
    OperationTimeout { name: String, waited: Duration },
    /// Getting an access token failed.
    #[error("could not get a Google access token: {message}")]
    Auth { message: String },
    /// Local configuration is unusable (bad endpoint URL, bad key JSON, bad resource name).
    #[error("{0}")]
    Config(String),
}

impl GcpError {
    /// The HTTP status code for errors that came from Google.
    pub fn http_code(&self) -> Option<u16> {
        match self {
            Self::NotFound { .. } => Some(404),
            Self::AlreadyExists { .. } | Self::Aborted { .. } => Some(409),
            Self::PermissionDenied { .. }
            | Self::ServiceDisabled { .. }
            | Self::QuotaProjectMissing { .. } => Some(403),
            Self::FailedPrecondition { .. } | Self::InvalidArgument { .. } => Some(400),
            Self::Unauthenticated { .. } => Some(401),
            Self::Transient { code, .. }
            | Self::Other { code, .. }
            | Self::NonJson { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The message Google sent, when there is one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::NotFound { message, .. }
            | Self::AlreadyExists { message, .. }
            | Self::PermissionDenied { message, .. }
            | Self::ServiceDisabled { message, .. }
            | Self::QuotaProjectMissing { message, .. }
            | Self::FailedPrecondition { message, .. }
            | Self::Aborted { message, .. }
            | Self::InvalidArgument { message, .. }
            | Self::Unauthenticated { message, .. }
            | Self::Transient { message, .. }
            | Self::Other { message, .. } => Some(message),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
    }

    /// A stale etag on `setIamPolicy`, or any other `ABORTED`: redo the read-modify-write.
    pub fn is_aborted(&self) -> bool {
        matches!(self, Self::Aborted { .. })
    }

    /// The "service account X does not exist" answer that IAM gives for a binding to an account
    /// created seconds ago (eventual consistency).
    pub fn is_member_not_found(&self) -> bool {
        matches!(self, Self::InvalidArgument { message, .. } if message.contains("does not exist"))
    }

    /// 403 "Permission 'iam.serviceaccounts.actAs' denied", which persists for minutes after a
    /// grant while IAM propagates.
    pub fn is_act_as_denied(&self) -> bool {
        match self {
            Self::PermissionDenied {
                permission,
                message,
                ..
            } => {
                permission
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case("iam.serviceAccounts.actAs"))
                    || message
                        .to_ascii_lowercase()
                        .contains("iam.serviceaccounts.actas")
            }
            _ => false,
        }
    }

    /// Key creation forbidden by `constraints/iam.disableServiceAccountKeyCreation`.
    pub fn is_key_creation_forbidden(&self) -> bool {
        matches!(self, Self::FailedPrecondition { message, .. }
            if message.contains("Key creation is not allowed"))
    }
}

/// The body of a Google error response.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: Status,
}

/// `google.rpc.Status` as it appears in error bodies (HTTP code) and in operations (gRPC code).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
    /// Present in HTTP error bodies (`NOT_FOUND`, ...); absent in operation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Value>,
}

/// gRPC canonical code names, indexed by number (used when only the number is known).
const GRPC_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// HTTP status for a gRPC code, as Google maps them.
fn http_for_grpc(code: i64) -> u16 {
    match code {
        0 => 200,
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        1 => 499,
        12 => 501,
        14 => 503,
        4 => 504,
        _ => 500,
    }
}

/// Parses an error response body. Non-JSON bodies become [`GcpError::NonJson`].
pub(crate) fn from_response(method: &str, http_code: u16, body: &[u8]) -> GcpError {
    match serde_json::from_slice::<Envelope>(body) {
        Ok(env) => from_status(method, http_code, env.error),
        Err(_) => GcpError::NonJson {
            method: method.to_owned(),
            code: http_code,
            excerpt: excerpt(body),
        },
    }
}

/// Maps a long-running operation's error (gRPC code, no `status` string) to a typed error.
pub(crate) fn from_operation_status(method: &str, mut status: Status) -> GcpError {
    let http = http_for_grpc(status.code);
    if status.status.is_none() {
        status.status = usize::try_from(status.code)
            .ok()
            .and_then(|i| GRPC_NAMES.get(i))
            .map(|s| (*s).to_owned());
    }
    from_status(method, http, status)
}

fn from_status(method: &str, http_code: u16, st: Status) -> GcpError {
    let status = st.status.clone().unwrap_or_default();
    let method = method.to_owned();
    let message = st.message.clone();
    let info = error_info(&st.details);
    if let Some((reason, meta)) = &info
        && reason == "SERVICE_DISABLED"
    {
        let service = meta
            .get("service")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
            .to_owned();
        let consumer = meta
            .get("consumer")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if quota_project_missing(consumer.as_deref(), &message) {
            return GcpError::QuotaProjectMissing {
                method,
                service,
                consumer: consumer.unwrap_or_else(|| ADC_CLIENT_PROJECT.to_owned()),
                message,
            };
        }
        return GcpError::ServiceDisabled {
            method,
            service,
            consumer,
            message,
        };
    }
    match status.as_str() {
        "NOT_FOUND" => GcpError::NotFound { method, message },
        "ALREADY_EXISTS" => GcpError::AlreadyExists { method, message },
        "PERMISSION_DENIED" => {
            let permission = info
                .as_ref()
                .and_then(|(_, meta)| meta.get("permission").and_then(Value::as_str))
                .map(str::to_owned)
                .or_else(|| quoted_permission(&message));
            GcpError::PermissionDenied {
                method,
                permission,
                message,
            }
        }
        "FAILED_PRECONDITION" => GcpError::FailedPrecondition { method, message },
        "ABORTED" => GcpError::Aborted { method, message },
        "INVALID_ARGUMENT" => GcpError::InvalidArgument { method, message },
        "UNAUTHENTICATED" => GcpError::Unauthenticated { method, message },
        _ => match http_code {
            404 => GcpError::NotFound { method, message },
            401 => GcpError::Unauthenticated { method, message },
            _ => GcpError::Other {
                method,
                code: http_code,
                status,
                message,
            },
        },
    }
}

/// The `google.rpc.ErrorInfo` detail, if any: its reason and metadata.
/// The project of the OAuth client `gcloud auth application-default login` uses: Google
/// reports it as the consumer when a user credential sends no quota project (Google's
/// "Troubleshoot ADC" page; terraform-provider-google#1538).
pub const ADC_CLIENT_PROJECT: &str = "projects/764086051850";

/// Whether a SERVICE_DISABLED answer is really "no quota project": Google's text says so
/// ("... API requires a quota project, which is not set by default"), or the consumer is the
/// shared ADC client's project.
fn quota_project_missing(consumer: Option<&str>, message: &str) -> bool {
    consumer == Some(ADC_CLIENT_PROJECT) || message.contains("requires a quota project")
}

fn error_info(details: &[Value]) -> Option<(String, serde_json::Map<String, Value>)> {
    details.iter().find_map(|d| {
        let ty = d.get("@type")?.as_str()?;
        if !ty.ends_with("google.rpc.ErrorInfo") {
            return None;
        }
        let reason = d.get("reason")?.as_str()?.to_owned();
        let meta = d
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Some((reason, meta))
    })
}

/// "Permission 'iam.serviceaccounts.actAs' denied on ..." -> `iam.serviceaccounts.actAs`.
fn quoted_permission(message: &str) -> Option<String> {
    let rest = message.split_once("Permission '")?.1;
    let (perm, _) = rest.split_once('\'')?;
    (!perm.is_empty() && !perm.contains(' ')).then(|| perm.to_owned())
}

/// The first 200 characters of a body, for error messages about bodies that are not JSON.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(code: u16, body: &str) -> GcpError {
        from_response("m", code, body.as_bytes())
    }

    #[test]
    fn typed_statuses() {
        let e = parse(
            404,
            r#"{"error":{"code":404,"message":"nope","status":"NOT_FOUND"}}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(e.message(), Some("nope"));
        let e = parse(
            409,
            r#"{"error":{"code":409,"message":"x","status":"ALREADY_EXISTS"}}"#,
        );
        assert!(e.is_already_exists());
        let e = parse(
            409,
            r#"{"error":{"code":409,"message":"There were concurrent policy changes.","status":"ABORTED"}}"#,
        );
        assert!(e.is_aborted());
        let e = parse(
            400,
            r#"{"error":{"code":400,"message":"Service account a@b.iam.gserviceaccount.com does not exist.","status":"INVALID_ARGUMENT"}}"#,
        );
        assert!(e.is_member_not_found());
        let e = parse(
            400,
            r#"{"error":{"code":400,"message":"Key creation is not allowed on this service account.","status":"FAILED_PRECONDITION"}}"#,
        );
        assert!(e.is_key_creation_forbidden());
        let e = parse(
            401,
            r#"{"error":{"code":401,"message":"bad token","status":"UNAUTHENTICATED"}}"#,
        );
        assert!(matches!(e, GcpError::Unauthenticated { .. }));
        let e = parse(
            418,
            r#"{"error":{"code":418,"message":"tea","status":"TEAPOT"}}"#,
        );
        assert!(matches!(e, GcpError::Other { code: 418, ref status, .. } if status == "TEAPOT"));
    }

    #[test]
    fn permission_from_error_info_or_message() {
        let e = parse(
            403,
            r#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED","details":[
              {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"IAM_PERMISSION_DENIED",
               "domain":"iam.googleapis.com","metadata":{"permission":"iam.serviceAccounts.create"}}]}}"#,
        );
        assert!(
            matches!(e, GcpError::PermissionDenied { permission: Some(ref p), .. } if p == "iam.serviceAccounts.create")
        );
        let e = parse(
            403,
            r#"{"error":{"code":403,"message":"Permission 'iam.serviceaccounts.actAs' denied on service account x","status":"PERMISSION_DENIED"}}"#,
        );
        assert!(e.is_act_as_denied());
        assert!(e.to_string().contains("(iam.serviceaccounts.actAs)"), "{e}");
    }

    #[test]
    fn service_disabled() {
        let e = parse(
            403,
            r#"{"error":{"code":403,"message":"Cloud Run Admin API has not been used","status":"PERMISSION_DENIED","details":[
              {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED",
               "metadata":{"service":"run.googleapis.com","consumer":"projects/1"}}]}}"#,
        );
        assert!(
            matches!(e, GcpError::ServiceDisabled { ref service, .. } if service == "run.googleapis.com")
        );
    }

    /// Google's answer to a user credential without a quota project (the body Google sends,
    /// from its "Troubleshoot ADC" page and terraform-provider-google#1538).
    #[test]
    fn missing_quota_project_is_its_own_error_with_the_fix() {
        let e = parse(
            403,
            r#"{"error":{"code":403,"message":"Your application is authenticating by using local Application Default Credentials. The serviceusage.googleapis.com API requires a quota project, which is not set by default. To learn how to set your quota project, see https://cloud.google.com/docs/authentication/adc-troubleshooting/user-creds .","status":"PERMISSION_DENIED","details":[
              {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com",
               "metadata":{"service":"serviceusage.googleapis.com","consumer":"projects/764086051850"}}]}}"#,
        );
        assert!(matches!(e, GcpError::QuotaProjectMissing { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("gcloud auth application-default set-quota-project <project>"),
            "{text}"
        );
        assert!(!text.contains("is not enabled"), "{text}");
        assert_eq!(e.http_code(), Some(403));
        // The consumer alone is enough (the message may change).
        let e = parse(
            403,
            r#"{"error":{"code":403,"message":"API not used","status":"PERMISSION_DENIED","details":[
              {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED",
               "metadata":{"service":"cloudresourcemanager.googleapis.com","consumer":"projects/764086051850"}}]}}"#,
        );
        assert!(matches!(e, GcpError::QuotaProjectMissing { .. }), "{e:?}");
        // A disabled API of the project itself stays ServiceDisabled, naming the consumer.
        let e = parse(
            403,
            r#"{"error":{"code":403,"message":"not used","status":"PERMISSION_DENIED","details":[
              {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED",
               "metadata":{"service":"run.googleapis.com","consumer":"projects/42"}}]}}"#,
        );
        assert!(e.to_string().contains("not enabled in projects/42"), "{e}");
    }

    #[test]
    fn non_json_bodies_give_status_and_excerpt() {
        let html = format!("<html><body>{}</body></html>", "x".repeat(500));
        let e = parse(502, &html);
        match &e {
            GcpError::NonJson { code, excerpt, .. } => {
                assert_eq!(*code, 502);
                assert!(excerpt.starts_with("<html><body>"));
                assert!(excerpt.chars().count() <= 201);
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = parse(500, r#"{"error":{"code":500,"mess"#);
        assert!(matches!(e, GcpError::NonJson { code: 500, .. }));
    }

    #[test]
    fn operation_errors_use_grpc_codes() {
        let st = Status {
            code: 9,
            message: "container failed to start".into(),
            status: None,
            details: vec![],
        };
        let e = from_operation_status("op", st);
        assert!(matches!(e, GcpError::FailedPrecondition { .. }), "{e:?}");
        let st = Status {
            code: 6,
            message: "exists".into(),
            ..Status::default()
        };
        assert!(from_operation_status("op", st).is_already_exists());
        let st = Status {
            code: 13,
            message: "boom".into(),
            ..Status::default()
        };
        let e = from_operation_status("op", st);
        assert!(
            matches!(e, GcpError::Other { code: 500, ref status, .. } if status == "INTERNAL"),
            "{e:?}"
        );
    }
}
