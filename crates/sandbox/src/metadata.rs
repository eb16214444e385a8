//! The metadata server a container sees at `metadata.google.internal` (169.254.169.254:80 in
//! its namespace), as on Cloud Run: the runtime service account's token, email and scopes, the
//! project id and number, the region and an instance id.
//!
//! What the two clients here ask (read from their sources):
//! - google-auth (`google/auth/compute_engine/_metadata.py`): `ping` GETs
//!   `http://169.254.169.254/` with `Metadata-Flavor: Google` and needs that header back;
//!   `get_service_account_info` GETs `instance/service-accounts/default/?recursive=true` and
//!   reads the JSON `email` and `scopes`; the token is
//!   `instance/service-accounts/<email or default>/token` (optionally `?scopes=a,b`), JSON
//!   `{access_token, expires_in, token_type}`; JSON is parsed only when the response says
//!   `application/json`; `project/project-id` is text.
//! - gcp_auth 0.12 (`metadata_service_account.rs`): `project/project-id` as text and
//!   `instance/service-accounts/default/token`, both with `Metadata-Flavor: Google`.
//!
//! A request without `Metadata-Flavor: Google` gets 403, as on Google.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chrono::Utc;
use serde_json::json;
use std::collections::HashMap;

use crate::executor::MetadataIdentity;
use crate::state::{AppState, TokenGrant};

/// Lifetime of a metadata token, as the token endpoint's.
const TOKEN_LIFETIME_SECS: i64 = 3600;

/// The scope Cloud Run's runtime accounts carry.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The metadata routes; handlers read a [`MetadataIdentity`] extension set per namespace.
pub fn router(state: AppState) -> Router {
    routes().with_state(state)
}

fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/computeMetadata/v1/", get(root))
        .route("/computeMetadata/v1/{*path}", get(lookup))
}

/// The same metadata server on the sandbox's own port, for programs on the host
/// (`GCE_METADATA_HOST=127.0.0.1:PORT`, as google-auth and gcp_auth read it): it speaks for
/// the account set with `POST /_sandbox/metadata`, and has no account (404s) until then.
pub fn host_router(state: AppState) -> Router<AppState> {
    routes().layer(middleware::from_fn_with_state(state, host_identity))
}

async fn host_identity(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let identity = {
        let data = state.read();
        data.creds
            .metadata_email
            .as_ref()
            .and_then(|email| data.service_accounts.get(email))
            .map(|sa| MetadataIdentity {
                email: sa.email.clone(),
                project_id: sa.project.clone(),
                project_number: crate::state::project_number(&sa.project),
                region: crate::HOST_METADATA_REGION.to_owned(),
                instance_id: format!("host-{}", sa.unique_id),
            })
            .unwrap_or_default()
    };
    req.extensions_mut().insert(identity);
    next.run(req).await
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert("Metadata-Flavor", HeaderValue::from_static("Google"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("Server", HeaderValue::from_static("Metadata Server for VM"));
    r
}

fn text(body: impl Into<String>) -> Response {
    reply(StatusCode::OK, "application/text", body.into())
}

fn json_reply(body: serde_json::Value) -> Response {
    reply(StatusCode::OK, "application/json", body.to_string())
}

fn not_found() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        "text/html; charset=UTF-8",
        "Not Found\n".to_owned(),
    )
}

/// `None` when the request carries `Metadata-Flavor: Google`; otherwise the 403.
fn flavor_check(headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get("Metadata-Flavor")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "Google");
    (!ok).then(|| {
        reply(
            StatusCode::FORBIDDEN,
            "text/html; charset=UTF-8",
            "Missing required header \"Metadata-Flavor\": \"Google\"\n".to_owned(),
        )
    })
}

async fn root(headers: HeaderMap) -> Response {
    if let Some(denied) = flavor_check(&headers) {
        return denied;
    }
    text("instance/\nproject/\n")
}

async fn lookup(
    State(state): State<AppState>,
    Extension(id): Extension<MetadataIdentity>,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = flavor_check(&headers) {
        return denied;
    }
    if id.email.is_empty() {
        return not_found();
    }
    let recursive = query.get("recursive").is_some_and(|v| v == "true");
    let path = path.trim_end_matches('/');
    match path {
        "project/project-id" => text(&id.project_id),
        "project/numeric-project-id" => text(&id.project_number),
        "instance/id" => text(&id.instance_id),
        "instance/region" => text(format!(
            "projects/{}/regions/{}",
            id.project_number, id.region
        )),
        "instance/zone" => text(format!(
            "projects/{}/zones/{}-1",
            id.project_number, id.region
        )),
        "instance/service-accounts" => text(format!("default/\n{}/\n", id.email)),
        _ => {
            let Some(rest) = path.strip_prefix("instance/service-accounts/") else {
                return not_found();
            };
            let (account, leaf) = rest.split_once('/').unwrap_or((rest, ""));
            if account != "default" && account != id.email {
                return not_found();
            }
            account_entry(&state, &id, leaf, recursive)
        }
    }
}

fn account_entry(state: &AppState, id: &MetadataIdentity, leaf: &str, recursive: bool) -> Response {
    match leaf {
        "" if recursive => json_reply(json!({
            "aliases": ["default"],
            "email": id.email,
            "scopes": [CLOUD_PLATFORM],
        })),
        "" => text("aliases\nemail\nidentity\nscopes\ntoken\n"),
        "email" => text(&id.email),
        "aliases" => text("default"),
        "scopes" => text(format!("{CLOUD_PLATFORM}\n")),
        "token" => match mint(state, &id.email) {
            Some(token) => json_reply(json!({
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECS - 1,
                "token_type": "Bearer",
            })),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// A sandbox access token for `email`, if the account exists and is enabled.
fn mint(state: &AppState, email: &str) -> Option<String> {
    let mut data = state.write();
    let usable = data
        .service_accounts
        .get(email)
        .is_some_and(|sa| !sa.disabled);
    if !usable {
        return None;
    }
    let token = format!("ya29.sandbox-md-{}", uuid::Uuid::new_v4().simple());
    let now = Utc::now();
    data.tokens.retain(|_, grant| grant.expires_at > now);
    data.tokens.insert(
        token.clone(),
        TokenGrant {
            email: email.to_owned(),
            expires_at: now + chrono::Duration::seconds(TOKEN_LIFETIME_SECS),
        },
    );
    Some(token)
}
