//! Google's error body, `{"error":{"code","message","status","details":[...]}}`, as an axum
//! response. Every API of the sandbox fails through [`ApiError`] so the shape never drifts.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One Google API error: HTTP code, canonical status string, message and typed details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code, also repeated as `error.code`.
    pub code: u16,
    /// Canonical status name, e.g. `NOT_FOUND`.
    pub status: &'static str,
    /// Human-readable message, as Google words it where known.
    pub message: String,
    /// `google.rpc` detail messages, each with its `@type`.
    pub details: Vec<Value>,
    /// Seconds for a `Retry-After` header (429 from the fault injector).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A bare error with no details.
    pub fn new(code: u16, status: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// Adds one `google.rpc` detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.details.push(detail);
        self
    }

    /// 404 NOT_FOUND.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NOT_FOUND", message)
    }

    /// 409 ALREADY_EXISTS.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(409, "ALREADY_EXISTS", message)
    }

    /// 400 INVALID_ARGUMENT.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(400, "INVALID_ARGUMENT", message)
    }

    /// 400 FAILED_PRECONDITION (Google uses 400 for this status).
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(400, "FAILED_PRECONDITION", message)
    }

    /// 409 ABORTED, e.g. a stale etag on setIamPolicy.
    pub fn aborted(message: impl Into<String>) -> Self {
        Self::new(409, "ABORTED", message)
    }

    /// 401 UNAUTHENTICATED, worded as Google words a missing or bad token.
    pub fn unauthenticated() -> Self {
        Self::new(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential. See \
             https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
        .with_detail(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
            "domain": "googleapis.com",
        }))
    }

    /// 403 PERMISSION_DENIED naming the permission, with an `ErrorInfo` detail.
    pub fn permission_denied(permission: &str, resource: &str, service: &str) -> Self {
        Self::new(
            403,
            "PERMISSION_DENIED",
            format!(
                "Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
            ),
        )
        .with_detail(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "IAM_PERMISSION_DENIED",
            "domain": service,
            "metadata": { "permission": permission, "resource": resource },
        }))
    }

    /// 403 PERMISSION_DENIED with the `SERVICE_DISABLED` reason, as for a call to an API that is
    /// not enabled in the project.
    pub fn service_disabled(service: &str, project_number: &str) -> Self {
        let title = service_title(service);
        let url = format!(
            "https://console.developers.google.com/apis/api/{service}/overview?project={project_number}"
        );
        Self::new(
            403,
            "PERMISSION_DENIED",
            format!(
                "{title} has not been used in project {project_number} before or it is disabled. \
                 Enable it by visiting {url} then retry. If you enabled this API recently, wait a \
                 few minutes for the action to propagate to our systems and retry."
            ),
        )
        .with_detail(service_disabled_info(service, project_number, Some(&url)))
        .with_detail(json!({
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{ "description": "Google developers console API activation", "url": url }],
        }))
    }

    /// 429 RESOURCE_EXHAUSTED with a `Retry-After` header.
    pub fn resource_exhausted(retry_after: u64) -> Self {
        let mut err = Self::new(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded (sandbox fault injection).",
        );
        err.retry_after = Some(retry_after);
        err
    }

    /// 500 INTERNAL.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "INTERNAL", message)
    }

    /// 503 UNAVAILABLE.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "UNAVAILABLE", message)
    }

    /// The JSON body, `{"error":{...}}`.
    pub fn body(&self) -> Value {
        let mut error =
            json!({ "code": self.code, "message": self.message, "status": self.status });
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": error })
    }

    /// The `google.rpc.Status` form used inside a failed Operation (`code` is the gRPC code).
    pub fn rpc_status(&self) -> Value {
        let mut status = json!({ "code": grpc_code(self.status), "message": self.message });
        if !self.details.is_empty() {
            status["details"] = Value::Array(self.details.clone());
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (code, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// The numeric gRPC code of a canonical status name (used in `google.rpc.Status`).
pub fn grpc_code(status: &str) -> i32 {
    match status {
        "OK" => 0,
        "CANCELLED" => 1,
        "UNKNOWN" => 2,
        "INVALID_ARGUMENT" => 3,
        "DEADLINE_EXCEEDED" => 4,
        "NOT_FOUND" => 5,
        "ALREADY_EXISTS" => 6,
        "PERMISSION_DENIED" => 7,
        "RESOURCE_EXHAUSTED" => 8,
        "FAILED_PRECONDITION" => 9,
        "ABORTED" => 10,
        "OUT_OF_RANGE" => 11,
        "UNIMPLEMENTED" => 12,
        "INTERNAL" => 13,
        "UNAVAILABLE" => 14,
        "DATA_LOSS" => 15,
        "UNAUTHENTICATED" => 16,
        _ => 2,
    }
}

/// The `ErrorInfo` detail of a `SERVICE_DISABLED` answer: `consumer_number` is the project the
/// call is billed to; the activation URL is there when that project can enable the API.
pub fn service_disabled_info(
    service: &str,
    consumer_number: &str,
    activation_url: Option<&str>,
) -> Value {
    let mut metadata = json!({
        "service": service,
        "consumer": format!("projects/{consumer_number}"),
        "serviceTitle": service_title(service),
    });
    if let Some(url) = activation_url {
        metadata["activationUrl"] = json!(url);
    }
    metadata["containerInfo"] = json!(consumer_number);
    json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "SERVICE_DISABLED",
        "domain": "googleapis.com",
        "metadata": metadata,
    })
}

/// The display title Google uses for an API in SERVICE_DISABLED messages.
pub fn service_title(service: &str) -> String {
    match service {
        "iam.googleapis.com" => "Identity and Access Management (IAM) API".into(),
        "cloudresourcemanager.googleapis.com" => "Cloud Resource Manager API".into(),
        "serviceusage.googleapis.com" => "Service Usage API".into(),
        "run.googleapis.com" => "Cloud Run Admin API".into(),
        "secretmanager.googleapis.com" => "Secret Manager API".into(),
        "artifactregistry.googleapis.com" => "Artifact Registry API".into(),
        "cloudbuild.googleapis.com" => "Cloud Build API".into(),
        other => format!("{other} API"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_googles_shape() {
        let body = ApiError::not_found("nope").body();
        assert_eq!(body["error"]["code"], 404);
        assert_eq!(body["error"]["status"], "NOT_FOUND");
        assert_eq!(body["error"]["message"], "nope");
        assert!(body["error"].get("details").is_none());
    }

    #[test]
    fn service_disabled_carries_reason() {
        let err = ApiError::service_disabled("run.googleapis.com", "123");
        assert_eq!(err.code, 403);
        assert_eq!(err.details[0]["reason"], "SERVICE_DISABLED");
        assert_eq!(err.details[0]["metadata"]["service"], "run.googleapis.com");
        assert!(err.message.contains("Cloud Run Admin API"));
    }

    #[test]
    fn retry_after_header_is_set() {
        let response = ApiError::resource_exhausted(3).into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn rpc_status_uses_grpc_codes() {
        assert_eq!(ApiError::aborted("x").rpc_status()["code"], 10);
    }
}
