//! Dispatch of the Google surface other than Cloud Run: recognise the method by its discovery
//! path ([`crate::methods`]) and hand it to its API module with the parsed query and body.

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult};
use crate::methods::{self, MethodCall};
use crate::state::AppState;
use crate::{crm, iam, secrets, serviceusage};

/// Largest request body accepted (policies and secrets are small).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// One API call, parsed.
pub struct Ctx {
    /// Shared state.
    pub state: AppState,
    /// Who calls.
    pub caller: Caller,
    /// Query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The JSON body (`Null` when empty).
    pub body: Value,
}

/// The first value of the query parameter `name` (Run's calls read their query alike).
pub(crate) fn query_param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Ctx {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        query_param(&self.query, name)
    }

    /// All values of a repeated query parameter.
    pub fn params(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean query parameter (`true`/`1`).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }
}

/// The fallback handler: every Google route not served by the Run router.
pub async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    match handle(state, request).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => err.into_response(),
    }
}

/// A Google request taken apart: which method, who calls, its query and JSON body. Shared by
/// this dispatcher and the Run router, so both read requests the same way.
pub(crate) struct Decoded {
    pub call: MethodCall,
    pub caller: Caller,
    pub query: Vec<(String, String)>,
    pub body: Value,
}

/// Decodes a request (the guard middleware has usually identified the method and the caller
/// already; otherwise this does it).
pub(crate) async fn decode(state: &AppState, request: Request) -> ApiResult<Decoded> {
    let (parts, body) = request.into_parts();
    let call = match parts.extensions.get::<MethodCall>() {
        Some(call) => call.clone(),
        None => methods::identify(parts.method.as_str(), parts.uri.path()).ok_or_else(|| {
            ApiError::not_found(format!(
                "The requested URL {} was not found on this server.",
                parts.uri.path()
            ))
        })?,
    };
    let caller = match parts.extensions.get::<Caller>() {
        Some(caller) => caller.clone(),
        None => {
            let header = parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            auth::authenticate(state, header)?
        }
    };
    let query = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|_| ApiError::invalid_argument("Invalid query string."))?;
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::invalid_argument("Request body too large or unreadable."))?;
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_argument(format!("Invalid JSON payload received. {e}"))
        })?
    };
    Ok(Decoded {
        call,
        caller,
        query,
        body,
    })
}

async fn handle(state: AppState, request: Request) -> ApiResult<Value> {
    let Decoded {
        call,
        caller,
        query,
        body,
    } = decode(&state, request).await?;
    let ctx = Ctx {
        state,
        caller,
        query,
        body,
    };
    let api = call.id.split('.').next().unwrap_or_default();
    match api {
        "iam" => iam::handle(&ctx, &call).await,
        "iamcredentials" => crate::iamcredentials::handle(&ctx, &call),
        "cloudresourcemanager" => crm::handle(&ctx, &call),
        "serviceusage" => serviceusage::handle(&ctx, &call),
        "secretmanager" => secrets::handle(&ctx, &call),
        "artifactregistry" => crate::artifacts::handle(&ctx, &call),
        "cloudbuild" => crate::builds::handle_cloudbuild(&ctx, &call),
        "run" if call.id == "run.projects.locations.builds.submit" => {
            crate::builds::submit(&ctx, &call)
        }
        _ => Err(ApiError::not_found(format!(
            "Method {} is not served by this sandbox.",
            call.id
        ))),
    }
}

/// A required string field of the body.
pub fn body_str<'a>(body: &'a Value, field: &str) -> ApiResult<&'a str> {
    body.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "Request contains an invalid argument: {field} is required."
            ))
        })
}

/// The strings of a list field of the body (none when it is absent; items that are not strings
/// are passed over).
pub fn body_strings(body: &Value, field: &str) -> Vec<String> {
    body.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The `permissions` of a TestIamPermissionsRequest.
pub fn requested_permissions(body: &Value) -> Vec<String> {
    body_strings(body, "permissions")
}

/// Simple offset pagination: `pageToken` is the decimal offset.
pub fn paginate<T: Clone>(
    items: &[T],
    ctx: &Ctx,
    default_size: usize,
) -> ApiResult<(Vec<T>, Option<String>)> {
    let size = match ctx.param("pageSize") {
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| ApiError::invalid_argument("Invalid pageSize."))?,
        None => default_size,
    };
    let size = if size == 0 { default_size } else { size };
    let start = match ctx.param("pageToken").filter(|t| !t.is_empty()) {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::invalid_argument("Invalid page token."))?,
        None => 0,
    };
    let page: Vec<T> = items.iter().skip(start).take(size).cloned().collect();
    let next = (start + size < items.len()).then(|| (start + size).to_string());
    Ok((page, next))
}
