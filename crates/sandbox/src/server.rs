//! Startup, the HTTP server loop and the middleware every Google route passes: fault injection,
//! authentication, and the SERVICE_DISABLED check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::faults::{self, Faults, Kind};
use crate::keys::{self, KeyFileInfo, KeyPool};
use crate::methods::{self, MethodCall};
use crate::policy::Policy;
use crate::state::{self, AppState, Data, Project, SaKey, ServiceAccount, Settings};
use crate::{Config, control, google, run};

/// Marks a response whose connection must be closed without sending it (the `drop` fault).
#[derive(Debug, Clone, Copy)]
struct DropConnection;

/// A running sandbox.
pub struct Sandbox {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port actually bound.
    pub port: u16,
    /// The sandbox directory.
    pub dir: PathBuf,
    /// The operator's key file (owner of every sandbox project).
    pub operator_key_path: PathBuf,
    /// The operator's email.
    pub operator_email: String,
    /// The shell exports file.
    pub env_path: PathBuf,
    /// The shared state (for in-process tests).
    pub state: AppState,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    saver: JoinHandle<()>,
}

impl Sandbox {
    /// Stops serving, stops every Run process and saves the state (when persisting).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.saver.abort();
        self.state.run.shutdown().await;
        crate::netns_control::release(&self.state.url);
        self.state.save_if_dirty()
    }
}

/// Starts a sandbox: binds, sets up projects and the operator, writes `operator-key.json` and
/// `env` into `config.dir`, and serves until [`Sandbox::shutdown`].
pub async fn start(config: Config) -> anyhow::Result<Sandbox> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating {}", config.dir.display()))?;
    let dir = std::fs::canonicalize(&config.dir).unwrap_or_else(|_| config.dir.clone());
    let listener = TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", config.port))?;
    let port = listener.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");

    let restored = if config.persist {
        state::load(&dir)?
    } else {
        None
    };
    let (data, run_snapshot) = match restored {
        Some(r) => (r.data, Some(r.run)),
        None => (Data::default(), None),
    };
    let settings = Settings {
        consistency: config.consistency,
        op_delay: config.faults.op_delay.unwrap_or(config.op_delay),
        disable_key_creation: config.disable_key_creation,
        api_enable_delay: config.api_enable_delay,
    };
    let pool = KeyPool::new(config.key_pool);
    let app_state = AppState::new(
        url.clone(),
        dir.clone(),
        data,
        settings,
        Faults::new(config.faults.clone()),
        pool.clone(),
        run::RunState::new(&config),
        config.persist,
    );
    if let Some(snapshot) = run_snapshot {
        app_state.run.restore(snapshot);
    }
    crate::artifacts::sync_built(&app_state);
    crate::builds::interrupt_running(&app_state);

    let projects = if config.projects.is_empty() {
        vec![crate::DEFAULT_PROJECT.to_owned()]
    } else {
        config.projects.clone()
    };
    for id in &projects {
        crate::iam::validate_project_id(id)
            .map_err(|e| anyhow::anyhow!("--project {id}: {}", e.message))?;
    }
    let operator_email = format!("sandbox-operator@{}.iam.gserviceaccount.com", projects[0]);
    ensure_projects(&app_state, &projects, &config.enabled_apis, &operator_email);
    let operator_key_path = dir.join("operator-key.json");
    ensure_operator_key(
        &app_state,
        &operator_email,
        &projects[0],
        &operator_key_path,
    )
    .await?;
    app_state
        .write()
        .creds
        .metadata_email
        .get_or_insert_with(|| operator_email.clone());
    let env_path = dir.join("env");
    write_env(&env_path, &url, &operator_key_path, &projects[0])?;
    app_state.mark_dirty();
    pool.refill();

    let (stop, stop_rx) = watch::channel(false);
    let app = router(app_state.clone());
    install_gateway(&app_state, &app, port)?;
    let server = tokio::spawn(serve(listener, app, stop_rx.clone()));
    let saver = tokio::spawn(save_loop(app_state.clone(), stop_rx));
    Ok(Sandbox {
        url,
        port,
        dir,
        operator_key_path,
        operator_email,
        env_path,
        state: app_state,
        stop,
        server,
        saver,
    })
}

/// Gives the executor what it serves inside each container's namespace: the Google surface
/// over TLS (the sandbox's own CA, written to `dir/ca.pem`), the metadata server, and a
/// forwarder to the sandbox's port.
fn install_gateway(state: &AppState, app: &Router, port: u16) -> anyhow::Result<()> {
    let tls = crate::tls::SandboxTls::create(&state.dir)?;
    let _ = state
        .run
        .executor()
        .config()
        .gateway
        .set(crate::executor::Gateway {
            google: app.clone(),
            metadata: crate::metadata::router(state.clone()),
            tls,
            host_ports: vec![port],
        });
    Ok(())
}

/// Creates missing projects, each with the operator as owner and the default services.
fn ensure_projects(state: &AppState, projects: &[String], enabled: &[String], operator: &str) {
    let mut data = state.write();
    for id in projects {
        data.projects.entry(id.clone()).or_insert_with(|| Project {
            id: id.clone(),
            number: state::project_number(id),
            create_time: Utc::now(),
            policy: Policy::with_binding("roles/owner", &format!("serviceAccount:{operator}")),
            enabled_services: enabled.iter().cloned().collect(),
            disable_key_creation: false,
            enabled_at: Default::default(),
        });
    }
}

/// Reuses the operator key when the restored state still knows it; otherwise issues a new one.
async fn ensure_operator_key(
    state: &AppState,
    email: &str,
    project: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let existing_id = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| {
            v.get("private_key_id")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
        });
    if let Some(id) = existing_id
        && state.read().keys.get(&id).is_some_and(|k| k.email == email)
    {
        return Ok(());
    }
    let key = state.keys.take_fast().await?;
    let key_id = keys::new_key_id();
    let unique_id = crate::iam::new_unique_id();
    let now = Utc::now();
    {
        let mut data = state.write();
        data.service_accounts
            .entry(email.to_owned())
            .or_insert_with(|| ServiceAccount {
                email: email.to_owned(),
                project: project.to_owned(),
                unique_id: unique_id.clone(),
                display_name: "Sandbox operator".into(),
                description:
                    "Owner of the sandbox projects; its key is the sandbox's test credential."
                        .into(),
                disabled: false,
                etag: crate::policy::new_etag(),
                created_at: chrono::DateTime::<Utc>::UNIX_EPOCH,
                policy: Policy::default(),
            });
        data.keys.insert(
            key_id.clone(),
            SaKey {
                id: key_id.clone(),
                email: email.to_owned(),
                public_key_pem: keys::public_pem(&key)?,
                valid_after: now,
                valid_before: now + chrono::Duration::days(365 * 100),
                disabled: false,
                system_managed: false,
            },
        );
    }
    let client_id = state
        .read()
        .service_accounts
        .get(email)
        .map(|sa| sa.unique_id.clone())
        .unwrap_or(unique_id);
    let file = keys::key_file(
        &key,
        &KeyFileInfo {
            key_id: &key_id,
            email,
            project,
            client_id: &client_id,
            token_uri: &format!("{}/token", state.url),
        },
    )?;
    write_private(path, file.as_bytes())
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// Writes the shell exports a user sources to point tools at the sandbox.
fn write_env(path: &Path, url: &str, key: &Path, project: &str) -> anyhow::Result<()> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let text = format!(
        "export BOOTSTRAP_GCP_ENDPOINT={}\nexport GOOGLE_APPLICATION_CREDENTIALS={}\nexport CLOUDSDK_CORE_PROJECT={}\n",
        quote(url),
        quote(&key.display().to_string()),
        quote(project),
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/token", post(auth::token))
        .route("/v1/token", post(crate::sts::token))
        .merge(control::router())
        .merge(crate::netns_control::router())
        .merge(crate::users::router())
        .merge(crate::metadata::host_router(state.clone()))
        .merge(crate::builds::router())
        .merge(run::router())
        // Cloud Logging v2 `logging.entries.list` (`crate::logging`).
        .route("/v2/entries:list", post(crate::logging::list_handler))
        .fallback(google::dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), api_guard))
        .with_state(state)
}

/// Fault injection, then authentication, then the SERVICE_DISABLED check, for Google routes.
async fn api_guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    // Token endpoints authenticate by their own means (assertions, refresh tokens, subject
    // tokens, the Metadata-Flavor header), not by a bearer token.
    if path == "/token"
        || path == "/v1/token"
        || path.starts_with("/_sandbox")
        || path.starts_with("/computeMetadata/")
        || path == "/"
    {
        return next.run(request).await;
    }
    let call = methods::identify(request.method().as_str(), &path);
    if let Some(call) = &call {
        let decision = state.faults.decide(call.id);
        if !decision.latency.is_zero() {
            tokio::time::sleep(decision.latency).await;
        }
        match decision.fault {
            Some(Kind::Drop) => {
                let mut response = ().into_response();
                response.extensions_mut().insert(DropConnection);
                return response;
            }
            Some(kind) => {
                if let Some(err) = faults::error_for(kind, state.faults.spec().retry_after) {
                    return err.into_response();
                }
            }
            None => {}
        }
    }
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match auth::authenticate(&state, header) {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    if let Some(call) = &call {
        let user_project = request
            .headers()
            .get("x-goog-user-project")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Err(err) = crate::quota::check(&state, &caller, call, user_project.as_deref()) {
            return err.into_response();
        }
        if let Err(err) = check_enabled(&state, call) {
            return err.into_response();
        }
        request.extensions_mut().insert(call.clone());
    }
    request.extensions_mut().insert::<Caller>(caller);
    next.run(request).await
}

/// Calls to a disabled API get 403 SERVICE_DISABLED. Resource Manager and Service Usage are
/// always on (without them nothing could be enabled).
fn check_enabled(state: &AppState, call: &MethodCall) -> Result<(), ApiError> {
    // One path, two APIs: the handler checks the right one (`builds::handle_cloudbuild`).
    if call.id == "cloudbuild.projects.locations.operations.get" {
        return Ok(());
    }
    let Some(project) = call.project() else {
        return Ok(());
    };
    check_service(state, call.service(), &project)
}

/// SERVICE_DISABLED unless `service` is enabled (and propagated) in `project`.
pub(crate) fn check_service(
    state: &AppState,
    service: &str,
    project: &str,
) -> Result<(), ApiError> {
    // IAM Credentials is checked against the caller's project on Google; the sandbox keeps
    // it on, as it keeps Resource Manager and Service Usage.
    if matches!(
        service,
        "cloudresourcemanager.googleapis.com"
            | "serviceusage.googleapis.com"
            | "iamcredentials.googleapis.com"
    ) {
        return Ok(());
    }
    let delay = chrono::Duration::from_std(state.settings().api_enable_delay).unwrap_or_default();
    let data = state.read();
    match data.project(project) {
        Some(p) if !p.enabled_services.contains(service) => {
            Err(ApiError::service_disabled(service, &p.number))
        }
        // Enabled a moment ago: not every frontend knows yet (Google's SERVICE_DISABLED text
        // itself says to wait a few minutes after enabling).
        Some(p)
            if p.enabled_at
                .get(service)
                .is_some_and(|at| *at + delay > Utc::now()) =>
        {
            Err(ApiError::service_disabled(service, &p.number))
        }
        _ => Ok(()),
    }
}

/// Accepts connections until told to stop. Each connection is served by hyper directly so that
/// a `drop` fault can end it without a response.
async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors and the like: back off briefly rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let response = match app.oneshot(req.map(axum::body::Body::new)).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        };
                        if response.extensions().get::<DropConnection>().is_some() {
                            return Err(std::io::Error::other(
                                "connection dropped by fault injection",
                            ));
                        }
                        Ok(response)
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// Saves dirty state twice a second (a no-op without `persist`).
async fn save_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
        if let Err(err) = state.save_if_dirty() {
            tracing::warn!("saving sandbox state: {err:#}");
        }
    }
}
