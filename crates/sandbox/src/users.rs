//! Principals other than service-account keys: users with OAuth refresh tokens (what
//! `gcloud auth application-default login` gives), a test OIDC issuer and the workload identity
//! pool providers that trust it, and the attached account the metadata server speaks for.
//!
//! Test-only handles (no auth, loopback only), apart from the Google surface:
//! - `POST /_sandbox/users` `{"email", "project"?, "roles"?: [...], "quotaProject"?}`: makes a
//!   user, grants it the roles on the project (`user:EMAIL`), and answers an `authorized_user`
//!   credentials file whose `token_uri` is this sandbox;
//! - `POST /_sandbox/workload-identity` `{"project"?, "pool", "provider"}`: a provider that
//!   trusts this sandbox's issuer; answers `{"audience", "issuer", "principalPrefix"}`;
//! - `POST /_sandbox/oidc/token` `{"sub", "aud"}`: an OIDC ID token (JWT, HS256) from the
//!   issuer, as a CI system's token endpoint would mint;
//! - `POST /_sandbox/metadata` `{"email"}`: the account the metadata server's tokens act as
//!   (default: the operator).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::policy::{Binding, new_etag};
use crate::state::AppState;

/// The OAuth client of sandbox-issued user credentials (gcloud's is a Google client).
pub const CLIENT_ID: &str = "sandbox-adc-client.apps.sandbox.local";
/// Its secret (a public value, as gcloud's ADC client secret is).
pub const CLIENT_SECRET: &str = "sandbox-adc-client-secret";

/// What the sandbox knows about non-key principals. Saved with the state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CredStore {
    /// Users by email.
    pub users: BTreeMap<String, User>,
    /// Refresh token -> user email.
    pub refresh_tokens: BTreeMap<String, String>,
    /// Workload identity pool providers by audience
    /// (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X`).
    pub providers: BTreeMap<String, Provider>,
    /// The issuer's HMAC key (hex); made on first use.
    pub oidc_key: String,
    /// The metadata server's account; the operator when unset.
    pub metadata_email: Option<String>,
}

/// A user principal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub email: String,
}

/// A workload identity pool provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provider {
    pub project_number: String,
    pub pool: String,
    pub provider: String,
}

impl Provider {
    /// The IAM principal of a federated subject: Google's
    /// `principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/S`.
    pub fn principal(&self, subject: &str) -> String {
        format!(
            "principal://iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/subject/{subject}",
            self.project_number, self.pool
        )
    }
}

/// The control routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_sandbox/users", post(create_user))
        .route("/_sandbox/workload-identity", post(create_provider))
        .route("/_sandbox/oidc/token", post(mint_oidc))
        .route("/_sandbox/metadata", post(set_metadata))
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

fn default_project(state: &AppState, body: &Value) -> Option<String> {
    match body.get("project").and_then(Value::as_str) {
        Some(p) => Some(p.to_owned()),
        None => state.read().projects.keys().next().cloned(),
    }
}

/// Adds `member` to `role` on the project's policy, effective at once (the sandbox's own
/// set-up, not an API write).
fn grant(state: &AppState, project: &str, role: &str, member: &str) -> Result<(), String> {
    let mut data = state.write();
    let p = data
        .project_mut(project)
        .ok_or_else(|| format!("no project {project}"))?;
    match p
        .policy
        .bindings
        .iter_mut()
        .find(|b| b.role == role && b.condition.is_none())
    {
        Some(b) if b.members.iter().any(|m| m == member) => {}
        Some(b) => b.members.push(member.to_owned()),
        None => p.policy.bindings.push(Binding {
            role: role.to_owned(),
            members: vec![member.to_owned()],
            condition: None,
        }),
    }
    p.policy.etag = new_etag();
    Ok(())
}

async fn create_user(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let Some(email) = body.get("email").and_then(Value::as_str) else {
        return bad_request("email is required");
    };
    if !email.contains('@') || email.ends_with(".gserviceaccount.com") {
        return bad_request("email must be a user's address (not a service account)");
    }
    let Some(project) = default_project(&state, &body) else {
        return bad_request("no project");
    };
    let roles = crate::google::body_strings(&body, "roles");
    for role in &roles {
        if let Err(e) = grant(&state, &project, role, &format!("user:{email}")) {
            return bad_request(e);
        }
    }
    let refresh_token = format!("1//sandbox-{}", uuid::Uuid::new_v4().simple());
    {
        let mut data = state.write();
        data.creds.users.insert(
            email.to_owned(),
            User {
                email: email.to_owned(),
            },
        );
        data.creds
            .refresh_tokens
            .insert(refresh_token.clone(), email.to_owned());
    }
    // The shape gcloud writes to application_default_credentials.json (gcloud leaves
    // `account` empty; naming the user here lets tools say who it is).
    let mut file = json!({
        "account": email,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": refresh_token,
        "token_uri": format!("{}/token", state.url),
        "type": "authorized_user",
        "universe_domain": "googleapis.com",
    });
    if let Some(q) = body.get("quotaProject").and_then(Value::as_str) {
        file["quota_project_id"] = json!(q);
    }
    Json(file).into_response()
}

async fn create_provider(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let (Some(pool), Some(provider)) = (
        body.get("pool").and_then(Value::as_str),
        body.get("provider").and_then(Value::as_str),
    ) else {
        return bad_request("pool and provider are required");
    };
    let Some(project) = default_project(&state, &body) else {
        return bad_request("no project");
    };
    let number = match state.read().project(&project) {
        Some(p) => p.number.clone(),
        None => return bad_request(format!("no project {project}")),
    };
    let audience = format!(
        "//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"
    );
    let p = Provider {
        project_number: number,
        pool: pool.to_owned(),
        provider: provider.to_owned(),
    };
    let prefix = p.principal("");
    state.write().creds.providers.insert(audience.clone(), p);
    Json(json!({
        "audience": audience,
        "issuer": issuer(&state),
        "principalPrefix": prefix,
    }))
    .into_response()
}

/// The test issuer's URL.
pub fn issuer(state: &AppState) -> String {
    format!("{}/_sandbox/oidc", state.url)
}

fn oidc_key(state: &AppState) -> Vec<u8> {
    let mut data = state.write();
    if data.creds.oidc_key.is_empty() {
        data.creds.oidc_key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
    }
    data.creds.oidc_key.as_bytes().to_vec()
}

fn mac(key: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(signed);
    m.finalize().into_bytes().to_vec()
}

async fn mint_oidc(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let (Some(sub), Some(aud)) = (
        body.get("sub").and_then(Value::as_str),
        body.get("aud").and_then(Value::as_str),
    ) else {
        return bad_request("sub and aud are required");
    };
    let lifetime = body
        .get("lifetimeSecs")
        .and_then(Value::as_i64)
        .unwrap_or(600);
    let now = Utc::now().timestamp();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        json!({ "iss": issuer(&state), "sub": sub, "aud": aud, "iat": now, "exp": now + lifetime })
            .to_string(),
    );
    let signed = format!("{header}.{claims}");
    let sig = URL_SAFE_NO_PAD.encode(mac(&oidc_key(&state), signed.as_bytes()));
    Json(json!({ "token": format!("{signed}.{sig}") })).into_response()
}

/// Verifies an ID token of the test issuer for `audience`; returns its subject.
pub fn verify_oidc(state: &AppState, token: &str, audience: &str) -> Result<String, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("The subject token is not a JWT.".into());
    };
    let expected = mac(&oidc_key(state), format!("{h}.{c}").as_bytes());
    let given = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "Invalid JWT signature encoding.".to_owned())?;
    if given != expected {
        return Err("The ID token signature could not be verified.".into());
    }
    let claims: Value = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Invalid JWT claims.")?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer(state).as_str()) {
        return Err("The issuer is not trusted by the provider.".into());
    }
    // A provider's default allowed audience is its own full resource name, with or without
    // the `https:` scheme (Google's workload identity federation docs).
    let aud = claims
        .get("aud")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if aud != audience && aud != format!("https:{audience}") {
        return Err(format!(
            "The audience in ID Token [{aud}] does not match the expected audience {audience}."
        ));
    }
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp < Utc::now().timestamp() {
        return Err("The ID Token has expired.".into());
    }
    claims
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "The ID token has no sub.".into())
}

async fn set_metadata(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let email = body.get("email").and_then(Value::as_str).map(str::to_owned);
    state.write().creds.metadata_email = email.clone();
    Json(json!({ "email": email })).into_response()
}
