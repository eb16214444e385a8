//! What the harness runs against (the `bench` script starts it): the `bootstrap` binary, a
//! Prefect server, the GCP sandbox, the `.venv`; and small JSON helpers for their APIs. Every
//! request has a deadline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

/// Paths and endpoints of one benchmark run.
pub struct Env {
    /// The `bootstrap` binary under test.
    pub bootstrap: PathBuf,
    /// The repository root (plans/guide.yaml lives there).
    pub root: PathBuf,
    /// Scratch directory of this run (plan files, logs, the fake flow's log).
    pub work: PathBuf,
    /// The virtualenv with `prefect`.
    pub venv: PathBuf,
    /// `http://127.0.0.1:PORT/api`.
    pub prefect_url: String,
    /// `http://127.0.0.1:PORT`.
    pub sandbox_url: String,
    /// The sandbox operator's key file.
    pub operator_key: PathBuf,
    /// The log the fake flow appends `<unix time> <flow run id>` lines to.
    pub started_log: PathBuf,
    /// The server's and the sandbox's sessions, when the caller named them: bursts then split
    /// the machine's CPU among them.
    pub sessions: Option<crate::cpu::Sessions>,
    http: reqwest::Client,
}

/// A request's deadline: local calls answer in milliseconds; this only bounds a hang.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

impl Env {
    /// Builds the environment; fails early when a path does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bootstrap: PathBuf,
        root: PathBuf,
        work: PathBuf,
        venv: PathBuf,
        prefect_url: String,
        sandbox_url: String,
        operator_key: PathBuf,
        started_log: PathBuf,
    ) -> Result<Env> {
        for (what, p) in [
            ("bootstrap binary", &bootstrap),
            ("repository root", &root),
            ("venv", &venv),
            ("sandbox operator key", &operator_key),
        ] {
            if !p.exists() {
                bail!("the {what} {} does not exist", p.display());
            }
        }
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_DEADLINE)
            .pool_max_idle_per_host(16)
            .build()
            .context("building the HTTP client")?;
        Ok(Env {
            bootstrap,
            root,
            work,
            venv,
            prefect_url: prefect_url.trim_end_matches('/').to_string(),
            sandbox_url: sandbox_url.trim_end_matches('/').to_string(),
            operator_key,
            started_log,
            sessions: None,
            http,
        })
    }

    /// `bootstrap ARGS` with the environment a user of the sandbox has.
    pub fn bootstrap_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bootstrap);
        cmd.args(args)
            .current_dir(&self.work)
            .env("NO_COLOR", "1")
            .env("BOOTSTRAP_GCP_ENDPOINT", &self.sandbox_url)
            .env("GOOGLE_APPLICATION_CREDENTIALS", &self.operator_key)
            .env("PREFECT_API_URL", &self.prefect_url)
            .env_remove("PREFECT_API_KEY")
            .env_remove("RUST_LOG");
        cmd
    }

    /// One request, retried on transient failures (`crate::retry`: refused or reset
    /// connections, 429, 5xx; timeouts when `repeatable`) with bounded, jittered exponential
    /// backoff. Reads, the sandbox's settings and POSTs with an idempotency key are repeatable.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let repeatable = method != reqwest::Method::POST
            || url.ends_with("/filter")
            || url.contains("/_sandbox/")
            || body.is_some_and(|b| b.get("idempotency_key").is_some());
        let policy = crate::retry::HARNESS;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match self.send_once(method.clone(), url, body, repeatable).await {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(reason, e)) => {
                    let wait = policy.delay(attempt, rand::random::<f64>());
                    if !policy.may_retry(attempt, started.elapsed(), wait) {
                        return Err(e.context(format!(
                            "still failing after {attempt} tries in {:.1} s ({reason})",
                            started.elapsed().as_secs_f64()
                        )));
                    }
                    retry_note(reason, &e);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn send_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        repeatable: bool,
    ) -> std::result::Result<Value, Failure> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |e: reqwest::Error| {
            let reason = crate::retry::transport_is_transient(&e, repeatable);
            let e = anyhow!(e).context(format!("{method} {url}"));
            match reason {
                Some(r) => Failure::Transient(r, e),
                None => Failure::Final(e),
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        // A body cut off by a reset is as transient as a reset before the answer.
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            let short: String = text.chars().take(300).collect();
            let e = anyhow!("{method} {url}: HTTP {status}: {short}");
            return Err(match crate::retry::status_is_transient(status.as_u16()) {
                Some(r) => Failure::Transient(r, e),
                None => Failure::Final(e),
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {url}: the answer is not JSON"))
            .map_err(Failure::Final)
    }

    /// A Prefect API call (`path` after `/api`).
    pub async fn prefect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        self.send(method, &format!("{}{path}", self.prefect_url), body)
            .await
    }

    /// A call to the sandbox's own API (`path` from `/_sandbox/`).
    pub async fn sandbox(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        self.send(method, &format!("{}{path}", self.sandbox_url), body)
            .await
    }

    /// Sets the sandbox's fault spec (latency, operation time).
    pub async fn set_faults(&self, spec: &str) -> Result<()> {
        let url = format!("{}/_sandbox/faults", self.sandbox_url);
        self.send(reqwest::Method::POST, &url, Some(&json!({ "spec": spec })))
            .await
            .map(drop)
    }

    /// Sets sandbox settings (`opDelayMs`, `saVisibilityMs`, `grantDelayMs`).
    pub async fn set_settings(&self, settings: Value) -> Result<()> {
        let url = format!("{}/_sandbox/settings", self.sandbox_url);
        self.send(reqwest::Method::POST, &url, Some(&settings))
            .await
            .map(drop)
    }

    /// The sandbox as the plan/apply sections measure it: `latency` added to every call,
    /// `op_delay` per operation, and Google's consistency delays off, so that the floor is
    /// exactly the critical-path model's.
    pub async fn set_model_timings(&self, latency: Duration, op_delay: Duration) -> Result<()> {
        self.set_settings(json!({"saVisibilityMs": 0, "grantDelayMs": 0}))
            .await?;
        self.set_faults(&format!(
            "latency={}ms,op_delay={}ms",
            latency.as_millis(),
            op_delay.as_millis()
        ))
        .await
    }

    /// Forgets the sandbox's call counts.
    pub async fn reset_calls(&self) -> Result<()> {
        let url = format!("{}/_sandbox/calls", self.sandbox_url);
        self.send(reqwest::Method::DELETE, &url, None)
            .await
            .map(drop)
    }

    /// Google calls per method since the last reset.
    pub async fn calls(&self) -> Result<BTreeMap<String, u64>> {
        let url = format!("{}/_sandbox/calls", self.sandbox_url);
        let v = self.send(reqwest::Method::GET, &url, None).await?;
        let calls = v
            .get("calls")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("the sandbox does not count calls (no /_sandbox/calls)"))?;
        Ok(calls
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect())
    }

    /// The median time of a cheap Prefect read, seconds (the model's Prefect round trip).
    pub async fn prefect_rtt(&self) -> Result<f64> {
        let mut samples = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            self.prefect(reqwest::Method::GET, "/health", None).await?;
            samples.push(t.elapsed().as_secs_f64());
        }
        crate::stats::summarize(&samples)
            .map(|s| s.p50)
            .ok_or_else(|| anyhow!("no Prefect round trips measured"))
    }
}

/// How one try failed.
enum Failure {
    /// Worth another try, for this reason.
    Transient(crate::retry::Reason, anyhow::Error),
    /// Not worth one.
    Final(anyhow::Error),
}

/// Retries are worth a line on stderr: they slow the harness, not the figures.
fn retry_note(reason: &str, e: &anyhow::Error) {
    eprintln!("    (retrying, {reason}: {e})");
}

/// Polls `f` every `every` until it yields `Some`, or fails after `deadline`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() + every > end {
            bail!("{what}: not within {} s", deadline.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that closes the first connection unanswered, answers 503 to the second and
    /// `final_status` after that; counts the requests it saw.
    async fn flaky_server(
        final_status: u16,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let status = match n {
                    0 => continue, // dropped: the client sees the connection closed
                    1 => 503,
                    _ => final_status,
                };
                let body = "{\"ok\":true}";
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (url, seen)
    }

    fn env_for(url: &str) -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let here = std::env::current_dir().expect("cwd");
        let work = std::env::temp_dir().join(format!("bench-env-{}", uuid::Uuid::new_v4()));
        Env::new(
            here.clone(),
            here.clone(),
            work.clone(),
            here.clone(),
            format!("{url}/api"),
            url.to_string(),
            here,
            work.join("started.log"),
        )
        .expect("env")
    }

    #[tokio::test]
    async fn a_reset_and_a_503_are_ridden_out() {
        let (url, seen) = flaky_server(200).await;
        let env = env_for(&url);
        // A POST create without an idempotency key is still retried after a reset.
        let v = env
            .prefect(
                reqwest::Method::POST,
                "/flows/",
                Some(&json!({"name": "x"})),
            )
            .await
            .expect("third try answers");
        assert_eq!(v["ok"], true);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
        let _ = std::fs::remove_dir_all(&env.work);
    }

    #[tokio::test]
    async fn a_404_is_final() {
        let (url, seen) = flaky_server(404).await;
        let env = env_for(&url);
        let e = env
            .prefect(reqwest::Method::GET, "/flows/x", None)
            .await
            .expect_err("404 is not retried");
        assert!(format!("{e:#}").contains("404"), "{e:#}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
        let _ = std::fs::remove_dir_all(&env.work);
    }
}
