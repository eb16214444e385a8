//! The planner: pure and synchronous. From the checked spec and what is live, it produces the
//! complete plan; it takes no client and makes no call.

pub mod builds;
pub mod gcp;
pub mod prefect;
pub mod service;
pub mod template;
pub mod wake;
mod worker_jobs;
pub mod worker_pool;

use bootstrap_spec::Spec;

use super::observed::Observed;
use super::plan::{Address, Mode, Plan, Step};

/// Inputs the planner needs that are not in the plan file or in the live state.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// `apply --rotate-key`.
    pub rotate_key: bool,
    /// `destroy --keep-service-account`.
    pub keep_service_account: bool,
    /// The Prefect API URL the worker service will use (resolved from the plan, env or profile).
    pub prefect_api_url: String,
    /// Whether a Prefect API key is configured (it then goes to Secret Manager).
    pub has_api_key: bool,
}

/// Collects steps and the resources found already right.
pub(crate) struct Builder<'a> {
    pub spec: &'a Spec,
    pub observed: &'a Observed,
    pub options: &'a Options,
    pub steps: Vec<Step>,
    pub unchanged: Vec<Address>,
    pub adopted: Vec<Address>,
}

impl Builder<'_> {
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub fn unchanged(&mut self, address: Address) {
        self.unchanged.push(address);
    }

    /// Whether a step at `address` is in the plan (so that later steps can depend on it).
    pub fn planned(&self, address: &Address) -> bool {
        self.steps.iter().any(|s| &s.address == address)
    }

    /// The subset of `candidates` that are planned steps.
    pub fn deps(&self, candidates: &[Address]) -> Vec<Address> {
        candidates
            .iter()
            .filter(|a| self.planned(a))
            .cloned()
            .collect()
    }
}

/// Plans `spec` against `observed`.
pub fn plan(spec: &Spec, observed: &Observed, options: &Options) -> Plan {
    // A worker image built from this binary runs under its tagged name.
    let spec = &*super::worker_image::with_tagged_image(spec, observed);
    let mut b = Builder {
        spec,
        observed,
        options,
        steps: Vec::new(),
        unchanged: Vec::new(),
        adopted: Vec::new(),
    };
    match options.mode {
        Mode::Apply => {
            gcp::apis(&mut b);
            gcp::service_account(&mut b);
            gcp::bindings(&mut b);
            gcp::key(&mut b);
            gcp::secret(&mut b);
            builds::repositories(&mut b);
            builds::images(&mut b);
            prefect::block(&mut b);
            gcp::orphan_keys(&mut b);
            prefect::work_pool(&mut b);
            // The worker after its work pool: the embedded worker exits when the pool it is
            // given does not exist yet, which failed a service's first revision.
            gcp::worker_service(&mut b);
            worker_pool::plan(&mut b);
            wake::plan(&mut b);
            prefect::deployments(&mut b);
        }
        Mode::Destroy => {
            // Reverse dependency order: what uses a thing goes before the thing.
            wake::destroy(&mut b);
            prefect::destroy_deployments(&mut b);
            prefect::destroy_work_pool(&mut b);
            prefect::destroy_block(&mut b);
            worker_pool::destroy(&mut b);
            gcp::destroy_worker_service(&mut b);
            worker_jobs::destroy_worker_jobs(&mut b);
            builds::destroy_repositories(&mut b);
            gcp::destroy_secret(&mut b);
            gcp::destroy_keys(&mut b);
            gcp::destroy_bindings(&mut b);
            gcp::destroy_service_account(&mut b);
        }
    }
    super::worker_image::wait_for_build(spec, observed, &mut b.steps);
    Plan {
        format_version: super::plan::FORMAT_VERSION,
        mode: options.mode,
        project: spec.gcp.project.clone(),
        region: spec.gcp.region.clone(),
        steps: b.steps,
        unchanged: b.unchanged,
        adopted: b.adopted,
        cost: match options.mode {
            Mode::Apply => spec.worker.as_ref().and_then(super::cost::estimate),
            Mode::Destroy => None,
        },
    }
}

/// Addresses, in one place so that dependencies and renderers agree.
pub mod addr {
    use super::super::plan::Address;
    use bootstrap_spec::Spec;

    pub fn apis() -> Address {
        Address("gcp.apis".into())
    }
    pub fn service_account(spec: &Spec) -> Address {
        Address::new(
            "gcp.service_account",
            spec.service_account.account_id.as_str(),
        )
    }
    pub fn project_iam(spec: &Spec) -> Address {
        Address::new("gcp.project_iam", spec.gcp.project.as_str())
    }
    pub fn sa_iam(spec: &Spec) -> Address {
        Address::new(
            "gcp.service_account_iam",
            spec.service_account.account_id.as_str(),
        )
    }
    pub fn new_key(spec: &Spec) -> Address {
        Address::new(
            "gcp.service_account_key",
            &format!("{}/new", spec.service_account.account_id),
        )
    }
    pub fn key(id: &str) -> Address {
        Address::new("gcp.service_account_key", id)
    }
    pub fn secret(id: &str) -> Address {
        Address::new("gcp.secret", id)
    }
    pub fn secret_iam(id: &str) -> Address {
        Address::new("gcp.secret_iam", id)
    }
    pub fn service(name: &str) -> Address {
        Address::new("gcp.run_service", name)
    }
    pub fn worker_pool(name: &str) -> Address {
        Address::new("gcp.run_worker_pool", name)
    }
    pub fn block(spec: &Spec) -> Address {
        Address::new("prefect.block", spec.credentials_block.name.as_str())
    }
    pub fn work_pool(spec: &Spec) -> Address {
        Address::new("prefect.work_pool", spec.work_pool.name.as_str())
    }
    pub fn deployment(key: &str) -> Address {
        Address::new("prefect.deployment", key)
    }
    /// The flow-run jobs the worker made for the plan's pool (one address for all of them).
    pub fn worker_jobs(spec: &Spec) -> Address {
        Address::new("gcp.worker_jobs", spec.work_pool.name.as_str())
    }
    pub fn repository(id: &str) -> Address {
        Address::new("gcp.artifact_repository", id)
    }
    pub fn repository_iam(id: &str) -> Address {
        Address::new("gcp.artifact_repository_iam", id)
    }
    pub fn image(name: &str) -> Address {
        Address::new("gcp.image", name)
    }
}

#[cfg(test)]
mod tests;
