//! The worker against a real Prefect server, with Cloud Run out of reach (the credentials'
//! key is unusable), so every submission fails after the claim. This checks the Prefect side
//! of the protocol: claims settle on `status` (two workers, each run claimed once), submission
//! failures end CRASHED with the reason, event-driven pickup, and SIGTERM exits promptly.
//! The Cloud Run side is covered by `worker::e2e` against the sandbox.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bootstrap_prefect::{
    BlockDocumentCreate, PrefectClient, PrefectConfig, SecretValue, StateType, WorkPoolCreate,
};
use serde_json::json;
use uuid::Uuid;

fn client() -> PrefectClient {
    PrefectClient::new(PrefectConfig::for_url(&testkit::prefect_api_url()).expect("url"))
        .expect("client")
}

/// A client, a new [`pool_with_broken_credentials`] named from `prefix`, and a deployment
/// on it: (client, pool name, deployment id).
async fn broken_pool_with_deployment(prefix: &str) -> (PrefectClient, String, Uuid) {
    let c = client();
    let pool = testkit::unique_name(prefix);
    pool_with_broken_credentials(&c, &pool).await;
    let dep = testkit::hello_deployment(&c, &pool).await;
    (c, pool, dep)
}

/// A cloud-run-v2 pool whose credentials block holds a key that cannot sign anything.
async fn pool_with_broken_credentials(c: &PrefectClient, name: &str) -> Uuid {
    let bt = c
        .block_type_by_slug("gcp-credentials")
        .await
        .expect("read")
        .expect("block type");
    let schemas = c.block_schemas_for_type(bt.id).await.expect("schemas");
    let schema = bootstrap_prefect::pick_block_schema(&schemas, None).expect("a schema");
    let block = c
        .create_block_document(&BlockDocumentCreate {
            name: format!("{name}-creds"),
            block_type_id: bt.id,
            block_schema_id: schema.id,
            data: SecretValue::new(json!({"project": "p-test", "service_account_info": {
                "type": "service_account", "project_id": "p-test", "private_key_id": "k",
                "private_key": concat!("-----BEGIN ", "PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"),
                "client_email": "runner@p-test.iam.gserviceaccount.com", "client_id": "1",
                "token_uri": "http://127.0.0.1:9/token"
            }})),
        })
        .await
        .expect("block");
    let mut template: serde_json::Value = serde_json::from_str(include_str!(
        "../../fixtures/worker/template_cloud_run_v2.json"
    ))
    .expect("template");
    template["variables"]["properties"]["credentials"]["default"] =
        json!({"$ref": {"block_document_id": block.id}});
    let create = WorkPoolCreate {
        name: name.to_string(),
        pool_type: "cloud-run-v2".into(),
        description: None,
        base_job_template: Some(template),
        is_paused: None,
        concurrency_limit: None,
    };
    // The shared SQLite server answers 503 for seconds at a time under the whole suite's load.
    let mut attempt = 0;
    let pool = loop {
        attempt += 1;
        match c.create_work_pool(&create).await {
            Ok(p) => break p,
            Err(e) if attempt < 5 => eprintln!("creating the pool failed ({e}); retrying"),
            Err(e) => panic!("pool: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    pool.id
}

/// A worker process, killed on drop so that a failing test leaves no process behind.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn worker(pool: &str, name: &str, poll: &str) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .args([
            "worker",
            "--pool",
            pool,
            "--name",
            name,
            "--poll-interval",
            poll,
        ])
        .env("PREFECT_API_URL", testkit::prefect_api_url())
        .env("BOOTSTRAP_GCP_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("PREFECT_API_KEY")
        .env("RUST_LOG", "warn,bootstrap=debug,bootstrap_prefect=debug")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join(format!("{name}-{pool}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("worker starts");
    Worker(child)
}

/// Sends SIGTERM and returns how long the worker took to exit.
fn stop(mut w: Worker) -> Duration {
    let t0 = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &w.0.id().to_string()])
        .status();
    loop {
        if let Ok(Some(_)) = w.0.try_wait() {
            return t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(15) {
            return t0.elapsed(); // killed on drop
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_final(c: &PrefectClient, ids: &[Uuid], within: Duration) {
    let t0 = Instant::now();
    loop {
        let mut done = 0;
        for id in ids {
            if c.flow_run(*id)
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.state_type().is_terminal())
            {
                done += 1;
            }
        }
        if done == ids.len() {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "{done}/{} runs final after {within:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_claim_each_run_once_and_report_submission_failures() {
    let (c, pool, dep) = broken_pool_with_deployment("wpool").await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(testkit::quick_run(&c, dep).await);
    }
    let w1 = worker(&pool, "w-one", "1");
    let w2 = worker(&pool, "w-two", "1");
    wait_final(&c, &ids, Duration::from_secs(90)).await;
    for id in &ids {
        let run = c.flow_run(*id).await.expect("read").expect("run");
        let state = run.state.expect("state");
        assert_eq!(state.state_type, StateType::Crashed, "{id}");
        let msg = state.message.unwrap_or_default();
        assert!(
            msg.starts_with("Failed to submit flow run to infrastructure: "),
            "{msg}"
        );
        assert!(
            !msg.contains(concat!("BEGIN ", "PRIVATE KEY")) && !msg.contains("bm90IGEga2V5"),
            "no key material: {msg}"
        );
        let states = c.flow_run_states(*id).await.expect("states");
        let submitted: Vec<String> = c
            .flow_run_logs(*id, None, 0, 50)
            .await
            .expect("logs")
            .into_iter()
            .filter(|l| l.message.contains("submitting"))
            .map(|l| l.message)
            .collect();
        assert_eq!(submitted.len(), 1, "run {id} submitted once: {submitted:?}");
        // The server may ACCEPT two concurrent PENDING claims (SQLite): the history can hold
        // both; what must hold is that only one worker went on to submit.
        let pendings = states
            .iter()
            .filter(|s| s.state_type == StateType::Pending)
            .count();
        assert!(
            (1..=2).contains(&pendings),
            "run {id}: {pendings} PENDING states"
        );
    }
    // The worker shipped its own log lines for the runs.
    let logs = c.flow_run_logs(ids[0], None, 0, 50).await.expect("logs");
    assert!(
        logs.iter().any(|l| l.name == "prefect.flow_runs.worker"),
        "worker logs shipped"
    );
    for w in [w1, w2] {
        let took = stop(w);
        assert!(took < Duration::from_secs(6), "SIGTERM exit took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_make_pickup_immediate() {
    let (c, pool, dep) = broken_pool_with_deployment("wpool-ev").await;
    // Polls every 60 s: only the event stream can make pickup fast.
    let w = worker(&pool, "w-ev", "60");
    tokio::time::sleep(Duration::from_secs(3)).await; // connected and past its first poll
    let t0 = Instant::now();
    let run = testkit::quick_run(&c, dep).await;
    loop {
        let r = c.flow_run(run).await.expect("read").expect("run");
        if r.state_type() != StateType::Scheduled {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not picked up within 10 s with a 60 s poll interval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pickup = t0.elapsed();
    eprintln!("pickup latency: {pickup:?}");
    stop(w);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .args(["worker", "--pool", "x", "--limit", "0"])
        .env("PREFECT_API_URL", "http://127.0.0.1:9/api")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit must be at least 1"));
    let out = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .args(["worker", "--pool", "no-such-pool-anywhere"])
        .env("PREFECT_API_URL", testkit::prefect_api_url())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
