//! `bootstrap validate` as a user runs it: exit codes, stdout and stderr.

use std::path::Path;
use std::process::{Command, Output};

fn validate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .arg("validate")
        .args(args)
        .env_remove("PREFECT_API_URL")
        .env_remove("PREFECT_API_KEY")
        // Hermetic: no gcloud configuration of the machine running the tests.
        .env_remove("CLOUDSDK_CORE_PROJECT")
        .env_remove("CLOUDSDK_RUN_REGION")
        .env_remove("CLOUDSDK_CONFIG")
        .env("HOME", "/nonexistent-home")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_guide_is_valid() {
    let out = validate(&["-f", "plans/guide.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn a_bad_plan_lists_every_error_and_exits_1() {
    let out = validate(&["--file", "crates/spec/tests/bad/unknown_keys.yaml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    insta::assert_snapshot!(text(&out.stderr));
}

#[test]
fn json_has_the_checked_plan_and_no_secret() {
    let out = validate(
        &["-f", "plans/guide.yaml", "--json"],
        &[
            ("PREFECT_API_KEY", "pnu_do_not_print_me"),
            (
                "PREFECT_API_URL",
                "https://api.prefect.cloud/api/accounts/a/workspaces/b",
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("pnu_do_not_print_me"));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(
        json["service_account"]["email"],
        "prefect-service-account@prefect-project.iam.gserviceaccount.com"
    );
    assert_eq!(
        json["prefect"]["api_url"],
        "https://api.prefect.cloud/api/accounts/a/workspaces/b"
    );
    assert_eq!(json["work_pool"]["type"], "cloud-run");
}

#[test]
fn a_missing_file_is_an_error() {
    let out = validate(&["-f", "no-such-plan.yaml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no-such-plan.yaml: error: cannot read the plan file"));
}

#[test]
fn project_and_region_default_to_the_active_gcloud_configuration() {
    let home = tempfile::tempdir().unwrap();
    let gcloud = home.path().join(".config/gcloud");
    std::fs::create_dir_all(gcloud.join("configurations")).unwrap();
    std::fs::write(gcloud.join("active_config"), "work\n").unwrap();
    std::fs::write(
        gcloud.join("configurations/config_work"),
        "[core]\nproject = gcloud-project\n\n[run]\nregion = europe-west1\n",
    )
    .unwrap();
    let guide = std::fs::read_to_string(testkit::repo_root().join("plans/guide.yaml")).unwrap();
    let plan: String = guide
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with("project:") && !l.trim_start().starts_with("region:")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let path = home.path().join("plan.yaml");
    std::fs::write(&path, plan).unwrap();
    let home_str = home.path().to_str().unwrap();
    let out = validate(
        &["--json", "-f", path.to_str().unwrap()],
        &[("HOME", home_str)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["gcp"]["project"], "gcloud-project");
    assert_eq!(json["gcp"]["region"], "europe-west1");
    // gcloud's own override variable wins over the file, as in gcloud.
    let out = validate(
        &["--json", "-f", path.to_str().unwrap()],
        &[("HOME", home_str), ("CLOUDSDK_CORE_PROJECT", "env-project")],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["gcp"]["project"], "env-project");
    // Without either, the error says both ways to fix it.
    let empty = tempfile::tempdir().unwrap();
    let out = validate(
        &["-f", path.to_str().unwrap()],
        &[("HOME", empty.path().to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("gcloud config set project"),
        "{}",
        text(&out.stderr)
    );
}
