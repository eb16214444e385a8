//! Observing what GCP and Prefect hold now: every read in parallel, reduced to [`Observed`].
//! A disabled API has nothing to read: its resources read as absent (the plan enables it).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use bootstrap_gcp::policy::Policy;
use bootstrap_gcp::{GcpError, iam, resourcemanager, run_v2, secretmanager, serviceusage};
use bootstrap_prefect::PrefectClient;
use bootstrap_spec::{Spec, ids::*};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use super::context::Context;
use super::observed::{self, Observed};
use super::planner::prefect::deployment_key;

/// Reads everything the planner compares, concurrently.
pub async fn observe(ctx: &Context, spec: &Spec) -> Result<Observed> {
    let project = &spec.gcp.project;
    let (apis, gcp_sa, bindings, secret, service, prefect) = tokio::try_join!(
        apis(ctx, spec),
        service_account(ctx, spec),
        project_bindings(ctx, project),
        secret(ctx, spec),
        service(ctx, spec),
        prefect_side(&ctx.prefect, spec),
    )?;
    let (service_account, keys, sa_bindings) = gcp_sa;
    let (block, work_pool, default_template, deployments) = prefect;
    Ok(Observed {
        apis,
        service_account,
        project_bindings: bindings,
        sa_bindings,
        keys,
        block,
        secret,
        service,
        work_pool,
        default_template,
        deployments,
    })
}

/// `None` for "the API is disabled": nothing of it can exist that we could read.
fn disabled_is_absent<T>(r: Result<Option<T>, GcpError>) -> Result<Option<T>, GcpError> {
    match r {
        Err(GcpError::ServiceDisabled { .. }) => Ok(None),
        other => other,
    }
}

async fn apis(ctx: &Context, spec: &Spec) -> Result<BTreeMap<String, bool>> {
    let wanted = super::planner::gcp::required_apis(spec, ctx.api_key().is_some());
    let checks = wanted.iter().map(|api| async move {
        let enabled = serviceusage::is_enabled(&ctx.gcp, &spec.gcp.project, api)
            .await
            .with_context(|| {
                format!(
                    "reading whether {api} is enabled in project {}",
                    spec.gcp.project
                )
            })?;
        Ok::<_, anyhow::Error>((api.to_string(), enabled))
    });
    Ok(futures::future::try_join_all(checks)
        .await?
        .into_iter()
        .collect())
}

type SaState = (
    Option<observed::ServiceAccount>,
    Vec<observed::Key>,
    BTreeMap<String, BTreeSet<String>>,
);

async fn service_account(ctx: &Context, spec: &Spec) -> Result<SaState> {
    let project = &spec.gcp.project;
    let email = &spec.service_account.email;
    let sa = disabled_is_absent(iam::get_service_account(&ctx.gcp, project, email).await)
        .with_context(|| format!("reading service account {email}"))?;
    let Some(sa) = sa else {
        return Ok((None, Vec::new(), BTreeMap::new()));
    };
    let (keys, policy) = tokio::try_join!(
        async {
            iam::list_keys(&ctx.gcp, project, email, true)
                .await
                .with_context(|| format!("listing the keys of {email}"))
        },
        async {
            iam::get_iam_policy(&ctx.gcp, project, email)
                .await
                .with_context(|| format!("reading the IAM policy of {email}"))
        },
    )?;
    let keys = keys
        .iter()
        .map(|k| observed::Key {
            name: k.name.clone(),
            key_id: k.key_id().to_string(),
            disabled: k.disabled.unwrap_or(false),
        })
        .collect();
    Ok((
        Some(observed::ServiceAccount {
            email: sa.email.clone().unwrap_or_else(|| email.to_string()),
            display_name: sa.display_name.clone().unwrap_or_default(),
            description: sa.description.clone().unwrap_or_default(),
            disabled: sa.disabled.unwrap_or(false),
        }),
        keys,
        members_by_role(&policy),
    ))
}

/// role -> members, over unconditional bindings (conditional ones are never the plan's).
fn members_by_role(policy: &Policy) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for b in policy.bindings.iter().filter(|b| b.condition.is_none()) {
        out.entry(b.role.clone())
            .or_default()
            .extend(b.members.iter().cloned());
    }
    out
}

async fn project_bindings(
    ctx: &Context,
    project: &ProjectId,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let policy = resourcemanager::get_iam_policy(&ctx.gcp, project)
        .await
        .with_context(|| format!("reading the IAM policy of project {project}"))?;
    Ok(members_by_role(&policy))
}

async fn secret(ctx: &Context, spec: &Spec) -> Result<Option<observed::Secret>> {
    let (Some(worker), Some(key)) = (&spec.worker, ctx.api_key()) else {
        return Ok(None);
    };
    let project = &spec.gcp.project;
    let id = &worker.api_key_secret;
    let Some(secret) = disabled_is_absent(secretmanager::get_secret(&ctx.gcp, project, id).await)
        .with_context(|| format!("reading secret {id}"))?
    else {
        return Ok(None);
    };
    let (latest, policy) = tokio::try_join!(
        async {
            secretmanager::access_latest(&ctx.gcp, project, id)
                .await
                .with_context(|| format!("reading the latest version of secret {id}"))
        },
        async {
            secretmanager::get_iam_policy(&ctx.gcp, project, id)
                .await
                .with_context(|| format!("reading the IAM policy of secret {id}"))
        },
    )?;
    // Compared in memory; neither value is kept or printed.
    let latest_matches = latest.map(|v| v.expose_secret() == key.expose_secret());
    let accessors = members_by_role(&policy)
        .remove("roles/secretmanager.secretAccessor")
        .unwrap_or_default();
    Ok(Some(observed::Secret {
        labels: secret.labels.clone(),
        latest_matches,
        accessors,
    }))
}

async fn service(ctx: &Context, spec: &Spec) -> Result<Option<Value>> {
    let Some(worker) = &spec.worker else {
        return Ok(None);
    };
    let svc = disabled_is_absent(
        run_v2::get_service(
            &ctx.gcp,
            &spec.gcp.project,
            &spec.gcp.region,
            &worker.service,
        )
        .await,
    )
    .with_context(|| {
        format!(
            "reading Cloud Run service {} in {}",
            worker.service, spec.gcp.region
        )
    })?;
    svc.map(|s| serde_json::to_value(s).context("re-encoding the service"))
        .transpose()
}

type PrefectState = (
    Option<observed::Block>,
    Option<observed::WorkPool>,
    Option<Value>,
    BTreeMap<String, observed::Deployment>,
);

async fn prefect_side(client: &PrefectClient, spec: &Spec) -> Result<PrefectState> {
    // A URL that is not Prefect's API (a wrong prefix) answers 404 to every read: the reads
    // below would take that as "nothing exists yet", or fail naming some endpoint. The health
    // check names the URL instead. Prefect's auth middleware exempts it, so a refused key is
    // still reported by the reads.
    client.health().await?;
    let pool_type = spec.work_pool.pool_type.as_str();
    let (block, pool, default_template, deployments) = tokio::try_join!(
        block(client, spec),
        async {
            client
                .work_pool(spec.work_pool.name.as_str())
                .await
                .with_context(|| format!("reading work pool {}", spec.work_pool.name))
        },
        async {
            client
                .default_base_job_template(pool_type)
                .await
                .with_context(|| {
                    format!("reading the server's default base job template for {pool_type}")
                })
        },
        deployments(client, spec),
    )?;
    let work_pool = pool.map(|p| observed::WorkPool {
        id: p.id.to_string(),
        pool_type: p.pool_type.clone(),
        description: p.description.clone(),
        base_job_template: p.base_job_template.clone(),
        concurrency_limit: p.concurrency_limit,
    });
    Ok((block, work_pool, default_template, deployments))
}

async fn block(client: &PrefectClient, spec: &Spec) -> Result<Option<observed::Block>> {
    let name = spec.credentials_block.name.as_str();
    let doc = client
        .block_document_by_name_with_secrets("gcp-credentials", name)
        .await
        .with_context(|| format!("reading block gcp-credentials/{name}"))?;
    Ok(doc.map(|d| {
        // Only identifiers are kept from the secret data; the key itself is dropped here.
        let data = d.data.expose();
        let info = data.get("service_account_info").filter(|v| v.is_object());
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
        observed::Block {
            id: d.id.to_string(),
            project: text(data.get("project")),
            private_key_id: text(info.and_then(|i| i.get("private_key_id"))),
            client_email: text(info.and_then(|i| i.get("client_email"))),
            has_service_account_info: info
                .is_some_and(|i| i.as_object().is_some_and(|o| !o.is_empty())),
        }
    }))
}

async fn deployments(
    client: &PrefectClient,
    spec: &Spec,
) -> Result<BTreeMap<String, observed::Deployment>> {
    let reads = spec.deployments.iter().map(|d| async move {
        let live = client
            .deployment_by_name(d.flow.as_str(), d.name.as_str())
            .await
            .with_context(|| format!("reading deployment {}/{}", d.flow, d.name))?;
        Ok::<_, anyhow::Error>(live.map(|live| {
            let mut fields = serde_json::Map::new();
            fields.insert("entrypoint".into(), json!(live.entrypoint));
            fields.insert("parameters".into(), Value::Object(live.parameters.clone()));
            fields.insert("work_pool_name".into(), json!(live.work_pool_name));
            fields.insert("work_queue_name".into(), json!(live.work_queue_name));
            fields.insert(
                "job_variables".into(),
                Value::Object(live.job_variables.clone()),
            );
            fields.insert(
                "pull_steps".into(),
                json!(live.pull_steps.clone().unwrap_or_default()),
            );
            fields.insert("tags".into(), json!(live.tags));
            fields.insert("description".into(), json!(live.description));
            let schedules: Vec<Value> = live
                .schedules
                .iter()
                .map(|s| json!({"schedule": s.get("schedule"), "active": s.get("active")}))
                .collect();
            fields.insert("schedules".into(), Value::Array(schedules));
            (
                deployment_key(d),
                observed::Deployment {
                    id: live.id.to_string(),
                    flow: d.flow.to_string(),
                    name: d.name.to_string(),
                    fields,
                },
            )
        }))
    });
    Ok(futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .collect())
}
