//! Service Usage v1: services get/list/batchGet and enable/disable/batchEnable as Operations.
//! Enabling takes effect when the call is accepted (the Operation only reports it).

use serde_json::{Value, json};

use crate::authz;
use crate::error::{ApiError, ApiResult, service_title};
use crate::faults;
use crate::google::{Ctx, body_strings, paginate};
use crate::methods::MethodCall;
use crate::operations::{self, Outcome};
use crate::state::Project;

/// Services the sandbox knows (others are "not found or permission denied", as on Google).
pub const CATALOG: &[&str] = &[
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "serviceusage.googleapis.com",
    "storage.googleapis.com",
];

fn service_json(project: &Project, service: &str) -> Value {
    let state = if project.enabled_services.contains(service) {
        "ENABLED"
    } else {
        "DISABLED"
    };
    json!({
        "name": format!("projects/{}/services/{service}", project.number),
        "parent": format!("projects/{}", project.number),
        "config": { "name": service, "title": service_title(service) },
        "state": state,
    })
}

fn unknown_service(services: &[&str]) -> ApiError {
    ApiError::new(
        403,
        "PERMISSION_DENIED",
        format!(
            "Not found or permission denied for service(s): {}.",
            services.join(", ")
        ),
    )
    .with_detail(json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "SERVICE_CONFIG_NOT_FOUND_OR_PERMISSION_DENIED",
        "domain": "serviceusage.googleapis.com",
        "metadata": { "services": services.join(",") },
    }))
}

fn project_of(ctx: &Ctx, id: &str) -> ApiResult<Project> {
    ctx.state.read().project(id).cloned().ok_or_else(|| {
        ApiError::new(
            403,
            "PERMISSION_DENIED",
            format!("Permission denied to access project {id}."),
        )
    })
}

/// Handles one Service Usage call.
pub fn handle(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    if call.id == "serviceusage.operations.get" {
        return operations::get(&ctx.state, &format!("operations/{}", call.params[0]));
    }
    if call.params[0] != "projects" {
        return Err(ApiError::invalid_argument(
            "The sandbox only has projects as service consumers.",
        ));
    }
    let project_id = &call.params[1];
    let method = call.id.trim_start_matches("serviceusage.services.");
    let permission = match method {
        "get" | "batchGet" => "serviceusage.services.get",
        "list" => "serviceusage.services.list",
        "disable" => "serviceusage.services.disable",
        _ => "serviceusage.services.enable",
    };
    authz::require(&ctx.state, &ctx.caller, project_id, permission)?;
    let project = project_of(ctx, project_id)?;
    match method {
        "get" => {
            let service = call.params[2].as_str();
            if !CATALOG.contains(&service) {
                return Err(unknown_service(&[service]));
            }
            Ok(service_json(&project, service))
        }
        "batchGet" => {
            let mut services = Vec::new();
            for name in ctx.params("names") {
                let service = name.rsplit('/').next().unwrap_or_default();
                if !CATALOG.contains(&service) {
                    return Err(unknown_service(&[service]));
                }
                services.push(service_json(&project, service));
            }
            Ok(json!({ "services": services }))
        }
        "list" => {
            let filter = ctx.param("filter").unwrap_or_default().replace(' ', "");
            let services: Vec<Value> = CATALOG
                .iter()
                .map(|s| service_json(&project, s))
                .filter(|s| match filter.as_str() {
                    "state:ENABLED" => s["state"] == "ENABLED",
                    "state:DISABLED" => s["state"] == "DISABLED",
                    _ => true,
                })
                .collect();
            let (page, next) = paginate(&services, ctx, 50)?;
            let mut out = json!({});
            if !page.is_empty() {
                out["services"] = json!(page);
            }
            if let Some(next) = next {
                out["nextPageToken"] = json!(next);
            }
            Ok(out)
        }
        "enable" | "disable" => {
            let service = call.params[2].clone();
            if !CATALOG.contains(&service.as_str()) {
                return Err(unknown_service(&[&service]));
            }
            let enable = method == "enable";
            let response_type = if enable {
                "EnableServiceResponse"
            } else {
                "DisableServiceResponse"
            };
            change(ctx, &project, &[service], enable, |project, services| {
                json!({
                    "@type": format!("type.googleapis.com/google.api.serviceusage.v1.{response_type}"),
                    "service": service_json(project, &services[0]),
                })
            })
        }
        "batchEnable" => {
            let ids = body_strings(&ctx.body, "serviceIds");
            if ids.is_empty() || ids.len() > 20 {
                return Err(ApiError::invalid_argument(
                    "serviceIds must name between 1 and 20 services.",
                ));
            }
            let unknown: Vec<&str> = ids
                .iter()
                .map(String::as_str)
                .filter(|s| !CATALOG.contains(s))
                .collect();
            if !unknown.is_empty() {
                return Err(unknown_service(&unknown));
            }
            change(ctx, &project, &ids, true, |project, services| {
                json!({
                    "@type": "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse",
                    "services": services.iter().map(|s| service_json(project, s)).collect::<Vec<_>>(),
                })
            })
        }
        _ => Err(ApiError::not_found(format!(
            "Method {} is not served by this sandbox.",
            call.id
        ))),
    }
}

/// Applies an enable/disable (unless the fault injector fails the operation) and returns the
/// Operation that reports it.
fn change(
    ctx: &Ctx,
    project: &Project,
    services: &[String],
    enable: bool,
    response: impl Fn(&Project, &[String]) -> Value,
) -> ApiResult<Value> {
    let name = format!(
        "operations/acat.p2-{}-{}",
        project.number,
        uuid::Uuid::new_v4()
    );
    let metadata = json!({
        "@type": "type.googleapis.com/google.api.serviceusage.v1.OperationMetadata",
        "resourceNames": services.iter().map(|s| format!("projects/{}/services/{s}", project.number)).collect::<Vec<_>>(),
    });
    let outcome = if ctx.state.faults.operation_fails() {
        Outcome::from_error(&faults::operation_error())
    } else {
        let updated = {
            let mut data = ctx.state.write();
            let stored = data
                .project_mut(&project.id)
                .ok_or_else(|| ApiError::not_found("Project not found."))?;
            for service in services {
                if enable {
                    if stored.enabled_services.insert(service.clone()) {
                        stored
                            .enabled_at
                            .insert(service.clone(), chrono::Utc::now());
                    }
                } else {
                    stored.enabled_services.remove(service);
                }
            }
            stored.clone()
        };
        Outcome::Response(response(&updated, services))
    };
    Ok(operations::create(
        &ctx.state,
        &name,
        Some(metadata),
        Some(outcome),
    ))
}
