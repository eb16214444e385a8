//! Reliability 5: secrets. plan / apply / rotate / destroy with `-vv`, `RUST_LOG=trace` and
//! `--json`, with a Prefect API key set: nothing the tool prints or writes holds the private
//! key (checked whole and line by line, as logs may escape newlines), the Prefect API key, or
//! any access token the sandbox issued (so Authorization headers are redacted).

use serde_json::json;
use testkit::{World, block_private_key, run_in};

use crate::support::control;

const PROJECT: &str = "secrets-project";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logging_and_json_leak_no_secret() {
    let mut w = World::start(PROJECT).await;
    let api_key = w.use_api_key();
    w.env.push(("RUST_LOG".into(), "trace".into()));
    let suffix = testkit::suffix("sec");
    let path = w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &suffix));
    let plan = path.to_str().expect("utf-8 path");

    let mut keys = Vec::new();
    for args in [
        &["plan", "-f", plan, "-vv"][..],
        &["plan", "-f", plan, "--json", "-vv"],
        &["apply", "-f", plan, "--auto-approve", "-vv"],
    ] {
        run_in(&w, args, 0);
    }
    keys.push(block_private_key(&w, &suffix).await.expect("block key"));
    for args in [
        &["plan", "-f", plan, "--json", "-vv"][..],
        &["apply", "-f", plan, "--auto-approve", "--json", "-vv"],
        &["apply", "-f", plan, "--auto-approve", "--rotate-key", "-vv"],
    ] {
        run_in(&w, args, 0);
    }
    keys.push(block_private_key(&w, &suffix).await.expect("rotated key"));
    assert_ne!(keys[0], keys[1], "rotation made a new key");
    run_in(
        &w,
        &["destroy", "-f", plan, "--auto-approve", "--json", "-vv"],
        0,
    );

    let transcript = w.transcript.lock().expect("transcript").clone();
    // The logs really were verbose, or the scan proves little.
    assert!(transcript.contains("TRACE") || transcript.contains("DEBUG"));

    let mut secrets: Vec<String> = vec![api_key.clone()];
    for k in &keys {
        secrets.push(k.clone());
        secrets.extend(
            k.lines()
                .filter(|l| l.len() >= 32 && !l.contains("PRIVATE KEY"))
                .map(str::to_owned),
        );
    }
    let tokens: Vec<String> = w.sandbox.state.read().tokens.keys().cloned().collect();
    assert!(!tokens.is_empty(), "the sandbox issued no token");
    secrets.extend(tokens.iter().cloned());
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    testkit::assert_no_secret(&refs, &[("bootstrap output", &transcript)]);
    assert!(
        !transcript.to_ascii_lowercase().contains("bearer ey")
            && !transcript.contains("Bearer pnu_"),
        "an Authorization header was logged"
    );
    for entry in std::fs::read_dir(w.path()).expect("dir").flatten() {
        // The sandbox's own directory holds its operator key by design.
        if entry.file_name() == "sandbox" {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            testkit::assert_no_secret_in_dir(&refs, &p);
        } else {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            testkit::assert_no_secret(&refs, &[(&p.display().to_string(), &text)]);
        }
    }
    testkit::record(
        "secrets",
        json!({ "commands": 7, "private_keys_checked": keys.len(),
                "pem_lines_checked": secrets.len() - 1 - tokens.len(),
                "tokens_checked": tokens.len(), "transcript_bytes": transcript.len() }),
    );
}

/// The credential flows at trace level: a user's refresh token (the ADC file), a federated
/// subject token (STS exchange) and the impersonated tokens both buy must never appear in what
/// the tool prints, nor in the files it leaves in the test directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_subject_and_impersonated_tokens_never_leak() {
    use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
    use bootstrap_spec::ids::{ProjectId, ServiceAccountEmail};

    bootstrap_gcp::init_crypto();
    let mut w = World::start_with(PROJECT, |c| {
        c.consistency = gcp_sandbox::Consistency::immediate();
    })
    .await;
    w.env.push(("RUST_LOG".into(), "trace".into()));
    let suffix = testkit::suffix("tok");
    let path = w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &suffix));
    let plan = path.to_str().expect("utf-8 path").to_owned();
    let operator = ServiceAccountEmail::parse(w.sandbox.operator_email.clone()).unwrap();

    // A user who may only mint the operator's tokens, with a quota project.
    let user = control(
        &w,
        "/_sandbox/users",
        json!({"email": "ops@example.com", "roles": ["roles/serviceusage.serviceUsageConsumer"],
               "quotaProject": PROJECT}),
    )
    .await;
    let refresh = user["refresh_token"].as_str().unwrap().to_owned();
    // A workload identity provider and a subject allowed to impersonate the operator.
    let provider = control(
        &w,
        "/_sandbox/workload-identity",
        json!({"pool": "ci", "provider": "gh"}),
    )
    .await;
    let audience = provider["audience"].as_str().unwrap().to_owned();
    let principal = format!(
        "{}repo:acme/x",
        provider["principalPrefix"].as_str().unwrap()
    );
    let http = w.operator_http().await;
    let target = PolicyTarget::ServiceAccount {
        project: ProjectId::parse(PROJECT).unwrap(),
        email: operator.clone(),
    };
    policy::read_modify_write(&http, &target, RmwOptions::default(), |p| {
        policy::add_member(
            p,
            "roles/iam.serviceAccountTokenCreator",
            "user:ops@example.com",
        ) | policy::add_member(p, "roles/iam.workloadIdentityUser", &principal)
    })
    .await
    .expect("grants on the operator");
    let subject = control(
        &w,
        "/_sandbox/oidc/token",
        json!({"sub": "repo:acme/x", "aud": audience}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // 1. The user's ADC file, impersonating the operator.
    let adc = w.path().join("home/.config/gcloud");
    std::fs::create_dir_all(&adc).unwrap();
    std::fs::write(
        adc.join("application_default_credentials.json"),
        user.to_string(),
    )
    .unwrap();
    let mut as_user = vec![("GOOGLE_APPLICATION_CREDENTIALS".to_owned(), String::new())];
    as_user.push(("GCE_METADATA_HOST".into(), "127.0.0.1:9".into()));
    w.env.extend(as_user);
    let target_flag = operator.to_string();
    for args in [
        &[
            "plan",
            "-f",
            &plan,
            "-vv",
            "--impersonate-service-account",
            &target_flag,
        ][..],
        &[
            "apply",
            "-f",
            &plan,
            "--auto-approve",
            "-vv",
            "--impersonate-service-account",
            &target_flag,
        ],
        &[
            "doctor",
            "-f",
            &plan,
            "-vv",
            "--impersonate-service-account",
            &target_flag,
        ],
    ] {
        run_in(&w, args, 0);
    }
    // 2. A federated identity (file-sourced subject token) impersonating the operator.
    let token_file = w.path().join("subject-token");
    std::fs::write(&token_file, &subject).unwrap();
    let external = json!({
        "type": "external_account",
        "audience": audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{}/v1/token", w.sandbox.url),
        "service_account_impersonation_url": format!(
            "{}/v1/projects/-/serviceAccounts/{operator}:generateAccessToken", w.sandbox.url),
        "credential_source": {"file": token_file},
    });
    let creds = w.path().join("external.json");
    std::fs::write(&creds, external.to_string()).unwrap();
    let creds_flag = creds.display().to_string();
    for args in [
        &[
            "plan",
            "-f",
            &plan,
            "--json",
            "-vv",
            "--credentials-file",
            &creds_flag,
        ][..],
        &[
            "destroy",
            "-f",
            &plan,
            "--auto-approve",
            "-vv",
            "--credentials-file",
            &creds_flag,
        ],
    ] {
        run_in(&w, args, 0);
    }

    let transcript = w.transcript.lock().expect("transcript").clone();
    assert!(transcript.contains("TRACE"));
    let tokens: Vec<String> = w.sandbox.state.read().tokens.keys().cloned().collect();
    // The user's, the impersonated, the federated and the operator's tokens at least.
    assert!(tokens.len() >= 3, "{} tokens", tokens.len());
    let mut secrets = vec![refresh, subject];
    secrets.extend(tokens);
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    testkit::assert_no_secret(&refs, &[("bootstrap output", &transcript)]);
}
