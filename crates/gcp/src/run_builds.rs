//! Cloud Run v2's own source builds (`run.v2.json`): `sourceUploads.upload` puts a `.tar.gz`
//! of the source into a Google-managed Cloud Storage bucket, and `builds.submit` starts a Cloud
//! Build build of it that pushes to Artifact Registry.
//!
//! Why this path and not Cloud Build's `builds.create` over a bucket of our own: it is one API
//! this tool already calls (Cloud Run), it needs no Cloud Storage client, bucket or bucket
//! IAM of ours, and it is the request `gcloud run deploy --source` sends
//! (`googlecloudsdk/command_lib/run/sourcedeploys/deployer.py` `_PrepareSubmitBuildRequest`:
//! `storageSource`, `imageUri`, `dockerBuild {}`, `tags`). gcloud 528 still stages the archive
//! itself (`sources.Upload` into `run-sources-<project>-<region>`); `:uploadSource` is the
//! Run API's documented way to get the same object without a Storage client. The build is then
//! followed through Cloud Build (`crate::cloudbuild`), as gcloud's `_PollUntilBuildCompletes`.

use bootstrap_ids::{ProjectId, Region};
use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, seg};
use crate::operations::Operation;

/// The upload limit of `sourceUploads.upload` (`mediaUpload.maxSize` in run.v2.json).
pub const MAX_UPLOAD_BYTES: usize = 262_144_000;

/// `GoogleCloudRunV2CloudStorageSource` / `GoogleCloudRunV2StorageSource`: where the archive is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageSource {
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub object: String,
    /// int64 as a string, as the discovery document types it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

/// `GoogleCloudRunV2SubmitBuildResponse`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitBuildResponse {
    /// A Cloud Build operation; `metadata.build` is the `Build` (cloudbuild.v1.json).
    #[serde(default)]
    pub build_operation: Operation,
    #[serde(default)]
    pub base_image_uri: Option<String>,
    #[serde(default)]
    pub base_image_warning: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn parent(project: &ProjectId, region: &Region) -> String {
    format!(
        "projects/{}/locations/{}",
        seg(project.as_str()),
        seg(region.as_str())
    )
}

/// A `multipart/related` body as Google's media upload protocol takes it
/// (googleapiclient `http.py` `MediaUpload` multipart: a JSON part with the request's metadata,
/// then the media part). Returns the content type and the body.
pub fn multipart_related(metadata: &Value, media_type: &str, media: &[u8]) -> (String, Vec<u8>) {
    let meta = metadata.to_string();
    // A boundary that occurs in neither part (googleapiclient uses a random one as well).
    let boundary = loop {
        let b = format!("bootstrap-{:032x}", rand::rng().random::<u128>());
        let bb = b.as_bytes();
        if !media.windows(bb.len()).any(|w| w == bb) && !meta.contains(&b) {
            break b;
        }
    };
    let mut body = Vec::with_capacity(media.len() + meta.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n\
             --{boundary}\r\nContent-Type: {media_type}\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(media);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/related; boundary={boundary}"), body)
}

/// `run.projects.locations.sourceUploads.upload`: `POST /upload/v2/{parent}:uploadSource
/// ?uploadType=multipart` with the `.tar.gz` as media. Repeating it only stores a second copy,
/// so it is retried like a read.
pub async fn upload_source(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    archive_tar_gz: Vec<u8>,
) -> Result<StorageSource, GcpError> {
    if archive_tar_gz.len() > MAX_UPLOAD_BYTES {
        return Err(GcpError::Config(format!(
            "the source archive is {} bytes; Cloud Run takes at most {MAX_UPLOAD_BYTES}",
            archive_tar_gz.len()
        )));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        cloud_storage_source: Option<StorageSource>,
    }
    let (content_type, body) = multipart_related(&json!({}), "application/gzip", &archive_tar_gz);
    let path = format!("upload/v2/{}:uploadSource", parent(project, region));
    let call = Call::new(
        "run.projects.locations.sourceUploads.upload",
        Method::POST,
        Api::RunV2,
        path,
    )
    .query("uploadType", "multipart")
    .query("alt", "json")
    .media(content_type, body)
    .idempotent();
    let answer: Answer = http.send(call).await?;
    answer
        .cloud_storage_source
        .filter(|s| !s.bucket.is_empty() && !s.object.is_empty())
        .ok_or_else(|| {
            GcpError::Config(
                "run.projects.locations.sourceUploads.upload answered without cloudStorageSource"
                    .into(),
            )
        })
}

/// `run.projects.locations.builds.submit`: a Docker build of the archive's root `Dockerfile`,
/// pushed to `image_uri`, run as `service_account` (an email) when given, else as Cloud Build's
/// default account. Not retried once sent: a repeat would start a second build.
pub async fn submit_docker_build(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    source: &StorageSource,
    image_uri: &str,
    tags: &[String],
    service_account: Option<&str>,
) -> Result<SubmitBuildResponse, GcpError> {
    let path = format!("v2/{}/builds:submit", parent(project, region));
    let mut body = json!({
        "storageSource": source,
        "imageUri": image_uri,
        "dockerBuild": {},
    });
    if let Some(sa) = service_account {
        // The form gcloud's `--build-service-account` takes and sends
        // (`command_lib/run/flags.py` `ServiceAccount`: projects/<projectId>/serviceAccounts/<sa>).
        body["serviceAccount"] = json!(format!(
            "projects/{}/serviceAccounts/{sa}",
            project.as_str()
        ));
    }
    if !tags.is_empty() {
        body["tags"] = json!(tags);
    }
    let call = Call::new(
        "run.projects.locations.builds.submit",
        Method::POST,
        Api::RunV2,
        path,
    )
    .body(body);
    http.send(call).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_has_both_parts_and_a_fresh_boundary() {
        let media = b"\x1f\x8b binary";
        let (ct, body) = multipart_related(&json!({}), "application/gzip", media);
        let boundary = ct.strip_prefix("multipart/related; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{boundary}\r\nContent-Type: application/json")));
        assert!(text.contains("\r\n\r\n{}\r\n"));
        assert!(text.contains("Content-Type: application/gzip\r\n"));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
        assert!(body.windows(media.len()).any(|w| w == media));
    }
}
