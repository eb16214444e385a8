//! Finding credentials in the order of Google's client libraries (google-auth
//! `google/auth/_default.py`, `default()`): an explicit file (`--credentials-file`), else
//! `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's application-default credentials file, else
//! the metadata server. Then, when asked (`--impersonate-service-account`, gcloud's
//! `auth/impersonate_service_account`), the found credential impersonates a service account.
//!
//! The quota project (`x-goog-user-project`) is taken from, in order: `--quota-project`, the
//! plan's `gcp.quota_project`, `GOOGLE_CLOUD_QUOTA_PROJECT`, the credential file's
//! `quota_project_id`, and, for a user credential, gcloud's `billing/quota_project`. It is never
//! guessed from the target project.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use secrecy::SecretString;
use serde::Deserialize;

use super::external::ExternalAccountSource;
use super::impersonate::{self, ImpersonatedSource};
use super::metadata::{self, MetadataServerSource};
use super::user::AuthorizedUserSource;
use super::{ServiceAccountKeySource, TokenSource};
use crate::error::GcpError;
use crate::gcloud::{self, GcloudConfig, Setting};
use crate::http::{Api, Endpoints};

/// What the command line and the plan add to discovery. Set once per process by the CLI
/// ([`set_process_options`]) so that every caller of [`super::AmbientTokenSource::discover`],
/// the embedded worker included, sees the same flags.
#[derive(Debug, Clone, Default)]
pub struct DiscoverOptions {
    /// `--credentials-file`.
    pub credentials_file: Option<PathBuf>,
    /// `--impersonate-service-account`: `target` or `delegate1,...,target` (gcloud's form).
    pub impersonate: Option<String>,
    /// `--quota-project`.
    pub quota_project: Option<String>,
    /// The plan's `gcp.quota_project`.
    pub plan_quota_project: Option<String>,
}

static PROCESS_OPTIONS: OnceLock<DiscoverOptions> = OnceLock::new();

/// Records the command line's credential flags for this process (first call wins).
pub fn set_process_options(options: DiscoverOptions) {
    let _ = PROCESS_OPTIONS.set(options);
}

/// The flags recorded by [`set_process_options`], or none.
pub fn process_options() -> DiscoverOptions {
    PROCESS_OPTIONS.get().cloned().unwrap_or_default()
}

/// The credential types Google's libraries accept in a file, plus the metadata server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ServiceAccount,
    AuthorizedUser,
    ExternalAccount,
    ImpersonatedServiceAccount,
    MetadataServer,
}

impl CredentialKind {
    /// The file's `type` value (`metadata_server` for the metadata server).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "service_account",
            Self::AuthorizedUser => "authorized_user",
            Self::ExternalAccount => "external_account",
            Self::ImpersonatedServiceAccount => "impersonated_service_account",
            Self::MetadataServer => "metadata_server",
        }
    }
}

/// Where the credential was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--credentials-file`.
    Flag(PathBuf),
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    EnvVar(PathBuf),
    /// gcloud's application-default credentials file.
    GcloudAdc(PathBuf),
    /// The metadata server at this host.
    MetadataServer(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(p) => write!(f, "{} (--credentials-file)", p.display()),
            Origin::EnvVar(p) => write!(f, "{} (GOOGLE_APPLICATION_CREDENTIALS)", p.display()),
            Origin::GcloudAdc(p) => {
                write!(
                    f,
                    "{} (gcloud application-default credentials)",
                    p.display()
                )
            }
            Origin::MetadataServer(h) => write!(f, "the metadata server at {h}"),
        }
    }
}

/// What was found, for `doctor` and error messages. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    pub kind: CredentialKind,
    pub origin: Origin,
    /// Who the credential itself is: a service account's email, a user's account when known,
    /// a federated identity's pool and subject source.
    pub principal: String,
    /// Whether that principal is a person (a user's quota project rules apply).
    pub user: bool,
    /// Service accounts impersonated in turn after the principal; the last one acts.
    pub chain: Vec<String>,
    /// The quota project and where it was set.
    pub quota_project: Option<Setting>,
}

impl CredentialInfo {
    /// The account the API calls run as: the last of the chain, else the principal.
    pub fn acting(&self) -> &str {
        self.chain
            .last()
            .map_or(self.principal.as_str(), String::as_str)
    }
}

/// Credentials found, with a description.
pub struct Discovered {
    pub source: Arc<dyn TokenSource>,
    pub info: CredentialInfo,
}

/// A credential file parsed into its source; `who` describes its principal.
struct Loaded {
    source: Arc<dyn TokenSource>,
    kind: CredentialKind,
    principal: String,
    user: bool,
    chain: Vec<String>,
    file_quota_project: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    account: Option<String>,
    quota_project_id: Option<String>,
}

/// Finds credentials: the real environment and home directory, with `options`.
pub async fn discover(
    options: &DiscoverOptions,
    endpoints: &Endpoints,
) -> Result<Discovered, GcpError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let search = discover_with(
        options,
        endpoints,
        &|k| std::env::var(k).ok(),
        home.as_deref(),
    );
    search.await
}

/// The environment variables discovery reads.
const ENV_VARS: &[&str] = &[
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCE_METADATA_HOST",
    "GOOGLE_CLOUD_QUOTA_PROJECT",
    super::external::ALLOW_EXECUTABLES_ENV,
];

/// The environment, read once before anything waits (so the search can run on any thread).
struct Snapshot {
    vars: std::collections::HashMap<&'static str, String>,
    gcloud: GcloudConfig,
}

impl Snapshot {
    fn take(env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Self {
        Snapshot {
            vars: ENV_VARS
                .iter()
                .filter_map(|k| env(k).map(|v| (*k, v)))
                .collect(),
            gcloud: gcloud::gcloud_config_with(env, home),
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
}

/// [`discover`] with the environment and home directory given (for tests). Reads the
/// environment now; the returned future owns what it needs.
pub fn discover_with(
    options: &DiscoverOptions,
    endpoints: &Endpoints,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> impl std::future::Future<Output = Result<Discovered, GcpError>> + Send + 'static {
    let snapshot = Snapshot::take(env, home);
    let options = options.clone();
    let endpoints = endpoints.clone();
    async move { search(&options, &endpoints, &snapshot).await }
}

async fn search(
    options: &DiscoverOptions,
    endpoints: &Endpoints,
    snapshot: &Snapshot,
) -> Result<Discovered, GcpError> {
    let env = |k: &str| snapshot.var(k);
    let nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let gcloud = &snapshot.gcloud;
    let file = match (
        &options.credentials_file,
        nonempty("GOOGLE_APPLICATION_CREDENTIALS"),
    ) {
        (Some(p), _) => Some(Origin::Flag(p.clone())),
        (None, Some(p)) => Some(Origin::EnvVar(PathBuf::from(p))),
        (None, None) => gcloud
            .dir
            .as_ref()
            .map(|d| d.join("application_default_credentials.json"))
            .filter(|p| p.is_file())
            .map(Origin::GcloudAdc),
    };
    let (origin, loaded) = match file {
        Some(origin) => {
            let path = match &origin {
                Origin::Flag(p) | Origin::EnvVar(p) | Origin::GcloudAdc(p) => p.clone(),
                Origin::MetadataServer(_) => unreachable!("only files here"),
            };
            let loaded = load_file(&path, snapshot)
                .await
                .map_err(|e| GcpError::Auth {
                    message: format!("the credentials in {origin}: {}", plain(&e)),
                })?;
            (origin, loaded)
        }
        None => {
            let host = nonempty("GCE_METADATA_HOST")
                .unwrap_or_else(|| metadata::DEFAULT_METADATA_HOST.to_owned());
            let server = MetadataServerSource::new(&host)?
                .probe()
                .await
                .map_err(|e| GcpError::Auth {
                    message: format!(
                        "no Google credentials found: no --credentials-file, \
                         GOOGLE_APPLICATION_CREDENTIALS is not set, no application-default \
                         credentials file{}, and the metadata server did not answer ({}); \
                         run `gcloud auth application-default login`, or point \
                         GOOGLE_APPLICATION_CREDENTIALS at a credentials file",
                        gcloud
                            .dir
                            .as_ref()
                            .map(|d| format!(" in {}", d.display()))
                            .unwrap_or_default(),
                        plain(&e)
                    ),
                })?;
            let principal = server
                .email()
                .map_or_else(|| "the attached service account".to_owned(), str::to_owned);
            (
                Origin::MetadataServer(host),
                Loaded {
                    source: Arc::new(server),
                    kind: CredentialKind::MetadataServer,
                    principal,
                    user: false,
                    chain: Vec::new(),
                    file_quota_project: None,
                },
            )
        }
    };

    let Loaded {
        mut source,
        kind,
        principal,
        user,
        mut chain,
        file_quota_project,
    } = loaded;

    // Impersonation asked for on top of the credential: the flag, else gcloud's property.
    let asked = options
        .impersonate
        .clone()
        .filter(|s| !s.trim().is_empty())
        .map(|v| (v, "--impersonate-service-account".to_owned()))
        .or_else(|| {
            gcloud
                .impersonate_service_account
                .clone()
                .map(|s| (s.value, s.source))
        });
    if let Some((list, from)) = asked {
        let accounts: Vec<String> = list
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let Some((target, delegates)) = accounts.split_last() else {
            return Err(GcpError::Config(format!(
                "{from}: no service account named"
            )));
        };
        for a in &accounts {
            bootstrap_ids::ServiceAccountEmail::parse(a.as_str()).map_err(|e| {
                GcpError::Config(format!("{from}: `{a}` is not a service account email: {e}"))
            })?;
        }
        let root = endpoints.root(&Api::IamCredentials)?;
        let url = impersonate::generate_access_token_url(root.as_str(), target);
        source = Arc::new(ImpersonatedSource::new(
            source,
            &url,
            delegates.to_vec(),
            None,
        )?);
        chain.extend(accounts.iter().cloned());
    }

    let quota_project = resolve_quota_project(options, &env, gcloud, file_quota_project, user);
    let source: Arc<dyn TokenSource> = Arc::new(WithQuota {
        inner: source,
        quota_project: quota_project.as_ref().map(|s| s.value.clone()),
        user: user && chain.is_empty(),
    });
    Ok(Discovered {
        source,
        info: CredentialInfo {
            kind,
            origin,
            principal,
            user,
            chain,
            quota_project,
        },
    })
}

/// The quota project, in the documented order; the gcloud property only for users.
fn resolve_quota_project(
    options: &DiscoverOptions,
    env: &dyn Fn(&str) -> Option<String>,
    gcloud: &GcloudConfig,
    file: Option<String>,
    user: bool,
) -> Option<Setting> {
    let set = |value: Option<String>, source: &str| {
        value
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|value| Setting {
                value,
                source: source.to_owned(),
            })
    };
    set(options.quota_project.clone(), "--quota-project")
        .or_else(|| {
            set(
                options.plan_quota_project.clone(),
                "gcp.quota_project in the plan",
            )
        })
        .or_else(|| {
            set(
                env("GOOGLE_CLOUD_QUOTA_PROJECT"),
                "GOOGLE_CLOUD_QUOTA_PROJECT",
            )
        })
        .or_else(|| set(file, "the credential file's quota_project_id"))
        .or_else(|| {
            let s = gcloud.quota_project.clone().filter(|_| user)?;
            // gcloud's special values: LEGACY sends no header, CURRENT_PROJECT means the
            // configuration's core/project (`gcloud topic configurations`, billing section).
            match s.value.as_str() {
                "LEGACY" => None,
                "CURRENT_PROJECT" => gcloud.project.clone().map(|p| Setting {
                    value: p.value,
                    source: format!("{} (CURRENT_PROJECT)", s.source),
                }),
                _ => Some(s),
            }
        })
}

/// Reads a credential file and builds its source.
async fn load_file(path: &Path, snapshot: &Snapshot) -> Result<Loaded, GcpError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| GcpError::Config(format!("cannot be read ({e})")))?;
    let text = SecretString::from(text);
    load_json(&text, &|k| snapshot.var(k), &snapshot.gcloud)
}

fn load_json(
    text: &SecretString,
    env: &dyn Fn(&str) -> Option<String>,
    gcloud: &GcloudConfig,
) -> Result<Loaded, GcpError> {
    let header: Header = super::parse_secret_json(text, "credentials file")?;
    let kind = header.kind.as_deref().unwrap_or("");
    let quota = header.quota_project_id.clone().filter(|p| !p.is_empty());
    Ok(match kind {
        "service_account" => {
            let src = ServiceAccountKeySource::from_json(text)?;
            Loaded {
                principal: header
                    .client_email
                    .unwrap_or_else(|| "(no client_email)".into()),
                source: Arc::new(src),
                kind: CredentialKind::ServiceAccount,
                user: false,
                chain: Vec::new(),
                file_quota_project: quota,
            }
        }
        "authorized_user" => {
            let src = AuthorizedUserSource::from_json(text)?;
            let principal = header
                .account
                .filter(|a| !a.is_empty())
                .or_else(|| {
                    gcloud.account.as_ref().map(|a| {
                        format!("{} (gcloud's account; the file does not name it)", a.value)
                    })
                })
                .unwrap_or_else(|| "a user (the file does not name the account)".into());
            Loaded {
                principal,
                source: Arc::new(src),
                kind: CredentialKind::AuthorizedUser,
                user: true,
                chain: Vec::new(),
                file_quota_project: quota,
            }
        }
        "external_account" => {
            let src = ExternalAccountSource::from_json(text, env)?;
            let principal = format!(
                "federated identity of {} (subject token from {})",
                src.audience(),
                src.subject()
            );
            let user = src.principal_is_user();
            let chain = src.impersonated().map(str::to_owned).into_iter().collect();
            Loaded {
                principal,
                source: Arc::new(src),
                kind: CredentialKind::ExternalAccount,
                user,
                chain,
                file_quota_project: quota,
            }
        }
        "impersonated_service_account" => load_impersonated(text, env, gcloud, quota)?,
        "" => {
            return Err(GcpError::Config(
                "the file has no \"type\"; expected a Google credentials file".into(),
            ));
        }
        other => {
            return Err(GcpError::Config(format!(
                "credentials of type `{other}` are not supported (supported: service_account, \
                 authorized_user, external_account, impersonated_service_account)"
            )));
        }
    })
}

/// `impersonated_service_account` (what `gcloud auth application-default login
/// --impersonate-service-account` writes): `source_credentials`, `delegates`,
/// `service_account_impersonation_url` (google-auth `_default.py`
/// `_get_impersonated_service_account_credentials`).
fn load_impersonated(
    text: &SecretString,
    env: &dyn Fn(&str) -> Option<String>,
    gcloud: &GcloudConfig,
    quota: Option<String>,
) -> Result<Loaded, GcpError> {
    #[derive(Deserialize)]
    struct File {
        service_account_impersonation_url: Option<String>,
        #[serde(default)]
        delegates: Vec<String>,
        source_credentials: Option<serde_json::Value>,
    }
    let file: File = super::parse_secret_json(text, "impersonated_service_account credentials")?;
    let url = file.service_account_impersonation_url.ok_or_else(|| {
        GcpError::Config(
            "the impersonated_service_account credentials have no \
             `service_account_impersonation_url`"
                .into(),
        )
    })?;
    let inner_json = file.source_credentials.ok_or_else(|| {
        GcpError::Config(
            "the impersonated_service_account credentials have no `source_credentials`".into(),
        )
    })?;
    if inner_json.get("type").and_then(|t| t.as_str()) == Some("impersonated_service_account") {
        return Err(GcpError::Config(
            "source_credentials of an impersonated_service_account cannot be impersonated again"
                .into(),
        ));
    }
    let inner_text = SecretString::from(inner_json.to_string());
    let inner = load_json(&inner_text, env, gcloud)?;
    // Delegates in the file are `projects/-/serviceAccounts/EMAIL` or bare emails.
    let delegates: Vec<String> = file
        .delegates
        .iter()
        .map(|d| d.rsplit('/').next().unwrap_or(d).to_owned())
        .collect();
    let source = ImpersonatedSource::new(inner.source, &url, delegates.clone(), None)?;
    let mut chain = inner.chain;
    chain.extend(delegates);
    chain.push(source.target().to_owned());
    Ok(Loaded {
        source: Arc::new(source),
        kind: CredentialKind::ImpersonatedServiceAccount,
        principal: inner.principal,
        user: inner.user,
        chain,
        file_quota_project: quota.or(inner.file_quota_project),
    })
}

/// The error's text without the variant's prefix (a `Config` error reads as a sentence).
fn plain(e: &GcpError) -> String {
    match e {
        GcpError::Auth { message } => message.clone(),
        other => other.to_string(),
    }
}

/// A source with the quota project attached.
#[derive(Debug)]
struct WithQuota {
    inner: Arc<dyn TokenSource>,
    quota_project: Option<String>,
    user: bool,
}

#[async_trait::async_trait]
impl TokenSource for WithQuota {
    async fn token(&self) -> Result<SecretString, GcpError> {
        self.inner.token().await
    }

    fn identity(&self) -> Option<bootstrap_ids::ServiceAccountEmail> {
        self.inner.identity()
    }

    fn project_hint(&self) -> Option<String> {
        self.inner.project_hint()
    }

    fn quota_project(&self) -> Option<String> {
        self.quota_project.clone()
    }

    fn principal_is_user(&self) -> bool {
        self.user
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::test_support::env_of;

    /// Discovery with default options against Google, in the environment `env` (no home).
    async fn discover_default(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Discovered, GcpError> {
        discover_with(&DiscoverOptions::default(), &Endpoints::google(), env, None).await
    }

    /// Writes [`USER`] as the application-default credentials of the gcloud config folder `dir`.
    fn write_user_adc(dir: &Path) {
        std::fs::write(dir.join("application_default_credentials.json"), USER).unwrap();
    }

    const USER: &str = r#"{"type":"authorized_user","client_id":"c","client_secret":"CSECRET","refresh_token":"RSECRET","quota_project_id":"billing-proj"}"#;

    #[tokio::test]
    async fn adc_file_user_with_quota_project() {
        let dir = tempfile::tempdir().unwrap();
        write_user_adc(dir.path());
        let env = env_of(&[("CLOUDSDK_CONFIG", dir.path().to_str().unwrap())]);
        let d = discover_default(&env).await.unwrap();
        assert_eq!(d.info.kind, CredentialKind::AuthorizedUser);
        assert!(matches!(d.info.origin, Origin::GcloudAdc(_)));
        assert!(d.info.user);
        let q = d.info.quota_project.clone().unwrap();
        assert_eq!(q.value, "billing-proj");
        assert_eq!(d.source.quota_project().as_deref(), Some("billing-proj"));
        assert!(d.source.principal_is_user());
        let shown = format!("{:?}{:?}", d.info, d.source);
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[tokio::test]
    async fn flag_beats_env_and_quota_order_holds() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag.json");
        std::fs::write(&flag, USER).unwrap();
        let env = env_of(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/file.json"),
            ("GOOGLE_CLOUD_QUOTA_PROJECT", "env-proj"),
        ]);
        let options = DiscoverOptions {
            credentials_file: Some(flag.clone()),
            ..Default::default()
        };
        let d = discover_with(&options, &Endpoints::google(), &env, None)
            .await
            .unwrap();
        assert_eq!(d.info.origin, Origin::Flag(flag));
        assert_eq!(d.info.quota_project.unwrap().value, "env-proj");
        let options = DiscoverOptions {
            quota_project: Some("flag-proj".into()),
            plan_quota_project: Some("plan-proj".into()),
            ..options
        };
        let d = discover_with(&options, &Endpoints::google(), &env, None)
            .await
            .unwrap();
        assert_eq!(d.info.quota_project.unwrap().source, "--quota-project");
    }

    #[tokio::test]
    async fn impersonation_flag_builds_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        write_user_adc(dir.path());
        let env = env_of(&[("CLOUDSDK_CONFIG", dir.path().to_str().unwrap())]);
        let options = DiscoverOptions {
            impersonate: Some(
                "hop@p-123456.iam.gserviceaccount.com,ci@p-123456.iam.gserviceaccount.com".into(),
            ),
            ..Default::default()
        };
        let d = discover_with(&options, &Endpoints::google(), &env, None)
            .await
            .unwrap();
        assert_eq!(
            d.info.chain,
            vec![
                "hop@p-123456.iam.gserviceaccount.com".to_owned(),
                "ci@p-123456.iam.gserviceaccount.com".to_owned()
            ]
        );
        assert_eq!(d.info.acting(), "ci@p-123456.iam.gserviceaccount.com");
        // The acting principal is a service account: no user quota rule.
        assert!(!d.source.principal_is_user());
        let bad = DiscoverOptions {
            impersonate: Some("not-an-email".into()),
            ..Default::default()
        };
        let err = discover_with(&bad, &Endpoints::google(), &env, None)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("--impersonate-service-account"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn impersonated_file_and_gcloud_property() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!(
            r#"{{"type":"impersonated_service_account","delegates":["projects/-/serviceAccounts/hop@p-123456.iam.gserviceaccount.com"],
            "service_account_impersonation_url":"http://127.0.0.1:1/v1/projects/-/serviceAccounts/ci@p-123456.iam.gserviceaccount.com:generateAccessToken",
            "source_credentials":{USER}}}"#
        );
        let path = dir.path().join("imp.json");
        std::fs::write(&path, file).unwrap();
        let env = env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", path.to_str().unwrap())]);
        let d = discover_default(&env).await.unwrap();
        assert_eq!(d.info.kind, CredentialKind::ImpersonatedServiceAccount);
        assert_eq!(d.info.chain.len(), 2);
        assert_eq!(d.info.quota_project.unwrap().value, "billing-proj");

        std::fs::create_dir_all(dir.path().join("configurations")).unwrap();
        std::fs::write(
            dir.path().join("configurations/config_default"),
            "[auth]\nimpersonate_service_account = ci@p-123456.iam.gserviceaccount.com\n",
        )
        .unwrap();
        write_user_adc(dir.path());
        let env = env_of(&[("CLOUDSDK_CONFIG", dir.path().to_str().unwrap())]);
        let d = discover_default(&env).await.unwrap();
        assert_eq!(
            d.info.chain,
            vec!["ci@p-123456.iam.gserviceaccount.com".to_owned()]
        );
    }

    #[tokio::test]
    async fn unknown_type_and_no_credentials_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(
            &path,
            r#"{"type":"gdch_service_account","private_key":"SECRET"}"#,
        )
        .unwrap();
        let env = env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", path.to_str().unwrap())]);
        let err = discover_default(&env).await.err().unwrap().to_string();
        assert!(
            err.contains("not supported") && !err.contains("SECRET"),
            "{err}"
        );

        let env = env_of(&[
            ("CLOUDSDK_CONFIG", dir.path().to_str().unwrap()),
            ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ]);
        let err = discover_default(&env).await.err().unwrap().to_string();
        assert!(err.contains("no Google credentials found"), "{err}");
        assert!(err.contains("metadata server"), "{err}");
    }
}
