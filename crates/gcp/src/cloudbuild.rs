//! Cloud Build v1 (`cloudbuild.v1.json`): the build that `run_builds::submit_docker_build`
//! started, followed through its long-running operation (`projects.locations.operations.get`)
//! and read as a `Build` (`projects.locations.builds.get`).

use std::time::{Duration, Instant};

use bootstrap_ids::{ProjectId, Region};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, resource_path, seg};
use crate::operations::{Operation, PollBackoff};

/// `Build.status` values that end a build.
pub const TERMINAL: &[&str] = &[
    "SUCCESS",
    "FAILURE",
    "INTERNAL_ERROR",
    "TIMEOUT",
    "CANCELLED",
    "EXPIRED",
];

/// `Build`, the fields this tool reads; unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    #[serde(default)]
    pub id: String,
    /// `projects/{project}/locations/{location}/builds/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// `PENDING`, `QUEUED`, `WORKING`, then one of [`TERMINAL`].
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    /// The console page of the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Results>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_info: Option<FailureInfo>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `Results`: the pushed images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    #[serde(default)]
    pub images: Vec<BuiltImage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `BuiltImage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuiltImage {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub digest: String,
}

/// `FailureInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureInfo {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

impl Build {
    pub fn is_done(&self) -> bool {
        TERMINAL.contains(&self.status.as_str())
    }

    pub fn succeeded(&self) -> bool {
        self.status == "SUCCESS"
    }

    /// The location of the build, from `name` (`global` when the name has none).
    pub fn location(&self) -> Option<&str> {
        let name = self.name.as_deref()?;
        let mut parts = name.split('/');
        while let Some(p) = parts.next() {
            if p == "locations" {
                return parts.next();
            }
        }
        None
    }

    /// The operation that follows this build, as gcloud derives it
    /// (`deployer.py` `_SubmitBuild`: `projects/{projectId}/locations/{region}/operations/{id}`).
    pub fn operation_name(&self) -> Option<String> {
        let project = self.project_id.as_deref()?;
        let location = self.location()?;
        (!self.id.is_empty()).then(|| {
            format!(
                "projects/{project}/locations/{location}/operations/{}",
                self.id
            )
        })
    }
}

/// The `Build` in a Cloud Build operation's `metadata` (`BuildOperationMetadata.build`).
pub fn build_of(op: &Operation) -> Result<Option<Build>, GcpError> {
    #[derive(Deserialize)]
    struct Meta {
        build: Option<Build>,
    }
    Ok(op.metadata_as::<Meta>()?.and_then(|m| m.build))
}

/// `cloudbuild.projects.locations.operations.get` (`GET v1/{name}`).
pub async fn get_operation(http: &GcpHttp, name: &str) -> Result<Operation, GcpError> {
    let path = format!("v1/{}", resource_path(name)?);
    http.send(Call::new(
        "cloudbuild.projects.locations.operations.get",
        Method::GET,
        Api::CloudBuild,
        path,
    ))
    .await
}

/// `cloudbuild.projects.locations.builds.get`; `None` if there is no such build.
pub async fn get_build(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    id: &str,
) -> Result<Option<Build>, GcpError> {
    let path = format!(
        "v1/projects/{}/locations/{}/builds/{}",
        seg(project.as_str()),
        seg(region.as_str()),
        seg(id)
    );
    http.send(Call::new(
        "cloudbuild.projects.locations.builds.get",
        Method::GET,
        Api::CloudBuild,
        path,
    ))
    .await
    .optional()
}

/// `cloudbuild.projects.locations.getDefaultServiceAccount`
/// (`GET v1/projects/{p}/locations/{l}/defaultServiceAccount`): the email of the account builds
/// run as when the request names none, as gcloud reads it before a source deploy
/// (`googlecloudsdk/command_lib/run/build_util.py` `_GetDefaultBuildServiceAccount`). It is the
/// legacy `N@cloudbuild.gserviceaccount.com` or, for projects made since 2024, the Compute
/// Engine default account `N-compute@developer.gserviceaccount.com`; `None` when the project
/// has none (then builds must name one).
pub async fn get_default_service_account(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
) -> Result<Option<String>, GcpError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        #[serde(default)]
        service_account_email: Option<String>,
    }
    let path = format!(
        "v1/projects/{}/locations/{}/defaultServiceAccount",
        seg(project.as_str()),
        seg(region.as_str())
    );
    let answer: Answer = http
        .send(Call::new(
            "cloudbuild.projects.locations.getDefaultServiceAccount",
            Method::GET,
            Api::CloudBuild,
            path,
        ))
        .await?;
    Ok(answer
        .service_account_email
        .as_deref()
        .and_then(account_email)
        .map(str::to_owned))
}

/// The email of `projects/{p}/serviceAccounts/{email}` (gcloud's `_ExtractServiceAccountEmail`).
pub fn account_email(resource: &str) -> Option<&str> {
    let (_, email) = resource.rsplit_once("/serviceAccounts/")?;
    (!email.is_empty() && !email.contains('/')).then_some(email)
}

/// The Cloud Logging filter of one build's log: Cloud Build writes it to the log `cloudbuild`
/// with resource type `build` and the label `build_id` ("View build results",
/// cloud.google.com/build/docs/view-build-results).
pub fn log_filter(build_id: &str) -> String {
    format!(
        "resource.type=\"build\" AND resource.labels.build_id={}",
        crate::logging::quote(build_id)
    )
}

/// How a wait for a build ended.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildEnd {
    /// The build reached a terminal status (success or not: see [`Build::succeeded`]).
    Finished(Build),
    /// The deadline passed first; the last state seen.
    TimedOut {
        last: Option<Build>,
        waited: Duration,
    },
}

/// Polls the build's operation until the build ends or `deadline` passes, calling `progress`
/// with each state seen (for a progress line). The operation name is the one gcloud derives
/// from the build when the submit answer carries the build, else the answer's own.
pub async fn wait_build(
    http: &GcpHttp,
    submitted: &Operation,
    deadline: Duration,
    backoff: PollBackoff,
    mut progress: impl FnMut(&Build),
) -> Result<BuildEnd, GcpError> {
    let started = Instant::now();
    let mut last = build_of(submitted)?;
    let name = last
        .as_ref()
        .and_then(Build::operation_name)
        .unwrap_or_else(|| submitted.name.clone());
    if name.is_empty() {
        return Err(GcpError::Config(
            "builds:submit answered without a build operation to follow".into(),
        ));
    }
    let mut op = submitted.clone();
    let mut delay = backoff.initial;
    loop {
        if let Some(b) = build_of(&op)? {
            progress(&b);
            last = Some(b);
        }
        if op.done || last.as_ref().is_some_and(Build::is_done) {
            // A finished operation's `response` is the final Build; prefer it to the metadata.
            let fin = op
                .response
                .clone()
                .and_then(|v| serde_json::from_value::<Build>(v).ok())
                .filter(|b| !b.status.is_empty())
                .or(last.clone());
            return match fin {
                Some(b) => Ok(BuildEnd::Finished(b)),
                None => match op.outcome() {
                    Some(Err(e)) => Err(e),
                    _ => Err(GcpError::Config(format!(
                        "build operation {name} finished without a build"
                    ))),
                },
            };
        }
        let elapsed = started.elapsed();
        if elapsed >= deadline {
            return Ok(BuildEnd::TimedOut {
                last,
                waited: elapsed,
            });
        }
        tokio::time::sleep(delay.min(deadline - elapsed)).await;
        delay = backoff.next(delay);
        op = get_operation(http, &name).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operation_name_as_gcloud_derives_it() {
        let b: Build = serde_json::from_value(json!({
            "id": "b-1", "projectId": "p", "status": "QUEUED",
            "name": "projects/123/locations/us-central1/builds/b-1",
            "logUrl": "https://console.cloud.google.com/cloud-build/builds;region=us-central1/b-1?project=123"
        }))
        .unwrap();
        assert_eq!(b.location(), Some("us-central1"));
        assert_eq!(
            b.operation_name().as_deref(),
            Some("projects/p/locations/us-central1/operations/b-1")
        );
        assert!(!b.is_done());
    }

    #[test]
    fn account_emails_and_the_log_filter() {
        assert_eq!(
            account_email("projects/p/serviceAccounts/123-compute@developer.gserviceaccount.com"),
            Some("123-compute@developer.gserviceaccount.com")
        );
        assert_eq!(account_email("projects/p/serviceAccounts/"), None);
        assert_eq!(account_email("nonsense"), None);
        assert_eq!(
            log_filter("b-1"),
            "resource.type=\"build\" AND resource.labels.build_id=\"b-1\""
        );
    }

    #[test]
    fn metadata_build_is_read() {
        let op: Operation = serde_json::from_value(json!({
            "name": "projects/p/locations/r/operations/o",
            "metadata": {"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
                         "build": {"id": "o", "status": "FAILURE", "statusDetail": "step 0 failed"}}
        }))
        .unwrap();
        let b = build_of(&op).unwrap().unwrap();
        assert!(b.is_done() && !b.succeeded());
        assert_eq!(b.status_detail.as_deref(), Some("step 0 failed"));
    }
}
