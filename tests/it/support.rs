//! What tests of several areas do to the sandbox as its operator: project grants, the
//! sandbox's own control and inspection routes.

use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
use bootstrap_gcp::{GcpHttp, iam};
use bootstrap_spec::ids::{AccountId, ProjectId, ServiceAccountEmail};
use serde_json::Value;
use testkit::World;

/// Adds `member` to `role` on `project`'s policy (read-modify-write, as a foreign writer or
/// an administrator does).
pub async fn grant(http: &GcpHttp, project: &ProjectId, role: &str, member: &str) {
    policy::read_modify_write(
        http,
        &PolicyTarget::Project(project.clone()),
        RmwOptions::default(),
        |p| policy::add_member(p, role, member),
    )
    .await
    .unwrap_or_else(|e| panic!("grant {role} to {member}: {e}"));
}

/// A new service account `account` (shown as `display`) of `project` holding `role` on the
/// project.
pub async fn account_with_role(
    w: &World,
    project: &str,
    account: &str,
    display: &str,
    role: &str,
) -> ServiceAccountEmail {
    let http = w.operator_http().await;
    let project = ProjectId::parse(project).unwrap();
    let account = AccountId::parse(account).unwrap();
    iam::create_service_account(&http, &project, &account, Some(display), None)
        .await
        .unwrap_or_else(|e| panic!("create {account}: {e}"));
    let email = ServiceAccountEmail::for_account(&account, &project);
    grant(&http, &project, role, &email.member()).await;
    email
}

/// POSTs a sandbox control route (`/_sandbox/...`) and returns its JSON answer.
pub async fn control(w: &World, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", w.sandbox.url))
        .json(&body)
        .send()
        .await
        .expect("sandbox control call");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.expect("control JSON")
}

/// GETs a sandbox inspection route (`/_sandbox/calls`, `/_sandbox/denied`) as JSON.
pub async fn inspect(w: &World, path: &str) -> Value {
    reqwest::get(format!("{}{path}", w.sandbox.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
