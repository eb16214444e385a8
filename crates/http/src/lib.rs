//! The HTTP layer the Google (`bootstrap-gcp`) and Prefect (`bootstrap-prefect`) clients share:
//!
//! - [`RetryPolicy`]: how a failed request is retried (attempts, backoff, jitter, a total
//!   deadline), one shape for both clients; each client keeps its own numbers as values;
//! - [`parse_retry_after`]: the `Retry-After` header in both of its forms (delay-seconds and
//!   HTTP-date, RFC 9110 §10.2.3);
//! - [`seg`]: one path segment, percent-encoded;
//! - [`client`] and [`init_crypto`]: the reqwest client both build, and the rustls crypto
//!   provider it needs (reqwest is built without one).
//!
//! Which failures are retried stays with each client: Google's and Prefect's servers say
//! different things with the same status codes.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// How the backoff cap of a retry is turned into a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// A uniform draw from `[0, cap]` ("full jitter"): clients backing off together spread out
    /// the most.
    Full,
    /// A uniform draw from `[cap/2, cap]` ("equal jitter"): every wait is at least half its
    /// cap, for servers that need a minimum pause to recover.
    Equal,
}

/// How a failed request is retried: exponential backoff with jitter, bounded both by attempts
/// and by a total deadline. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The backoff cap before jitter for the first retry; doubles each retry.
    pub base_delay: Duration,
    /// The largest backoff cap.
    pub max_delay: Duration,
    /// Total time allowed for all attempts and waits of one request: no retry starts whose
    /// wait would end past it.
    pub deadline: Duration,
    /// How a cap becomes a wait.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    /// The Google clients' policy (most callers use it): ten attempts within two minutes, full
    /// jitter. An apply makes hundreds of calls (operation and consistency polls included): at
    /// the reliability suite's 20% transient error rate, six attempts left some call failing
    /// every few runs (0.2^6 per call); ten make it negligible, and the deadline still bounds
    /// the wait. The Prefect client has its own numbers (`bootstrap_prefect::prefect_default`).
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// No retries at all (one attempt), for callers that run their own loop.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff cap before retry number `retry` (0 for the first retry).
    pub fn cap(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(20));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait before retry number `retry` (0 for the first): the jittered [`Self::cap`],
    /// raised to the server's `Retry-After` when that is longer (a server's hint is a lower
    /// bound; the deadline still decides whether the wait is taken at all).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let cap = self.cap(retry);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        let low = match self.jitter {
            Jitter::Full => 0,
            Jitter::Equal => nanos / 2,
        };
        let jittered = Duration::from_nanos(rng.random_range(low..=nanos));
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }

    /// The wait before the next attempt after `attempts` attempts that took `elapsed` in all,
    /// or `None` when the policy allows no more (out of attempts, or the wait would end past
    /// the deadline).
    pub fn next_delay(
        &self,
        attempts: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = self.delay(attempts.saturating_sub(1), retry_after, rng);
        (elapsed.saturating_add(delay) <= self.deadline).then_some(delay)
    }
}

/// Longest `Retry-After` taken from the delay-seconds form; a larger number is clamped (it
/// would end past any deadline anyway, and an absurd one must not overflow a `Duration`).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date in any of
/// the three forms a recipient must accept (§5.6.7: IMF-fixdate, RFC 850, asctime). A date in
/// the past is no wait. Fractional seconds are accepted too: some proxies send them, and a
/// wait is still what they mean. `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64: clamp rather than ignore.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(RETRY_AFTER_MAX.as_secs_f64())));
    }
    let at = http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP-date in IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) or asctime (`Sun Nov  6 08:49:37 1994`) form.
fn http_date(value: &str) -> Option<SystemTime> {
    use chrono::{NaiveDateTime, TimeZone as _, Utc};
    if let Ok(at) = chrono::DateTime::parse_from_rfc2822(value) {
        return Some(SystemTime::from(at.with_timezone(&Utc)));
    }
    let naive = NaiveDateTime::parse_from_str(value, "%A, %d-%b-%y %H:%M:%S GMT")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y"))
        .ok()?;
    Some(SystemTime::from(Utc.from_utc_datetime(&naive)))
}

/// Percent-encodes one path segment, so that a name can never add a segment, a query or a
/// fragment: RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`, §2.3: "should not be
/// percent-encoded") and `@` stay; every other byte is encoded.
///
/// `@` stays because it is a plain `pchar` (§3.3) and service account emails are path
/// segments of Google's APIs: gcloud sends them as they are (apitools expands `{+name}`), and
/// Prefect's own client sends names as written (httpx quotes only what a path cannot hold).
/// The other sub-delimiters (`* + , ; = ! $ & ' ( )`) are encoded: legal in a segment, but
/// some frameworks give `+` or `;` a meaning of their own, and an encoded byte always decodes
/// to itself.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Installs ring as rustls' process-wide crypto provider (reqwest is built without one).
/// Idempotent; safe to call from several places and threads.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which serves just as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The reqwest client of an API client: the crypto provider installed, a connect timeout and
/// a whole-request timeout (every request has a deadline), and the client's user agent.
pub fn client(
    user_agent: &str,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    init_crypto();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .user_agent(user_agent)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            deadline: Duration::from_secs(60),
            jitter,
        }
    }

    #[test]
    fn caps_double_and_saturate() {
        let p = policy(Jitter::Full);
        assert_eq!(p.cap(0), Duration::from_millis(100));
        assert_eq!(p.cap(1), Duration::from_millis(200));
        assert_eq!(p.cap(3), Duration::from_millis(800));
        assert_eq!(p.cap(4), Duration::from_secs(1));
        assert_eq!(p.cap(400), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_cap() {
        let p = policy(Jitter::Full);
        let mut rng = rand::rng();
        let waits: std::collections::BTreeSet<_> =
            (0..300).map(|_| p.delay(2, None, &mut rng)).collect();
        assert!(waits.iter().all(|d| *d <= p.cap(2)), "{waits:?}");
        assert!(
            waits.iter().any(|d| *d < p.cap(2) / 2),
            "full jitter reaches below half the cap"
        );
        assert!(waits.len() > 10, "too few distinct waits: {waits:?}");
    }

    #[test]
    fn equal_jitter_keeps_at_least_half_the_cap() {
        let p = policy(Jitter::Equal);
        let mut rng = rand::rng();
        for retry in 0..8 {
            for _ in 0..50 {
                let d = p.delay(retry, None, &mut rng);
                assert!(d >= p.cap(retry) / 2 && d <= p.cap(retry), "{retry}: {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let mut rng = rand::rng();
        for jitter in [Jitter::Full, Jitter::Equal] {
            let p = policy(jitter);
            for _ in 0..50 {
                let d = p.delay(0, Some(Duration::from_secs(7)), &mut rng);
                assert_eq!(d, Duration::from_secs(7));
            }
        }
    }

    #[test]
    fn next_delay_is_bounded_by_attempts_and_deadline() {
        let mut rng = rand::rng();
        let p = RetryPolicy {
            max_attempts: 3,
            deadline: Duration::from_secs(10),
            ..policy(Jitter::Equal)
        };
        assert!(p.next_delay(1, Duration::ZERO, None, &mut rng).is_some());
        assert!(p.next_delay(2, Duration::ZERO, None, &mut rng).is_some());
        assert_eq!(p.next_delay(3, Duration::ZERO, None, &mut rng), None);
        // A wait that would end past the deadline is not taken.
        assert_eq!(
            p.next_delay(
                1,
                Duration::from_secs(5),
                Some(Duration::from_secs(6)),
                &mut rng
            ),
            None
        );
        assert_eq!(
            p.next_delay(
                1,
                Duration::from_secs(5),
                Some(Duration::from_secs(4)),
                &mut rng
            ),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            RetryPolicy::none().next_delay(1, Duration::ZERO, None, &mut rng),
            None
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_all_three_date_forms() {
        // 1994-11-06 08:49:27 UTC, ten seconds before the RFC's example date.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767);
        let ten = Some(Duration::from_secs(10));
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), ten);
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            ten
        );
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), ten);
        // A date already past is no wait at all.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_never_panics_on_bad_values() {
        let now = SystemTime::now();
        for bad in [
            "",
            "soon",
            "-1",
            "NaN",
            "inf",
            "1e400",
            "Sun, 99 Nov 1994",
            "0x10",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
        // Absurdly large numbers are clamped, not an overflow.
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            Some(RETRY_AFTER_MAX)
        );
        assert_eq!(parse_retry_after("1e300", now), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn segments_keep_unreserved_and_at_and_encode_the_rest() {
        for (raw, encoded) in [
            (
                "a-b@p.iam.gserviceaccount.com",
                "a-b@p.iam.gserviceaccount.com",
            ),
            ("gcp-creds_1.v~2", "gcp-creds_1.v~2"),
            // Whatever could end or split a segment, or start a query or a fragment.
            ("a/b?c#d e%", "a%2Fb%3Fc%23d%20e%25"),
            ("x:run", "x%3Arun"),
            // A space is %20, never form encoding's `+` (a path does not decode `+`).
            ("my flow+1", "my%20flow%2B1"),
            ("*;=,", "%2A%3B%3D%2C"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(seg(raw), encoded, "{raw}");
        }
    }

    #[test]
    fn the_client_builds_with_the_crypto_provider_installed() {
        let c = client("t/1", Duration::from_secs(1), Duration::from_secs(2));
        assert!(c.is_ok());
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
