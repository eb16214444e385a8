//! What plan templates and defaults see: the process environment, and for gcloud's
//! `CLOUDSDK_CORE_PROJECT` / `CLOUDSDK_RUN_REGION` the active gcloud configuration, the way
//! gcloud's own commands default the project and region. Local files only; no network.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Result;
use bootstrap_spec::{Diagnostics, GCLOUD_PROJECT, GCLOUD_REGION, Spec};

/// The value of `name` for the plan file.
pub fn lookup(name: &str) -> Option<String> {
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    static GCLOUD: OnceLock<bootstrap_gcp::GcloudConfig> = OnceLock::new();
    let gcloud = || GCLOUD.get_or_init(bootstrap_gcp::gcloud_config);
    match name {
        GCLOUD_PROJECT => gcloud().project.as_ref().map(|s| s.value.clone()),
        GCLOUD_REGION => gcloud().region.as_ref().map(|s| s.value.clone()),
        _ => None,
    }
}

/// Loads and checks the plan file with [`lookup`].
pub fn load(path: &Path) -> Result<Spec, Diagnostics> {
    bootstrap_spec::load_with(path, &lookup)
}

/// [`load`] for commands that go on to call the APIs: the diagnostics are printed as they are
/// (each already says `file:line:col: error: ...`), and the error only sums them up, the way a
/// compiler ends with "aborting due to N errors".
pub fn load_spec(path: &Path) -> Result<Spec> {
    load(path).map_err(|diags| {
        eprint!("{diags}");
        if !diags.to_string().ends_with('\n') {
            eprintln!();
        }
        let n = diags.len();
        anyhow::anyhow!(
            "{} is not a valid plan ({n} problem{}); nothing was sent to any API",
            path.display(),
            if n == 1 { "" } else { "s" }
        )
    })
}
