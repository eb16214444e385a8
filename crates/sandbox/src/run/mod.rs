//! Cloud Run Admin v2 (services, jobs, executions, tasks, operations) and the v1 jobs API of
//! pool type `cloud-run`, backed by the [`crate::executor`]: a job execution really runs a
//! process per task, a service revision really keeps a process running.
//!
//! Resources are kept as the JSON the client sent plus server-side records; the views in
//! [`views`] add the server-filled fields Google adds. v1 and v2 share one job store, as on
//! Google. The `/_sandbox/logs/{name}` and `/_sandbox/run/...` control routes live in
//! [`control`].

mod control;
mod engine;
mod handlers;
mod iam;
pub mod invoke;
mod knative;
mod records;
mod v1;
mod v1_shapes;
mod views;
mod worker_pools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::routing::any;
use secrecy::SecretString;
use serde_json::Value;

use crate::executor::{CancellationToken, Executor, ExecutorConfig, LogBuffer, ServiceHandle};
use crate::state::AppState;

pub use records::{ExecRec, JobRec, ServiceRec, Store, TaskRec, TaskState};

/// The Cloud Run slice of the sandbox state, with its own lock.
#[derive(Clone)]
pub struct RunState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    executor: Executor,
    /// Running executions' cancel tokens, by execution name.
    cancels: Mutex<HashMap<String, CancellationToken>>,
    /// Running service containers, by service name.
    services: Mutex<HashMap<String, ServiceHandle>>,
    /// Logs by execution or service name.
    logs: Mutex<HashMap<String, LogBuffer>>,
    /// Key files for runtime identities, by service-account email (memory only).
    runtime_keys: Mutex<HashMap<String, SecretString>>,
    /// Running worker-pool instances, by worker pool name (see [`worker_pools`]).
    pools: worker_pools::Instances,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Records stay consistent line by line; keep serving after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunState {
    /// Builds the slice for a sandbox configuration.
    pub fn new(config: &crate::Config) -> Self {
        Self::with_executor(Executor::new(ExecutorConfig::new(
            config.images.clone(),
            &config.dir,
        )))
    }

    /// Builds the slice with an executor configured by the caller (tests shorten the grace).
    pub fn with_executor(executor: Executor) -> Self {
        RunState {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                executor,
                cancels: Mutex::new(HashMap::new()),
                services: Mutex::new(HashMap::new()),
                logs: Mutex::new(HashMap::new()),
                runtime_keys: Mutex::new(HashMap::new()),
                pools: worker_pools::Instances::default(),
            }),
        }
    }

    /// The executor.
    pub fn executor(&self) -> &Executor {
        &self.inner.executor
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.inner.store)
    }

    /// The logs of an execution or service, by full name or short id.
    pub fn logs(&self, name: &str) -> Option<LogBuffer> {
        let logs = lock(&self.inner.logs);
        logs.get(name).cloned().or_else(|| {
            logs.iter()
                .find(|(k, _)| k.rsplit('/').next() == Some(name))
                .map(|(_, v)| v.clone())
        })
    }

    /// Every log buffer with its execution or service name (for Cloud Logging, `crate::logging`).
    pub fn all_logs(&self) -> Vec<(String, LogBuffer)> {
        lock(&self.inner.logs)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(crate) fn logs_for(&self, name: &str) -> LogBuffer {
        lock(&self.inner.logs)
            .entry(name.to_owned())
            .or_insert_with(|| self.inner.executor.new_logs())
            .clone()
    }

    pub(crate) fn set_cancel(&self, name: &str, token: CancellationToken) {
        lock(&self.inner.cancels).insert(name.to_owned(), token);
    }

    pub(crate) fn take_cancel(&self, name: &str) -> Option<CancellationToken> {
        lock(&self.inner.cancels).remove(name)
    }

    pub(crate) fn cancel(&self, name: &str) -> bool {
        match lock(&self.inner.cancels).get(name) {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    pub(crate) fn put_service(&self, name: &str, handle: ServiceHandle) -> Option<ServiceHandle> {
        lock(&self.inner.services).insert(name.to_owned(), handle)
    }

    pub(crate) fn take_service(&self, name: &str) -> Option<ServiceHandle> {
        lock(&self.inner.services).remove(name)
    }

    /// The loopback port and state of a service's running container.
    pub fn service_status(&self, name: &str) -> Option<(u16, crate::executor::ServiceState)> {
        lock(&self.inner.services)
            .get(name)
            .map(|h| (h.port(), h.state()))
    }

    pub(crate) fn runtime_key(&self, email: &str) -> Option<SecretString> {
        lock(&self.inner.runtime_keys).get(email).cloned()
    }

    pub(crate) fn set_runtime_key(&self, email: &str, key: SecretString) {
        lock(&self.inner.runtime_keys).insert(email.to_owned(), key);
    }

    /// The stored resources as JSON (for `state.json`); processes are not saved.
    pub fn snapshot(&self) -> Value {
        serde_json::to_value(&*self.store()).unwrap_or(Value::Null)
    }

    /// Restores resources saved by [`RunState::snapshot`]. Executions that were running end as
    /// failed (their processes died with the old sandbox); services come back without a
    /// running container until they are updated.
    pub fn restore(&self, snapshot: Value) {
        if snapshot.is_null() {
            return;
        }
        match serde_json::from_value::<Store>(snapshot) {
            Ok(mut store) => {
                store.interrupt_running();
                *self.store() = store;
            }
            Err(err) => tracing::warn!("ignoring saved Cloud Run state: {err}"),
        }
    }

    /// Cancels every execution and stops every service container.
    pub async fn shutdown(&self) {
        let tokens: Vec<_> = lock(&self.inner.cancels).values().cloned().collect();
        for t in tokens {
            t.cancel();
        }
        let handles: Vec<_> = lock(&self.inner.services).drain().map(|(_, h)| h).collect();
        for h in handles {
            h.stop().await;
        }
        self.stop_all_pools().await;
    }
}

/// The Cloud Run routes (v2, v1) and the run control routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/{*rest}", any(handlers::dispatch))
        .route(
            "/_sandbox/run/invoke/{project}/{region}/{service}",
            any(invoke::invoke_root),
        )
        .route(
            "/_sandbox/run/invoke/{project}/{region}/{service}/{*path}",
            any(invoke::invoke),
        )
        .route("/apis/run.googleapis.com/{*rest}", any(handlers::dispatch))
        .route("/apis/serving.knative.dev/{*rest}", any(handlers::dispatch))
        // Run v1's project-level reads: locations, and the IAM and Knative-shaped service
        // methods on `v1/projects/{p}/locations/{l}/...` (gcloud's `get-iam-policy`).
        .route("/v1/projects/{project}/locations", any(handlers::dispatch))
        .route(
            "/v1/projects/{project}/locations/{*rest}",
            any(handlers::dispatch),
        )
        .merge(control::router())
}
