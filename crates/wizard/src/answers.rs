//! The answers the wizard collects, each already checked, and the checks for the answers that
//! have no typed identity in `bootstrap-spec` (entrypoint, parameters, API URL, counts).

use bootstrap_spec::checks::{Field, check_field, hint};
use bootstrap_spec::ids::{AccountId, ImageRef, PrefectName, ProjectId, Region};
use bootstrap_spec::{KeyMode, PoolType, WorkerRuntime};
use serde_json::{Map, Value};

/// Everything the plan file is written from.
#[derive(Debug, Clone)]
pub struct Answers {
    pub project: ProjectId,
    pub region: Region,
    pub service_account: AccountId,
    pub key: KeyMode,
    pub pool: PrefectName,
    pub pool_type: PoolType,
    /// `None` with the embedded runtime: apply builds the image from the running binary.
    pub worker_image: Option<ImageRef>,
    pub worker_runtime: WorkerRuntime,
    pub min_instances: u32,
    /// A URL, or a template such as `{{ env.PREFECT_API_URL }}`.
    pub api_url: String,
    /// Whether the plan references `{{ env.PREFECT_API_KEY }}`.
    pub api_key: bool,
    pub deployment: Option<DeploymentAnswers>,
}

/// The optional first deployment.
#[derive(Debug, Clone)]
pub struct DeploymentAnswers {
    pub flow: PrefectName,
    pub name: PrefectName,
    /// `path/to/file.py:function`, checked by [`parse_entrypoint`].
    pub entrypoint: String,
    /// `None`: the work pool's default image.
    pub image: Option<ImageRef>,
    pub parameters: Map<String, Value>,
}

/// The guide's defaults, used when neither a flag nor the machine gives one.
pub mod guide {
    pub const REGION: &str = "us-central1";
    pub const SERVICE_ACCOUNT: &str = "prefect-service-account";
    pub const POOL: &str = "my-cloud-run-pool";
    pub const WORKER_IMAGE: &str = "prefecthq/prefect:3-latest";
    pub const MIN_INSTANCES: u32 = 1;
    pub const PREFECT_CLOUD_HOST: &str = "api.prefect.cloud";
}

/// `key`: `json` or `none`.
pub fn parse_key(s: &str) -> Result<KeyMode, String> {
    match s.trim() {
        "json" => Ok(KeyMode::Json),
        "none" => Ok(KeyMode::None),
        _ => Err(
            "the key mode is `json` (a key in the credentials block) or `none` (keyless)".into(),
        ),
    }
}

/// The plan file's spelling of a key mode.
pub fn key_str(k: KeyMode) -> &'static str {
    match k {
        KeyMode::Json => "json",
        KeyMode::None => "none",
    }
}

/// `cloud-run` or `cloud-run-v2`.
pub fn parse_pool_type(s: &str) -> Result<PoolType, String> {
    match s.trim() {
        "cloud-run" => Ok(PoolType::CloudRun),
        "cloud-run-v2" => Ok(PoolType::CloudRunV2),
        _ => Err("the work pool type is `cloud-run` or `cloud-run-v2`".into()),
    }
}

/// `python` or `embedded`.
pub fn parse_runtime(s: &str) -> Result<WorkerRuntime, String> {
    match s.trim() {
        "python" => Ok(WorkerRuntime::Python),
        "embedded" => Ok(WorkerRuntime::Embedded),
        _ => Err("the worker runtime is `python` (prefect worker start) or `embedded` (bootstrap worker)".into()),
    }
}

/// The plan file's spelling of a runtime.
pub fn runtime_str(r: WorkerRuntime) -> &'static str {
    match r {
        WorkerRuntime::Python => "python",
        WorkerRuntime::Embedded => "embedded",
    }
}

/// Cloud Run's `minInstanceCount`; Cloud Run allows up to 1000 per revision.
pub fn parse_min_instances(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= 1000 => Ok(n),
        _ => Err(
            "the minimum number of instances is a whole number from 0 to 1000 (the guide uses 1)"
                .into(),
        ),
    }
}

/// An `http(s)://host...` URL (the plan file's rule), or a `{{ ... }}` template resolved when
/// the plan is loaded.
pub fn parse_api_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.starts_with("{{") && s.ends_with("}}") {
        return Ok(s.to_owned());
    }
    checked(Field::ApiUrl, s)
}

/// Whether `url` is a Prefect Cloud URL (which always needs an API key).
pub fn is_prefect_cloud(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    host == guide::PREFECT_CLOUD_HOST || host.ends_with(".prefect.cloud")
}

/// `path/to/file.py:function` (the plan file's rule).
pub fn parse_entrypoint(s: &str) -> Result<String, String> {
    checked(Field::Entrypoint, s.trim())
}

/// Checks `s` with the plan file's rule for `field`, adding its "did you mean" hint.
pub fn checked(field: Field, s: &str) -> Result<String, String> {
    match check_field(field, s) {
        Ok(()) => Ok(s.to_owned()),
        Err(reason) => Err(match hint(field, s) {
            Some(h) => format!("{reason}; {h}"),
            None => reason,
        }),
    }
}

/// A typed identity checked with the plan file's rule for `field` (hint included).
pub fn typed<T>(
    field: Field,
    s: &str,
    parse: impl Fn(String) -> Result<T, String>,
) -> Result<T, String> {
    parse(checked(field, s.trim())?)
}

/// The flow's name for `entrypoint`: `@flow(name=...)` in the source under `project_dir` when
/// it says so, else Prefect's default (the function name with `_` as `-`).
pub fn flow_name_from_entrypoint(
    project_dir: &std::path::Path,
    entrypoint: &str,
) -> Option<String> {
    bootstrap_spec::prefect_yaml::flow_name(project_dir, entrypoint).map(String::from)
}

/// Deployment parameters: a JSON object (an empty answer means none).
pub fn parse_params(s: &str) -> Result<Map<String, Value>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => {
            Err(r#"parameters are a JSON object, e.g. {"lat": 14.5994, "lon": 28.6731}"#.into())
        }
        Err(e) => Err(format!(
            r#"parameters are a JSON object, e.g. {{"lat": 14.5994}} (column {}: {})"#,
            e.column(),
            short_json_error(&e)
        )),
    }
}

fn short_json_error(e: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the column is already shown.
    let text = e.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints() {
        // The plan file's rule (its cases are in bootstrap_spec::checks), on the trimmed answer.
        assert_eq!(
            parse_entrypoint(" flows/weather_flow.py:fetch_weather ").as_deref(),
            Ok("flows/weather_flow.py:fetch_weather")
        );
        for bad in ["flows/weather_flow.py", "a.py:f-g"] {
            let rule = bootstrap_spec::checks::check_entrypoint(bad).unwrap_err();
            assert!(
                parse_entrypoint(bad).unwrap_err().starts_with(&rule),
                "{bad}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            flow_name_from_entrypoint(dir.path(), "flows/weather_flow.py:fetch_weather").as_deref(),
            Some("fetch-weather")
        );
        std::fs::write(
            dir.path().join("f.py"),
            "@flow(name=\"Named Flow\")\ndef f():\n    pass\n",
        )
        .unwrap();
        assert_eq!(
            flow_name_from_entrypoint(dir.path(), "f.py:f").as_deref(),
            Some("Named Flow")
        );
    }

    #[test]
    fn api_urls() {
        assert!(parse_api_url("http://127.0.0.1:4200/api").is_ok());
        assert!(parse_api_url("{{ env.PREFECT_API_URL }}").is_ok());
        assert!(parse_api_url("127.0.0.1:4200").is_err());
        assert!(parse_api_url("ftp://host/api").is_err());
        assert!(is_prefect_cloud(
            "https://api.prefect.cloud/api/accounts/a/workspaces/w"
        ));
        assert!(!is_prefect_cloud("http://127.0.0.1:4200/api"));
        assert!(!is_prefect_cloud(
            "https://api.prefect.cloud.evil.example/api"
        ));
    }

    #[test]
    fn params_and_counts() {
        assert_eq!(parse_params("").unwrap(), Map::new());
        assert_eq!(parse_params(r#"{"lat": 1.5}"#).unwrap()["lat"], 1.5);
        assert!(parse_params("[1]").is_err());
        let err = parse_params("{lat: 1}").unwrap_err();
        assert!(err.contains("column 2"), "{err}");
        assert_eq!(parse_min_instances("0"), Ok(0));
        assert!(parse_min_instances("-1").is_err());
        assert!(parse_min_instances("1001").is_err());
        let err = typed(
            Field::Region,
            "us-centrall",
            bootstrap_spec::ids::Region::parse,
        )
        .unwrap_err();
        assert!(err.contains("did you mean `us-central1`"), "{err}");
        assert_eq!(parse_key("none"), Ok(KeyMode::None));
        assert_eq!(parse_pool_type("cloud-run-v2"), Ok(PoolType::CloudRunV2));
        assert_eq!(parse_runtime("embedded"), Ok(WorkerRuntime::Embedded));
    }
}
