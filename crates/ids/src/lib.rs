//! Typed identities shared by every layer (the plan file, the REST clients, the engine and the
//! worker). Each wraps a string that has been checked against the form the owning service
//! requires, so that code past validation never sees an invalid one. Checks that need a list
//! (known regions) belong to the plan file crate, not here.
//!
//! `parse` returns the reason a value is invalid, phrased to follow "invalid <kind> `<value>`: ".

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it; the error says what a valid value looks like.
            pub fn parse(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                $check(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A GCP project id: 6-30 chars, lowercase letters, digits and hyphens, starting with a
    /// letter and not ending with a hyphen.
    ProjectId,
    check_project_id
);
id_type!(
    /// A Cloud Run region such as `us-central1`.
    Region,
    check_region
);
id_type!(
    /// The account id of a service account (the part before `@`): 6-30 chars,
    /// `[a-z]([-a-z0-9]*[a-z0-9])`.
    AccountId,
    check_account_id
);
id_type!(
    /// A service account email, `<account-id>@<project>.iam.gserviceaccount.com` for
    /// user-managed accounts.
    ServiceAccountEmail,
    check_sa_email
);
id_type!(
    /// An IAM role name: `roles/<name>`, `projects/<p>/roles/<name>` or `organizations/<o>/roles/<name>`.
    Role,
    check_role
);
id_type!(
    /// A Google API service name such as `run.googleapis.com`.
    ApiService,
    check_api_service
);
id_type!(
    /// A Cloud Run service id: lowercase letters, digits and hyphens, starting with a letter,
    /// under 50 chars, not ending with a hyphen.
    RunServiceName,
    check_run_service
);
id_type!(
    /// A Cloud Run job id: like a service id, at most 63 chars.
    RunJobName,
    check_run_job
);
id_type!(
    /// A Cloud Run worker pool id: like a service id, under 50 chars (run.v2.json,
    /// `workerPools.create.workerPoolId`).
    RunWorkerPoolName,
    check_run_worker_pool
);
id_type!(
    /// A Secret Manager secret id: 1-255 chars of letters, digits, `-` and `_`.
    SecretId,
    check_secret_id
);
id_type!(
    /// A Prefect object name (work pool, queue, block document, flow, deployment): non-empty,
    /// at most 100 chars, no `/`, `%`, `&`, `>`, `<` (Prefect rejects these in names).
    PrefectName,
    check_prefect_name
);
id_type!(
    /// A Prefect block document name: lowercase letters, digits and hyphens.
    BlockName,
    check_block_name
);
id_type!(
    /// A container image reference: `[registry/]path[:tag][@sha256:digest]`, lowercase path.
    ImageRef,
    check_image
);

/// Declares an id the Prefect server gives an object (a UUID), one type per kind of object so
/// that a block's id cannot be passed where an automation's is wanted. The JSON form is the
/// UUID's string, as the server writes it.
macro_rules! prefect_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            pub fn uuid(self) -> uuid::Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(id: uuid::Uuid) -> Self {
                Self(id)
            }
        }
    };
}

prefect_id!(
    /// A Prefect block document's id.
    BlockId
);
prefect_id!(
    /// A Prefect automation's id.
    AutomationId
);
prefect_id!(
    /// A Prefect deployment's id.
    DeploymentId
);
prefect_id!(
    /// A Prefect flow's id.
    FlowId
);

impl ServiceAccountEmail {
    /// The email of a user-managed service account in `project`.
    pub fn for_account(account: &AccountId, project: &ProjectId) -> Self {
        Self(format!("{account}@{project}.iam.gserviceaccount.com"))
    }

    /// The IAM policy member string, `serviceAccount:<email>`.
    pub fn member(&self) -> String {
        format!("serviceAccount:{}", self.0)
    }
}

fn is_lower_alnum_hyphen(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?` with a length range.
fn check_dns_label(s: &str, min: usize, max: usize, what: &str) -> Result<(), String> {
    let len = s.chars().count();
    if len < min || len > max {
        return Err(format!(
            "{what} must be {min}-{max} characters long (this one has {len})"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("{what} must start with a lowercase letter"));
    }
    if !is_lower_alnum_hyphen(s) {
        return Err(format!(
            "{what} may contain only lowercase letters, digits and hyphens"
        ));
    }
    if s.ends_with('-') {
        return Err(format!("{what} must not end with a hyphen"));
    }
    Ok(())
}

fn check_project_id(s: &str) -> Result<(), String> {
    check_dns_label(s, 6, 30, "a project id")
}

/// The form of a Google Cloud region id (`us-central1`, `northamerica-northeast1`,
/// `europe-west10`): lowercase words joined by `-`, the last ending in digits. Only the form is
/// checked: Google opens regions every year, and an unknown one is Google's own 404 (the plan
/// file's offline list check lives in `bootstrap-spec`).
fn check_region(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('-').collect();
    let word = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase());
    let ok = s.len() <= 63
        && parts.len() >= 2
        && parts[..parts.len() - 1].iter().all(|p| word(p))
        && parts.last().is_some_and(|last| {
            let digits = last.trim_start_matches(|c: char| c.is_ascii_lowercase());
            digits.len() < last.len()
                && !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err("a region id looks like us-central1 or europe-west1".into())
    }
}

fn check_account_id(s: &str) -> Result<(), String> {
    check_dns_label(s, 6, 30, "a service account id")
}

fn check_sa_email(s: &str) -> Result<(), String> {
    let Some((local, domain)) = s.split_once('@') else {
        return Err(
            "a service account email has the form NAME@PROJECT.iam.gserviceaccount.com".into(),
        );
    };
    if local.is_empty() || domain.is_empty() || !domain.contains('.') {
        return Err(
            "a service account email has the form NAME@PROJECT.iam.gserviceaccount.com".into(),
        );
    }
    Ok(())
}

fn check_role(s: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    };
    let parts: Vec<&str> = s.split('/').collect();
    let ok = match parts.as_slice() {
        ["roles", name] => name_ok(name),
        ["projects" | "organizations", owner, "roles", name] => !owner.is_empty() && name_ok(name),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("a role is `roles/NAME` (e.g. roles/run.admin) or `projects/P/roles/NAME`".into())
    }
}

fn check_api_service(s: &str) -> Result<(), String> {
    let ok = s.ends_with(".googleapis.com")
        && s.len() > ".googleapis.com".len()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("an API service name looks like run.googleapis.com".into())
    }
}

fn check_run_service(s: &str) -> Result<(), String> {
    check_dns_label(s, 1, 49, "a Cloud Run service name")
}

fn check_run_job(s: &str) -> Result<(), String> {
    check_dns_label(s, 1, 63, "a Cloud Run job name")
}

impl From<&RunServiceName> for RunWorkerPoolName {
    /// A service id is a valid worker pool id: both are DNS labels under 50 characters.
    fn from(service: &RunServiceName) -> Self {
        RunWorkerPoolName(service.as_str().to_owned())
    }
}

fn check_run_worker_pool(s: &str) -> Result<(), String> {
    check_dns_label(s, 1, 49, "a Cloud Run worker pool name")
}

fn check_secret_id(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err("a secret id is 1-255 letters, digits, `-` or `_`".into())
    }
}

fn check_prefect_name(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("a Prefect name must not be empty".into());
    }
    if s.chars().count() > 100 {
        return Err("a Prefect name is at most 100 characters".into());
    }
    if let Some(c) = s.chars().find(|c| "/%&><".contains(*c)) {
        return Err(format!("a Prefect name must not contain `{c}`"));
    }
    Ok(())
}

fn check_block_name(s: &str) -> Result<(), String> {
    if s.is_empty() || !is_lower_alnum_hyphen(s) {
        return Err("a block name may contain only lowercase letters, digits and hyphens".into());
    }
    Ok(())
}

fn check_image(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace()) {
        return Err(
            "an image reference has no spaces, e.g. us-docker.pkg.dev/p/repo/img:tag".into(),
        );
    }
    let (name, _digest) = match s.split_once('@') {
        Some((n, d)) if d.starts_with("sha256:") && d.len() == 71 => (n, Some(d)),
        Some(_) => return Err("an image digest is `@sha256:` followed by 64 hex digits".into()),
        None => (s, None),
    };
    // A tag follows the last colon that comes after the last slash (a registry may have a port).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !ok {
            return Err("an image tag is 1-128 letters, digits, `_`, `.` or `-`".into());
        }
    }
    let mut components = path.split('/');
    let first = components.next().unwrap_or_default();
    let first_is_registry =
        path.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let rest: Vec<&str> = if first_is_registry {
        components.collect()
    } else {
        path.split('/').collect()
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase()
                    || ch.is_ascii_digit()
                    || ch == '.'
                    || ch == '_'
                    || ch == '-'
            })
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if rest.is_empty() || !rest.iter().all(|c| component_ok(c)) {
        return Err(
            "an image path is lowercase letters, digits, `.`, `_` and `-` separated by `/`".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids() {
        assert!(ProjectId::parse("prefect-project").is_ok());
        assert!(ProjectId::parse("short").is_err());
        assert!(ProjectId::parse("Prefect-project").is_err());
        assert!(ProjectId::parse("prefect-project-").is_err());
        assert!(ProjectId::parse("1prefect-project").is_err());
    }

    #[test]
    fn regions_are_checked_by_form_only() {
        for ok in [
            "us-central1",
            "europe-west10",
            "northamerica-northeast1",
            "mars-north7",
        ] {
            assert!(Region::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "us",
            "us-central",
            "US-central1",
            "us-1",
            "-central1",
            "us--central1",
            "us-central1-",
        ] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_ids() {
        assert!(AccountId::parse("prefect-service-account").is_ok());
        assert!(AccountId::parse("abc").is_err());
        assert!(AccountId::parse("a".repeat(31)).is_err());
        assert!(AccountId::parse("prefect_sa_account").is_err());
    }

    #[test]
    fn roles() {
        assert!(Role::parse("roles/run.admin").is_ok());
        assert!(Role::parse("roles/iam.serviceAccountUser").is_ok());
        assert!(Role::parse("projects/p/roles/custom_1").is_ok());
        assert!(Role::parse("run.admin").is_err());
        assert!(Role::parse("roles/").is_err());
    }

    #[test]
    fn images() {
        for ok in [
            "prefecthq/prefect:3-latest",
            "gcr.io/prefect-project/gcp-weather-image:latest",
            "us-central1-docker.pkg.dev/p/repo/img",
            "localhost:5000/img:1.0",
            "python",
        ] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Prefect/Prefect",
            "img:",
            "img with space",
            "a//b",
            "img@sha1:00",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_for_account() {
        let email = ServiceAccountEmail::for_account(
            &AccountId::parse("prefect-service-account").unwrap(),
            &ProjectId::parse("prefect-project").unwrap(),
        );
        assert_eq!(
            email.member(),
            "serviceAccount:prefect-service-account@prefect-project.iam.gserviceaccount.com"
        );
    }
}
