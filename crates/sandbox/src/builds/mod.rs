//! Remote builds the way `gcloud run deploy --source` makes them: Cloud Run v2's
//! `:uploadSource` (run.projects.locations.sourceUploads.upload, a media upload whose answer
//! names a Cloud Storage object) and `builds:submit` (run.projects.locations.builds.submit,
//! answering a Cloud Build operation), then Cloud Build v1's operations and builds `get`.
//!
//! Uploaded archives are kept under `<dir>/sources/<bucket>/<object>`. A build is followed by
//! [`builder`]: the Dockerfile's FROM / WORKDIR / COPY / ADD / ENV / ARG / RUN pip install /
//! CMD / ENTRYPOINT; any other RUN fails the build naming its line. Its log lines are kept in
//! the build record (`/_sandbox/builds/{id}` shows them).

pub mod builder;
pub mod dockerfile;

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::google::Ctx;
use crate::methods::MethodCall;
use crate::operations;
use crate::state::AppState;

const BUILD_TYPE: &str = "type.googleapis.com/google.devtools.cloudbuild.v1.Build";
const BUILD_METADATA_TYPE: &str =
    "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata";
/// The discovery document's `maxSize` of uploadSource.
const MAX_UPLOAD: usize = 262_144_000;

/// An uploaded source archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upload {
    /// The bucket the answer named.
    pub bucket: String,
    /// The object the answer named.
    pub object: String,
    /// Its generation (decimal).
    pub generation: String,
    /// Where the bytes are.
    pub path: PathBuf,
}

/// One build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRec {
    /// The build id (a UUID).
    pub id: String,
    /// Project id.
    pub project: String,
    /// Project number.
    pub project_number: String,
    /// Region.
    pub location: String,
    /// QUEUED, WORKING, SUCCESS, FAILURE, INTERNAL_ERROR.
    pub status: String,
    /// The source object.
    pub source: Value,
    /// The image to push.
    pub image_uri: String,
    /// The account the build runs as.
    pub service_account: String,
    /// Build tags.
    pub tags: Vec<String>,
    /// `docker` or `buildpacks`.
    pub kind: String,
    /// When submitted / started / finished.
    pub create_time: DateTime<Utc>,
    /// When it started working.
    pub start_time: Option<DateTime<Utc>>,
    /// When it ended.
    pub finish_time: Option<DateTime<Utc>>,
    /// The pushed digest, on success.
    pub digest: Option<String>,
    /// `(FailureInfo.type, detail)` on failure.
    pub failure: Option<(String, String)>,
    /// The build's log lines (what Cloud Build writes to Cloud Logging).
    pub log: Vec<String>,
    /// The operation tracking it.
    pub operation: String,
}

/// The builds slice of the sandbox state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    /// Uploads by `bucket/object`.
    pub uploads: BTreeMap<String, Upload>,
    /// Builds by id.
    pub builds: BTreeMap<String, BuildRec>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl BuildRec {
    /// The cloudbuild v1 `Build`.
    pub fn to_json(&self) -> Value {
        let mut b = json!({
            "id": self.id,
            "name": format!("projects/{}/locations/{}/builds/{}", self.project_number, self.location, self.id),
            "projectId": self.project,
            "status": self.status,
            "source": {"storageSource": self.source},
            "steps": [{
                "name": if self.kind == "docker" { "gcr.io/cloud-builders/docker" } else { "gcr.io/k8s-skaffold/pack" },
                "args": if self.kind == "docker" { json!(["build", "--network", "cloudbuild", "--no-cache", "-t", self.image_uri, "."]) } else { json!(["build", self.image_uri]) },
                "status": self.status,
            }],
            "images": [self.image_uri],
            "createTime": rfc3339(self.create_time),
            "timeout": "600s",
            "logUrl": format!(
                "https://console.cloud.google.com/cloud-build/builds;region={}/{}?project={}",
                self.location, self.id, self.project_number
            ),
            "serviceAccount": format!("projects/{}/serviceAccounts/{}", self.project, self.service_account),
            "options": {"logging": "CLOUD_LOGGING_ONLY"},
        });
        if !self.tags.is_empty() {
            b["tags"] = json!(self.tags);
        }
        if let Some(t) = self.start_time {
            b["startTime"] = json!(rfc3339(t));
        }
        if let Some(t) = self.finish_time {
            b["finishTime"] = json!(rfc3339(t));
        }
        if let Some(d) = &self.digest {
            b["results"] = json!({"images": [{"name": self.image_uri, "digest": d}]});
        }
        if let Some((kind, detail)) = &self.failure {
            b["failureInfo"] = json!({"type": kind, "detail": detail});
            b["statusDetail"] = json!(detail);
        }
        b
    }

    fn metadata(&self) -> Value {
        json!({"@type": BUILD_METADATA_TYPE, "build": self.to_json()})
    }

    fn terminal(&self) -> bool {
        !matches!(self.status.as_str(), "QUEUED" | "WORKING" | "PENDING")
    }
}

/// The Google routes that are not under another module's prefix, and the control route.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/upload/v2/{*rest}", any(upload_route))
        .route("/_sandbox/builds/{id}", get(control_build))
}

/// Whether a request the Run router caught belongs here (or to Artifact Registry): the
/// paths share `v1/projects/{p}/locations/...` and `v2/...` with Cloud Run.
pub(crate) fn claims(method: &str, path: &str) -> bool {
    crate::methods::identify(method, path).is_some_and(|c| {
        c.id.starts_with("artifactregistry.")
            || c.id.starts_with("cloudbuild.")
            || c.id == "run.projects.locations.builds.submit"
    })
}

/// `GET /_sandbox/builds/{id}`: the build record with its log lines.
async fn control_build(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let data = state.read();
    match data.builds.builds.get(&id) {
        Some(b) => axum::Json(json!({"build": b.to_json(), "log": b.log})).into_response(),
        None => ApiError::not_found(format!("Build {id} not found.")).into_response(),
    }
}

async fn upload_route(State(state): State<AppState>, request: Request) -> Response {
    match upload(state, request).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /upload/v2/{parent}:uploadSource?uploadType=multipart|media`.
async fn upload(state: AppState, request: Request) -> ApiResult<Value> {
    let (parts, body) = request.into_parts();
    let call = parts
        .extensions
        .get::<MethodCall>()
        .cloned()
        .filter(|c| c.id == "run.projects.locations.sourceUploads.upload")
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The requested URL {} was not found on this server.",
                parts.uri.path()
            ))
        })?;
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(ApiError::unauthenticated)?;
    let project = project_id(&state, &call.params[0]);
    let location = call.params[1].clone();
    authz::require(&state, &caller, &project, "run.locations.uploadSource")?;
    let query: Vec<(String, String)> =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .map_err(|_| ApiError::invalid_argument("Invalid query string."))?;
    let upload_type = query
        .iter()
        .find(|(k, _)| k == "uploadType")
        .map(|(_, v)| v.as_str())
        .unwrap_or("media");
    let content_type = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes: Bytes = axum::body::to_bytes(body, MAX_UPLOAD + 1024 * 1024)
        .await
        .map_err(|_| {
            ApiError::invalid_argument(format!(
                "Request body too large or unreadable (at most {MAX_UPLOAD} bytes)."
            ))
        })?;
    let media: Vec<u8> = match upload_type {
        "media" => bytes.to_vec(),
        "multipart" => multipart_media(&content_type, &bytes)?,
        other => {
            return Err(ApiError::invalid_argument(format!(
                "uploadType={other} is not supported here; use media or multipart."
            )));
        }
    };
    if media.len() > MAX_UPLOAD {
        return Err(ApiError::invalid_argument(format!(
            "The source archive is larger than {MAX_UPLOAD} bytes."
        )));
    }
    let ext = if media.starts_with(b"PK\x03\x04") {
        "zip"
    } else {
        "tar.gz"
    };
    // gcloud's own source bucket for Cloud Run: `run-sources-{project}-{region}`.
    let bucket = format!("run-sources-{project}-{location}");
    let now = Utc::now();
    let object = format!(
        "sources/{}-{}.{ext}",
        now.format("%Y%m%d%H%M%S%6f"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let generation = now.timestamp_micros().to_string();
    let path = state.dir.join("sources").join(&bucket).join(&object);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
    }
    std::fs::write(&path, &media)
        .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
    state.write().builds.uploads.insert(
        format!("{bucket}/{object}"),
        Upload {
            bucket: bucket.clone(),
            object: object.clone(),
            generation: generation.clone(),
            path,
        },
    );
    Ok(
        json!({"cloudStorageSource": {"bucket": bucket, "object": object, "generation": generation}}),
    )
}

/// The media part of a `multipart/related` upload (the first part is the JSON metadata).
fn multipart_media(content_type: &str, body: &[u8]) -> ApiResult<Vec<u8>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or_else(|| {
            ApiError::invalid_argument("A multipart upload needs a Content-Type with a boundary.")
        })?;
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + d.len() <= body.len() {
        if &body[i..i + d.len()] == d {
            starts.push(i);
            i += d.len();
        } else {
            i += 1;
        }
    }
    let mut parts = Vec::new();
    for w in starts.windows(2) {
        let mut part = &body[w[0] + d.len()..w[1]];
        part = part
            .strip_prefix(b"\r\n")
            .or_else(|| part.strip_prefix(b"\n"))
            .unwrap_or(part);
        part = part
            .strip_suffix(b"\r\n")
            .or_else(|| part.strip_suffix(b"\n"))
            .unwrap_or(part);
        let (head, content) = match find(part, b"\r\n\r\n") {
            Some(at) => (&part[..at], &part[at + 4..]),
            None => match find(part, b"\n\n") {
                Some(at) => (&part[..at], &part[at + 2..]),
                None => (&part[..0], part),
            },
        };
        parts.push((String::from_utf8_lossy(head).to_ascii_lowercase(), content));
    }
    let (head, content) = parts.get(1).ok_or_else(|| {
        ApiError::invalid_argument("A multipart upload needs a metadata part and a media part.")
    })?;
    if head.contains("content-transfer-encoding: base64") {
        use base64::Engine;
        let text: Vec<u8> = content
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        return base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| ApiError::invalid_argument("The media part is not valid base64."));
    }
    Ok(content.to_vec())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn project_id(state: &AppState, p: &str) -> String {
    state
        .read()
        .project(p)
        .map(|p| p.id.clone())
        .unwrap_or_else(|| p.to_owned())
}

fn project_number(state: &AppState, p: &str) -> String {
    state
        .read()
        .project(p)
        .map(|p| p.number.clone())
        .unwrap_or_else(|| p.to_owned())
}

/// The account a build runs as when the request names none: Cloud Build's default, which for
/// projects made since 2024 is the Compute Engine default account
/// (cloudbuild.v1.json `DefaultServiceAccount.serviceAccountEmail`: "the legacy Cloud Build SA
/// ... or the Compute SA, in the format [PROJECT_NUMBER]-compute@developer.gserviceaccount.com").
/// The sandbox's projects are new ones.
fn default_build_account(number: &str) -> String {
    format!("{number}-compute@developer.gserviceaccount.com")
}

/// `POST v2/{parent}/builds:submit`.
pub fn submit(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let project = project_id(&ctx.state, &call.params[0]);
    let number = project_number(&ctx.state, &project);
    let location = call.params[1].clone();
    authz::require(&ctx.state, &ctx.caller, &project, "run.builds.create")?;
    let body = &ctx.body;
    let image_uri = crate::google::body_str(body, "imageUri")?.to_owned();
    crate::artifacts::ImageUri::parse(&image_uri).map_err(|e| {
        ApiError::invalid_argument(format!(
            "Request contains an invalid argument: imageUri: {e}"
        ))
    })?;
    let source = body.get("storageSource").cloned().unwrap_or(Value::Null);
    let bucket = crate::google::body_str(&source, "bucket").map_err(|_| {
        ApiError::invalid_argument(
            "Request contains an invalid argument: storageSource.bucket is required.",
        )
    })?;
    let object = crate::google::body_str(&source, "object").map_err(|_| {
        ApiError::invalid_argument(
            "Request contains an invalid argument: storageSource.object is required.",
        )
    })?;
    let kind = match (body.get("dockerBuild"), body.get("buildpackBuild")) {
        (Some(_), None) => "docker",
        (None, Some(_)) => "buildpacks",
        _ => {
            return Err(ApiError::invalid_argument(
                "Request contains an invalid argument: exactly one of docker_build and buildpack_build is required.",
            ));
        }
    };
    let service_account = match body.get("serviceAccount").and_then(Value::as_str) {
        Some(sa) if !sa.is_empty() => {
            let email = sa.rsplit('/').next().unwrap_or(sa).to_owned();
            // Running a build as an account is acting as it, as for a Run service.
            authz::require_act_as(&ctx.state, &ctx.caller, &project, &email)?;
            email
        }
        _ => default_build_account(&number),
    };
    let tags = crate::google::body_strings(body, "tags");
    let id = uuid::Uuid::new_v4().to_string();
    // The operation's id is the build's: gcloud follows a submitted build by deriving
    // `projects/{build.projectId}/locations/{region}/operations/{build.id}` from the build in
    // the answer's metadata (`command_lib/run/sourcedeploys/deployer.py` `_SubmitBuild`), not
    // by the operation's own name.
    let op_name = format!("projects/{number}/locations/{location}/operations/{id}");
    let mut storage = json!({"bucket": bucket, "object": object});
    if let Some(g) = source.get("generation").and_then(Value::as_str) {
        storage["generation"] = json!(g);
    }
    let rec = BuildRec {
        id: id.clone(),
        project: project.clone(),
        project_number: number,
        location,
        status: "QUEUED".into(),
        source: storage,
        image_uri: image_uri.clone(),
        service_account,
        tags,
        kind: kind.into(),
        create_time: Utc::now(),
        start_time: None,
        finish_time: None,
        digest: None,
        failure: None,
        log: Vec::new(),
        operation: op_name.clone(),
    };
    let metadata = rec.metadata();
    ctx.state.write().builds.builds.insert(id.clone(), rec);
    let op = operations::create(&ctx.state, &op_name, Some(metadata), None);
    builder::spawn(ctx.state.clone(), id);
    Ok(json!({"buildOperation": op}))
}

/// `cloudbuild.*`: operations and builds get, and the default build account.
pub fn handle_cloudbuild(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let p = |i: usize| call.params.get(i).cloned().unwrap_or_default();
    match call.id {
        "cloudbuild.projects.locations.operations.get" => {
            let project = p(0);
            let name_as_sent = format!("projects/{project}/locations/{}/operations/{}", p(1), p(2));
            let candidates = [
                name_as_sent.clone(),
                format!(
                    "projects/{}/locations/{}/operations/{}",
                    project_number(&ctx.state, &project),
                    p(1),
                    p(2)
                ),
                format!(
                    "projects/{}/locations/{}/operations/{}",
                    project_id(&ctx.state, &project),
                    p(1),
                    p(2)
                ),
            ];
            let found = candidates
                .iter()
                .find(|n| ctx.state.read().operations.contains_key(*n))
                .cloned();
            let Some(name) = found else {
                authz::require(&ctx.state, &ctx.caller, &project, "cloudbuild.builds.get")?;
                return Err(ApiError::not_found(format!(
                    "Operation {name_as_sent} not found."
                )));
            };
            // Artifact Registry's operations have the same path (the sandbox serves both on
            // one host): the stored metadata says whose it is.
            let is_build = ctx.state.read().operations[&name]
                .metadata
                .as_ref()
                .and_then(|m| m.get("@type"))
                .and_then(Value::as_str)
                == Some(BUILD_METADATA_TYPE);
            let (service, permission) = if is_build {
                ("cloudbuild.googleapis.com", "cloudbuild.builds.get")
            } else {
                (
                    "artifactregistry.googleapis.com",
                    "artifactregistry.repositories.get",
                )
            };
            crate::server::check_service(&ctx.state, service, &project)?;
            authz::require(&ctx.state, &ctx.caller, &project, permission)?;
            operations::get(&ctx.state, &name)
        }
        // `GET v1/projects/{p}/locations/{l}/defaultServiceAccount`: which account builds that
        // name none run as (what a plan must grant push rights to).
        "cloudbuild.projects.locations.getDefaultServiceAccount" => {
            let project = project_id(&ctx.state, &p(0));
            authz::require(&ctx.state, &ctx.caller, &project, "cloudbuild.builds.get")?;
            let number = project_number(&ctx.state, &project);
            Ok(json!({
                "name": format!("projects/{}/locations/{}/defaultServiceAccount", p(0), p(1)),
                "serviceAccountEmail": format!(
                    "projects/{project}/serviceAccounts/{}",
                    default_build_account(&number)
                ),
            }))
        }
        "cloudbuild.projects.locations.builds.get" | "cloudbuild.projects.builds.get" => {
            let project = project_id(&ctx.state, &p(0));
            authz::require(&ctx.state, &ctx.caller, &project, "cloudbuild.builds.get")?;
            let id = if call.id == "cloudbuild.projects.builds.get" {
                p(1)
            } else {
                p(2)
            };
            let data = ctx.state.read();
            data.builds
                .builds
                .get(&id)
                .filter(|b| b.project == project)
                .map(BuildRec::to_json)
                .ok_or_else(|| {
                    ApiError::not_found(format!("Requested entity was not found. (build {id})"))
                })
        }
        other => Err(ApiError::not_found(format!(
            "Method {other} is not served by this sandbox."
        ))),
    }
}

/// Builds that were running when a persisted sandbox stopped end as INTERNAL_ERROR (their
/// builder went with the old process).
pub fn interrupt_running(state: &AppState) {
    let stale: Vec<BuildRec> = {
        let mut data = state.write();
        let mut out = Vec::new();
        for b in data.builds.builds.values_mut() {
            if !b.terminal() {
                b.status = "INTERNAL_ERROR".into();
                b.finish_time = Some(Utc::now());
                b.log
                    .push("The sandbox restarted while this build ran.".into());
                out.push(b.clone());
            }
        }
        out
    };
    for b in stale {
        operations::set_metadata(state, &b.operation, b.metadata());
        operations::finish(
            state,
            &b.operation,
            operations::Outcome::Error(
                json!({"code": 13, "message": "Build interrupted by a sandbox restart."}),
            ),
        );
    }
}
