//! A Cloud Run service's URL: requests to a service's `uri` reach its running container, as
//! Google's front end routes `https://<service>-<hash>-<region>.a.run.app` to an instance.
//!
//! A host on this machine cannot resolve or trust `*.a.run.app`, so a service of the sandbox is
//! given the `uri` `<sandbox url>/_sandbox/run/invoke/<project>/<region>/<service>`, and this
//! route forwards `<uri>/<path>` to the container's `PORT` (method, headers, body, query kept;
//! `Host` is the container's). This is what lets a client outside the sandbox (Prefect's server
//! calling a webhook) reach a service deployed in it.
//!
//! As on Google: a service that requires IAM for invocation (`invokerIamDisabled` unset) refuses
//! a request without a valid identity token; the sandbox does not verify ID tokens, so it
//! answers such a service's calls 403 and only serves services with `invokerIamDisabled: true`
//! (<https://cloud.google.com/run/docs/securing/managing-access#invoker_check>). A service with
//! no ready container answers 503, as Cloud Run does while no instance can serve. Fault
//! injection applies under the method id `run.routes.invoke` (the permission of an invocation),
//! so a test can take a service's URL down (`method:run.routes.invoke=1`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::executor::ServiceState;
use crate::state::AppState;

/// The route prefix of service URLs.
pub const PREFIX: &str = "/_sandbox/run/invoke";

/// The longest a forwarded request may take (Cloud Run's default request timeout is 300 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The `uri` of a service of the sandbox.
pub fn service_uri(sandbox_url: &str, project: &str, region: &str, service: &str) -> String {
    format!(
        "{}{PREFIX}/{project}/{region}/{service}",
        sandbox_url.trim_end_matches('/')
    )
}

/// `ANY /_sandbox/run/invoke/{project}/{region}/{service}` with no further path.
pub async fn invoke_root(
    State(state): State<AppState>,
    Path((project, region, service)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    forward(state, &project, &region, &service, "", request).await
}

/// `ANY /_sandbox/run/invoke/{project}/{region}/{service}/{*path}`.
pub async fn invoke(
    State(state): State<AppState>,
    Path((project, region, service, path)): Path<(String, String, String, String)>,
    request: Request,
) -> Response {
    forward(state, &project, &region, &service, &path, request).await
}

fn refuse(status: StatusCode, text: &str) -> Response {
    (status, format!("{text}\n")).into_response()
}

async fn forward(
    state: AppState,
    project: &str,
    region: &str,
    service: &str,
    path: &str,
    request: Request,
) -> Response {
    let decision = state.faults.decide("run.routes.invoke");
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    if decision.fault.is_some() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable (injected fault)",
        );
    }
    let name = format!("projects/{project}/locations/{region}/services/{service}");
    let iam_disabled = {
        let store = state.run.store();
        match store.services.get(&name) {
            None => return refuse(StatusCode::NOT_FOUND, "Page not found"),
            Some(rec) => rec
                .body
                .get("invokerIamDisabled")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        }
    };
    if !iam_disabled {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden: this service requires an identity token (run.routes.invoke), which the \
             sandbox does not verify; set invokerIamDisabled to call it here",
        );
    }
    let port = match state.run.service_status(&name) {
        Some((port, ServiceState::Ready { .. })) => port,
        _ => return refuse(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/{path}{query}");
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 32 * 1024 * 1024).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    };
    // reqwest is built without a default TLS provider (the workspace's choice); the forward
    // is plain HTTP on loopback, but building a client needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut out = client
        .request(parts.method.clone(), &url)
        .timeout(REQUEST_TIMEOUT)
        .body(bytes);
    for (k, v) in &parts.headers {
        if k != axum::http::header::HOST && !hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap_or_default();
            let mut answer = Response::new(Body::from(body));
            *answer.status_mut() = status;
            for (k, v) in &headers {
                if !hop_by_hop(k) {
                    answer.headers_mut().insert(k.clone(), v.clone());
                }
            }
            answer
        }
        Err(e) if e.is_timeout() => refuse(StatusCode::GATEWAY_TIMEOUT, "Upstream timeout"),
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    }
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "content-length"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_uri_is_under_the_invoke_prefix() {
        assert_eq!(
            service_uri("http://127.0.0.1:9/", "p", "us-central1", "w"),
            "http://127.0.0.1:9/_sandbox/run/invoke/p/us-central1/w"
        );
    }
}
