//! The IAM permissions `plan`/`apply`/`destroy` need on the project, derived from the spec alone,
//! each with the predefined role that grants it (for the hint), and the pure evaluation of a
//! `testIamPermissions` answer against them.

use std::collections::{BTreeMap, BTreeSet};

use bootstrap_spec::{KeyMode, Spec};
use serde::Serialize;

/// One permission the tool's calls need, why, and a predefined role that grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Needed {
    /// The IAM permission, e.g. `iam.serviceAccounts.create`.
    pub permission: &'static str,
    /// A predefined role that grants it (the narrowest usual one), for the hint.
    pub role: &'static str,
    /// The kind of step that needs it, e.g. `service account`.
    pub step: &'static str,
}

/// Only needed when one of the plan's APIs is disabled (apply enables it).
pub const ENABLE_SERVICES: &str = "serviceusage.services.enable";

const SERVICE_USAGE_ADMIN: &str = "roles/serviceusage.serviceUsageAdmin";
const SERVICE_USAGE_VIEWER: &str = "roles/serviceusage.serviceUsageViewer";
const SA_ADMIN: &str = "roles/iam.serviceAccountAdmin";
const KEY_ADMIN: &str = "roles/iam.serviceAccountKeyAdmin";
const PROJECT_IAM_ADMIN: &str = "roles/resourcemanager.projectIamAdmin";
const RUN_ADMIN: &str = "roles/run.admin";
const SA_USER: &str = "roles/iam.serviceAccountUser";
const SECRET_ADMIN: &str = "roles/secretmanager.admin";
const REGISTRY_ADMIN: &str = "roles/artifactregistry.admin";
const BUILDS_EDITOR: &str = "roles/cloudbuild.builds.editor";
const LOGS_VIEWER: &str = "roles/logging.viewer";

/// A secret's life: created, read back, given a version, shared with one account, deleted.
const SECRET_PERMISSIONS: [&str; 7] = [
    "secretmanager.secrets.create",
    "secretmanager.secrets.get",
    "secretmanager.secrets.delete",
    "secretmanager.versions.add",
    "secretmanager.versions.access",
    "secretmanager.secrets.getIamPolicy",
    "secretmanager.secrets.setIamPolicy",
];

fn need(permission: &'static str, role: &'static str, step: &'static str) -> Needed {
    Needed {
        permission,
        role,
        step,
    }
}

/// Every permission on the project that observing, applying and destroying `spec` can use.
/// `has_api_key`: a Prefect API key is configured, so the worker's key goes to Secret Manager.
/// Sorted by permission, no duplicates.
pub fn required_permissions(spec: &Spec, has_api_key: bool) -> Vec<Needed> {
    let mut out = vec![
        // Observe reads every API's state; apply enables the disabled ones.
        need("serviceusage.services.get", SERVICE_USAGE_VIEWER, "APIs"),
        need(ENABLE_SERVICES, SERVICE_USAGE_ADMIN, "APIs"),
        need("iam.serviceAccounts.get", SA_ADMIN, "service account"),
        need("iam.serviceAccounts.create", SA_ADMIN, "service account"),
        need("iam.serviceAccounts.update", SA_ADMIN, "service account"),
        need("iam.serviceAccounts.delete", SA_ADMIN, "service account"),
        // Observe reads the account's own policy whatever the mode.
        need(
            "iam.serviceAccounts.getIamPolicy",
            SA_ADMIN,
            "service account",
        ),
        // Keys are listed (orphans, rotation) and deleted in every key mode.
        need("iam.serviceAccountKeys.list", KEY_ADMIN, "key"),
        need("iam.serviceAccountKeys.delete", KEY_ADMIN, "key"),
        need(
            "resourcemanager.projects.getIamPolicy",
            PROJECT_IAM_ADMIN,
            "project roles",
        ),
        need(
            "resourcemanager.projects.setIamPolicy",
            PROJECT_IAM_ADMIN,
            "project roles",
        ),
    ];
    let sa = &spec.service_account;
    if sa.key == KeyMode::Json {
        out.push(need("iam.serviceAccountKeys.create", KEY_ADMIN, "key"));
    }
    if sa.least_privilege {
        out.push(need(
            "iam.serviceAccounts.setIamPolicy",
            SA_ADMIN,
            "service account roles",
        ));
    }
    if let Some(worker) = &spec.worker {
        for p in [
            "run.services.create",
            "run.services.get",
            "run.services.update",
            "run.services.delete",
            "run.operations.get",
        ] {
            out.push(need(p, RUN_ADMIN, "worker service"));
        }
        if worker.kind == bootstrap_spec::WorkerKind::WorkerPool {
            for p in [
                "run.workerpools.create",
                "run.workerpools.get",
                "run.workerpools.update",
                "run.workerpools.delete",
            ] {
                out.push(need(p, RUN_ADMIN, "worker pool"));
            }
        }
        if worker.scale_to_zero.is_some() {
            // The waker: its run.developer grant on the pool, and its service, whose invocation
            // is not IAM-checked (`invokerIamDisabled` needs run.services.setIamPolicy: Cloud
            // Run's access control docs), and its shared secret, with or without an API key.
            for p in [
                "run.workerpools.getIamPolicy",
                "run.workerpools.setIamPolicy",
                "run.services.setIamPolicy",
            ] {
                out.push(need(p, RUN_ADMIN, "scale to zero"));
            }
            for p in SECRET_PERMISSIONS {
                out.push(need(p, SECRET_ADMIN, "scale to zero"));
            }
        }
        // Deploying a service that runs as our account is acting as it.
        out.push(need("iam.serviceAccounts.actAs", SA_USER, "worker service"));
        if has_api_key {
            for p in SECRET_PERMISSIONS {
                out.push(need(p, SECRET_ADMIN, "API key secret"));
            }
        }
    }
    let builds = spec.deployments.iter().any(|d| d.build.is_some())
        || spec.worker.as_ref().is_some_and(|w| w.build.is_some());
    if builds {
        // The image repository: observed, created (or adopted) with a label, the build's and
        // the service account's roles on it edited, deleted by destroy when it is ours.
        for p in [
            "artifactregistry.repositories.get",
            "artifactregistry.repositories.create",
            "artifactregistry.repositories.delete",
            "artifactregistry.repositories.getIamPolicy",
            "artifactregistry.repositories.setIamPolicy",
        ] {
            out.push(need(p, REGISTRY_ADMIN, "image repository"));
        }
        // Observe finds a built image by its source's digest in the repository.
        for p in [
            "artifactregistry.dockerimages.get",
            "artifactregistry.dockerimages.list",
        ] {
            out.push(need(p, REGISTRY_ADMIN, "image build"));
        }
        // Cloud Run's `builds:submit` (Cloud Run's IAM permissions: `run.builds.create`), then
        // Cloud Build's operation, build and default build account reads.
        out.push(need("run.builds.create", RUN_ADMIN, "image build"));
        out.push(need("cloudbuild.builds.get", BUILDS_EDITOR, "image build"));
        // A failed build's log tail (`entries:list`); the build fails the same without it, with
        // less said.
        out.push(need("logging.logEntries.list", LOGS_VIEWER, "image build"));
    }
    out.sort_by_key(|n| n.permission);
    out.dedup_by_key(|n| n.permission);
    out
}

/// What a `testIamPermissions` answer means for the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// How many permissions were asked about.
    pub needed: usize,
    /// Needed and not held (excused ones left out), sorted.
    pub missing: Vec<Needed>,
    /// Not held, but not needed this time (enabling APIs when none is disabled).
    pub excused: Vec<Needed>,
}

impl Evaluation {
    /// Missing permissions grouped by the role that grants them: role -> permissions.
    pub fn by_role(&self) -> BTreeMap<&'static str, Vec<&'static str>> {
        let mut out: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
        for n in &self.missing {
            out.entry(n.role).or_default().push(n.permission);
        }
        out
    }
}

/// Compares what is needed with what is `held`. `any_api_disabled`: `Some(false)` when every
/// API of the plan is known to be enabled (then enabling is not needed); `None` when unknown.
pub fn evaluate(needed: &[Needed], held: &[String], any_api_disabled: Option<bool>) -> Evaluation {
    let held: BTreeSet<&str> = held.iter().map(String::as_str).collect();
    let (mut missing, mut excused) = (Vec::new(), Vec::new());
    for n in needed.iter().filter(|n| !held.contains(n.permission)) {
        if n.permission == ENABLE_SERVICES && any_api_disabled == Some(false) {
            excused.push(*n);
        } else {
            missing.push(*n);
        }
    }
    Evaluation {
        needed: needed.len(),
        missing,
        excused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = "version: 1
gcp:
  project: my-project
  region: us-central1
service_account:
  name: prefect-sa
  roles: [roles/run.admin]
  key: json
prefect:
  api_url: http://127.0.0.1:4200/api
credentials_block:
  name: gcp-creds
work_pool:
  name: pool
  type: cloud-run-v2
worker:
  service: prefect-worker
  image: prefecthq/prefect:3-latest
";

    fn spec(text: &str) -> Spec {
        match bootstrap_spec::load_str(text, "t.yaml", &|_| None) {
            Ok(s) => s,
            Err(d) => panic!("test plan does not load: {d}"),
        }
    }

    fn names(v: &[Needed]) -> Vec<&'static str> {
        v.iter().map(|n| n.permission).collect()
    }

    #[test]
    fn worker_with_api_key_needs_run_actas_and_secret_manager() {
        let all = required_permissions(&spec(GUIDE), true);
        let p = names(&all);
        for wanted in [
            "run.services.create",
            "run.services.delete",
            "iam.serviceAccounts.actAs",
            "iam.serviceAccountKeys.create",
            "secretmanager.versions.add",
            "secretmanager.secrets.setIamPolicy",
            "resourcemanager.projects.setIamPolicy",
            ENABLE_SERVICES,
        ] {
            assert!(p.contains(&wanted), "{wanted} missing from {p:?}");
        }
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(p, sorted, "sorted and unique");
        let actas = all
            .iter()
            .find(|n| n.permission == "iam.serviceAccounts.actAs");
        assert_eq!(actas.map(|n| n.role), Some("roles/iam.serviceAccountUser"));
    }

    #[test]
    fn no_api_key_no_secret_manager_and_keyless_no_key_create() {
        let text = GUIDE.replace("key: json", "key: none");
        let p = names(&required_permissions(&spec(&text), false));
        assert!(!p.iter().any(|n| n.starts_with("secretmanager.")), "{p:?}");
        assert!(!p.contains(&"iam.serviceAccountKeys.create"), "{p:?}");
        assert!(p.contains(&"iam.serviceAccountKeys.list"), "{p:?}");
        assert!(!p.contains(&"iam.serviceAccounts.setIamPolicy"), "{p:?}");
    }

    #[test]
    fn no_worker_no_run_and_least_privilege_sets_sa_policy() {
        let text = GUIDE
            .split("worker:")
            .next()
            .unwrap_or_default()
            .replace("  key: json", "  key: json\n  least_privilege: true");
        let p = names(&required_permissions(&spec(&text), true));
        assert!(!p.iter().any(|n| n.starts_with("run.")), "{p:?}");
        assert!(!p.contains(&"iam.serviceAccounts.actAs"), "{p:?}");
        assert!(!p.iter().any(|n| n.starts_with("secretmanager.")), "{p:?}");
        assert!(p.contains(&"iam.serviceAccounts.setIamPolicy"), "{p:?}");
    }

    #[test]
    fn evaluation_groups_missing_by_role_and_excuses_enable_when_all_enabled() {
        let needed = required_permissions(&spec(GUIDE), false);
        let held: Vec<String> = needed
            .iter()
            .map(|n| n.permission.to_string())
            .filter(|p| !p.starts_with("run.services.") && p != ENABLE_SERVICES)
            .collect();

        let e = evaluate(&needed, &held, Some(false));
        assert_eq!(e.needed, needed.len());
        assert_eq!(names(&e.excused), vec![ENABLE_SERVICES]);
        let by_role = e.by_role();
        assert_eq!(by_role.keys().copied().collect::<Vec<_>>(), vec![RUN_ADMIN]);
        assert_eq!(by_role[RUN_ADMIN].len(), 4);

        // Unknown or some disabled: enabling is needed.
        for state in [None, Some(true)] {
            let e = evaluate(&needed, &held, state);
            assert!(names(&e.missing).contains(&ENABLE_SERVICES));
            assert!(e.excused.is_empty());
        }

        let all: Vec<String> = needed.iter().map(|n| n.permission.to_string()).collect();
        assert!(evaluate(&needed, &all, None).missing.is_empty());
    }

    /// Builds (a deployment's `build:`, or the embedded worker's image built from this binary)
    /// add the repository's, the build's and the log tail's permissions; a plan without one
    /// asks for none of them.
    #[test]
    fn builds_need_the_repository_build_and_log_permissions() {
        let build = GUIDE.to_owned()
            + "deployments:
  - name: d
    flow: f
    entrypoint: flow.py:f
    build:
      context: .
      repository: flows
";
        let with = required_permissions(&spec(&build), false);
        let p = names(&with);
        for wanted in [
            "artifactregistry.repositories.create",
            "artifactregistry.repositories.setIamPolicy",
            "artifactregistry.dockerimages.list",
            "run.builds.create",
            "cloudbuild.builds.get",
            "logging.logEntries.list",
        ] {
            assert!(p.contains(&wanted), "{wanted} missing: {p:?}");
        }
        let role = |perm: &str| with.iter().find(|n| n.permission == perm).map(|n| n.role);
        assert_eq!(
            role("artifactregistry.repositories.create"),
            Some(REGISTRY_ADMIN)
        );
        assert_eq!(role("cloudbuild.builds.get"), Some(BUILDS_EDITOR));

        let without = names(&required_permissions(&spec(GUIDE), false));
        assert!(
            !without.iter().any(|n| n.starts_with("artifactregistry.")
                || n.starts_with("cloudbuild.")
                || n.starts_with("logging.")
                || *n == "run.builds.create"),
            "{without:?}"
        );
    }

    /// Scale to zero adds the pool's and the waker service's policies and the waker's secret,
    /// even with no Prefect API key.
    #[test]
    fn scale_to_zero_needs_the_pool_policy_the_waker_service_policy_and_a_secret() {
        let text = GUIDE.replace(
            "  image: prefecthq/prefect:3-latest\n",
            "  kind: worker-pool\n  image: example.com/bootstrap:1\n  runtime: embedded\n  scale_to_zero:\n    idle: 90s\n",
        );
        let with = required_permissions(&spec(&text), false);
        let p = names(&with);
        for wanted in [
            "run.workerpools.setIamPolicy",
            "run.services.setIamPolicy",
            "secretmanager.versions.add",
        ] {
            assert!(p.contains(&wanted), "{wanted} missing: {p:?}");
        }
        let without = names(&required_permissions(&spec(GUIDE), false));
        assert!(
            !without.contains(&"run.workerpools.setIamPolicy"),
            "{without:?}"
        );
        assert!(
            !without.iter().any(|n| n.starts_with("secretmanager.")),
            "{without:?}"
        );
    }
}
