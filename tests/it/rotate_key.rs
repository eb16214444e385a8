//! `apply --rotate-key`: a new key is created, the block moves to it, then the old key is
//! deleted; and a user-managed key that nothing uses is shown as an orphan and removed.

use testkit::{World, assert_converged, footprint, light_plan, run_in, suffix};

const PROJECT: &str = "rotate-project";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_moves_the_block_then_deletes_the_old_key() {
    let w = World::start(PROJECT).await;
    let sfx = suffix("rot");
    let plan_path = w.plan_file("bootstrap.yaml", &light_plan(PROJECT, &sfx));
    let plan = plan_path.to_str().unwrap();
    run_in(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    let before = footprint(&w, PROJECT, &sfx).await;
    assert_converged(&before, "after the first apply");
    let old_key = before.keys[0].clone();

    // Rotation: plan order is create key -> update block -> delete the old key.
    let r = run_in(
        &w,
        &["apply", "-f", plan, "--auto-approve", "--rotate-key"],
        0,
    );
    let create = r.stdout.find("service_account_key").expect("a key step");
    assert!(r.stdout.contains("rotation requested"), "{}", r.stdout);
    assert!(
        r.stdout[create..].contains(&format!(
            "gcp.service_account_key[\"{old_key}\"] will be deleted"
        )),
        "{}",
        r.stdout
    );
    let after = footprint(&w, PROJECT, &sfx).await;
    assert_converged(&after, "after rotation");
    assert_ne!(after.keys[0], old_key, "the key was not rotated");
    run_in(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);

    // A key made by hand (unused) is an orphan: shown, then removed by the next apply.
    let http = w.operator_http().await;
    let email =
        bootstrap_spec::ids::ServiceAccountEmail::parse(testkit::light_email(PROJECT)).unwrap();
    let project = bootstrap_spec::ids::ProjectId::parse(PROJECT).unwrap();
    let stray = bootstrap_gcp::iam::create_key(&http, &project, &email)
        .await
        .unwrap();
    drop(stray); // its private key is never looked at
    let p = run_in(&w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    assert!(p.stdout.contains("(orphan)"), "{}", p.stdout);
    run_in(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert_converged(
        &footprint(&w, PROJECT, &sfx).await,
        "after removing the orphan",
    );
    run_in(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
}
