//! A scripted HTTP fake on 127.0.0.1:0: each request gets the next canned answer, and every
//! request is recorded. Plus raw TCP servers that misbehave below HTTP.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bootstrap_gcp::{Endpoints, GcpHttp, RetryPolicy, StaticTokenSource};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One canned answer.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Canned {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// Google's error envelope.
    pub fn error(code: u16, status: &str, message: &str) -> Self {
        Self::json(
            code,
            serde_json::json!({"error": {"code": code, "status": status, "message": message}}),
        )
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone, Default)]
struct FakeState {
    script: Arc<Mutex<VecDeque<Canned>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// The scripted fake.
pub struct Fake {
    pub base: String,
    state: FakeState,
}

impl Fake {
    pub async fn start(script: Vec<Canned>) -> Self {
        let state = FakeState::default();
        state.script.lock().unwrap().extend(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{addr}"),
            state,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn remaining(&self) -> usize {
        self.state.script.lock().unwrap().len()
    }

    /// A client of this fake with a fixed token and a fast retry policy.
    pub fn client(&self, retry: RetryPolicy) -> GcpHttp {
        client_for(&self.base, retry)
    }
}

pub fn client_for(base: &str, retry: RetryPolicy) -> GcpHttp {
    let tokens = Arc::new(StaticTokenSource::new(
        SecretString::from("test-token".to_owned()),
        None,
    ));
    GcpHttp::new(Endpoints::with_base(base).unwrap(), tokens, retry).unwrap()
}

/// Three attempts, millisecond waits.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        deadline: Duration::from_secs(20),
        ..RetryPolicy::default()
    }
}

async fn handle(State(state): State<FakeState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, 10 << 20).await.unwrap_or_default();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let next = state.script.lock().unwrap().pop_front();
    let Some(canned) = next else {
        return Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .body(Body::from("script exhausted"))
            .unwrap();
    };
    if !canned.delay.is_zero() {
        tokio::time::sleep(canned.delay).await;
    }
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(canned.status).unwrap())
        .body(Body::from(canned.body))
        .unwrap();
    for (k, v) in canned.headers {
        resp.headers_mut().insert(
            HeaderName::from_static(k),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    resp
}

/// What a raw server does with each connection.
#[derive(Debug, Clone, Copy)]
pub enum Misbehave {
    /// Read the request, then close without a byte of answer.
    Drop,
    /// Answer 200 with `Content-Length: 100` and a 10-byte body, then close.
    Truncate,
}

/// A raw TCP server; returns its base URL and a counter of accepted connections.
pub async fn raw_server(kind: Misbehave) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                if let Misbehave::Truncate = kind {
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\":",
                        )
                        .await;
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

/// A loopback URL where nothing listens.
pub async fn refused_base() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
