//! Clients against the local fake: wire paths and bodies as the discovery documents give
//! them, operation polling, IAM read-modify-write, keys and secrets.

use crate::support;

use std::time::{Duration, Instant};

use base64::Engine;
use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
use bootstrap_gcp::{GcpError, iam, run_jobs, run_v1, run_v2, secretmanager, serviceusage};
use bootstrap_ids::{ProjectId, Region, RunJobName, RunServiceName, SecretId, ServiceAccountEmail};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use support::{Canned, Fake, fast_retry};

fn project() -> ProjectId {
    ProjectId::parse("demo-project").unwrap()
}

fn region() -> Region {
    Region::parse("us-central1").unwrap()
}

const SA: &str = "serviceAccount:robot-one@demo-project.iam.gserviceaccount.com";

#[tokio::test]
async fn service_patch_then_operation_polling() {
    let op_name = "projects/demo-project/locations/us-central1/operations/op-1";
    let fake = Fake::start(vec![
        Canned::json(200, json!({"name": op_name, "metadata": {"@type": "x"}})),
        Canned::json(200, json!({"name": op_name, "done": false})),
        Canned::json(
            200,
            json!({"name": op_name, "done": true,
                   "response": {"name": "projects/demo-project/locations/us-central1/services/prefect-worker",
                                "uri": "https://w.run.app", "generation": "2"}}),
        ),
    ])
    .await;
    let http = fake.client(fast_retry());
    let svc = RunServiceName::parse("prefect-worker").unwrap();
    let spec: run_v2::Service = serde_json::from_value(json!({
        "template": {"scaling": {"minInstanceCount": 1},
                     "containers": [{"image": "prefecthq/prefect:3-latest",
                                     "resources": {"cpuIdle": false}}]}
    }))
    .unwrap();
    let op = run_v2::patch_service(&http, &project(), &region(), &svc, &spec, true, false)
        .await
        .unwrap();
    let done: run_v2::Service = run_v2::wait_operation_as(&http, op, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.uri.as_deref(), Some("https://w.run.app"));

    let seen = fake.seen();
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(
        seen[0].uri,
        "/v2/projects/demo-project/locations/us-central1/services/prefect-worker?allowMissing=true"
    );
    let body = seen[0].json();
    assert_eq!(
        body["name"],
        "projects/demo-project/locations/us-central1/services/prefect-worker"
    );
    assert_eq!(
        body["template"]["containers"][0]["resources"]["cpuIdle"],
        false
    );
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].uri, format!("/v2/{op_name}"));
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn operation_errors_and_deadlines() {
    let op_name = "projects/demo-project/locations/us-central1/operations/op-2";
    let fake = Fake::start(vec![Canned::json(
        200,
        json!({"name": op_name, "done": true, "error": {"code": 9, "message": "Revision 'x' is not ready"}}),
    )])
    .await;
    let http = fake.client(fast_retry());
    let pending = bootstrap_gcp::Operation {
        name: op_name.into(),
        ..Default::default()
    };
    let err = run_v2::wait_operation(&http, pending.clone(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GcpError::FailedPrecondition { .. }),
        "{err:?}"
    );

    let fake = Fake::start(vec![Canned::json(200, json!({"name": op_name})); 20]).await;
    let http = fake.client(fast_retry());
    let started = Instant::now();
    let err = run_v2::wait_operation(&http, pending, Duration::from_millis(700))
        .await
        .unwrap_err();
    assert!(matches!(err, GcpError::OperationTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // 250 ms, then 375 ms: two or three polls fit before the deadline, never a tight loop.
    let polls = fake.seen().len();
    assert!((1..=4).contains(&polls), "{polls} polls");
}

#[tokio::test]
async fn run_job_returns_the_execution_in_metadata() {
    let exec =
        "projects/demo-project/locations/us-central1/jobs/flow-run-1/executions/flow-run-1-abc";
    let fake = Fake::start(vec![
        Canned::json(
            200,
            json!({"name": "projects/demo-project/locations/us-central1/operations/o",
                                "metadata": {"name": exec, "job": "flow-run-1", "taskCount": 1}}),
        ),
        Canned::json(200, json!({"name": exec, "runningCount": 1})),
        Canned::json(
            200,
            json!({"name": "projects/demo-project/locations/us-central1/operations/c"}),
        ),
        Canned::error(404, "NOT_FOUND", "no such execution"),
    ])
    .await;
    let http = fake.client(fast_retry());
    let job = RunJobName::parse("flow-run-1").unwrap();
    let op = run_v2::run_job(&http, &project(), &region(), &job, &Default::default())
        .await
        .unwrap();
    let execution: run_v2::Execution = op.metadata_as().unwrap().unwrap();
    assert_eq!(execution.id(), "flow-run-1-abc");
    let got = run_v2::get_execution(&http, &execution.name)
        .await
        .unwrap()
        .unwrap();
    assert!(!got.is_finished());
    run_v2::cancel_execution(&http, &execution.name)
        .await
        .unwrap();
    assert!(
        run_v2::get_execution(&http, &execution.name)
            .await
            .unwrap()
            .is_none()
    );
    let seen = fake.seen();
    assert_eq!(
        seen[0].uri,
        "/v2/projects/demo-project/locations/us-central1/jobs/flow-run-1:run"
    );
    assert_eq!(seen[0].json(), json!({}));
    assert_eq!(seen[2].uri, format!("/v2/{exec}:cancel"));
}

#[tokio::test]
async fn project_policy_read_modify_write_survives_a_concurrent_writer() {
    let fake = Fake::start(vec![
        Canned::json(200, json!({"version": 1, "etag": "A", "bindings": [
            {"role": "roles/run.admin", "members": ["user:alice@example.com"]}]})),
        Canned::error(409, "ABORTED", "There were concurrent policy changes."),
        Canned::json(200, json!({"version": 1, "etag": "B", "bindings": [
            {"role": "roles/run.admin", "members": ["user:alice@example.com", "user:bob@example.com"]}]})),
        Canned::json(200, json!({"version": 1, "etag": "C", "bindings": [
            {"role": "roles/run.admin", "members": ["user:alice@example.com", "user:bob@example.com", SA]}]})),
    ])
    .await;
    let http = fake.client(fast_retry());
    let opts = RmwOptions {
        retry: fast_retry(),
        ..RmwOptions::default()
    };
    let out = policy::read_modify_write(&http, &PolicyTarget::Project(project()), opts, |p| {
        policy::add_member(p, "roles/run.admin", SA)
    })
    .await
    .unwrap();
    assert!(out.changed);
    assert_eq!(out.cycles, 2);
    assert_eq!(out.policy.etag.as_deref(), Some("C"));
    let seen = fake.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].uri, "/v1/projects/demo-project:getIamPolicy");
    assert_eq!(
        seen[0].json(),
        json!({"options": {"requestedPolicyVersion": 3}})
    );
    let second_write = seen[3].json();
    assert_eq!(seen[3].uri, "/v1/projects/demo-project:setIamPolicy");
    assert_eq!(second_write["updateMask"], "bindings,etag");
    assert_eq!(second_write["policy"]["etag"], "B");
    assert_eq!(
        second_write["policy"]["bindings"][0]["members"],
        json!(["user:alice@example.com", "user:bob@example.com", SA])
    );
}

#[tokio::test]
async fn read_modify_write_without_change_does_not_write() {
    let fake = Fake::start(vec![Canned::json(
        200,
        json!({"etag": "A", "bindings": [
        {"role": "roles/run.admin", "members": [SA]}]}),
    )])
    .await;
    let http = fake.client(fast_retry());
    let out = policy::read_modify_write(
        &http,
        &PolicyTarget::Project(project()),
        RmwOptions::default(),
        |p| policy::add_member(p, "roles/run.admin", SA),
    )
    .await
    .unwrap();
    assert!(!out.changed);
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn missing_member_is_retried_only_when_opted_in() {
    let script = || {
        vec![
            Canned::json(200, json!({"etag": "A", "bindings": []})),
            Canned::error(
                400,
                "INVALID_ARGUMENT",
                "Service account robot-one@demo-project.iam.gserviceaccount.com does not exist.",
            ),
            Canned::json(200, json!({"etag": "A", "bindings": []})),
            Canned::json(
                200,
                json!({"etag": "B", "bindings": [{"role": "roles/run.admin", "members": [SA]}]}),
            ),
        ]
    };
    let edit = |p: &mut policy::Policy| policy::add_member(p, "roles/run.admin", SA);
    let target = PolicyTarget::ServiceAccount {
        project: project(),
        email: ServiceAccountEmail::parse("robot-one@demo-project.iam.gserviceaccount.com")
            .unwrap(),
    };

    let fake = Fake::start(script()).await;
    let http = fake.client(fast_retry());
    let opts = RmwOptions {
        retry: fast_retry(),
        member_grace: None,
    };
    let err = policy::read_modify_write(&http, &target, opts, edit)
        .await
        .unwrap_err();
    assert!(err.is_member_not_found(), "{err:?}");

    let fake = Fake::start(script()).await;
    let http = fake.client(fast_retry());
    let opts = RmwOptions {
        retry: fast_retry(),
        member_grace: Some(Duration::from_secs(10)),
    };
    let out = policy::read_modify_write(&http, &target, opts, edit)
        .await
        .unwrap();
    assert!(out.changed);
    let seen = fake.seen();
    assert_eq!(
        seen[0].uri,
        "/v1/projects/demo-project/serviceAccounts/robot-one@demo-project.iam.gserviceaccount.com:getIamPolicy?options.requestedPolicyVersion=3"
    );
    assert_eq!(seen[0].method, "POST");
}

#[tokio::test]
async fn key_creation_returns_the_key_file_as_a_secret() {
    // A fake key; the PEM header is split so that secret scanners do not flag it.
    let key_file = concat!(
        r#"{"type":"service_account","private_key_id":"k1","private_key":"-----BEGIN "#,
        r#"PRIVATE KEY-----\nTOPSECRET\n-----END PRIVATE KEY-----\n"}"#
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(key_file);
    let fake = Fake::start(vec![
        Canned::json(200, json!({"name": "projects/demo-project/serviceAccounts/robot-one@demo-project.iam.gserviceaccount.com/keys/k1",
                                "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE", "privateKeyData": b64,
                                "keyType": "USER_MANAGED"})),
        Canned::error(400, "FAILED_PRECONDITION", "Key creation is not allowed on this service account."),
    ])
    .await;
    let http = fake.client(fast_retry());
    let email =
        ServiceAccountEmail::parse("robot-one@demo-project.iam.gserviceaccount.com").unwrap();
    let created = iam::create_key(&http, &project(), &email).await.unwrap();
    assert_eq!(created.key.key_id(), "k1");
    assert_eq!(created.json.expose_secret(), key_file);
    assert!(!format!("{created:?}").contains("TOPSECRET"));
    assert_eq!(
        fake.seen()[0].json(),
        json!({"privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE", "keyAlgorithm": "KEY_ALG_RSA_2048"})
    );
    let err = iam::create_key(&http, &project(), &email)
        .await
        .unwrap_err();
    assert!(err.is_key_creation_forbidden(), "{err:?}");
}

#[tokio::test]
async fn secrets_round_trip_their_payload() {
    let fake = Fake::start(vec![
        Canned::json(200, json!({"name": "projects/1/secrets/prefect-api-key", "replication": {"automatic": {}}})),
        Canned::json(200, json!({"name": "projects/1/secrets/prefect-api-key/versions/1", "state": "ENABLED"})),
        Canned::json(200, json!({"name": "projects/1/secrets/prefect-api-key/versions/1",
                                "payload": {"data": base64::engine::general_purpose::STANDARD.encode("pnu_abc")}})),
        Canned::error(404, "NOT_FOUND", "no versions"),
    ])
    .await;
    let http = fake.client(fast_retry());
    let id = SecretId::parse("prefect-api-key").unwrap();
    let labels = [("managed-by".to_owned(), "bootstrap".to_owned())]
        .into_iter()
        .collect();
    secretmanager::create_secret(&http, &project(), &id, &labels)
        .await
        .unwrap();
    let v = secretmanager::add_version(
        &http,
        &project(),
        &id,
        &SecretString::from("pnu_abc".to_owned()),
    )
    .await
    .unwrap();
    assert_eq!(v.version(), "1");
    let value = secretmanager::access_latest(&http, &project(), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value.expose_secret(), "pnu_abc");
    assert!(
        secretmanager::access_latest(&http, &project(), &id)
            .await
            .unwrap()
            .is_none()
    );
    let seen = fake.seen();
    assert_eq!(
        seen[0].uri,
        "/v1/projects/demo-project/secrets?secretId=prefect-api-key"
    );
    assert_eq!(
        seen[0].json(),
        json!({"replication": {"automatic": {}}, "labels": {"managed-by": "bootstrap"}})
    );
    assert_eq!(
        seen[1].uri,
        "/v1/projects/demo-project/secrets/prefect-api-key:addVersion"
    );
    assert_eq!(seen[1].json(), json!({"payload": {"data": "cG51X2FiYw=="}}));
    assert_eq!(
        seen[2].uri,
        "/v1/projects/demo-project/secrets/prefect-api-key/versions/latest:access"
    );
}

#[tokio::test]
async fn enable_all_batches_and_waits() {
    let fake = Fake::start(vec![
        Canned::json(200, json!({"name": "operations/acf.1", "done": false})),
        Canned::json(
            200,
            json!({"name": "operations/acf.1", "done": true, "response": {}}),
        ),
        Canned::json(
            200,
            json!({"name": "projects/1/services/run.googleapis.com", "state": "ENABLED"}),
        ),
    ])
    .await;
    let http = fake.client(fast_retry());
    serviceusage::enable_all(
        &http,
        &project(),
        &["run.googleapis.com", "iam.googleapis.com"],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(
        serviceusage::is_enabled(&http, &project(), "run.googleapis.com")
            .await
            .unwrap()
    );
    let seen = fake.seen();
    assert_eq!(
        seen[0].uri,
        "/v1/projects/demo-project/services:batchEnable"
    );
    assert_eq!(
        seen[0].json(),
        json!({"serviceIds": ["run.googleapis.com", "iam.googleapis.com"]})
    );
    assert_eq!(seen[1].uri, "/v1/operations/acf.1");
    assert_eq!(
        seen[2].uri,
        "/v1/projects/demo-project/services/run.googleapis.com"
    );
    let err = serviceusage::is_enabled(&http, &project(), "not a service")
        .await
        .unwrap_err();
    assert!(matches!(err, GcpError::Config(_)));
}

#[tokio::test]
async fn run_v1_paths_and_pagination() {
    let fake = Fake::start(vec![
        Canned::json(
            200,
            json!({"items": [{"metadata": {"name": "a"}}], "metadata": {"continue": "tok1"}}),
        ),
        Canned::json(
            200,
            json!({"items": [{"metadata": {"name": "b"}}], "metadata": {}}),
        ),
        Canned::json(200, json!({"metadata": {"name": "a-x1"}, "status": {}})),
    ])
    .await;
    let http = fake.client(fast_retry());
    let jobs = run_v1::list_jobs(&http, &region(), &project(), Some("prefect.io/pool=p"))
        .await
        .unwrap();
    let names: Vec<_> = jobs
        .iter()
        .filter_map(|j| j.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let job = RunJobName::parse("a").unwrap();
    let exec = run_v1::run_job(&http, &region(), &project(), &job, None)
        .await
        .unwrap();
    assert_eq!(exec.metadata.name.as_deref(), Some("a-x1"));
    let seen = fake.seen();
    assert_eq!(
        seen[0].uri,
        "/apis/run.googleapis.com/v1/namespaces/demo-project/jobs?labelSelector=prefect.io%2Fpool%3Dp"
    );
    assert_eq!(
        seen[1].uri,
        "/apis/run.googleapis.com/v1/namespaces/demo-project/jobs?labelSelector=prefect.io%2Fpool%3Dp&continue=tok1"
    );
    assert_eq!(
        seen[2].uri,
        "/apis/run.googleapis.com/v1/namespaces/demo-project/jobs/a:run"
    );
}

#[tokio::test]
async fn repeated_page_tokens_stop_the_listing() {
    let page =
        json!({"jobs": [{"name": "projects/p/locations/r/jobs/j"}], "nextPageToken": "same"});
    let fake = Fake::start(vec![
        Canned::json(200, page.clone()),
        Canned::json(200, page.clone()),
        Canned::json(200, page),
    ])
    .await;
    let http = fake.client(fast_retry());
    let err = run_v2::list_jobs(&http, &project(), &region())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("same page token"), "{err}");
}

#[tokio::test]
async fn service_account_visibility_needs_consecutive_reads() {
    let sa = json!({"email": "robot-one@demo-project.iam.gserviceaccount.com"});
    let fake = Fake::start(vec![
        Canned::error(404, "NOT_FOUND", "unknown"),
        Canned::json(200, sa.clone()),
        Canned::error(
            403,
            "PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.get' denied on resource (or it may not exist).",
        ),
        Canned::json(200, sa.clone()),
        Canned::json(200, sa.clone()),
    ])
    .await;
    let http = fake.client(fast_retry());
    let email =
        ServiceAccountEmail::parse("robot-one@demo-project.iam.gserviceaccount.com").unwrap();
    iam::wait_until_visible(&http, &project(), &email, 2, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(fake.seen().len(), 5);
    assert_eq!(fake.remaining(), 0);

    let fake = Fake::start(vec![Canned::error(404, "NOT_FOUND", "unknown"); 10]).await;
    let http = fake.client(fast_retry());
    let err = iam::wait_until_visible(&http, &project(), &email, 3, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, GcpError::Timeout { .. }), "{err:?}");
}

// ---- the Cloud Run jobs facade (run_jobs): wire audit rows 9, 10 and 13 ----

fn facade(fake: &Fake, api: run_jobs::JobsApi) -> run_jobs::Jobs {
    run_jobs::Jobs::new(fake.client(fast_retry()), api, project(), region())
}

#[tokio::test]
async fn a_failed_job_create_operation_gives_googles_reason() {
    let op = "projects/demo-project/locations/us-central1/operations/op-c";
    let fake = Fake::start(vec![
        Canned::json(200, json!({"name": op, "done": false})),
        Canned::json(
            200,
            json!({"name": op, "done": true,
                   "error": {"code": 3, "status": "INVALID_ARGUMENT",
                             "message": "Image 'gcr.io/p/nope' not found."}}),
        ),
    ])
    .await;
    let jobs = facade(&fake, run_jobs::JobsApi::V2);
    let job = RunJobName::parse("flow-run-1").unwrap();
    let body = json!({"labels": {"a": "b"}, "template": {"template": {"containers": [{"image": "gcr.io/p/nope"}]}}, "launchStage": "BETA"});
    let run_jobs::Created::New(Some(created)) = jobs.create(&job, &body).await.unwrap() else {
        panic!("a v2 create answers with its operation");
    };
    let outcome = jobs.create_outcome(&created).await.unwrap();
    let err = outcome.expect("done").unwrap_err();
    assert!(
        err.to_string().contains("Image 'gcr.io/p/nope' not found."),
        "{err}"
    );
    let seen = fake.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].uri,
        "/v2/projects/demo-project/locations/us-central1/jobs?jobId=flow-run-1"
    );
    // The rendered body passes through the typed model untouched.
    assert_eq!(seen[0].json(), body);
    assert_eq!(seen[1].uri, format!("/v2/{op}"));
}

#[tokio::test]
async fn an_existing_job_is_adopted_not_an_error() {
    let fake = Fake::start(vec![Canned::error(409, "ALREADY_EXISTS", "exists")]).await;
    let jobs = facade(&fake, run_jobs::JobsApi::V1);
    let job = RunJobName::parse("flow-run-1").unwrap();
    let body = json!({"apiVersion": "run.googleapis.com/v1", "kind": "Job", "metadata": {"name": "flow-run-1"}});
    assert!(matches!(
        jobs.create(&job, &body).await.unwrap(),
        run_jobs::Created::Existing
    ));
}

#[tokio::test]
async fn deleting_a_v2_job_deletes_every_page_of_executions_and_waits_for_each() {
    let base = "projects/demo-project/locations/us-central1/jobs/j";
    let e1 = format!("{base}/executions/j-1");
    let e2 = format!("{base}/executions/j-2");
    let op1 = "projects/demo-project/locations/us-central1/operations/d-1";
    let fake = Fake::start(vec![
        Canned::json(200, json!({"executions": [{"name": e1}], "nextPageToken": "p2"})),
        Canned::json(200, json!({"executions": [{"name": e2}]})),
        Canned::json(200, json!({"name": op1, "done": false})),
        Canned::json(200, json!({"name": op1, "done": true, "response": {}})),
        Canned::json(200, json!({"name": "projects/demo-project/locations/us-central1/operations/d-2", "done": true})),
        Canned::json(200, json!({"name": "projects/demo-project/locations/us-central1/operations/d-3"})),
    ])
    .await;
    let jobs = facade(&fake, run_jobs::JobsApi::V2);
    jobs.delete(&RunJobName::parse("j").unwrap()).await.unwrap();
    let seen: Vec<(String, String)> = fake
        .seen()
        .into_iter()
        .map(|s| (s.method.to_string(), s.uri.clone()))
        .collect();
    let list = format!("/v2/{base}/executions?pageSize=100");
    assert_eq!(
        seen,
        [
            ("GET".to_string(), list.clone()),
            ("GET".to_string(), format!("{list}&pageToken=p2")),
            ("DELETE".to_string(), format!("/v2/{e1}")),
            // The job delete waits until the execution's delete is done (prefect-gcp waits too).
            ("GET".to_string(), format!("/v2/{op1}")),
            ("DELETE".to_string(), format!("/v2/{e2}")),
            ("DELETE".to_string(), format!("/v2/{base}")),
        ]
    );
}

#[tokio::test]
async fn labelled_jobs_are_read_from_every_page() {
    let job = |name: &str, pool: &str| {
        json!({"name": format!("projects/demo-project/locations/us-central1/jobs/{name}"),
               "labels": {"prefect-io-work-pool-name": pool}})
    };
    let fake = Fake::start(vec![
        Canned::json(200, json!({"jobs": [job("a", "p"), job("b", "other")], "nextPageToken": "t"})),
        Canned::json(200, json!({"jobs": [job("c", "p")]})),
        Canned::json(200, json!({"items": [{"metadata": {"name": "v1-a", "labels": {"prefect-io-work-pool-name": "p"}}}], "metadata": {"continue": "k"}})),
        Canned::json(200, json!({"items": [{"metadata": {"name": "v1-b", "labels": {"prefect-io-work-pool-name": "p"}}}], "metadata": {}})),
    ])
    .await;
    // The same question through both APIs, each paging its own way.
    for (api, want) in [
        (run_jobs::JobsApi::V2, ["a", "c"]),
        (run_jobs::JobsApi::V1, ["v1-a", "v1-b"]),
    ] {
        let names: Vec<String> = facade(&fake, api)
            .jobs_labelled("prefect-io-work-pool-name", "p")
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.name)
            .collect();
        assert_eq!(names, want);
    }
    let seen = fake.seen();
    assert_eq!(
        seen[1].uri,
        "/v2/projects/demo-project/locations/us-central1/jobs?pageSize=100&pageToken=t"
    );
    assert_eq!(
        seen[3].uri,
        "/apis/run.googleapis.com/v1/namespaces/demo-project/jobs?labelSelector=prefect-io-work-pool-name%3Dp&continue=k"
    );
}
