//! The metadata server (Compute Engine, Cloud Run, GKE): the attached service account's
//! tokens from `GET /computeMetadata/v1/instance/service-accounts/default/token` with
//! `Metadata-Flavor: Google`. `GCE_METADATA_HOST` names another host[:port], as in google-auth
//! (`google/auth/compute_engine/_metadata.py`) and gcloud.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::TokenSource;
use super::exchange::{self, TokenCache};
use crate::error::GcpError;

/// The metadata server's name on Google Cloud.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// How long the "is there a metadata server" probe may take (google-auth waits 3 s, with
/// retries; one short try keeps a laptop without credentials from hanging).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Tokens of the attached service account.
pub struct MetadataServerSource {
    client: reqwest::Client,
    root: String,
    email: Option<String>,
    cache: TokenCache,
}

impl fmt::Debug for MetadataServerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataServerSource")
            .field("root", &self.root)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

impl MetadataServerSource {
    /// `host` is `GCE_METADATA_HOST` or [`DEFAULT_METADATA_HOST`].
    pub fn new(host: &str) -> Result<Self, GcpError> {
        let root = format!(
            "http://{}/computeMetadata/v1/",
            host.trim().trim_end_matches('/')
        );
        exchange::check_url("GCE_METADATA_HOST", &root)?;
        Ok(Self {
            client: exchange::client()?,
            root,
            email: None,
            cache: TokenCache::default(),
        })
    }

    /// Asks the server for the attached account's email; `Ok` proves a metadata server
    /// answers. Bounded by [`PROBE_TIMEOUT`].
    pub async fn probe(mut self) -> Result<Self, GcpError> {
        let url = format!("{}instance/service-accounts/default/email", self.root);
        let request = self
            .client
            .get(&url)
            .header("Metadata-Flavor", "Google")
            .timeout(PROBE_TIMEOUT);
        let body = exchange::send("metadata server", &url, request).await?;
        let email = String::from_utf8_lossy(&body).trim().to_owned();
        self.email = (!email.is_empty()).then_some(email);
        Ok(self)
    }

    /// The attached service account, when the probe read it.
    pub fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }
}

#[async_trait]
impl TokenSource for MetadataServerSource {
    async fn token(&self) -> Result<SecretString, GcpError> {
        self.cache
            .get(|| async {
                let url = format!("{}instance/service-accounts/default/token", self.root);
                let request = self.client.get(&url).header("Metadata-Flavor", "Google");
                let body = exchange::send("metadata server", &url, request).await?;
                exchange::oauth_token("metadata server", &body)
            })
            .await
    }

    fn identity(&self) -> Option<bootstrap_ids::ServiceAccountEmail> {
        self.email
            .as_deref()
            .and_then(|e| bootstrap_ids::ServiceAccountEmail::parse(e).ok())
    }
}
