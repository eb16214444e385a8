//! The v1 ⇄ v2 field translations both v1 surfaces share: Knative services (`knative.rs`) and
//! namespaces jobs (`v1.rs`). Both store v2 bodies and answer v1 views of them, so the
//! timestamps, conditions and env vars they write are the same shapes (`run.v1.json`:
//! `GoogleCloudRunV1Condition`, `EnvVar`/`EnvVarSource`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// A v1 timestamp: RFC 3339 at whole seconds, as v1 `metadata.creationTimestamp` is written.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `f` over the items of a list field, as both surfaces translate containers, conditions and
/// traffic (an absent list is empty).
pub(super) fn map_list(list: &Value, f: impl FnMut(&Value) -> Value) -> Vec<Value> {
    list.as_array().into_iter().flatten().map(f).collect()
}

/// A v2 condition `state` as the v1 `status` string.
fn status_of(state: &Value) -> &'static str {
    match state.as_str() {
        Some("CONDITION_SUCCEEDED") => "True",
        Some("CONDITION_FAILED") => "False",
        _ => "Unknown",
    }
}

/// `REVISION_FAILED` → `RevisionFailed`, as v1 writes reasons.
pub(super) fn camel_reason(reason: &str) -> String {
    reason
        .split('_')
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut c = lower.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The v1 condition of type `kind` for the v2 condition `c`, with `reason` (the v2 reason the
/// caller picked: services use `reason`, executions fall back to `executionReason`).
pub(super) fn condition_v1(kind: Value, c: &Value, reason: Option<&str>) -> Value {
    let mut out = json!({"type": kind, "status": status_of(&c["state"]),
                         "lastTransitionTime": c["lastTransitionTime"]});
    if let Some(r) = reason {
        out["reason"] = json!(camel_reason(r));
    }
    if let Some(m) = c.get("message") {
        out["message"] = m.clone();
    }
    out
}

/// Where an env var's secret reference sits and what its fields are called in one API version.
struct SecretRefShape {
    /// The env var field holding the reference (`valueFrom` / `valueSource`).
    holder: &'static str,
    /// The secret's name (`name` / `secret`).
    secret: &'static str,
    /// The secret's version (`key` / `version`).
    version: &'static str,
}

const V1_REF: SecretRefShape = SecretRefShape {
    holder: "valueFrom",
    secret: "name",
    version: "key",
};
const V2_REF: SecretRefShape = SecretRefShape {
    holder: "valueSource",
    secret: "secret",
    version: "version",
};

/// `env` with each secret reference moved from the `from` shape to the `to` shape (both ways are
/// the same mapping with other field names); an absent version is `latest`, an absent plain
/// value the empty string.
fn translate_env(env: &[Value], from: &SecretRefShape, to: &SecretRefShape) -> Vec<Value> {
    env.iter()
        .map(|e| {
            match e.get(from.holder).and_then(|h| h.get("secretKeyRef")) {
                Some(r) => json!({"name": e["name"], (to.holder): {"secretKeyRef": {
                    (to.secret): r[from.secret],
                    (to.version): r.get(from.version).cloned().unwrap_or(json!("latest"))}}}),
                None => {
                    json!({"name": e["name"], "value": e.get("value").cloned().unwrap_or(json!(""))})
                }
            }
        })
        .collect()
}

/// v1 `env` (`valueFrom.secretKeyRef {name, key}`) as v2 (`valueSource.secretKeyRef
/// {secret, version}`).
pub(super) fn env_to_v2(env: &[Value]) -> Vec<Value> {
    translate_env(env, &V1_REF, &V2_REF)
}

/// The reverse of [`env_to_v2`].
pub(super) fn env_to_v1(env: &[Value]) -> Vec<Value> {
    translate_env(env, &V2_REF, &V1_REF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(camel_reason("REVISION_FAILED"), "RevisionFailed");
        assert_eq!(camel_reason("CONTAINER_MISSING"), "ContainerMissing");
        assert_eq!(
            camel_reason("HEALTH_CHECK_CONTAINER_ERROR"),
            "HealthCheckContainerError"
        );
    }

    #[test]
    fn env_secret_refs_translate_both_ways() {
        let v1 = vec![
            json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "3"}}}),
            json!({"name": "B", "valueFrom": {"secretKeyRef": {"name": "t"}}}),
            json!({"name": "C", "value": "x"}),
            json!({"name": "D"}),
        ];
        let v2 = env_to_v2(&v1);
        assert_eq!(
            v2,
            vec![
                json!({"name": "A", "valueSource": {"secretKeyRef": {"secret": "s", "version": "3"}}}),
                json!({"name": "B", "valueSource": {"secretKeyRef": {"secret": "t", "version": "latest"}}}),
                json!({"name": "C", "value": "x"}),
                json!({"name": "D", "value": ""}),
            ]
        );
        let back = env_to_v1(&v2);
        assert_eq!(back[0], v1[0]);
        assert_eq!(
            back[1],
            json!({"name": "B", "valueFrom": {"secretKeyRef": {"name": "t", "key": "latest"}}})
        );
        assert_eq!(back[2], v1[2]);
    }
}
