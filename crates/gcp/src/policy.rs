//! IAM policies (`Policy`, `Binding`, `Expr`, identical in every API here), pure edit helpers
//! that only ever touch the member they are given, and a bounded read-modify-write loop.

use std::time::{Duration, Instant};

use bootstrap_ids::{ProjectId, SecretId, ServiceAccountEmail};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, seg};
use crate::retry::RetryPolicy;

/// An IAM policy. Unknown fields (e.g. `auditConfigs`) are kept so a write never drops them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    /// Sent back on write so that a concurrent change makes the write fail with `ABORTED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default)]
    pub bindings: Vec<Binding>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One role and its members, optionally under a condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Expr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A CEL condition on a binding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Whether `member` holds `role` unconditionally.
pub fn has_member(policy: &Policy, role: &str, member: &str) -> bool {
    policy
        .bindings
        .iter()
        .any(|b| b.role == role && b.condition.is_none() && b.members.iter().any(|m| m == member))
}

/// Grants `role` to `member` unconditionally. Returns whether the policy changed. Conditional
/// bindings of the same role are left alone (they grant something narrower).
pub fn add_member(policy: &mut Policy, role: &str, member: &str) -> bool {
    if has_member(policy, role, member) {
        return false;
    }
    match policy
        .bindings
        .iter_mut()
        .find(|b| b.role == role && b.condition.is_none())
    {
        Some(b) => b.members.push(member.to_owned()),
        None => policy.bindings.push(Binding {
            role: role.to_owned(),
            members: vec![member.to_owned()],
            ..Binding::default()
        }),
    }
    true
}

/// Removes `member` from the unconditional binding of `role`; drops the binding if it becomes
/// empty. Returns whether the policy changed. Other members are never touched.
pub fn remove_member(policy: &mut Policy, role: &str, member: &str) -> bool {
    let mut changed = false;
    for b in policy
        .bindings
        .iter_mut()
        .filter(|b| b.role == role && b.condition.is_none())
    {
        let before = b.members.len();
        b.members.retain(|m| m != member);
        changed |= b.members.len() != before;
    }
    if changed {
        policy
            .bindings
            .retain(|b| !(b.role == role && b.condition.is_none() && b.members.is_empty()));
    }
    changed
}

/// The roles `member` holds unconditionally.
pub fn roles_of(policy: &Policy, member: &str) -> Vec<String> {
    policy
        .bindings
        .iter()
        .filter(|b| b.condition.is_none() && b.members.iter().any(|m| m == member))
        .map(|b| b.role.clone())
        .collect()
}

/// A resource that carries an IAM policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// The project policy (Resource Manager v1).
    Project(ProjectId),
    /// A service account's own policy (who may act as it).
    ServiceAccount {
        project: ProjectId,
        email: ServiceAccountEmail,
    },
    /// A Secret Manager secret's policy.
    Secret {
        project: ProjectId,
        secret: SecretId,
    },
    /// An Artifact Registry repository's policy.
    ArtifactRepository {
        project: ProjectId,
        region: bootstrap_ids::Region,
        repository: String,
    },
    /// A Cloud Run worker pool's policy (v2 `workerPools.{get,set}IamPolicy`).
    WorkerPool {
        project: ProjectId,
        region: bootstrap_ids::Region,
        pool: bootstrap_ids::RunWorkerPoolName,
    },
}

/// How `getIamPolicy` asks for policy version 3 (so conditional bindings come back whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyRead {
    /// A GET with `options.requestedPolicyVersion=3` (Secret Manager, Artifact Registry,
    /// Cloud Run v2).
    Get,
    /// A POST with the same query parameter and no body (iam.v1.json's
    /// `serviceAccounts.getIamPolicy`).
    PostQuery,
    /// A POST whose body is `{"options": {"requestedPolicyVersion": 3}}`
    /// (cloudresourcemanager.v1.json).
    PostBody,
}

impl PolicyTarget {
    /// The API serving the target's policy, the prefix of its method ids and the target's
    /// path (API version included). `getIamPolicy` and `setIamPolicy` (google.iam.v1.IAMPolicy)
    /// are the same pair of RPCs on each of them.
    fn resource(&self) -> (Api, &'static str, String) {
        match self {
            Self::Project(p) => (
                Api::ResourceManager,
                "cloudresourcemanager.projects",
                format!("v1/projects/{}", seg(p.as_str())),
            ),
            Self::ServiceAccount { project, email } => (
                Api::Iam,
                "iam.projects.serviceAccounts",
                crate::iam::sa_path(project, email),
            ),
            Self::Secret { project, secret } => (
                Api::SecretManager,
                "secretmanager.projects.secrets",
                crate::secretmanager::secret_path(project, secret),
            ),
            Self::ArtifactRepository {
                project,
                region,
                repository,
            } => (
                Api::ArtifactRegistry,
                "artifactregistry.projects.locations.repositories",
                format!(
                    "v1/{}",
                    crate::artifactregistry::repository_path(project, region, repository)
                ),
            ),
            Self::WorkerPool {
                project,
                region,
                pool,
            } => (
                Api::RunV2,
                "run.projects.locations.workerPools",
                crate::run_v2::resource_path_of(project, region, pool),
            ),
        }
    }

    /// Reads the policy (version 3 requested, so conditional bindings come back whole).
    pub async fn get(&self, http: &GcpHttp) -> Result<Policy, GcpError> {
        http.send(self.get_call()).await
    }

    /// Writes the policy; fails with `ABORTED` if its etag is stale.
    pub async fn set(&self, http: &GcpHttp, policy: &Policy) -> Result<Policy, GcpError> {
        http.send(self.set_call(policy)).await
    }

    fn get_call(&self) -> Call {
        const VERSION: &str = "options.requestedPolicyVersion";
        let (api, methods, path) = self.resource();
        let read = match api {
            Api::Iam => PolicyRead::PostQuery,
            Api::ResourceManager => PolicyRead::PostBody,
            _ => PolicyRead::Get,
        };
        let verb = match read {
            PolicyRead::Get => Method::GET,
            PolicyRead::PostQuery | PolicyRead::PostBody => Method::POST,
        };
        let name = format!("{methods}.getIamPolicy");
        let call = Call::new(name, verb, api, format!("{path}:getIamPolicy"));
        // A read, even when sent as a POST.
        match read {
            PolicyRead::Get => call.query(VERSION, "3"),
            PolicyRead::PostQuery => call.query(VERSION, "3").idempotent(),
            PolicyRead::PostBody => call
                .body(json!({ "options": { "requestedPolicyVersion": 3 } }))
                .idempotent(),
        }
    }

    fn set_call(&self, policy: &Policy) -> Call {
        let (api, methods, path) = self.resource();
        // `updateMask: "bindings,etag"` where the tool has always sent it: Artifact Registry's
        // SetIamPolicyRequest has no such field, and Cloud Run's default mask is the same.
        let body = match api {
            Api::ArtifactRegistry | Api::RunV2 => json!({ "policy": policy }),
            _ => json!({ "policy": policy, "updateMask": "bindings,etag" }),
        };
        let name = format!("{methods}.setIamPolicy");
        // Repeating a write with the same etag cannot overwrite a newer policy.
        Call::new(name, Method::POST, api, format!("{path}:setIamPolicy"))
            .body(body)
            .idempotent()
    }
}

/// Bounds of [`read_modify_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmwOptions {
    /// Backoff and attempt bound for redoing the cycle after `ABORTED` (a concurrent writer).
    pub retry: RetryPolicy,
    /// Opt-in: also redo the cycle on 400 "... does not exist" for this long, for members this
    /// run has just created (IAM is eventually consistent).
    pub member_grace: Option<Duration>,
}

impl Default for RmwOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy {
                max_attempts: 8,
                base_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(10),
                deadline: Duration::from_secs(120),
                ..RetryPolicy::default()
            },
            member_grace: None,
        }
    }
}

/// The result of a read-modify-write.
#[derive(Debug, Clone, PartialEq)]
pub struct RmwOutcome {
    /// Whether a write happened.
    pub changed: bool,
    /// The policy as the server holds it now.
    pub policy: Policy,
    /// Read-modify-write cycles run (1 when nothing interfered).
    pub cycles: u32,
}

/// Reads the policy, lets `edit` change it (returning whether it did), and writes it back
/// with the etag; on `ABORTED` the whole cycle is redone with jittered backoff, so edits by
/// others in between are kept. `edit` must be repeatable: it runs once per cycle on a fresh
/// read.
pub async fn read_modify_write<F>(
    http: &GcpHttp,
    target: &PolicyTarget,
    opts: RmwOptions,
    mut edit: F,
) -> Result<RmwOutcome, GcpError>
where
    F: FnMut(&mut Policy) -> bool,
{
    let started = Instant::now();
    let mut cycles = 0u32;
    loop {
        cycles += 1;
        let mut policy = target.get(http).await?;
        if !edit(&mut policy) {
            return Ok(RmwOutcome {
                changed: false,
                policy,
                cycles,
            });
        }
        if policy.bindings.iter().any(|b| b.condition.is_some()) {
            // Conditional bindings may only be written as a version 3 policy.
            policy.version = Some(3);
        }
        let err = match target.set(http, &policy).await {
            Ok(policy) => {
                return Ok(RmwOutcome {
                    changed: true,
                    policy,
                    cycles,
                });
            }
            Err(e) => e,
        };
        let delay = opts.retry.delay(cycles - 1, None, &mut rand::rng());
        let after_wait = started.elapsed() + delay;
        let again = if err.is_aborted() {
            cycles < opts.retry.max_attempts && after_wait < opts.retry.deadline
        } else if err.is_member_not_found() {
            opts.member_grace.is_some_and(|grace| after_wait < grace)
        } else {
            false
        };
        if !again {
            return Err(err);
        }
        tracing::debug!(cycles, delay_ms = delay.as_millis() as u64, error = %err, "redoing IAM read-modify-write");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    /// What each API's getIamPolicy / setIamPolicy looks like on the wire (the discovery
    /// documents' method ids, verbs and paths; version 3 asked for in the query or the body;
    /// `updateMask` where it has always been sent).
    #[test]
    fn each_target_calls_its_api_s_iam_methods() {
        let project = ProjectId::parse("my-project").unwrap();
        let region = bootstrap_ids::Region::parse("us-central1").unwrap();
        let v3 = vec![("options.requestedPolicyVersion", "3".to_owned())];
        let cases = [
            (
                PolicyTarget::Project(project.clone()),
                "cloudresourcemanager.projects",
                "v1/projects/my-project",
                Method::POST,
                true,
            ),
            (
                PolicyTarget::ServiceAccount {
                    project: project.clone(),
                    email: ServiceAccountEmail::parse("sa@my-project.iam.gserviceaccount.com")
                        .unwrap(),
                },
                "iam.projects.serviceAccounts",
                "v1/projects/my-project/serviceAccounts/sa@my-project.iam.gserviceaccount.com",
                Method::POST,
                true,
            ),
            (
                PolicyTarget::Secret {
                    project: project.clone(),
                    secret: SecretId::parse("key").unwrap(),
                },
                "secretmanager.projects.secrets",
                "v1/projects/my-project/secrets/key",
                Method::GET,
                true,
            ),
            (
                PolicyTarget::ArtifactRepository {
                    project: project.clone(),
                    region: region.clone(),
                    repository: "images".into(),
                },
                "artifactregistry.projects.locations.repositories",
                "v1/projects/my-project/locations/us-central1/repositories/images",
                Method::GET,
                false,
            ),
            (
                PolicyTarget::WorkerPool {
                    project: project.clone(),
                    region: region.clone(),
                    pool: bootstrap_ids::RunWorkerPoolName::parse("pool").unwrap(),
                },
                "run.projects.locations.workerPools",
                "v2/projects/my-project/locations/us-central1/workerPools/pool",
                Method::GET,
                false,
            ),
        ];
        let written = Policy::default();
        for (target, methods, path, get_verb, mask) in cases {
            let get = target.get_call();
            assert_eq!(get.name, format!("{methods}.getIamPolicy"));
            assert_eq!(get.method, get_verb, "{methods}");
            assert_eq!(get.path, format!("{path}:getIamPolicy"));
            assert!(get.retry.idempotent, "{methods}: a read");
            if methods == "cloudresourcemanager.projects" {
                assert!(get.query.is_empty());
                let body = get.body.unwrap();
                assert_eq!(body, json!({"options": {"requestedPolicyVersion": 3}}));
            } else {
                assert_eq!(get.query, v3, "{methods}");
                assert_eq!(get.body, None, "{methods}");
            }
            let set = target.set_call(&written);
            assert_eq!(set.name, format!("{methods}.setIamPolicy"));
            assert_eq!(set.method, Method::POST);
            assert_eq!(set.path, format!("{path}:setIamPolicy"));
            assert!(set.retry.idempotent, "{methods}: the etag guards a repeat");
            let mut body = json!({"policy": {"bindings": []}});
            if mask {
                body["updateMask"] = json!("bindings,etag");
            }
            assert_eq!(set.body, Some(body), "{methods}");
        }
    }

    #[test]
    fn add_is_idempotent_and_keeps_others() {
        let mut p = policy(
            r#"{"version":1,"etag":"BwX=","bindings":[{"role":"roles/run.admin","members":["user:a@x.com"]}],
                "auditConfigs":[{"service":"allServices"}]}"#,
        );
        assert!(add_member(
            &mut p,
            "roles/run.admin",
            "serviceAccount:s@p.iam.gserviceaccount.com"
        ));
        assert!(!add_member(
            &mut p,
            "roles/run.admin",
            "serviceAccount:s@p.iam.gserviceaccount.com"
        ));
        assert_eq!(
            p.bindings[0].members,
            vec!["user:a@x.com", "serviceAccount:s@p.iam.gserviceaccount.com"]
        );
        assert!(add_member(
            &mut p,
            "roles/iam.serviceAccountUser",
            "serviceAccount:s@p.iam.gserviceaccount.com"
        ));
        assert_eq!(p.bindings.len(), 2);
        let out = serde_json::to_value(&p).unwrap();
        assert_eq!(out["auditConfigs"][0]["service"], "allServices");
        assert_eq!(out["etag"], "BwX=");
    }

    #[test]
    fn conditional_bindings_are_not_used_for_unconditional_grants() {
        let mut p = policy(
            r#"{"bindings":[{"role":"roles/run.admin","members":["user:a@x.com"],
                "condition":{"expression":"request.time < timestamp('2030-01-01T00:00:00Z')","title":"t"}}]}"#,
        );
        assert!(!has_member(&p, "roles/run.admin", "user:a@x.com"));
        assert!(add_member(&mut p, "roles/run.admin", "user:a@x.com"));
        assert_eq!(p.bindings.len(), 2);
        assert!(remove_member(&mut p, "roles/run.admin", "user:a@x.com"));
        assert_eq!(p.bindings.len(), 1);
        assert!(
            p.bindings[0].condition.is_some(),
            "the conditional binding must survive"
        );
    }

    #[test]
    fn remove_touches_only_the_member() {
        let mut p = policy(
            r#"{"bindings":[{"role":"roles/run.admin","members":["user:a@x.com","serviceAccount:s@p.iam.gserviceaccount.com"]},
                            {"role":"roles/viewer","members":["serviceAccount:s@p.iam.gserviceaccount.com"]}]}"#,
        );
        let sa = "serviceAccount:s@p.iam.gserviceaccount.com";
        assert_eq!(roles_of(&p, sa), vec!["roles/run.admin", "roles/viewer"]);
        assert!(remove_member(&mut p, "roles/viewer", sa));
        assert_eq!(p.bindings.len(), 1, "an emptied binding is dropped");
        assert!(remove_member(&mut p, "roles/run.admin", sa));
        assert_eq!(p.bindings[0].members, vec!["user:a@x.com"]);
        assert!(!remove_member(&mut p, "roles/run.admin", sa));
        assert!(!remove_member(&mut p, "roles/absent", sa));
    }

    #[test]
    fn empty_bindings_serialize_as_an_empty_list() {
        // With updateMask "bindings,etag" an absent list and an empty list both clear; an
        // explicit list leaves no doubt.
        let p = Policy::default();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"bindings": []})
        );
    }
}
