//! Where access tokens come from, behind a trait of ours: a service-account key held in
//! memory, and the credentials Google's libraries find ([`discover`]): `service_account`,
//! `authorized_user`, `external_account` (workload identity federation),
//! `impersonated_service_account` files and the metadata server, optionally impersonating a
//! service account. Why our own loader and not `google-cloud-auth`: `docs/credentials.md`.

pub mod discover;
mod exchange;
pub mod external;
pub mod impersonate;
pub mod metadata;
pub mod user;

pub use discover::{
    CredentialInfo, CredentialKind, DiscoverOptions, Origin, process_options, set_process_options,
};
pub use external::ExternalAccountSource;
pub use impersonate::ImpersonatedSource;
pub use metadata::MetadataServerSource;
pub use user::AuthorizedUserSource;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bootstrap_ids::ServiceAccountEmail;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::GcpError;

/// The OAuth scope every call here needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long one token fetch (a JWT exchange, a metadata-server call, `gcloud`) may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A source of OAuth access tokens for Google APIs.
#[async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// A valid access token; implementations cache and refresh as needed.
    async fn token(&self) -> Result<SecretString, GcpError>;

    /// The service account the tokens act as, when known (key files always know it).
    fn identity(&self) -> Option<ServiceAccountEmail> {
        None
    }

    /// The project named by the credentials (a key file's `project_id`), when there is one.
    fn project_hint(&self) -> Option<String> {
        None
    }

    /// The project billed for quota, sent as `x-goog-user-project` on every request.
    fn quota_project(&self) -> Option<String> {
        None
    }

    /// Whether the acting principal is a person (a user credential): client-based APIs then
    /// need a quota project.
    fn principal_is_user(&self) -> bool {
        false
    }
}

/// Parses JSON that may hold secrets; an error gives the position, never the content.
pub(crate) fn parse_secret_json<T: serde::de::DeserializeOwned>(
    json: &SecretString,
    what: &str,
) -> Result<T, GcpError> {
    serde_json::from_str(json.expose_secret()).map_err(|e| {
        GcpError::Config(format!(
            "the {what} are not valid JSON of the expected shape (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// The fields of a service-account key file that we read ourselves; the private key is left
/// to gcp_auth and never copied out.
#[derive(Deserialize)]
struct KeyFileHeader {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    project_id: Option<String>,
}

/// Tokens for a service account whose JSON key is held in memory (never written to disk).
/// The key file's `token_uri` decides where the JWT is exchanged, so a local token endpoint
/// (the sandbox) works as Google's does.
pub struct ServiceAccountKeySource {
    inner: gcp_auth::CustomServiceAccount,
    email: Option<ServiceAccountEmail>,
    project: Option<String>,
}

impl fmt::Debug for ServiceAccountKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKeySource")
            .field("email", &self.email)
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKeySource {
    /// Reads a key file's JSON. Errors never quote the key's content.
    pub fn from_json(key: &SecretString) -> Result<Self, GcpError> {
        crate::init_crypto();
        let header: KeyFileHeader = serde_json::from_str(key.expose_secret()).map_err(|e| {
            // serde's message can quote values; say only where the problem is.
            GcpError::Config(format!(
                "the service-account key is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if header.kind.as_deref() != Some("service_account") {
            return Err(GcpError::Config(
                "the credentials are not a service-account key (\"type\" is not \"service_account\")"
                    .into(),
            ));
        }
        let email = header
            .client_email
            .as_deref()
            .map(ServiceAccountEmail::parse)
            .transpose()
            .map_err(|e| GcpError::Config(format!("the key's client_email is invalid: {e}")))?;
        let inner =
            gcp_auth::CustomServiceAccount::from_json(key.expose_secret()).map_err(|e| {
                GcpError::Config(format!(
                    "unusable service-account key: {}",
                    safe_auth_error(&e)
                ))
            })?;
        Ok(Self {
            inner,
            email,
            project: header.project_id,
        })
    }
}

#[async_trait]
impl TokenSource for ServiceAccountKeySource {
    async fn token(&self) -> Result<SecretString, GcpError> {
        fetch(&self.inner).await
    }

    fn identity(&self) -> Option<ServiceAccountEmail> {
        self.email.clone()
    }

    fn project_hint(&self) -> Option<String> {
        self.project.clone()
    }
}

/// Credentials found the way Google's libraries find them (see [`discover`]): the
/// `--credentials-file` flag, `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default
/// credentials file, then the metadata server; impersonation and the quota project on top.
pub struct AmbientTokenSource {
    inner: Arc<dyn TokenSource>,
    info: CredentialInfo,
}

impl fmt::Debug for AmbientTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmbientTokenSource")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl AmbientTokenSource {
    /// Looks for credentials with this process's flags ([`set_process_options`]) and the
    /// endpoints of `BOOTSTRAP_GCP_ENDPOINT`; the error says what was tried.
    pub async fn discover() -> Result<Self, GcpError> {
        let endpoints = crate::http::Endpoints::from_env()?;
        Self::discover_with(&process_options(), &endpoints).await
    }

    /// Looks for credentials with `options`; impersonation goes to `endpoints`' IAM
    /// Credentials API.
    pub async fn discover_with(
        options: &DiscoverOptions,
        endpoints: &crate::http::Endpoints,
    ) -> Result<Self, GcpError> {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let search = Self::discover_in(
            options,
            endpoints,
            &|k| std::env::var(k).ok(),
            home.as_deref(),
        );
        search.await
    }

    /// [`AmbientTokenSource::discover_with`] with the environment and home directory given
    /// (read before the returned future first waits).
    pub fn discover_in(
        options: &DiscoverOptions,
        endpoints: &crate::http::Endpoints,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&std::path::Path>,
    ) -> impl std::future::Future<Output = Result<Self, GcpError>> + Send + 'static {
        crate::init_crypto();
        let search = discover::discover_with(options, endpoints, env, home);
        async move {
            // Finding credentials reads files and probes the metadata server (3 s); bounded.
            let found = tokio::time::timeout(TOKEN_TIMEOUT, search)
                .await
                .map_err(|_| GcpError::Auth {
                    message: format!("looking for credentials took longer than {TOKEN_TIMEOUT:?}"),
                })??;
            Ok(Self {
                inner: found.source,
                info: found.info,
            })
        }
    }

    /// What was found: type, principal, origin, impersonation chain, quota project.
    pub fn info(&self) -> &CredentialInfo {
        &self.info
    }
}

#[async_trait]
impl TokenSource for AmbientTokenSource {
    async fn token(&self) -> Result<SecretString, GcpError> {
        tokio::time::timeout(TOKEN_TIMEOUT, self.inner.token())
            .await
            .map_err(|_| GcpError::Auth {
                message: format!("getting an access token took longer than {TOKEN_TIMEOUT:?}"),
            })?
    }

    fn identity(&self) -> Option<ServiceAccountEmail> {
        self.inner.identity()
    }

    fn project_hint(&self) -> Option<String> {
        // Only a key file's `project_id` (or an impersonated account's project) says which
        // project the credentials belong to; a quota project is a billing project, not a
        // target (wire-audit #16).
        self.inner.project_hint()
    }

    fn quota_project(&self) -> Option<String> {
        self.inner.quota_project()
    }

    fn principal_is_user(&self) -> bool {
        self.inner.principal_is_user()
    }
}

/// A fixed token (for a local endpoint that accepts any bearer, or `--access-token`).
pub struct StaticTokenSource {
    token: SecretString,
    identity: Option<ServiceAccountEmail>,
}

impl fmt::Debug for StaticTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokenSource")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl StaticTokenSource {
    pub fn new(token: SecretString, identity: Option<ServiceAccountEmail>) -> Self {
        Self { token, identity }
    }
}

#[async_trait]
impl TokenSource for StaticTokenSource {
    async fn token(&self) -> Result<SecretString, GcpError> {
        Ok(self.token.clone())
    }

    fn identity(&self) -> Option<ServiceAccountEmail> {
        self.identity.clone()
    }
}

async fn fetch(provider: &dyn gcp_auth::TokenProvider) -> Result<SecretString, GcpError> {
    let token = tokio::time::timeout(TOKEN_TIMEOUT, provider.token(&[CLOUD_PLATFORM_SCOPE]))
        .await
        .map_err(|_| GcpError::Auth {
            message: format!("the token endpoint did not answer within {TOKEN_TIMEOUT:?}"),
        })?
        .map_err(|e| GcpError::Auth {
            message: safe_auth_error(&e),
        })?;
    Ok(SecretString::from(token.as_str().to_owned()))
}

/// gcp_auth's message without JSON parser details, which could quote credential content.
fn safe_auth_error(e: &gcp_auth::Error) -> String {
    match e {
        gcp_auth::Error::Json(what, _) => (*what).to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_json_is_not_quoted() {
        let key = SecretString::from(
            r#"{"type": "service_account", "private_key": 12345SECRET"#.to_owned(),
        );
        let err = ServiceAccountKeySource::from_json(&key).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn wrong_credential_type_is_refused() {
        let key = SecretString::from(
            r#"{"type": "authorized_user", "refresh_token": "SECRET"}"#.to_owned(),
        );
        let err = ServiceAccountKeySource::from_json(&key).unwrap_err();
        assert!(
            err.to_string().contains("not a service-account key"),
            "{err}"
        );
        assert!(!err.to_string().contains("SECRET"));
    }

    #[test]
    fn unparseable_private_key_is_refused_without_quoting_it() {
        let key = SecretString::from(
            // A fake key; the PEM header is split so that secret scanners do not flag it.
            concat!(
                r#"{"type":"service_account","client_email":"a-robot@proj-123.iam.gserviceaccount.com",
                "private_key":"-----BEGIN "#,
                r#"PRIVATE KEY-----\nSECRETSTUFF\n-----END PRIVATE KEY-----\n",
                "token_uri":"http://127.0.0.1:1/token","project_id":"proj-123"}"#
            )
            .to_owned(),
        );
        let err = ServiceAccountKeySource::from_json(&key).unwrap_err();
        assert!(!err.to_string().contains("SECRETSTUFF"), "{err}");
    }

    #[tokio::test]
    async fn static_source_hands_out_its_token() {
        let src = StaticTokenSource::new(SecretString::from("t0k".to_owned()), None);
        assert_eq!(src.token().await.unwrap().expose_secret(), "t0k");
        assert!(!format!("{src:?}").contains("t0k"));
    }
}
