//! Service-account impersonation: a source credential's token buys the target account's
//! token from IAM Credentials `projects.serviceAccounts.generateAccessToken`
//! (iamcredentials.v1 discovery: POST `v1/{+name}:generateAccessToken`, body
//! `GenerateAccessTokenRequest {delegates[], scope[], lifetime}`, answer
//! `GenerateAccessTokenResponse {accessToken, expireTime}`). The caller needs
//! `iam.serviceAccounts.getAccessToken` on the target (`roles/iam.serviceAccountTokenCreator`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bootstrap_ids::ServiceAccountEmail;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::exchange::{self, Token, TokenCache};
use super::{CLOUD_PLATFORM_SCOPE, TokenSource};
use crate::error::GcpError;

/// Google's IAM Credentials host.
pub const IAM_CREDENTIALS_ROOT: &str = "https://iamcredentials.googleapis.com/";

/// The longest lifetime `generateAccessToken` grants without an org policy change.
const LIFETIME: Duration = Duration::from_secs(3600);

/// The `generateAccessToken` URL of `email` under `root` (ending in `/`).
pub fn generate_access_token_url(root: &str, email: &str) -> String {
    format!(
        "{}v1/projects/-/serviceAccounts/{}:generateAccessToken",
        root,
        crate::http::seg(email)
    )
}

/// The target account in a `.../serviceAccounts/{email}:generateAccessToken` URL.
pub fn email_in_url(url: &str) -> Option<String> {
    let tail = url.rsplit_once("/serviceAccounts/")?.1;
    let email = tail.strip_suffix(":generateAccessToken")?;
    let email = email.replace("%40", "@");
    (!email.is_empty()).then_some(email)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    access_token: Option<String>,
    expire_time: Option<String>,
}

/// Tokens of `target`, bought with `source`'s.
pub struct ImpersonatedSource {
    client: reqwest::Client,
    source: Arc<dyn TokenSource>,
    url: String,
    target: String,
    delegates: Vec<String>,
    lifetime: Duration,
    cache: TokenCache,
}

impl fmt::Debug for ImpersonatedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpersonatedSource")
            .field("target", &self.target)
            .field("delegates", &self.delegates)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ImpersonatedSource {
    /// Impersonates the account named in `url` (a `generateAccessToken` URL, as credential
    /// files carry it), through `delegates` (emails; each must be allowed to act for the next).
    pub fn new(
        source: Arc<dyn TokenSource>,
        url: &str,
        delegates: Vec<String>,
        lifetime: Option<Duration>,
    ) -> Result<Self, GcpError> {
        exchange::check_url("service_account_impersonation_url", url)?;
        let target = email_in_url(url).ok_or_else(|| {
            GcpError::Config(format!(
                "`{url}` is not an IAM Credentials generateAccessToken URL \
                 (…/serviceAccounts/EMAIL:generateAccessToken)"
            ))
        })?;
        Ok(Self {
            client: exchange::client()?,
            source,
            url: url.to_owned(),
            target,
            delegates,
            lifetime: lifetime.unwrap_or(LIFETIME),
            cache: TokenCache::default(),
        })
    }

    /// The impersonated account's email.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The source credential.
    pub fn source(&self) -> &Arc<dyn TokenSource> {
        &self.source
    }

    /// The accounts between the source and the target.
    pub fn delegates(&self) -> &[String] {
        &self.delegates
    }

    async fn fetch(&self) -> Result<Token, GcpError> {
        let what = format!("impersonating {}", self.target);
        let source_token = self.source.token().await?;
        let delegates: Vec<String> = self
            .delegates
            .iter()
            .map(|d| {
                if d.starts_with("projects/") {
                    d.clone()
                } else {
                    format!("projects/-/serviceAccounts/{d}")
                }
            })
            .collect();
        let body = json!({
            "delegates": delegates,
            "scope": [CLOUD_PLATFORM_SCOPE],
            "lifetime": format!("{}s", self.lifetime.as_secs()),
        });
        let request = self
            .client
            .post(&self.url)
            .header(
                reqwest::header::AUTHORIZATION,
                exchange::bearer(&source_token),
            )
            .json(&body);
        let answer = match exchange::send(&what, &self.url, request).await {
            Ok(b) => b,
            Err(GcpError::Auth { message }) if message.contains("PERMISSION_DENIED") => {
                return Err(GcpError::Auth {
                    message: format!(
                        "{message}; the source credential needs \
                         iam.serviceAccounts.getAccessToken on {} \
                         (roles/iam.serviceAccountTokenCreator): `gcloud iam service-accounts \
                         add-iam-policy-binding {} --member=<source> \
                         --role=roles/iam.serviceAccountTokenCreator`",
                        self.target, self.target
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        let parsed: Answer = serde_json::from_slice(&answer).map_err(|e| GcpError::Auth {
            message: format!(
                "{what}: the answer is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        })?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| GcpError::Auth {
                message: format!("{what}: the answer has no accessToken"),
            })?;
        let lifetime = parsed
            .expire_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| {
                (t.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .ok()
            })
            .unwrap_or(Duration::from_secs(300));
        Ok(Token::new(token, lifetime))
    }
}

#[async_trait]
impl TokenSource for ImpersonatedSource {
    async fn token(&self) -> Result<SecretString, GcpError> {
        self.cache.get(|| self.fetch()).await
    }

    fn identity(&self) -> Option<ServiceAccountEmail> {
        ServiceAccountEmail::parse(&self.target).ok()
    }

    fn project_hint(&self) -> Option<String> {
        let domain = self.target.split_once('@')?.1;
        domain
            .strip_suffix(".iam.gserviceaccount.com")
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_email_round_trip() {
        let url = generate_access_token_url(IAM_CREDENTIALS_ROOT, "ci@p-1.iam.gserviceaccount.com");
        assert_eq!(
            url,
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/ci@p-1.iam.gserviceaccount.com:generateAccessToken"
        );
        assert_eq!(
            email_in_url(&url).as_deref(),
            Some("ci@p-1.iam.gserviceaccount.com")
        );
        assert_eq!(email_in_url("https://sts.googleapis.com/v1/token"), None);
    }
}
