//! Which Google API method a request is: its discovery `id` (e.g.
//! `iam.projects.serviceAccounts.create`), the API's service name and the path parameters.
//!
//! The table is taken from the `flatPath`s of Google's discovery documents, so per-method fault
//! rates, the SERVICE_DISABLED check and the dispatcher all agree on one naming. Matching is done
//! here rather than by axum's router because Google's custom verbs (`{resource}:getIamPolicy`)
//! share a path segment with a parameter.

use percent_encoding::percent_decode_str;

/// `(HTTP method, flatPath, discovery method id)` for every method the sandbox serves.
const METHODS: &[(&str, &str, &str)] = &[
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts",
        "iam.projects.serviceAccounts.create",
    ),
    (
        "DELETE",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}",
        "iam.projects.serviceAccounts.delete",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:disable",
        "iam.projects.serviceAccounts.disable",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:enable",
        "iam.projects.serviceAccounts.enable",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}",
        "iam.projects.serviceAccounts.get",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:getIamPolicy",
        "iam.projects.serviceAccounts.getIamPolicy",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/serviceAccounts",
        "iam.projects.serviceAccounts.list",
    ),
    (
        "PATCH",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}",
        "iam.projects.serviceAccounts.patch",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:setIamPolicy",
        "iam.projects.serviceAccounts.setIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:testIamPermissions",
        "iam.projects.serviceAccounts.testIamPermissions",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}/keys",
        "iam.projects.serviceAccounts.keys.create",
    ),
    (
        "DELETE",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}/keys/{keysId}",
        "iam.projects.serviceAccounts.keys.delete",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}/keys/{keysId}:disable",
        "iam.projects.serviceAccounts.keys.disable",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}/keys/{keysId}:enable",
        "iam.projects.serviceAccounts.keys.enable",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}/keys/{keysId}",
        "iam.projects.serviceAccounts.keys.get",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}/keys",
        "iam.projects.serviceAccounts.keys.list",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:generateAccessToken",
        "iamcredentials.projects.serviceAccounts.generateAccessToken",
    ),
    (
        "GET",
        "v1/projects/{projectId}",
        "cloudresourcemanager.projects.get",
    ),
    (
        "POST",
        "v1/projects/{resource}:getIamPolicy",
        "cloudresourcemanager.projects.getIamPolicy",
    ),
    ("GET", "v1/projects", "cloudresourcemanager.projects.list"),
    (
        "POST",
        "v1/projects/{resource}:setIamPolicy",
        "cloudresourcemanager.projects.setIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{resource}:testIamPermissions",
        "cloudresourcemanager.projects.testIamPermissions",
    ),
    (
        "GET",
        "v1/operations/{operationsId}",
        "serviceusage.operations.get",
    ),
    (
        "POST",
        "v1/{v1Id}/{v1Id1}/services:batchEnable",
        "serviceusage.services.batchEnable",
    ),
    (
        "GET",
        "v1/{v1Id}/{v1Id1}/services:batchGet",
        "serviceusage.services.batchGet",
    ),
    (
        "POST",
        "v1/{v1Id}/{v1Id1}/services/{servicesId}:disable",
        "serviceusage.services.disable",
    ),
    (
        "POST",
        "v1/{v1Id}/{v1Id1}/services/{servicesId}:enable",
        "serviceusage.services.enable",
    ),
    (
        "GET",
        "v1/{v1Id}/{v1Id1}/services/{servicesId}",
        "serviceusage.services.get",
    ),
    (
        "GET",
        "v1/{v1Id}/{v1Id1}/services",
        "serviceusage.services.list",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/secrets/{secretsId}:addVersion",
        "secretmanager.projects.secrets.addVersion",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/secrets",
        "secretmanager.projects.secrets.create",
    ),
    (
        "DELETE",
        "v1/projects/{projectsId}/secrets/{secretsId}",
        "secretmanager.projects.secrets.delete",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/secrets/{secretsId}",
        "secretmanager.projects.secrets.get",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/secrets/{secretsId}:getIamPolicy",
        "secretmanager.projects.secrets.getIamPolicy",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/secrets",
        "secretmanager.projects.secrets.list",
    ),
    (
        "PATCH",
        "v1/projects/{projectsId}/secrets/{secretsId}",
        "secretmanager.projects.secrets.patch",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/secrets/{secretsId}:setIamPolicy",
        "secretmanager.projects.secrets.setIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/secrets/{secretsId}:testIamPermissions",
        "secretmanager.projects.secrets.testIamPermissions",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/secrets/{secretsId}/versions/{versionsId}:access",
        "secretmanager.projects.secrets.versions.access",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/secrets/{secretsId}/versions/{versionsId}:destroy",
        "secretmanager.projects.secrets.versions.destroy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/secrets/{secretsId}/versions/{versionsId}:disable",
        "secretmanager.projects.secrets.versions.disable",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/secrets/{secretsId}/versions/{versionsId}:enable",
        "secretmanager.projects.secrets.versions.enable",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/secrets/{secretsId}/versions/{versionsId}",
        "secretmanager.projects.secrets.versions.get",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/secrets/{secretsId}/versions",
        "secretmanager.projects.secrets.versions.list",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs",
        "run.projects.locations.jobs.create",
    ),
    (
        "DELETE",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}",
        "run.projects.locations.jobs.delete",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}",
        "run.projects.locations.jobs.get",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}:getIamPolicy",
        "run.projects.locations.jobs.getIamPolicy",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs",
        "run.projects.locations.jobs.list",
    ),
    (
        "PATCH",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}",
        "run.projects.locations.jobs.patch",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}:run",
        "run.projects.locations.jobs.run",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}:setIamPolicy",
        "run.projects.locations.jobs.setIamPolicy",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}:testIamPermissions",
        "run.projects.locations.jobs.testIamPermissions",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}/executions/{executionsId}:cancel",
        "run.projects.locations.jobs.executions.cancel",
    ),
    (
        "DELETE",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}/executions/{executionsId}",
        "run.projects.locations.jobs.executions.delete",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}/executions/{executionsId}/{executionsId1}:exportStatus",
        "run.projects.locations.jobs.executions.exportStatus",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}/executions/{executionsId}",
        "run.projects.locations.jobs.executions.get",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}/executions",
        "run.projects.locations.jobs.executions.list",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}/executions/{executionsId}/tasks/{tasksId}",
        "run.projects.locations.jobs.executions.tasks.get",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}/executions/{executionsId}/tasks",
        "run.projects.locations.jobs.executions.tasks.list",
    ),
    (
        "DELETE",
        "v2/projects/{projectsId}/locations/{locationsId}/operations/{operationsId}",
        "run.projects.locations.operations.delete",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/operations/{operationsId}",
        "run.projects.locations.operations.get",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/operations",
        "run.projects.locations.operations.list",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/operations/{operationsId}:wait",
        "run.projects.locations.operations.wait",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/services",
        "run.projects.locations.services.create",
    ),
    (
        "DELETE",
        "v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
        "run.projects.locations.services.delete",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
        "run.projects.locations.services.get",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:getIamPolicy",
        "run.projects.locations.services.getIamPolicy",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/services",
        "run.projects.locations.services.list",
    ),
    (
        "PATCH",
        "v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
        "run.projects.locations.services.patch",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:setIamPolicy",
        "run.projects.locations.services.setIamPolicy",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:testIamPermissions",
        "run.projects.locations.services.testIamPermissions",
    ),
    // Cloud Run v2 worker pools (run.v2.json `projects.locations.workerPools`).
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools",
        "run.projects.locations.workerPools.create",
    ),
    (
        "DELETE",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools/{workerPoolsId}",
        "run.projects.locations.workerPools.delete",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools/{workerPoolsId}",
        "run.projects.locations.workerPools.get",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools/{workerPoolsId}:getIamPolicy",
        "run.projects.locations.workerPools.getIamPolicy",
    ),
    (
        "GET",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools",
        "run.projects.locations.workerPools.list",
    ),
    (
        "PATCH",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools/{workerPoolsId}",
        "run.projects.locations.workerPools.patch",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools/{workerPoolsId}:setIamPolicy",
        "run.projects.locations.workerPools.setIamPolicy",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/workerPools/{workerPoolsId}:testIamPermissions",
        "run.projects.locations.workerPools.testIamPermissions",
    ),
    (
        "POST",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/executions/{executionsId}:cancel",
        "run.namespaces.executions.cancel",
    ),
    (
        "DELETE",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/executions/{executionsId}",
        "run.namespaces.executions.delete",
    ),
    (
        "GET",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/executions/{executionsId}",
        "run.namespaces.executions.get",
    ),
    (
        "GET",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/executions",
        "run.namespaces.executions.list",
    ),
    (
        "POST",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/jobs",
        "run.namespaces.jobs.create",
    ),
    (
        "DELETE",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/jobs/{jobsId}",
        "run.namespaces.jobs.delete",
    ),
    (
        "GET",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/jobs/{jobsId}",
        "run.namespaces.jobs.get",
    ),
    (
        "GET",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/jobs",
        "run.namespaces.jobs.list",
    ),
    (
        "PUT",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/jobs/{jobsId}",
        "run.namespaces.jobs.replaceJob",
    ),
    (
        "POST",
        "apis/run.googleapis.com/v1/namespaces/{namespacesId}/jobs/{jobsId}:run",
        "run.namespaces.jobs.run",
    ),
    // Cloud Run v1 (run.v1.json): locations, Knative services and revisions, and the
    // services/jobs IAM methods on `v1/projects/{p}/locations/{l}/...` that gcloud calls.
    (
        "GET",
        "v1/projects/{projectsId}/locations",
        "run.projects.locations.list",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/services",
        "run.projects.locations.services.create",
    ),
    (
        "DELETE",
        "v1/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
        "run.projects.locations.services.delete",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
        "run.projects.locations.services.get",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:getIamPolicy",
        "run.projects.locations.services.getIamPolicy",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/services",
        "run.projects.locations.services.list",
    ),
    (
        "PUT",
        "v1/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
        "run.projects.locations.services.replaceService",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:setIamPolicy",
        "run.projects.locations.services.setIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:testIamPermissions",
        "run.projects.locations.services.testIamPermissions",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}:getIamPolicy",
        "run.projects.locations.jobs.getIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}:setIamPolicy",
        "run.projects.locations.jobs.setIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/jobs/{jobsId}:testIamPermissions",
        "run.projects.locations.jobs.testIamPermissions",
    ),
    (
        "POST",
        "apis/serving.knative.dev/v1/namespaces/{namespacesId}/services",
        "run.namespaces.services.create",
    ),
    (
        "DELETE",
        "apis/serving.knative.dev/v1/namespaces/{namespacesId}/services/{servicesId}",
        "run.namespaces.services.delete",
    ),
    (
        "GET",
        "apis/serving.knative.dev/v1/namespaces/{namespacesId}/services/{servicesId}",
        "run.namespaces.services.get",
    ),
    (
        "GET",
        "apis/serving.knative.dev/v1/namespaces/{namespacesId}/services",
        "run.namespaces.services.list",
    ),
    (
        "PUT",
        "apis/serving.knative.dev/v1/namespaces/{namespacesId}/services/{servicesId}",
        "run.namespaces.services.replaceService",
    ),
    (
        "GET",
        "apis/serving.knative.dev/v1/namespaces/{namespacesId}/revisions/{revisionsId}",
        "run.namespaces.revisions.get",
    ),
    (
        "GET",
        "apis/serving.knative.dev/v1/namespaces/{namespacesId}/revisions",
        "run.namespaces.revisions.list",
    ),
    // Remote builds (`gcloud run deploy --source`'s path): Cloud Run v2's source upload and
    // builds:submit (run.v2.json), Cloud Build v1's operations and builds (cloudbuild.v1.json),
    // Artifact Registry v1 (artifactregistry.v1.json). Cloud Build's and Artifact Registry's
    // `v1/projects/{p}/locations/{l}/operations/{o}` are one path: it is listed once and
    // `builds::handle_cloudbuild` tells the two apart by the stored operation.
    (
        "POST",
        "upload/v2/projects/{projectsId}/locations/{locationsId}:uploadSource",
        "run.projects.locations.sourceUploads.upload",
    ),
    (
        "POST",
        "v2/projects/{projectsId}/locations/{locationsId}/builds:submit",
        "run.projects.locations.builds.submit",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/operations/{operationsId}",
        "cloudbuild.projects.locations.operations.get",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/builds/{buildsId}",
        "cloudbuild.projects.locations.builds.get",
    ),
    (
        "GET",
        "v1/projects/{projectId}/builds/{id}",
        "cloudbuild.projects.builds.get",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/defaultServiceAccount",
        "cloudbuild.projects.locations.getDefaultServiceAccount",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}",
        "artifactregistry.projects.locations.get",
    ),
    // `gcloud artifacts repositories list` without a location lists locations through
    // v1beta2 (its artifacts API's locations client); v1's path is Cloud Run's list above.
    (
        "GET",
        "v1beta2/projects/{projectsId}/locations",
        "artifactregistry.projects.locations.list",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories",
        "artifactregistry.projects.locations.repositories.create",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories",
        "artifactregistry.projects.locations.repositories.list",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories/{repositoriesId}",
        "artifactregistry.projects.locations.repositories.get",
    ),
    (
        "DELETE",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories/{repositoriesId}",
        "artifactregistry.projects.locations.repositories.delete",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories/{repositoriesId}:getIamPolicy",
        "artifactregistry.projects.locations.repositories.getIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories/{repositoriesId}:setIamPolicy",
        "artifactregistry.projects.locations.repositories.setIamPolicy",
    ),
    (
        "POST",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories/{repositoriesId}:testIamPermissions",
        "artifactregistry.projects.locations.repositories.testIamPermissions",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories/{repositoriesId}/dockerImages",
        "artifactregistry.projects.locations.repositories.dockerImages.list",
    ),
    (
        "GET",
        "v1/projects/{projectsId}/locations/{locationsId}/repositories/{repositoriesId}/dockerImages/{dockerImagesId}",
        "artifactregistry.projects.locations.repositories.dockerImages.get",
    ),
];

/// One recognised call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodCall {
    /// The discovery method id.
    pub id: &'static str,
    /// Path parameters in order of appearance, percent-decoded.
    pub params: Vec<String>,
}

impl MethodCall {
    /// The API's service name, e.g. `iam.googleapis.com`.
    pub fn service(&self) -> &'static str {
        service_of(self.id)
    }

    /// The project (id or number) the call addresses, when its path names one. For IAM paths
    /// that use the `-` wildcard the project is read from the service account's email.
    pub fn project(&self) -> Option<String> {
        let first = self.params.first()?;
        if self.id.starts_with("serviceusage.services.") {
            // `v1/{v1Id}/{v1Id1}/...`: the parent's kind, then its id.
            return (first == "projects")
                .then(|| self.params.get(1).cloned())
                .flatten();
        }
        if first == "-"
            && (self.id.starts_with("iam.projects.serviceAccounts")
                || self.id.starts_with("iamcredentials."))
        {
            return self.params.get(1).and_then(|email| project_of_email(email));
        }
        Some(first.clone())
    }
}

/// The service name of a method id's API.
pub fn service_of(id: &str) -> &'static str {
    match id.split('.').next().unwrap_or_default() {
        "iam" => "iam.googleapis.com",
        "iamcredentials" => "iamcredentials.googleapis.com",
        "cloudresourcemanager" => "cloudresourcemanager.googleapis.com",
        "serviceusage" => "serviceusage.googleapis.com",
        "secretmanager" => "secretmanager.googleapis.com",
        "run" => "run.googleapis.com",
        "cloudbuild" => "cloudbuild.googleapis.com",
        "artifactregistry" => "artifactregistry.googleapis.com",
        _ => "unknown.googleapis.com",
    }
}

/// Google's common id rule (Run services, jobs and worker pools, Artifact Registry
/// repositories): 1 to `max` lowercase letters, digits and hyphens, starting with a letter and
/// not ending with a hyphen. Callers word their own error, as each API does.
pub fn is_kebab_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The project id in a service-account email `name@PROJECT.iam.gserviceaccount.com`.
pub fn project_of_email(email: &str) -> Option<String> {
    let (_, domain) = email.split_once('@')?;
    domain
        .strip_suffix(".iam.gserviceaccount.com")
        .map(str::to_owned)
}

/// Identifies a request by HTTP method and raw (still percent-encoded) path.
pub fn identify(method: &str, raw_path: &str) -> Option<MethodCall> {
    let path = raw_path.trim_start_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    METHODS
        .iter()
        .filter(|(m, _, _)| m.eq_ignore_ascii_case(method))
        .find_map(|(_, pattern, id)| {
            match_pattern(pattern, &segments).map(|params| MethodCall { id, params })
        })
}

/// Matches path segments against a flatPath; `{x}` matches one non-empty segment and a last
/// segment may carry a `:verb` suffix after a parameter or a literal.
fn match_pattern(pattern: &str, segments: &[&str]) -> Option<Vec<String>> {
    let parts: Vec<&str> = pattern.split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        let (part_base, part_verb) = split_verb(part);
        // A docker image id `name@sha256:<hex>` carries a `:` that is not a custom verb.
        let (seg_base, seg_verb) = if is_digest_ref(segment) {
            (*segment, None)
        } else {
            split_verb(segment)
        };
        if part_verb != seg_verb {
            return None;
        }
        if part_base.starts_with('{') {
            let value = percent_decode_str(seg_base)
                .decode_utf8()
                .ok()?
                .into_owned();
            if value.is_empty() {
                return None;
            }
            params.push(value);
        } else if part_base != seg_base {
            return None;
        }
    }
    Some(params)
}

/// Whether a path segment is `image@sha256:...` (Artifact Registry's dockerImages ids).
fn is_digest_ref(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    lower.contains("@sha256:") || lower.contains("%40sha256%3a") || lower.contains("@sha256%3a")
}

/// Splits `name:verb` into its parts. A `:` only counts as a verb separator in the pattern when
/// it follows `}` or a literal; emails and ids never contain `:` in these APIs.
fn split_verb(segment: &str) -> (&str, Option<&str>) {
    match segment.rsplit_once(':') {
        Some((base, verb)) => (base, Some(verb)),
        None => match segment
            .rsplit_once("%3A")
            .or_else(|| segment.rsplit_once("%3a"))
        {
            Some((base, verb)) => (base, Some(verb)),
            None => (segment, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_verbs_and_params() {
        let call = identify(
            "POST",
            "/v1/projects/p1/serviceAccounts/a%40p1.iam.gserviceaccount.com:getIamPolicy",
        )
        .expect("recognised");
        assert_eq!(call.id, "iam.projects.serviceAccounts.getIamPolicy");
        assert_eq!(call.params, vec!["p1", "a@p1.iam.gserviceaccount.com"]);
        assert_eq!(call.service(), "iam.googleapis.com");
    }

    #[test]
    fn project_level_verbs() {
        let call = identify("POST", "/v1/projects/p1:setIamPolicy").expect("recognised");
        assert_eq!(call.id, "cloudresourcemanager.projects.setIamPolicy");
        assert_eq!(
            identify("GET", "/v1/projects/p1").map(|c| c.id),
            Some("cloudresourcemanager.projects.get")
        );
    }

    #[test]
    fn service_usage_parent() {
        let call = identify("POST", "/v1/projects/p1/services:batchEnable").expect("recognised");
        assert_eq!(call.id, "serviceusage.services.batchEnable");
        assert_eq!(call.project().as_deref(), Some("p1"));
        let call =
            identify("GET", "/v1/projects/p1/services/run.googleapis.com").expect("recognised");
        assert_eq!(call.id, "serviceusage.services.get");
    }

    #[test]
    fn wildcard_project_reads_email() {
        let call = identify(
            "GET",
            "/v1/projects/-/serviceAccounts/x@p2.iam.gserviceaccount.com",
        )
        .expect("recognised");
        assert_eq!(call.project().as_deref(), Some("p2"));
    }

    #[test]
    fn run_paths() {
        let call = identify("POST", "/v2/projects/p/locations/us-central1/jobs/j:run")
            .expect("recognised");
        assert_eq!(call.id, "run.projects.locations.jobs.run");
        let call = identify(
            "GET",
            "/apis/run.googleapis.com/v1/namespaces/p/executions/e",
        )
        .expect("recognised");
        assert_eq!(call.id, "run.namespaces.executions.get");
    }

    #[test]
    fn run_v1_services_and_iam() {
        let call = identify(
            "PUT",
            "/apis/serving.knative.dev/v1/namespaces/p/services/prefect-worker",
        )
        .expect("recognised");
        assert_eq!(call.id, "run.namespaces.services.replaceService");
        assert_eq!(call.params, vec!["p", "prefect-worker"]);
        let call = identify(
            "GET",
            "/v1/projects/p/locations/us-central1/services/s:getIamPolicy",
        )
        .expect("recognised");
        assert_eq!(call.id, "run.projects.locations.services.getIamPolicy");
        assert_eq!(call.project().as_deref(), Some("p"));
        let call = identify("GET", "/v1/projects/p/locations").expect("recognised");
        assert_eq!(call.id, "run.projects.locations.list");
        assert_eq!(call.service(), "run.googleapis.com");
    }

    #[test]
    fn docker_image_ids_keep_their_digest() {
        let path = format!(
            "/v1/projects/p/locations/us-central1/repositories/r/dockerImages/flows@sha256:{}",
            "a".repeat(64)
        );
        let call = identify("GET", &path).expect("recognised");
        assert_eq!(
            call.id,
            "artifactregistry.projects.locations.repositories.dockerImages.get"
        );
        assert!(call.params[3].starts_with("flows@sha256:"));
        let call = identify(
            "GET",
            "/v1/projects/p/locations/us-central1/repositories/r:getIamPolicy",
        )
        .expect("recognised");
        assert_eq!(
            call.id,
            "artifactregistry.projects.locations.repositories.getIamPolicy"
        );
        let call = identify("GET", "/v1/projects/p/locations/l/operations/o").expect("op");
        assert_eq!(call.id, "cloudbuild.projects.locations.operations.get");
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert!(identify("GET", "/v1/projects/p/nothing").is_none());
        assert!(identify("DELETE", "/v1/projects/p:getIamPolicy").is_none());
        assert!(identify("GET", "/v1/projects//serviceAccounts").is_none());
    }
}
