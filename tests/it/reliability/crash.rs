//! Reliability 2: crashes. `apply` is killed with SIGKILL at a seeded random moment, during a
//! first apply or during a key rotation; the next `apply` converges, leaves exactly one key
//! (an orphan of the killed run is shown and removed), and at no point does the credentials
//! block point at a deleted key. `BOOTSTRAP_RELIABILITY_FULL=1` runs 20 seeds.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use testkit::{
    World, assert_block_key_live, assert_converged, assert_quiet_plan, footprint, run_in,
};

const PROJECT: &str = "crash-project";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_applies_are_repaired_by_the_next_apply() {
    let seeds = testkit::count(20, 4) as u64;
    // Latency on every call widens the window between steps, so kills land all over it.
    let w = World::start_with(PROJECT, |c| {
        c.faults = "latency=40ms".parse().expect("fault spec");
    })
    .await;
    let suffix = testkit::suffix("crash");
    let path = w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &suffix));
    let plan = path.to_str().expect("utf-8 path");
    let (mut killed, mut finished_first, mut orphans_removed) = (0, 0, 0);
    // How long each kind of apply takes here, to spread the kill points over it.
    let timed = |args: &[&str]| {
        let started = Instant::now();
        run_in(&w, args, 0);
        started.elapsed().as_millis().max(200) as u64
    };
    let create_span = timed(&["apply", "-f", plan, "--auto-approve"]);
    let rotate_span = timed(&["apply", "-f", plan, "--auto-approve", "--rotate-key"]);

    for seed in 0..seeds {
        let context = format!("seed {seed}");
        // Even seeds crash a first apply; odd seeds crash a key rotation of a converged setup.
        let rotate = seed % 2 == 1;
        if rotate {
            run_in(&w, &["apply", "-f", plan, "--auto-approve"], 0);
        } else {
            run_in(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
        }
        let mut args = vec!["apply", "-f", plan, "--auto-approve"];
        if rotate {
            args.push("--rotate-key");
        }
        let span = if rotate { rotate_span } else { create_span };
        let delay =
            Duration::from_millis(StdRng::seed_from_u64(seed).random_range(0..span * 3 / 4));
        let mut child = w
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn apply");
        let started = Instant::now();
        let mut exited = None;
        while started.elapsed() < delay {
            if let Some(status) = child.try_wait().expect("wait") {
                exited = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match exited {
            Some(_) => finished_first += 1,
            None => {
                child.kill().expect("SIGKILL");
                killed += 1;
            }
        }
        let _ = child.wait();
        assert_block_key_live(&footprint(&w, PROJECT, &suffix).await, &context);

        let a = run_in(&w, &["apply", "-f", plan, "--auto-approve"], 0);
        if a.stdout.contains("orphan") {
            orphans_removed += 1;
        }
        let f = footprint(&w, PROJECT, &suffix).await;
        assert_block_key_live(&f, &context);
        assert_converged(&f, &context);
        assert_quiet_plan(&w, plan, &context);
    }
    run_in(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(footprint(&w, PROJECT, &suffix).await.is_empty());
    // Most runs must really have been killed mid-way, or the test shows nothing.
    assert!(
        killed * 2 >= seeds,
        "only {killed} of {seeds} applies were killed"
    );
    testkit::record(
        "crash",
        json!({ "seeds": seeds, "killed": killed, "finished_before_kill": finished_first,
                "next_apply_removed_orphans": orphans_removed }),
    );
}
