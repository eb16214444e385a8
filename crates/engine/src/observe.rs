//! Observing what GCP and Prefect hold now: every read in parallel, reduced to [`Observed`].
//! A disabled API has nothing to read: its resources read as absent (the plan enables it).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use bootstrap_gcp::policy::Policy;
use bootstrap_gcp::{
    GcpError, iam, resourcemanager, run_jobs, run_v2, secretmanager, serviceusage,
};
use bootstrap_prefect::PrefectClient;
use bootstrap_spec::{Spec, ids::*};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use super::context::Context;
use super::observed::{self, Observed};
use super::plan::Mode;
use super::planner::prefect::deployment_key;

/// Reads everything the planner compares, concurrently. The Cloud Run jobs the worker made are
/// listed only for a destroy, the one plan that uses them (a list per region would otherwise be
/// added to every `plan` and `apply`).
pub async fn observe(ctx: &Context, spec: &Spec, mode: Mode) -> Result<Observed> {
    let project = &spec.gcp.project;
    let destroy = mode == Mode::Destroy;
    let spec_regions = if destroy {
        job_regions(spec, None)
    } else {
        Vec::new()
    };
    let (apis, gcp_sa, bindings, secret, service, worker_pool, prefect, mut worker_jobs, builds) =
        tokio::try_join!(
            apis(ctx, spec),
            service_account(ctx, spec),
            project_bindings(ctx, project),
            secret(ctx, spec),
            service(ctx, spec),
            super::exec_pool::observe(ctx, spec),
            prefect_side(&ctx.prefect, spec),
            worker_jobs_in(ctx, spec, &spec_regions),
            super::builds::observe(ctx, spec),
        )?;
    let (images, repositories) = builds;
    let (service_account, keys, sa_bindings) = gcp_sa;
    let (block, work_pool, default_template, deployments) = prefect;
    // A region only the live pool's template names (a UI edit) is read once the pool is known.
    let more: Vec<String> = job_regions(spec, work_pool.as_ref())
        .into_iter()
        .filter(|r| destroy && !spec_regions.contains(r))
        .collect();
    if !more.is_empty() {
        worker_jobs.extend(worker_jobs_in(ctx, spec, &more).await?);
    }
    // The worker pool's own policy is read once the pool is known to exist.
    let wake = super::wake::observe(ctx, spec, worker_pool.is_some()).await?;
    Ok(Observed {
        apis,
        service_account,
        project_bindings: bindings,
        sa_bindings,
        keys,
        block,
        secret,
        service,
        worker_pool,
        work_pool,
        default_template,
        deployments,
        worker_jobs,
        images,
        repositories,
        wake,
    })
}

/// The regions the worker can run the plan's flow runs in: the plan's region, a `region` job
/// variable of the pool or of a deployment, and the live pool template's `region` default.
fn job_regions(spec: &Spec, pool: Option<&observed::WorkPool>) -> Vec<String> {
    let mut out = BTreeSet::from([spec.gcp.region.to_string()]);
    let vars = std::iter::once(&spec.work_pool.job_variables)
        .chain(spec.deployments.iter().map(|d| &d.job_variables));
    for v in vars {
        if let Some(r) = v.get("region").and_then(Value::as_str) {
            out.insert(r.to_string());
        }
    }
    if let Some(r) = pool
        .and_then(|p| {
            p.base_job_template
                .pointer("/variables/properties/region/default")
        })
        .and_then(Value::as_str)
    {
        out.insert(r.to_string());
    }
    // Only names Cloud Run could serve; a malformed one cannot hold jobs.
    out.into_iter()
        .filter(|r| Region::parse(r).is_ok())
        .collect()
}

/// The jobs labelled with the plan's pool ([`run_jobs::POOL_LABEL`]) in each region, listed
/// through the one Cloud Run jobs client (every page). A disabled Run API holds no jobs.
async fn worker_jobs_in(
    ctx: &Context,
    spec: &Spec,
    regions: &[String],
) -> Result<Vec<observed::WorkerJobs>> {
    let (api, api_name) = if matches!(spec.work_pool.pool_type, bootstrap_spec::PoolType::CloudRun)
    {
        (run_jobs::JobsApi::V1, crate::plan::JobsApi::V1)
    } else {
        (run_jobs::JobsApi::V2, crate::plan::JobsApi::V2)
    };
    let value = run_jobs::pool_label_value(spec.work_pool.name.as_str());
    let reads = regions.iter().map(|r| {
        let value = value.clone();
        async move {
            let region = Region::parse(r).map_err(|e| anyhow::anyhow!("region `{r}`: {e}"))?;
            let jobs = run_jobs::Jobs::new(
                ctx.gcp.clone(),
                api,
                spec.gcp.project.clone(),
                region.clone(),
            );
            let listed = match jobs.jobs_labelled(run_jobs::POOL_LABEL, &value).await {
                Err(GcpError::ServiceDisabled { .. }) => Vec::new(),
                other => other.with_context(|| {
                    format!(
                        "listing the Cloud Run jobs of work pool {} in {r}",
                        spec.work_pool.name
                    )
                })?,
            };
            let mut names = listed
                .into_iter()
                .map(|j| {
                    RunJobName::parse(j.name.as_str())
                        .map_err(|e| anyhow::anyhow!("Cloud Run job `{}` in {r}: {e}", j.name))
                })
                .collect::<Result<Vec<_>>>()?;
            names.sort();
            Ok::<_, anyhow::Error>(observed::WorkerJobs {
                region,
                api: api_name,
                names,
            })
        }
    });
    Ok(futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .filter(|w| !w.names.is_empty())
        .collect())
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
    // still reported by the reads. It runs alongside the reads (one round trip less) and its
    // error, when it has one, is the one reported.
    let pool_type = spec.work_pool.pool_type.as_str();
    let (health, reads) = tokio::join!(client.health(), async {
        tokio::try_join!(
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
        )
    });
    health?;
    let (block, pool, default_template, deployments) = reads?;
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
            id: d.id.into(),
            project: text(data.get("project")),
            private_key_id: text(info.and_then(|i| i.get("private_key_id"))),
            client_email: text(info.and_then(|i| i.get("client_email"))),
            has_service_account_info: info
                .is_some_and(|i| i.as_object().is_some_and(|o| !o.is_empty())),
        }
    }))
}

/// How many per-deployment reads are in flight at once when the server refuses the batch read.
/// Measured on Prefect 3.9.1's SQLite server here (BENCHMARKS.md, "scale"): 100 reads took
/// 3.2 s one at a time, 1.4 s four at a time, 1.8 s at 8 and 2.5 s at 16-64; the batch read
/// takes 0.09 s.
const DEPLOYMENT_READS_IN_FLIGHT: usize = 4;

/// The plan's deployments as the server holds them: one batch read by names (two requests for
/// up to 200 deployments, `PrefectClient::deployments_by_names`) instead of one request each.
async fn deployments(
    client: &PrefectClient,
    spec: &Spec,
) -> Result<BTreeMap<String, observed::Deployment>> {
    let wanted: Vec<(String, String)> = spec
        .deployments
        .iter()
        .map(|d| (d.flow.to_string(), d.name.to_string()))
        .collect();
    let live = match client.deployments_by_names(&wanted).await {
        Ok(live) => live,
        // A server whose page limit is below the client's page (PREFECT_SERVER_API_DEFAULT_LIMIT
        // lowered) refuses the filter with a 422: read one by one instead.
        Err(bootstrap_prefect::PrefectError::Unprocessable { .. }) => {
            return deployments_one_by_one(client, spec).await;
        }
        Err(e) => return Err(anyhow::Error::new(e).context("reading the plan's deployments")),
    };
    Ok(spec
        .deployments
        .iter()
        .filter_map(|d| {
            let live = live.get(&(d.flow.to_string(), d.name.to_string()))?;
            Some((deployment_key(d), observed_deployment(d, live)))
        })
        .collect())
}

/// What the planner compares of a live deployment.
fn observed_deployment(
    d: &bootstrap_spec::Deployment,
    live: &bootstrap_prefect::Deployment,
) -> observed::Deployment {
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
    fields.insert(
        "schedules".into(),
        Value::Array(aligned_schedules(&live.schedules, &d.schedules)),
    );
    observed::Deployment {
        id: live.id.into(),
        flow: d.flow.to_string(),
        flow_id: live.flow_id.into(),
        name: d.name.to_string(),
        fields,
    }
}

/// The keys of a live schedule that the plan's schedule at the same place names. The server
/// fills in defaults the plan did not give (a cron schedule's `day_or: true`, an interval's
/// `anchor_date` and `timezone`; `prefect/server/schemas/schedules.py`); compared whole, every
/// plan with a schedule showed a change after every apply. A schedule the plan does not have
/// (or a non-object) is kept whole, so it still reads as a difference.
fn owned_schedule(live: &Value, planned: Option<&Value>) -> Value {
    match (live, planned) {
        (Value::Object(l), Some(Value::Object(p))) => Value::Object(
            l.iter()
                .filter(|(k, _)| p.contains_key(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => live.clone(),
    }
}

/// The live schedules as `{schedule, active}` in the plan's order. The server does not return
/// a deployment's schedules in the order they were sent (two sent in one request came back
/// reversed), and their order means nothing to it: each planned schedule is matched with an
/// equal live one; planned ones without a match are compared with the live ones left over, in
/// the server's order; live ones beyond the plan's come last, whole.
fn aligned_schedules(live: &[Value], planned: &[Value]) -> Vec<Value> {
    let entry = |l: &Value, p: Option<&Value>| {
        let schedule = l.get("schedule").map(|s| owned_schedule(s, p));
        json!({"schedule": schedule, "active": l.get("active")})
    };
    let mut used = vec![false; live.len()];
    let mut slots: Vec<Option<usize>> = planned
        .iter()
        .map(|p| {
            let i = live.iter().enumerate().position(|(i, l)| {
                !used[i]
                    && l.get("schedule")
                        .map(|s| owned_schedule(s, Some(p)))
                        .as_ref()
                        == Some(p)
            })?;
            used[i] = true;
            Some(i)
        })
        .collect();
    let mut rest = (0..live.len())
        .filter(|i| !used[*i])
        .collect::<Vec<_>>()
        .into_iter();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = rest.next();
    }
    let mut out: Vec<Value> = slots
        .iter()
        .zip(planned)
        .filter_map(|(slot, p)| slot.map(|i| entry(&live[i], Some(p))))
        .collect();
    out.extend(rest.map(|i| entry(&live[i], None)));
    out
}

/// One read per deployment, at most [`DEPLOYMENT_READS_IN_FLIGHT`] at once.
async fn deployments_one_by_one(
    client: &PrefectClient,
    spec: &Spec,
) -> Result<BTreeMap<String, observed::Deployment>> {
    use futures::stream::{StreamExt as _, TryStreamExt as _};
    let reads = spec.deployments.iter().map(|d| async move {
        let live = client
            .deployment_by_name(d.flow.as_str(), d.name.as_str())
            .await
            .with_context(|| format!("reading deployment {}/{}", d.flow, d.name))?;
        Ok::<_, anyhow::Error>(live.map(|live| (deployment_key(d), observed_deployment(d, &live))))
    });
    Ok(futures::stream::iter(reads)
        .buffer_unordered(DEPLOYMENT_READS_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .flatten()
        .collect())
}

#[cfg(test)]
mod schedule_tests {
    use super::{aligned_schedules, owned_schedule};
    use serde_json::json;

    #[test]
    fn schedules_are_compared_in_the_plans_order() {
        let a = json!({"cron": "0 0 1 1 *", "timezone": "UTC"});
        let b = json!({"cron": "1 0 1 1 *", "timezone": "UTC"});
        let live = |s: &serde_json::Value| {
            let mut full = s.clone();
            full["day_or"] = json!(true);
            json!({"schedule": full, "active": true, "id": "x"})
        };
        let want = |s: &serde_json::Value| json!({"schedule": s, "active": true});
        // The server answered b, a for a plan of a, b: no difference.
        assert_eq!(
            aligned_schedules(&[live(&b), live(&a)], &[a.clone(), b.clone()]),
            vec![want(&a), want(&b)]
        );
        // A changed schedule is compared with the one left over; an extra live one comes last.
        let c = json!({"cron": "2 0 1 1 *", "timezone": "UTC"});
        let got = aligned_schedules(&[live(&c), live(&a), live(&b)], &[a.clone(), c.clone()]);
        assert_eq!(got[0], want(&a));
        assert_eq!(got[1], want(&c));
        assert_eq!(got.len(), 3);
        assert_eq!(got[2]["schedule"]["day_or"], true, "kept whole");
        // Fewer live than planned: only what exists is listed.
        assert_eq!(
            aligned_schedules(&[], std::slice::from_ref(&a)),
            Vec::<serde_json::Value>::new()
        );
    }

    #[test]
    fn server_defaults_of_a_schedule_are_not_a_change() {
        let live = json!({"cron": "0 0 1 1 *", "timezone": "UTC", "day_or": true});
        let planned = json!({"cron": "0 0 1 1 *", "timezone": "UTC"});
        assert_eq!(owned_schedule(&live, Some(&planned)), planned);
        // A value the plan gives still shows when it differs.
        let other = json!({"cron": "5 0 1 1 *", "timezone": "UTC"});
        assert_ne!(owned_schedule(&live, Some(&other)), other);
        // A live schedule beyond the plan's is kept whole.
        assert_eq!(owned_schedule(&live, None), live);
    }
}
