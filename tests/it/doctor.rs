//! `bootstrap doctor` end to end: against a fresh GCP sandbox as its owner (all green), as a
//! service account holding only `roles/viewer` (denials with the roles to grant), and with
//! the Prefect API unreachable (a clear ✗ line, exit 1).

use bootstrap_gcp::iam;
use bootstrap_spec::ids::ProjectId;
use secrecy::ExposeSecret as _;
use serde_json::Value;
use testkit::World;
use testkit::run_in as doctor;

use crate::support::account_with_role;

const PROJECT: &str = "doctor-project";

/// A guide-shaped plan; Prefect names are unique because the server is shared.
fn plan(w: &World) -> String {
    let suffix = testkit::unique_name("doc").replace('_', "-");
    let text = format!(
        r#"version: 1
gcp:
  project: {PROJECT}
  region: us-central1
service_account:
  name: prefect-doctor
  roles: [roles/iam.serviceAccountUser, roles/run.admin]
  key: json
prefect:
  api_url: "{{{{ env.PREFECT_API_URL }}}}"
credentials_block:
  name: gcp-credentials-{suffix}
work_pool:
  name: pool-{suffix}
  type: cloud-run-v2
worker:
  service: prefect-worker
  image: prefecthq/prefect:3-latest
"#
    );
    w.plan_file("bootstrap.yaml", &text);
    text
}

/// Ports and the test's temporary directory vary from run to run.
fn redact(w: &World, text: &str) -> String {
    text.replace(&w.path().display().to_string(), "[TMP]")
}

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({filters => vec![(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]")]}, {
        insta::assert_snapshot!(name, text);
    });
}

fn checks(json: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Array(items)) => items,
        other => panic!("doctor --json is not an array: {other:?}\n{json}"),
    }
}

/// `doctor --json`'s checks of the test's plan; it exits `code`.
fn doctor_checks(w: &World, code: i32) -> Vec<Value> {
    checks(&doctor(w, &["doctor", "-f", "bootstrap.yaml", "--json"], code).stdout)
}

/// `doctor` as a user reads it, snapshotted as `name`, then its `--json` checks; both exit
/// `code`.
fn doctor_shown(w: &World, name: &str, code: i32) -> Vec<Value> {
    let r = doctor(w, &["doctor", "-f", "bootstrap.yaml"], code);
    snapshot(name, &redact(w, &r.stdout));
    doctor_checks(w, code)
}

fn check<'a>(items: &'a [Value], id: &str) -> &'a Value {
    items
        .iter()
        .find(|c| c["check"] == id)
        .unwrap_or_else(|| panic!("no `{id}` check in {items:?}"))
}

/// A check's text `name` (`detail`, `hint`), empty when it has none.
fn field<'a>(check: &'a Value, name: &str) -> &'a str {
    check[name].as_str().unwrap_or_default()
}

/// The checks `ids` failed as "not checked" (what they depend on failed first).
fn assert_not_checked(items: &[Value], ids: &[&str]) {
    for id in ids {
        let c = check(items, id);
        assert_eq!(c["ok"], false, "{c}");
        assert!(field(c, "detail").starts_with("not checked"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_on_a_fresh_sandbox_is_all_green() {
    let w = World::start(PROJECT).await;
    plan(&w);
    let items = doctor_shown(&w, "doctor_owner_all_green", 0);
    let ids: Vec<&str> = items.iter().filter_map(|c| c["check"].as_str()).collect();
    assert_eq!(ids, bootstrap_engine::doctor::CHECKS);
    for c in &items {
        assert_eq!(c["ok"], true, "{c}");
        assert!(c["hint"].is_null(), "{c}");
    }
    // A fresh project has Run disabled: a note, since apply enables it.
    let apis = field(check(&items, "apis"), "detail");
    assert!(apis.contains("run.googleapis.com"), "{apis}");
}

/// A second identity with a key and only `roles/viewer`; its key file path.
async fn viewer_key(w: &World) -> (std::path::PathBuf, String) {
    let email = account_with_role(w, PROJECT, "doctor-viewer", "viewer", "roles/viewer").await;
    let http = w.operator_http().await;
    let project = ProjectId::parse(PROJECT).unwrap();
    let key = iam::create_key(&http, &project, &email)
        .await
        .expect("a key for the viewer");
    let path = w.path().join("viewer-key.json");
    std::fs::write(&path, key.json.expose_secret()).expect("write the viewer key");
    (path, email.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_sees_missing_permissions_with_the_roles_that_grant_them() {
    let mut w = World::start_with(PROJECT, |c| {
        c.consistency = gcp_sandbox::Consistency::immediate();
    })
    .await;
    plan(&w);
    let (key_path, viewer) = viewer_key(&w).await;
    w.env.push((
        "GOOGLE_APPLICATION_CREDENTIALS".into(),
        key_path.display().to_string(),
    ));

    let items = doctor_shown(&w, "doctor_viewer_denied", 1);
    let creds = check(&items, "credentials");
    assert_eq!(creds["ok"], true);
    assert!(field(creds, "detail").contains(&format!("principal: {viewer}")));
    assert_eq!(check(&items, "project")["ok"], true);

    let perms = check(&items, "permissions");
    assert_eq!(perms["ok"], false);
    let detail = field(perms, "detail");
    for p in [
        "iam.serviceAccounts.create",
        "resourcemanager.projects.setIamPolicy",
        "run.services.create",
        "serviceusage.services.enable",
    ] {
        assert!(detail.contains(p), "{p} not reported missing: {detail}");
    }
    // Reads a viewer holds are not reported.
    assert!(!detail.contains("iam.serviceAccounts.get,"), "{detail}");
    let hint = perms["hint"].as_str().unwrap_or_default();
    for role in [
        "roles/iam.serviceAccountAdmin",
        "roles/resourcemanager.projectIamAdmin",
        "roles/run.admin",
    ] {
        assert!(hint.contains(role), "{role} not in hint: {hint}");
    }
    assert!(
        hint.contains(&format!("--member=serviceAccount:{viewer}")),
        "{hint}"
    );

    // Run is disabled and the viewer may not enable it: a failure, not a note.
    let apis = check(&items, "apis");
    assert_eq!(apis["ok"], false, "{apis}");
    assert!(
        apis["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("gcloud services enable"),
        "{apis}"
    );

    // The viewer's private key never shows.
    let key = std::fs::read_to_string(&key_path).unwrap_or_default();
    let private = serde_json::from_str::<Value>(&key).unwrap_or_default()["private_key"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.len() > 20)
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(!private.is_empty(), "the key file has a private key");
    let transcript = w.transcript.lock().map(|t| t.clone()).unwrap_or_default();
    let secrets: Vec<&str> = private.iter().map(String::as_str).collect();
    testkit::assert_no_secret(&secrets, &[("transcript", &transcript)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefect_unreachable_is_a_clear_failure() {
    let mut w = World::start(PROJECT).await;
    plan(&w);
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    w.env.push((
        "PREFECT_API_URL".into(),
        format!("http://127.0.0.1:{port}/api"),
    ));

    let items = doctor_shown(&w, "doctor_prefect_unreachable", 1);
    let api = check(&items, "prefect_api");
    assert_eq!(api["ok"], false);
    assert!(field(api, "detail").contains("cannot reach"), "{api}");
    assert_not_checked(&items, &["prefect_auth", "block_type", "job_template"]);
    // The Google half is unaffected.
    for id in ["credentials", "project", "apis", "permissions", "region"] {
        assert_eq!(check(&items, id)["ok"], true, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_credentials_fail_first_and_skip_the_google_checks() {
    let mut w = World::start(PROJECT).await;
    plan(&w);
    let missing = w.path().join("no-such-key.json");
    w.env.push((
        "GOOGLE_APPLICATION_CREDENTIALS".into(),
        missing.display().to_string(),
    ));
    let items = doctor_checks(&w, 1);
    let creds = check(&items, "credentials");
    assert_eq!(creds["ok"], false);
    let detail = field(creds, "detail");
    assert!(detail.contains("cannot be read"), "{detail}");
    assert!(field(creds, "hint").contains("gcloud auth"), "{creds}");
    assert_not_checked(&items, &["project", "apis", "permissions"]);
    // The Prefect half does not depend on Google.
    assert_eq!(check(&items, "prefect_api")["ok"], true);
}

/// A stand-in Prefect API whose `/health` is public and which refuses every other call (401),
/// as a server behind authentication does when the key is wrong.
async fn refusing_prefect() -> String {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route("/api/health", axum::routing::get(|| async { "true" }))
        .fallback(|| async {
            (
                StatusCode::UNAUTHORIZED,
                [("content-type", "application/json")],
                r#"{"detail":"Unauthorized"}"#,
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/api")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_is_reported_without_the_key() {
    let mut w = World::start(PROJECT).await;
    plan(&w);
    let key = format!("pnu_doctor{}", uuid::Uuid::new_v4().simple());
    w.env
        .push(("PREFECT_API_URL".into(), refusing_prefect().await));
    w.env.push(("PREFECT_API_KEY".into(), key.clone()));
    let items = doctor_checks(&w, 1);
    assert_eq!(check(&items, "prefect_api")["ok"], true);
    let auth = check(&items, "prefect_auth");
    assert_eq!(auth["ok"], false, "{auth}");
    let detail = field(auth, "detail");
    assert!(detail.contains("the API key sent"), "{detail}");
    assert!(detail.contains("401"), "{detail}");
    // With a key, the worker's key goes to Secret Manager: those permissions are asked about.
    let perms = field(check(&items, "permissions"), "detail");
    assert!(perms.starts_with("all 25 permissions"), "{perms}");
    let transcript = w.transcript.lock().map(|t| t.clone()).unwrap_or_default();
    testkit::assert_no_secret(&[&key], &[("transcript", &transcript)]);
}
