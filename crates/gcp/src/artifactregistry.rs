//! Artifact Registry v1 (`artifactregistry.v1.json`): the docker repository built images go
//! to, its IAM policy (the job's service account reads images there and nowhere else), and its
//! docker images (an image tagged with a context digest is how `plan` knows a build is current).

use std::collections::BTreeMap;
use std::time::Duration;

use bootstrap_ids::{ProjectId, Region};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, list_pages, seg};
use crate::operations::{self, Operation};
use crate::policy::{Policy, PolicyTarget};

/// `Repository`, the fields this tool reads or writes; unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// `projects/{p}/locations/{l}/repositories/{id}` (output only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `DOCKER`, `MAVEN`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `STANDARD_REPOSITORY`, `REMOTE_REPOSITORY`, `VIRTUAL_REPOSITORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `DockerImage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerImage {
    /// `projects/{p}/locations/{l}/repositories/{r}/dockerImages/{image}@sha256:{hex}`
    /// (the image path's `/` percent-encoded as `%2F`).
    #[serde(default)]
    pub name: String,
    /// `{region}-docker.pkg.dev/{p}/{r}/{image}@sha256:{hex}`.
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_time: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DockerImage {
    /// The image's URI without the digest (`{region}-docker.pkg.dev/{p}/{r}/{image}`).
    pub fn image_name(&self) -> &str {
        self.uri.split('@').next().unwrap_or_default()
    }

    /// `sha256:...` of the manifest.
    pub fn digest(&self) -> Option<&str> {
        self.uri.split_once('@').map(|(_, d)| d)
    }
}

/// `projects/{p}/locations/{r}/repositories/{id}`, encoded.
pub fn repository_path(project: &ProjectId, region: &Region, repository: &str) -> String {
    format!(
        "projects/{}/locations/{}/repositories/{}",
        seg(project.as_str()),
        seg(region.as_str()),
        seg(repository)
    )
}

/// `artifactregistry.projects.locations.repositories.get`; `None` if absent.
pub async fn get_repository(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    repository: &str,
) -> Result<Option<Repository>, GcpError> {
    http.send(Call::new(
        "artifactregistry.projects.locations.repositories.get",
        Method::GET,
        Api::ArtifactRegistry,
        format!("v1/{}", repository_path(project, region, repository)),
    ))
    .await
    .optional()
}

/// `artifactregistry.projects.locations.repositories.create` of a standard docker repository;
/// returns the operation (see [`wait`]).
pub async fn create_repository(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    repository: &str,
    description: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Operation, GcpError> {
    let path = format!(
        "v1/projects/{}/locations/{}/repositories",
        seg(project.as_str()),
        seg(region.as_str())
    );
    let call = Call::new(
        "artifactregistry.projects.locations.repositories.create",
        Method::POST,
        Api::ArtifactRegistry,
        path,
    )
    .query("repositoryId", repository)
    .body(json!({
        "format": "DOCKER",
        "mode": "STANDARD_REPOSITORY",
        "description": description,
        "labels": labels,
    }));
    http.send(call).await
}

/// `artifactregistry.projects.locations.repositories.delete`; `None` if it was already gone.
pub async fn delete_repository(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    repository: &str,
) -> Result<Option<Operation>, GcpError> {
    http.send(Call::new(
        "artifactregistry.projects.locations.repositories.delete",
        Method::DELETE,
        Api::ArtifactRegistry,
        format!("v1/{}", repository_path(project, region, repository)),
    ))
    .await
    .optional()
}

/// Waits for an Artifact Registry operation (`projects.locations.operations.get`).
pub async fn wait(http: &GcpHttp, op: Operation, deadline: Duration) -> Result<Value, GcpError> {
    operations::wait(http, Api::ArtifactRegistry, "v1", op, deadline).await
}

/// `artifactregistry.projects.locations.repositories.getIamPolicy` (version 3 requested).
pub async fn get_iam_policy(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    repository: &str,
) -> Result<Policy, GcpError> {
    let target = PolicyTarget::ArtifactRepository {
        project: project.clone(),
        region: region.clone(),
        repository: repository.to_owned(),
    };
    target.get(http).await
}

/// `artifactregistry.projects.locations.repositories.dockerImages.get` by its `name`
/// (`.../dockerImages/{image}@sha256:{hex}`, as list returns it); `None` if absent.
pub async fn get_docker_image(http: &GcpHttp, name: &str) -> Result<Option<DockerImage>, GcpError> {
    // The image part is one path segment with its `/` as `%2F`; keep the name's own encoding.
    let ok = name.starts_with("projects/")
        && name.contains("/dockerImages/")
        && !name.contains("..")
        && !name.contains(['?', '#', ' ']);
    if !ok {
        return Err(GcpError::Config(format!(
            "invalid docker image name `{name}`"
        )));
    }
    http.send(Call::new(
        "artifactregistry.projects.locations.repositories.dockerImages.get",
        Method::GET,
        Api::ArtifactRegistry,
        format!("v1/{name}"),
    ))
    .await
    .optional()
}

/// `artifactregistry.projects.locations.repositories.dockerImages.list`, every page.
pub async fn list_docker_images(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    repository: &str,
) -> Result<Vec<DockerImage>, GcpError> {
    let call = Call::new(
        "artifactregistry.projects.locations.repositories.dockerImages.list",
        Method::GET,
        Api::ArtifactRegistry,
        format!(
            "v1/{}/dockerImages",
            repository_path(project, region, repository)
        ),
    )
    .query("pageSize", "1000");
    list_pages(http, call, "dockerImages").await
}

/// The image of `images` named `image_name` (no tag) that carries `tag`.
pub fn find_tagged<'a>(
    images: &'a [DockerImage],
    image_name: &str,
    tag: &str,
) -> Option<&'a DockerImage> {
    images
        .iter()
        .find(|i| i.image_name() == image_name && i.tags.iter().any(|t| t == tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_images_are_found_by_name_and_tag() {
        let images: Vec<DockerImage> = serde_json::from_value(json!([
            {"name": "projects/p/locations/us-central1/repositories/prefect/dockerImages/flow@sha256:aa",
             "uri": "us-central1-docker.pkg.dev/p/prefect/flow@sha256:aa", "tags": ["src-1"]},
            {"name": "projects/p/locations/us-central1/repositories/prefect/dockerImages/other@sha256:bb",
             "uri": "us-central1-docker.pkg.dev/p/prefect/other@sha256:bb", "tags": ["src-2"]}
        ]))
        .unwrap();
        let base = "us-central1-docker.pkg.dev/p/prefect";
        let hit = find_tagged(&images, &format!("{base}/flow"), "src-1").unwrap();
        assert_eq!(hit.digest(), Some("sha256:aa"));
        assert!(find_tagged(&images, &format!("{base}/flow"), "src-2").is_none());
        assert!(find_tagged(&images, &format!("{base}/fl"), "src-1").is_none());
    }
}
