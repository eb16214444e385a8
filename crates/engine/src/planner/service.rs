//! The worker's Cloud Run service (v2): the body the plan wants, and the view of a live service
//! restricted to the fields the plan owns (server-managed fields never show as drift).

use std::collections::BTreeMap;

use bootstrap_gcp::run_v2::{
    Container, ContainerPort, EnvVar, EnvVarSource, HttpGetAction, Probe, ResourceRequirements,
    RevisionScaling, RevisionTemplate, SecretKeySelector, Service,
};
use bootstrap_spec::{Spec, Worker, WorkerRuntime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::super::diff;
use super::super::observed::MARKER_LABEL;
use super::super::plan::{Action, Address, Op, Step};
use super::{Builder, Options};
use bootstrap_spec::ids::RunServiceName;

/// Port of the worker's health endpoint inside the container.
pub const HEALTH_PORT: u16 = 8080;

/// The container command and args that start the worker (the guide's, or the embedded one).
pub fn command_and_args(spec: &Spec, worker: &Worker) -> (Vec<String>, Vec<String>) {
    let pool = spec.work_pool.name.to_string();
    let pool_type = spec.work_pool.pool_type.as_str().to_string();
    match worker.runtime {
        WorkerRuntime::Python => (
            vec![],
            [
                "prefect",
                "worker",
                "start",
                "--install-policy",
                "always",
                "--with-healthcheck",
                "-p",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([pool, "-t".into(), pool_type])
            .collect(),
        ),
        WorkerRuntime::Embedded => (
            vec!["bootstrap".into()],
            vec![
                "worker".into(),
                "--pool".into(),
                pool,
                "--healthcheck".into(),
            ],
        ),
    }
}

/// A literal environment variable.
pub fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_source: None,
    }
}

/// An environment variable holding the latest version of a Secret Manager secret.
pub fn env_secret(name: &str, secret: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_source: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                secret: secret.to_owned(),
                version: Some("latest".to_owned()),
            }),
        }),
    }
}

/// The marker label every Cloud Run resource the tool makes carries.
pub fn marker_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MARKER_LABEL.0.to_owned(), MARKER_LABEL.1.to_owned())])
}

/// A count of the plan file (`u32`) as Cloud Run's int32; the plan file's limits keep it far
/// below `i32::MAX`.
pub fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `cpu` and `memory` limits.
pub fn limits(cpu: &str, memory: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cpu".to_owned(), cpu.to_owned()),
        ("memory".to_owned(), memory.to_owned()),
    ])
}

/// How a container of the plan (the worker, the waker) reaches Prefect: the API URL, and the
/// API key from Secret Manager when there is one.
pub fn prefect_env(worker: &Worker, options: &Options) -> Vec<EnvVar> {
    let mut env = vec![env_value("PREFECT_API_URL", &options.prefect_api_url)];
    if options.has_api_key {
        env.push(env_secret(
            "PREFECT_API_KEY",
            worker.api_key_secret.as_str(),
        ));
    }
    env
}

/// The service body apply sends (Run v2 `Service`), with only fields the plan decides.
pub fn desired(spec: &Spec, worker: &Worker, options: &Options) -> Service {
    let (command, args) = command_and_args(spec, worker);
    let env = prefect_env(worker, options);
    let container = Container {
        image: worker.image.to_string(),
        command,
        args,
        env,
        ports: vec![ContainerPort {
            name: None,
            container_port: Some(i32::from(HEALTH_PORT)),
        }],
        resources: Some(ResourceRequirements {
            limits: limits(&worker.cpu, &worker.memory),
            cpu_idle: Some(worker.cpu_throttling),
            startup_cpu_boost: None,
        }),
        startup_probe: Some(Probe {
            http_get: Some(HttpGetAction {
                path: Some("/health".to_owned()),
                port: Some(i32::from(HEALTH_PORT)),
                ..HttpGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(24),
            timeout_seconds: Some(3),
            ..Probe::default()
        }),
        ..Container::default()
    };
    Service {
        labels: marker_labels(),
        ingress: Some("INGRESS_TRAFFIC_ALL".to_owned()),
        invoker_iam_disabled: Some(worker.allow_unauthenticated),
        template: Some(RevisionTemplate {
            service_account: Some(spec.service_account.email.to_string()),
            scaling: Some(RevisionScaling {
                min_instance_count: Some(count(worker.min_instances)),
                max_instance_count: worker.max_instances.map(count),
                ..RevisionScaling::default()
            }),
            containers: vec![container],
            ..RevisionTemplate::default()
        }),
        ..Service::default()
    }
}

/// A typed body's JSON, for the views the planner compares (owned fields, drift).
pub fn to_json<T: Serialize>(body: &T) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// The typed body of a merged update ([`merge_into_live`], [`redeploy_body`]). The live body
/// is what observe read through the typed model and re-encoded, and the fields laid over it
/// are the encoding of a typed desired body, so the merge always fits the model again.
pub fn typed_body<T: DeserializeOwned>(merged: Value) -> T {
    match serde_json::from_value(merged) {
        Ok(body) => body,
        Err(e) => unreachable!("a live Cloud Run body merged with a typed one is typed: {e}"),
    }
}

/// The fields of a service the plan owns, from a live service or a desired body.
pub fn owned_view(service: &Value) -> Value {
    let container = service
        .pointer("/template/containers/0")
        .cloned()
        .unwrap_or(Value::Null);
    let mut env: Vec<Value> = container
        .get("env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    env.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let env_map: serde_json::Map<String, Value> = env
        .into_iter()
        .filter_map(|e| {
            let name = e.get("name")?.as_str()?.to_string();
            let v = e
                .get("value")
                .cloned()
                .or_else(|| e.get("valueSource").cloned())
                .unwrap_or(Value::Null);
            Some((name, v))
        })
        .collect();
    let pick = |p: &str| service.pointer(p).cloned().unwrap_or(Value::Null);
    let cpick = |p: &str| container.pointer(p).cloned().unwrap_or(Value::Null);
    json!({
        "labels": {MARKER_LABEL.0: service.pointer(&format!("/labels/{}", MARKER_LABEL.0)).cloned().unwrap_or(Value::Null)},
        "invoker_iam_disabled": service.get("invokerIamDisabled").and_then(Value::as_bool).unwrap_or(false),
        "service_account": pick("/template/serviceAccount"),
        "min_instances": pick("/template/scaling/minInstanceCount"),
        "max_instances": pick("/template/scaling/maxInstanceCount"),
        "image": cpick("/image"),
        "command": cpick("/command"),
        "args": cpick("/args"),
        "env": env_map,
        "cpu": cpick("/resources/limits/cpu"),
        "memory": cpick("/resources/limits/memory"),
        "cpu_idle": container.pointer("/resources/cpuIdle").and_then(Value::as_bool).unwrap_or(false),
        "startup_probe_path": cpick("/startupProbe/httpGet/path"),
    })
}

/// [`owned_view`] for this plan: fields the plan leaves to the server's default (an unset
/// `max_instances` becomes 100 on Cloud Run) are not the plan's to compare.
pub fn owned_view_for(service: &Value, worker: &Worker) -> Value {
    let mut view = owned_view(service);
    if worker.max_instances.is_none()
        && let Value::Object(map) = &mut view
    {
        map.remove("max_instances");
    }
    view
}

/// Why a live service is not serving its latest revision, in Google's words: its
/// `terminalCondition` failed, or it settled with the latest created revision not ready. `None`
/// while it is still reconciling (someone's deploy is under way) or when it is ready.
pub fn not_ready(service: &Value) -> Option<String> {
    if service.get("reconciling").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let short = |p: &str| {
        service
            .pointer(p)
            .and_then(Value::as_str)
            .map(|n| n.rsplit('/').next().unwrap_or(n).to_owned())
    };
    let created = short("/latestCreatedRevision");
    let latest = created.clone().unwrap_or_else(|| "(unknown)".into());
    let cond = service.get("terminalCondition").unwrap_or(&Value::Null);
    let state = cond
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if state == "CONDITION_FAILED" {
        let message = cond
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        let reason = cond
            .get("reason")
            .or_else(|| cond.get("revisionReason"))
            .and_then(Value::as_str);
        return Some(match reason {
            Some(r) => format!("latest revision {latest} is not ready ({r}): {message}"),
            None => format!("latest revision {latest} is not ready: {message}"),
        });
    }
    let ready = short("/latestReadyRevision");
    if state == "CONDITION_SUCCEEDED" && created.is_some() && ready != created {
        return Some(format!(
            "latest revision {latest} is not ready (serving {})",
            ready.as_deref().unwrap_or("no revision")
        ));
    }
    None
}

/// The template annotation that makes a redeploy of an unchanged spec a new revision (Cloud Run
/// makes a revision only when the template changes). Its value is the failed revision's name,
/// so the planner stays pure and a second plan of the same world gives the same body.
pub const REDEPLOY_ANNOTATION: &str = "bootstrap.prefect.io/redeploy-of";

/// [`merge_into_live`] for a service whose latest revision is not ready: the same body, with a
/// template annotation naming the failed revision so that Cloud Run makes a new one.
pub fn redeploy_body(live: &Value, desired: &Value) -> Value {
    let mut body = merge_into_live(live, desired);
    let failed = live
        .pointer("/latestCreatedRevision")
        .and_then(Value::as_str)
        .map(|n| n.rsplit('/').next().unwrap_or(n).to_owned())
        .unwrap_or_default();
    // The key holds dots, so not through `diff::set_path`.
    if !body["template"]["annotations"].is_object() {
        body["template"]["annotations"] = json!({});
    }
    body["template"]["annotations"][REDEPLOY_ANNOTATION] = Value::String(failed);
    body
}

/// Plans a Cloud Run service of the plan (the worker's or the waker's): create it when absent;
/// when live, update it where the fields the plan owns (`owned`) differ, or redeploy it when
/// its latest revision is not ready (drift even when the spec matches: nothing runs; the
/// redeploy makes a new revision of the same spec); else it is unchanged.
pub(super) fn plan_service(
    b: &mut Builder,
    address: Address,
    name: &RunServiceName,
    desired: Service,
    live: Option<&Value>,
    depends_on: Vec<Address>,
    owned: impl Fn(&Value) -> Value,
) {
    let desired_json = to_json(&desired);
    let Some(live) = live else {
        let changes = diff::changes(&Value::Null, &owned(&desired_json));
        let op = Op::UpsertService {
            name: name.clone(),
            body: Box::new(desired),
        };
        b.push(Step {
            changes,
            depends_on,
            ..Step::new(address, Action::Create, op)
        });
        return;
    };
    let changes = diff::changes(&owned(live), &owned(&desired_json));
    let not_ready = not_ready(live);
    if changes.is_empty() && not_ready.is_none() {
        b.unchanged(address);
        return;
    }
    let body = typed_body(match &not_ready {
        Some(_) => redeploy_body(live, &desired_json),
        None => merge_into_live(live, &desired_json),
    });
    let op = Op::UpsertService {
        name: name.clone(),
        body: Box::new(body),
    };
    let reason = not_ready.map(|why| format!("{}; apply redeploys it", why.trim_end_matches('.')));
    b.push(Step {
        changes,
        reason,
        adopted: !is_marked(live),
        depends_on,
        ..Step::new(address, Action::Update, op)
    });
}

pub fn is_marked(service: &Value) -> bool {
    service
        .pointer(&format!("/labels/{}", MARKER_LABEL.0))
        .and_then(Value::as_str)
        == Some(MARKER_LABEL.1)
}

/// The body for updating a live service: the live service's user fields with ours laid over, so
/// that fields the plan does not own (set by hand, or by the API) are kept.
pub fn merge_into_live(live: &Value, desired: &Value) -> Value {
    const SERVER_FIELDS: &[&str] = &[
        "uid",
        "generation",
        "createTime",
        "updateTime",
        "deleteTime",
        "expireTime",
        "creator",
        "lastModifier",
        "observedGeneration",
        "conditions",
        "terminalCondition",
        "latestReadyRevision",
        "latestCreatedRevision",
        "trafficStatuses",
        "uri",
        "urls",
        "reconciling",
        "etag",
        "satisfiesPzs",
    ];
    let mut body = live.clone();
    if let Value::Object(map) = &mut body {
        for f in SERVER_FIELDS {
            map.remove(*f);
        }
    }
    // Labels: keep the live ones, add ours.
    if let Some(Value::Object(labels)) = desired.get("labels") {
        for (k, v) in labels {
            diff::set_path(&mut body, &format!("labels.{k}"), v.clone());
        }
    }
    for key in ["ingress", "invokerIamDisabled"] {
        if let Some(v) = desired.get(key) {
            body[key] = v.clone();
        }
    }
    for key in ["serviceAccount", "scaling"] {
        if let Some(v) = desired.pointer(&format!("/template/{key}")) {
            diff::set_path(&mut body, &format!("template.{key}"), v.clone());
        }
    }
    if let Some(Value::Object(map)) = body.get_mut("template") {
        map.remove("revision"); // never pin revision names (409 on a changed config)
    }
    // The first container is ours; others (sidecars) are kept.
    let ours = desired
        .pointer("/template/containers/0")
        .cloned()
        .unwrap_or(Value::Null);
    let mut containers = body
        .pointer("/template/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        containers.push(ours);
    } else {
        let mut first = containers[0].clone();
        if let (Value::Object(f), Value::Object(o)) = (&mut first, &ours) {
            for (k, v) in o {
                f.insert(k.clone(), v.clone());
            }
            if !o.contains_key("command") {
                f.remove("command");
            }
        }
        containers[0] = first;
    }
    diff::set_path(&mut body, "template.containers", Value::Array(containers));
    body
}
