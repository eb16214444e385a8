//! `external_account` credentials (workload identity federation; what
//! `google-github-actions/auth` writes): a subject token from a file, a URL or an executable
//! is exchanged at STS (`token_url`, RFC 8693 token exchange; sts.v1 discovery
//! `sts.token`), and the federated token, when the file names a
//! `service_account_impersonation_url`, buys a service account's token there.
//!
//! Field names and behaviour follow google-auth (`google/auth/external_account.py`,
//! `identity_pool.py`, `pluggable.py`, `google/oauth2/sts.py`). AWS-sourced credentials are
//! not supported and say so.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::exchange::{self, TokenCache};
use super::impersonate::ImpersonatedSource;
use super::{CLOUD_PLATFORM_SCOPE, TokenSource};
use crate::error::GcpError;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const REQUESTED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Executables run only when allowed (google-auth `pluggable.py`).
pub const ALLOW_EXECUTABLES_ENV: &str = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES";

#[derive(Deserialize)]
struct File {
    audience: Option<String>,
    subject_token_type: Option<String>,
    token_url: Option<String>,
    service_account_impersonation_url: Option<String>,
    #[serde(default)]
    service_account_impersonation: Option<ImpersonationOptions>,
    credential_source: Option<Source>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    quota_project_id: Option<String>,
    workforce_pool_user_project: Option<String>,
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Source {
    file: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    executable: Option<Executable>,
    environment_id: Option<String>,
    format: Option<Format>,
}

#[derive(Deserialize)]
struct Executable {
    command: Option<String>,
    timeout_millis: Option<u64>,
    output_file: Option<PathBuf>,
}

#[derive(Deserialize, Clone)]
struct Format {
    #[serde(rename = "type")]
    kind: Option<String>,
    subject_token_field_name: Option<String>,
}

/// Where the subject token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectSource {
    /// `credential_source.file`.
    File(PathBuf),
    /// `credential_source.url`.
    Url(String),
    /// `credential_source.executable.command`.
    Executable(String),
}

impl fmt::Display for SubjectSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectSource::File(p) => write!(f, "file {}", p.display()),
            SubjectSource::Url(u) => write!(f, "URL {u}"),
            SubjectSource::Executable(c) => {
                let program = c.split_whitespace().next().unwrap_or_default();
                write!(f, "executable {program}")
            }
        }
    }
}

/// The federated (STS) half: subject token in, federated access token out.
struct Federated {
    client: reqwest::Client,
    audience: String,
    subject_token_type: String,
    token_url: String,
    subject: SubjectSource,
    headers: Vec<(String, String)>,
    format: (String, Option<String>),
    timeout: Duration,
    output_file: Option<PathBuf>,
    impersonated_email: Option<String>,
    client_auth: Option<(String, SecretString)>,
    user_project: Option<String>,
    cache: TokenCache,
}

impl fmt::Debug for Federated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Federated")
            .field("audience", &self.audience)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// External-account credentials, ready to exchange.
pub struct ExternalAccountSource {
    inner: Arc<dyn TokenSource>,
    audience: String,
    subject: SubjectSource,
    token_url: String,
    impersonated: Option<String>,
    quota_project: Option<String>,
    workforce: bool,
}

impl fmt::Debug for ExternalAccountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountSource")
            .field("audience", &self.audience)
            .field("subject", &self.subject)
            .field("impersonated", &self.impersonated)
            .finish_non_exhaustive()
    }
}

impl ExternalAccountSource {
    /// Reads an `external_account` file's JSON. `env` reads the environment (for
    /// [`ALLOW_EXECUTABLES_ENV`]).
    pub fn from_json(
        json: &SecretString,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, GcpError> {
        let file: File = super::parse_secret_json(json, "external_account credentials")?;
        let missing =
            |f: &str| GcpError::Config(format!("the external_account credentials have no `{f}`"));
        let audience = file.audience.ok_or_else(|| missing("audience"))?;
        let subject_token_type = file
            .subject_token_type
            .ok_or_else(|| missing("subject_token_type"))?;
        let token_url = file
            .token_url
            .unwrap_or_else(|| "https://sts.googleapis.com/v1/token".to_owned());
        exchange::check_url("token_url", &token_url)?;
        let source = file
            .credential_source
            .ok_or_else(|| missing("credential_source"))?;
        if source.environment_id.is_some() {
            return Err(GcpError::Config(
                "AWS-sourced external_account credentials (credential_source.environment_id) \
                 are not supported; use a file-, URL- or executable-sourced credential"
                    .into(),
            ));
        }
        let mut timeout = Duration::from_secs(30);
        let mut output_file = None;
        let subject = match (&source.file, &source.url, &source.executable) {
            (Some(p), None, None) => SubjectSource::File(p.clone()),
            (None, Some(u), None) => {
                exchange::check_url("credential_source.url", u)?;
                SubjectSource::Url(u.clone())
            }
            (None, None, Some(exe)) => {
                let command = exe
                    .command
                    .clone()
                    .filter(|c| !c.trim().is_empty())
                    .ok_or_else(|| missing("credential_source.executable.command"))?;
                if env(ALLOW_EXECUTABLES_ENV).as_deref() != Some("1") {
                    return Err(GcpError::Config(format!(
                        "the credentials run an executable for their subject token; set \
                         {ALLOW_EXECUTABLES_ENV}=1 to allow it (as Google's libraries require)"
                    )));
                }
                if let Some(ms) = exe.timeout_millis {
                    // google-auth accepts 5 s to 120 s.
                    if !(5_000..=120_000).contains(&ms) {
                        return Err(GcpError::Config(format!(
                            "credential_source.executable.timeout_millis is {ms}; it must be \
                             between 5000 and 120000"
                        )));
                    }
                    timeout = Duration::from_millis(ms);
                }
                output_file = exe.output_file.clone();
                SubjectSource::Executable(command)
            }
            _ => {
                return Err(GcpError::Config(
                    "credential_source must have exactly one of `file`, `url` or `executable`"
                        .into(),
                ));
            }
        };
        let format = source.format.clone().unwrap_or(Format {
            kind: None,
            subject_token_field_name: None,
        });
        let kind = format.kind.unwrap_or_else(|| "text".to_owned());
        if kind == "json" && format.subject_token_field_name.is_none() {
            return Err(missing("credential_source.format.subject_token_field_name"));
        }
        if kind != "json" && kind != "text" {
            return Err(GcpError::Config(format!(
                "credential_source.format.type is `{kind}`; expected `text` or `json`"
            )));
        }
        let headers = source
            .headers
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_default()))
            .collect();
        let impersonation_url = file
            .service_account_impersonation_url
            .filter(|u| !u.is_empty());
        let impersonated = impersonation_url
            .as_deref()
            .and_then(super::impersonate::email_in_url);
        let client_auth = match (file.client_id, file.client_secret) {
            (Some(id), Some(secret)) => Some((id, secret)),
            _ => None,
        };
        let workforce = audience.contains("/workforcePools/");
        let user_project = file
            .workforce_pool_user_project
            .filter(|p| !p.is_empty() && client_auth.is_none());
        let federated = Arc::new(Federated {
            client: exchange::client()?,
            audience: audience.clone(),
            subject_token_type,
            token_url: token_url.clone(),
            subject: subject.clone(),
            headers,
            format: (kind, format.subject_token_field_name),
            timeout,
            output_file,
            impersonated_email: impersonated.clone(),
            client_auth,
            user_project,
            cache: TokenCache::default(),
        });
        let inner: Arc<dyn TokenSource> = match &impersonation_url {
            Some(url) => Arc::new(ImpersonatedSource::new(
                federated,
                url,
                Vec::new(),
                file.service_account_impersonation
                    .and_then(|o| o.token_lifetime_seconds)
                    .map(Duration::from_secs),
            )?),
            None => federated,
        };
        Ok(Self {
            inner,
            audience,
            subject,
            token_url,
            impersonated,
            quota_project: file.quota_project_id.filter(|p| !p.is_empty()),
            workforce,
        })
    }

    /// The workload (or workforce) identity pool provider.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Where the subject token is read.
    pub fn subject(&self) -> &SubjectSource {
        &self.subject
    }

    /// The STS endpoint.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The service account impersonated after the exchange, if any.
    pub fn impersonated(&self) -> Option<&str> {
        self.impersonated.as_deref()
    }
}

#[async_trait]
impl TokenSource for ExternalAccountSource {
    async fn token(&self) -> Result<SecretString, GcpError> {
        self.inner.token().await
    }

    fn identity(&self) -> Option<bootstrap_ids::ServiceAccountEmail> {
        self.inner.identity()
    }

    fn quota_project(&self) -> Option<String> {
        self.quota_project.clone()
    }

    fn principal_is_user(&self) -> bool {
        // A workforce pool's federated token is a person; a workload pool's is a workload.
        self.workforce && self.impersonated.is_none()
    }
}

impl Federated {
    async fn subject_token(&self) -> Result<SecretString, GcpError> {
        let raw = match &self.subject {
            SubjectSource::File(path) => {
                tokio::fs::read(path).await.map_err(|e| GcpError::Auth {
                    message: format!("reading the subject token file {}: {e}", path.display()),
                })?
            }
            SubjectSource::Url(url) => {
                let mut request = self.client.get(url);
                for (k, v) in &self.headers {
                    request = request.header(k.as_str(), v.as_str());
                }
                exchange::send("fetching the subject token", url, request).await?
            }
            SubjectSource::Executable(command) => return self.run_executable(command).await,
        };
        let text = SecretString::from(String::from_utf8_lossy(&raw).into_owned());
        let where_ = self.subject.to_string();
        let token = match (self.format.0.as_str(), &self.format.1) {
            ("json", Some(field)) => {
                let v: Value =
                    serde_json::from_str(text.expose_secret()).map_err(|e| GcpError::Auth {
                        message: format!(
                            "the subject token from {where_} is not JSON (line {}, column {})",
                            e.line(),
                            e.column()
                        ),
                    })?;
                v.get(field)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| GcpError::Auth {
                        message: format!("the subject token JSON from {where_} has no `{field}`"),
                    })?
            }
            _ => text.expose_secret().trim().to_owned(),
        };
        if token.is_empty() {
            return Err(GcpError::Auth {
                message: format!("the subject token from {where_} is empty"),
            });
        }
        Ok(SecretString::from(token))
    }

    /// Runs the executable the way google-auth's `pluggable.py` does: shell-split command,
    /// `GOOGLE_EXTERNAL_ACCOUNT_*` variables, stdout is the JSON answer (or the output file).
    async fn run_executable(&self, command: &str) -> Result<SecretString, GcpError> {
        let argv = shlex::split(command)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                GcpError::Config(format!(
                    "credential_source.executable.command cannot be split: {command}"
                ))
            })?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", &self.audience)
            .env(
                "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE",
                &self.subject_token_type,
            )
            .env("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "0")
            .env("GOOGLE_EXTERNAL_ACCOUNT_REVOKE", "0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(email) = &self.impersonated_email {
            cmd.env("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", email);
        }
        if let Some(out) = &self.output_file {
            cmd.env("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE", out);
        }
        let program = argv[0].clone();
        let output = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .map_err(|_| GcpError::Auth {
                message: format!(
                    "the subject-token executable {program} did not finish within {:?}",
                    self.timeout
                ),
            })?
            .map_err(|e| GcpError::Auth {
                message: format!("running the subject-token executable {program}: {e}"),
            })?;
        if !output.status.success() {
            return Err(GcpError::Auth {
                message: format!(
                    "the subject-token executable {program} exited with {}",
                    output.status
                ),
            });
        }
        let mut stdout = output.stdout;
        if stdout.iter().all(u8::is_ascii_whitespace)
            && let Some(file) = &self.output_file
        {
            stdout = tokio::fs::read(file).await.unwrap_or_default();
        }
        parse_executable_output(&program, &stdout)
    }

    async fn exchange(&self) -> Result<exchange::Token, GcpError> {
        let subject = self.subject_token().await?;
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", GRANT_TYPE.to_owned()),
            ("audience", self.audience.clone()),
            ("scope", CLOUD_PLATFORM_SCOPE.to_owned()),
            ("requested_token_type", REQUESTED_TOKEN_TYPE.to_owned()),
            ("subject_token", subject.expose_secret().to_owned()),
            ("subject_token_type", self.subject_token_type.clone()),
        ];
        if let Some(project) = &self.user_project {
            form.push((
                "options",
                serde_json::json!({ "userProject": project }).to_string(),
            ));
        }
        let mut request = self.client.post(&self.token_url);
        if let Some((id, secret)) = &self.client_auth {
            // RFC 6749 §2.3.1 client authentication, as google-auth's sts client does.
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{id}:{}", secret.expose_secret()));
            request = request.header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
        }
        let request = request.form(&form);
        let body = exchange::send("STS token exchange", &self.token_url, request).await?;
        exchange::oauth_token("STS token exchange", &body)
    }
}

#[async_trait]
impl TokenSource for Federated {
    async fn token(&self) -> Result<SecretString, GcpError> {
        self.cache.get(|| self.exchange()).await
    }
}

/// Reads an executable's answer: `{"version":1,"success":true,"token_type":...,
/// "id_token"|"saml_response":...,"expiration_time":...}` or `success:false` with
/// `code`/`message` (google-auth `pluggable.py` `_parse_subject_token`).
fn parse_executable_output(program: &str, stdout: &[u8]) -> Result<SecretString, GcpError> {
    let v: Value = serde_json::from_slice(stdout).map_err(|e| GcpError::Auth {
        message: format!(
            "the subject-token executable {program} did not print JSON (line {}, column {})",
            e.line(),
            e.column()
        ),
    })?;
    let fail = |m: String| GcpError::Auth {
        message: format!("the subject-token executable {program}: {m}"),
    };
    if v.get("version").and_then(Value::as_u64) != Some(1) {
        return Err(fail("its answer must have \"version\": 1".into()));
    }
    match v.get("success").and_then(Value::as_bool) {
        Some(true) => {}
        Some(false) => {
            let code = v.get("code").and_then(Value::as_str).unwrap_or("(no code)");
            let message = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            return Err(fail(format!("failed: {code}: {message}")));
        }
        None => return Err(fail("its answer has no boolean \"success\"".into())),
    }
    if let Some(exp) = v.get("expiration_time").and_then(Value::as_i64)
        && exp <= chrono::Utc::now().timestamp()
    {
        return Err(fail("the token it printed has expired".into()));
    }
    let token = match v.get("token_type").and_then(Value::as_str) {
        Some(
            "urn:ietf:params:oauth:token-type:id_token" | "urn:ietf:params:oauth:token-type:jwt",
        ) => v.get("id_token"),
        Some("urn:ietf:params:oauth:token-type:saml2") => v.get("saml_response"),
        _ => return Err(fail("unknown or missing token_type".into())),
    };
    token
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::from(t.to_owned()))
        .ok_or_else(|| fail("its answer has no token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(k: &str) -> Option<String> {
        (k == ALLOW_EXECUTABLES_ENV).then(|| "1".to_owned())
    }

    fn deny(_: &str) -> Option<String> {
        None
    }

    const AUDIENCE: &str =
        "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/gh/providers/gh";

    #[test]
    fn github_actions_file_shape_is_read() {
        // The shape google-github-actions/auth writes (URL-sourced, JSON `value`).
        let json = format!(
            r#"{{"type":"external_account","audience":"{AUDIENCE}",
            "subject_token_type":"urn:ietf:params:oauth:token-type:jwt",
            "token_url":"https://sts.googleapis.com/v1/token",
            "service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/ci@p-1.iam.gserviceaccount.com:generateAccessToken",
            "credential_source":{{"url":"https://pipelines.actions.githubusercontent.com/x?audience=y",
              "headers":{{"Authorization":"Bearer RUNTIMESECRET"}},
              "format":{{"type":"json","subject_token_field_name":"value"}}}}}}"#
        );
        let src = ExternalAccountSource::from_json(&SecretString::from(json), &deny).unwrap();
        assert_eq!(src.impersonated(), Some("ci@p-1.iam.gserviceaccount.com"));
        assert!(matches!(src.subject(), SubjectSource::Url(_)));
        assert!(!src.principal_is_user());
        assert!(!format!("{src:?}").contains("RUNTIMESECRET"));
    }

    #[test]
    fn executables_need_the_opt_in_and_aws_is_refused() {
        let exe = format!(
            r#"{{"type":"external_account","audience":"{AUDIENCE}","subject_token_type":"urn:ietf:params:oauth:token-type:id_token",
            "credential_source":{{"executable":{{"command":"/bin/echo hi","timeout_millis":5000}}}}}}"#
        );
        let err =
            ExternalAccountSource::from_json(&SecretString::from(exe.clone()), &deny).unwrap_err();
        assert!(err.to_string().contains(ALLOW_EXECUTABLES_ENV), "{err}");
        assert!(ExternalAccountSource::from_json(&SecretString::from(exe), &allow).is_ok());
        let aws = format!(
            r#"{{"type":"external_account","audience":"{AUDIENCE}","subject_token_type":"x",
            "credential_source":{{"environment_id":"aws1"}}}}"#
        );
        let err = ExternalAccountSource::from_json(&SecretString::from(aws), &allow).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
    }

    #[test]
    fn executable_output_is_checked() {
        let ok = br#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:id_token","id_token":"tok"}"#;
        assert_eq!(
            parse_executable_output("x", ok).unwrap().expose_secret(),
            "tok"
        );
        let failed = br#"{"version":1,"success":false,"code":"401","message":"nope"}"#;
        assert!(
            parse_executable_output("x", failed)
                .unwrap_err()
                .to_string()
                .contains("401: nope")
        );
        let expired = br#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:jwt","id_token":"SECRET","expiration_time":1}"#;
        let err = parse_executable_output("x", expired)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired") && !err.contains("SECRET"), "{err}");
    }
}
