//! An in-test reverse proxy in front of the shared Prefect server that changes one thing about
//! it, to produce server errors the shared server itself must not be reconfigured for.

use serde_json::{Value, json};

/// What an in-test reverse proxy in front of the real server changes.
#[derive(Clone)]
pub enum Rule {
    /// Prefect's own auth-string middleware (`PREFECT_SERVER_API_AUTH_STRING`, source:
    /// `prefect/server/api/server.py`): every request but `GET /health` needs
    /// `Authorization: <scheme> <base64 of the auth string>`, else 401
    /// `{"exception_message": "Unauthorized"}`. The server itself runs without one (it is
    /// shared), so this is how a refused credential is produced against OSS.
    AuthString,
    /// A server on which the `gcp-credentials` block type is not registered, answering as the
    /// real server does for an unknown slug.
    NoGcpCredentialsType,
}

/// The auth string the proxy accepts.
pub const AUTH_STRING: &str = "admin:s3cret-pw";
/// Its base64 (`printf admin:s3cret-pw | base64`), what a Basic header carries.
pub const AUTH_STRING_B64: &str = "YWRtaW46czNjcmV0LXB3";

pub struct Proxy {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ProxyState {
    upstream: String,
    rule: Rule,
    client: reqwest::Client,
}

pub async fn start_proxy(upstream: &str, rule: Rule) -> Proxy {
    // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let state = std::sync::Arc::new(ProxyState {
        upstream: upstream.trim_end_matches('/').to_string(),
        rule,
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("proxy client"),
    });
    let app = axum::Router::new().fallback(forward).with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Proxy {
        url: format!("http://{addr}/api"),
        task,
    }
}

fn answer(status: u16, body: Value) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let status = axum::http::StatusCode::from_u16(status).expect("status");
    (status, axum::Json(body)).into_response()
}

async fn forward(
    axum::extract::State(s): axum::extract::State<std::sync::Arc<ProxyState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let path = req.uri().path();
    let path = path.strip_prefix("/api").unwrap_or(path).to_string();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    match s.rule {
        Rule::AuthString => {
            let accepted = req
                .headers()
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.split_once(' '))
                .is_some_and(|(_, creds)| creds == AUTH_STRING_B64);
            let probe = path == "/health" && req.method() == axum::http::Method::GET;
            if !accepted && !probe {
                return answer(401, json!({"exception_message": "Unauthorized"}));
            }
        }
        Rule::NoGcpCredentialsType => {
            if path == "/block_types/slug/gcp-credentials" {
                return answer(404, json!({"detail": "Block type not found"}));
            }
            if path.starts_with("/block_types/slug/gcp-credentials/") {
                return answer(404, json!({"detail": "Block document not found"}));
            }
        }
    }
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    headers.remove("host");
    headers.remove("content-length");
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 << 20).await else {
        return answer(400, json!({"detail": "proxy: unreadable body"}));
    };
    let sent = s
        .client
        .request(method, format!("{}{path}{query}", s.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(upstream) = sent else {
        return answer(502, json!({"detail": "proxy: upstream unreachable"}));
    };
    let status = upstream.status();
    let content_type = upstream.headers().get("content-type").cloned();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert("content-type", ct);
    }
    response
}
