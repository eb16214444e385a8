//! `bootstrap waker`: the wake path of `worker.scale_to_zero` (README, "Scale to zero").
//!
//! A small HTTP service, request-billed and scaled to zero on Cloud Run. Prefect's automations
//! call it through a Webhook block (`call-webhook`): on a run becoming Scheduled or Late in the
//! work pool, and periodically from the sweep automation. Each authenticated `POST /wake`
//! reads the work pool's SCHEDULED runs that are due, and when there are any and the worker
//! pool's `manualInstanceCount` is 0, sets it to `--instances`. The same call does nothing when
//! nothing is due or the pool is up, so repeated and stray calls are harmless.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bootstrap_prefect::{FlowRunQuery, PrefectClient, StateType};
use bootstrap_worker::idle::PoolScaler;
use chrono::Utc;
use rand::Rng as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tokio::sync::Mutex;

use crate::cli::{GlobalArgs, WakerArgs};

/// The env var that holds the shared secret (on Cloud Run a `secretKeyRef` to Secret Manager).
pub const SECRET_ENV: &str = "BOOTSTRAP_WAKER_SECRET";

/// Runs after a scheduled time are "due" this far ahead: a Quick Run's Scheduled event arrives
/// a moment before its start time, and waking a little early costs nothing.
const LEAD: Duration = Duration::from_secs(15);

/// Attempts of one wake (read + write) before the call fails; the sweep calls again later.
const ATTEMPTS: u32 = 3;

/// How long one call waits for its wake before answering 202. Prefect's Webhook block uses
/// httpx's default 5 s timeout (`prefect/blocks/webhook.py`: `AsyncClient(transport=...)`), so
/// the wake runs in a task of its own that a dropped connection does not cancel.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

/// What one wake found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// No SCHEDULED run of the pool is due.
    NothingDue,
    /// Runs are due and the pool already has this many instances.
    AlreadyUp(u32),
    /// Runs are due; the count was 0 and is now this.
    Woken(u32),
}

/// The waker: the Prefect work pool it watches and the worker pool it wakes.
pub struct Waker {
    /// Prefect.
    pub client: PrefectClient,
    /// The Prefect work pool.
    pub work_pool: String,
    /// The Cloud Run worker pool's count.
    pub scaler: Arc<dyn PoolScaler>,
    /// The count to set when waking.
    pub instances: u32,
    /// The shared secret (`Authorization: Bearer <secret>`).
    pub secret: SecretString,
    /// One wake at a time: concurrent calls wait for it and find the pool up.
    pub lock: Mutex<()>,
}

impl Waker {
    /// SCHEDULED runs of the work pool due by now + [`LEAD`] (late ones included).
    pub async fn due_runs(&self) -> Result<usize> {
        let query = FlowRunQuery {
            states: vec![StateType::Scheduled],
            work_pool_names: vec![self.work_pool.clone()],
            limit: Some(200),
            ..FlowRunQuery::default()
        };
        let horizon = Utc::now() + chrono::Duration::from_std(LEAD).unwrap_or_default();
        let runs = self
            .client
            .filter_flow_runs(&query)
            .await
            .context("reading the work pool's scheduled runs")?;
        Ok(runs
            .iter()
            .filter(|r| {
                r.next_scheduled_start_time
                    .or(r.expected_start_time)
                    .is_none_or(|t| t <= horizon)
            })
            .count())
    }

    /// One wake, with bounded retries (backoff with jitter) of the whole read-then-write.
    pub async fn wake(&self) -> Result<Woke> {
        let _one = self.lock.lock().await;
        let mut attempt = 1;
        loop {
            match self.wake_once().await {
                Ok(w) => return Ok(w),
                Err(e) if attempt >= ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), attempt, "wake failed; retrying");
                    let base = Duration::from_millis(500) * 2u32.pow(attempt - 1);
                    // The thread's RNG is not Send: draw before the await.
                    let wait = base.mul_f64(rand::rng().random_range(0.8..1.2));
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn wake_once(&self) -> Result<Woke> {
        if self.due_runs().await? == 0 {
            return Ok(Woke::NothingDue);
        }
        let count = self.scaler.instance_count().await?;
        if count > 0 {
            return Ok(Woke::AlreadyUp(count));
        }
        self.scaler.set_instance_count(self.instances).await?;
        Ok(Woke::Woken(self.instances))
    }

    /// Whether `headers` carry the shared secret; compared in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        given.ct_eq(self.secret.expose_secret().as_bytes()).into()
    }
}

/// The routes: `POST /wake` (authenticated) and `GET /health`.
pub fn router(waker: Arc<Waker>) -> axum::Router {
    axum::Router::new()
        .route("/wake", post(wake))
        .route("/health", get(|| async { "ok" }))
        .with_state(waker)
}

async fn wake(State(w): State<Arc<Waker>>, headers: HeaderMap) -> Response {
    if !w.authorized(&headers) {
        tracing::warn!("wake call without the shared secret; refused");
        return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    }
    let task = tokio::spawn({
        let w = w.clone();
        async move {
            let r = w.wake().await;
            match &r {
                Ok(Woke::Woken(n)) => tracing::info!(
                    work_pool = w.work_pool,
                    instances = n,
                    "runs are due: worker pool woken"
                ),
                Ok(other) => tracing::debug!(work_pool = w.work_pool, ?other, "wake call"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "wake failed"),
            }
            r
        }
    });
    match tokio::time::timeout(ANSWER_WITHIN, task).await {
        Ok(Ok(Ok(woke))) => {
            let body = match woke {
                Woke::NothingDue => json!({"due": false, "woken": false}),
                Woke::AlreadyUp(n) => json!({"due": true, "woken": false, "instances": n}),
                Woke::Woken(n) => json!({"due": true, "woken": true, "instances": n}),
            };
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Ok(Ok(Err(e))) => {
            (StatusCode::BAD_GATEWAY, format!("wake failed: {e:#}\n")).into_response()
        }
        Ok(Err(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "wake task failed\n").into_response(),
        Err(_) => (StatusCode::ACCEPTED, axum::Json(json!({"pending": true}))).into_response(),
    }
}

/// Reads the shared secret from [`SECRET_ENV`]; refuses a missing or short one.
pub fn secret_from_env() -> Result<SecretString> {
    let v = std::env::var(SECRET_ENV).map_err(|_| {
        anyhow!("{SECRET_ENV} is not set; on Cloud Run it is a Secret Manager reference (`bootstrap apply` sets it)")
    })?;
    if v.trim().len() < 16 {
        return Err(anyhow!(
            "{SECRET_ENV} is shorter than 16 characters; use a random secret (`bootstrap apply` makes one)"
        ));
    }
    Ok(SecretString::from(v.trim().to_owned()))
}

/// Serves until SIGTERM or SIGINT.
pub async fn serve(waker: Arc<Waker>, listener: tokio::net::TcpListener) -> Result<()> {
    axum::serve(listener, router(waker))
        .with_graceful_shutdown(super::worker::shutdown_signal())
        .await
        .context("serving the waker")
}

/// `bootstrap waker`.
pub fn run(args: &WakerArgs, global: &GlobalArgs) -> Result<ExitCode> {
    bootstrap_gcp::init_crypto();
    let secret = secret_from_env()?;
    if args.instances == 0 {
        return Err(anyhow!("--instances must be at least 1"));
    }
    // The same resolution as every command (no plan here: Prefect's env and profile).
    let bootstrap_engine::Connections {
        prefect: config,
        gcp_endpoints: endpoints,
    } = bootstrap_engine::Connections::resolve(None, global.gcp_endpoint.as_deref())?;
    let client = PrefectClient::new(config)?;
    let scaler = bootstrap_worker::idle::cloud_run_scaler(&args.worker_pool, &endpoints)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let addr = SocketAddr::from(([0, 0, 0, 0], args.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on port {}", args.port))?;
        eprintln!(
            "waker for work pool `{}` listening on {addr}",
            args.work_pool
        );
        let waker = Arc::new(Waker {
            client,
            work_pool: args.work_pool.clone(),
            scaler,
            instances: args.instances,
            secret,
            lock: Mutex::new(()),
        });
        serve(waker, listener).await
    })?;
    Ok(ExitCode::SUCCESS)
}
