//! Reliability 5: secrets. plan / apply / rotate / destroy with `-vv`, `RUST_LOG=trace` and
//! `--json`, with a Prefect API key set: nothing the tool prints or writes holds the private
//! key (checked whole and line by line, as logs may escape newlines), the Prefect API key, or
//! any access token the sandbox issued (so Authorization headers are redacted).

mod common;

use common::{World, block_private_key, run_in};
use serde_json::json;

const PROJECT: &str = "secrets-project";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logging_and_json_leak_no_secret() {
    let mut w = World::start(PROJECT).await;
    let api_key = format!("pnu_{}", uuid::Uuid::new_v4().simple());
    w.env.push(("PREFECT_API_KEY".into(), api_key.clone()));
    w.env.push(("RUST_LOG".into(), "trace".into()));
    let suffix = common::suffix("sec");
    let path = w.plan_file("bootstrap.yaml", &common::light_plan(PROJECT, &suffix));
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
    common::record(
        "secrets",
        json!({ "commands": 7, "private_keys_checked": keys.len(),
                "pem_lines_checked": secrets.len() - 1 - tokens.len(),
                "tokens_checked": tokens.len(), "transcript_bytes": transcript.len() }),
    );
}
