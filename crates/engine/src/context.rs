//! The live connections an engine run uses: Google APIs (operator credentials, gcloud's
//! conventions) and the Prefect API (plan, environment or profile, as Prefect's CLI resolves).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bootstrap_gcp::{AmbientTokenSource, DiscoverOptions, Endpoints, GcpHttp, RetryPolicy};
use bootstrap_prefect::{ConfigOverrides, PrefectClient, PrefectConfig};
use bootstrap_spec::Spec;
use secrecy::SecretString;

/// The process's credential flags plus the plan's `gcp.quota_project`.
pub fn discover_options(spec: &Spec) -> DiscoverOptions {
    DiscoverOptions {
        plan_quota_project: spec
            .gcp
            .quota_project
            .as_ref()
            .map(|p| p.as_str().to_owned()),
        ..bootstrap_gcp::auth::process_options()
    }
}

pub struct Context {
    pub gcp: GcpHttp,
    pub prefect: PrefectClient,
}

/// Where the APIs are and how to reach them, resolved once the same way for every command:
/// the plan's `prefect` values (when a plan is given), then `PREFECT_API_URL` /
/// `PREFECT_API_KEY` / `PREFECT_API_AUTH_STRING`, then the active Prefect profile; Google's
/// endpoints from `--gcp-endpoint`, else Google's hosts. Reads no network.
#[derive(Debug, Clone)]
pub struct Connections {
    pub prefect: PrefectConfig,
    pub gcp_endpoints: Endpoints,
}

impl Connections {
    /// Resolves the settings of `spec` (if any) and `gcp_endpoint` (the global flag).
    pub fn resolve(spec: Option<&Spec>, gcp_endpoint: Option<&str>) -> Result<Self> {
        Ok(Self {
            prefect: Self::resolve_prefect(spec)?,
            gcp_endpoints: Self::resolve_gcp_endpoints(gcp_endpoint)?,
        })
    }

    /// Google's endpoints alone: `--gcp-endpoint` (or `BOOTSTRAP_GCP_ENDPOINT`, which the flag
    /// reads), else Google's hosts.
    pub fn resolve_gcp_endpoints(gcp_endpoint: Option<&str>) -> Result<Endpoints> {
        Ok(match gcp_endpoint {
            Some(base) => {
                Endpoints::with_base(base).with_context(|| format!("--gcp-endpoint {base}"))?
            }
            None => Endpoints::google(),
        })
    }

    /// The Prefect API alone: the plan's values, then Prefect's env and active profile.
    pub fn resolve_prefect(spec: Option<&Spec>) -> Result<PrefectConfig> {
        let overrides = spec.map_or_else(ConfigOverrides::default, |spec| ConfigOverrides {
            api_url: spec.prefect.api_url.clone(),
            api_key: spec.prefect.api_key.clone(),
            auth_string: spec.prefect.auth_string.clone(),
        });
        PrefectConfig::resolve(overrides).context("finding the Prefect API")
    }
}

impl Context {
    /// Finds credentials and builds the clients. Makes no API call beyond fetching a token.
    pub async fn connect(spec: &Spec, gcp_endpoint: Option<&str>) -> Result<Self> {
        let connections = Connections::resolve(Some(spec), gcp_endpoint)?;
        let tokens =
            AmbientTokenSource::discover_with(&discover_options(spec), &connections.gcp_endpoints)
                .await
                .context("finding Google credentials")?;
        let gcp = GcpHttp::new(
            connections.gcp_endpoints,
            Arc::new(tokens),
            RetryPolicy::default(),
        )?;
        let prefect = PrefectClient::new(connections.prefect)?;
        Ok(Context { gcp, prefect })
    }

    /// The Prefect API URL the worker service is given.
    pub fn worker_api_url(&self, _spec: &Spec) -> String {
        self.prefect.config().api_url.to_string()
    }

    /// The Prefect API key that goes to Secret Manager for the worker, if any.
    pub fn api_key(&self) -> Option<&SecretString> {
        self.prefect.config().api_key.as_ref()
    }
}
