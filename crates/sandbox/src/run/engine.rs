//! Makes Run resources real: a service revision's container kept running, a job execution's
//! tasks run to an exit code with retries, timeout and cancel; and the Operations that report
//! them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::handlers::{exec_view, project_number};
use super::records::{Settled, TaskState};
use super::views;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::executor::{CancellationToken, Identity, Launch, Probe, ServiceState, TaskEnd};
use crate::google::body_strings;
use crate::operations::{self, Outcome};
use crate::state::{AppState, SaKey};

/// Where an execution's or service's logs can be read.
pub(crate) fn log_uri(state: &AppState, name: &str) -> String {
    format!("{}/_sandbox/logs/{name}", state.url)
}

/// Parses a protobuf Duration string such as `600s` or `1.5s`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let secs: f64 = text.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(7.0 * 86400.0)))
}

/// The key file of a runtime service account, issued once per account and kept in memory.
async fn identity_for(state: &AppState, email: &str) -> Option<Identity> {
    if let Some(key) = state.run.runtime_key(email) {
        return Some(Identity {
            email: email.to_owned(),
            key_json: key,
        });
    }
    let (project, client_id) = {
        let data = state.read();
        let sa = data.service_accounts.get(email)?;
        (sa.project.clone(), sa.unique_id.clone())
    };
    let key = state.keys.take().await.ok()?;
    let key_id = crate::keys::new_key_id();
    let public = crate::keys::public_pem(&key).ok()?;
    let file = crate::keys::key_file(
        &key,
        &crate::keys::KeyFileInfo {
            key_id: &key_id,
            email,
            project: &project,
            client_id: &client_id,
            token_uri: &format!("{}/token", state.url),
        },
    )
    .ok()?;
    let now = Utc::now();
    state.write().keys.insert(
        key_id.clone(),
        SaKey {
            id: key_id,
            email: email.to_owned(),
            public_key_pem: public,
            valid_after: now,
            valid_before: now + chrono::Duration::days(365),
            disabled: false,
            system_managed: true,
        },
    );
    let secret = SecretString::from(file);
    state.run.set_runtime_key(email, secret.clone());
    Some(Identity {
        email: email.to_owned(),
        key_json: secret,
    })
}

/// Builds the launch of a container: env with secrets resolved as the runtime account, and
/// its identity. Errors are condition messages in Google's words.
pub(super) async fn prepare(
    state: &AppState,
    project: &str,
    container: &Value,
    service_account: &str,
    mut env: Vec<(String, String)>,
) -> Result<Launch, String> {
    let accessor = Caller {
        email: service_account.to_owned(),
    };
    // On Cloud Run, Google's client libraries reach the APIs through the metadata server and
    // the public endpoints; here the container is told where "Google" is, first so that the
    // container's own env can still override it.
    env.insert(0, ("BOOTSTRAP_GCP_ENDPOINT".to_owned(), state.url.clone()));
    for e in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = e.get("name").and_then(Value::as_str) else {
            continue;
        };
        if let Some(r) = e.pointer("/valueSource/secretKeyRef") {
            let secret = r.get("secret").and_then(Value::as_str).unwrap_or_default();
            let version = r.get("version").and_then(Value::as_str).unwrap_or("latest");
            match crate::secrets::resolve(state, &accessor, project, secret, version) {
                Ok(value) => env.push((name.to_owned(), value.expose_secret().to_owned())),
                Err(err) => {
                    return Err(secret_error(
                        &err,
                        project,
                        secret,
                        version,
                        service_account,
                    ));
                }
            }
        } else {
            let value = e.get("value").and_then(Value::as_str).unwrap_or_default();
            env.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(Launch {
        image: container
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        command: body_strings(container, "command"),
        args: body_strings(container, "args"),
        env,
        identity: identity_for(state, service_account).await,
        metadata: None,
    })
}

/// What the metadata server tells a container of `parent` running as `service_account`
/// (Cloud Run's `instance/id` is a long opaque string; a hash of the container's resource
/// name stands in for it).
pub(super) fn metadata_identity(
    state: &AppState,
    parent: &super::records::Parent,
    service_account: &str,
    instance: &str,
) -> crate::executor::MetadataIdentity {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{instance}/{}", uuid::Uuid::new_v4()));
    crate::executor::MetadataIdentity {
        email: service_account.to_owned(),
        project_id: parent.project.clone(),
        project_number: project_number(state, &parent.project),
        region: parent.location.clone(),
        instance_id: digest.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn secret_error(err: &ApiError, project: &str, secret: &str, version: &str, sa: &str) -> String {
    let full = if secret.starts_with("projects/") {
        format!("{secret}/versions/{version}")
    } else {
        format!("projects/{project}/secrets/{secret}/versions/{version}")
    };
    if err.code == 403 {
        format!(
            "Permission denied on secret: {full} for Revision service account {sa}. The service \
             account used must be granted the 'Secret Manager Secret Accessor' role \
             (roles/secretmanager.secretAccessor) at the secret, project or higher level."
        )
    } else {
        format!("Secret {full} was not found: {}", err.message)
    }
}

fn probe_of(container: &Value) -> (Probe, Duration) {
    let p = container
        .get("startupProbe")
        .cloned()
        .unwrap_or(Value::Null);
    let int = |k: &str, d: u64| p.get(k).and_then(Value::as_u64).unwrap_or(d);
    let deadline = if p.is_null() {
        240
    } else {
        int("initialDelaySeconds", 0) + int("periodSeconds", 10) * int("failureThreshold", 3).max(1)
    };
    let probe = match p.pointer("/httpGet/path").and_then(Value::as_str) {
        Some(path) => Probe::Http {
            path: path.to_owned(),
        },
        None if p.get("httpGet").is_some() => Probe::Http { path: "/".into() },
        None => Probe::Tcp,
    };
    (probe, Duration::from_secs(deadline.clamp(1, 240)))
}

/// Deploys the service's newest revision in the background and finishes `op_name`.
pub(crate) fn deploy_service(state: AppState, name: String, op_name: String) {
    tokio::spawn(async move {
        let outcome = deploy(&state, &name).await;
        let view = {
            let mut store = state.run.store();
            let Some(rec) = store.services.get_mut(&name) else {
                return;
            };
            let (generation, result) = match &outcome {
                Ok(generation) => (*generation, Ok(())),
                Err((generation, settled)) => (*generation, Err(settled)),
            };
            // A newer update superseded this deploy; it reports on its own operation.
            if generation == rec.meta.generation {
                rec.revisions.settle(result);
            }
            views::service(
                rec,
                &project_number(&state, &rec.meta.parent.project),
                Utc::now(),
            )
        };
        state.mark_dirty();
        let mut typed = view;
        typed["@type"] = json!("type.googleapis.com/google.cloud.run.v2.Service");
        let result = super::handlers::revision_outcome(
            outcome.as_ref().map(|_| ()).map_err(|(_, settled)| settled),
            typed,
        );
        operations::finish(&state, &op_name, result);
    });
}

async fn deploy(state: &AppState, name: &str) -> Result<i64, (i64, Settled)> {
    let (body, generation, parent, project, service_id, revision) = {
        let store = state.run.store();
        let rec = store.services.get(name).ok_or((0, Settled::Pending))?;
        (
            rec.body.clone(),
            rec.meta.generation,
            rec.meta.parent.clone(),
            rec.meta.parent.project.clone(),
            rec.meta.id.clone(),
            rec.revisions.latest_created_revision.clone(),
        )
    };
    let fail = |reason: &str, message: String| {
        (
            generation,
            Settled::Failed {
                reason: reason.into(),
                message,
            },
        )
    };
    let template = &body["template"];
    let container = template["containers"][0].clone();
    let sa = super::handlers::revision_service_account(state, &project, template);
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    if !state.run.executor().knows(&image) {
        return Err(fail(
            "CONTAINER_MISSING",
            format!("Image '{image}' not found."),
        ));
    }
    let env = vec![
        ("K_SERVICE".to_owned(), service_id),
        ("K_REVISION".to_owned(), revision.clone()),
        (
            "K_CONFIGURATION".to_owned(),
            name.rsplit('/').next().unwrap_or_default().to_owned(),
        ),
    ];
    let mut launch = prepare(state, &project, &container, &sa, env)
        .await
        .map_err(|m| {
            fail(
                "REVISION_FAILED",
                format!("Revision '{revision}' is not ready and cannot serve traffic. {m}"),
            )
        })?;
    launch.metadata = Some(metadata_identity(state, &parent, &sa, name));
    let (probe, deadline) = probe_of(&container);
    if let Some(old) = state.run.take_service(name) {
        old.stop().await;
    }
    let logs = state.run.logs_for(name);
    let handle = state
        .run
        .executor()
        .start_service(launch, probe, deadline, logs)
        .map_err(|e| {
            fail(
                "REVISION_FAILED",
                format!("Revision '{revision}' could not start: {e}"),
            )
        })?;
    let settled = handle.settled(deadline + Duration::from_secs(1)).await;
    match settled {
        ServiceState::Ready { .. } => {
            state.run.put_service(name, handle);
            Ok(generation)
        }
        ServiceState::Failed { message } => Err(fail(
            "REVISION_FAILED",
            format!("Revision '{revision}' is not ready and cannot serve traffic. {message}"),
        )),
        other => {
            handle.stop().await;
            Err(fail(
                "REVISION_FAILED",
                format!("Revision '{revision}' is not ready and cannot serve traffic ({other:?})."),
            ))
        }
    }
}

/// Runs an execution's tasks in the background and finishes `op_name` when all have ended.
pub(crate) fn start_execution(state: AppState, exec_name: String, op_name: String) {
    let token = CancellationToken::new();
    state.run.set_cancel(&exec_name, token.clone());
    tokio::spawn(async move {
        run_execution(&state, &exec_name, &token).await;
        state.run.take_cancel(&exec_name);
        let view = {
            let mut store = state.run.store();
            let Some(exec) = store.executions.get_mut(&exec_name) else {
                return;
            };
            exec.completion_time = Some(Utc::now());
            exec_view(&state, exec)
        };
        state.mark_dirty();
        let succeeded = view["conditions"][2]["state"] == json!("CONDITION_SUCCEEDED");
        let mut typed = view.clone();
        typed["@type"] = json!("type.googleapis.com/google.cloud.run.v2.Execution");
        operations::set_metadata(&state, &op_name, typed.clone());
        let outcome = if succeeded {
            Outcome::Response(typed)
        } else {
            let message = view["conditions"][2]["message"]
                .as_str()
                .unwrap_or("Execution failed.");
            Outcome::from_error(&ApiError::failed_precondition(message.to_owned()))
        };
        operations::finish(&state, &op_name, outcome);
    });
}

async fn run_execution(state: &AppState, exec_name: &str, token: &CancellationToken) {
    let Some((template, parent, project, job_id, exec_id, tasks, parallelism)) = ({
        let store = state.run.store();
        store.executions.get(exec_name).map(|e| {
            (
                e.template.clone(),
                e.meta.parent.clone(),
                e.meta.parent.project.clone(),
                e.job_id.clone(),
                e.meta.id.clone(),
                e.tasks.len(),
                e.parallelism,
            )
        })
    }) else {
        return;
    };
    let container = template["containers"][0].clone();
    let sa = template["serviceAccount"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let env = vec![
        ("CLOUD_RUN_JOB".to_owned(), job_id),
        ("CLOUD_RUN_EXECUTION".to_owned(), exec_id),
        ("CLOUD_RUN_TASK_COUNT".to_owned(), tasks.to_string()),
    ];
    let mut launch = match prepare(state, &project, &container, &sa, env).await {
        Ok(l) => l,
        Err(message) => {
            fail_all(state, exec_name, message);
            return;
        }
    };
    launch.metadata = Some(metadata_identity(state, &parent, &sa, exec_name));
    let max_retries = template["maxRetries"].as_i64().unwrap_or(3).max(0);
    let timeout = template["timeout"].as_str().and_then(parse_duration);
    let logs = state.run.logs_for(exec_name);
    let permits = Arc::new(tokio::sync::Semaphore::new(
        parallelism.clamp(1, 1000) as usize
    ));
    let mut running = Vec::new();
    for index in 0..tasks {
        let (state, name, launch, logs, token, permits) = (
            state.clone(),
            exec_name.to_owned(),
            launch.clone(),
            logs.clone(),
            token.clone(),
            permits.clone(),
        );
        running.push(tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            run_task(
                &state,
                &name,
                index,
                launch,
                max_retries,
                timeout,
                &logs,
                &token,
            )
            .await;
        }));
    }
    for t in running {
        let _ = t.await;
    }
}

fn fail_all(state: &AppState, exec_name: &str, message: String) {
    let mut store = state.run.store();
    if let Some(e) = store.executions.get_mut(exec_name) {
        let now = Utc::now();
        for t in &mut e.tasks {
            t.state = TaskState::Failed;
            t.message = Some(message.clone());
            t.completion_time = Some(now);
        }
        e.failure = Some(message);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_task(
    state: &AppState,
    exec_name: &str,
    index: usize,
    mut launch: Launch,
    max_retries: i64,
    timeout: Option<Duration>,
    logs: &crate::executor::LogBuffer,
    token: &CancellationToken,
) {
    launch
        .env
        .push(("CLOUD_RUN_TASK_INDEX".to_owned(), index.to_string()));
    let mut attempt: i64 = 0;
    loop {
        let now = Utc::now();
        let still_there = update(state, exec_name, index, |e, t| {
            t.state = TaskState::Running;
            t.start_time.get_or_insert(now);
            e.start_time.get_or_insert(now);
        });
        if !still_there || token.is_cancelled() {
            update(state, exec_name, index, |_, t| {
                t.state = TaskState::Cancelled
            });
            return;
        }
        let mut attempt_launch = launch.clone();
        attempt_launch
            .env
            .push(("CLOUD_RUN_TASK_ATTEMPT".to_owned(), attempt.to_string()));
        let end = state
            .run
            .executor()
            .run_task(&attempt_launch, timeout, token, logs)
            .await;
        let retry = !end.succeeded() && end != TaskEnd::Cancelled && attempt < max_retries;
        update(state, exec_name, index, |_, t| {
            t.exit_code = match end {
                TaskEnd::Exited(c) => Some(c),
                _ => None,
            };
            t.term_signal = match end {
                TaskEnd::Signaled(s) => Some(s),
                TaskEnd::TimedOut | TaskEnd::Cancelled => Some(9),
                _ => None,
            };
            t.message = Some(end.message());
            if retry {
                t.retried += 1;
                t.state = TaskState::Pending;
            } else {
                t.state = match end {
                    TaskEnd::Exited(0) => TaskState::Succeeded,
                    TaskEnd::Cancelled => TaskState::Cancelled,
                    _ => TaskState::Failed,
                };
                t.completion_time = Some(Utc::now());
            }
        });
        state.mark_dirty();
        if !retry {
            return;
        }
        attempt += 1;
    }
}

/// Applies `change` to task `index` of the execution; false when the execution is gone.
fn update(
    state: &AppState,
    exec_name: &str,
    index: usize,
    change: impl FnOnce(&mut super::records::ExecRec, &mut super::records::TaskRec),
) -> bool {
    let mut store = state.run.store();
    let Some(e) = store.executions.get_mut(exec_name) else {
        return false;
    };
    let Some(mut t) = e.tasks.get(index).cloned() else {
        return false;
    };
    change(e, &mut t);
    e.tasks[index] = t;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_protobuf() {
        assert_eq!(parse_duration("600s"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn probe_defaults_to_tcp_and_reads_http_get() {
        let (p, d) = probe_of(&json!({"image": "x"}));
        assert_eq!(p, Probe::Tcp);
        assert_eq!(d, Duration::from_secs(240));
        let (p, d) = probe_of(&json!({"startupProbe": {"httpGet": {"path": "/health"},
            "periodSeconds": 2, "failureThreshold": 5}}));
        assert_eq!(
            p,
            Probe::Http {
                path: "/health".into()
            }
        );
        assert_eq!(d, Duration::from_secs(10));
    }
}
