//! `deployments_from: prefect.yaml`: deployments read from an existing Prefect project file.
//!
//! Read from each entry of its `deployments:` list: `name`, `entrypoint`, `parameters`,
//! `tags`, `description`, `schedules`, `pull` (or the file's top-level `pull`),
//! `work_pool.work_queue_name`, and `work_pool.job_variables` (its `image` becomes the
//! deployment's image; the rest stay job variables).
//!
//! Its `build` steps (the file's, or a deployment's own): a
//! `prefect_docker.deployments.steps.build_docker_image` step becomes the deployment's
//! `build:` - context the prefect.yaml's folder, its `dockerfile` (`auto` or a path; prefect-
//! docker's default is `Dockerfile`) and `platform`; the repository is the one `image_name`
//! names when it is an Artifact Registry path, else `prefect`. The image is then built
//! remotely and tagged by its source digest, so `tag` and the `push` step are not needed (and
//! `job_variables.image: "{{ build_image.image }}"` is what the build makes). An `image_name`
//! on `gcr.io` or `*.gcr.io` gets a warning: Container Registry is shut down.
//!
//! Ignored: the `push` steps (the remote build pushes), `version`,
//! `triggers`, `concurrency_limit`, `enforce_parameter_schema`, `paused`, the old singular
//! `schedule`, and `work_pool.name` (deployments always go to the plan's work pool).
//! Prefect's own `{{ ... }}` templates in this file are not rendered; where one would decide a
//! name, entrypoint or image, that is reported as an error.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::checks::Field;
use crate::diag::Pos;
use crate::ids::{ImageRef, PrefectName};
use crate::model::Deployment;
use crate::node::{self, Node, Value};
use crate::reader::{Fields, Reader, Secret, show};
use crate::sections::DEPLOYMENTS_HINT;
use crate::template::is_template;

/// Reads the deployments of the prefect.yaml at `rel` (relative to the plan's directory).
/// Problems inside that file are reported against it.
pub fn read(
    r: &mut Reader<'_>,
    plan_dir: &Path,
    rel: &str,
    pos: Pos,
) -> Option<Vec<(Deployment, Pos, PathBuf)>> {
    let path = plan_dir.join(rel);
    let shown_path = if plan_dir.as_os_str().is_empty() {
        PathBuf::from(rel)
    } else {
        path.clone()
    };
    let bytes = match read_limited(&path) {
        Ok(b) => b,
        Err(e) => {
            r.error(
                pos,
                format!(
                    "cannot read `deployments_from` file {}: {e}",
                    shown_path.display()
                ),
                Some("the path is relative to the plan file's directory".into()),
            );
            return None;
        }
    };
    let mut sub = Reader::new(&shown_path, r.env);
    // `gcp.project` / `gcp.region` for the image names of build steps.
    sub.vars = r.vars.clone();
    let result = match crate::load::decode(&bytes) {
        Err((p, msg)) => {
            sub.error(p, msg, Some("save prefect.yaml as UTF-8".into()));
            None
        }
        Ok(text) => match node::parse(text) {
            Err(e) => {
                sub.error(e.pos, e.message, e.hint);
                None
            }
            Ok(root) => deployments(&mut sub, &root, plan_dir),
        },
    };
    r.diags.0.extend(sub.diags);
    result.map(|list| {
        list.into_iter()
            .map(|(d, p)| (d, p, shown_path.clone()))
            .collect()
    })
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > node::MAX_PLAN_BYTES as u64 {
        return Err(std::io::Error::other(format!(
            "the file is {len} bytes, more than a plan may read"
        )));
    }
    std::fs::read(path)
}

/// Every key of a mapping is accepted: prefect.yaml has many we do not use.
fn lenient<'n>(r: &mut Reader<'_>, node: &'n Node, path: &str) -> Option<Fields<'n>> {
    let keys: Vec<&str> = match &node.value {
        Value::Map(entries) => entries.iter().map(|(k, _)| k.name.as_str()).collect(),
        _ => Vec::new(),
    };
    r.fields(Some(node), node.pos, path, &keys)
}

fn deployments(r: &mut Reader<'_>, root: &Node, plan_dir: &Path) -> Option<Vec<(Deployment, Pos)>> {
    let top = lenient(r, root, "")?;
    let shared_pull = top.get("pull");
    let shared_build = top.get("build");
    let Some(list) = top.get("deployments") else {
        return r.missing(&top, "deployments", "[{name: ..., entrypoint: ...}]");
    };
    r.list(list, "deployments", DEPLOYMENTS_HINT, |r, item, path| {
        deployment(r, item, path, (shared_pull, shared_build), plan_dir)
    })
}

fn literal(r: &mut Reader<'_>, f: &Fields<'_>, key: &str, example: &str) -> Option<(String, Pos)> {
    let n = match f.get(key) {
        Some(n) => n,
        None => return r.missing(f, key, example),
    };
    let path = f.child(key);
    match &n.value {
        Value::Str(s) if is_template(s) => {
            r.error(
                n.pos,
                format!(
                    "`{path}` {} uses a prefect.yaml template, which bootstrap does not render",
                    show(s)
                ),
                Some("write the value itself, or declare this deployment in the plan".into()),
            );
            None
        }
        _ => r.string(n, &path, Secret::No).map(|s| (s, n.pos)),
    }
}

fn deployment(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    (shared_pull, shared_build): (Option<&Node>, Option<&Node>),
    plan_dir: &Path,
) -> Option<Deployment> {
    let f = lenient(r, node, path)?;
    let build_step = f
        .get("build")
        .map(|n| (n, f.child("build")))
        .or_else(|| shared_build.map(|n| (n, "build".to_owned())))
        .and_then(|(n, p)| docker_build_step(n, &p))
        // A deployment that names its own image does not run what the build step makes:
        // Prefect hands the build's output to a deployment only through a template such as
        // `{{ build_image.image }}`, so building it here would make an image nobody runs.
        .filter(|_| !names_literal_image(f.get("work_pool")));
    let name = literal(r, &f, "name", "my-deployment").and_then(|(v, pos)| {
        r.checked(&v, pos, &f.child("name"), Field::PrefectName)
            .then(|| PrefectName::parse(v).ok())
            .flatten()
    });
    let entrypoint =
        literal(r, &f, "entrypoint", "flows/my_flow.py:my_flow").and_then(|(v, pos)| {
            r.checked(&v, pos, &f.child("entrypoint"), Field::Entrypoint)
                .then_some(v)
        });
    let flow = entrypoint.as_deref().and_then(|e| flow_name(plan_dir, e));
    let parameters = map_of(r, &f, "parameters");
    let (work_queue, image, job_variables) = match f.get("work_pool") {
        None => (
            Some(PrefectName::parse("default").ok()),
            Some(None),
            Some(serde_json::Map::new()),
        ),
        Some(pool) => work_pool(r, pool, &f.child("work_pool"), build_step.is_some()),
    };
    let build = match &build_step {
        None => Some(None),
        Some(step) => {
            let name = name.as_ref().map(|n| n.as_str());
            build_of_step(r, step, name).map(Some)
        }
    };
    let tags = match f.get("tags").map(|n| (n, &n.value)) {
        None => Some(Vec::new()),
        Some((_, Value::Seq(items))) => {
            let mut tags = Vec::new();
            for (i, t) in items.iter().enumerate() {
                tags.extend(r.string(t, &format!("{path}.tags[{i}]"), Secret::No));
            }
            (tags.len() == items.len()).then_some(tags)
        }
        Some((n, v)) => {
            r.error(
                n.pos,
                format!("`{path}.tags` must be a list, found {}", v.kind()),
                Some("write a list, e.g. `[a, b]`".into()),
            );
            None
        }
    };
    let description = match f.get("description") {
        None => Some(None),
        Some(n) => r.string(n, &f.child("description"), Secret::No).map(Some),
    };
    let schedules = list_of(r, f.get("schedules"), &f.child("schedules"));
    let pull_steps = list_of(r, f.get("pull").or(shared_pull), &f.child("pull"));
    let build = build?;
    let pull_steps =
        pull_steps.map(|steps| crate::sections::with_build_pull_step(steps, build.as_ref()));
    Some(Deployment {
        build,
        name: name?,
        flow: flow?,
        entrypoint: entrypoint?,
        image: image?,
        parameters: parameters?,
        work_queue: work_queue?.or_else(|| PrefectName::parse("default").ok())?,
        tags: tags?,
        description: description?,
        job_variables: job_variables?,
        pull_steps: pull_steps?,
        schedules: schedules?,
    })
}

/// Whether `work_pool.job_variables.image` is a literal reference (not a step output).
fn names_literal_image(work_pool: Option<&Node>) -> bool {
    let child = |n: &Node, key: &str| match &n.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    work_pool
        .and_then(|w| child(w, "job_variables"))
        .and_then(|j| child(&j, "image"))
        .is_some_and(|i| matches!(&i.value, Value::Str(s) if !is_template(s)))
}

type PoolParts = (
    Option<Option<PrefectName>>,
    Option<Option<ImageRef>>,
    Option<serde_json::Map<String, Json>>,
);

/// The step Prefect's own deploy looks for (`prefect/cli/deploy/_actions.py`
/// `_check_for_build_docker_image_step`).
const BUILD_DOCKER_IMAGE: &str = "prefect_docker.deployments.steps.build_docker_image";

/// A `build_docker_image` step of a `build:` list, with where it is.
struct DockerStep<'n> {
    node: &'n Node,
    path: String,
}

fn docker_build_step<'n>(list: &'n Node, path: &str) -> Option<DockerStep<'n>> {
    let Value::Seq(items) = &list.value else {
        return None;
    };
    items
        .iter()
        .enumerate()
        .find_map(|(i, item)| match &item.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == BUILD_DOCKER_IMAGE)
                .map(|(_, v)| DockerStep {
                    node: v,
                    path: format!("{path}[{i}].{BUILD_DOCKER_IMAGE}"),
                }),
            _ => None,
        })
}

/// The deployment's `build:` from a `build_docker_image` step.
fn build_of_step(
    r: &mut Reader<'_>,
    step: &DockerStep<'_>,
    deployment: Option<&str>,
) -> Option<crate::build::Build> {
    let f = lenient(r, step.node, &step.path)?;
    // A value Prefect templates (`{{ dockerfile }}`) cannot be known here; its default is used.
    let mut value = |key: &str| -> Option<Option<(String, Pos)>> {
        match f.get(key) {
            None => Some(None),
            Some(n) => match &n.value {
                Value::Str(s) if is_template(s) => Some(None),
                _ => Some(Some((r.string(n, &f.child(key), Secret::No)?, n.pos))),
            },
        }
    };
    let image_name = value("image_name")?;
    // prefect-docker's `build_docker_image(dockerfile="Dockerfile")`.
    let dockerfile = value("dockerfile")?.or(Some(("Dockerfile".to_owned(), f.pos)));
    let platform = value("platform")?;
    let gcp = crate::sections::gcp_vars(r);
    let repository = image_name
        .as_ref()
        .and_then(|(n, pos)| artifact_repository(n).map(|repo| (repo, *pos)));
    let dir = r.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut build = crate::build::resolve(
        r,
        crate::build::Parts {
            path: &step.path,
            pos: f.pos,
            context: (".".to_owned(), f.pos),
            dockerfile,
            repository,
            platform,
        },
        &dir,
        deployment,
        gcp.as_ref().map(|(p, g)| (p, g)),
    )?;
    if let Some((name, _)) = &image_name
        && is_container_registry(name)
    {
        build.notes.push(format!(
            "{}: `image_name` {name} is in Container Registry (gcr.io), which is shut down (writes stopped in 2025); bootstrap builds {} in Artifact Registry instead",
            r.file.display(),
            build.image_name
        ));
    }
    Some(build)
}

/// `gcr.io/...`, `us.gcr.io/...`, `eu.gcr.io/...`: Container Registry hosts.
pub fn is_container_registry(image: &str) -> bool {
    let host = image.split('/').next().unwrap_or_default();
    host == "gcr.io" || host.ends_with(".gcr.io")
}

/// The repository of an Artifact Registry docker path `<loc>-docker.pkg.dev/<p>/<repo>/<img>`.
fn artifact_repository(image: &str) -> Option<String> {
    let mut parts = image.split('/');
    let host = parts.next()?;
    let _project = parts.next()?;
    let repo = parts.next()?;
    parts.next()?;
    (host.ends_with("-docker.pkg.dev") && crate::build::check_repository(repo).is_ok())
        .then(|| repo.to_owned())
}

fn work_pool(r: &mut Reader<'_>, node: &Node, path: &str, built: bool) -> PoolParts {
    let Some(f) = lenient(r, node, path) else {
        return (None, None, None);
    };
    let queue = match f.get("work_queue_name") {
        None => Some(None),
        Some(n) => r
            .string(n, &f.child("work_queue_name"), Secret::No)
            .and_then(|v| {
                r.checked(&v, n.pos, &f.child("work_queue_name"), Field::PrefectName)
                    .then(|| PrefectName::parse(v).ok())
            }),
    };
    let mut vars = map_of(r, &f, "job_variables");
    let image = match vars.as_mut().and_then(|m| m.remove("image")) {
        None => Some(None),
        // The build step makes the image (`{{ build_image.image }}` in Prefect's recipe).
        Some(_) if built => Some(None),
        Some(Json::String(s)) if is_template(&s) => {
            r.error(f.pos, format!("`{path}.job_variables.image` {} is a prefect.yaml step output, which bootstrap does not run", show(&s)), Some("build and push the image first and write its reference here".into()));
            None
        }
        Some(Json::String(s)) => match ImageRef::parse(s.as_str()) {
            Ok(i) => Some(Some(i)),
            Err(why) => {
                r.error(
                    f.get("job_variables").map_or(f.pos, |n| n.pos),
                    format!("invalid `{path}.job_variables.image` {}", show(&s)),
                    Some(why),
                );
                None
            }
        },
        Some(other) => {
            r.error(
                f.pos,
                format!("`{path}.job_variables.image` must be a string, found {other}"),
                Some("e.g. `image: prefecthq/prefect:3-latest`".into()),
            );
            None
        }
    };
    (queue, image, vars)
}

fn map_of(r: &mut Reader<'_>, f: &Fields<'_>, key: &str) -> Option<serde_json::Map<String, Json>> {
    r.opt_json_map(f, key)
}

fn list_of(r: &mut Reader<'_>, node: Option<&Node>, path: &str) -> Option<Vec<Json>> {
    match node {
        None => Some(Vec::new()),
        Some(Node {
            value: Value::Seq(items),
            ..
        }) => Some(items.iter().map(Node::to_json).collect()),
        Some(n) => {
            r.error(
                n.pos,
                format!("`{path}` must be a list, found {}", n.value.kind()),
                Some("write a list of mappings".into()),
            );
            None
        }
    }
}

/// The flow's name: `@flow(name="...")` above the function when the source says so, else
/// Prefect's default, the function name with `_` as `-`.
pub fn flow_name(project_dir: &Path, entrypoint: &str) -> Option<PrefectName> {
    let (file, func) = entrypoint.rsplit_once(':')?;
    let func = func.rsplit('.').next().unwrap_or(func);
    let declared = std::fs::read_to_string(project_dir.join(file))
        .ok()
        .and_then(|src| declared_flow_name(&src, func));
    PrefectName::parse(declared.unwrap_or_else(|| func.replace('_', "-"))).ok()
}

/// The `name=` of the `@flow(...)` decorator directly above `def func(`.
pub fn declared_flow_name(source: &str, func: &str) -> Option<String> {
    let lines: Vec<&str> = source.lines().collect();
    let def_at = lines.iter().position(|l| {
        let t = l.trim_start();
        t.strip_prefix("def ")
            .or_else(|| t.strip_prefix("async def "))
            .is_some_and(|rest| {
                rest.strip_prefix(func)
                    .is_some_and(|after| after.trim_start().starts_with('('))
            })
    })?;
    // Walk up over the decorator block (decorators may span several lines).
    let mut decorator = String::new();
    for line in lines[..def_at].iter().rev().take(12) {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            break;
        }
        decorator.insert_str(0, t);
        if t.starts_with('@') {
            if t.starts_with("@flow") {
                break;
            }
            decorator.clear();
        }
    }
    if !decorator.starts_with("@flow") {
        return None;
    }
    let rest = &decorator[decorator.find("name")? + 4..];
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let body = &rest[1..];
    body.find(quote).map(|end| body[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_registry_hosts() {
        assert!(is_container_registry("gcr.io/p/img"));
        assert!(is_container_registry("eu.gcr.io/p/img"));
        assert!(!is_container_registry("us-central1-docker.pkg.dev/p/r/img"));
        assert!(!is_container_registry("notgcr.io/p/img"));
        assert_eq!(
            artifact_repository("us-central1-docker.pkg.dev/p/flows/img").as_deref(),
            Some("flows")
        );
        assert_eq!(artifact_repository("gcr.io/p/img"), None);
    }

    #[test]
    fn decorator_names() {
        let src = "from prefect import flow\n\n@flow(log_prints=True,\n      name=\"fetch-weather\")\ndef fetch_weather(lat: float):\n    pass\n";
        assert_eq!(
            declared_flow_name(src, "fetch_weather").as_deref(),
            Some("fetch-weather")
        );
        let src = "@flow\ndef my_flow():\n    pass\n";
        assert_eq!(declared_flow_name(src, "my_flow"), None);
        let src = "@flow(name='x')\ndef a():\n    pass\n\ndef b():\n    pass\n";
        assert_eq!(declared_flow_name(src, "b"), None);
        assert_eq!(declared_flow_name(src, "a").as_deref(), Some("x"));
    }
}
