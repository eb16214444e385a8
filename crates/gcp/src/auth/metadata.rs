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

/// The running instance's id (`instance/id`), as Cloud Run's container contract offers it
/// (<https://cloud.google.com/run/docs/container-contract#metadata-server>): unique per
/// instance, where every instance of a service may share one hostname. `None` on any failure
/// or after `timeout`: callers fall back to another name rather than fail.
pub async fn instance_id(host: &str, timeout: Duration) -> Option<String> {
    let url = format!(
        "http://{}/computeMetadata/v1/instance/id",
        host.trim().trim_end_matches('/')
    );
    exchange::check_url("GCE_METADATA_HOST", &url).ok()?;
    let request = exchange::client()
        .ok()?
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .timeout(timeout);
    let body = exchange::send("metadata server", &url, request)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    (!text.is_empty()).then_some(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn instance_id_comes_from_the_metadata_server_with_its_header() {
        use axum::http::HeaderMap;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/computeMetadata/v1/instance/id",
            axum::routing::get(|h: HeaderMap| async move {
                if h.get("metadata-flavor").and_then(|v| v.to_str().ok()) == Some("Google") {
                    (axum::http::StatusCode::OK, "1234567890abcdef\n")
                } else {
                    (axum::http::StatusCode::FORBIDDEN, "")
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let timeout = Duration::from_secs(2);
        assert_eq!(
            instance_id(&addr.to_string(), timeout).await.as_deref(),
            Some("1234567890abcdef")
        );
        // Nothing listens: None, within the bound.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let gone = free.local_addr().expect("addr").to_string();
        drop(free);
        let t0 = std::time::Instant::now();
        assert_eq!(instance_id(&gone, timeout).await, None);
        assert!(t0.elapsed() < timeout * 2);
    }
}
