//! Calls that grow with the number of deployments (issue #20 item 2), counted the way
//! `./bench`'s scale section counts them: the Prefect requests from the tool's own debug log
//! (`RUST_LOG=bootstrap_prefect=debug`, one line per request sent), Google's from the sandbox's
//! per-method counters. Regression: apply used to send `POST /flows/` for every deployment step
//! (a change to one of a hundred deployments: a flow upsert and a deployment upsert; a first
//! apply of N deployments of F flows: N flow upserts).

use std::collections::BTreeMap;

use testkit::World;

const PROJECT: &str = "prefect-project";

/// [`testkit::light_plan`] with `n` deployments over `flows` flows; deployment `changed` gets
/// other parameters.
fn plan(suffix: &str, n: usize, flows: usize, changed: Option<usize>) -> String {
    let mut p = testkit::light_plan(PROJECT, suffix);
    p.push_str("deployments:\n");
    for i in 0..n {
        let city = if changed == Some(i) {
            "Ogdenville"
        } else {
            "Springfield"
        };
        p.push_str(&format!(
            "  - name: d{i}-{suffix}\n    flow: flow{}-{suffix}\n    entrypoint: flows/x.py:x\n    \
             image: prefecthq/prefect:3-latest\n    parameters: {{city: {city}}}\n    work_queue: default\n",
            i % flows
        ));
    }
    p
}

/// `METHOD path` of each Prefect request in a debug log, counted; ids left as they are.
fn prefect_calls(stderr: &str) -> BTreeMap<String, usize> {
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        let rest = &line[at..];
        match rest.strip_prefix('"') {
            Some(q) => Some(q[..q.find('"')?].to_string()),
            None => Some(rest.split_whitespace().next()?.to_string()),
        }
    };
    let mut out = BTreeMap::new();
    // The client logs a line per attempt (`attempt=N`); a request retried on a loaded server's
    // 503 is still one request: only first attempts count (regression: a retried upsert made
    // this test see two deployment writes for one planned change).
    let first_attempt = |line: &str| field(line, "attempt").is_none_or(|a| a == "1");
    for line in stderr
        .lines()
        .filter(|l| l.contains(" prefect api") && first_attempt(l))
    {
        if let (Some(m), Some(p)) = (field(line, "method"), field(line, "path")) {
            *out.entry(format!("{m} {p}")).or_default() += 1;
        }
    }
    out
}

/// Writes: anything but a read (GET, a `/filter` POST).
fn writes(calls: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    calls
        .iter()
        .filter(|(c, _)| !c.starts_with("GET ") && !c.ends_with("/filter"))
        .map(|(c, n)| (c.clone(), *n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_one_of_many_deployments_sends_only_its_upsert() {
    let mut w = World::start(PROJECT).await;
    w.env
        .push(("RUST_LOG".into(), "warn,bootstrap_prefect=debug".into()));
    let suffix = testkit::suffix("calls");
    let (n, flows) = (24, 3);
    let first = w.plan_file("first.yaml", &plan(&suffix, n, flows, None));
    let first = first.to_str().unwrap();
    let r = testkit::run_in(&w, &["apply", "-f", first, "--auto-approve"], 0);
    let calls = prefect_calls(&r.stderr);
    // One flow upsert per flow, shared by its deployments' steps (before: one per deployment).
    let flow_upserts = calls.get("POST /flows/").copied().unwrap_or(0);
    assert_eq!(
        flow_upserts, flows,
        "{flow_upserts} flow upserts for {flows} flows: {calls:?}"
    );
    assert!(calls.get("POST /deployments/").copied().unwrap_or(0) >= n);

    let changed = w.plan_file("changed.yaml", &plan(&suffix, n, flows, Some(17)));
    let changed = changed.to_str().unwrap();
    w.sandbox.state.faults.reset_calls();
    let r = testkit::run_in(&w, &["apply", "-f", changed, "--auto-approve"], 0);
    let calls = prefect_calls(&r.stderr);
    // Beyond the reads every plan makes, exactly that deployment's upsert: the flow's id came
    // from the batch read, so no `POST /flows/`.
    assert_eq!(
        writes(&calls),
        BTreeMap::from([("POST /deployments/".to_string(), 1)]),
        "{calls:?}\n{}",
        r.stdout
    );
    let google_writes: Vec<(String, u64)> = w
        .sandbox
        .state
        .faults
        .calls()
        .into_iter()
        .filter(|(m, _)| {
            [".create", ".patch", ".delete", ".setIamPolicy", ".enable"]
                .iter()
                .any(|s| m.ends_with(s))
        })
        .collect();
    assert!(google_writes.is_empty(), "{google_writes:?}");
    // Regression: every plan listed the worker's Cloud Run jobs in each region, though only a
    // destroy uses them.
    let job_lists: Vec<(String, u64)> = w
        .sandbox
        .state
        .faults
        .calls()
        .into_iter()
        .filter(|(m, _)| m.ends_with("jobs.list"))
        .collect();
    assert!(job_lists.is_empty(), "{job_lists:?}");
    // And the change landed.
    let client = testkit::prefect_client(&w.prefect_url);
    let d = client
        .deployment_by_name(&format!("flow2-{suffix}"), &format!("d17-{suffix}"))
        .await
        .expect("read")
        .expect("deployment exists");
    assert_eq!(d.parameters["city"], "Ogdenville");
    // Only the plan's own objects remain ours to clean: destroy them.
    testkit::run_in(&w, &["destroy", "-f", changed, "--auto-approve"], 0);
}
