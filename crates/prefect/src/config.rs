//! Where the Prefect API is and how to authenticate, resolved as Prefect's own CLI does.
//!
//! Each setting comes from the first source that has it: an explicit value (from the plan),
//! then the environment (`PREFECT_API_URL`, `PREFECT_API_KEY`, `PREFECT_API_AUTH_STRING`),
//! then the active profile of `$PREFECT_HOME/profiles.toml` (`PREFECT_PROFILE` picks the
//! profile, else the file's `active`). A key or auth string from a profile is only used
//! together with that profile's URL, so a Prefect Cloud key is never sent to another server.
//!
//! Prefect's client retry settings apply too, from the same sources: `PREFECT_CLIENT_MAX_RETRIES`
//! (retries after the first attempt; Prefect's default 5) and `PREFECT_CLIENT_RETRY_EXTRA_CODES`
//! (status codes retried besides 429/502/503/408), as in prefect 3.9.1's
//! `prefect/settings/models/client.py` and `prefect/client/base.py`.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use url::Url;

use crate::error::PrefectError;

/// Values given explicitly (e.g. by the plan file); they win over the environment and profile.
#[derive(Debug, Default, Clone)]
pub struct ConfigOverrides {
    /// The API URL, e.g. `http://127.0.0.1:4200/api`.
    pub api_url: Option<String>,
    /// A Prefect Cloud API key.
    pub api_key: Option<SecretString>,
    /// A self-hosted server's basic-auth string, `user:password`.
    pub auth_string: Option<SecretString>,
}

/// Where a setting came from, for messages such as "using the API URL of profile `x`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Given explicitly (the plan file).
    Explicit,
    /// From an environment variable.
    Env,
    /// From the named profile.
    Profile(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Explicit => f.write_str("the plan"),
            Source::Env => f.write_str("the environment"),
            Source::Profile(name) => write!(f, "Prefect profile `{name}`"),
        }
    }
}

/// The resolved settings of one Prefect API.
#[derive(Debug, Clone)]
pub struct PrefectConfig {
    /// The API URL without a trailing slash.
    pub api_url: Url,
    /// Where the URL came from.
    pub url_source: Source,
    /// A Prefect Cloud API key (sent as `Authorization: Bearer`).
    pub api_key: Option<SecretString>,
    /// A basic-auth string for self-hosted servers (sent as `Authorization: Basic`).
    pub auth_string: Option<SecretString>,
    /// Prefect's client retry settings, when the environment or profile sets them.
    pub retries: ClientRetrySettings,
}

/// `PREFECT_CLIENT_MAX_RETRIES` and `PREFECT_CLIENT_RETRY_EXTRA_CODES`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRetrySettings {
    /// Retries after the first attempt (`None`: this client's default).
    pub max_retries: Option<u32>,
    /// Further status codes to retry.
    pub extra_codes: Vec<u16>,
}

impl ClientRetrySettings {
    fn resolve(
        env: &dyn Fn(&str) -> Option<String>,
        profile: Option<&Profile>,
    ) -> Result<Self, PrefectError> {
        let value = |key: &str| -> Option<(String, String)> {
            if let Some(v) = env(key).filter(|v| !v.trim().is_empty()) {
                return Some((v, "the environment".to_string()));
            }
            profile.and_then(|p| {
                p.setting_text(key)
                    .map(|v| (v, format!("Prefect profile `{}`", p.name)))
            })
        };
        let max_retries = match value("PREFECT_CLIENT_MAX_RETRIES") {
            None => None,
            Some((v, from)) => Some(v.trim().parse::<u32>().map_err(|_| {
                PrefectError::Config(format!(
                    "PREFECT_CLIENT_MAX_RETRIES `{}` from {from} is not a whole number >= 0",
                    v.trim()
                ))
            })?),
        };
        let extra_codes = match value("PREFECT_CLIENT_RETRY_EXTRA_CODES") {
            None => Vec::new(),
            Some((v, from)) => parse_status_codes(&v).ok_or_else(|| {
                PrefectError::Config(format!(
                    "PREFECT_CLIENT_RETRY_EXTRA_CODES `{}` from {from} is not a list of HTTP \
                     status codes (100-599), e.g. `500,504`",
                    v.trim()
                ))
            })?,
        };
        Ok(ClientRetrySettings {
            max_retries,
            extra_codes,
        })
    }
}

/// `"500,504"`, `"[500, 504]"` or `"500"` (the forms Prefect's settings accept).
fn parse_status_codes(text: &str) -> Option<Vec<u16>> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u16>().ok().filter(|c| (100..=599).contains(c)))
        .collect()
}

/// The active profile, for the wizard: its name and URL only (never its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveProfile {
    /// The profile's name.
    pub name: String,
    /// Its `PREFECT_API_URL`, if it sets one.
    pub api_url: Option<String>,
}

/// A Prefect Cloud workspace, recognised from its API URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudWorkspace {
    /// The account id.
    pub account: String,
    /// The workspace id.
    pub workspace: String,
}

impl PrefectConfig {
    /// Resolves the settings from `overrides`, the process environment and the profile file.
    pub fn resolve(overrides: ConfigOverrides) -> Result<Self, PrefectError> {
        Self::resolve_with(overrides, &|k| std::env::var(k).ok())
    }

    /// As [`PrefectConfig::resolve`], with the environment given as a function (for tests).
    pub fn resolve_with(
        overrides: ConfigOverrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, PrefectError> {
        let env_nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let profile = load_active_profile(env)?;

        let (url_text, url_source) = if let Some(u) = overrides.api_url.clone() {
            (u, Source::Explicit)
        } else if let Some(u) = env_nonempty("PREFECT_API_URL") {
            (u, Source::Env)
        } else if let Some((name, u)) = profile
            .as_ref()
            .and_then(|p| p.setting("PREFECT_API_URL").map(|u| (p.name.clone(), u)))
        {
            (u, Source::Profile(name))
        } else {
            return Err(PrefectError::Config(
                "no Prefect API URL: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api), \
                 or select a profile with one (`prefect profile use ...`)"
                    .to_string(),
            ));
        };
        let api_url = parse_api_url(&url_text)?;

        // A profile's credentials go only with that profile's URL.
        let profile_creds = profile.as_ref().filter(|p| match &url_source {
            Source::Profile(_) => true,
            _ => p
                .setting("PREFECT_API_URL")
                .and_then(|u| parse_api_url(&u).ok())
                .is_some_and(|u| u == api_url),
        });
        let secret = |explicit: Option<SecretString>, key: &str| {
            explicit
                .or_else(|| env_nonempty(key).map(SecretString::from))
                .or_else(|| {
                    profile_creds
                        .and_then(|p| p.setting(key))
                        .map(SecretString::from)
                })
        };
        Ok(PrefectConfig {
            api_key: secret(overrides.api_key, "PREFECT_API_KEY"),
            auth_string: secret(overrides.auth_string, "PREFECT_API_AUTH_STRING"),
            retries: ClientRetrySettings::resolve(env, profile.as_ref())?,
            api_url,
            url_source,
        })
    }

    /// A config for a known URL and no credentials (tests, local servers).
    pub fn for_url(url: &str) -> Result<Self, PrefectError> {
        Ok(PrefectConfig {
            api_url: parse_api_url(url)?,
            url_source: Source::Explicit,
            api_key: None,
            auth_string: None,
            retries: ClientRetrySettings::default(),
        })
    }

    /// The Prefect Cloud workspace this URL points at, if it is one.
    pub fn cloud_workspace(&self) -> Option<CloudWorkspace> {
        cloud_workspace(&self.api_url)
    }

    /// The UI page of a flow run, for printing next to its id.
    pub fn flow_run_ui_url(&self, flow_run_id: uuid::Uuid) -> String {
        if let Some(ws) = self.cloud_workspace() {
            return format!(
                "https://app.prefect.cloud/account/{}/workspace/{}/runs/flow-run/{flow_run_id}",
                ws.account, ws.workspace
            );
        }
        // A self-hosted server serves its UI at the API URL without the trailing `/api`.
        let mut base = self.api_url.as_str().trim_end_matches('/').to_string();
        if base.ends_with("/api") {
            base.truncate(base.len() - 4);
        }
        format!("{base}/runs/flow-run/{flow_run_id}")
    }
}

/// The active profile's name and URL, or `None` when there is no profile file or it selects
/// no profile.
pub fn active_profile() -> Result<Option<ActiveProfile>, PrefectError> {
    Ok(
        load_active_profile(&|k| std::env::var(k).ok())?.map(|p| ActiveProfile {
            api_url: p.setting("PREFECT_API_URL"),
            name: p.name,
        }),
    )
}

/// Recognises `https://api.prefect.cloud/api/accounts/<a>/workspaces/<w>`.
pub fn cloud_workspace(url: &Url) -> Option<CloudWorkspace> {
    if !url.host_str()?.ends_with("prefect.cloud") {
        return None;
    }
    let segs: Vec<&str> = url.path_segments()?.filter(|s| !s.is_empty()).collect();
    let a = segs.iter().position(|s| *s == "accounts")?;
    let account = segs.get(a + 1)?;
    (segs.get(a + 2) == Some(&"workspaces"))
        .then(|| segs.get(a + 3))
        .flatten()
        .map(|ws| CloudWorkspace {
            account: (*account).to_string(),
            workspace: (*ws).to_string(),
        })
}

fn parse_api_url(text: &str) -> Result<Url, PrefectError> {
    let trimmed = text.trim().trim_end_matches('/');
    let url = Url::parse(trimmed).map_err(|e| {
        PrefectError::Config(format!(
            "PREFECT_API_URL `{trimmed}` is not a URL ({e}); expected e.g. http://127.0.0.1:4200/api"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PrefectError::Config(format!(
            "PREFECT_API_URL `{trimmed}` must start with http:// or https://"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in the URL would end up in logs and error messages.
        return Err(PrefectError::Config(
            "PREFECT_API_URL must not contain a user or password; use PREFECT_API_AUTH_STRING"
                .to_string(),
        ));
    }
    Ok(url)
}

/// One profile of `profiles.toml`: its name and its settings table.
struct Profile {
    name: String,
    settings: toml::Table,
}

impl Profile {
    fn setting(&self, key: &str) -> Option<String> {
        match self.settings.get(key)? {
            toml::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    /// A setting written as a TOML string, integer or array (retry settings are often
    /// written unquoted: `PREFECT_CLIENT_MAX_RETRIES = 10`).
    fn setting_text(&self, key: &str) -> Option<String> {
        match self.settings.get(key)? {
            toml::Value::Integer(n) => Some(n.to_string()),
            toml::Value::Array(items) => Some(
                items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => self.setting(key),
        }
    }
}

fn profiles_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("PREFECT_PROFILES_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = match env("PREFECT_HOME").filter(|p| !p.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(env("HOME")?).join(".prefect"),
    };
    Some(home.join("profiles.toml"))
}

fn load_active_profile(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Profile>, PrefectError> {
    let Some(path) = profiles_path(env) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PrefectError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    parse_active_profile(&text, env("PREFECT_PROFILE").as_deref(), &path)
}

fn parse_active_profile(
    text: &str,
    selected: Option<&str>,
    path: &Path,
) -> Result<Option<Profile>, PrefectError> {
    // The toml error would quote the line, which may hold a key: report only where it is.
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at byte {}", s.start))
            .unwrap_or_default();
        PrefectError::Config(format!("{} is not valid TOML{at}", path.display()))
    })?;
    let name = match selected.filter(|s| !s.is_empty()) {
        Some(s) => s.to_string(),
        None => match doc.get("active") {
            Some(toml::Value::String(s)) => s.clone(),
            _ => return Ok(None),
        },
    };
    let settings = doc
        .get("profiles")
        .and_then(|p| p.get(&name))
        .and_then(|p| p.as_table())
        .cloned();
    match settings {
        Some(settings) => Ok(Some(Profile { name, settings })),
        None if selected.is_some() => Err(PrefectError::Config(format!(
            "PREFECT_PROFILE selects profile `{name}`, which {} does not define",
            path.display()
        ))),
        // Prefect's built-in profiles (e.g. `ephemeral`) may be active without a table.
        None => Ok(Some(Profile {
            name,
            settings: toml::Table::new(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn with_profiles(
        text: &str,
        vars: &[(&str, &str)],
    ) -> (tempfile::TempDir, HashMap<String, String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("profiles.toml"), text).expect("write");
        let mut env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("PREFECT_HOME".into(), dir.path().display().to_string());
        (dir, env)
    }

    const PROFILES: &str = r#"
active = "cloud"
[profiles.cloud]
PREFECT_API_URL = "https://api.prefect.cloud/api/accounts/aaa/workspaces/www"
PREFECT_API_KEY = "pnu_profilekey"
[profiles.local]
PREFECT_API_URL = "http://127.0.0.1:4200/api"
PREFECT_API_AUTH_STRING = "admin:pass"
"#;

    #[test]
    fn active_profile_supplies_url_and_key() {
        let (_d, env) = with_profiles(PROFILES, &[]);
        let c = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| env.get(k).cloned())
            .expect("resolves");
        assert_eq!(c.url_source, Source::Profile("cloud".into()));
        assert_eq!(
            c.cloud_workspace(),
            Some(CloudWorkspace {
                account: "aaa".into(),
                workspace: "www".into()
            })
        );
        assert_eq!(c.api_key.expect("key").expose_secret(), "pnu_profilekey");
    }

    #[test]
    fn prefect_profile_env_selects_another_profile() {
        let (_d, env) = with_profiles(PROFILES, &[("PREFECT_PROFILE", "local")]);
        let c = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| env.get(k).cloned())
            .expect("resolves");
        assert_eq!(c.api_url.as_str(), "http://127.0.0.1:4200/api");
        assert!(c.api_key.is_none());
        assert_eq!(
            c.auth_string.as_ref().expect("auth").expose_secret(),
            "admin:pass"
        );
        assert!(c.cloud_workspace().is_none());
    }

    #[test]
    fn env_beats_profile_and_profile_key_is_not_sent_elsewhere() {
        let (_d, env) = with_profiles(
            PROFILES,
            &[("PREFECT_API_URL", "http://10.0.0.1:4200/api/")],
        );
        let c = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| env.get(k).cloned())
            .expect("resolves");
        assert_eq!(c.url_source, Source::Env);
        assert_eq!(c.api_url.as_str(), "http://10.0.0.1:4200/api");
        assert!(
            c.api_key.is_none(),
            "the cloud profile's key must not follow another URL"
        );
    }

    #[test]
    fn explicit_beats_env() {
        let (_d, env) = with_profiles(
            "",
            &[
                ("PREFECT_API_URL", "http://a/api"),
                ("PREFECT_API_KEY", "envkey"),
            ],
        );
        let o = ConfigOverrides {
            api_url: Some("http://b/api".into()),
            api_key: Some(SecretString::from("plankey")),
            auth_string: None,
        };
        let c = PrefectConfig::resolve_with(o, &|k| env.get(k).cloned()).expect("resolves");
        assert_eq!(c.api_url.as_str(), "http://b/api");
        assert_eq!(c.api_key.expect("key").expose_secret(), "plankey");
    }

    #[test]
    fn missing_url_is_a_clear_error() {
        let (_d, env) = with_profiles("", &[]);
        let e = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| env.get(k).cloned())
            .expect_err("no url");
        assert!(e.to_string().contains("set PREFECT_API_URL"), "{e}");
    }

    #[test]
    fn malformed_profile_file_does_not_echo_contents() {
        let (_d, env) = with_profiles("PREFECT_API_KEY = \"pnu_secret\" = oops", &[]);
        let e = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| env.get(k).cloned())
            .expect_err("bad toml");
        let msg = e.to_string();
        assert!(msg.contains("not valid TOML"), "{msg}");
        assert!(!msg.contains("pnu_secret"), "{msg}");
    }

    #[test]
    fn unknown_selected_profile_is_an_error() {
        let (_d, env) = with_profiles(PROFILES, &[("PREFECT_PROFILE", "nope")]);
        let e = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| env.get(k).cloned())
            .expect_err("unknown profile");
        assert!(e.to_string().contains("`nope`"), "{e}");
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert!(PrefectConfig::for_url("not a url").is_err());
        assert!(PrefectConfig::for_url("ftp://x/api").is_err());
        assert!(PrefectConfig::for_url("http://u:p@x/api").is_err());
    }

    #[test]
    fn client_retry_settings_come_from_env_then_profile() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("profiles.toml"),
            "active = \"p\"\n[profiles.p]\nPREFECT_API_URL = \"http://127.0.0.1:4200/api\"\n\
             PREFECT_CLIENT_MAX_RETRIES = 9\nPREFECT_CLIENT_RETRY_EXTRA_CODES = [500, 504]\n",
        )
        .expect("write");
        let home = dir.path().to_string_lossy().to_string();
        let from_profile = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| {
            (k == "PREFECT_HOME").then(|| home.clone())
        })
        .expect("resolves");
        assert_eq!(
            from_profile.retries,
            ClientRetrySettings {
                max_retries: Some(9),
                extra_codes: vec![500, 504]
            }
        );
        let from_env = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| match k {
            "PREFECT_HOME" => Some(home.clone()),
            "PREFECT_CLIENT_MAX_RETRIES" => Some("0".into()),
            "PREFECT_CLIENT_RETRY_EXTRA_CODES" => Some("520".into()),
            _ => None,
        })
        .expect("resolves");
        assert_eq!(from_env.retries.max_retries, Some(0));
        assert_eq!(from_env.retries.extra_codes, vec![520]);
        for bad in ["-1", "many"] {
            let e = PrefectConfig::resolve_with(ConfigOverrides::default(), &|k| match k {
                "PREFECT_API_URL" => Some("http://127.0.0.1:1/api".into()),
                "PREFECT_CLIENT_MAX_RETRIES" => Some(bad.into()),
                _ => None,
            })
            .expect_err("bad number");
            assert!(e.to_string().contains("PREFECT_CLIENT_MAX_RETRIES"), "{e}");
            assert!(e.to_string().contains("the environment"), "{e}");
        }
        assert_eq!(parse_status_codes("[500, 504]"), Some(vec![500, 504]));
        assert_eq!(parse_status_codes("99"), None);
        assert_eq!(parse_status_codes("5xx"), None);
    }

    #[test]
    fn ui_urls() {
        let c = PrefectConfig::for_url("http://127.0.0.1:4200/api").expect("url");
        let id = uuid::Uuid::nil();
        assert_eq!(
            c.flow_run_ui_url(id),
            format!("http://127.0.0.1:4200/runs/flow-run/{id}")
        );
        let c = PrefectConfig::for_url("https://api.prefect.cloud/api/accounts/a1/workspaces/w1")
            .expect("url");
        assert_eq!(
            c.flow_run_ui_url(id),
            format!("https://app.prefect.cloud/account/a1/workspace/w1/runs/flow-run/{id}")
        );
    }
}
