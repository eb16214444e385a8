//! The client against a real Prefect server (started by `./test`; see testkit).

use std::time::Duration;

use bootstrap_prefect::*;
use serde_json::json;
use testkit::{prefect_api_url, unique_name};

fn client() -> PrefectClient {
    let config = PrefectConfig::for_url(&prefect_api_url()).expect("test server URL");
    PrefectClient::new(config).expect("client")
}

/// A pool, a flow and a deployment on it, all with fresh names.
async fn deployment(c: &PrefectClient) -> (WorkPool, Flow, Deployment) {
    let pool = c
        .create_work_pool(&WorkPoolCreate {
            name: unique_name("pool"),
            pool_type: "process".into(),
            description: None,
            base_job_template: None,
            is_paused: None,
            concurrency_limit: None,
        })
        .await
        .expect("pool");
    let flow = c
        .upsert_flow(&unique_name("flow"), &[])
        .await
        .expect("flow");
    let dep = c
        .upsert_deployment(
            flow.id,
            "dep",
            &DeploymentSpec {
                entrypoint: Some("flows/hello.py:hello".into()),
                work_pool_name: Some(pool.name.clone()),
                parameters: Some(
                    json!({"who": "world"})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
                ..Default::default()
            },
        )
        .await
        .expect("deployment");
    (pool, flow, dep)
}

#[tokio::test]
async fn health_answers() {
    client().health().await.expect("healthy");
}

#[tokio::test]
async fn block_roundtrip_keeps_secrets_masked_and_intact() {
    let c = client();
    let bt = c
        .block_type_by_slug("gcp-credentials")
        .await
        .expect("read")
        .expect("gcp-credentials is registered by every server");
    let schemas = c.block_schemas_for_type(bt.id).await.expect("schemas");
    let schema = pick_block_schema(&schemas, None).expect("a schema");
    // Split so that secret scanners do not flag a test string.
    let secret = concat!("-----BEGIN ", "PRIVATE KEY-----not-really-a-key-9f8e7d");
    let name = unique_name("creds");
    let data = json!({"project": "my-proj-123", "service_account_info": {"private_key": secret, "client_email": "a@b.iam.gserviceaccount.com"}});
    let created = c
        .create_block_document(&BlockDocumentCreate {
            name: name.clone(),
            block_type_id: bt.id,
            block_schema_id: schema.id,
            data: SecretValue::new(data.clone()),
        })
        .await
        .expect("create");
    assert_eq!(
        created.data["service_account_info"]["private_key"],
        "********"
    );
    assert_eq!(created.data["project"], "my-proj-123");

    let masked = c
        .block_document_by_name("gcp-credentials", &name)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        masked.data["service_account_info"]["private_key"],
        "********"
    );
    let real = c
        .block_document_by_name_with_secrets("gcp-credentials", &name)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(real.data.expose(), &data);
    testkit::assert_no_secret(&[secret], &[("debug", &format!("{real:?}"))]);

    // A merge PATCH of `project` alone keeps the secret.
    c.update_block_document(
        created.id,
        &SecretValue::new(json!({"project": "other-proj-456"})),
        None,
        true,
    )
    .await
    .expect("patch");
    let after = c
        .block_document_with_secrets(created.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(after.data.expose()["project"], "other-proj-456");
    assert_eq!(
        after.data.expose()["service_account_info"]["private_key"],
        secret
    );

    let dup = c
        .create_block_document(&BlockDocumentCreate {
            name: name.clone(),
            block_type_id: bt.id,
            block_schema_id: schema.id,
            data: SecretValue::new(json!({})),
        })
        .await
        .expect_err("duplicate");
    assert!(matches!(dup, PrefectError::Conflict { .. }), "{dup}");

    assert!(c.delete_block_document(created.id).await.expect("delete"));
    assert!(
        !c.delete_block_document(created.id)
            .await
            .expect("delete again")
    );
    assert!(c.block_document(created.id).await.expect("read").is_none());
    assert!(
        c.block_type_by_slug("no-such-type-x")
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
async fn work_pool_from_default_template_then_patched() {
    let c = client();
    let mut template = c
        .default_base_job_template("cloud-run-v2")
        .await
        .expect("metadata view")
        .expect("cloud-run-v2 is in the bundled metadata");
    assert!(template["variables"]["properties"]["region"].is_object());
    let name = unique_name("crv2");
    let pool = c
        .create_work_pool(&WorkPoolCreate {
            name: name.clone(),
            pool_type: "cloud-run-v2".into(),
            description: Some("test pool".into()),
            base_job_template: Some(template.clone()),
            is_paused: None,
            concurrency_limit: None,
        })
        .await
        .expect("create");
    assert_eq!(pool.pool_type, "cloud-run-v2");

    template["variables"]["properties"]["region"]["default"] = json!("europe-west1");
    c.update_work_pool(
        &name,
        &WorkPoolUpdate {
            base_job_template: Some(template),
            ..Default::default()
        },
    )
    .await
    .expect("patch");
    let read = c.work_pool(&name).await.expect("read").expect("exists");
    assert_eq!(
        read.base_job_template["variables"]["properties"]["region"]["default"],
        "europe-west1"
    );
    assert_eq!(read.description.as_deref(), Some("test pool"));

    let q = c
        .create_work_queue(
            &name,
            &WorkQueueCreate {
                name: "high".into(),
                priority: Some(2),
                ..Default::default()
            },
        )
        .await
        .expect("queue");
    assert_eq!(q.name, "high");
    let queues: Vec<String> = c
        .work_queues(&name)
        .await
        .expect("queues")
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert!(
        queues.contains(&"default".to_string()) && queues.contains(&"high".to_string()),
        "{queues:?}"
    );

    c.worker_heartbeat(&name, "test-worker", 30)
        .await
        .expect("heartbeat");
    assert!(c.delete_work_pool(&name).await.expect("delete"));
    assert!(c.work_pool(&name).await.expect("read").is_none());
    assert!(!c.delete_work_pool(&name).await.expect("delete again"));
}

#[tokio::test]
async fn flow_and_deployment_upserts() {
    let c = client();
    let (pool, flow, dep) = deployment(&c).await;
    let again = c.upsert_flow(&flow.name, &[]).await.expect("upsert");
    assert_eq!(again.id, flow.id);
    assert_eq!(
        c.flow_by_name(&flow.name)
            .await
            .expect("read")
            .map(|f| f.id),
        Some(flow.id)
    );
    assert_eq!(
        c.flow(flow.id).await.expect("read").map(|f| f.name),
        Some(flow.name.clone())
    );

    let read = c
        .deployment_by_name(&flow.name, "dep")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(read.id, dep.id);
    assert_eq!(read.entrypoint.as_deref(), Some("flows/hello.py:hello"));
    assert_eq!(read.work_pool_name.as_deref(), Some(pool.name.as_str()));

    // PATCH changes only what is given.
    c.update_deployment(
        dep.id,
        &DeploymentSpec {
            description: Some("patched".into()),
            ..Default::default()
        },
    )
    .await
    .expect("patch");
    let read = c.deployment(dep.id).await.expect("read").expect("exists");
    assert_eq!(read.description.as_deref(), Some("patched"));
    assert_eq!(read.entrypoint.as_deref(), Some("flows/hello.py:hello"));
    assert_eq!(read.parameters.get("who"), Some(&json!("world")));

    // A second POST with the same flow and name updates the same deployment.
    let up = c
        .upsert_deployment(
            flow.id,
            "dep",
            &DeploymentSpec {
                entrypoint: Some("flows/other.py:other".into()),
                work_pool_name: Some(pool.name.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("upsert");
    assert_eq!(up.id, dep.id);
    assert_eq!(up.entrypoint.as_deref(), Some("flows/other.py:other"));

    assert!(
        c.deployment_by_name(&flow.name, "nope")
            .await
            .expect("read")
            .is_none()
    );
    assert!(c.delete_deployment(dep.id).await.expect("delete"));
    assert!(!c.delete_deployment(dep.id).await.expect("delete again"));
    c.delete_work_pool(&pool.name).await.expect("cleanup");
}

#[tokio::test]
async fn concurrent_pending_claims_have_exactly_one_winner() {
    let c = client();
    let (pool, _flow, dep) = deployment(&c).await;
    for _ in 0..5 {
        let run = c
            .create_flow_run_from_deployment(dep.id, &FlowRunFromDeployment::default())
            .await
            .expect("run");
        assert_eq!(run.state_type(), StateType::Scheduled);
        let pending = StateCreate {
            state_type: StateType::Pending,
            name: None,
            message: Some("claimed by a test".into()),
        };
        let (a, b) = tokio::join!(
            c.set_flow_run_state(run.id, &pending, false),
            c.set_flow_run_state(run.id, &pending, false)
        );
        let statuses = [a.expect("a").status, b.expect("b").status];
        let accepted = statuses
            .iter()
            .filter(|s| **s == SetStateStatus::Accept)
            .count();
        assert_eq!(accepted, 1, "{statuses:?}");
        let read = c.flow_run(run.id).await.expect("read").expect("exists");
        assert_eq!(read.state_type(), StateType::Pending);
        let history: Vec<StateType> = c
            .flow_run_states(run.id)
            .await
            .expect("history")
            .iter()
            .map(|s| s.state_type)
            .collect();
        assert_eq!(history, [StateType::Scheduled, StateType::Pending]);
    }
    c.delete_work_pool(&pool.name).await.expect("cleanup");
}

#[tokio::test]
async fn scheduled_runs_pid_labels_filters_and_logs() {
    let c = client();
    let (pool, _flow, dep) = deployment(&c).await;
    let run = c
        .create_flow_run_from_deployment(
            dep.id,
            &FlowRunFromDeployment {
                parameters: json!({"who": "rust"}).as_object().cloned(),
                tags: Some(vec!["adhoc".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    assert_eq!(run.parameters.get("who"), Some(&json!("rust")));

    let due = c
        .get_scheduled_flow_runs(
            &pool.name,
            &[],
            chrono::Utc::now() + chrono::Duration::seconds(10),
            Some(10),
        )
        .await
        .expect("scheduled");
    assert!(due.iter().any(|r| r.flow_run.id == run.id));

    let filtered = c
        .filter_flow_runs(&FlowRunQuery {
            states: vec![StateType::Scheduled],
            work_pool_names: vec![pool.name.clone()],
            deployment_ids: vec![dep.id],
            ..Default::default()
        })
        .await
        .expect("filter");
    assert_eq!(
        filtered.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![run.id]
    );

    c.set_flow_run_infrastructure_pid(run.id, "job-abc")
        .await
        .expect("pid");
    let mut labels = serde_json::Map::new();
    labels.insert("bootstrap.worker".into(), json!("w1"));
    c.update_flow_run_labels(run.id, &labels)
        .await
        .expect("labels");
    let read = c.flow_run(run.id).await.expect("read").expect("exists");
    assert_eq!(read.infrastructure_pid.as_deref(), Some("job-abc"));
    assert_eq!(read.labels.get("bootstrap.worker"), Some(&json!("w1")));

    let t0 = chrono::Utc::now();
    let lines: Vec<LogCreate> = (0..3)
        .map(|i| LogCreate {
            name: "bootstrap.test".into(),
            level: 20,
            message: format!("line {i}"),
            timestamp: t0 + chrono::Duration::milliseconds(i),
            flow_run_id: Some(run.id),
        })
        .collect();
    c.create_logs(&lines).await.expect("logs");
    let logs = c
        .all_flow_run_logs(run.id, None, 5)
        .await
        .expect("read logs");
    let msgs: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(msgs, ["line 0", "line 1", "line 2"]);
    let later = c
        .flow_run_logs(run.id, Some(t0 + chrono::Duration::milliseconds(1)), 0, 200)
        .await
        .expect("read logs");
    assert_eq!(later.len(), 2);
    assert!(
        c.flow_run_artifacts(run.id)
            .await
            .expect("artifacts")
            .is_empty()
    );
    assert!(
        c.variable_by_name(&unique_name("var"))
            .await
            .expect("var")
            .is_none()
    );
    c.delete_work_pool(&pool.name).await.expect("cleanup");
}

#[tokio::test]
async fn event_stream_sees_a_new_scheduled_run() {
    let c = client();
    let (pool, _flow, dep) = deployment(&c).await;
    let mut filter = EventFilter::live();
    filter.event_names = vec!["prefect.flow-run.Scheduled".into()];
    filter.related_ids = vec![format!("prefect.work-pool.{}", pool.id)];
    let mut stream = c
        .subscribe_events(&filter, false, Duration::from_secs(10))
        .await
        .expect("subscribe");
    let run = c
        .create_flow_run_from_deployment(dep.id, &FlowRunFromDeployment::default())
        .await
        .expect("run");
    let event = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("an event within 15 s")
        .expect("stream ok")
        .expect("not closed");
    assert_eq!(event.event, "prefect.flow-run.Scheduled");
    assert_eq!(event.flow_run_id(), Some(run.id));
    stream.close().await;

    // The same event is there for catching up after a disconnect.
    let mut past = filter.clone();
    past.since = chrono::Utc::now() - chrono::Duration::minutes(5);
    past.until = chrono::Utc::now() + chrono::Duration::minutes(1);
    // Events are stored by a background service in batches: poll, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = c.filter_events(&past, 50).await.expect("filter events");
        if page.events.iter().any(|e| e.flow_run_id() == Some(run.id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Scheduled event was not stored within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.delete_work_pool(&pool.name).await.expect("cleanup");
}

#[tokio::test]
async fn errors_are_one_clear_line() {
    // Nothing listens on port 1: refused at once, retried briefly, then one line.
    let dead = PrefectClient::new(PrefectConfig::for_url("http://127.0.0.1:1/api").expect("url"))
        .expect("client")
        .with_retry(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            deadline: Duration::from_secs(2),
            jitter: bootstrap_prefect::Jitter::Equal,
        });
    let e = dead.health().await.expect_err("unreachable");
    assert!(matches!(e, PrefectError::Unreachable { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("127.0.0.1:1") && msg.contains("PREFECT_API_URL"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    let e = dead
        .subscribe_events(&EventFilter::live(), false, Duration::from_secs(5))
        .await
        .expect_err("no stream");
    assert!(e.to_string().contains("cannot connect"), "{e}");

    let c = client();
    let e = c
        .update_deployment(uuid::Uuid::new_v4(), &DeploymentSpec::default())
        .await
        .expect_err("404");
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().starts_with("deployment "), "{e}");

    // The server rejects a template that uses an undeclared variable.
    let e = c
        .create_work_pool(&WorkPoolCreate {
            name: unique_name("bad"),
            pool_type: "cloud-run-v2".into(),
            description: None,
            base_job_template: Some(json!({"job_configuration": {"image": "{{ image }}"}, "variables": {"properties": {}}})),
            is_paused: None,
            concurrency_limit: None,
        })
        .await
        .expect_err("422");
    assert!(matches!(e, PrefectError::Unprocessable { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("image") && !msg.contains('\n'), "{msg}");

    // A URL that is not the API (the server root without /api) is a clear error too.
    let root = prefect_api_url().trim_end_matches("/api").to_string();
    let wrong = PrefectClient::new(PrefectConfig::for_url(&root).expect("url")).expect("client");
    let e = wrong.health().await.expect_err("not the api");
    assert!(e.to_string().contains("ends in /api"), "{e}");
}

/// `deployments_by_names` finds exactly the asked-for `flow/name` pairs in two requests per
/// page: not the other combinations of the same names, not absent ones; and it pages past the
/// server's 200 per request.
#[tokio::test]
async fn deployments_by_names_batches_and_pages() {
    let c = client();
    let (pool, flow_a, _) = deployment(&c).await;
    let flow_b = c
        .upsert_flow(&unique_name("flow"), &[])
        .await
        .expect("flow b");
    let spec = DeploymentSpec {
        entrypoint: Some("flows/hello.py:hello".into()),
        work_pool_name: Some(pool.name.clone()),
        ..Default::default()
    };
    // a/x, b/y and b/x exist; a/y does not.
    for (flow, name) in [(&flow_a, "x"), (&flow_b, "y"), (&flow_b, "x")] {
        c.upsert_deployment(flow.id, name, &spec)
            .await
            .expect("deployment");
    }
    let key = |f: &Flow, n: &str| (f.name.clone(), n.to_string());
    let wanted = vec![
        key(&flow_a, "x"),
        key(&flow_a, "y"),
        key(&flow_b, "y"),
        key(&flow_a, "dep"),
    ];
    let got = c.deployments_by_names(&wanted).await.expect("batch read");
    let keys: Vec<_> = got.keys().cloned().collect();
    assert_eq!(
        keys,
        {
            let mut k = vec![key(&flow_a, "dep"), key(&flow_a, "x"), key(&flow_b, "y")];
            k.sort();
            k
        },
        "b/x exists but was not asked for; a/y was asked for but does not exist"
    );
    for (k, d) in &got {
        let flow = if k.0 == flow_a.name { &flow_a } else { &flow_b };
        assert_eq!(d.flow_id, flow.id);
        assert_eq!(d.name, k.1);
    }
    assert!(c.deployments_by_names(&[]).await.expect("empty").is_empty());

    // More than one page (the server's limit is 200 per request).
    let flow_c = c
        .upsert_flow(&unique_name("flow"), &[])
        .await
        .expect("flow c");
    let names: Vec<String> = (0..205).map(|i| format!("p{i:03}")).collect();
    for n in &names {
        c.upsert_deployment(flow_c.id, n, &spec)
            .await
            .expect("deployment");
    }
    let wanted: Vec<_> = names.iter().map(|n| key(&flow_c, n)).collect();
    let got = c.deployments_by_names(&wanted).await.expect("paged read");
    assert_eq!(got.len(), 205);
}
