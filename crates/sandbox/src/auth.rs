//! Authentication: the OAuth 2.0 token endpoint (`POST /token`, jwt-bearer grant) and the
//! [`Caller`] every API route gets from the bearer token.
//!
//! An assertion is accepted when it is an RS256 JWT signed by an enabled key this sandbox issued
//! to the (enabled) account named in `iss`, with `aud` equal to the sandbox's token URL and a
//! valid `exp`/`iat`. The signature may be padded or unpadded base64url: `gcp_auth` pads.

use std::collections::HashMap;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::error::ApiError;
use crate::state::{AppState, TokenGrant};

/// Lifetime of an access token, as Google's (3600 s, reported as 3599).
const TOKEN_LIFETIME_SECS: i64 = 3600;
/// Clock skew tolerated on `iat`/`exp`.
const SKEW_SECS: i64 = 60;

/// The authenticated identity of an API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The service account's email.
    pub email: String,
}

impl Caller {
    /// The IAM member string: `serviceAccount:<email>`, `user:<email>` for a user, or the
    /// federated `principal://...` itself.
    pub fn member(&self) -> String {
        if self.email.starts_with("principal://") {
            self.email.clone()
        } else if self.is_user() {
            format!("user:{}", self.email)
        } else {
            format!("serviceAccount:{}", self.email)
        }
    }

    /// Whether the caller is a person (a user credential), not a service account or a
    /// federated workload.
    pub fn is_user(&self) -> bool {
        !self.email.starts_with("principal://") && !self.email.ends_with(".gserviceaccount.com")
    }
}

/// Resolves a bearer token to its caller: the token must be live and its account must still
/// exist and be enabled.
pub fn authenticate(state: &AppState, authorization: Option<&str>) -> Result<Caller, ApiError> {
    let token = authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(ApiError::unauthenticated)?;
    let data = state.read();
    let grant = data
        .tokens
        .get(token)
        .ok_or_else(ApiError::unauthenticated)?;
    if grant.expires_at <= Utc::now() {
        return Err(ApiError::unauthenticated());
    }
    let caller = Caller {
        email: grant.email.clone(),
    };
    // Federated principals exist as long as their token does; users while the sandbox knows
    // them; service accounts while they exist and are enabled.
    if grant.email.starts_with("principal://") || data.creds.users.contains_key(&grant.email) {
        return Ok(caller);
    }
    match data.service_accounts.get(&grant.email) {
        Some(sa) if !sa.disabled => Ok(caller),
        _ => Err(ApiError::unauthenticated()),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The API middleware has usually authenticated already.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        authenticate(state, header)
    }
}

/// An OAuth error response, `{"error": ..., "error_description": ...}`.
fn oauth_error(code: StatusCode, error: &str, description: impl Into<String>) -> Response {
    (
        code,
        axum::Json(json!({ "error": error, "error_description": description.into() })),
    )
        .into_response()
}

/// `POST /token`.
pub async fn token(
    State(state): State<AppState>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Expected a form-encoded body.",
        );
    };
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        return refresh_grant(&state, &form);
    }
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type.",
        );
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing assertion.",
        );
    };
    match verify_assertion(&state, assertion) {
        Ok(email) => {
            let token = issue_token(&state, "", email);
            axum::Json(json!({
                "access_token": token,
                "expires_in": TOKEN_LIFETIME_SECS - 1,
                "token_type": "Bearer",
            }))
            .into_response()
        }
        Err(description) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description),
    }
}

/// Issues a bearer token (`ya29.sandbox-{tag}…`) for `email`, valid for an hour as Google's
/// are; expired grants are dropped on the way, so the table does not grow without bound.
fn issue_token(state: &AppState, tag: &str, email: String) -> String {
    let token = format!("ya29.sandbox-{tag}{}", uuid::Uuid::new_v4().simple());
    let now = Utc::now();
    let mut data = state.write();
    data.tokens.retain(|_, grant| grant.expires_at > now);
    data.tokens.insert(
        token.clone(),
        TokenGrant {
            email,
            expires_at: now + Duration::seconds(TOKEN_LIFETIME_SECS),
        },
    );
    token
}

/// The refresh-token grant (RFC 6749 §6) for sandbox-issued user credentials: the client
/// must be the sandbox's ADC client and the refresh token one the sandbox issued. Google's
/// answers: `invalid_client` for a wrong client, `invalid_grant` for an unknown token.
fn refresh_grant(state: &AppState, form: &HashMap<String, String>) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if get("client_id") != crate::users::CLIENT_ID
        || get("client_secret") != crate::users::CLIENT_SECRET
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        );
    }
    let email = state
        .read()
        .creds
        .refresh_tokens
        .get(get("refresh_token"))
        .cloned();
    let Some(email) = email else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request");
    };
    let token = issue_token(state, "user-", email);
    axum::Json(json!({
        "access_token": token,
        "expires_in": TOKEN_LIFETIME_SECS - 1,
        "token_type": "Bearer",
        "scope": form.get("scope").cloned().unwrap_or_else(|| "https://www.googleapis.com/auth/cloud-platform".into()),
    }))
    .into_response()
}

/// Decodes base64url with or without `=` padding.
fn b64url(part: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| "Invalid JWT: bad base64url encoding.".to_owned())
}

/// Verifies a jwt-bearer assertion; returns the account email it authenticates.
pub fn verify_assertion(state: &AppState, assertion: &str) -> Result<String, String> {
    let mut parts = assertion.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Invalid JWT: expected three dot-separated parts.".into());
    };
    let header: Value =
        serde_json::from_slice(&b64url(header_b64)?).map_err(|_| "Invalid JWT header.")?;
    let claims: Value =
        serde_json::from_slice(&b64url(claims_b64)?).map_err(|_| "Invalid JWT claims.")?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("Invalid JWT: only RS256 is accepted.".into());
    }
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or("Invalid JWT: missing iss.")?;
    let expected_aud = format!("{}/token", state.url);
    // google-auth (Python) always signs for Google's token endpoint, whatever `token_uri` says.
    let aud = claims.get("aud").and_then(Value::as_str);
    if aud != Some(expected_aud.as_str()) && aud != Some("https://oauth2.googleapis.com/token") {
        return Err(format!("Invalid JWT: aud must be {expected_aud}."));
    }
    let now = Utc::now().timestamp();
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or("Invalid JWT: missing exp.")?;
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("Invalid JWT: missing iat.")?;
    if exp + SKEW_SECS < now || iat - SKEW_SECS > now || exp - iat > TOKEN_LIFETIME_SECS {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.".into());
    }
    let signature = b64url(sig_b64)?;
    let signed = &assertion[..header_b64.len() + 1 + claims_b64.len()];
    let kid = header.get("kid").and_then(Value::as_str);

    let candidates: Vec<String> = {
        let data = state.read();
        match data.service_accounts.get(iss) {
            Some(sa) if !sa.disabled => {}
            _ => return Err("Invalid JWT Signature.".into()),
        }
        data.keys
            .values()
            .filter(|k| k.email == iss && !k.disabled && kid.is_none_or(|kid| kid == k.id))
            .map(|k| k.public_key_pem.clone())
            .collect()
    };
    let sig = Signature::try_from(signature.as_slice()).map_err(|_| "Invalid JWT Signature.")?;
    for pem in candidates {
        let Ok(public) = RsaPublicKey::from_public_key_pem(&pem) else {
            continue;
        };
        if VerifyingKey::<Sha256>::new(public)
            .verify(signed.as_bytes(), &sig)
            .is_ok()
        {
            return Ok(iss.to_owned());
        }
    }
    Err("Invalid JWT Signature.".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_accepts_padding() {
        assert_eq!(b64url("YQ").ok(), Some(b"a".to_vec()));
        assert_eq!(b64url("YQ==").ok(), Some(b"a".to_vec()));
        assert!(b64url("Y*").is_err());
    }

    #[test]
    fn member_form() {
        let caller = Caller {
            email: "a@p.iam.gserviceaccount.com".into(),
        };
        assert_eq!(
            caller.member(),
            "serviceAccount:a@p.iam.gserviceaccount.com"
        );
        let user = Caller {
            email: "dev@example.com".into(),
        };
        assert!(user.is_user());
        assert_eq!(user.member(), "user:dev@example.com");
        let federated = Caller {
            email: "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/subject/s".into(),
        };
        assert!(!federated.is_user());
        assert!(federated.member().starts_with("principal://"));
    }
}
