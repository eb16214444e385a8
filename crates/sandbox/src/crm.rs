//! Resource Manager v1: projects get/list and the project IAM policy.

use serde_json::{Value, json};

use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::google::Ctx;
use crate::iam;
use crate::methods::MethodCall;
use crate::policy;
use crate::state::Project;

fn project_json(p: &Project) -> Value {
    json!({
        "projectNumber": p.number,
        "projectId": p.id,
        "lifecycleState": "ACTIVE",
        "name": p.id,
        "createTime": p.create_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// Handles one Resource Manager call.
pub fn handle(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let method = call.id.trim_start_matches("cloudresourcemanager.projects.");
    if method == "list" {
        let data = ctx.state.read();
        let projects: Vec<Value> = data
            .projects
            .values()
            .filter(|p| {
                authz::holds(
                    &ctx.state,
                    &ctx.caller,
                    "resourcemanager.projects.get",
                    &[&p.policy],
                )
            })
            .map(project_json)
            .collect();
        return Ok(if projects.is_empty() {
            json!({})
        } else {
            json!({ "projects": projects })
        });
    }
    let project = &call.params[0];
    match method {
        "get" => {
            authz::require(
                &ctx.state,
                &ctx.caller,
                project,
                "resourcemanager.projects.get",
            )?;
            let data = ctx.state.read();
            data.project(project)
                .map(project_json)
                .ok_or_else(|| not_found(project))
        }
        "getIamPolicy" => {
            authz::require(
                &ctx.state,
                &ctx.caller,
                project,
                "resourcemanager.projects.getIamPolicy",
            )?;
            let data = ctx.state.read();
            data.project(project)
                .map(|p| p.policy.to_json())
                .ok_or_else(|| not_found(project))
        }
        "setIamPolicy" => {
            authz::require(
                &ctx.state,
                &ctx.caller,
                project,
                "resourcemanager.projects.setIamPolicy",
            )?;
            let (incoming, audit) = policy::parse_set_request(&ctx.body)?;
            let consistency = ctx.state.settings().consistency;
            let mut data = ctx.state.write();
            iam::set_policy_in(&mut data, &consistency, incoming, audit, |d| {
                d.project_mut(project).map(|p| &mut p.policy)
            })
        }
        "testIamPermissions" => {
            let policy = ctx.state.read().project(project).map(|p| p.policy.clone());
            match policy {
                Some(policy) => Ok(iam::test_permissions(ctx, &[&policy])),
                None => Err(not_found(project)),
            }
        }
        _ => Err(ApiError::not_found(format!(
            "Method {} is not served by this sandbox.",
            call.id
        ))),
    }
}

/// Google answers 403 for projects that do not exist, so callers cannot probe for them.
fn not_found(project: &str) -> ApiError {
    ApiError::new(
        403,
        "PERMISSION_DENIED",
        format!("The caller does not have permission (project {project} may not exist)."),
    )
}
