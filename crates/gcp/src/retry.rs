//! Retry policy as a plain value: which failures are retried, and how long to wait.
//!
//! Waits are exponential with full jitter (a uniform draw in `[0, min(max, base * 2^n)]`), so
//! that many clients backing off together spread out; a server's `Retry-After` is honoured as
//! a lower bound. Every retry loop is bounded by attempts and by a total deadline.

use std::time::Duration;

use reqwest::StatusCode;

/// The policy shape and the `Retry-After` parser are the HTTP layer's, shared with the Prefect
/// client; [`RetryPolicy::default`] holds this client's numbers (ten attempts within two
/// minutes, full jitter).
pub use bootstrap_http::{Jitter, RetryPolicy, parse_retry_after};

/// What the caller of one request allows to be retried beyond the always-safe cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOptions {
    /// The request may be repeated without harm even if the server processed it (GET, PUT,
    /// DELETE; a PATCH or POST whose effect is the same when repeated).
    pub idempotent: bool,
    /// Also retry 409 `ABORTED` / "operationInProgress" (a concurrent change on the server).
    pub conflicts: bool,
}

/// What to do with one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again, after at least this long if the server said so.
    Retry { retry_after: Option<Duration> },
    /// Give up and return the error.
    Stop,
}

/// Decides on an HTTP error answer. 429 and 503 mean the server did not act, so every request
/// may be repeated; 500, 502 and 504 may come after the server acted, so only idempotent
/// requests are repeated.
pub fn decide_status(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    opts: RetryOptions,
) -> Decision {
    let retry = Decision::Retry { retry_after };
    match status.as_u16() {
        429 | 503 => retry,
        500 | 502 | 504 if opts.idempotent => retry,
        409 if opts.conflicts && is_conflict_body(body) => retry,
        _ => Decision::Stop,
    }
}

/// Decides on a transport failure. A refused connection never reached the server, so it is
/// always safe; a timeout or reset may have, so only idempotent requests are repeated.
pub fn decide_transport(err: &reqwest::Error, opts: RetryOptions) -> Decision {
    if err.is_connect() || opts.idempotent {
        Decision::Retry { retry_after: None }
    } else {
        Decision::Stop
    }
}

/// 409 bodies that mean "try again later" rather than "already exists".
fn is_conflict_body(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("\"ABORTED\"") || text.contains("operationInProgress")
}

/// Repeats `op` while its error satisfies `retryable` and `policy` allows (attempts, total
/// deadline, jittered backoff). For eventual consistency after this run's own writes, e.g.
/// 403 `actAs` right after a grant ([`crate::GcpError::is_act_as_denied`]).
pub async fn retry_while<T, F, Fut>(
    policy: RetryPolicy,
    retryable: impl Fn(&crate::GcpError) -> bool,
    mut op: F,
) -> Result<T, crate::GcpError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::GcpError>>,
{
    let started = std::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !retryable(&err) {
            return Err(err);
        }
        let Some(delay) = policy.next_delay(attempt, started.elapsed(), None, &mut rand::rng())
        else {
            return Err(err);
        };
        tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying until consistent");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_while_stops_on_success_other_errors_and_budget() {
        let fast = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            deadline: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let denied = || crate::GcpError::PermissionDenied {
            method: "m".into(),
            permission: Some("iam.serviceAccounts.actAs".into()),
            message: String::new(),
        };
        let calls = std::cell::Cell::new(0);
        let out = retry_while(fast, crate::GcpError::is_act_as_denied, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(denied()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(out.unwrap(), 3);

        calls.set(0);
        let out: Result<(), _> = retry_while(fast, crate::GcpError::is_act_as_denied, || {
            calls.set(calls.get() + 1);
            async { Err(denied()) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.get(), 4, "bounded by max_attempts");

        calls.set(0);
        let out: Result<(), _> = retry_while(fast, crate::GcpError::is_act_as_denied, || {
            calls.set(calls.get() + 1);
            async { Err(crate::GcpError::Config("x".into())) }
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.get(), 1, "other errors are not retried");
    }

    #[test]
    fn status_decisions() {
        let post = RetryOptions::default();
        let get = RetryOptions {
            idempotent: true,
            ..RetryOptions::default()
        };
        let retry = Decision::Retry { retry_after: None };
        // An empty body: the status alone decides, and only a GET (idempotent) retries 5xx.
        for (status, options, want) in [
            (StatusCode::TOO_MANY_REQUESTS, post, retry),
            (StatusCode::SERVICE_UNAVAILABLE, post, retry),
            (StatusCode::INTERNAL_SERVER_ERROR, post, Decision::Stop),
            (StatusCode::INTERNAL_SERVER_ERROR, get, retry),
            (StatusCode::BAD_GATEWAY, get, retry),
            (StatusCode::GATEWAY_TIMEOUT, get, retry),
            (StatusCode::NOT_FOUND, get, Decision::Stop),
            (StatusCode::BAD_REQUEST, get, Decision::Stop),
        ] {
            assert_eq!(decide_status(status, b"", None, options), want, "{status}");
        }
        let aborted = br#"{"error":{"code":409,"status":"ABORTED","message":"x"}}"#;
        let exists = br#"{"error":{"code":409,"status":"ALREADY_EXISTS","message":"x"}}"#;
        assert_eq!(
            decide_status(StatusCode::CONFLICT, aborted, None, get),
            Decision::Stop
        );
        let conflicts = RetryOptions {
            conflicts: true,
            ..get
        };
        assert_eq!(
            decide_status(StatusCode::CONFLICT, aborted, None, conflicts),
            retry
        );
        assert_eq!(
            decide_status(
                StatusCode::CONFLICT,
                b"operationInProgress",
                None,
                conflicts
            ),
            retry
        );
        assert_eq!(
            decide_status(StatusCode::CONFLICT, exists, None, conflicts),
            Decision::Stop
        );
        let hinted = Some(Duration::from_secs(2));
        assert_eq!(
            decide_status(StatusCode::TOO_MANY_REQUESTS, b"", hinted, post),
            Decision::Retry {
                retry_after: hinted
            }
        );
    }
}
