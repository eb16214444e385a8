//! IAM policies of Cloud Run services and jobs (`:getIamPolicy`, `:setIamPolicy`,
//! `:testIamPermissions`), for v2 (`v2/projects/{p}/locations/{l}/services/{s}:...`) and v1
//! (`v1/projects/{p}/locations/{l}/services/{s}:...`, the form gcloud uses). Both versions
//! address the same resource and share one policy, as on Google.
//!
//! A resource's policy starts empty (Google's `{"etag": "ACAB"}` for a fresh service); a caller
//! holds a permission on it through the project's policy or the resource's own, so
//! `roles/run.invoker` granted on one service is seen by `testIamPermissions` on that service
//! only. `allUsers` / `allAuthenticatedUsers` are valid members (that is how
//! `--allow-unauthenticated` is written).

use chrono::Utc;
use serde_json::{Value, json};

use super::handlers::{Req, job_name};
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::policy::{self, Policy};

/// Which kind of Run resource a policy call addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    Job,
    WorkerPool,
}

impl Kind {
    fn permission_prefix(self) -> &'static str {
        match self {
            Kind::Service => "run.services",
            Kind::Job => "run.jobs",
            // Google's permission names are lower case: `run.workerpools.get` (run.v2.json,
            // `workerPools.patch.allowMissing`).
            Kind::WorkerPool => "run.workerpools",
        }
    }
}

/// Serves `run.projects.locations.{services,jobs}.{get,set,test}IamPolicy/Permissions`.
pub(crate) fn handle(req: &Req, method: &str) -> ApiResult<Value> {
    let (kind, verb) = match method.split_once('.') {
        Some(("services", verb)) => (Kind::Service, verb),
        Some(("jobs", verb)) => (Kind::Job, verb),
        Some(("workerPools", verb)) => (Kind::WorkerPool, verb),
        _ => return Err(ApiError::not_found(format!("Method {method} not found."))),
    };
    let (name, key) = resource(req, kind)?;
    let project_policy = project_policy(req);
    let own = req
        .state
        .run
        .store()
        .policies
        .get(&key)
        .cloned()
        .unwrap_or_else(empty_policy);
    let prefix = kind.permission_prefix();
    match verb {
        // Reading and writing a policy each take the permission named after the method.
        "getIamPolicy" | "setIamPolicy" => {
            let permission = format!("{prefix}.{verb}");
            authz::check(
                &req.state,
                &req.caller,
                &permission,
                &name,
                &[&project_policy, &own],
            )?;
            if verb == "getIamPolicy" {
                Ok(own.to_json())
            } else {
                set(req, &key, own)
            }
        }
        "testIamPermissions" => {
            let held: Vec<String> = crate::google::requested_permissions(&req.body)
                .into_iter()
                .filter(|p| authz::holds(&req.state, &req.caller, p, &[&project_policy, &own]))
                .collect();
            Ok(if held.is_empty() {
                json!({})
            } else {
                json!({ "permissions": held })
            })
        }
        other => Err(ApiError::not_found(format!("Method {other} not found."))),
    }
}

/// The policy of the request's project (empty if the project has none), the one every Run
/// resource's own policy adds to.
pub(super) fn project_policy(req: &Req) -> Policy {
    // `parent()` reads the state itself: resolve it before taking the (non-reentrant) lock.
    let project = req.parent().project;
    let data = req.state.read();
    data.project(&project)
        .map(|p| p.policy.clone())
        .unwrap_or_default()
}

/// A policy never written: no bindings, Google's etag of an empty policy (`ACAB`).
fn empty_policy() -> Policy {
    Policy {
        etag: "ACAB".into(),
        ..Policy::default()
    }
}

/// The resource's full name and the key of its policy. The key carries the resource's uid, so a
/// service deleted and made again under the same name starts with an empty policy, as on Google.
fn resource(req: &Req, kind: Kind) -> ApiResult<(String, String)> {
    let id = req.call.params.get(2).cloned().unwrap_or_default();
    let parent = req.parent();
    let store = req.state.run.store();
    let (name, uid) = match kind {
        Kind::Service => {
            let name = format!("{}/services/{id}", parent.name());
            let uid = store.services.get(&name).map(|s| s.meta.uid.clone());
            (name, uid)
        }
        Kind::Job => {
            let name = job_name(&parent, &id);
            let uid = store.jobs.get(&name).map(|j| j.meta.uid.clone());
            (name, uid)
        }
        Kind::WorkerPool => {
            let name = format!("{}/workerPools/{id}", parent.name());
            let uid = store.worker_pools.get(&name).map(|w| w.meta.uid.clone());
            (name, uid)
        }
    };
    drop(store);
    match uid {
        Some(uid) => Ok((name.clone(), policy_key(&name, &uid))),
        None => {
            // Authorization first, so that a denied caller learns nothing about existence.
            req.require(&format!("{}.getIamPolicy", kind.permission_prefix()))?;
            Err(ApiError::not_found(format!(
                "Resource '{name}' was not found"
            )))
        }
    }
}

/// The key of a resource's policy in the store.
pub(crate) fn policy_key(name: &str, uid: &str) -> String {
    format!("{name}#{uid}")
}

fn set(req: &Req, key: &str, current: Policy) -> ApiResult<Value> {
    let (incoming, update_audit) = policy::parse_set_request(&req.body)?;
    if let Some(etag) = &incoming.etag
        && !policy::etag_matches(etag, &current.etag)
    {
        return Err(ApiError::aborted(
            "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
        ));
    }
    {
        let data = req.state.read();
        let consistency = req.state.settings().consistency;
        for binding in &incoming.bindings {
            for member in &binding.members {
                let already = current.bindings.iter().any(|b| b.members.contains(member));
                if !already
                    && let Some(err) = crate::iam::member_problem(&data, member, &consistency)
                {
                    return Err(err);
                }
            }
        }
    }
    let mut next = current;
    next.replace(incoming, update_audit, Utc::now());
    let out = next.to_json();
    req.state.run.store().policies.insert(key.to_owned(), next);
    req.state.mark_dirty();
    Ok(out)
}

/// Forgets a deleted resource's policy.
pub(crate) fn forget(req: &Req, name: &str, uid: &str) {
    req.state
        .run
        .store()
        .policies
        .remove(&policy_key(name, uid));
}
