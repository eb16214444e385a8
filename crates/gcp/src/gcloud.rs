//! The active gcloud configuration, for project and region defaults, read the way gcloud
//! reads it: `$CLOUDSDK_CONFIG` (else `~/.config/gcloud`), the active configuration named by
//! `$CLOUDSDK_ACTIVE_CONFIG_NAME` or the `active_config` file (else `default`), and the INI
//! file `configurations/config_<name>`. `CLOUDSDK_CORE_PROJECT` and `CLOUDSDK_RUN_REGION`
//! override the file.

use std::path::{Path, PathBuf};

/// A value and where it came from, so an error about it can say where to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    /// An environment variable name or a file path with section and key.
    pub source: String,
}

/// Defaults taken from gcloud. Values are as written; validate them before use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcloudConfig {
    /// The active configuration's name.
    pub configuration: Option<String>,
    /// `[core] project`.
    pub project: Option<Setting>,
    /// `[run] region`.
    pub region: Option<Setting>,
    /// `[core] account` (the signed-in user or service account).
    pub account: Option<Setting>,
    /// `[auth] impersonate_service_account` (`CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT`).
    pub impersonate_service_account: Option<Setting>,
    /// `[billing] quota_project` (`CLOUDSDK_BILLING_QUOTA_PROJECT`).
    pub quota_project: Option<Setting>,
    /// gcloud's configuration directory (`$CLOUDSDK_CONFIG`, else `~/.config/gcloud`), where
    /// `application_default_credentials.json` lives.
    pub dir: Option<PathBuf>,
}

/// Reads gcloud's configuration from the real environment and home directory. Missing files
/// are not an error: the result is simply empty.
pub fn gcloud_config() -> GcloudConfig {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    gcloud_config_with(&|name| std::env::var(name).ok(), home.as_deref())
}

/// [`gcloud_config`] with the environment and home directory given (for tests).
pub fn gcloud_config_with(
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> GcloudConfig {
    let non_empty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let dir = non_empty("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".config").join("gcloud")));
    let configuration = non_empty("CLOUDSDK_ACTIVE_CONFIG_NAME")
        .or_else(|| {
            let text = std::fs::read_to_string(dir.as_ref()?.join("active_config")).ok()?;
            let name = text.trim().to_owned();
            (!name.is_empty()).then_some(name)
        })
        .or_else(|| dir.as_ref().map(|_| "default".to_owned()));
    let mut out = GcloudConfig {
        configuration: configuration.clone(),
        dir: dir.clone(),
        ..GcloudConfig::default()
    };
    if let (Some(dir), Some(name)) = (&dir, &configuration) {
        let path = dir.join("configurations").join(format!("config_{name}"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let ini = parse_ini(&text);
            let get = |section: &str, key: &str| {
                ini.iter()
                    .find(|(s, k, _)| s == section && k == key)
                    .map(|(_, _, v)| Setting {
                        value: v.clone(),
                        source: format!("{} [{section}] {key}", path.display()),
                    })
            };
            out.project = get("core", "project");
            out.region = get("run", "region");
            out.account = get("core", "account");
            out.impersonate_service_account = get("auth", "impersonate_service_account");
            out.quota_project = get("billing", "quota_project");
        }
    }
    let from_env = |name: &str| {
        non_empty(name).map(|value| Setting {
            value: value.trim().to_owned(),
            source: name.to_owned(),
        })
    };
    if let Some(s) = from_env("CLOUDSDK_CORE_PROJECT") {
        out.project = Some(s);
    }
    if let Some(s) = from_env("CLOUDSDK_RUN_REGION") {
        out.region = Some(s);
    }
    if let Some(s) = from_env("CLOUDSDK_CORE_ACCOUNT") {
        out.account = Some(s);
    }
    if let Some(s) = from_env("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT") {
        out.impersonate_service_account = Some(s);
    }
    if let Some(s) = from_env("CLOUDSDK_BILLING_QUOTA_PROJECT") {
        out.quota_project = Some(s);
    }
    out
}

/// (section, key, value) triples of an INI file; of repeated keys only the last is kept.
fn parse_ini(text: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            continue;
        };
        let (key, value) = (key.trim().to_owned(), value.trim().to_owned());
        if value.is_empty() {
            continue;
        }
        out.retain(|(s, k, _)| !(s == &section && k == &key));
        out.push((section.clone(), key, value));
    }
    out
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::test_support::env_of;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_active_configuration() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".config/gcloud");
        write(&dir, "active_config", "work\n");
        write(
            &dir,
            "configurations/config_default",
            "[core]\nproject = wrong-project\n",
        );
        write(
            &dir,
            "configurations/config_work",
            "[core]\naccount = me@example.com\nproject = my-project-1\n\n[run]\nregion = europe-west1\n[compute]\nregion = us-east1\n",
        );
        let cfg = gcloud_config_with(&env_of(&[]), Some(home.path()));
        assert_eq!(cfg.configuration.as_deref(), Some("work"));
        assert_eq!(cfg.project.as_ref().unwrap().value, "my-project-1");
        assert!(
            cfg.project
                .as_ref()
                .unwrap()
                .source
                .contains("config_work [core] project")
        );
        assert_eq!(cfg.region.unwrap().value, "europe-west1");
        assert_eq!(cfg.account.unwrap().value, "me@example.com");
    }

    #[test]
    fn env_overrides_and_cloudsdk_config() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "configurations/config_default",
            "[core]\nproject = file-project\n",
        );
        let env = env_of(&[
            ("CLOUDSDK_CONFIG", dir.path().to_str().unwrap()),
            ("CLOUDSDK_RUN_REGION", "us-central1"),
        ]);
        let cfg = gcloud_config_with(&env, None);
        assert_eq!(cfg.configuration.as_deref(), Some("default"));
        assert_eq!(cfg.project.unwrap().value, "file-project");
        let region = cfg.region.unwrap();
        assert_eq!(
            (region.value.as_str(), region.source.as_str()),
            ("us-central1", "CLOUDSDK_RUN_REGION")
        );

        let env = env_of(&[
            ("CLOUDSDK_CONFIG", dir.path().to_str().unwrap()),
            ("CLOUDSDK_CORE_PROJECT", "env-project"),
        ]);
        assert_eq!(
            gcloud_config_with(&env, None).project.unwrap().value,
            "env-project"
        );
    }

    #[test]
    fn missing_everything_is_empty() {
        let home = tempfile::tempdir().unwrap();
        let cfg = gcloud_config_with(&env_of(&[]), Some(home.path()));
        assert_eq!(cfg.project, None);
        assert_eq!(cfg.region, None);
        assert_eq!(
            gcloud_config_with(&env_of(&[]), None),
            GcloudConfig::default()
        );
    }

    #[test]
    fn ini_edge_cases() {
        let ini =
            parse_ini("; c\n# c\n[core]\n project=a \nproject = b\nempty =\n[run]\nregion: r1\n");
        assert_eq!(
            ini,
            vec![
                ("core".into(), "project".into(), "b".into()),
                ("run".into(), "region".into(), "r1".into())
            ]
        );
    }
}
