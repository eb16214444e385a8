//! Credentials the way users and CI have them, end to end on the sandbox: each credential
//! type Google's libraries accept runs `plan`, `apply` and `destroy` (authorized_user with a
//! quota project, external_account with file-, URL- and executable-sourced subject tokens,
//! impersonated_service_account, `--impersonate-service-account`, the metadata server); a
//! user without a quota project gets the fix; impersonation without Token Creator is denied
//! with the permission named. Every run logs at trace level, and no refresh token, subject
//! token or access token may appear in what the tool prints.

use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
use bootstrap_spec::ids::{ProjectId, ServiceAccountEmail};
use serde_json::{Value, json};
use testkit::World;

use crate::support::{account_with_role, control, inspect};

const PROJECT: &str = "creds-project";
const DEPLOYER: &str = "ci-deployer";

async fn world() -> World {
    world_with(|_| {}).await
}

async fn world_with(tweak: impl FnOnce(&mut gcp_sandbox::Config)) -> World {
    bootstrap_gcp::init_crypto();
    let mut w = World::start_with(PROJECT, |c| {
        c.consistency = gcp_sandbox::Consistency::immediate();
        tweak(c);
    })
    .await;
    w.env.push(("RUST_LOG".into(), "trace".into()));
    w
}

fn plan_file(w: &World) -> String {
    let suffix = testkit::suffix("cred");
    let path = w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &suffix));
    path.display().to_string()
}

/// plan (changes pending), apply, plan (converged), destroy; `extra` are global flags.
fn cycle(w: &World, plan: &str, extra: &[&str]) {
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(extra.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |args: Vec<String>, code: i32| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| w.expect(&refs, code))
    };
    run(with(&["plan", "-f", plan, "--detailed-exitcode"]), 2);
    run(with(&["apply", "-f", plan, "--auto-approve"]), 0);
    run(with(&["plan", "-f", plan, "--detailed-exitcode"]), 0);
    run(with(&["destroy", "-f", plan, "--auto-approve"]), 0);
}

/// `doctor` of `plan`, whose credentials line names the `kind` in use; its output.
fn doctor_credentials(w: &World, plan: &str, kind: &str) -> testkit::Run {
    let doc = tokio::task::block_in_place(|| w.run(&["doctor", "-f", plan]));
    let line = format!("type: {kind}");
    assert!(doc.stdout.contains(&line), "no {line:?} in\n{}", doc.stdout);
    doc
}

/// Uses no key file: `GOOGLE_APPLICATION_CREDENTIALS` is set empty (as unset) and the home
/// directory's gcloud folder is the ADC location.
fn no_key_file(w: &mut World) {
    w.env
        .push(("GOOGLE_APPLICATION_CREDENTIALS".into(), String::new()));
    // Nothing answers on port 9: discovery must not reach a real metadata server.
    w.env
        .push(("GCE_METADATA_HOST".into(), "127.0.0.1:9".into()));
}

fn adc_path(w: &World) -> std::path::PathBuf {
    let dir = w.path().join("home/.config/gcloud");
    std::fs::create_dir_all(&dir).expect("gcloud dir");
    dir.join("application_default_credentials.json")
}

/// The deployer account (owner of the project) that CI identities impersonate.
async fn deployer(w: &World) -> ServiceAccountEmail {
    account_with_role(w, PROJECT, DEPLOYER, "CI deployer", "roles/owner").await
}

/// Lets `member` mint tokens for `sa` with `role` on the account itself.
async fn allow_on(w: &World, sa: &ServiceAccountEmail, role: &str, member: &str) {
    let http = w.operator_http().await;
    policy::read_modify_write(
        &http,
        &PolicyTarget::ServiceAccount {
            project: ProjectId::parse(PROJECT).unwrap(),
            email: sa.clone(),
        },
        RmwOptions::default(),
        |p| policy::add_member(p, role, member),
    )
    .await
    .expect("grant on the service account");
}

/// Nothing secret in anything the tool printed: refresh tokens, subject tokens, and every
/// access token the sandbox issued (impersonated and federated ones included).
fn assert_no_secret(w: &World, extra: &[String]) {
    let transcript = w.transcript.lock().unwrap().clone();
    assert!(
        transcript.contains("TRACE"),
        "the runs logged at trace level"
    );
    let mut secrets: Vec<String> = w.sandbox.state.read().tokens.keys().cloned().collect();
    secrets.extend(w.sandbox.state.read().creds.refresh_tokens.keys().cloned());
    secrets.extend(extra.iter().cloned());
    assert!(secrets.len() > 1);
    for s in secrets {
        assert!(!transcript.contains(&s), "a secret was printed: {s:.12}...");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_user_with_quota_project_plans_applies_destroys() {
    // IAM starts disabled and answers SERVICE_DISABLED for 3 s after apply enables it: apply
    // waits that out instead of failing.
    let mut w = world_with(|c| {
        c.enabled_apis = vec![
            "cloudresourcemanager.googleapis.com".into(),
            "serviceusage.googleapis.com".into(),
        ];
        c.api_enable_delay = std::time::Duration::from_secs(3);
    })
    .await;
    no_key_file(&mut w);
    let adc = control(
        &w,
        "/_sandbox/users",
        json!({"email": "dev@example.com", "roles": ["roles/owner"], "quotaProject": PROJECT}),
    )
    .await;
    std::fs::write(adc_path(&w), adc.to_string()).unwrap();
    let plan = plan_file(&w);
    cycle(&w, &plan, &[]);

    let transcript = w.transcript.lock().unwrap().clone();
    assert!(
        transcript.contains("waiting for iam.googleapis.com, enabled by this apply"),
        "apply said what it waited for"
    );
    let doc = doctor_credentials(&w, &plan, "authorized_user");
    assert!(
        doc.stdout.contains(&format!(
            "quota project: {PROJECT} (from the credential file's quota_project_id)"
        )),
        "{}",
        doc.stdout
    );
    assert!(
        doc.stdout.contains(
            "application_default_credentials.json (gcloud application-default credentials)"
        )
    );
    assert!(doc.stdout.contains("impersonation: none"));
    assert_no_secret(&w, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_quota_project_is_told_the_fix() {
    let mut w = world().await;
    no_key_file(&mut w);
    let adc = control(
        &w,
        "/_sandbox/users",
        json!({"email": "dev@example.com", "roles": ["roles/owner"]}),
    )
    .await;
    std::fs::write(adc_path(&w), adc.to_string()).unwrap();
    let plan = plan_file(&w);
    let r = tokio::task::block_in_place(|| w.expect(&["plan", "-f", &plan], 1));
    assert!(
        r.stderr
            .contains("gcloud auth application-default set-quota-project <project>"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("is not enabled"), "{}", r.stderr);
    // The same user with the flag, then with the plan key, works.
    tokio::task::block_in_place(|| w.expect(&["plan", "-f", &plan, "--quota-project", PROJECT], 0));
    let text = std::fs::read_to_string(&plan).unwrap().replace(
        "  region: us-central1\n",
        &format!("  region: us-central1\n  quota_project: {PROJECT}\n"),
    );
    std::fs::write(&plan, text).unwrap();
    tokio::task::block_in_place(|| w.expect(&["plan", "-f", &plan], 0));
    // A quota project the user may not use is Google's USER_PROJECT_DENIED, not a hang.
    let r = tokio::task::block_in_place(|| {
        w.expect(
            &["plan", "-f", &plan, "--quota-project", "someone-elses"],
            1,
        )
    });
    assert!(
        r.stderr.contains("serviceusage.services.use"),
        "{}",
        r.stderr
    );
    assert_no_secret(&w, &[]);
}

/// An external_account file for the sandbox's provider; `source` is its credential_source.
fn external_file(
    w: &World,
    audience: &str,
    sa: Option<&ServiceAccountEmail>,
    source: Value,
) -> Value {
    let mut file = json!({
        "type": "external_account",
        "audience": audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{}/v1/token", w.sandbox.url),
        "credential_source": source,
    });
    if let Some(sa) = sa {
        file["service_account_impersonation_url"] = json!(format!(
            "{}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken",
            w.sandbox.url
        ));
    }
    file
}

async fn federation(w: &World, subject: &str) -> (String, ServiceAccountEmail, String) {
    let provider = control(
        w,
        "/_sandbox/workload-identity",
        json!({"pool": "github", "provider": "actions"}),
    )
    .await;
    let audience = provider["audience"].as_str().unwrap().to_owned();
    let principal = format!("{}{subject}", provider["principalPrefix"].as_str().unwrap());
    let sa = deployer(w).await;
    allow_on(w, &sa, "roles/iam.workloadIdentityUser", &principal).await;
    let token = control(
        w,
        "/_sandbox/oidc/token",
        json!({"sub": subject, "aud": audience}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (audience, sa, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_file_sourced_exchanges_impersonates_and_applies() {
    let mut w = world().await;
    let subject = "repo:acme/infra:ref:refs/heads/main";
    let (audience, sa, token) = federation(&w, subject).await;
    let token_path = w.path().join("oidc-token");
    std::fs::write(&token_path, &token).unwrap();
    let file = external_file(&w, &audience, Some(&sa), json!({"file": token_path}));
    let creds = w.path().join("external.json");
    std::fs::write(&creds, file.to_string()).unwrap();
    w.env.push((
        "GOOGLE_APPLICATION_CREDENTIALS".into(),
        creds.display().to_string(),
    ));
    let plan = plan_file(&w);
    cycle(&w, &plan, &[]);
    let doc = doctor_credentials(&w, &plan, "external_account");
    assert!(
        doc.stdout.contains(&format!("-> {sa}")),
        "the chain ends at the deployer: {}",
        doc.stdout
    );
    assert_no_secret(&w, &[token]);
}

/// The shape `google-github-actions/auth` writes (as examples/github-actions.yml uses it): a
/// URL-sourced token with a bearer header and a JSON `value` field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_url_and_executable_sourced_plan() {
    let mut w = world().await;
    let (audience, sa, token) = federation(&w, "repo:acme/infra:pull_request").await;
    let runtime_token = format!("runtime-{}", uuid::Uuid::new_v4().simple());
    let served = token.clone();
    let expected = format!("Bearer {runtime_token}");
    let app = axum::Router::new().route(
        "/token",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(expected.as_str());
            let served = served.clone();
            async move {
                if ok {
                    axum::Json(json!({"count": 1, "value": served})).into_response()
                } else {
                    axum::http::StatusCode::UNAUTHORIZED.into_response()
                }
            }
        }),
    );
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let file = external_file(
        &w,
        &audience,
        Some(&sa),
        json!({
            "url": url,
            "headers": {"Authorization": format!("Bearer {runtime_token}")},
            "format": {"type": "json", "subject_token_field_name": "value"},
        }),
    );
    let creds = w.path().join("gha.json");
    std::fs::write(&creds, file.to_string()).unwrap();
    let plan = plan_file(&w);
    let flag = creds.display().to_string();
    tokio::task::block_in_place(|| {
        w.expect(&["plan", "-f", &plan, "--credentials-file", &flag], 0)
    });

    // Executable-sourced: allowed only with GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1.
    let script = w.path().join("token.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntest \"$GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE\" = '{audience}' || exit 3\n\
             printf '%s' '{{\"version\":1,\"success\":true,\"token_type\":\"urn:ietf:params:oauth:token-type:id_token\",\"id_token\":\"{token}\"}}'\n"
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", script.to_str().unwrap()])
        .status()
        .unwrap();
    let file = external_file(
        &w,
        &audience,
        Some(&sa),
        json!({"executable": {"command": script.display().to_string(), "timeout_millis": 10000}}),
    );
    let exe = w.path().join("exe.json");
    std::fs::write(&exe, file.to_string()).unwrap();
    let flag = exe.display().to_string();
    let r = tokio::task::block_in_place(|| {
        w.expect(&["plan", "-f", &plan, "--credentials-file", &flag], 1)
    });
    assert!(
        r.stderr
            .contains("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"),
        "{}",
        r.stderr
    );
    w.env.push((
        "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES".into(),
        "1".into(),
    ));
    tokio::task::block_in_place(|| {
        w.expect(&["plan", "-f", &plan, "--credentials-file", &flag], 0)
    });
    assert_no_secret(&w, &[token, runtime_token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_service_account_file_applies_as_the_target() {
    let mut w = world().await;
    no_key_file(&mut w);
    let sa = deployer(&w).await;
    // The user may only mint tokens for the deployer: everything else is the deployer's.
    let user = control(&w, "/_sandbox/users", json!({"email": "ops@example.com"})).await;
    allow_on(
        &w,
        &sa,
        "roles/iam.serviceAccountTokenCreator",
        "user:ops@example.com",
    )
    .await;
    let file = json!({
        "type": "impersonated_service_account",
        "delegates": [],
        "service_account_impersonation_url": format!(
            "{}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken", w.sandbox.url),
        "source_credentials": user,
    });
    std::fs::write(adc_path(&w), file.to_string()).unwrap();
    let plan = plan_file(&w);
    cycle(&w, &plan, &[]);
    assert_no_secret(&w, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonate_flag_needs_token_creator() {
    let w = world().await;
    let sa = deployer(&w).await;
    let plan = plan_file(&w);
    let target = sa.to_string();
    // The operator owns the project, but owners cannot mint tokens without Token Creator.
    let r = tokio::task::block_in_place(|| {
        w.expect(
            &[
                "plan",
                "-f",
                &plan,
                "--impersonate-service-account",
                &target,
            ],
            1,
        )
    });
    assert!(
        r.stderr.contains("iam.serviceAccounts.getAccessToken"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("roles/iam.serviceAccountTokenCreator"),
        "{}",
        r.stderr
    );
    let operator = format!("serviceAccount:{}", w.sandbox.operator_email);
    allow_on(&w, &sa, "roles/iam.serviceAccountTokenCreator", &operator).await;
    cycle(&w, &plan, &["--impersonate-service-account", &target]);
    let denied = inspect(&w, "/_sandbox/denied").await;
    assert!(
        denied
            .to_string()
            .contains("iam.serviceAccounts.getAccessToken")
    );
    assert_no_secret(&w, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_server_credentials_apply() {
    let mut w = world().await;
    w.env
        .push(("GOOGLE_APPLICATION_CREDENTIALS".into(), String::new()));
    let host = w.sandbox.url.trim_start_matches("http://").to_owned();
    w.env.push(("GCE_METADATA_HOST".into(), host));
    let plan = plan_file(&w);
    cycle(&w, &plan, &[]);
    let doc = doctor_credentials(&w, &plan, "metadata server");
    assert!(
        doc.stdout
            .contains(&format!("principal: {}", w.sandbox.operator_email))
    );
    assert_no_secret(&w, &[]);
}
