//! The GCP half and the Prefect half of the guide, end to end: `plans/guide.yaml` against the
//! GCP sandbox (default consistency delays on) and the real Prefect server.

use std::collections::{BTreeMap, BTreeSet};

use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
use bootstrap_gcp::{iam, resourcemanager};
use bootstrap_spec::ids::{ProjectId, ServiceAccountEmail};
use testkit::run_in as run;
use testkit::{World, guide_plan, healthy_worker, plan_shows};

use crate::support::grant;

const PROJECT: &str = "prefect-project";

fn members(policy: &policy::Policy) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for b in &policy.bindings {
        out.entry(b.role.clone())
            .or_default()
            .extend(b.members.iter().cloned());
    }
    out.retain(|_, m| !m.is_empty());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_applies_converges_repairs_and_destroys() {
    let mut w = World::start_with(PROJECT, healthy_worker).await;
    let api_key = w.use_api_key();
    let suffix = testkit::unique_name("g").replace('_', "-");
    w.redact(&suffix, "[SUFFIX]");
    let plan_path = w.plan_file("bootstrap.yaml", &guide_plan(&suffix));
    let plan = plan_path.to_str().unwrap();
    let project = ProjectId::parse(PROJECT).unwrap();
    let email = ServiceAccountEmail::parse(format!(
        "prefect-service-account@{PROJECT}.iam.gserviceaccount.com"
    ))
    .unwrap();
    let http = w.operator_http().await;
    let before = members(
        &resourcemanager::get_iam_policy(&http, &project)
            .await
            .unwrap(),
    );

    // 1. A plan of a fresh project shows everything to create, and exits 2.
    bootstrap_snapshot!(
        "plan_fresh",
        w,
        &["plan", "-f", plan, "--detailed-exitcode"],
        2
    );

    // 2. The first apply converges, while a foreign writer edits the project policy.
    let foreign = {
        let http = http.clone();
        let project = project.clone();
        tokio::spawn(async move {
            let mut added = Vec::new();
            for i in 0..6 {
                let member = format!("user:foreign-{i}@example.com");
                grant(&http, &project, "roles/viewer", &member).await;
                added.push(member);
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            added
        })
    };
    bootstrap_snapshot!("apply", w, &["apply", "-f", plan, "--auto-approve"], 0);
    let foreign_members = foreign.await.unwrap();

    // 3. A second plan is quiet, and a second apply changes nothing.
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);
    bootstrap_snapshot!(
        "apply_again",
        w,
        &["apply", "-f", plan, "--auto-approve"],
        0
    );
    let now = members(
        &resourcemanager::get_iam_policy(&http, &project)
            .await
            .unwrap(),
    );
    for m in &foreign_members {
        assert!(
            now["roles/viewer"].contains(m),
            "foreign member {m} was lost"
        );
    }
    assert!(now["roles/run.admin"].contains(&email.member()));

    // The key went to the block, and nowhere else.
    let prefect = bootstrap_prefect::PrefectClient::new(
        bootstrap_prefect::PrefectConfig::for_url(&w.prefect_url).unwrap(),
    )
    .unwrap();
    let block = prefect
        .block_document_by_name_with_secrets(
            "gcp-credentials",
            &format!("gcp-credentials-{suffix}"),
        )
        .await
        .unwrap()
        .expect("block exists");
    let private_key = block.data.expose()["service_account_info"]["private_key"]
        .as_str()
        .expect("block holds the key")
        .to_string();
    assert!(private_key.contains("PRIVATE KEY"));
    assert_eq!(block.data.expose()["project"], PROJECT);
    let keys = iam::list_keys(&http, &project, &email, true).await.unwrap();
    assert_eq!(keys.len(), 1, "exactly one user-managed key");

    // 4. A change in the plan is one in-place update with old -> new.
    let changed = std::fs::read_to_string(&plan_path)
        .unwrap()
        .replace("min_instances: 1", "min_instances: 2");
    std::fs::write(&plan_path, changed).unwrap();
    plan_shows(
        &w,
        plan,
        &[
            "~ min_instances = 1 -> 2",
            "0 to create, 1 to update, 0 to replace, 0 to delete",
        ],
    );
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);

    // 5. Drift behind the tool's back is shown and repaired: a role removed, a field edited.
    let m = email.member();
    policy::read_modify_write(
        &http,
        &PolicyTarget::Project(project.clone()),
        RmwOptions::default(),
        |p| policy::remove_member(p, "roles/run.admin", &m),
    )
    .await
    .unwrap();
    iam::patch_service_account(&http, &project, &email, Some("renamed by hand"), None)
        .await
        .unwrap();
    plan_shows(
        &w,
        plan,
        &[
            "+ roles/run.admin",
            "~ display_name = \"renamed by hand\" -> \"prefect-service-account\"",
        ],
    );
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);

    // 6. Destroy leaves the project as it was (plus the foreign writer's members), twice.
    let d = run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(d.stdout.contains("Destroy complete"), "{}", d.stdout);
    let d = run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(d.stdout.starts_with("No changes."), "{}", d.stdout);
    let mut expected = before.clone();
    expected
        .entry("roles/viewer".into())
        .or_default()
        .extend(foreign_members);
    assert_eq!(
        members(
            &resourcemanager::get_iam_policy(&http, &project)
                .await
                .unwrap()
        ),
        expected
    );
    assert!(
        iam::get_service_account(&http, &project, &email)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        prefect
            .work_pool(&format!("my-cloud-run-pool-{suffix}"))
            .await
            .unwrap()
            .is_none()
    );

    // 7. No private key and no API key in anything the tool printed or wrote.
    let transcript = w.transcript.lock().unwrap().clone();
    testkit::assert_no_secret(
        &[&private_key, &api_key],
        &[("bootstrap output", &transcript)],
    );
    for entry in std::fs::read_dir(w.path()).unwrap().flatten() {
        if entry.file_name() != "sandbox" {
            let p = entry.path();
            if p.is_dir() {
                testkit::assert_no_secret_in_dir(&[&private_key, &api_key], &p);
            } else {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                testkit::assert_no_secret(
                    &[&private_key, &api_key],
                    &[(&p.display().to_string(), &text)],
                );
            }
        }
    }
}
