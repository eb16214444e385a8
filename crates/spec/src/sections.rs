//! Stage two: the YAML tree -> a checked [`Spec`], section by section, in plan order, so that
//! templates may refer to values of earlier sections.

use std::path::Path;

use secrecy::SecretString;

use crate::checks::Field;
use crate::diag::Pos;
use crate::ids::*;
use crate::model::*;
use crate::node::{Node, Value};
use crate::reader::{Fields, Reader, Secret, show};

/// The plan file's top-level keys, in the order it is written.
pub const TOP_KEYS: &[&str] = &[
    "version",
    "gcp",
    "service_account",
    "prefect",
    "credentials_block",
    "work_pool",
    "worker",
    "deployments",
    "deployments_from",
];
const GCP_KEYS: &[&str] = &["project", "region", "apis", "quota_project"];
const SA_KEYS: &[&str] = &[
    "name",
    "display_name",
    "description",
    "roles",
    "key",
    "least_privilege",
];
const PREFECT_KEYS: &[&str] = &["api_url", "api_key", "auth_string"];
const BLOCK_KEYS: &[&str] = &["name"];
const POOL_KEYS: &[&str] = &[
    "name",
    "type",
    "description",
    "job_variables",
    "base_job_template",
    "concurrency_limit",
];
const WORKER_KEYS: &[&str] = &[
    "service",
    "image",
    "runtime",
    "min_instances",
    "max_instances",
    "cpu_throttling",
    "allow_unauthenticated",
    "cpu",
    "memory",
    "api_key_secret",
    "kind",
    "instances",
    "scale_to_zero",
];
pub const DEPLOYMENT_KEYS: &[&str] = &[
    "name",
    "flow",
    "entrypoint",
    "image",
    "parameters",
    "work_queue",
    "tags",
    "description",
    "job_variables",
    "pull_steps",
    "schedules",
    "build",
];

/// The roles the guide grants when a plan names none.
pub const DEFAULT_ROLES: &[&str] = &["roles/iam.serviceAccountUser", "roles/run.admin"];

/// The plan version this build reads.
pub const VERSION: i64 = 1;

/// Checks `version: 1`.
pub fn version(r: &mut Reader<'_>, top: &Fields<'_>) {
    match top.get("version").map(|n| (n, &n.value)) {
        Some((_, Value::Int(VERSION))) => {}
        Some((n, v)) => {
            let message = match v {
                Value::Int(i) => format!("unsupported plan version `{i}`"),
                Value::Str(s) => {
                    format!("`version` must be a number, found the string {}", show(s))
                }
                other => format!("`version` must be a number, found {}", other.kind()),
            };
            r.error(
                n.pos,
                message,
                Some(format!(
                    "this bootstrap reads `version: {VERSION}` (a number, not quoted)"
                )),
            );
        }
        None => {
            r.missing::<()>(top, "version", "1");
        }
    }
}

/// `gcp:`; only `env` is available to its templates.
pub fn gcp(r: &mut Reader<'_>, top: &Fields<'_>) -> Option<GcpSection> {
    let f = section(r, top, "gcp", GCP_KEYS, true)?;
    let project =
        gcloud_default(r, &f, "project", "my-project-id", GCLOUD_PROJECT).and_then(|(v, pos)| {
            r.checked(&v, pos, "gcp.project", Field::ProjectId)
                .then(|| ProjectId::parse(v).ok())
                .flatten()
        });
    let region =
        gcloud_default(r, &f, "region", "us-central1", GCLOUD_REGION).and_then(|(v, pos)| {
            r.checked(&v, pos, "gcp.region", Field::Region)
                .then(|| Region::parse(v).ok())
                .flatten()
        });
    if let Some(p) = &project {
        r.set_var("gcp", "project", p.as_str());
    }
    if let Some(reg) = &region {
        r.set_var("gcp", "region", reg.as_str());
    }
    let apis = match r.opt_strings(&f, "apis") {
        Some(Some(list)) => {
            let mut out = Vec::new();
            for (i, (v, pos)) in list.into_iter().enumerate() {
                if r.checked(&v, pos, &format!("gcp.apis[{i}]"), Field::ApiService) {
                    out.extend(ApiService::parse(v).ok());
                }
            }
            Some(out)
        }
        _ => None,
    };
    let quota_project = match r.opt_string(&f, "quota_project") {
        Some((v, pos)) if !v.trim().is_empty() => {
            if !r.checked(&v, pos, "gcp.quota_project", Field::ProjectId) {
                return None;
            }
            ProjectId::parse(v).ok()
        }
        _ => None,
    };
    Some((project?, region?, apis, quota_project))
}

/// What `gcp:` yields: project, region, APIs (if listed), quota project (if named).
pub type GcpSection = (
    ProjectId,
    Region,
    Option<Vec<ApiService>>,
    Option<ProjectId>,
);

/// gcloud's own override variables for its configuration's `core/project` and `run/region`;
/// the command line also answers them from the active gcloud configuration.
pub const GCLOUD_PROJECT: &str = "CLOUDSDK_CORE_PROJECT";
pub const GCLOUD_REGION: &str = "CLOUDSDK_RUN_REGION";

/// A required `gcp:` key that, when the plan leaves it out, comes from gcloud (as gcloud's own
/// commands take the project and region from the active configuration).
fn gcloud_default(
    r: &mut Reader<'_>,
    f: &Fields<'_>,
    key: &str,
    example: &str,
    var: &str,
) -> Option<(String, Pos)> {
    if f.get(key).is_some() {
        return r.req_string(f, key, example);
    }
    if let Some(v) = (r.env)(var).filter(|v| !v.trim().is_empty()) {
        return Some((v.trim().to_owned(), f.pos));
    }
    let setting = if key == "project" {
        "project"
    } else {
        "run/region"
    };
    r.error(
        f.pos,
        format!("missing `{key}` in `gcp`, and no active gcloud configuration sets `{setting}`"),
        Some(format!(
            "add `{key}: {example}`, or run `gcloud config set {setting} {example}`"
        )),
    );
    None
}

/// `service_account:`.
pub fn service_account(
    r: &mut Reader<'_>,
    top: &Fields<'_>,
    project: Option<&ProjectId>,
) -> Option<ServiceAccount> {
    let f = section(r, top, "service_account", SA_KEYS, true)?;
    let account_id = r
        .req_string(&f, "name", "prefect-service-account")
        .and_then(|(v, pos)| {
            r.checked(&v, pos, "service_account.name", Field::AccountId)
                .then(|| AccountId::parse(v).ok())
                .flatten()
        });
    let email = account_id
        .as_ref()
        .zip(project)
        .map(|(a, p)| ServiceAccountEmail::for_account(a, p));
    if let Some(a) = &account_id {
        r.set_var("service_account", "name", a.as_str());
    }
    if let Some(e) = &email {
        r.set_var("service_account", "email", e.as_str());
    }
    let display_name = match r.opt_string(&f, "display_name") {
        Some((v, pos)) if v.chars().count() > 100 => {
            r.error(
                pos,
                format!("invalid `service_account.display_name` {}", show(&v)),
                Some("at most 100 characters".into()),
            );
            None
        }
        Some((v, _)) => Some(v),
        None => account_id.as_ref().map(|a| a.as_str().to_owned()),
    };
    let description = match r.opt_string(&f, "description") {
        Some((v, pos)) if v.chars().count() > 256 => {
            r.error(
                pos,
                format!("invalid `service_account.description` {}", show(&v)),
                Some("at most 256 characters".into()),
            );
            None
        }
        Some((v, _)) => Some(v),
        None => Some(String::new()),
    };
    let roles = match r.opt_strings(&f, "roles") {
        Some(Some(list)) => {
            let mut out: Vec<Role> = Vec::new();
            let mut ok = true;
            for (i, (v, pos)) in list.into_iter().enumerate() {
                let path = format!("service_account.roles[{i}]");
                if !r.checked(&v, pos, &path, Field::Role) {
                    ok = false;
                } else if out.iter().any(|x| x.as_str() == v) {
                    r.error(
                        pos,
                        format!("role `{v}` is listed twice in `service_account.roles`"),
                        Some("list each role once".into()),
                    );
                    ok = false;
                } else {
                    out.extend(Role::parse(v).ok());
                }
            }
            ok.then_some(out)
        }
        Some(None) => Some(
            DEFAULT_ROLES
                .iter()
                .filter_map(|r| Role::parse(*r).ok())
                .collect(),
        ),
        None => None,
    };
    let key = match r.opt_string(&f, "key") {
        None if f.get("key").is_some() => None,
        None => Some(KeyMode::Json),
        Some((v, pos)) => match v.as_str() {
            "json" => Some(KeyMode::Json),
            "none" => Some(KeyMode::None),
            _ => {
                r.error(
                    pos,
                    format!("invalid `service_account.key` {}", show(&v)),
                    Some("`json` (a key file, as the guide) or `none` (keyless)".into()),
                );
                None
            }
        },
    };
    let least_privilege = r.opt_bool(&f, "least_privilege");
    Some(ServiceAccount {
        account_id: account_id?,
        email: email?,
        display_name: display_name?,
        description: description?,
        roles: roles?,
        key: key?,
        least_privilege: least_privilege?.unwrap_or(false),
    })
}

/// `credentials_block:` (optional; named `gcp-credentials` by default).
pub fn credentials_block(r: &mut Reader<'_>, top: &Fields<'_>) -> Option<CredentialsBlock> {
    let f = section(r, top, "credentials_block", BLOCK_KEYS, false)?;
    let (v, pos) = match r.opt_string(&f, "name") {
        Some(x) => x,
        None if f.get("name").is_some() => return None,
        None => ("gcp-credentials".to_owned(), f.pos),
    };
    if !r.checked(&v, pos, "credentials_block.name", Field::BlockName) {
        return None;
    }
    r.set_var("credentials_block", "name", &v);
    BlockName::parse(v)
        .ok()
        .map(|name| CredentialsBlock { name })
}

/// `work_pool:`.
pub fn work_pool(r: &mut Reader<'_>, top: &Fields<'_>) -> Option<WorkPool> {
    let f = section(r, top, "work_pool", POOL_KEYS, true)?;
    let name = prefect_name(r, &f, "name", "my-cloud-run-pool", None);
    let pool_type = r
        .req_string(&f, "type", "cloud-run-v2")
        .and_then(|(v, pos)| match v.as_str() {
            "cloud-run" => Some(PoolType::CloudRun),
            "cloud-run-v2" => Some(PoolType::CloudRunV2),
            _ => {
                let hint = if v.starts_with("cloud-run") || v.contains("run") {
                    "`cloud-run` (Run v1 jobs, as the guide) or `cloud-run-v2` (Run v2 jobs)"
                } else {
                    "`cloud-run` or `cloud-run-v2`; push pools and other types are not supported"
                };
                r.error(
                    pos,
                    format!("invalid `work_pool.type` {}", show(&v)),
                    Some(hint.into()),
                );
                None
            }
        });
    if let Some(n) = &name {
        r.set_var("work_pool", "name", n.as_str());
    }
    if let Some(t) = pool_type {
        r.set_var("work_pool", "type", t.as_str());
    }
    let description = r.opt_string(&f, "description").map(|(v, _)| v);
    let description_ok = f.get("description").is_none() || description.is_some();
    let job_variables = r.opt_json_map(&f, "job_variables");
    let base_job_template = match f.get("base_job_template") {
        None => Some(None),
        Some(n) => match &n.value {
            Value::Map(entries) => {
                let has = |k: &str| entries.iter().any(|(key, _)| key.name == k);
                if has("job_configuration") && has("variables") {
                    Some(Some(n.to_json()))
                } else {
                    r.error(n.pos, "`work_pool.base_job_template` must have `job_configuration` and `variables`", Some("start from `prefect work-pool get-default-base-job-template --type cloud-run-v2`".into()));
                    None
                }
            }
            other => {
                r.error(n.pos, format!("`work_pool.base_job_template` must be a mapping, found {}", other.kind()), Some("a mapping with `job_configuration` and `variables`; leave it out to use the server's default".into()));
                None
            }
        },
    };
    let concurrency_limit = r.opt_u32(&f, "concurrency_limit", 1_000_000);
    if !description_ok {
        return None;
    }
    Some(WorkPool {
        name: name?,
        pool_type: pool_type?,
        description,
        job_variables: job_variables?,
        base_job_template: base_job_template?,
        concurrency_limit: concurrency_limit?,
    })
}

/// `prefect:`; the key and auth string are secrets and never appear in messages.
pub fn prefect(r: &mut Reader<'_>, top: &Fields<'_>) -> Option<Prefect> {
    let f = section(r, top, "prefect", PREFECT_KEYS, false)?;
    let api_url = match f.get("api_url") {
        None => Some(None),
        Some(n) => r.string(n, "prefect.api_url", Secret::No).and_then(|v| {
            r.checked(&v, n.pos, "prefect.api_url", Field::ApiUrl)
                .then_some(Some(v))
        }),
    };
    let api_key = secret(r, &f, "api_key");
    let auth_string = secret(r, &f, "auth_string");
    if let Some(Some(u)) = &api_url {
        r.set_var("prefect", "api_url", u);
    }
    Some(Prefect {
        api_url: api_url?,
        api_key: api_key?,
        auth_string: auth_string?,
    })
}

fn secret(r: &mut Reader<'_>, f: &Fields<'_>, key: &str) -> Option<Option<SecretString>> {
    let Some(n) = f.get(key) else {
        return Some(None);
    };
    let path = f.child(key);
    let v = r.string(n, &path, Secret::Yes)?;
    if v.trim().is_empty() {
        // An empty key is what `{{ env.X | default(value="") }}` gives for "none".
        return Some(None);
    }
    if v.chars().any(char::is_control) || v != v.trim() {
        r.error(
            n.pos,
            format!("`{path}` contains spaces or control characters"),
            Some("check how the value was set (a trailing newline?)".into()),
        );
        return None;
    }
    Some(Some(SecretString::from(v)))
}

/// `worker:` (optional).
pub fn worker(r: &mut Reader<'_>, top: &Fields<'_>) -> Option<Option<Worker>> {
    if top.get("worker").is_none() {
        return Some(None);
    }
    let f = section(r, top, "worker", WORKER_KEYS, false)?;
    let service = r
        .req_string(&f, "service", "prefect-worker")
        .and_then(|(v, pos)| {
            r.checked(&v, pos, "worker.service", Field::RunServiceName)
                .then(|| RunServiceName::parse(v).ok())
                .flatten()
        });
    if let Some(s) = &service {
        r.set_var("worker", "service", s.as_str());
    }
    let runtime = match r.opt_string(&f, "runtime") {
        None if f.get("runtime").is_some() => None,
        None => Some(WorkerRuntime::Python),
        Some((v, pos)) => match v.as_str() {
            "python" => Some(WorkerRuntime::Python),
            "embedded" => Some(WorkerRuntime::Embedded),
            _ => {
                r.error(pos, format!("invalid `worker.runtime` {}", show(&v)), Some("`python` (prefect worker start, as the guide) or `embedded` (bootstrap worker)".into()));
                None
            }
        },
    };
    // No image with the embedded worker: it is built from this binary.
    let (image, build) = match (runtime, f.get("image")) {
        (Some(WorkerRuntime::Embedded), None) => match worker_build(r, f.pos) {
            Some(b) => (ImageRef::parse(b.image_name.clone()).ok(), Some(Some(b))),
            None => (None, None),
        },
        _ => {
            let image = r
                .req_string(&f, "image", "prefecthq/prefect:3-latest")
                .and_then(|(v, pos)| {
                    if runtime == Some(WorkerRuntime::Embedded) && is_prefects_own_image(&v) {
                        r.error(
                            pos,
                            format!("`worker.image` {} is Prefect's own image, which has no `bootstrap` in it, and `runtime: embedded` runs `bootstrap worker`", show(&v)),
                            Some("leave `worker.image` out (apply then builds the worker's image from this bootstrap binary), or name an image built from this repository's Dockerfile".into()),
                        );
                        return None;
                    }
                    r.checked(&v, pos, "worker.image", Field::Image)
                        .then(|| ImageRef::parse(v).ok())
                        .flatten()
                });
            (image, Some(None))
        }
    };
    let min_instances = r.opt_u32(&f, "min_instances", 1000);
    let max_instances = r.opt_u32(&f, "max_instances", 1000);
    if let (Some(Some(min)), Some(Some(max))) = (min_instances, max_instances)
        && max < min.max(1)
    {
        let pos = f.get("max_instances").map_or(f.pos, |n| n.pos);
        r.error(
            pos,
            format!("`worker.max_instances` ({max}) is below `worker.min_instances` ({min})"),
            Some("max_instances must be at least min_instances and at least 1".into()),
        );
    }
    let cpu_throttling = r.opt_bool(&f, "cpu_throttling");
    let allow_unauthenticated = r.opt_bool(&f, "allow_unauthenticated");
    let cpu = quantity(r, &f, "cpu", "1", Field::Cpu);
    let memory = quantity(r, &f, "memory", "512Mi", Field::Memory);
    let kind = match r.opt_string(&f, "kind") {
        None if f.get("kind").is_some() => None,
        None => Some(WorkerKind::Service),
        Some((v, pos)) => match v.as_str() {
            "service" => Some(WorkerKind::Service),
            "worker-pool" => Some(WorkerKind::WorkerPool),
            _ => {
                r.error(pos, format!("invalid `worker.kind` {}", show(&v)), Some("`service` (an always-on Cloud Run service, as the guide) or `worker-pool` (a Cloud Run worker pool)".into()));
                None
            }
        },
    };
    let instances = r.opt_u32(&f, "instances", 1000);
    // Keys of one kind are errors on the other, rather than silently ignored.
    if let Some(kind) = kind {
        let foreign: &[&str] = match kind {
            WorkerKind::Service => &["instances"],
            WorkerKind::WorkerPool => &[
                "min_instances",
                "max_instances",
                "cpu_throttling",
                "allow_unauthenticated",
            ],
        };
        for key in foreign {
            if let Some(n) = f.get(key) {
                let hint = match kind {
                    WorkerKind::Service => {
                        "set `kind: worker-pool`, or use `min_instances` / `max_instances` for a service"
                    }
                    WorkerKind::WorkerPool => {
                        "a worker pool has a fixed count: use `instances`; it serves no requests and its CPU is always allocated"
                    }
                };
                r.error(
                    n.pos,
                    format!(
                        "`worker.{key}` does not apply to `worker.kind: {}`",
                        kind.as_str()
                    ),
                    Some(hint.into()),
                );
            }
        }
    }
    let api_key_secret = match r.opt_string(&f, "api_key_secret") {
        None if f.get("api_key_secret").is_some() => None,
        None => SecretId::parse("prefect-api-key").ok(),
        Some((v, pos)) => r
            .checked(&v, pos, "worker.api_key_secret", Field::SecretId)
            .then(|| SecretId::parse(v).ok())
            .flatten(),
    };
    // An invalid `kind` is reported once, where it is written.
    let scale_to_zero =
        crate::scale_to_zero::read(r, &f, kind != Some(WorkerKind::Service), runtime);
    Some(Some(Worker {
        service: service?,
        image: image?,
        build: build?,
        runtime: runtime?,
        min_instances: min_instances?.unwrap_or(1),
        max_instances: max_instances?,
        cpu_throttling: cpu_throttling?.unwrap_or(false),
        allow_unauthenticated: allow_unauthenticated?.unwrap_or(false),
        cpu: cpu?,
        memory: memory?,
        api_key_secret: api_key_secret?,
        kind: kind?,
        instances: instances?.unwrap_or(1),
        scale_to_zero: scale_to_zero?,
    }))
}

/// Whether `image` is Docker Hub's `prefecthq/prefect` (any tag or digest), Prefect's own image:
/// it runs `prefect worker start` and has no `bootstrap` binary.
fn is_prefects_own_image(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    // A tag follows the last `:` after the last `/` (a registry's port comes before a `/`).
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    let name = ["docker.io/", "index.docker.io/", "registry-1.docker.io/"]
        .iter()
        .find_map(|host| name.strip_prefix(host))
        .unwrap_or(name);
    name == "prefecthq/prefect"
}

/// The worker image's build from the running binary, in the default repository (the load
/// moves it to the deployments' repository when they build too). `None` with an error when
/// this binary cannot be the image; `None` alone when `gcp` failed (it said why).
fn worker_build(r: &mut Reader<'_>, pos: Pos) -> Option<crate::build::Build> {
    if let Some((message, hint)) = r.running.unfit() {
        r.error(pos, message, Some(hint));
        return None;
    }
    let exe = match r.running.exe.clone() {
        Ok(exe) => exe,
        Err(e) => {
            r.error(
                pos,
                format!("`worker.image` is not set, and the running `bootstrap` binary, from which the worker's image would be built, cannot be found: {e}"),
                Some("set `worker.image` to an image of the embedded worker".into()),
            );
            return None;
        }
    };
    let gcp = r.vars.get("gcp")?;
    let project = crate::ids::ProjectId::parse(gcp.get("project")?.as_str()?).ok()?;
    let region = crate::ids::Region::parse(gcp.get("region")?.as_str()?).ok()?;
    let version = r.running.version.clone();
    Some(crate::worker_image::build(
        &project, &region, None, exe, &version,
    ))
}

/// cpu and memory: a string, or a bare number for cpu (`cpu: 1`).
fn quantity(
    r: &mut Reader<'_>,
    f: &Fields<'_>,
    key: &str,
    default: &str,
    field: Field,
) -> Option<String> {
    let path = f.child(key);
    let (v, pos) = match f.get(key) {
        None => return Some(default.to_owned()),
        Some(Node {
            pos,
            value: Value::Int(i),
        }) => (i.to_string(), *pos),
        Some(Node {
            pos,
            value: Value::Float(x),
        }) => (x.to_string(), *pos),
        Some(n) => (r.string(n, &path, Secret::No)?, n.pos),
    };
    r.checked(&v, pos, &path, field).then_some(v)
}

/// `deployments:` written in the plan.
pub fn deployments(r: &mut Reader<'_>, top: &Fields<'_>) -> Option<Vec<(Deployment, Pos)>> {
    let Some(n) = top.get("deployments") else {
        return Some(Vec::new());
    };
    r.list(n, "deployments", DEPLOYMENTS_HINT, deployment)
}

/// How to write the `deployments` list (of the plan file and of a prefect.yaml).
pub const DEPLOYMENTS_HINT: &str = "write `deployments:` followed by `- name: ...` entries";

fn deployment(r: &mut Reader<'_>, node: &Node, path: &str) -> Option<Deployment> {
    let f = r.fields(Some(node), node.pos, path, DEPLOYMENT_KEYS)?;
    let name = prefect_name(r, &f, "name", "my-deployment", None);
    let entrypoint = r
        .req_string(&f, "entrypoint", "flows/my_flow.py:my_flow")
        .and_then(|(v, pos)| {
            r.checked(&v, pos, &f.child("entrypoint"), Field::Entrypoint)
                .then_some(v)
        });
    // The flow name Prefect gives a function by default: its name with `_` as `-`.
    let default_flow = entrypoint
        .as_deref()
        .and_then(|e| e.rsplit_once(':'))
        .map(|(_, func)| func.rsplit('.').next().unwrap_or(func).replace('_', "-"));
    let flow = prefect_name(r, &f, "flow", "my-flow", default_flow.as_deref());
    let image = match r.opt_string(&f, "image") {
        None if f.get("image").is_some() => None,
        None => Some(None),
        Some((v, pos)) => r
            .checked(&v, pos, &f.child("image"), Field::Image)
            .then(|| ImageRef::parse(v).ok()),
    };
    let work_queue = prefect_name(r, &f, "work_queue", "default", Some("default"));
    let tags = match r.opt_strings(&f, "tags") {
        Some(Some(list)) => Some(list.into_iter().map(|(t, _)| t).collect()),
        Some(None) => Some(Vec::new()),
        None => None,
    };
    let description = r.opt_string(&f, "description").map(|(v, _)| v);
    let description_ok = f.get("description").is_none() || description.is_some();
    let parameters = r.opt_json_map(&f, "parameters");
    let job_variables = r.opt_json_map(&f, "job_variables");
    let pull_steps = r.opt_json_maps(
        &f,
        "pull_steps",
        "{prefect.deployments.steps.set_working_directory: {directory: /opt/prefect}}",
    );
    let schedules = r.opt_json_maps(&f, "schedules", "{cron: \"0 * * * *\"}");
    let build = build_of(r, &f, name.as_ref().map(|n| n.as_str()));
    if let (Some(b), Some(i)) = (f.get("build"), f.get("image")) {
        r.error(
            b.pos,
            format!("`{path}` has both `image` and `build`"),
            Some(format!(
                "keep one: `build` makes the image (remove `image` on line {}), `image` names one built elsewhere",
                i.pos.line
            )),
        );
        return None;
    }
    if let Some(list) = &schedules {
        for (i, s) in list.iter().enumerate() {
            let known = ["cron", "interval", "rrule"];
            let has = s
                .as_object()
                .is_some_and(|m| known.iter().any(|k| m.contains_key(*k)));
            if !has {
                let pos = f.get("schedules").map_or(f.pos, |n| match &n.value {
                    Value::Seq(items) => items.get(i).map_or(n.pos, |x| x.pos),
                    _ => n.pos,
                });
                r.error(
                    pos,
                    format!("`{path}.schedules[{i}]` has none of `cron`, `interval` or `rrule`"),
                    Some(
                        "for example `{cron: \"0 9 * * *\", timezone: UTC}` or `{interval: 3600}`"
                            .into(),
                    ),
                );
            }
        }
    }
    if !description_ok {
        return None;
    }
    let build = build?;
    let pull_steps = pull_steps.map(|steps| with_build_pull_step(steps, build.as_ref()));
    Some(Deployment {
        build,
        name: name?,
        flow: flow?,
        entrypoint: entrypoint?,
        image: image?,
        parameters: parameters?,
        work_queue: work_queue?,
        tags: tags?,
        description,
        job_variables: job_variables?,
        pull_steps: pull_steps?,
        schedules: schedules?,
    })
}

/// `build:` of a deployment (`Some(None)` when absent), its context relative to the file being
/// read (the plan, or the prefect.yaml of `deployments_from`).
pub(crate) fn build_of(
    r: &mut Reader<'_>,
    f: &Fields<'_>,
    deployment: Option<&str>,
) -> Option<Option<crate::build::Build>> {
    let Some(n) = f.get("build") else {
        return Some(None);
    };
    let dir = r.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let gcp = gcp_vars(r);
    let path = f.child("build");
    crate::build::read(
        r,
        n,
        &path,
        &dir,
        deployment,
        gcp.as_ref().map(|(p, g)| (p, g)),
    )
    .map(Some)
}

/// `gcp.project` and `gcp.region` once the `gcp` section was read.
pub(crate) fn gcp_vars(r: &Reader<'_>) -> Option<(ProjectId, Region)> {
    let g = r.vars.get("gcp")?;
    let project = ProjectId::parse(g.get("project")?.as_str()?).ok()?;
    let region = Region::parse(g.get("region")?.as_str()?).ok()?;
    Some((project, region))
}

/// With `build:` and no pull steps of the plan's, the pull step Prefect's `dockerfile: auto`
/// deployments get: run from where the image keeps the context.
pub(crate) fn with_build_pull_step(
    steps: Vec<serde_json::Value>,
    build: Option<&crate::build::Build>,
) -> Vec<serde_json::Value> {
    match build {
        Some(b) if steps.is_empty() => vec![serde_json::json!({
            "prefect.deployments.steps.set_working_directory": { "directory": b.workdir }
        })],
        _ => steps,
    }
}

/// A Prefect name: required unless `default` is given.
fn prefect_name(
    r: &mut Reader<'_>,
    f: &Fields<'_>,
    key: &str,
    example: &str,
    default: Option<&str>,
) -> Option<PrefectName> {
    let path = f.child(key);
    let (v, pos) = match (f.get(key), default) {
        (Some(n), _) => (r.string(n, &path, Secret::No)?, n.pos),
        (None, Some(d)) => return PrefectName::parse(d).ok(),
        (None, None) => return r.missing(f, key, example),
    };
    r.checked(&v, pos, &path, Field::PrefectName)
        .then(|| PrefectName::parse(v).ok())
        .flatten()
}

/// A section of the top level; `required` sections report their absence.
fn section<'n>(
    r: &mut Reader<'_>,
    top: &Fields<'n>,
    key: &str,
    known: &[&str],
    required: bool,
) -> Option<Fields<'n>> {
    let node = top.get(key);
    if node.is_none() && required {
        return r.missing(top, key, "...");
    }
    r.fields(node, top.pos, key, known)
}

/// The APIs a plan needs when it names none.
pub fn default_apis(worker: bool, api_key: bool) -> Vec<ApiService> {
    let mut names = vec![
        "iam.googleapis.com",
        "cloudresourcemanager.googleapis.com",
        "run.googleapis.com",
    ];
    if worker && api_key {
        names.push("secretmanager.googleapis.com");
    }
    names
        .into_iter()
        .filter_map(|n| ApiService::parse(n).ok())
        .collect()
}

/// Cross-section checks: names that must be unique, sections that need each other.
pub fn cross_checks(r: &mut Reader<'_>, top: &Fields<'_>, spec_parts: &CrossInput<'_>) {
    let mut seen: Vec<(&str, &str, Pos, &Path)> = Vec::new();
    for (d, pos, file) in spec_parts.deployments {
        if let Some((_, _, first, first_file)) = seen
            .iter()
            .find(|(flow, name, _, _)| *flow == d.flow.as_str() && *name == d.name.as_str())
        {
            let where_ = if *first_file == file.as_path() {
                format!("line {}", first.line)
            } else {
                format!("{}:{}", first_file.display(), first.line)
            };
            r.diags.push(
                crate::Diagnostic::new(file, *pos, format!("duplicate deployment `{}/{}`", d.flow, d.name))
                    .with_hint(format!("a deployment with this flow and name is already defined at {where_}; names must be unique per flow")),
            );
        } else {
            seen.push((d.flow.as_str(), d.name.as_str(), *pos, file.as_path()));
        }
    }
    if let (Some(worker_node), true) = (top.get("worker"), spec_parts.has_worker)
        && !spec_parts.has_api_url
    {
        r.error(
            worker_node.pos,
            "the `worker` section needs `prefect.api_url`: the worker service must know \
             which Prefect server to poll",
            Some("add `prefect:` with `api_url: \"{{ env.PREFECT_API_URL }}\"`".into()),
        );
    }
}

/// What [`cross_checks`] looks at.
pub struct CrossInput<'a> {
    pub deployments: &'a [(Deployment, Pos, std::path::PathBuf)],
    pub has_worker: bool,
    pub has_api_url: bool,
}

#[cfg(test)]
mod tests {
    use super::is_prefects_own_image;

    #[test]
    fn prefects_own_image_by_any_tag_digest_or_docker_hub_spelling() {
        for image in [
            "prefecthq/prefect",
            "prefecthq/prefect:3-latest",
            "docker.io/prefecthq/prefect:3.9.1-python3.11",
            "index.docker.io/prefecthq/prefect@sha256:0123",
            "prefecthq/prefect:3-latest@sha256:0123",
        ] {
            assert!(is_prefects_own_image(image), "{image}");
        }
        for image in [
            "prefecthq/prefect-worker:1",
            "us-docker.pkg.dev/p/r/prefecthq/prefect:3",
            "localhost:5000/prefecthq/prefect",
            "ghcr.io/me/bootstrap:latest",
        ] {
            assert!(!is_prefects_own_image(image), "{image}");
        }
    }
}
