//! The work pool's base job template: the plan owns the defaults of a few variables (region,
//! credentials, service account, and `work_pool.job_variables`); everything else in the
//! template (including edits made in the UI) is kept as it is.

use bootstrap_spec::ids::BlockId;
use bootstrap_spec::{KeyMode, Spec};
use serde_json::{Value, json};

use super::super::diff;

/// `variables.properties.<name>.default` for each variable the plan owns, with its wanted value
/// (`None`: the default must be absent). `credentials` is handled apart (it is a block ref).
pub fn owned_defaults(spec: &Spec) -> Vec<(String, Option<Value>)> {
    let mut out = vec![
        ("region".to_string(), Some(json!(spec.gcp.region.as_str()))),
        (
            "service_account_name".to_string(),
            Some(json!(spec.service_account.email.as_str())),
        ),
    ];
    for (k, v) in &spec.work_pool.job_variables {
        out.push((k.clone(), Some(v.clone())));
    }
    out
}

fn default_path(var: &str) -> String {
    format!("variables.properties.{var}.default")
}

/// Where the credentials block's ref goes in a pool's base job template: the one place a
/// deferred block id (a block created in the same apply) is filled in.
pub const CREDENTIALS_DEFAULT: &str = "variables.properties.credentials.default";

/// Fills the `credentials` default of `template` with a ref to block `block_id`: what
/// [`apply_defaults`] does for a known block (`key: json`; keyless plans defer no block).
pub fn set_credentials(template: &mut Value, block_id: BlockId) {
    diff::set_path(template, CREDENTIALS_DEFAULT, block_ref(block_id));
}

/// The block ref value stored as the `credentials` default.
pub fn block_ref(block_id: BlockId) -> Value {
    json!({"$ref": {"block_document_id": block_id.to_string()}})
}

/// The variables the plan sets that the template does not declare (an error to show the user).
pub fn undeclared(spec: &Spec, template: &Value) -> Vec<String> {
    owned_defaults(spec)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| diff::get_path(template, &format!("variables.properties.{k}")).is_none())
        .collect()
}

/// Lays the plan's defaults over `base`. `credentials`: `Some(ref)` to set, `None` to leave as is.
pub fn apply_defaults(spec: &Spec, base: &Value, credentials: Option<&Value>) -> Value {
    let mut t = base.clone();
    for (var, value) in owned_defaults(spec) {
        if diff::get_path(&t, &format!("variables.properties.{var}")).is_none() {
            continue; // undeclared: reported by validation of the plan against the template
        }
        match value {
            Some(v) => diff::set_path(&mut t, &default_path(&var), v),
            None => diff::remove_path(&mut t, &default_path(&var)),
        }
    }
    match (spec.service_account.key, credentials) {
        (KeyMode::Json, Some(r)) => diff::set_path(&mut t, &default_path("credentials"), r.clone()),
        (KeyMode::None, _) => diff::remove_path(&mut t, &default_path("credentials")),
        _ => {}
    }
    t
}

/// The owned defaults as a small object, for diffing a live template against the wanted one.
pub fn owned_view(spec: &Spec, template: &Value) -> Value {
    let mut view = serde_json::Map::new();
    let mut vars: Vec<String> = owned_defaults(spec).into_iter().map(|(k, _)| k).collect();
    vars.push("credentials".into());
    for var in vars {
        if let Some(v) = diff::get_path(template, &default_path(&var)) {
            view.insert(var, v.clone());
        }
    }
    Value::Object(view)
}
