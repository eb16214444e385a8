//! `plan --out FILE` then `apply FILE` (issue #16): a saved plan read back from its JSON is
//! carried out exactly as a direct apply of the same plan file is, holds no secret, and is
//! refused (exit 1, nothing changed) once GCP, Prefect or the plan file changed under it.

use serde_json::Value;
use testkit::{World, block_private_key, run_in};

const PROJECT: &str = "prefect-project";

/// (address with the test's suffix made generic, action, outcome) of each changelog entry.
fn outcomes(changelog: &str, suffix: &str) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_str(changelog).expect("changelog JSON");
    let text = |e: &Value, k: &str| e[k].as_str().expect("a string").replace(suffix, "S");
    let mut out: Vec<_> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (text(e, "address"), text(e, "action"), text(e, "outcome")))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_applies_as_a_direct_apply_does() {
    // Twin worlds: two fresh sandboxes, the same plan file (its Prefect names kept apart).
    let mut saved_w = World::start(PROJECT).await;
    let direct_w = World::start(PROJECT).await;
    let api_key = format!("pnu_{}", uuid::Uuid::new_v4().simple());
    saved_w
        .env
        .push(("PREFECT_API_KEY".into(), api_key.clone()));
    let (s1, s2) = (testkit::suffix("saved"), testkit::suffix("direct"));
    let f1 = saved_w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &s1));
    let f2 = direct_w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &s2));
    let (f1, f2) = (f1.to_str().unwrap(), f2.to_str().unwrap());
    let out = saved_w.dir.path().join("plan.json");
    let out = out.to_str().unwrap();

    let shown = run_in(&saved_w, &["plan", "-f", f1, "--out", out], 0);
    assert!(
        shown.stderr.contains("Saved the plan to"),
        "{}",
        shown.stderr
    );
    let saved_text = std::fs::read_to_string(out).expect("the saved plan");
    // The saved plan is the `--json` plan, as text.
    let json = run_in(&saved_w, &["plan", "-f", f1, "--json"], 0);
    assert_eq!(
        serde_json::from_str::<Value>(&saved_text).unwrap(),
        serde_json::from_str::<Value>(&json.stdout).unwrap()
    );

    let from_saved = run_in(&saved_w, &["apply", "-f", f1, out, "--json"], 0);
    let direct = run_in(
        &direct_w,
        &["apply", "-f", f2, "--auto-approve", "--json"],
        0,
    );
    let got = outcomes(&from_saved.stdout, &s1);
    assert!(
        got.iter()
            .any(|(a, _, o)| a.contains("prefect.work_pool") && o == "created")
    );
    assert_eq!(got, outcomes(&direct.stdout, &s2));
    // Both converged the same way: the block the pool's template refers to included.
    for (w, f) in [(&saved_w, f1), (&direct_w, f2)] {
        run_in(w, &["plan", "-f", f, "--detailed-exitcode"], 0);
    }

    // A plan saved now (a change pending) holds neither the API key nor the block's key.
    let edited = format!(
        "{}  description: saved plans\n",
        testkit::light_plan(PROJECT, &s1)
    );
    std::fs::write(f1, &edited).unwrap();
    run_in(&saved_w, &["plan", "-f", f1, "--out", out], 0);
    let private = block_private_key(&saved_w, &s1).await.expect("block key");
    let text = std::fs::read_to_string(out).unwrap();
    testkit::assert_no_secret(&[&api_key, &private], &[("saved plan", &text)]);
    assert!(!text.contains("PRIVATE KEY"));
    run_in(&saved_w, &["apply", "-f", f1, out], 0);
    run_in(&saved_w, &["plan", "-f", f1, "--detailed-exitcode"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_saved_plan_is_refused_and_changes_nothing() {
    let w = World::start(PROJECT).await;
    let s = testkit::suffix("stale");
    let f = w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &s));
    let f = f.to_str().unwrap();
    let out = w.dir.path().join("plan.json");
    let out = out.to_str().unwrap();

    // Saved against the empty world, then someone applied: the saved creates are stale.
    run_in(&w, &["plan", "-f", f, "--out", out], 0);
    run_in(&w, &["apply", "-f", f, "--auto-approve"], 0);
    let r = run_in(&w, &["apply", "-f", f, out], 1);
    assert!(r.stderr.contains("is stale"), "{}", r.stderr);
    assert!(r.stderr.contains("no longer needed"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("plan --out {out}")),
        "{}",
        r.stderr
    );

    // Saved with nothing to do, then the plan file changed: the new change is not in it.
    run_in(&w, &["plan", "-f", f, "--out", out], 0);
    let edited = format!(
        "{}  description: edited\n",
        testkit::light_plan(PROJECT, &s)
    );
    std::fs::write(f, edited).unwrap();
    let r = run_in(&w, &["apply", "-f", f, out], 1);
    assert!(
        r.stderr
            .contains(&format!("prefect.work_pool[\"pool-{s}\"]"))
            && r.stderr.contains("saved plan does not have"),
        "{}",
        r.stderr
    );
    // Nothing was applied: the change is still pending.
    run_in(&w, &["plan", "-f", f, "--detailed-exitcode"], 2);

    // Not a saved plan at all.
    std::fs::write(out, "{\"format_version\": 7}").unwrap();
    let r = run_in(&w, &["apply", "-f", f, out], 1);
    assert!(r.stderr.contains("format_version 7"), "{}", r.stderr);
}

/// A work pool whose type changes is replaced (the op the planner chose: delete, then create),
/// from a saved plan too, and the credentials block ref is in the new pool's template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_type_change_is_a_replace_carried_out_from_a_saved_plan() {
    let w = World::start(PROJECT).await;
    let s = testkit::suffix("replace");
    let v2 = testkit::light_plan(PROJECT, &s);
    let f = w.plan_file("bootstrap.yaml", &v2);
    let f = f.to_str().unwrap();
    run_in(&w, &["apply", "-f", f, "--auto-approve"], 0);
    std::fs::write(f, v2.replace("type: cloud-run-v2", "type: cloud-run")).unwrap();
    let out = w.dir.path().join("plan.json");
    let out = out.to_str().unwrap();
    run_in(&w, &["plan", "-f", f, "--out", out], 0);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let step = saved["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"]["op"] == "replace_work_pool")
        .unwrap_or_else(|| panic!("no replace step in {saved:#}"));
    assert_eq!(step["action"], "replace");
    let r = run_in(&w, &["apply", "-f", f, out, "--json"], 0);
    assert!(
        outcomes(&r.stdout, &s).contains(&(
            "prefect.work_pool[\"pool-S\"]".into(),
            "replace".into(),
            "replaced".into()
        )),
        "{}",
        r.stdout
    );
    run_in(&w, &["plan", "-f", f, "--detailed-exitcode"], 0);
}
