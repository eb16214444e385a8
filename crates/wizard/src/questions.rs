//! The questions, in the order of the guide, each with its flag and its default.

use std::path::Path;

use bootstrap_spec::WorkerRuntime;
use bootstrap_spec::checks::Field;
use bootstrap_spec::ids::{AccountId, ImageRef, PrefectName, ProjectId, Region};

use crate::answers::{self, Answers, DeploymentAnswers, guide};
use crate::ask::{Asker, Choice};
use crate::machine::MachineDefaults;
use crate::{Flags, WizardError};

/// Asks every question (or takes it from its flag or default).
pub fn collect(
    asker: &Asker,
    flags: &Flags,
    defaults: &MachineDefaults,
    project_dir: &Path,
) -> Result<Answers, WizardError> {
    let project = asker.text(
        "GCP project id",
        "--project",
        flags.project.as_deref(),
        defaults.gcp_project.clone(),
        |s| answers::typed(Field::ProjectId, s, ProjectId::parse),
    )?;
    let region = asker.text(
        "Region for Cloud Run",
        "--region",
        flags.region.as_deref(),
        Some(
            defaults
                .gcp_region
                .clone()
                .unwrap_or_else(|| guide::REGION.to_owned()),
        ),
        |s| answers::typed(Field::Region, s, Region::parse),
    )?;
    let service_account = asker.text(
        "Service account name (the part before @)",
        "--service-account",
        flags.service_account.as_deref(),
        Some(guide::SERVICE_ACCOUNT.to_owned()),
        |s| answers::typed(Field::AccountId, s, AccountId::parse),
    )?;
    let key = asker.choose(
        "Service account key",
        "--key",
        flags.key.as_deref(),
        &[
            Choice {
                label: "json: create a key and keep it in the Prefect credentials block (as the guide)",
                value: "json",
            },
            Choice {
                label: "none: keyless; jobs use the identity attached to Cloud Run (needed where key creation is forbidden)",
                value: "none",
            },
        ],
        0,
        answers::parse_key,
    )?;
    let pool = asker.text(
        "Work pool name",
        "--pool",
        flags.pool.as_deref(),
        Some(
            defaults
                .deployment
                .as_ref()
                .and_then(|d| d.pool.clone())
                .unwrap_or_else(|| guide::POOL.to_owned()),
        ),
        |s| answers::typed(Field::PrefectName, s, PrefectName::parse),
    )?;
    let pool_type = asker.choose(
        "Work pool type",
        "--pool-type",
        flags.pool_type.as_deref(),
        &[
            Choice {
                label: "cloud-run: jobs through the Cloud Run v1 API (as the guide)",
                value: "cloud-run",
            },
            Choice {
                label: "cloud-run-v2: jobs through the Cloud Run v2 API",
                value: "cloud-run-v2",
            },
        ],
        0,
        answers::parse_pool_type,
    )?;
    let worker_runtime = asker.choose(
        "Worker runtime",
        "--worker-runtime",
        flags.worker_runtime.as_deref(),
        &[
            Choice {
                label: "python: prefect worker start (as the guide)",
                value: "python",
            },
            Choice {
                label: "embedded: bootstrap worker (small, starts fast)",
                value: "embedded",
            },
        ],
        0,
        answers::parse_runtime,
    )?;
    // Prefect's image runs the guide's Python worker; the embedded worker's image is built from
    // this binary by apply unless one is named (Prefect's image has no `bootstrap` in it).
    let worker_image = match worker_runtime {
        WorkerRuntime::Python => Some(asker.text(
            "Worker image",
            "--worker-image",
            flags.worker_image.as_deref(),
            Some(guide::WORKER_IMAGE.to_owned()),
            |s| answers::typed(Field::Image, s, ImageRef::parse),
        )?),
        WorkerRuntime::Embedded => asker.optional_text(
            "Worker image (none: apply builds it from this bootstrap binary)",
            "--worker-image",
            flags.worker_image.as_deref(),
            None,
            |s| answers::typed(Field::Image, s, ImageRef::parse),
        )?,
    };
    let min_instances = asker.text(
        "Minimum worker instances",
        "--min-instances",
        flags.min_instances.as_deref(),
        Some(guide::MIN_INSTANCES.to_string()),
        answers::parse_min_instances,
    )?;
    let api_url = asker.text(
        "Prefect API URL (Prefect Cloud: https://api.prefect.cloud/api/accounts/.../workspaces/...)",
        "--prefect-api-url",
        flags.prefect_api_url.as_deref(),
        defaults.prefect_api_url.clone(),
        answers::parse_api_url,
    )?;
    let api_key = flags.api_key
        || answers::is_prefect_cloud(&api_url)
        || asker.confirm(
            "Does this Prefect server need an API key? (it is read from PREFECT_API_KEY, never stored)",
            false,
        )?;
    let deployment = deployment(asker, flags, defaults, project_dir)?;
    Ok(Answers {
        project,
        region,
        service_account,
        key,
        pool,
        pool_type,
        worker_image,
        worker_runtime,
        min_instances,
        api_url,
        api_key,
        deployment,
    })
}

fn deployment(
    asker: &Asker,
    flags: &Flags,
    defaults: &MachineDefaults,
    project_dir: &Path,
) -> Result<Option<DeploymentAnswers>, WizardError> {
    if flags.no_deployment {
        return Ok(None);
    }
    let from_yaml = defaults.deployment.clone().unwrap_or_default();
    let any_flag = flags.deployment_flow.is_some()
        || flags.deployment_name.is_some()
        || flags.entrypoint.is_some()
        || flags.image.is_some()
        || flags.params.is_some();
    let wanted = any_flag
        || asker.confirm(
            "Add a first deployment of a flow?",
            defaults.deployment.is_some(),
        )?;
    if !wanted {
        return Ok(None);
    }
    let entrypoint = asker.text(
        "Flow entrypoint (path/to/file.py:function)",
        "--entrypoint",
        flags.entrypoint.as_deref(),
        from_yaml.entrypoint.clone(),
        answers::parse_entrypoint,
    )?;
    let flow = asker.text(
        "Flow name",
        "--deployment-flow",
        flags.deployment_flow.as_deref(),
        answers::flow_name_from_entrypoint(project_dir, &entrypoint),
        |s| answers::typed(Field::PrefectName, s, PrefectName::parse),
    )?;
    let name = asker.text(
        "Deployment name",
        "--deployment-name",
        flags.deployment_name.as_deref(),
        from_yaml.name.clone(),
        |s| answers::typed(Field::PrefectName, s, PrefectName::parse),
    )?;
    let image = asker.optional_text(
        "Flow image",
        "--image",
        flags.image.as_deref(),
        from_yaml.image.clone(),
        |s| answers::typed(Field::Image, s, ImageRef::parse),
    )?;
    let params_default = from_yaml
        .parameters
        .as_ref()
        .map(|p| serde_json::Value::Object(p.clone()).to_string())
        .unwrap_or_else(|| "{}".to_owned());
    let parameters = asker.text(
        "Parameters (a JSON object)",
        "--params",
        flags.params.as_deref(),
        Some(params_default),
        answers::parse_params,
    )?;
    Ok(Some(DeploymentAnswers {
        flow,
        name,
        entrypoint,
        image,
        parameters,
    }))
}
