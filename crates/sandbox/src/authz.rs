//! Authorization like Google's: a caller holds roles through IAM policies (the project's and the
//! resource's own), each role grants a set of permissions, and a call that needs a permission the
//! caller lacks gets 403 PERMISSION_DENIED naming it. New grants take effect after the configured
//! propagation delay.

use chrono::Utc;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::policy::Policy;
use crate::state::AppState;

/// Predefined roles and the permission patterns they grant (`x.*` matches a prefix); a leading
/// `!` excludes. Only permissions of the APIs the sandbox serves are listed.
const ROLES: &[(&str, &[&str])] = &[
    // The basic roles do not include Token Creator's permissions: impersonating an account
    // needs roles/iam.serviceAccountTokenCreator even for an owner
    // (cloud.google.com/iam/docs/service-account-permissions).
    (
        "roles/owner",
        &[
            "*",
            "!iam.serviceAccounts.getAccessToken",
            "!iam.serviceAccounts.signBlob",
            "!iam.serviceAccounts.signJwt",
        ],
    ),
    (
        "roles/editor",
        &[
            "*",
            "!*.setIamPolicy",
            "!resourcemanager.projects.delete",
            "!iam.serviceAccounts.getAccessToken",
            "!iam.serviceAccounts.signBlob",
            "!iam.serviceAccounts.signJwt",
        ],
    ),
    (
        "roles/iam.workloadIdentityUser",
        &[
            "iam.serviceAccounts.getAccessToken",
            "iam.serviceAccounts.getOpenIdToken",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
        ],
    ),
    (
        "roles/viewer",
        &[
            "*.get",
            "*.list",
            "resourcemanager.projects.getIamPolicy",
            "!secretmanager.versions.access",
        ],
    ),
    (
        "roles/run.admin",
        &[
            "run.*",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
    (
        "roles/run.developer",
        &[
            "run.*",
            "!run.*.setIamPolicy",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
    (
        "roles/run.viewer",
        &["run.*.get", "run.*.list", "run.*.getIamPolicy"],
    ),
    (
        "roles/run.invoker",
        &[
            "run.routes.invoke",
            "run.jobs.run",
            "run.jobs.runWithOverrides",
        ],
    ),
    (
        "roles/run.sourceDeveloper",
        &["run.*", "!run.*.setIamPolicy"],
    ),
    (
        "roles/iam.serviceAccountUser",
        &[
            "iam.serviceAccounts.actAs",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
            "resourcemanager.projects.get",
        ],
    ),
    (
        "roles/iam.serviceAccountAdmin",
        &[
            "iam.serviceAccounts.*",
            "!iam.serviceAccounts.actAs",
            "resourcemanager.projects.get",
        ],
    ),
    (
        "roles/iam.serviceAccountCreator",
        &["iam.serviceAccounts.create", "resourcemanager.projects.get"],
    ),
    (
        "roles/iam.serviceAccountDeleter",
        &["iam.serviceAccounts.delete", "resourcemanager.projects.get"],
    ),
    (
        "roles/iam.serviceAccountViewer",
        &[
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
            "iam.serviceAccountKeys.get",
            "iam.serviceAccountKeys.list",
        ],
    ),
    (
        "roles/iam.serviceAccountKeyAdmin",
        &[
            "iam.serviceAccountKeys.*",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
        ],
    ),
    (
        "roles/iam.serviceAccountTokenCreator",
        &[
            "iam.serviceAccounts.getAccessToken",
            "iam.serviceAccounts.signBlob",
            "iam.serviceAccounts.signJwt",
        ],
    ),
    (
        "roles/iam.securityAdmin",
        &[
            "*.getIamPolicy",
            "*.setIamPolicy",
            "*.get",
            "*.list",
            "!secretmanager.versions.access",
        ],
    ),
    ("roles/iam.securityReviewer", &["*.getIamPolicy", "*.list"]),
    (
        "roles/resourcemanager.projectIamAdmin",
        &[
            "resourcemanager.projects.getIamPolicy",
            "resourcemanager.projects.setIamPolicy",
        ],
    ),
    (
        "roles/browser",
        &[
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
    (
        "roles/serviceusage.serviceUsageAdmin",
        &["serviceusage.*", "resourcemanager.projects.get"],
    ),
    (
        "roles/serviceusage.serviceUsageConsumer",
        &[
            "serviceusage.services.get",
            "serviceusage.services.list",
            "serviceusage.services.use",
        ],
    ),
    (
        "roles/serviceusage.serviceUsageViewer",
        &[
            "serviceusage.services.get",
            "serviceusage.services.list",
            "serviceusage.operations.get",
        ],
    ),
    (
        "roles/secretmanager.admin",
        &["secretmanager.*", "resourcemanager.projects.get"],
    ),
    (
        "roles/secretmanager.secretAccessor",
        &["secretmanager.versions.access"],
    ),
    (
        "roles/secretmanager.secretVersionAdder",
        &["secretmanager.versions.add"],
    ),
    (
        "roles/secretmanager.secretVersionManager",
        &["secretmanager.versions.*", "!secretmanager.versions.access"],
    ),
    (
        "roles/secretmanager.viewer",
        &["secretmanager.*.get", "secretmanager.*.list"],
    ),
    // Artifact Registry's and Cloud Build's predefined roles, with the permissions of theirs
    // that the sandbox checks (cloud.google.com/artifact-registry/docs/access-control#roles,
    // cloud.google.com/build/docs/iam-roles-permissions).
    (
        "roles/artifactregistry.reader",
        &[
            "artifactregistry.repositories.get",
            "artifactregistry.repositories.list",
            "artifactregistry.repositories.downloadArtifacts",
            "artifactregistry.dockerimages.get",
            "artifactregistry.dockerimages.list",
            "artifactregistry.locations.get",
            "artifactregistry.locations.list",
        ],
    ),
    (
        "roles/artifactregistry.writer",
        &[
            "artifactregistry.repositories.get",
            "artifactregistry.repositories.list",
            "artifactregistry.repositories.downloadArtifacts",
            "artifactregistry.repositories.uploadArtifacts",
            "artifactregistry.dockerimages.get",
            "artifactregistry.dockerimages.list",
            "artifactregistry.locations.get",
            "artifactregistry.locations.list",
        ],
    ),
    (
        "roles/artifactregistry.repoAdmin",
        &[
            "artifactregistry.repositories.get",
            "artifactregistry.repositories.list",
            "artifactregistry.repositories.downloadArtifacts",
            "artifactregistry.repositories.uploadArtifacts",
            "artifactregistry.repositories.deleteArtifacts",
            "artifactregistry.dockerimages.*",
            "artifactregistry.locations.*",
        ],
    ),
    ("roles/artifactregistry.admin", &["artifactregistry.*"]),
    (
        "roles/cloudbuild.builds.editor",
        &["cloudbuild.builds.*", "resourcemanager.projects.get"],
    ),
    (
        "roles/cloudbuild.builds.viewer",
        &["cloudbuild.builds.get", "cloudbuild.builds.list"],
    ),
    (
        "roles/cloudbuild.builds.builder",
        &[
            "cloudbuild.builds.*",
            "artifactregistry.repositories.downloadArtifacts",
            "artifactregistry.repositories.uploadArtifacts",
            "artifactregistry.dockerimages.get",
            "artifactregistry.dockerimages.list",
        ],
    ),
];

/// Real roles that grant nothing the sandbox checks; accepted in bindings so plans that grant
/// them do not fail here while they would succeed on Google.
const OTHER_ROLES: &[&str] = &[
    "roles/logging.logWriter",
    "roles/logging.viewer",
    "roles/monitoring.metricWriter",
    "roles/storage.admin",
    "roles/storage.objectViewer",
    "roles/storage.objectAdmin",
    "roles/iam.workloadIdentityUser",
    "roles/cloudsql.client",
    "roles/pubsub.publisher",
    "roles/pubsub.subscriber",
];

/// Whether a predefined role name is one the sandbox knows (Google rejects unknown ones).
pub fn is_known_role(role: &str) -> bool {
    ROLES.iter().any(|(name, _)| *name == role) || OTHER_ROLES.contains(&role)
}

/// Whether `role` grants `permission`. Custom roles grant nothing in the sandbox.
pub fn role_grants(role: &str, permission: &str) -> bool {
    let Some((_, patterns)) = ROLES.iter().find(|(name, _)| *name == role) else {
        return false;
    };
    let mut granted = false;
    for pattern in *patterns {
        if let Some(excluded) = pattern.strip_prefix('!') {
            if matches(excluded, permission) {
                return false;
            }
        } else if matches(pattern, permission) {
            granted = true;
        }
    }
    granted
}

/// `*` alone matches all; `a.*` a prefix; `*.b` a suffix; `a.*.b` both.
fn matches(pattern: &str, permission: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == permission,
        Some((prefix, suffix)) => {
            permission.len() >= prefix.len() + suffix.len()
                && permission.starts_with(prefix)
                && permission.ends_with(suffix)
        }
    }
}

/// Whether `caller` holds `permission` through any of `policies`, counting only grants whose
/// propagation delay has passed.
pub fn holds(state: &AppState, caller: &Caller, permission: &str, policies: &[&Policy]) -> bool {
    let delay = state.settings().consistency.grant_delay_chrono();
    let now = Utc::now();
    let member = caller.member();
    policies
        .iter()
        .flat_map(|p| p.effective_roles(&member, now, delay))
        .any(|role| role_grants(role, permission))
}

/// Checks `permission` against `policies`; on denial logs the call and returns 403 naming the
/// permission and `resource`.
pub fn check(
    state: &AppState,
    caller: &Caller,
    permission: &str,
    resource: &str,
    policies: &[&Policy],
) -> Result<(), ApiError> {
    if holds(state, caller, permission, policies) {
        return Ok(());
    }
    state.log_denied(json!({
        "time": Utc::now().to_rfc3339(),
        "caller": caller.email,
        "permission": permission,
        "resource": resource,
    }));
    Err(ApiError::permission_denied(
        permission,
        resource,
        service_of_permission(permission),
    ))
}

/// Checks `permission` on a project (its IAM policy only). Unknown projects deny, as Google does.
pub fn require(
    state: &AppState,
    caller: &Caller,
    project: &str,
    permission: &str,
) -> Result<(), ApiError> {
    let policy = {
        let data = state.read();
        data.project(project).map(|p| p.policy.clone())
    };
    let resource = format!("projects/{project}");
    match policy {
        Some(policy) => check(state, caller, permission, &resource, &[&policy]),
        None => check(state, caller, permission, &resource, &[]),
    }
}

/// Checks `iam.serviceAccounts.actAs` on `sa_email`, granted by the project's policy or the
/// service account's own. Used when a Run service or job is to run as that account.
pub fn require_act_as(
    state: &AppState,
    caller: &Caller,
    project: &str,
    sa_email: &str,
) -> Result<(), ApiError> {
    let (project_policy, sa_policy) = {
        let data = state.read();
        let sa_project =
            crate::methods::project_of_email(sa_email).unwrap_or_else(|| project.to_owned());
        (
            data.project(&sa_project)
                .map(|p| p.policy.clone())
                .unwrap_or_default(),
            data.service_accounts
                .get(sa_email)
                .map(|sa| sa.policy.clone()),
        )
    };
    let resource = format!("projects/-/serviceAccounts/{sa_email}");
    let mut policies = vec![&project_policy];
    if let Some(p) = &sa_policy {
        policies.push(p);
    } else {
        // Google answers the same for a missing account, so a typo does not leak existence.
        return check(state, caller, "iam.serviceAccounts.actAs", &resource, &[]);
    }
    check(
        state,
        caller,
        "iam.serviceAccounts.actAs",
        &resource,
        &policies,
    )
}

/// The API whose permission this is, for the `ErrorInfo.domain` of a denial.
fn service_of_permission(permission: &str) -> &'static str {
    match permission.split('.').next().unwrap_or_default() {
        "iam" => "iam.googleapis.com",
        "resourcemanager" => "cloudresourcemanager.googleapis.com",
        "serviceusage" => "serviceusage.googleapis.com",
        "secretmanager" => "secretmanager.googleapis.com",
        "run" => "run.googleapis.com",
        "artifactregistry" => "artifactregistry.googleapis.com",
        "cloudbuild" => "cloudbuild.googleapis.com",
        _ => "googleapis.com",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_editor() {
        assert!(role_grants(
            "roles/owner",
            "resourcemanager.projects.setIamPolicy"
        ));
        assert!(role_grants("roles/editor", "run.services.create"));
        assert!(!role_grants(
            "roles/editor",
            "resourcemanager.projects.setIamPolicy"
        ));
        assert!(!role_grants("roles/editor", "run.services.setIamPolicy"));
    }

    #[test]
    fn narrow_roles() {
        assert!(role_grants(
            "roles/iam.serviceAccountUser",
            "iam.serviceAccounts.actAs"
        ));
        assert!(!role_grants(
            "roles/iam.serviceAccountAdmin",
            "iam.serviceAccounts.actAs"
        ));
        assert!(role_grants(
            "roles/iam.serviceAccountAdmin",
            "iam.serviceAccounts.create"
        ));
        assert!(role_grants(
            "roles/secretmanager.secretAccessor",
            "secretmanager.versions.access"
        ));
        assert!(!role_grants(
            "roles/viewer",
            "secretmanager.versions.access"
        ));
        assert!(role_grants("roles/viewer", "secretmanager.secrets.get"));
        assert!(role_grants("roles/run.developer", "run.jobs.create"));
        assert!(!role_grants(
            "roles/run.developer",
            "run.services.setIamPolicy"
        ));
        assert!(!role_grants("roles/run.invoker", "run.jobs.create"));
        assert!(!role_grants("roles/nonexistent", "run.jobs.create"));
    }

    #[test]
    fn known_roles() {
        assert!(is_known_role("roles/run.admin"));
        assert!(is_known_role("roles/logging.logWriter"));
        assert!(!is_known_role("roles/run.superuser"));
    }
}
