//! The quota-project rule of client-based APIs. Service Usage and Resource Manager check
//! enablement and quota on the *caller's* project; for a user credential that is the OAuth
//! client's project unless the request names one with `x-goog-user-project`. Google then
//! answers 403 `SERVICE_DISABLED` with `consumer: projects/764086051850` (the project of
//! gcloud's ADC client) and the text "... requires a quota project, which is not set by
//! default" (Google's "Troubleshoot ADC" page; terraform-provider-google#1538). A named quota
//! project must exist and the caller needs `serviceusage.services.use` on it
//! (`roles/serviceusage.serviceUsageConsumer`, or owner/editor), else 403 `USER_PROJECT_DENIED`.

use serde_json::json;

use crate::auth::Caller;
use crate::error::{ApiError, service_disabled_info};
use crate::methods::MethodCall;
use crate::state::AppState;

/// The number of the project of gcloud's ADC OAuth client, as Google reports it.
pub const ADC_CLIENT_PROJECT_NUMBER: &str = "764086051850";

/// APIs that bill the caller's project (client-based), among those the sandbox serves.
fn client_based(service: &str) -> bool {
    matches!(
        service,
        "serviceusage.googleapis.com" | "cloudresourcemanager.googleapis.com"
    )
}

/// Applies the rule to one call.
pub fn check(
    state: &AppState,
    caller: &Caller,
    call: &MethodCall,
    user_project: Option<&str>,
) -> Result<(), ApiError> {
    match user_project.filter(|p| !p.is_empty()) {
        Some(project) => check_user_project(state, caller, project),
        None if caller.is_user() && client_based(call.service()) => Err(missing(call.service())),
        None => Ok(()),
    }
}

fn missing(service: &str) -> ApiError {
    ApiError::new(
        403,
        "PERMISSION_DENIED",
        format!(
            "Your application is authenticating by using local Application Default \
             Credentials. The {service} API requires a quota project, which is not set by \
             default. To learn how to set your quota project, see \
             https://cloud.google.com/docs/authentication/adc-troubleshooting/user-creds ."
        ),
    )
    .with_detail(service_disabled_info(
        service,
        ADC_CLIENT_PROJECT_NUMBER,
        None,
    ))
}

fn check_user_project(state: &AppState, caller: &Caller, project: &str) -> Result<(), ApiError> {
    let policy = state.read().project(project).map(|p| p.policy.clone());
    let allowed = policy
        .is_some_and(|p| crate::authz::holds(state, caller, "serviceusage.services.use", &[&p]));
    if allowed {
        return Ok(());
    }
    Err(ApiError::new(
        403,
        "PERMISSION_DENIED",
        format!(
            "Caller does not have required permission to use project {project}. Grant the \
             caller the roles/serviceusage.serviceUsageConsumer role, or a custom role with the \
             serviceusage.services.use permission, by visiting \
             https://console.developers.google.com/iam-admin/iam/project?project={project} and \
             then retry. Propagation of the new permission may take a few minutes."
        ),
    )
    .with_detail(json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "USER_PROJECT_DENIED",
        "domain": "googleapis.com",
        "metadata": { "consumer": format!("projects/{project}"), "service": "serviceusage.googleapis.com" },
    })))
}
