//! What the machine already knows, read as defaults for the questions: the active gcloud
//! configuration, the active Prefect profile and a `prefect.yaml` in the current directory.
//!
//! Every reader is forgiving: a file that is missing or unreadable gives no default rather than
//! an error, because a default is only a convenience and the user is asked anyway.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Defaults found on the machine. Each field is `None` when nothing was found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineDefaults {
    /// `[core] project` of the active gcloud configuration.
    pub gcp_project: Option<String>,
    /// `[run] region` of the active gcloud configuration.
    pub gcp_region: Option<String>,
    /// `PREFECT_API_URL` of the environment, else of the active Prefect profile.
    pub prefect_api_url: Option<String>,
    /// The first deployment of `./prefect.yaml`.
    pub deployment: Option<PrefectYamlDeployment>,
}

/// The parts of a `prefect.yaml` deployment the wizard offers as defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefectYamlDeployment {
    pub name: Option<String>,
    pub entrypoint: Option<String>,
    /// `work_pool.job_variables.image`.
    pub image: Option<String>,
    pub parameters: Option<Map<String, Value>>,
    /// `work_pool.name`.
    pub pool: Option<String>,
}

/// Where to look; tests point these at a temporary directory.
#[derive(Debug, Clone)]
pub struct Locations {
    /// The gcloud configuration directory (`$CLOUDSDK_CONFIG`, else `~/.config/gcloud`).
    pub gcloud_dir: Option<PathBuf>,
    /// The Prefect home (`$PREFECT_HOME`, else `~/.prefect`).
    pub prefect_home: Option<PathBuf>,
    /// `PREFECT_API_URL` from the environment (it overrides the profile, as in Prefect).
    pub prefect_api_url_env: Option<String>,
    /// `PREFECT_PROFILE` from the environment (it overrides `active` in profiles.toml).
    pub prefect_profile_env: Option<String>,
    /// The directory that may hold `prefect.yaml`.
    pub project_dir: PathBuf,
}

impl Locations {
    /// The locations the real tools use, from the process environment.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = env("HOME").map(PathBuf::from);
        Self {
            gcloud_dir: env("CLOUDSDK_CONFIG")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".config/gcloud"))),
            prefect_home: env("PREFECT_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".prefect"))),
            prefect_api_url_env: env("PREFECT_API_URL"),
            prefect_profile_env: env("PREFECT_PROFILE"),
            project_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }
}

/// Reads every source of defaults.
pub fn read_defaults(loc: &Locations) -> MachineDefaults {
    let gcloud = loc.gcloud_dir.as_deref().and_then(read_gcloud_config);
    let (gcp_project, gcp_region) = gcloud.unwrap_or_default();
    let prefect_api_url = loc.prefect_api_url_env.clone().or_else(|| {
        loc.prefect_home
            .as_deref()
            .and_then(|h| read_prefect_profile_url(h, loc.prefect_profile_env.as_deref()))
    });
    let deployment = std::fs::read_to_string(loc.project_dir.join("prefect.yaml"))
        .ok()
        .and_then(|text| parse_prefect_yaml(&text));
    MachineDefaults {
        gcp_project,
        gcp_region,
        prefect_api_url,
        deployment,
    }
}

/// `(project, region)` of the active gcloud configuration in `dir`.
pub fn read_gcloud_config(dir: &Path) -> Option<(Option<String>, Option<String>)> {
    // gcloud writes the name of the active configuration, alone, in `active_config`;
    // without that file it uses `default`.
    let active = std::fs::read_to_string(dir.join("active_config"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    if active.contains(['/', '\\']) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("configurations").join(format!("config_{active}")))
        .ok()?;
    Some((
        ini_value(&text, "core", "project"),
        ini_value(&text, "run", "region"),
    ))
}

/// The value of `key` in `[section]` of an INI text (gcloud's format: `key = value`).
pub fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
            continue;
        }
        if current != section {
            continue;
        }
        let Some((k, v)) = line.split_once(['=', ':']) else {
            continue;
        };
        if k.trim() == key {
            let v = v.trim();
            return (!v.is_empty()).then(|| v.to_owned());
        }
    }
    None
}

/// `PREFECT_API_URL` of the active profile in `<prefect_home>/profiles.toml`.
pub fn read_prefect_profile_url(
    prefect_home: &Path,
    profile_override: Option<&str>,
) -> Option<String> {
    let text = std::fs::read_to_string(prefect_home.join("profiles.toml")).ok()?;
    profile_api_url(&text, profile_override)
}

/// `PREFECT_API_URL` of the active (or the named) profile in a `profiles.toml` text.
pub fn profile_api_url(text: &str, profile_override: Option<&str>) -> Option<String> {
    let doc: toml::Table = text.parse().ok()?;
    let active = match profile_override {
        Some(name) => name.to_owned(),
        None => doc.get("active")?.as_str()?.to_owned(),
    };
    let url = doc
        .get("profiles")?
        .get(active.as_str())?
        .get("PREFECT_API_URL")?
        .as_str()?
        .trim();
    (!url.is_empty()).then(|| url.to_owned())
}

/// The first deployment of a `prefect.yaml` text, or `None` when it has none or does not parse.
pub fn parse_prefect_yaml(text: &str) -> Option<PrefectYamlDeployment> {
    let doc: Value = serde_saphyr::from_str(text).ok()?;
    let first = doc.get("deployments")?.as_array()?.first()?;
    // Prefect renders `{{ ... }}` in prefect.yaml at deploy time (e.g. `{{ build-image.image }}`);
    // such a value is no default for a plan file, so it is skipped.
    let string = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.contains("{{"))
            .map(str::to_owned)
    };
    let pool = first.get("work_pool");
    Some(PrefectYamlDeployment {
        name: string(first.get("name")),
        entrypoint: string(first.get("entrypoint")),
        image: string(
            pool.and_then(|p| p.get("job_variables"))
                .and_then(|j| j.get("image")),
        ),
        parameters: first.get("parameters").and_then(Value::as_object).cloned(),
        pool: string(pool.and_then(|p| p.get("name"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_and_keys() {
        let text = "[core]\naccount = me@example.com\nproject = my-project-1\n\n[run]\nregion = europe-west1\n";
        assert_eq!(
            ini_value(text, "core", "project").as_deref(),
            Some("my-project-1")
        );
        assert_eq!(
            ini_value(text, "run", "region").as_deref(),
            Some("europe-west1")
        );
        assert_eq!(ini_value(text, "run", "project"), None);
        assert_eq!(ini_value(text, "compute", "zone"), None);
        assert_eq!(ini_value("[core]\nproject =\n", "core", "project"), None);
    }

    #[test]
    fn gcloud_active_configuration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("configurations")).unwrap();
        std::fs::write(dir.path().join("active_config"), "work\n").unwrap();
        std::fs::write(
            dir.path().join("configurations/config_default"),
            "[core]\nproject = not-this-one\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("configurations/config_work"),
            "[core]\nproject = work-project\n[run]\nregion = us-east1\n",
        )
        .unwrap();
        assert_eq!(
            read_gcloud_config(dir.path()),
            Some((Some("work-project".into()), Some("us-east1".into())))
        );
        // Without active_config, gcloud uses `default`.
        std::fs::remove_file(dir.path().join("active_config")).unwrap();
        assert_eq!(
            read_gcloud_config(dir.path()),
            Some((Some("not-this-one".into()), None))
        );
    }

    #[test]
    fn prefect_profiles() {
        let text = r#"
active = "cloud"

[profiles.ephemeral]
PREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"

[profiles.cloud]
PREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a/workspaces/w"
PREFECT_API_KEY = "pnu_secret"
"#;
        assert_eq!(
            profile_api_url(text, None).as_deref(),
            Some("https://api.prefect.cloud/api/accounts/a/workspaces/w")
        );
        assert_eq!(profile_api_url(text, Some("ephemeral")), None);
        assert_eq!(profile_api_url(text, Some("missing")), None);
        assert_eq!(profile_api_url("not = [toml", None), None);
    }

    #[test]
    fn prefect_yaml_first_deployment() {
        let text = r#"
name: weather
prefect-version: 3.9.1
deployments:
- name: gcp-weather-deploy
  entrypoint: flows/weather_flow.py:fetch_weather
  parameters:
    lat: 14.5994
    lon: 28.6731
  work_pool:
    name: my-cloud-run-pool
    job_variables:
      image: gcr.io/prefect-project/gcp-weather-image:latest
- name: second
  entrypoint: b.py:b
"#;
        let d = parse_prefect_yaml(text).unwrap();
        assert_eq!(d.name.as_deref(), Some("gcp-weather-deploy"));
        assert_eq!(
            d.entrypoint.as_deref(),
            Some("flows/weather_flow.py:fetch_weather")
        );
        assert_eq!(
            d.image.as_deref(),
            Some("gcr.io/prefect-project/gcp-weather-image:latest")
        );
        assert_eq!(d.pool.as_deref(), Some("my-cloud-run-pool"));
        assert_eq!(
            Value::Object(d.parameters.unwrap()),
            serde_json::json!({"lat": 14.5994, "lon": 28.6731})
        );
        assert_eq!(parse_prefect_yaml("deployments: []"), None);
        let templated = "deployments:\n- name: d\n  work_pool:\n    job_variables:\n      image: '{{ build-image.image }}'\n";
        let d = parse_prefect_yaml(templated).unwrap();
        assert_eq!((d.name.as_deref(), d.image), (Some("d"), None));
        assert_eq!(parse_prefect_yaml(": : :"), None);
    }

    #[test]
    fn missing_files_give_no_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Locations {
            gcloud_dir: Some(dir.path().join("nope")),
            prefect_home: Some(dir.path().join("nope")),
            prefect_api_url_env: None,
            prefect_profile_env: None,
            project_dir: dir.path().to_owned(),
        };
        assert_eq!(read_defaults(&loc), MachineDefaults::default());
    }
}
