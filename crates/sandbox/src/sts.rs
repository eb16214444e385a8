//! Security Token Service `POST /v1/token` (sts.v1 discovery `sts.token`): the RFC 8693 token
//! exchange of workload identity federation. A subject token (an ID token of the sandbox's
//! test issuer, see [`crate::users`]) for a registered provider's audience becomes a federated
//! access token whose principal is
//! `principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/S`.
//!
//! Clients send it form-encoded with snake_case names (google-auth `google/oauth2/sts.py`);
//! the discovery document's camelCase JSON body is accepted too. Errors are OAuth errors
//! (`{"error","error_description"}`, HTTP 400), as Google's STS answers.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::state::{AppState, TokenGrant};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const SUBJECT_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];
/// Federated tokens live an hour, as Google's.
const LIFETIME_SECS: i64 = 3600;

fn oauth_error(error: &str, description: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": error, "error_description": description.into() })),
    )
        .into_response()
}

/// Reads the request as form (snake_case) or JSON (camelCase) into snake_case names.
fn fields(headers: &HeaderMap, body: &Bytes) -> Option<HashMap<String, String>> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        let v: Value = serde_json::from_slice(body).ok()?;
        let map = v.as_object()?;
        let snake = |k: &str| {
            let mut out = String::new();
            for c in k.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            out
        };
        Some(
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (snake(k), s.to_owned())))
                .collect(),
        )
    } else {
        serde_urlencoded_pairs(body)
    }
}

fn serde_urlencoded_pairs(body: &Bytes) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k)?, decode(v)?);
    }
    Some(out)
}

/// `POST /v1/token`.
pub async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(form) = fields(&headers, &body) else {
        return oauth_error("invalid_request", "Invalid request body.");
    };
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if get("grant_type") != Some(GRANT_TYPE) {
        return oauth_error(
            "unsupported_grant_type",
            "Invalid value for \"grant_type\".",
        );
    }
    if get("requested_token_type") != Some(ACCESS_TOKEN_TYPE) {
        return oauth_error(
            "invalid_request",
            "Invalid value for \"requested_token_type\".",
        );
    }
    let Some(subject_type) = get("subject_token_type") else {
        return oauth_error("invalid_request", "Missing subject_token_type.");
    };
    if !SUBJECT_TYPES.contains(&subject_type) {
        return oauth_error(
            "invalid_request",
            format!("Invalid value for \"subject_token_type\": {subject_type}."),
        );
    }
    let Some(audience) = get("audience") else {
        return oauth_error("invalid_request", "Missing audience.");
    };
    let Some(subject) = get("subject_token") else {
        return oauth_error("invalid_request", "Missing subject_token.");
    };
    let provider = state.read().creds.providers.get(audience).cloned();
    let Some(provider) = provider else {
        return oauth_error(
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid. This \
             might either be because the pool or provider is disabled or deleted or because it \
             doesn't exist.",
        );
    };
    let sub = match crate::users::verify_oidc(&state, subject, audience) {
        Ok(s) => s,
        Err(why) => return oauth_error("invalid_grant", why),
    };
    let token = format!("ya29.sandbox-sts-{}", uuid::Uuid::new_v4().simple());
    let now = Utc::now();
    {
        let mut data = state.write();
        data.tokens.retain(|_, g| g.expires_at > now);
        data.tokens.insert(
            token.clone(),
            TokenGrant {
                email: provider.principal(&sub),
                expires_at: now + Duration::seconds(LIFETIME_SECS),
            },
        );
    }
    axum::Json(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": LIFETIME_SECS - 1,
    }))
    .into_response()
}
