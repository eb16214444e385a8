//! End-to-end behaviour of the HTTP layer against a local fake: retries, backoff,
//! `Retry-After`, timeouts, non-JSON and truncated bodies, dropped connections.

use crate::support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bootstrap_gcp::{GcpError, GcpHttp, RetryPolicy, iam};
use bootstrap_ids::{AccountId, ProjectId, ServiceAccountEmail};
use serde_json::json;
use support::{Canned, Fake, Misbehave, client_for, fast_retry, raw_server, refused_base};

fn project() -> ProjectId {
    ProjectId::parse("demo-project").unwrap()
}

fn email() -> ServiceAccountEmail {
    ServiceAccountEmail::parse("robot-one@demo-project.iam.gserviceaccount.com").unwrap()
}

fn sa_body() -> serde_json::Value {
    json!({"name": "projects/demo-project/serviceAccounts/robot-one@demo-project.iam.gserviceaccount.com",
           "email": "robot-one@demo-project.iam.gserviceaccount.com", "displayName": "Robot",
           "etag": "MDEwMjE5MjA=", "someNewField": {"kept": true}})
}

/// A service-account GET against a server that answers it badly: its error.
async fn failing_get(http: &GcpHttp) -> GcpError {
    iam::get_service_account(http, &project(), &email())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn retries_unavailable_then_succeeds_with_bearer_token() {
    let fake = Fake::start(vec![
        Canned::error(503, "UNAVAILABLE", "try later"),
        Canned::raw(502, "<html><body>Bad Gateway</body></html>"),
        Canned::json(200, sa_body()),
    ])
    .await;
    let http = fake.client(fast_retry());
    let sa = iam::get_service_account(&http, &project(), &email())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sa.display_name.as_deref(), Some("Robot"));
    assert_eq!(sa.extra["someNewField"]["kept"], true);
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(
            s.uri,
            "/v1/projects/demo-project/serviceAccounts/robot-one@demo-project.iam.gserviceaccount.com"
        );
        assert_eq!(s.authorization.as_deref(), Some("Bearer test-token"));
    }
}

#[tokio::test]
async fn not_found_is_none() {
    let fake = Fake::start(vec![Canned::error(404, "NOT_FOUND", "gone")]).await;
    let http = fake.client(fast_retry());
    assert!(
        iam::get_service_account(&http, &project(), &email())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(fake.seen().len(), 1, "404 is not retried");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let fake = Fake::start(vec![
        Canned::error(429, "RESOURCE_EXHAUSTED", "quota").header("retry-after", "1"),
        Canned::json(200, sa_body()),
    ])
    .await;
    let http = fake.client(fast_retry());
    let started = Instant::now();
    iam::get_service_account(&http, &project(), &email())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_gives_up_at_once() {
    let fake = Fake::start(vec![
        Canned::error(429, "RESOURCE_EXHAUSTED", "quota").header("retry-after", "600"),
        Canned::json(200, sa_body()),
    ])
    .await;
    let http = fake.client(RetryPolicy {
        deadline: Duration::from_secs(5),
        ..fast_retry()
    });
    let started = Instant::now();
    let err = failing_get(&http).await;
    assert!(
        matches!(err, GcpError::Transient { code: 429, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn exhausted_retries_report_transient() {
    let fake = Fake::start(vec![Canned::error(500, "INTERNAL", "boom"); 5]).await;
    let http = fake.client(fast_retry());
    let err = failing_get(&http).await;
    assert!(
        matches!(err, GcpError::Transient { code: 500, .. }),
        "{err:?}"
    );
    assert_eq!(fake.seen().len(), 3, "max_attempts bounds the tries");
}

#[tokio::test]
async fn non_idempotent_post_is_not_retried_after_500() {
    // A key creation that may have happened must not be repeated blindly (it would leave a
    // second key); the caller decides (the engine looks for a half-created key first).
    let fake = Fake::start(vec![
        Canned::error(500, "INTERNAL", "maybe created"),
        Canned::json(200, json!({})),
    ])
    .await;
    let http = fake.client(fast_retry());
    let email = ServiceAccountEmail::parse("robot-one@p-123456.iam.gserviceaccount.com").unwrap();
    let err = iam::create_key(&http, &project(), &email)
        .await
        .unwrap_err();
    assert_eq!(err.http_code(), Some(500));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn service_account_creation_is_retried_after_500() {
    // A repeated create is safe: it gets ALREADY_EXISTS, which the engine adopts.
    let fake = Fake::start(vec![
        Canned::error(500, "INTERNAL", "maybe created"),
        Canned::json(200, sa_body()),
    ])
    .await;
    let http = fake.client(fast_retry());
    let account = AccountId::parse("robot-one").unwrap();
    iam::create_service_account(&http, &project(), &account, Some("Robot"), None)
        .await
        .unwrap();
    assert_eq!(fake.seen().len(), 2);
    let body = fake.seen()[0].json();
    assert_eq!(
        body,
        json!({"accountId": "robot-one", "serviceAccount": {"displayName": "Robot"}})
    );
}

#[tokio::test]
async fn post_is_retried_on_503() {
    let fake = Fake::start(vec![
        Canned::error(503, "UNAVAILABLE", "not now"),
        Canned::json(200, sa_body()),
    ])
    .await;
    let http = fake.client(fast_retry());
    let account = AccountId::parse("robot-one").unwrap();
    iam::create_service_account(&http, &project(), &account, None, None)
        .await
        .unwrap();
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn html_error_body_is_reported_with_status_and_excerpt() {
    let fake = Fake::start(vec![Canned::raw(
        403,
        "<html><head><title>Forbidden by proxy</title></head></html>",
    )])
    .await;
    let http = fake.client(fast_retry());
    let err = failing_get(&http).await;
    match &err {
        GcpError::NonJson {
            code,
            excerpt,
            method,
        } => {
            assert_eq!(*code, 403);
            assert!(excerpt.contains("Forbidden by proxy"));
            assert_eq!(method, "iam.projects.serviceAccounts.get");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn malformed_success_body_is_a_decode_error_naming_the_method() {
    let fake = Fake::start(vec![Canned::raw(
        200,
        r#"{"email": "x@y.iam", "displayName": 12"#,
    )])
    .await;
    let http = fake.client(fast_retry());
    let err = failing_get(&http).await;
    assert!(
        matches!(&err, GcpError::Decode { method, .. } if method == "iam.projects.serviceAccounts.get"),
        "{err:?}"
    );
}

#[tokio::test]
async fn slow_answers_hit_the_deadline() {
    let fake = Fake::start(vec![
        Canned::json(200, sa_body()).delayed(Duration::from_secs(5)),
    ])
    .await;
    let http = fake.client(RetryPolicy {
        deadline: Duration::from_millis(400),
        ..fast_retry()
    });
    let started = Instant::now();
    let err = failing_get(&http).await;
    assert!(matches!(err, GcpError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A dropped connection and a truncated body are both network errors, retried for a GET.
#[tokio::test]
async fn dropped_connections_and_truncated_bodies_are_retried_for_gets() {
    for misbehave in [Misbehave::Drop, Misbehave::Truncate] {
        let (base, count) = raw_server(misbehave).await;
        let http = client_for(&base, fast_retry());
        let err = failing_get(&http).await;
        assert!(
            matches!(err, GcpError::Network { .. }),
            "{misbehave:?}: {err:?}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 3, "{misbehave:?}");
    }
}

#[tokio::test]
async fn dropped_connection_is_not_retried_for_a_key_create() {
    let (base, count) = raw_server(Misbehave::Drop).await;
    let http = client_for(&base, fast_retry());
    let err = iam::create_key(&http, &project(), &email())
        .await
        .unwrap_err();
    assert!(matches!(err, GcpError::Network { .. }), "{err:?}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the server may have created a key"
    );
}

#[tokio::test]
async fn refused_connections_are_retried_even_for_posts() {
    let base = refused_base().await;
    let http = client_for(&base, fast_retry());
    let account = AccountId::parse("robot-one").unwrap();
    let err = iam::create_service_account(&http, &project(), &account, None, None)
        .await
        .unwrap_err();
    match err {
        GcpError::Network { source, .. } => assert!(source.is_connect()),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn conflicts_are_retried_only_where_the_caller_allows() {
    // services.patch opts in to 409 retries; serviceAccounts.create does not.
    let fake = Fake::start(vec![Canned::error(409, "ABORTED", "operationInProgress")]).await;
    let http = fake.client(fast_retry());
    let account = AccountId::parse("robot-one").unwrap();
    let err = iam::create_service_account(&http, &project(), &account, None, None)
        .await
        .unwrap_err();
    assert!(err.is_aborted());
    assert_eq!(fake.seen().len(), 1);
}
