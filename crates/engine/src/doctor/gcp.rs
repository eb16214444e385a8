//! The Google half of doctor: credentials, the project, the plan's APIs and the permissions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bootstrap_gcp::{
    AmbientTokenSource, CredentialInfo, Endpoints, GcpError, GcpHttp, RetryPolicy,
    TokenSource as _, resourcemanager, serviceusage,
};
use bootstrap_spec::Spec;

use super::credentials;
use super::permissions::{self, ENABLE_SERVICES, Evaluation};
use super::{Check, Options, within};

/// Short retries: doctor answers quickly, and each check has its own deadline anyway.
fn retry_policy(deadline: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(2),
        deadline,
        ..RetryPolicy::default()
    }
}

/// `[credentials, project, apis, permissions]`. Errs only on an invalid endpoint URL.
pub(super) async fn run(
    spec: &Spec,
    options: &Options,
    has_api_key: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<[Check; 4]> {
    let endpoints = crate::Connections::resolve_gcp_endpoints(options.gcp_endpoint.as_deref())?;
    let (creds, http) = connect(spec, endpoints, options.deadline, env).await;
    let Some((found, http)) = http else {
        let why = "no usable Google credentials";
        return Ok([
            creds,
            Check::not_checked("project", why),
            Check::not_checked("apis", why),
            Check::not_checked("permissions", why),
        ]);
    };
    let d = options.deadline;
    let project = &spec.gcp.project;
    let apis = permissions_apis(spec, has_api_key);
    let needed = permissions::required_permissions(spec, has_api_key);
    let wanted: Vec<String> = needed.iter().map(|n| n.permission.to_string()).collect();
    let (project_check, api_states, held) = tokio::join!(
        within("project", d, project_exists(&http, spec)),
        tokio::time::timeout(d, api_states(&http, project, &apis)),
        tokio::time::timeout(
            d,
            resourcemanager::test_iam_permissions(&http, project, &wanted)
        ),
    );
    let api_states = api_states.unwrap_or_else(|_| Err(timeout_text(d)));
    let held = held
        .unwrap_or_else(|_| Err(GcpError::Config(timeout_text(d))))
        .map_err(|e| e.to_string());
    let disabled: Option<Vec<String>> = api_states.as_ref().ok().map(|states| {
        states
            .iter()
            .filter(|(_, on)| !on)
            .map(|(a, _)| a.clone())
            .collect()
    });
    let evaluation = held
        .as_ref()
        .ok()
        .map(|h| permissions::evaluate(&needed, h, disabled.as_ref().map(|d| !d.is_empty())));
    let member = credentials::member(&found);
    let apis_check = apis_check(spec, &apis, api_states, evaluation.as_ref());
    let perms_check = permissions_check(spec, member.as_deref(), held.map(|_| evaluation));
    Ok([creds, project_check, apis_check, perms_check])
}

fn timeout_text(d: Duration) -> String {
    format!("no answer within {}", super::seconds(d))
}

fn permissions_apis(spec: &Spec, has_api_key: bool) -> Vec<String> {
    crate::planner::gcp::required_apis(spec, has_api_key)
}

/// Finds the credentials and proves them by fetching a token.
async fn connect(
    spec: &Spec,
    endpoints: Endpoints,
    deadline: Duration,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Check, Option<(CredentialInfo, GcpHttp)>) {
    let hint_login = Some(
        "run `gcloud auth application-default login`, or point GOOGLE_APPLICATION_CREDENTIALS \
         (or --credentials-file) at a credentials file"
            .to_string(),
    );
    let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let options = crate::context::discover_options(spec);
    let discovery = AmbientTokenSource::discover_in(&options, &endpoints, env, home.as_deref());
    let tokens = match tokio::time::timeout(deadline, discovery).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return (Check::fail("credentials", e.to_string(), hint_login), None),
        Err(_) => {
            let detail = format!("looking for credentials: {}", timeout_text(deadline));
            return (Check::fail("credentials", detail, hint_login), None);
        }
    };
    let info = tokens.info().clone();
    let who = credentials::describe(&info);
    // A token proves the credentials are accepted, not merely present.
    let refused_hint = if info.chain.is_empty() {
        hint_login
    } else {
        Some(format!(
            "the source credential needs roles/iam.serviceAccountTokenCreator on {}",
            info.acting()
        ))
    };
    match tokio::time::timeout(deadline, tokens.token()).await {
        Ok(Ok(_token)) => {}
        Ok(Err(e)) => {
            let detail = format!("{who}\nno access token: {e}");
            return (Check::fail("credentials", detail, refused_hint), None);
        }
        Err(_) => {
            let detail = format!("{who}\nno access token: {}", timeout_text(deadline));
            return (Check::fail("credentials", detail, refused_hint), None);
        }
    }
    let http = match GcpHttp::new(endpoints, Arc::new(tokens), retry_policy(deadline)) {
        Ok(h) => h,
        Err(e) => return (Check::fail("credentials", e.to_string(), None), None),
    };
    (Check::pass("credentials", who), Some((info, http)))
}

async fn project_exists(http: &GcpHttp, spec: &Spec) -> Check {
    let project = &spec.gcp.project;
    let hint = Some(format!(
        "check `gcp.project` in {} (`gcloud projects list` shows the projects you can see)",
        spec.source.display()
    ));
    match resourcemanager::get_project(http, project).await {
        Ok(Some(p)) => match p.lifecycle_state.as_deref() {
            None | Some("ACTIVE") => Check::pass("project", format!("{project} exists")),
            Some(state) => {
                Check::fail("project", format!("{project} is {state}, not ACTIVE"), hint)
            }
        },
        Ok(None) => Check::fail("project", format!("{project} does not exist"), hint),
        Err(e @ GcpError::PermissionDenied { .. }) => Check::fail(
            "project",
            format!("{project} cannot be read (it may not exist): {e}"),
            hint,
        ),
        Err(e) => Check::fail("project", e.to_string(), None),
    }
}

/// (api, enabled) for each API of the plan, read concurrently.
async fn api_states(
    http: &GcpHttp,
    project: &bootstrap_spec::ids::ProjectId,
    apis: &[String],
) -> Result<Vec<(String, bool)>, String> {
    let reads = apis.iter().map(|api| async move {
        serviceusage::is_enabled(http, project, api)
            .await
            .map(|on| (api.clone(), on))
            .map_err(|e| e.to_string())
    });
    futures::future::try_join_all(reads).await
}

fn apis_check(
    spec: &Spec,
    apis: &[String],
    states: Result<Vec<(String, bool)>, String>,
    evaluation: Option<&Evaluation>,
) -> Check {
    let states = match states {
        Ok(s) => s,
        Err(e) => return Check::fail("apis", e, None),
    };
    let disabled: Vec<&str> = states
        .iter()
        .filter(|(_, on)| !on)
        .map(|(a, _)| a.as_str())
        .collect();
    if disabled.is_empty() {
        return Check::pass(
            "apis",
            format!("all {} enabled: {}", apis.len(), apis.join(", ")),
        );
    }
    let list = disabled.join(", ");
    let cannot_enable =
        evaluation.is_some_and(|e| e.missing.iter().any(|n| n.permission == ENABLE_SERVICES));
    if cannot_enable {
        Check::fail(
            "apis",
            format!(
                "disabled: {list}; apply would enable them, but may not ({ENABLE_SERVICES} is missing)"
            ),
            Some(format!(
                "ask an owner to run: gcloud services enable {} --project {}",
                disabled.join(" "),
                spec.gcp.project
            )),
        )
    } else {
        Check::pass("apis", format!("disabled: {list} (apply enables them)"))
    }
}

/// `held`: the evaluation when `testIamPermissions` answered, else its error.
fn permissions_check(
    spec: &Spec,
    member: Option<&str>,
    held: Result<Option<Evaluation>, String>,
) -> Check {
    let e = match held {
        Ok(Some(e)) => e,
        Ok(None) => return Check::fail("permissions", "no answer", None),
        Err(err) => return Check::fail("permissions", err, None),
    };
    if e.missing.is_empty() {
        return Check::pass(
            "permissions",
            format!(
                "all {} permissions apply needs are held",
                e.needed - e.excused.len()
            ),
        );
    }
    let names: Vec<&str> = e.missing.iter().map(|n| n.permission).collect();
    let member = member.unwrap_or("MEMBER");
    let mut hint = String::from("grant the roles that carry them:");
    for (role, perms) in e.by_role() {
        hint.push_str(&format!(
            "\n  {role} ({})\n    gcloud projects add-iam-policy-binding {} --member={member} --role={role}",
            perms.join(", "),
            spec.gcp.project,
        ));
    }
    Check::fail(
        "permissions",
        format!(
            "missing {} of {}: {}",
            names.len(),
            e.needed,
            names.join(", ")
        ),
        Some(hint),
    )
}
