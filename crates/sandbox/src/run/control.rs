//! Test and user handles for Cloud Run, apart from the Google surface:
//! - `GET /_sandbox/logs/{name}`: the logs of an execution or service (full resource name or
//!   short id) as text; `?format=json` gives `{"lines":[{time,stream,text}], "dropped"}`;
//! - `GET /_sandbox/run/services`: each service with its container's loopback port, pid,
//!   readiness and restart count;
//! - `GET /_sandbox/run/workerPools`: each worker pool with its running instances (revision,
//!   pid, state).

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::executor::ServiceState;
use crate::state::AppState;

/// The control routes of the run module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_sandbox/logs/{*name}", get(logs))
        .route("/_sandbox/run/services", get(services))
        .route("/_sandbox/run/workerPools", get(worker_pools))
}

async fn logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let name = name.trim_start_matches('/');
    let Some(buffer) = state.run.logs(name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no logs for {name}")})),
        )
            .into_response();
    };
    let as_json = query.iter().any(|(k, v)| k == "format" && v == "json");
    if as_json {
        Json(json!({"lines": buffer.lines(), "dropped": buffer.dropped()})).into_response()
    } else {
        buffer.text().into_response()
    }
}

async fn services(State(state): State<AppState>) -> Json<Value> {
    let names: Vec<String> = state.run.store().services.keys().cloned().collect();
    let list: Vec<Value> = names
        .into_iter()
        .map(|n| {
            let mut out = json!({"name": n});
            if let Some((port, status)) = state.run.service_status(&n) {
                out["port"] = json!(port);
                match status {
                    ServiceState::Ready { restarts, pid } => {
                        out["ready"] = json!(true);
                        out["restarts"] = json!(restarts);
                        out["pid"] = json!(pid);
                    }
                    ServiceState::Starting { restarts } => {
                        out["ready"] = json!(false);
                        out["restarts"] = json!(restarts);
                    }
                    other => out["state"] = json!(format!("{other:?}")),
                }
            }
            out
        })
        .collect();
    Json(json!({ "services": list }))
}

async fn worker_pools(State(state): State<AppState>) -> Json<Value> {
    let names: Vec<String> = state.run.store().worker_pools.keys().cloned().collect();
    let list: Vec<Value> = names
        .into_iter()
        .map(|n| {
            let instances: Vec<Value> = state
                .run
                .pool_instances(&n)
                .into_iter()
                .map(|(revision, st)| match st {
                    ServiceState::Ready { restarts, pid } => json!({
                        "revision": revision, "state": "running", "pid": pid, "restarts": restarts,
                    }),
                    ServiceState::Starting { restarts } => {
                        json!({"revision": revision, "state": "starting", "restarts": restarts})
                    }
                    other => json!({"revision": revision, "state": format!("{other:?}")}),
                })
                .collect();
            json!({"name": n, "instances": instances})
        })
        .collect();
    Json(json!({ "workerPools": list }))
}
