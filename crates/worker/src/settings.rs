//! The worker's Prefect settings that every job inherits.
//!
//! Prefect's base worker starts each job's environment with every Prefect setting the worker
//! has explicitly set (`BaseJobConfiguration._base_environment`, prefect 3.9.1
//! `prefect/workers/base.py`: `get_current_settings().to_environment_variables(exclude_unset=True)`),
//! so logging levels, TLS, client retries, result storage and the like reach the flow. This
//! worker has no Prefect settings model; a setting is "set" when its variable is in the
//! worker's environment, and only the names of Prefect's settings model count (generated from
//! prefect 3.9.1 by `tests/fixtures/worker/gen_prefect_settings.py`; a stray `PREFECT_FOO` is not
//! a setting and is not forwarded, as in Prefect). The API URL, key and auth string come from
//! the worker's Prefect client instead (they may come from flags or a profile, not the env).
//!
//! Known difference: Prefect prints values in its own spelling (`True` for a boolean, a
//! normalised path); here they pass as written, which the flow's Prefect reads the same way.

use secrecy::SecretString;

/// Every Prefect setting's environment variable, in the order of Prefect's settings model.
const SETTINGS: &str = include_str!("prefect_settings.txt");

/// The names of Prefect 3.9.1's settings, in model order.
pub fn setting_names() -> impl Iterator<Item = &'static str> {
    SETTINGS.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// The worker's Prefect connection, which wins over the environment.
#[derive(Default)]
pub struct ApiSettings {
    /// `PREFECT_API_URL`.
    pub url: Option<SecretString>,
    /// `PREFECT_API_KEY`.
    pub key: Option<SecretString>,
    /// `PREFECT_API_AUTH_STRING`.
    pub auth_string: Option<SecretString>,
}

/// The settings to hand to every job, in Prefect's order: each Prefect setting present in
/// `env` (the worker's environment), with the API connection taken from `api`.
pub fn forwarded(
    env: impl IntoIterator<Item = (String, String)>,
    api: ApiSettings,
) -> Vec<(String, SecretString)> {
    let env: std::collections::HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PREFECT_"))
        .collect();
    let mut out = Vec::new();
    for name in setting_names() {
        let from_api = match name {
            "PREFECT_API_URL" => api.url.clone(),
            "PREFECT_API_KEY" => api.key.clone(),
            "PREFECT_API_AUTH_STRING" => api.auth_string.clone(),
            _ => None,
        };
        match from_api {
            Some(v) => out.push((name.to_string(), v)),
            None => {
                if let Some(v) = env.get(name) {
                    out.push((name.to_string(), SecretString::from(v.clone())));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn only_settings_are_forwarded_in_prefect_order_with_the_client_connection() {
        let env = [
            ("PREFECT_LOGGING_LEVEL", "DEBUG"),
            ("PREFECT_NOT_A_SETTING", "x"),
            ("PREFECT__FLOW_RUN_ID", "internal"),
            ("HOME", "/root"),
            ("PREFECT_API_URL", "http://from-env/api"),
            ("PREFECT_HOME", "/tmp/h"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let api = ApiSettings {
            url: Some("http://client/api".into()),
            key: Some("k".into()),
            auth_string: None,
        };
        let got: Vec<(String, String)> = forwarded(env, api)
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_string()))
            .collect();
        let want = [
            ("PREFECT_HOME", "/tmp/h"),
            ("PREFECT_API_URL", "http://client/api"),
            ("PREFECT_API_KEY", "k"),
            ("PREFECT_LOGGING_LEVEL", "DEBUG"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want);
    }
}
