//! Reliability 3: races. Two `apply` processes on the same plan at once both end (exit 0, or
//! exit 1 with a clear error that says to run apply again) and a following apply converges to
//! a quiet plan with one key; a foreign writer editing the project IAM policy in a loop while
//! apply runs loses none of its bindings. (Two workers never running a flow run twice is the
//! worker's test: see RELIABILITY.md.) `BOOTSTRAP_RELIABILITY_FULL=1` runs 10 rounds.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bootstrap_spec::ids::ProjectId;
use serde_json::json;
use testkit::{World, assert_converged, assert_quiet_plan, footprint, run_in};

use crate::support::grant;

const PROJECT: &str = "races-project";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_and_a_foreign_policy_writer_converge() {
    let rounds = testkit::count(10, 2);
    let w = World::start(PROJECT).await;
    let suffix = testkit::suffix("race");
    let path = w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &suffix));
    let plan = path.to_str().expect("utf-8 path");
    let http = w.operator_http().await;
    let project = ProjectId::parse(PROJECT).expect("project id");
    let (mut both_ok, mut one_retryable, mut foreign_writes) = (0, 0, 0usize);
    let mut foreign_members = Vec::new();

    for round in 0..rounds {
        let context = format!("round {round}");
        run_in(&w, &["destroy", "-f", plan, "--auto-approve"], 0);

        // A foreign writer adds a member on every pass while the two applies run.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (http, project, stop) = (http.clone(), project.clone(), stop.clone());
            tokio::spawn(async move {
                let mut added = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let member = format!("user:foreign-{round}-{}@example.com", added.len());
                    grant(&http, &project, "roles/viewer", &member).await;
                    added.push(member);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                added
            })
        };
        let spawn = || {
            w.command(&["apply", "-f", plan, "--auto-approve"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn apply")
        };
        let (a, b) = (spawn(), spawn());
        let outs = tokio::task::block_in_place(|| {
            [a, b].map(|c| c.wait_with_output().expect("apply output"))
        });
        stop.store(true, Ordering::Relaxed);
        let added = writer.await.expect("writer");
        foreign_writes += added.len();
        foreign_members.extend(added);

        let mut ok = 0;
        for out in &outs {
            w.note("bootstrap apply (racing)", out);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{context}: {stderr}");
            match out.status.code() {
                Some(0) => ok += 1,
                Some(1) => assert!(
                    stderr.contains("error:") && stderr.contains("apply again"),
                    "{context}: a failed racing apply must say what failed and to run again: {stderr}"
                ),
                other => panic!("{context}: racing apply exited {other:?}: {stderr}"),
            }
        }
        if ok == 2 {
            both_ok += 1;
        } else {
            one_retryable += 1;
        }

        run_in(&w, &["apply", "-f", plan, "--auto-approve"], 0);
        assert_quiet_plan(&w, plan, &context);
        assert_converged(&footprint(&w, PROJECT, &suffix).await, &context);
    }

    // Not one foreign binding was lost, across all rounds and destroys.
    let data = w.sandbox.state.read();
    let viewers: Vec<&String> = data
        .project(PROJECT)
        .expect("project")
        .policy
        .bindings
        .iter()
        .filter(|b| b.role == "roles/viewer")
        .flat_map(|b| b.members.iter())
        .collect();
    for m in &foreign_members {
        assert!(viewers.contains(&m), "foreign member {m} was lost");
    }
    drop(data);
    assert!(foreign_writes > 0);
    testkit::record(
        "races",
        json!({ "rounds": rounds, "both_applies_exit_0": both_ok,
                "one_apply_failed_retryably": one_retryable,
                "foreign_policy_writes_kept": foreign_writes }),
    );
}
