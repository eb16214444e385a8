//! Test-only handles under `/_sandbox/...`, apart from the Google surface and without auth
//! (the sandbox only listens on loopback):
//! - `GET|POST /_sandbox/faults` — read or set the fault spec: `{"spec": "seed=7,rate=0.2"}`
//!   (empty spec: no faults);
//! - `GET|POST /_sandbox/settings` — `{"saVisibilityMs", "grantDelayMs", "opDelayMs",
//!   "apiEnableDelayMs", "disableKeyCreation"}`, each optional;
//! - `POST /_sandbox/org-policy` — `{"disableKeyCreation": bool, "project"?: id}`;
//! - `POST /_sandbox/operations/finish` — every pending operation completes now;
//! - `GET /_sandbox/calls` — Google calls per discovery method id, and their total (the token
//!   endpoint is not counted); `DELETE /_sandbox/calls` resets the counts;
//! - `GET /_sandbox/denied` — the log of calls denied by authorization;
//! - `GET /_sandbox/state` — a dump (no tokens, no secret payloads, no private keys).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::faults::FaultSpec;
use crate::operations;
use crate::state::AppState;

/// The control routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_sandbox/faults", get(get_faults).post(set_faults))
        .route("/_sandbox/settings", get(get_settings).post(set_settings))
        .route("/_sandbox/org-policy", post(org_policy))
        .route("/_sandbox/operations/finish", post(finish_operations))
        .route("/_sandbox/calls", get(calls).delete(reset_calls))
        .route("/_sandbox/denied", get(denied))
        .route("/_sandbox/state", get(dump))
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

async fn get_faults(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "spec": state.faults.spec(), "injected": state.faults.injected() }))
}

async fn set_faults(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let text = body.get("spec").and_then(Value::as_str).unwrap_or_default();
    match text.parse::<FaultSpec>() {
        Ok(spec) => {
            if let Some(delay) = spec.op_delay {
                state.update_settings(|s| s.op_delay = delay);
            }
            state.faults.set(spec.clone());
            Json(json!({ "spec": spec })).into_response()
        }
        Err(err) => bad_request(format!("invalid fault spec: {err}")),
    }
}

fn settings_json(state: &AppState) -> Value {
    let s = state.settings();
    json!({
        "saVisibilityMs": s.consistency.sa_visibility.as_millis() as u64,
        "grantDelayMs": s.consistency.grant_delay.as_millis() as u64,
        "opDelayMs": s.op_delay.as_millis() as u64,
        "disableKeyCreation": s.disable_key_creation,
        "apiEnableDelayMs": s.api_enable_delay.as_millis() as u64,
    })
}

async fn get_settings(State(state): State<AppState>) -> Json<Value> {
    Json(settings_json(&state))
}

async fn set_settings(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let ms = |field: &str| {
        body.get(field)
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
    };
    for field in [
        "saVisibilityMs",
        "grantDelayMs",
        "opDelayMs",
        "apiEnableDelayMs",
    ] {
        if body.get(field).is_some_and(|v| v.as_u64().is_none()) {
            return bad_request(format!("{field} must be a non-negative integer"));
        }
    }
    state.update_settings(|s| {
        if let Some(d) = ms("saVisibilityMs") {
            s.consistency.sa_visibility = d;
        }
        if let Some(d) = ms("grantDelayMs") {
            s.consistency.grant_delay = d;
        }
        if let Some(d) = ms("opDelayMs") {
            s.op_delay = d;
        }
        if let Some(d) = ms("apiEnableDelayMs") {
            s.api_enable_delay = d;
        }
        if let Some(b) = body.get("disableKeyCreation").and_then(Value::as_bool) {
            s.disable_key_creation = b;
        }
    });
    Json(settings_json(&state)).into_response()
}

async fn org_policy(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let Some(disable) = body.get("disableKeyCreation").and_then(Value::as_bool) else {
        return bad_request("disableKeyCreation (bool) is required");
    };
    match body.get("project").and_then(Value::as_str) {
        Some(project) => {
            let mut data = state.write();
            match data.project_mut(project) {
                Some(p) => p.disable_key_creation = disable,
                None => return bad_request(format!("no project {project}")),
            }
        }
        None => state.update_settings(|s| s.disable_key_creation = disable),
    }
    Json(json!({ "disableKeyCreation": disable })).into_response()
}

async fn finish_operations(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "finished": operations::finish_all_now(&state) }))
}

async fn calls(State(state): State<AppState>) -> Json<Value> {
    let calls = state.faults.calls();
    let total: u64 = calls.values().sum();
    Json(json!({ "calls": calls, "total": total }))
}

async fn reset_calls(State(state): State<AppState>) -> StatusCode {
    state.faults.reset_calls();
    StatusCode::NO_CONTENT
}

async fn denied(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "denied": state.denied() }))
}

async fn dump(State(state): State<AppState>) -> Json<Value> {
    let data = state.read();
    let projects: Vec<Value> = data
        .projects
        .values()
        .map(|p| {
            json!({
                "id": p.id,
                "number": p.number,
                "enabledServices": p.enabled_services,
                "disableKeyCreation": p.disable_key_creation,
                "policy": p.policy.to_json(),
            })
        })
        .collect();
    let accounts: Vec<Value> = data
        .service_accounts
        .values()
        .map(crate::iam::sa_json)
        .collect();
    let keys: Vec<Value> = data
        .keys
        .values()
        .map(|k| json!({ "id": k.id, "email": k.email, "disabled": k.disabled }))
        .collect();
    // Secret structs serialize without payloads.
    let secrets = serde_json::to_value(&data.secrets).unwrap_or(Value::Null);
    Json(json!({
        "url": state.url,
        "projects": projects,
        "serviceAccounts": accounts,
        "keys": keys,
        "secrets": secrets,
        "operations": data.operations.len(),
        "settings": settings_json(&state),
        "faults": state.faults.spec(),
    }))
}
