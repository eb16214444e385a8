//! Test-only handles for running a *host* program inside a container-like namespace, so that
//! tools and clients can be tested on Google's real host names with nothing patched
//! (`ip netns exec <name> bootstrap plan ...`, `ip netns exec <name> prefect worker start ...`):
//! - `POST /_sandbox/netns` `{"forward": [4200], "serviceAccount"?, "project"?, "region"?}` makes
//!   a namespace with the sandbox attached as for a container (its port and `forward` reachable
//!   on 127.0.0.1, Google's hosts over TLS, the metadata server as `serviceAccount`) and answers
//!   `{"name", "caBundle", "env": {trust variables}}`;
//! - `DELETE /_sandbox/netns/{name}` removes it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::executor::{Attached, MetadataIdentity, NetworkMode};
use crate::state::AppState;

/// Namespaces made through the route, by name, with the URL of the sandbox that made them.
fn held() -> &'static Mutex<HashMap<String, (String, Attached)>> {
    static HELD: OnceLock<Mutex<HashMap<String, (String, Attached)>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Removes the namespaces the sandbox at `url` made (its shutdown).
pub fn release(url: &str) {
    held()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, (owner, _)| owner != url);
}

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_sandbox/netns", post(create))
        .route("/_sandbox/netns/{name}", delete(remove))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    forward: Vec<u16>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

async fn create(State(state): State<AppState>, body: Option<Json<CreateBody>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or(CreateBody {
        forward: vec![],
        service_account: None,
        project: None,
        region: None,
    });
    let executor = state.run.executor();
    if let NetworkMode::Loopback(reason) = &executor.config().network {
        return error(
            StatusCode::FAILED_DEPENDENCY,
            format!("network namespaces are unavailable here: {reason}"),
        );
    }
    let identity = body.service_account.map(|email| {
        let project = body
            .project
            .unwrap_or_else(|| crate::DEFAULT_PROJECT.to_owned());
        MetadataIdentity {
            email,
            project_number: state
                .read()
                .project(&project)
                .map(|p| p.number.clone())
                .unwrap_or_default(),
            project_id: project,
            region: body.region.unwrap_or_else(|| "us-central1".to_owned()),
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
        }
    });
    let gateway = executor.config().gateway.get();
    let attached = match Attached::new(gateway, &body.forward, identity) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let name = attached.netns().name().to_owned();
    let env: serde_json::Map<String, serde_json::Value> = attached
        .trust_env()
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let bundle = gateway.map(|g| g.tls.bundle_path.display().to_string());
    held()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone(), (state.url.clone(), attached));
    Json(json!({"name": name, "caBundle": bundle, "env": env})).into_response()
}

async fn remove(Path(name): Path<String>) -> Response {
    let gone = held()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    match gone {
        Some(a) => {
            drop(a);
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no namespace {name}")),
    }
}
