//! Transport tests: the retry loop and error mapping against a scripted loopback HTTP stub.
//! These check our own client's behaviour on failures a healthy Prefect server cannot be made
//! to produce on demand (503 "database is locked", 429 with Retry-After, cut-off bodies); the
//! API itself is tested against a real server in `tests/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;

/// Serves the scripted raw responses in order (the last one repeats); returns the URL and a
/// request counter.
async fn stub(responses: Vec<&'static str>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let resp = responses[n.min(responses.len() - 1)];
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                }
            }
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    (format!("http://{addr}/api"), count)
}

fn fast_client(url: &str) -> PrefectClient {
    fast_client_for(PrefectConfig::for_url(url).expect("url"))
}

/// A client of `config` whose own retries are quick (four attempts, 10-50 ms apart), so the
/// tests measure the server's waits and the config's retry settings, not the default backoff.
fn fast_client_for(config: PrefectConfig) -> PrefectClient {
    PrefectClient::new(config)
        .expect("client")
        .with_retry(RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            deadline: Duration::from_secs(10),
            jitter: crate::client::Jitter::Equal,
        })
}

const LOCKED: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{\"detail\":\"database is locked (sqlite)\"}";
const OK_TRUE: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\ntrue";

#[tokio::test]
async fn retries_503_until_success() {
    let (url, count) = stub(vec![LOCKED, LOCKED, OK_TRUE]).await;
    fast_client(&url)
        .health()
        .await
        .expect("third attempt succeeds");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let (url, count) = stub(vec![LOCKED]).await;
    let e = fast_client(&url).health().await.expect_err("always 503");
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert!(e.to_string().contains("database is locked"), "{e}");
}

/// A health check answered `busy` then OK: the second attempt succeeds, and not before
/// `at_least` (what `busy`'s `Retry-After` asks for, less a little clock slack).
async fn retries_after(busy: &'static str, at_least: Duration) {
    let (url, count) = stub(vec![busy, OK_TRUE]).await;
    let t0 = Instant::now();
    fast_client(&url)
        .health()
        .await
        .expect("second attempt succeeds");
    assert!(t0.elapsed() >= at_least, "waited only {:?}", t0.elapsed());
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    retries_after(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_millis(950),
    )
    .await;
}

/// Regression: the Prefect client read only the delay-seconds form of `Retry-After` and
/// ignored an HTTP-date (RFC 9110 allows both; a proxy in front of the server may send a
/// date), so it came back after a few milliseconds instead of when the server said.
#[tokio::test]
async fn honours_retry_after_given_as_an_http_date() {
    // Three seconds ahead at one-second resolution: the wait is more than two seconds.
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        at.format("%a, %d %b %Y %H:%M:%S GMT")
    );
    let busy: &'static str = Box::leak(busy.into_boxed_str());
    retries_after(busy, Duration::from_millis(1900)).await;
}

#[tokio::test]
async fn does_not_retry_500_or_401() {
    let (url, count) = stub(vec![
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\nConnection: close\r\n\r\nInternal Server Error",
    ])
    .await;
    let e = fast_client(&url).health().await.expect_err("500");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(matches!(e, PrefectError::Http { .. }), "{e}");

    let (url, _) = stub(vec![
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ])
    .await;
    let e = fast_client(&url).health().await.expect_err("401");
    assert_eq!(
        e.to_string(),
        "the Prefect API rejected the API key (401 Unauthorized); no PREFECT_API_KEY or PREFECT_API_AUTH_STRING was set"
    );
}

#[tokio::test]
async fn cut_off_and_html_bodies_are_one_line() {
    let (url, _) = stub(vec![
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"id\":",
    ])
    .await;
    let e = fast_client(&url).work_pool("p").await.expect_err("cut off");
    assert!(matches!(e, PrefectError::Decode { .. }), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");

    let (url, _) = stub(vec![
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 28\r\nConnection: close\r\n\r\n<html><body>UI</body></html>",
    ])
    .await;
    let e = fast_client(&url).work_pool("p").await.expect_err("html");
    assert!(e.to_string().contains("HTML page"), "{e}");
}

#[tokio::test]
async fn event_stream_dropped_during_handshake_is_a_clear_error() {
    // Accepts, then hangs up without a websocket handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    let c = fast_client(&format!("http://{addr}/api"));
    let e = c
        .subscribe_events(&crate::EventFilter::live(), false, Duration::from_secs(5))
        .await
        .expect_err("no websocket");
    assert!(matches!(e, PrefectError::Events { .. }), "{e}");
    assert!(e.to_string().contains("/api/events/out"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");

    // A server that never answers the handshake runs into the deadline.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let c = fast_client(&format!("http://{addr}/api"));
    let t0 = Instant::now();
    let e = c
        .subscribe_events(
            &crate::EventFilter::live(),
            false,
            Duration::from_millis(300),
        )
        .await
        .expect_err("deadline");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(e.to_string().contains("no connection within"), "{e}");
    keep.abort();
}

#[tokio::test]
async fn prefect_retry_settings_decide_attempts_and_extra_codes() {
    const ERR500: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\nConnection: close\r\n\r\nInternal Server Error";
    let (url, count) = stub(vec![ERR500, OK_TRUE]).await;
    let mut config = PrefectConfig::for_url(&url).expect("url");
    config.retries.extra_codes = vec![500];
    config.retries.max_retries = Some(1);
    fast_client_for(config.clone())
        .health()
        .await
        .expect("500 is retried when PREFECT_CLIENT_RETRY_EXTRA_CODES names it");
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // PREFECT_CLIENT_MAX_RETRIES=1 wins over the caller's four attempts: two in all.
    let (url, count) = stub(vec![LOCKED]).await;
    let mut config = PrefectConfig::for_url(&url).expect("url");
    config.retries.max_retries = Some(1);
    fast_client_for(config)
        .health()
        .await
        .expect_err("always 503");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

/// A client whose two budgets are both quick but differ in length: three attempts for
/// requests that are not safe to repeat, eight for those that are.
fn two_budget_client(url: &str) -> PrefectClient {
    let mut c = fast_client(url);
    c.retry = RetryPolicy {
        max_attempts: 3,
        ..c.retry
    };
    c.retry_repeatable = RetryPolicy {
        max_attempts: 8,
        ..c.retry
    };
    c
}

/// Regression (the scale bench, N = 100): a deployment upsert refused with 503 for longer
/// than the short budget failed the whole apply. An upsert by name is safe to repeat, so it
/// gets the longer budget and goes through; a create that is not an upsert still gives up
/// after the short one.
#[tokio::test]
async fn upserts_outlast_a_busy_server_that_creates_give_up_on() {
    let busy_then_ok = vec![LOCKED, LOCKED, LOCKED, LOCKED, LOCKED, OK_TRUE];
    let (url, count) = stub(busy_then_ok.clone()).await;
    two_budget_client(&url)
        .no_content(
            Method::POST,
            "/deployments/",
            Some(&serde_json::json!({"name": "d"})),
            "deployment `f/d`",
        )
        .await
        .expect("the sixth attempt succeeds");
    assert_eq!(count.load(Ordering::SeqCst), 6);

    let (url, count) = stub(busy_then_ok).await;
    let e = two_budget_client(&url)
        .no_content(
            Method::POST,
            "/deployments/00000000-0000-0000-0000-000000000000/create_flow_run",
            Some(&serde_json::json!({})),
            "flow run",
        )
        .await
        .expect_err("a create gives up after three attempts");
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert!(e.to_string().contains("database is locked"), "{e}");
}
