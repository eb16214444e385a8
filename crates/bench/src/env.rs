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

    /// One request; 429 and 503 (a busy SQLite-backed Prefect server answers 503) are retried
    /// with jittered exponential backoff, at most 6 attempts.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.send_once(method.clone(), url, body).await {
                Err(Busy(e)) if attempt < 6 => {
                    retry_note(&e);
                    tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..1.5))).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                    attempt += 1;
                }
                Err(Busy(e)) => return Err(e),
                Ok(v) => return v,
            }
        }
    }

    async fn send_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> std::result::Result<Result<Value>, Busy> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            // Refused: nothing was sent, so even a POST may be sent again.
            Err(e) if e.is_connect() => {
                return Err(Busy(anyhow!(e).context(format!("{method} {url}"))));
            }
            Err(e) => return Ok(Err(anyhow!(e).context(format!("{method} {url}")))),
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Ok(Err(anyhow!(e).context(format!("{method} {url}")))),
        };
        if !status.is_success() {
            let short: String = text.chars().take(300).collect();
            let e = anyhow!("{method} {url}: HTTP {status}: {short}");
            if status.as_u16() == 429 || status.as_u16() == 503 {
                return Err(Busy(e));
            }
            return Ok(Err(e));
        }
        if text.trim().is_empty() {
            return Ok(Ok(Value::Null));
        }
        Ok(serde_json::from_str(&text)
            .with_context(|| format!("{method} {url}: the answer is not JSON")))
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

/// A retryable answer (429, 503).
struct Busy(anyhow::Error);

/// Retries are worth a line on stderr: they slow the harness, not the figures.
fn retry_note(e: &anyhow::Error) {
    eprintln!("    (retrying: {e})");
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
