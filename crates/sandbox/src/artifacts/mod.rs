//! Artifact Registry v1 (`artifactregistry.googleapis.com`, artifactregistry.v1.json):
//! docker repositories (create and delete as long-running operations, get, list, IAM) and
//! their docker images (list, get). Images only get here by a sandbox build
//! ([`crate::builds`]); a job or service naming an image of a repository that exists here
//! runs that build ([`crate::executor::BuiltImages`]), and one never built is Google's
//! "Image ... not found".

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::google::Ctx;
use crate::methods::MethodCall;
use crate::operations::{self, Outcome};
use crate::policy::{self, Policy};
use crate::state::AppState;

const REPOSITORY_TYPE: &str = "type.googleapis.com/google.devtools.artifactregistry.v1.Repository";
const METADATA_TYPE: &str =
    "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata";
const EMPTY_TYPE: &str = "type.googleapis.com/google.protobuf.Empty";
/// Docker v2 schema 2 manifests, what Cloud Build's docker pushes.
const MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Multi-regions Artifact Registry has besides Cloud Run's regions.
const MULTI_REGIONS: &[&str] = &["us", "europe", "asia"];

/// One repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repository {
    /// `projects/{p}/locations/{l}/repositories/{r}` (project id form).
    pub name: String,
    /// What the client sent (format, mode, description, labels, dockerConfig, ...).
    pub body: Value,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// When it last changed.
    pub update_time: DateTime<Utc>,
    /// Its own IAM policy.
    #[serde(default)]
    pub policy: Policy,
}

/// One pushed docker image (a manifest digest in a repository).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerImage {
    /// The repository's full name.
    pub repository: String,
    /// The image path inside the repository (`flows` or `a/b`).
    pub image: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Tags currently on this digest.
    pub tags: Vec<String>,
    /// Bytes of the context the build copied (stands in for the image size).
    pub size_bytes: u64,
    /// When the build that made it started.
    pub build_time: DateTime<Utc>,
    /// When it was pushed.
    pub upload_time: DateTime<Utc>,
    /// When its tags last changed.
    pub update_time: DateTime<Utc>,
    /// What running it means.
    pub built: crate::executor::BuiltImage,
}

/// Artifact Registry's slice of the sandbox state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    /// Repositories by full name.
    pub repositories: BTreeMap<String, Repository>,
    /// Images by `{repository}/dockerImages/{image}@{digest}`.
    pub images: BTreeMap<String, DockerImage>,
}

/// The parts of an Artifact Registry docker image URI
/// (`{location}-docker.pkg.dev/{project}/{repository}/{image}[:tag|@sha256:...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUri {
    /// The location (region or multi-region).
    pub location: String,
    /// The project id.
    pub project: String,
    /// The repository id.
    pub repository: String,
    /// The image path inside the repository.
    pub image: String,
    /// The tag (`latest` when neither a tag nor a digest is given).
    pub tag: Option<String>,
    /// The digest, `sha256:...`.
    pub digest: Option<String>,
}

impl ImageUri {
    /// Parses an Artifact Registry docker URI; `Err` says what is wrong with it.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let (host, rest) = uri
            .split_once('/')
            .ok_or_else(|| format!("{uri} is not an image URI"))?;
        let location = host.strip_suffix("-docker.pkg.dev").ok_or_else(|| {
            format!(
                "{uri} is not an Artifact Registry URI ({{location}}-docker.pkg.dev/{{project}}/{{repository}}/{{image}})"
            )
        })?;
        let mut parts = rest.splitn(3, '/');
        let (project, repository, image) = match (parts.next(), parts.next(), parts.next()) {
            (Some(p), Some(r), Some(i)) if !p.is_empty() && !r.is_empty() && !i.is_empty() => {
                (p, r, i)
            }
            _ => {
                return Err(format!(
                    "{uri} lacks a project, repository or image ({{location}}-docker.pkg.dev/{{project}}/{{repository}}/{{image}})"
                ));
            }
        };
        let (image, digest) = match image.split_once('@') {
            Some((i, d)) => (i, Some(d.to_owned())),
            None => (image, None),
        };
        let (image, tag) = match image.rsplit_once(':') {
            Some((i, t)) if !t.contains('/') => (i, Some(t.to_owned())),
            _ => (image, None),
        };
        if let Some(d) = &digest
            && !is_digest(d)
        {
            return Err(format!("{uri}: {d} is not a sha256 digest"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(ImageUri {
            location: location.to_owned(),
            project: project.to_owned(),
            repository: repository.to_owned(),
            image: image.to_owned(),
            tag,
            digest,
        })
    }

    /// `{location}-docker.pkg.dev/{project}/{repository}`.
    pub fn registry(&self) -> String {
        format!(
            "{}-docker.pkg.dev/{}/{}",
            self.location, self.project, self.repository
        )
    }

    /// The repository's resource name.
    pub fn repository_name(&self) -> String {
        format!(
            "projects/{}/locations/{}/repositories/{}",
            self.project, self.location, self.repository
        )
    }
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `{l}-docker.pkg.dev/{p}/{r}` of a repository name.
fn registry_of(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["projects", p, "locations", l, "repositories", r] => {
            Some(format!("{l}-docker.pkg.dev/{p}/{r}"))
        }
        _ => None,
    }
}

/// Tells the executor's image registry that the repository `name` now exists or no longer does.
fn registry_exists(ctx: &Ctx, name: &str, exists: bool) {
    if let Some(registry) = registry_of(name) {
        ctx.state
            .run
            .executor()
            .config()
            .images
            .built()
            .set_repository(&registry, exists);
    }
}

/// Tells the executor's image registry what the store holds (at start, after a restore).
pub fn sync_built(state: &AppState) {
    let built = state.run.executor().config().images.built().clone();
    let data = state.read();
    for name in data.artifacts.repositories.keys() {
        if let Some(registry) = registry_of(name) {
            built.set_repository(&registry, true);
        }
    }
    for image in data.artifacts.images.values() {
        if let Some(registry) = registry_of(&image.repository) {
            let base = format!("{registry}/{}", image.image);
            let tags: Vec<String> = image.tags.iter().map(|t| format!("{base}:{t}")).collect();
            built.push(
                &format!("{base}@{}", image.digest),
                &tags,
                image.built.clone(),
            );
        }
    }
}

/// Records an image a build pushed: moves its tags from other digests of the same image, and
/// makes it runnable. Fails (for the build's push step) when the repository is gone.
pub fn push_image(
    state: &AppState,
    uri: &ImageUri,
    digest: &str,
    size_bytes: u64,
    build_time: DateTime<Utc>,
    built: crate::executor::BuiltImage,
) -> Result<String, String> {
    let repo_name = project_repo_name(state, uri);
    let now = Utc::now();
    let key = format!(
        "{repo_name}/dockerImages/{}@{digest}",
        encode_image(&uri.image)
    );
    {
        let mut data = state.write();
        if !data.artifacts.repositories.contains_key(&repo_name) {
            return Err(format!(
                "name unknown: Repository \"{}\" not found",
                uri.repository
            ));
        }
        let tag = uri.tag.clone();
        if let Some(tag) = &tag {
            for other in data.artifacts.images.values_mut() {
                if other.repository == repo_name && other.image == uri.image {
                    other.tags.retain(|t| t != tag);
                }
            }
        }
        let entry = data
            .artifacts
            .images
            .entry(key.clone())
            .or_insert_with(|| DockerImage {
                repository: repo_name.clone(),
                image: uri.image.clone(),
                digest: digest.to_owned(),
                tags: Vec::new(),
                size_bytes,
                build_time,
                upload_time: now,
                update_time: now,
                built: built.clone(),
            });
        entry.built = built.clone();
        entry.update_time = now;
        if let Some(tag) = tag
            && !entry.tags.contains(&tag)
        {
            entry.tags.push(tag);
        }
    }
    let registry = uri.registry();
    let base = format!("{registry}/{}", uri.image);
    let tags: Vec<String> = uri.tag.iter().map(|t| format!("{base}:{t}")).collect();
    let images = state.run.executor().config().images.built().clone();
    images.push(&format!("{base}@{digest}"), &tags, built);
    Ok(format!("{base}@{digest}"))
}

/// The repository name of a URI, with the project's id even if the URI names its number.
fn project_repo_name(state: &AppState, uri: &ImageUri) -> String {
    let project = state
        .read()
        .project(&uri.project)
        .map(|p| p.id.clone())
        .unwrap_or_else(|| uri.project.clone());
    format!(
        "projects/{project}/locations/{}/repositories/{}",
        uri.location, uri.repository
    )
}

/// The policies that grant on a repository: the project's and, when it exists, its own.
fn policies_of(state: &AppState, repo_name: &str) -> (Vec<Policy>, bool) {
    let data = state.read();
    let project = repo_name.split('/').nth(1).unwrap_or_default();
    let mut policies: Vec<Policy> = data
        .project(project)
        .map(|p| p.policy.clone())
        .into_iter()
        .collect();
    let repo = data
        .artifacts
        .repositories
        .get(repo_name)
        .map(|r| r.policy.clone());
    let exists = repo.is_some();
    policies.extend(repo);
    (policies, exists)
}

/// Whether `caller` holds `permission` on the repository (project policy and the
/// repository's own).
pub fn holds_on_repo(
    state: &AppState,
    caller: &crate::auth::Caller,
    repo_name: &str,
    permission: &str,
) -> bool {
    let (policies, _) = policies_of(state, repo_name);
    let refs: Vec<&Policy> = policies.iter().collect();
    authz::holds(state, caller, permission, &refs)
}

/// `/` in an image path is `%2F` in a dockerImages resource id.
fn encode_image(image: &str) -> String {
    image.replace('/', "%2F")
}

fn valid_location(location: &str) -> bool {
    crate::hosts::REGIONS.contains(&location) || MULTI_REGIONS.contains(&location)
}

/// Repository ids: lower-case letters, digits and hyphens, starting with a letter, ending
/// with a letter or digit, at most 63 characters (Google's `repository_id` rule).
fn validate_repository_id(id: &str) -> ApiResult<()> {
    let ok = crate::methods::is_kebab_id(id, 63);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "Invalid repository id \"{id}\": must start with a lowercase letter, contain only lowercase letters, numbers and hyphens, end with a letter or number, and be at most 63 characters."
        )))
    }
}

impl Repository {
    fn to_json(&self) -> Value {
        let mut v = match &self.body {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({}),
        };
        v["name"] = json!(self.name);
        if v.get("format").is_none() {
            v["format"] = json!("DOCKER");
        }
        if v.get("mode").is_none_or(|m| m == "MODE_UNSPECIFIED") {
            v["mode"] = json!("STANDARD_REPOSITORY");
        }
        v["createTime"] = json!(rfc3339(self.create_time));
        v["updateTime"] = json!(rfc3339(self.update_time));
        if let Some(registry) = registry_of(&self.name) {
            v["registryUri"] = json!(registry);
        }
        v
    }
}

impl DockerImage {
    fn name(&self) -> String {
        format!(
            "{}/dockerImages/{}@{}",
            self.repository,
            encode_image(&self.image),
            self.digest
        )
    }

    fn to_json(&self) -> Value {
        let registry = registry_of(&self.repository).unwrap_or_default();
        json!({
            "name": self.name(),
            "uri": format!("{registry}/{}@{}", self.image, self.digest),
            "tags": self.tags,
            "imageSizeBytes": self.size_bytes.to_string(),
            "mediaType": MEDIA_TYPE,
            "buildTime": rfc3339(self.build_time),
            "uploadTime": rfc3339(self.upload_time),
            "updateTime": rfc3339(self.update_time),
        })
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The project id for a path's project (id or number), or the path's value.
fn project_id(ctx: &Ctx, p: &str) -> String {
    ctx.state
        .read()
        .project(p)
        .map(|p| p.id.clone())
        .unwrap_or_else(|| p.to_owned())
}

/// Checks a permission on a repository, then that it exists (a caller without the permission
/// learns nothing about it).
fn require_on_repo(ctx: &Ctx, repo_name: &str, permission: &str) -> ApiResult<()> {
    let (policies, exists) = policies_of(&ctx.state, repo_name);
    let refs: Vec<&Policy> = policies.iter().collect();
    authz::check(&ctx.state, &ctx.caller, permission, repo_name, &refs)?;
    if !exists {
        return Err(repo_not_found(repo_name));
    }
    Ok(())
}

fn repo_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("Requested entity was not found. ({name})"))
}

/// Serves an `artifactregistry.*` method.
pub fn handle(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let method = call
        .id
        .strip_prefix("artifactregistry.projects.locations.")
        .unwrap_or_default();
    let p = |i: usize| call.params.get(i).cloned().unwrap_or_default();
    let project = project_id(ctx, &p(0));
    let location = p(1);
    let parent = format!("projects/{project}/locations/{location}");
    if method == "get" {
        authz::require(
            &ctx.state,
            &ctx.caller,
            &project,
            "artifactregistry.locations.get",
        )?;
        if !valid_location(&location) {
            return Err(ApiError::not_found(format!("Location {parent} not found.")));
        }
        return Ok(json!({"name": parent, "locationId": location}));
    }
    if method == "list" {
        authz::require(
            &ctx.state,
            &ctx.caller,
            &project,
            "artifactregistry.locations.list",
        )?;
        let all: Vec<Value> = crate::hosts::REGIONS
            .iter()
            .chain(MULTI_REGIONS)
            .map(|l| json!({"name": format!("projects/{project}/locations/{l}"), "locationId": l}))
            .collect();
        let (page, next) = crate::google::paginate(&all, ctx, 1000)?;
        let mut out = json!({"locations": page});
        if let Some(n) = next {
            out["nextPageToken"] = json!(n);
        }
        return Ok(out);
    }
    if method == "operations.get" {
        return operations::get(&ctx.state, &format!("{parent}/operations/{}", p(2)));
    }
    if method == "repositories.create" {
        return create(ctx, &project, &location);
    }
    if method == "repositories.list" {
        return list(ctx, &project, &parent);
    }
    let repo_name = format!("{parent}/repositories/{}", p(2));
    match method {
        "repositories.get" => {
            require_on_repo(ctx, &repo_name, "artifactregistry.repositories.get")?;
            let data = ctx.state.read();
            Ok(data.artifacts.repositories[&repo_name].to_json())
        }
        "repositories.delete" => delete(ctx, &parent, &repo_name),
        "repositories.getIamPolicy" => {
            require_on_repo(
                ctx,
                &repo_name,
                "artifactregistry.repositories.getIamPolicy",
            )?;
            Ok(ctx.state.read().artifacts.repositories[&repo_name]
                .policy
                .to_json())
        }
        "repositories.setIamPolicy" => {
            require_on_repo(
                ctx,
                &repo_name,
                "artifactregistry.repositories.setIamPolicy",
            )?;
            let (incoming, audit) = policy::parse_set_request(&ctx.body)?;
            let consistency = ctx.state.settings().consistency;
            let mut data = ctx.state.write();
            crate::iam::set_policy_in(&mut data, &consistency, incoming, audit, |d| {
                d.artifacts
                    .repositories
                    .get_mut(&repo_name)
                    .map(|r| &mut r.policy)
            })
        }
        "repositories.testIamPermissions" => {
            let asked = crate::google::requested_permissions(&ctx.body);
            let granted: Vec<String> = asked
                .into_iter()
                .filter(|perm| {
                    perm.starts_with("artifactregistry.")
                        && holds_on_repo(&ctx.state, &ctx.caller, &repo_name, perm)
                })
                .collect();
            Ok(if granted.is_empty() {
                json!({})
            } else {
                json!({ "permissions": granted })
            })
        }
        "repositories.dockerImages.list" => {
            require_on_repo(ctx, &repo_name, "artifactregistry.dockerimages.list")?;
            let mut images: Vec<DockerImage> = ctx
                .state
                .read()
                .artifacts
                .images
                .values()
                .filter(|i| i.repository == repo_name)
                .cloned()
                .collect();
            // orderBy: gcloud sends e.g. `update_time desc`; the default is by name.
            if let Some(order) = ctx.param("orderBy") {
                let desc = order.trim().ends_with(" desc");
                if order.contains("time") {
                    images.sort_by_key(|i| i.update_time);
                }
                if desc {
                    images.reverse();
                }
            }
            let (page, next) = crate::google::paginate(&images, ctx, 100)?;
            let mut out = json!({});
            if !page.is_empty() {
                out["dockerImages"] = Value::Array(page.iter().map(DockerImage::to_json).collect());
            }
            if let Some(n) = next {
                out["nextPageToken"] = json!(n);
            }
            Ok(out)
        }
        "repositories.dockerImages.get" => {
            require_on_repo(ctx, &repo_name, "artifactregistry.dockerimages.get")?;
            let id = p(3);
            let data = ctx.state.read();
            // `image@sha256:...` or `image:tag`.
            let found = data.artifacts.images.values().find(|i| {
                i.repository == repo_name
                    && (format!("{}@{}", i.image, i.digest) == id
                        || i.tags.iter().any(|t| format!("{}:{t}", i.image) == id))
            });
            found.map(DockerImage::to_json).ok_or_else(|| {
                ApiError::not_found(format!(
                    "Requested entity was not found. ({repo_name}/dockerImages/{id})"
                ))
            })
        }
        other => Err(ApiError::not_found(format!(
            "Method artifactregistry.projects.locations.{other} is not served by this sandbox."
        ))),
    }
}

fn create(ctx: &Ctx, project: &str, location: &str) -> ApiResult<Value> {
    let parent = format!("projects/{project}/locations/{location}");
    authz::require(
        &ctx.state,
        &ctx.caller,
        project,
        "artifactregistry.repositories.create",
    )?;
    let id = ctx.param("repositoryId").unwrap_or_default().to_owned();
    if id.is_empty() {
        return Err(ApiError::invalid_argument(
            "Request contains an invalid argument: repository_id is required.",
        ));
    }
    validate_repository_id(&id)?;
    if !valid_location(location) {
        return Err(ApiError::invalid_argument(format!(
            "Invalid location \"{location}\"."
        )));
    }
    let body = match &ctx.body {
        Value::Object(_) => ctx.body.clone(),
        Value::Null => json!({}),
        _ => return Err(ApiError::invalid_argument("Repository must be an object.")),
    };
    match body.get("format").and_then(Value::as_str) {
        None | Some("DOCKER") => {}
        Some("FORMAT_UNSPECIFIED") => {
            return Err(ApiError::invalid_argument(
                "Request contains an invalid argument: format is required.",
            ));
        }
        Some(other) => {
            return Err(ApiError::invalid_argument(format!(
                "The sandbox serves docker repositories only, not format {other}."
            )));
        }
    }
    let name = format!("{parent}/repositories/{id}");
    let now = Utc::now();
    let repo = Repository {
        name: name.clone(),
        body: {
            let mut b = body;
            b["format"] = json!("DOCKER");
            for out_only in [
                "name",
                "createTime",
                "updateTime",
                "registryUri",
                "sizeBytes",
            ] {
                if let Some(m) = b.as_object_mut() {
                    m.remove(out_only);
                }
            }
            b
        },
        create_time: now,
        update_time: now,
        policy: Policy::default(),
    };
    let view = {
        let mut data = ctx.state.write();
        if data.artifacts.repositories.contains_key(&name) {
            return Err(ApiError::already_exists(format!(
                "the repository already exists ({name})"
            )));
        }
        let view = repo.to_json();
        data.artifacts.repositories.insert(name.clone(), repo);
        view
    };
    registry_exists(ctx, &name, true);
    let mut response = view;
    response["@type"] = json!(REPOSITORY_TYPE);
    Ok(operations::create(
        &ctx.state,
        &format!("{parent}/operations/{}", uuid::Uuid::new_v4()),
        Some(json!({"@type": METADATA_TYPE})),
        Some(Outcome::Response(response)),
    ))
}

fn list(ctx: &Ctx, project: &str, parent: &str) -> ApiResult<Value> {
    authz::require(
        &ctx.state,
        &ctx.caller,
        project,
        "artifactregistry.repositories.list",
    )?;
    let prefix = format!("{parent}/repositories/");
    let repos: Vec<Value> = ctx
        .state
        .read()
        .artifacts
        .repositories
        .values()
        .filter(|r| r.name.starts_with(&prefix))
        .map(Repository::to_json)
        .collect();
    let (page, next) = crate::google::paginate(&repos, ctx, 1000)?;
    let mut out = json!({});
    if !page.is_empty() {
        out["repositories"] = Value::Array(page);
    }
    if let Some(n) = next {
        out["nextPageToken"] = json!(n);
    }
    Ok(out)
}

fn delete(ctx: &Ctx, parent: &str, repo_name: &str) -> ApiResult<Value> {
    require_on_repo(ctx, repo_name, "artifactregistry.repositories.delete")?;
    {
        let mut data = ctx.state.write();
        data.artifacts.repositories.remove(repo_name);
        data.artifacts
            .images
            .retain(|_, i| i.repository != repo_name);
    }
    registry_exists(ctx, repo_name, false);
    Ok(operations::create(
        &ctx.state,
        &format!("{parent}/operations/{}", uuid::Uuid::new_v4()),
        Some(json!({"@type": METADATA_TYPE})),
        Some(Outcome::Response(json!({"@type": EMPTY_TYPE}))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_uris() {
        let u = ImageUri::parse("us-central1-docker.pkg.dev/p/prefect/flows").expect("parses");
        assert_eq!(u.tag.as_deref(), Some("latest"));
        assert_eq!(u.registry(), "us-central1-docker.pkg.dev/p/prefect");
        let u = ImageUri::parse("europe-west1-docker.pkg.dev/p/r/a/b:v1").expect("parses");
        assert_eq!((u.image.as_str(), u.tag.as_deref()), ("a/b", Some("v1")));
        let d = format!("sha256:{}", "a".repeat(64));
        let u = ImageUri::parse(&format!("us-docker.pkg.dev/p/r/i@{d}")).expect("parses");
        assert_eq!((u.tag, u.digest), (None, Some(d)));
        assert!(ImageUri::parse("gcr.io/p/i:1").is_err());
        assert!(ImageUri::parse("us-docker.pkg.dev/p/r").is_err());
        assert!(ImageUri::parse("us-docker.pkg.dev/p/r/i@sha256:zz").is_err());
    }

    #[test]
    fn repository_ids() {
        assert!(validate_repository_id("prefect").is_ok());
        assert!(validate_repository_id("my-repo-1").is_ok());
        assert!(validate_repository_id("1repo").is_err());
        assert!(validate_repository_id("Repo").is_err());
        assert!(validate_repository_id("repo-").is_err());
    }
}
