//! IAM policies as Google stores them: bindings, an etag that changes on every write, a version
//! (3 when a binding carries a condition), and, for eventual consistency, the time each
//! `(role, member)` pair was granted.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ApiError;

/// One role binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// `roles/...`.
    pub role: String,
    /// Members in Google's `type:value` form.
    pub members: Vec<String>,
    /// A `google.type.Expr`, kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
}

/// A resource's IAM policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Bindings in the order they were written.
    pub bindings: Vec<Binding>,
    /// Audit configs, kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_configs: Option<Value>,
    /// Opaque etag; a new one on every write.
    pub etag: String,
    /// When each `role|member` pair was first granted (for the grant propagation delay).
    #[serde(default)]
    pub granted_at: BTreeMap<String, DateTime<Utc>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            bindings: Vec::new(),
            audit_configs: None,
            etag: new_etag(),
            granted_at: BTreeMap::new(),
        }
    }
}

/// A fresh random etag in Google's form (base64 of 8 bytes).
pub fn new_etag() -> String {
    STANDARD.encode(rand::random::<[u8; 8]>())
}

/// Decodes a `format: byte` field of a request. Google's JSON mapping accepts both base64
/// alphabets, padded or not (protobuf JSON: "either standard or URL-safe base64 encoding with/
/// without paddings are accepted"), and clients differ: google-api-python-client sends the
/// standard alphabet, gcloud's apitools the URL-safe one (`3XIu_sZL164=` for `3XIu/sZL164=`).
pub fn decode_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let standard: String = text
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    STANDARD_NO_PAD.decode(standard).ok()
}

/// Whether an etag a client sent (a bytes field, either alphabet) is the stored one. Text that
/// is not base64 at all is compared as it is.
pub fn etag_matches(sent: &str, stored: &str) -> bool {
    match (decode_bytes(sent), decode_bytes(stored)) {
        (Some(a), Some(b)) => a == b,
        _ => sent == stored,
    }
}

impl Policy {
    /// A policy with one binding that counts as granted long ago (no propagation delay).
    pub fn with_binding(role: &str, member: &str) -> Self {
        let mut policy = Policy::default();
        policy.bindings.push(Binding {
            role: role.into(),
            members: vec![member.into()],
            condition: None,
        });
        policy
            .granted_at
            .insert(grant_key(role, member), DateTime::<Utc>::UNIX_EPOCH);
        policy
    }

    /// The policy version Google reports: 3 once any binding has a condition, else 1.
    pub fn version(&self) -> i64 {
        if self.bindings.iter().any(|b| b.condition.is_some()) {
            3
        } else {
            1
        }
    }

    /// The wire form (`Policy` schema).
    pub fn to_json(&self) -> Value {
        let mut out = json!({ "version": self.version(), "etag": self.etag });
        if !self.bindings.is_empty() {
            out["bindings"] = serde_json::to_value(&self.bindings).unwrap_or(Value::Null);
        }
        if let Some(audit) = &self.audit_configs {
            out["auditConfigs"] = audit.clone();
        }
        out
    }

    /// Roles that `member` holds and that have taken effect by `now` given `delay`.
    pub fn effective_roles(
        &self,
        member: &str,
        now: DateTime<Utc>,
        delay: chrono::Duration,
    ) -> Vec<&str> {
        self.bindings
            .iter()
            // Conditional bindings are not evaluated; the sandbox treats them as not granting.
            .filter(|b| b.condition.is_none() && b.members.iter().any(|m| m == member))
            .filter(|b| {
                self.granted_at
                    .get(&grant_key(&b.role, member))
                    .is_none_or(|at| *at + delay <= now)
            })
            .map(|b| b.role.as_str())
            .collect()
    }

    /// Replaces bindings (and audit configs when the mask names them) with those of `new`,
    /// recording grant times for pairs that are new, and rotating the etag.
    pub fn replace(&mut self, new: IncomingPolicy, update_audit: bool, now: DateTime<Utc>) {
        let mut granted = BTreeMap::new();
        for binding in &new.bindings {
            for member in &binding.members {
                let key = grant_key(&binding.role, member);
                let at = self.granted_at.get(&key).copied().unwrap_or(now);
                granted.insert(key, at);
            }
        }
        self.bindings = new.bindings;
        if update_audit {
            self.audit_configs = new.audit_configs;
        }
        self.granted_at = granted;
        self.etag = new_etag();
    }

    /// Removes every binding of `member` (e.g. when its service account is deleted, Google
    /// shows it as `deleted:serviceAccount:...`; the sandbox keeps it simpler and drops it).
    pub fn remove_member(&mut self, member: &str) {
        for binding in &mut self.bindings {
            binding.members.retain(|m| m != member);
        }
        self.bindings.retain(|b| !b.members.is_empty());
    }
}

fn grant_key(role: &str, member: &str) -> String {
    format!("{role}|{member}")
}

/// A policy as a client sent it in `setIamPolicy`, validated.
#[derive(Debug, Clone)]
pub struct IncomingPolicy {
    /// The bindings, with duplicate members removed.
    pub bindings: Vec<Binding>,
    /// The etag the client read, if it sent one.
    pub etag: Option<String>,
    /// Audit configs, verbatim.
    pub audit_configs: Option<Value>,
}

/// Parses and validates the `policy` of a `SetIamPolicyRequest` body.
pub fn parse_set_request(body: &Value) -> Result<(IncomingPolicy, bool), ApiError> {
    let policy = body.get("policy").ok_or_else(|| {
        ApiError::invalid_argument("Request contains an invalid argument: policy is required.")
    })?;
    let version = policy.get("version").and_then(Value::as_i64).unwrap_or(1);
    if ![0, 1, 3].contains(&version) {
        return Err(ApiError::invalid_argument(format!(
            "Invalid policy version {version}."
        )));
    }
    let mut bindings = Vec::new();
    for raw in policy
        .get("bindings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = raw
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid_argument("Policy binding is missing a role."))?;
        validate_role(role)?;
        let condition = raw.get("condition").filter(|c| !c.is_null()).cloned();
        if condition.is_some() && version != 3 {
            return Err(ApiError::invalid_argument(
                "Policy version 1 cannot contain conditional role bindings; set version to 3.",
            ));
        }
        let mut members: Vec<String> = Vec::new();
        for member in raw
            .get("members")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let member = member
                .as_str()
                .ok_or_else(|| ApiError::invalid_argument("Policy members must be strings."))?;
            validate_member(member)?;
            if !members.iter().any(|m| m == member) {
                members.push(member.to_owned());
            }
        }
        if members.is_empty() {
            continue;
        }
        // Google merges bindings of the same role and condition.
        if let Some(existing) = bindings
            .iter_mut()
            .find(|b: &&mut Binding| b.role == role && b.condition == condition)
        {
            for m in members {
                if !existing.members.contains(&m) {
                    existing.members.push(m);
                }
            }
        } else {
            bindings.push(Binding {
                role: role.to_owned(),
                members,
                condition,
            });
        }
    }
    let etag = policy
        .get("etag")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_owned);
    let mask = body
        .get("updateMask")
        .and_then(Value::as_str)
        .unwrap_or("bindings,etag");
    let update_audit = mask.split(',').any(|p| p.trim() == "auditConfigs");
    Ok((
        IncomingPolicy {
            bindings,
            etag,
            audit_configs: policy.get("auditConfigs").cloned(),
        },
        update_audit,
    ))
}

/// The member types Google accepts in a binding.
pub fn validate_member(member: &str) -> Result<(), ApiError> {
    let invalid = || {
        ApiError::invalid_argument(format!(
            "Invalid member '{member}'. Policy members must be of the form \"<type>:<value>\"."
        ))
    };
    if member == "allUsers" || member == "allAuthenticatedUsers" {
        return Ok(());
    }
    if member.starts_with("principal://") || member.starts_with("principalSet://") {
        return Ok(());
    }
    let (kind, value) = member.split_once(':').ok_or_else(invalid)?;
    match kind {
        "user" | "serviceAccount" | "group" => {
            let (local, domain) = value.split_once('@').ok_or_else(invalid)?;
            if local.is_empty() || !domain.contains('.') {
                return Err(invalid());
            }
            Ok(())
        }
        "domain" if value.contains('.') => Ok(()),
        "deleted" | "projectOwner" | "projectEditor" | "projectViewer" if !value.is_empty() => {
            Ok(())
        }
        _ => Err(invalid()),
    }
}

/// Roles must be predefined (`roles/x`) or custom (`projects/p/roles/x`, `organizations/o/roles/x`).
pub fn validate_role(role: &str) -> Result<(), ApiError> {
    let predefined = role.strip_prefix("roles/").is_some_and(|r| !r.is_empty());
    let custom = (role.starts_with("projects/") || role.starts_with("organizations/"))
        && role.contains("/roles/");
    if predefined || custom {
        if predefined && !crate::authz::is_known_role(role) {
            return Err(ApiError::invalid_argument(format!(
                "Role {role} is not supported for this resource."
            )));
        }
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "Role {role} is not supported for this resource."
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_rules() {
        for ok in [
            "user:a@b.com",
            "serviceAccount:x@p.iam.gserviceaccount.com",
            "group:g@x.org",
            "domain:x.org",
            "allUsers",
        ] {
            assert!(validate_member(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a@b.com",
            "user:",
            "user:nobody",
            "robot:x@y.z",
            "domain:",
            "",
        ] {
            assert!(validate_member(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_merges_and_validates() {
        let body = json!({"policy": {"bindings": [
            {"role": "roles/viewer", "members": ["user:a@b.com"]},
            {"role": "roles/viewer", "members": ["user:c@b.com", "user:a@b.com"]},
        ], "etag": "abc"}});
        let (policy, audit) = parse_set_request(&body).expect("valid");
        assert_eq!(policy.bindings.len(), 1);
        assert_eq!(policy.bindings[0].members.len(), 2);
        assert_eq!(policy.etag.as_deref(), Some("abc"));
        assert!(!audit);
        let bad =
            json!({"policy": {"bindings": [{"role": "viewer", "members": ["user:a@b.com"]}]}});
        assert!(parse_set_request(&bad).is_err());
        let cond = json!({"policy": {"bindings": [{"role": "roles/viewer", "members": ["user:a@b.com"], "condition": {"expression": "true"}}]}});
        assert!(parse_set_request(&cond).is_err());
    }

    /// Regression: gcloud returns policy etags in the URL-safe alphabet; the sandbox compared
    /// text and answered 409 "concurrent policy changes" whenever an etag held `/` or `+`.
    #[test]
    fn etags_match_in_either_base64_alphabet() {
        assert!(etag_matches("3XIu_sZL164=", "3XIu/sZL164="));
        assert!(etag_matches("3XIu_sZL164", "3XIu/sZL164="));
        assert!(etag_matches("a-b+", "a+b+"));
        assert!(etag_matches("BwYAAAAAAAA=", "BwYAAAAAAAA="));
        assert!(!etag_matches("3XIu_sZL165=", "3XIu/sZL164="));
        assert!(!etag_matches("not base64!", "3XIu/sZL164="));
        for _ in 0..200 {
            let stored = new_etag();
            let url_safe = stored.replace('+', "-").replace('/', "_");
            assert!(etag_matches(&url_safe, &stored), "{url_safe} vs {stored}");
        }
        assert_eq!(
            decode_bytes("aGk_").as_deref(),
            Some(&[0x68, 0x69, 0x3f][..])
        );
        assert_eq!(
            decode_bytes("aGk/").as_deref(),
            Some(&[0x68, 0x69, 0x3f][..])
        );
        assert_eq!(decode_bytes("aGk=").as_deref(), Some(&b"hi"[..]));
        assert!(decode_bytes("a*b").is_none());
    }

    #[test]
    fn grants_take_effect_after_delay() {
        let mut policy = Policy::default();
        let now = Utc::now();
        let body = json!({"policy": {"bindings": [{"role": "roles/viewer", "members": ["user:a@b.com"]}]}});
        let (incoming, _) = parse_set_request(&body).expect("valid");
        let etag = policy.etag.clone();
        policy.replace(incoming, false, now);
        assert_ne!(policy.etag, etag);
        let delay = chrono::Duration::seconds(1);
        assert!(
            policy
                .effective_roles("user:a@b.com", now, delay)
                .is_empty()
        );
        assert_eq!(
            policy.effective_roles("user:a@b.com", now + delay, delay),
            vec!["roles/viewer"]
        );
    }
}
