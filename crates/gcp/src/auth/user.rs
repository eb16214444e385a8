//! `authorized_user` credentials (what `gcloud auth application-default login` writes): the
//! OAuth 2.0 refresh-token grant (RFC 6749 §6) against the file's `token_uri`, Google's
//! `https://oauth2.googleapis.com/token` when the file names none (google-auth
//! `google/oauth2/credentials.py`, `_GOOGLE_OAUTH2_TOKEN_ENDPOINT`).

use std::fmt;

use async_trait::async_trait;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::exchange::{self, TokenCache};
use super::{CLOUD_PLATFORM_SCOPE, TokenSource};
use crate::error::GcpError;

/// Google's OAuth 2.0 token endpoint.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

#[derive(Deserialize)]
struct File {
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    refresh_token: Option<SecretString>,
    token_uri: Option<String>,
    quota_project_id: Option<String>,
    account: Option<String>,
}

/// Tokens for a user, from a refresh token held in memory.
pub struct AuthorizedUserSource {
    client: reqwest::Client,
    token_uri: String,
    client_id: String,
    client_secret: SecretString,
    refresh_token: SecretString,
    quota_project: Option<String>,
    account: Option<String>,
    cache: TokenCache,
}

impl fmt::Debug for AuthorizedUserSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizedUserSource")
            .field("token_uri", &self.token_uri)
            .field("quota_project", &self.quota_project)
            .finish_non_exhaustive()
    }
}

impl AuthorizedUserSource {
    /// Reads an `authorized_user` file's JSON. Errors name missing fields, never values.
    pub fn from_json(json: &SecretString) -> Result<Self, GcpError> {
        let file: File = super::parse_secret_json(json, "authorized_user credentials")?;
        let missing =
            |f: &str| GcpError::Config(format!("the authorized_user credentials have no `{f}`"));
        let token_uri = file
            .token_uri
            .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned());
        exchange::check_url("token_uri", &token_uri)?;
        Ok(Self {
            client: exchange::client()?,
            token_uri,
            client_id: file.client_id.ok_or_else(|| missing("client_id"))?,
            client_secret: file.client_secret.ok_or_else(|| missing("client_secret"))?,
            refresh_token: file.refresh_token.ok_or_else(|| missing("refresh_token"))?,
            quota_project: file.quota_project_id.filter(|p| !p.is_empty()),
            account: file.account.filter(|a| !a.is_empty()),
            cache: TokenCache::default(),
        })
    }

    /// The file's `quota_project_id`.
    pub fn file_quota_project(&self) -> Option<String> {
        self.quota_project.clone()
    }

    /// The file's `account` (gcloud writes the signed-in email there), when present.
    pub fn account(&self) -> Option<String> {
        self.account.clone()
    }

    /// The token endpoint used.
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }
}

#[async_trait]
impl TokenSource for AuthorizedUserSource {
    async fn token(&self) -> Result<SecretString, GcpError> {
        self.cache
            .get(|| async {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("client_id", self.client_id.as_str()),
                    ("client_secret", self.client_secret.expose_secret()),
                    ("refresh_token", self.refresh_token.expose_secret()),
                    ("scope", CLOUD_PLATFORM_SCOPE),
                ];
                let request = self.client.post(&self.token_uri).form(&form);
                let body = exchange::send("refresh-token grant", &self.token_uri, request).await?;
                exchange::oauth_token("refresh-token grant", &body)
            })
            .await
    }

    fn quota_project(&self) -> Option<String> {
        self.quota_project.clone()
    }

    fn principal_is_user(&self) -> bool {
        true
    }
}
