//! Reliability 6: least privilege. With the sandbox's permission checks (always on), `apply`
//! and `destroy` of the guide's plan (worker service and API key secret included) succeed as an
//! operator holding exactly the roles README.md "Prerequisites" lists, with no denied call; with
//! one of those roles fewer, `apply` fails clearly, naming the permission. The worker-SA half
//! is not asserted here: the worker image in the sandbox is a stand-in health server that makes
//! no Google calls (see RELIABILITY.md).

use std::path::Path;
use std::process::Output;

use bootstrap_gcp::iam;
use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
use bootstrap_spec::ids::{AccountId, ProjectId, ServiceAccountEmail};
use secrecy::ExposeSecret;
use serde_json::json;
use testkit::{World, guide_plan};

const PROJECT: &str = "prefect-project";

/// The operator roles README.md documents, read from its "Prerequisites" section.
fn readme_roles() -> Vec<String> {
    let readme = std::fs::read_to_string(testkit::repo_root().join("README.md")).expect("README");
    let start = readme
        .find("### Prerequisites")
        .expect("Prerequisites section");
    let section = &readme[start..];
    let end = section[4..].find("\n#").map_or(section.len(), |i| i + 4);
    let mut roles: Vec<String> = section[..end]
        .split('`')
        .filter(|s| s.starts_with("roles/") && *s != "roles/owner")
        .map(str::to_owned)
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

async fn set_role(w: &World, member: &str, role: &str, present: bool) {
    let http = w.operator_http().await;
    let project = ProjectId::parse(PROJECT).expect("project");
    policy::read_modify_write(
        &http,
        &PolicyTarget::Project(project),
        RmwOptions {
            // A new account is not visible to setIamPolicy at once.
            member_grace: Some(std::time::Duration::from_secs(30)),
            ..RmwOptions::default()
        },
        |p| {
            if present {
                policy::add_member(p, role, member)
            } else {
                policy::remove_member(p, role, member)
            }
        },
    )
    .await
    .expect("edit operator roles");
}

fn run_as(w: &World, key: &Path, args: &[&str]) -> Output {
    let out = tokio::task::block_in_place(|| {
        w.command(args)
            .env("GOOGLE_APPLICATION_CREDENTIALS", key)
            .output()
            .expect("run bootstrap")
    });
    w.note(
        &format!("bootstrap {} (limited operator)", args.join(" ")),
        &out,
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_operator_roles_are_exactly_enough() {
    let mut w = World::start_with(PROJECT, testkit::healthy_worker).await;
    // With an API key the worker's secret is part of the plan, so every listed role is used.
    w.use_api_key();
    let suffix = testkit::suffix("lp");
    let path = w.plan_file("bootstrap.yaml", &guide_plan(&suffix));
    let plan = path.to_str().expect("utf-8 path");
    let roles = readme_roles();
    assert!(roles.len() >= 6, "README lists too few roles: {roles:?}");

    // An operator account holding exactly the README's roles, with a sandbox-issued key.
    let http = w.operator_http().await;
    let project = ProjectId::parse(PROJECT).expect("project");
    let account = AccountId::parse("limited-operator").expect("account");
    iam::create_service_account(&http, &project, &account, Some("limited"), None)
        .await
        .expect("create operator account");
    let email = ServiceAccountEmail::for_account(&account, &project);
    let member = email.member();
    for role in &roles {
        set_role(&w, &member, role, true).await;
    }
    let key = iam::create_key(&http, &project, &email).await.expect("key");
    let key_path = w.path().join("limited-operator.json");
    std::fs::write(&key_path, key.json.expose_secret()).expect("write key");
    // The sandbox applies new grants after a short delay, as Google does.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    let denied_before = w.sandbox.state.denied().len();
    // Apply, a quiet plan and destroy, all as the operator with only the README roles.
    for (args, what) in [
        (
            ["apply", "-f", plan, "--auto-approve"],
            "apply with the README roles",
        ),
        (["plan", "-f", plan, "--detailed-exitcode"], "quiet plan"),
        (
            ["destroy", "-f", plan, "--auto-approve"],
            "destroy with the README roles",
        ),
    ] {
        let r = run_as(&w, &key_path, &args);
        assert_eq!(r.status.code(), Some(0), "{what}\n{}", text(&r));
    }
    // Only the operator's calls count: the worker account's first secret read may be denied
    // while this run's fresh grant propagates (the engine waits that out).
    let denied: Vec<_> = w.sandbox.state.denied()[denied_before..]
        .iter()
        .filter(|d| d["caller"] == email.as_str())
        .cloned()
        .collect();
    assert!(
        denied.is_empty(),
        "calls denied with the README roles: {denied:?}"
    );

    // One role fewer: apply fails and names what is missing. Full: each role in turn.
    let fewer: Vec<String> = if testkit::reliability_full() {
        roles.clone()
    } else {
        vec!["roles/resourcemanager.projectIamAdmin".into()]
    };
    let mut failed_clearly = Vec::new();
    for role in &fewer {
        set_role(&w, &member, role, false).await;
        let a = run_as(&w, &key_path, &["apply", "-f", plan, "--auto-approve"]);
        let stderr = String::from_utf8_lossy(&a.stderr);
        assert_eq!(
            a.status.code(),
            Some(1),
            "apply without {role}\n{}",
            text(&a)
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("permission denied") || stderr.contains("PERMISSION_DENIED"),
            "apply without {role} must say which permission is missing\n{}",
            text(&a)
        );
        failed_clearly.push(role.clone());
        set_role(&w, &member, role, true).await;
        // Clean up as the project owner for the next round.
        testkit::run_in(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    }
    testkit::record(
        "privilege",
        json!({ "readme_roles": roles, "denied_with_readme_roles": 0,
                "one_fewer_failed_clearly": failed_clearly }),
    );
}
