//! The metadata server's token endpoints (what a Compute Engine VM or a Cloud Run container
//! reaches at `metadata.google.internal`): `GET /computeMetadata/v1/instance/service-accounts/
//! default/{token,email}`, only with `Metadata-Flavor: Google` (Google's metadata server
//! refuses requests without it, to stop SSRF). Tokens act as the account set with
//! `POST /_sandbox/metadata` (default: the operator). Point a client at it with
//! `GCE_METADATA_HOST=127.0.0.1:PORT`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{Duration, Utc};
use serde_json::json;

use crate::state::{AppState, TokenGrant};

const LIFETIME_SECS: i64 = 3600;

/// The metadata routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/token",
            get(token),
        )
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/email",
            get(email),
        )
}

fn flavored(headers: &HeaderMap) -> bool {
    headers
        .get("metadata-flavor")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "Google")
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "Missing required header: Metadata-Flavor: Google\n",
    )
        .into_response()
}

fn attached(state: &AppState) -> Option<String> {
    state.read().creds.metadata_email.clone()
}

async fn email(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !flavored(&headers) {
        return refused();
    }
    match attached(&state) {
        Some(e) => e.into_response(),
        None => (StatusCode::NOT_FOUND, "no service account attached\n").into_response(),
    }
}

async fn token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !flavored(&headers) {
        return refused();
    }
    let Some(email) = attached(&state) else {
        return (StatusCode::NOT_FOUND, "no service account attached\n").into_response();
    };
    let token = format!("ya29.sandbox-mds-{}", uuid::Uuid::new_v4().simple());
    let now = Utc::now();
    {
        let mut data = state.write();
        data.tokens.retain(|_, g| g.expires_at > now);
        data.tokens.insert(
            token.clone(),
            TokenGrant {
                email,
                expires_at: now + Duration::seconds(LIFETIME_SECS),
            },
        );
    }
    axum::Json(json!({
        "access_token": token,
        "expires_in": LIFETIME_SECS - 1,
        "token_type": "Bearer",
    }))
    .into_response()
}
