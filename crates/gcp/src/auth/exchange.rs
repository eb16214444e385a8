//! What every token flow shares: one HTTP client for token endpoints, a refresh-ahead cache,
//! and reading token responses and OAuth errors without ever quoting a token.
//!
//! Token endpoint answers carry access tokens (and for some flows refresh or id tokens), so
//! no body is logged or put in an error; only the OAuth `error` / `error_description` fields,
//! or Google's `error.message` / `error.status`, are quoted.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::GcpError;

/// How long one request to a token endpoint may take (connect included).
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Refresh this long before expiry (google-auth refreshes 3 min 45 s ahead:
/// `google/auth/_helpers.py` REFRESH_THRESHOLD); capped at half the lifetime for short tokens.
const REFRESH_AHEAD: Duration = Duration::from_secs(225);

/// The HTTP client for token endpoints: no redirects (a token request must not be replayed to
/// another host), a deadline on every request.
pub(crate) fn client() -> Result<reqwest::Client, GcpError> {
    crate::init_crypto();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(EXCHANGE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bootstrap/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| GcpError::Config(format!("cannot build the token HTTP client: {e}")))
}

/// An access token and when it stops being usable (`Debug` shows no secret: SecretString
/// redacts itself).
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub secret: SecretString,
    pub expires_at: Instant,
}

impl Token {
    /// A token valid for `lifetime` from now.
    pub fn new(secret: String, lifetime: Duration) -> Self {
        Token {
            secret: SecretString::from(secret),
            expires_at: Instant::now() + lifetime,
        }
    }

    fn fresh(&self, lifetime_hint: Duration) -> bool {
        let ahead = REFRESH_AHEAD.min(lifetime_hint / 2);
        Instant::now() + ahead < self.expires_at
    }
}

/// One cached token, refreshed by one caller at a time (concurrent callers wait for it).
#[derive(Default)]
pub(crate) struct TokenCache {
    slot: Mutex<Option<(Token, Duration)>>,
}

impl TokenCache {
    /// The cached token, or a new one from `fetch`.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<SecretString, GcpError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Token, GcpError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((token, lifetime)) = slot.as_ref()
            && token.fresh(*lifetime)
        {
            return Ok(token.secret.clone());
        }
        let token = fetch().await?;
        let lifetime = token.expires_at.saturating_duration_since(Instant::now());
        let secret = token.secret.clone();
        *slot = Some((token, lifetime));
        Ok(secret)
    }
}

/// `{"access_token", "expires_in"}`: the OAuth 2.0 token response (RFC 6749 §5.1), also what
/// STS and the metadata server answer. `expires_in` may come as a string (google-auth
/// `external_account.py` allows for that).
#[derive(Deserialize)]
struct OAuthTokenResponse {
    access_token: Option<String>,
    expires_in: Option<Value>,
}

/// Reads an OAuth token response. Errors quote nothing from the body.
pub(crate) fn oauth_token(what: &str, body: &[u8]) -> Result<Token, GcpError> {
    let parsed: OAuthTokenResponse = serde_json::from_slice(body).map_err(|e| GcpError::Auth {
        message: format!(
            "{what}: the token response is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ),
    })?;
    let Some(token) = parsed.access_token.filter(|t| !t.is_empty()) else {
        return Err(GcpError::Auth {
            message: format!("{what}: the token response has no access_token"),
        });
    };
    let secs = match &parsed.expires_in {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    // RFC 6749: expires_in is RECOMMENDED; Google always sends it. Assume a short life.
    .unwrap_or(300);
    Ok(Token::new(token, Duration::from_secs(secs)))
}

/// The reason an endpoint gave for refusing: OAuth's `error` / `error_description`
/// (RFC 6749 §5.2, STS) or Google's envelope `error.status` / `error.message`
/// (iamcredentials). Never the rest of the body.
pub(crate) fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let text = match v.get("error") {
        Some(Value::String(code)) => match s(v.get("error_description")) {
            Some(d) if !d.is_empty() => format!("{code}: {d}"),
            _ => code.clone(),
        },
        Some(obj @ Value::Object(_)) => {
            let status = s(obj.get("status")).unwrap_or_default();
            let message = s(obj.get("message")).unwrap_or_default();
            format!("{status}: {message}")
        }
        _ => "no reason given".to_owned(),
    };
    format!("HTTP {}: {}", status.as_u16(), clip(&text))
}

fn clip(s: &str) -> String {
    const MAX: usize = 300;
    if s.chars().count() <= MAX {
        return s.to_owned();
    }
    let cut: String = s.chars().take(MAX).collect();
    format!("{cut}...")
}

/// Sends a prepared token request; returns the body of a 2xx answer or an `Auth` error with
/// the endpoint's stated reason. `what` names the flow and `url` the endpoint, for the message.
pub(crate) async fn send(
    what: &str,
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<Vec<u8>, GcpError> {
    let response = request.send().await.map_err(|e| GcpError::Auth {
        message: format!(
            "{what}: {url} did not answer: {}",
            if e.is_timeout() {
                format!("no answer within {EXCHANGE_TIMEOUT:?}")
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "network error".to_owned()
            }
        ),
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|_| GcpError::Auth {
            message: format!("{what}: {url}: the answer was cut off"),
        })?
        .to_vec();
    if status.is_success() {
        Ok(body)
    } else {
        Err(GcpError::Auth {
            message: format!("{what}: {url} refused: {}", refusal(status, &body)),
        })
    }
}

/// A URL given in a credential file or by a flag must be http(s); anything else is refused
/// before a secret is sent to it.
pub(crate) fn check_url(field: &str, url: &str) -> Result<url::Url, GcpError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| GcpError::Config(format!("`{field}` is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(GcpError::Config(format!(
            "`{field}` must be an http(s) URL, not `{url}`"
        )));
    }
    Ok(parsed)
}

/// The bearer header value; kept here so that no caller formats a token itself.
pub(crate) fn bearer(token: &SecretString) -> String {
    format!("Bearer {}", token.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_token_reads_number_or_string_lifetimes() {
        let t = oauth_token("t", br#"{"access_token":"a","expires_in":3599}"#).unwrap();
        assert_eq!(t.secret.expose_secret(), "a");
        let t = oauth_token("t", br#"{"access_token":"a","expires_in":"60"}"#).unwrap();
        assert!(t.expires_at <= Instant::now() + Duration::from_secs(60));
    }

    #[test]
    fn bad_token_responses_never_quote_the_body() {
        let err = oauth_token("t", br#"{"access_token": "SECRET"#).unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
        let err = oauth_token("t", br#"{"id_token":"SECRET"}"#).unwrap_err();
        assert!(err.to_string().contains("no access_token"), "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn refusal_quotes_only_the_reason() {
        let text = refusal(
            reqwest::StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","error_description":"Bad Request","refresh_token":"SECRET"}"#,
        );
        assert_eq!(text, "HTTP 400: invalid_grant: Bad Request");
        let text = refusal(
            reqwest::StatusCode::FORBIDDEN,
            br#"{"error":{"code":403,"status":"PERMISSION_DENIED","message":"Permission 'iam.serviceAccounts.getAccessToken' denied"}}"#,
        );
        assert!(
            text.contains("PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken'")
        );
        assert_eq!(
            refusal(reqwest::StatusCode::BAD_GATEWAY, b"<html>SECRET"),
            "HTTP 502: no reason given"
        );
    }

    #[tokio::test]
    async fn cache_refreshes_only_when_stale() {
        let cache = TokenCache::default();
        let a = cache
            .get(|| async { Ok(Token::new("one".into(), Duration::from_secs(3600))) })
            .await
            .unwrap();
        let b = cache
            .get(|| async { Ok(Token::new("two".into(), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!((a.expose_secret(), b.expose_secret()), ("one", "one"));
        let cache = TokenCache::default();
        cache
            .get(|| async { Ok(Token::new("short".into(), Duration::from_secs(0))) })
            .await
            .unwrap();
        let c = cache
            .get(|| async { Ok(Token::new("next".into(), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!(c.expose_secret(), "next");
    }

    #[test]
    fn only_http_urls_get_secrets() {
        assert!(check_url("token_uri", "https://oauth2.googleapis.com/token").is_ok());
        assert!(check_url("token_uri", "file:///etc/passwd").is_err());
        assert!(check_url("token_uri", "not a url").is_err());
    }
}
