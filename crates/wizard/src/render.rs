//! Renders answers as a plan file: the key order of `plans/guide.yaml`, and a comment on each
//! section saying which step of Prefect's Cloud Run worker guide it stands for.
//!
//! Written by hand rather than through a serializer so that the comments and the order stay,
//! and so that the file reads like one a person wrote.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::answers::{Answers, key_str, runtime_str};

/// The guide's roles for the service account (step 1).
pub const GUIDE_ROLES: [&str; 2] = ["roles/iam.serviceAccountUser", "roles/run.admin"];

/// The plan file text for `answers`.
pub fn render_plan(a: &Answers) -> String {
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line("# bootstrap plan file, written by `bootstrap init`.");
    line("# Prefect's \"Google Cloud Run Worker Guide\" as code: `bootstrap validate` checks it,");
    line("# `bootstrap plan` shows what would change, `bootstrap apply` makes it so.");
    line("version: 1");
    line("");
    line("# Before you start: the GCP project and region everything lives in. The APIs the plan");
    line("# needs (IAM, Cloud Run, ...) are enabled for you; list them under `apis:` to choose.");
    line("gcp:");
    line(&format!("  project: {}", scalar(a.project.as_str())));
    line(&format!("  region: {}", scalar(a.region.as_str())));
    line("");
    line("# Step 1: the service account the worker and its flow runs use, and its roles.");
    line("service_account:");
    let sa = scalar(a.service_account.as_str());
    line(&format!("  name: {sa}"));
    line(&format!("  display_name: {sa}"));
    line("  description: service account to use for the prefect worker");
    line(&format!("  roles: [{}]", GUIDE_ROLES.join(", ")));
    line(&format!(
        "  key: {}  # json: a key kept in the credentials block (as the guide) | none: keyless",
        key_str(a.key)
    ));
    line("");
    line("# The Prefect API. Secrets are never written here: the API key is read from the");
    line("# PREFECT_API_KEY environment variable when the plan is loaded.");
    line("prefect:");
    line(&format!("  api_url: {}", scalar(&a.api_url)));
    if a.api_key {
        line(&format!(
            "  api_key: {}",
            scalar("{{ env.PREFECT_API_KEY }}")
        ));
    }
    line("");
    line("# Step 2: the GcpCredentials block the work pool's jobs authenticate with.");
    line("credentials_block:");
    line("  name: gcp-credentials");
    line("");
    line("# Step 2: the Cloud Run work pool (region, credentials and service account flow into");
    line("# its base job template from the sections above).");
    line("work_pool:");
    line(&format!("  name: {}", scalar(a.pool.as_str())));
    line(&format!(
        "  type: {}  # cloud-run (Run v1 API, as the guide) | cloud-run-v2",
        a.pool_type.as_str()
    ));
    line("  job_variables: {}");
    line("");
    line("# Step 3: the worker, an always-on Cloud Run service polling the work pool.");
    line("worker:");
    line("  service: prefect-worker");
    match &a.worker_image {
        Some(image) => line(&format!("  image: {}", scalar(image.as_str()))),
        None => line("  # image: left out, so apply builds it from this bootstrap binary"),
    }
    line(&format!(
        "  runtime: {}  # python: prefect worker start (as the guide) | embedded: bootstrap worker",
        runtime_str(a.worker_runtime)
    ));
    line(&format!("  min_instances: {}", a.min_instances));
    line("  cpu_throttling: false");
    line("  allow_unauthenticated: false");
    line("");
    match &a.deployment {
        None => {
            line("# Step 4: deployments of your flows (none yet).");
            line("deployments: []");
        }
        Some(d) => {
            line(
                "# Step 4: a deployment of your flow, run on the work pool (step 5: `bootstrap run`).",
            );
            line("deployments:");
            line(&format!("  - name: {}", scalar(d.name.as_str())));
            line(&format!("    flow: {}", scalar(d.flow.as_str())));
            line(&format!("    entrypoint: {}", scalar(&d.entrypoint)));
            if let Some(image) = &d.image {
                line(&format!("    image: {}", scalar(image.as_str())));
            }
            line(&format!("    parameters: {}", flow_map(&d.parameters)));
            line("    work_queue: default");
        }
    }
    out
}

/// A YAML scalar for `s`: plain when that cannot be misread, else double-quoted.
///
/// Plain scalars are limited to a safe alphabet starting with a letter, excluding words YAML
/// reads as booleans or null. Anything else is written as a JSON string, which is also a valid
/// YAML double-quoted scalar.
pub fn scalar(s: &str) -> String {
    const SPECIAL: &[&str] = &["true", "false", "yes", "no", "on", "off", "null", "y", "n"];
    let safe = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/:@-".contains(c))
        && !s.ends_with(':')
        && !SPECIAL.contains(&s.to_ascii_lowercase().as_str());
    if safe { s.to_owned() } else { json_string(s) }
}

fn json_string(s: &str) -> String {
    // Serializing a &str to JSON cannot fail; fall back to an empty string literal regardless.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A flow-style YAML mapping (`{lat: 14.5994, lon: 28.6731}`) with JSON values, which YAML reads
/// the same way.
fn flow_map(map: &Map<String, Value>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}: {}", scalar(k), v);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::DeploymentAnswers;
    use bootstrap_spec::ids::*;
    use bootstrap_spec::{KeyMode, PoolType, WorkerRuntime};

    fn guide_answers() -> Answers {
        Answers {
            project: ProjectId::parse("prefect-project").unwrap(),
            region: Region::parse("us-central1").unwrap(),
            service_account: AccountId::parse("prefect-service-account").unwrap(),
            key: KeyMode::Json,
            pool: PrefectName::parse("my-cloud-run-pool").unwrap(),
            pool_type: PoolType::CloudRun,
            worker_image: Some(ImageRef::parse("prefecthq/prefect:3-latest").unwrap()),
            worker_runtime: WorkerRuntime::Python,
            min_instances: 1,
            api_url: "https://api.prefect.cloud/api/accounts/a/workspaces/w".into(),
            api_key: true,
            deployment: Some(DeploymentAnswers {
                flow: PrefectName::parse("fetch-weather").unwrap(),
                name: PrefectName::parse("gcp-weather-deploy").unwrap(),
                entrypoint: "flows/weather_flow.py:fetch_weather".into(),
                image: Some(
                    ImageRef::parse("gcr.io/prefect-project/gcp-weather-image:latest").unwrap(),
                ),
                parameters: serde_json::from_str(r#"{"lat": 14.5994, "lon": 28.6731}"#).unwrap(),
            }),
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(scalar("prefect-project"), "prefect-project");
        assert_eq!(
            scalar("http://127.0.0.1:4200/api"),
            "http://127.0.0.1:4200/api"
        );
        assert_eq!(
            scalar("{{ env.PREFECT_API_KEY }}"),
            "\"{{ env.PREFECT_API_KEY }}\""
        );
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("123"), "\"123\"");
        assert_eq!(scalar("my pool: #1"), "\"my pool: #1\"");
        assert_eq!(scalar("quote\"d"), "\"quote\\\"d\"");
    }

    #[test]
    fn guide_plan_snapshot() {
        insta::assert_snapshot!(render_plan(&guide_answers()));
    }

    /// What init writes is accepted by the plan loader, in each mode it can write.
    #[test]
    fn rendered_plans_validate() {
        let path = std::path::Path::new("bootstrap.yaml");
        let mut a = guide_answers();
        crate::validate_plan(&render_plan(&a), path).unwrap();
        a.key = KeyMode::None;
        a.pool_type = PoolType::CloudRunV2;
        a.worker_runtime = WorkerRuntime::Embedded;
        // As init asks it with the embedded runtime: no image, so apply builds it.
        a.worker_image = None;
        a.min_instances = 0;
        a.api_key = false;
        a.api_url = "http://127.0.0.1:4200/api".into();
        crate::validate_plan(&render_plan(&a), path).unwrap();
        a.deployment = None;
        crate::validate_plan(&render_plan(&a), path).unwrap();
    }

    /// The rendered text is YAML that reads back to the answers, including awkward names.
    #[test]
    fn rendered_yaml_round_trips() {
        let mut a = guide_answers();
        a.pool = PrefectName::parse("pool: yes # not a comment").unwrap();
        a.api_url = "{{ env.PREFECT_API_URL }}".into();
        if let Some(d) = a.deployment.as_mut() {
            d.name = PrefectName::parse("true").unwrap();
            d.parameters =
                serde_json::from_str(r##"{"a b": "c: d", "n": null, "l": [1, {"x": "#"}]}"##)
                    .unwrap();
        }
        let text = render_plan(&a);
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(doc["work_pool"]["name"], "pool: yes # not a comment");
        assert_eq!(doc["prefect"]["api_url"], "{{ env.PREFECT_API_URL }}");
        assert_eq!(doc["prefect"]["api_key"], "{{ env.PREFECT_API_KEY }}");
        assert_eq!(doc["deployments"][0]["name"], "true");
        assert_eq!(
            doc["deployments"][0]["parameters"],
            serde_json::json!({"a b": "c: d", "n": null, "l": [1, {"x": "#"}]})
        );
        assert_eq!(doc["worker"]["min_instances"], 1);
        assert_eq!(doc["service_account"]["key"], "json");
        // The sections in the plan file's order; deployments written inline.
        let keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let sections: Vec<&str> = bootstrap_spec::TOP_KEYS
            .iter()
            .copied()
            .filter(|k| *k != "deployments_from")
            .collect();
        assert_eq!(keys, sections);
    }

    #[test]
    fn no_api_key_and_no_deployment() {
        let mut a = guide_answers();
        a.api_key = false;
        a.api_url = "http://127.0.0.1:4200/api".into();
        a.deployment = None;
        let text = render_plan(&a);
        assert!(!text.contains("api_key"));
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(doc["deployments"], serde_json::json!([]));
    }
}
