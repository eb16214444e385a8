//! The Prefect half of doctor: the API answers, the key is accepted, the block type and the
//! work pool type's default template are there.

use std::time::Duration;

use bootstrap_prefect::{PrefectClient, PrefectError, RetryPolicy};
use bootstrap_spec::Spec;

use super::{Check, within};

/// The block type the credentials block is made of.
const BLOCK_TYPE: &str = "gcp-credentials";

/// A client for the configured API, or why there is none (a settings problem, no network).
pub(super) fn setup(spec: &Spec) -> Result<PrefectClient, String> {
    let config =
        crate::Connections::resolve_prefect(Some(spec)).map_err(|e| e.root_cause().to_string())?;
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
        deadline: Duration::from_secs(5),
        jitter: bootstrap_prefect::Jitter::Equal,
    };
    Ok(PrefectClient::new(config)
        .map_err(|e| e.to_string())?
        .with_retry(retry))
}

/// `[prefect_api, prefect_auth, block_type, job_template]`.
pub(super) async fn run(
    spec: &Spec,
    client: Result<PrefectClient, String>,
    deadline: Duration,
) -> [Check; 4] {
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            let hint = Some(
                "set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) or `prefect.api_url` \
                 in the plan, or select a profile with `prefect profile use`"
                    .to_string(),
            );
            return not_reachable(Check::fail("prefect_api", e, hint));
        }
    };
    let api = within("prefect_api", deadline, health(&client)).await;
    if !api.ok {
        return not_reachable(api);
    }
    let (auth, block, template) = tokio::join!(
        within("prefect_auth", deadline, auth(&client, spec)),
        within("block_type", deadline, block_type(&client)),
        within("job_template", deadline, job_template(&client, spec)),
    );
    [api, auth, block, template]
}

fn not_reachable(api: Check) -> [Check; 4] {
    let why = "the Prefect API is not reachable";
    [
        api,
        Check::not_checked("prefect_auth", why),
        Check::not_checked("block_type", why),
        Check::not_checked("job_template", why),
    ]
}

async fn health(client: &PrefectClient) -> Check {
    let config = client.config();
    let url = config.api_url.as_str();
    match client.health().await {
        Ok(()) => Check::pass(
            "prefect_api",
            format!("{url} is healthy (URL from {})", config.url_source),
        ),
        Err(e) => Check::fail(
            "prefect_api",
            e.to_string(),
            Some(format!(
                "start the server (`prefect server start`) or fix the API URL (from {})",
                config.url_source
            )),
        ),
    }
}

/// An authenticated read: a refused key shows here even when `/health` is public.
async fn auth(client: &PrefectClient, spec: &Spec) -> Check {
    let config = client.config();
    let sent = if config.api_key.is_some() {
        "the API key"
    } else if config.auth_string.is_some() {
        "the basic-auth string"
    } else {
        "no credentials"
    };
    let cloud = config.cloud_workspace().is_some();
    if cloud && config.api_key.is_none() {
        return Check::fail(
            "prefect_auth",
            "no API key for Prefect Cloud",
            Some("run `prefect cloud login`, or export PREFECT_API_KEY".into()),
        );
    }
    match client.work_pool(spec.work_pool.name.as_str()).await {
        Ok(_) if sent == "no credentials" => Check::pass(
            "prefect_auth",
            "no key configured; the server answers without one",
        ),
        Ok(_) => Check::pass("prefect_auth", format!("{sent} is accepted")),
        Err(e @ (PrefectError::Unauthorized { .. } | PrefectError::Forbidden { .. })) => {
            let hint = if cloud {
                "create a new key (`prefect cloud login`) and export PREFECT_API_KEY"
            } else {
                "set PREFECT_API_AUTH_STRING (user:password) as the server expects"
            };
            Check::fail(
                "prefect_auth",
                format!("{sent} sent; {e}"),
                Some(hint.into()),
            )
        }
        Err(e) => Check::fail("prefect_auth", e.to_string(), None),
    }
}

async fn block_type(client: &PrefectClient) -> Check {
    match client.block_type_by_slug(BLOCK_TYPE).await {
        Ok(Some(_)) => Check::pass("block_type", format!("`{BLOCK_TYPE}` is registered")),
        Ok(None) => Check::fail(
            "block_type",
            format!("the server has no `{BLOCK_TYPE}` block type"),
            Some(
                "register it: pip install prefect-gcp && prefect block register -m prefect_gcp"
                    .into(),
            ),
        ),
        Err(e) => Check::fail("block_type", e.to_string(), None),
    }
}

async fn job_template(client: &PrefectClient, spec: &Spec) -> Check {
    let pool_type = spec.work_pool.pool_type.as_str();
    match client.default_base_job_template(pool_type).await {
        Ok(Some(_)) => Check::pass(
            "job_template",
            format!("the default base job template for `{pool_type}` is available"),
        ),
        // The plan brings its own template: the server's default is not needed.
        Ok(None) if spec.work_pool.base_job_template.is_some() => Check::pass(
            "job_template",
            format!("the server offers no `{pool_type}` template; the plan gives its own"),
        ),
        Ok(None) => Check::fail(
            "job_template",
            format!("the server offers no default base job template for `{pool_type}`"),
            Some(
                "upgrade the Prefect server, or give `work_pool.base_job_template` in the plan"
                    .into(),
            ),
        ),
        Err(e) => Check::fail("job_template", e.to_string(), None),
    }
}
