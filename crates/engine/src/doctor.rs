//! `bootstrap doctor`: preflight checks before `apply`, reported on one screen.
//!
//! Checks (independent ones concurrently, each with a deadline):
//! Google credentials (who, from where), the project exists, which of the plan's APIs are
//! disabled (a note, since apply enables them, unless enabling is not permitted), every IAM
//! permission apply needs ([`required_permissions`], tested with `testIamPermissions`, the
//! missing ones listed with the roles that grant them), the region, and on the Prefect side:
//! the API answers `/health`, the key (or its absence) is accepted, the `gcp-credentials`
//! block type is registered, the work pool type's default base job template is offered.
//!
//! # JSON (`--json`)
//! An array with one object per check, always in this order and always all of them
//! (a check that could not run because an earlier one failed has `ok: false` and says so):
//! ```json
//! [{"check": "credentials", "ok": true, "detail": "...", "hint": null}, ...]
//! ```
//! - `check`: `credentials`, `project`, `apis`, `permissions`, `region`, `prefect_api`,
//!   `prefect_auth`, `block_type`, `job_template`;
//! - `ok`: whether apply can go ahead as far as this check can tell;
//! - `detail`: what was found, one line;
//! - `hint`: what to do about a failure (may span lines), or `null`.

mod credentials;
mod gcp;
mod permissions;
mod prefect;
mod render;

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use bootstrap_spec::Spec;
use serde::Serialize;

pub use credentials::{describe as describe_credentials, member as credentials_member};
pub use permissions::{ENABLE_SERVICES, Evaluation, Needed, evaluate, required_permissions};

/// The ids of the checks, in report order.
pub const CHECKS: &[&str] = &[
    "credentials",
    "project",
    "apis",
    "permissions",
    "region",
    "prefect_api",
    "prefect_auth",
    "block_type",
    "job_template",
];

/// The outcome of one check (one line of the report, one object of `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A stable id, one of [`CHECKS`].
    pub check: &'static str,
    /// Whether apply can go ahead as far as this check can tell.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    pub hint: Option<String>,
    /// It could not run because an earlier check failed (shown apart; `ok` is false).
    #[serde(skip)]
    pub not_checked: bool,
}

impl Check {
    /// A check that passed.
    pub fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Check {
            check,
            ok: true,
            detail: detail.into(),
            hint: None,
            not_checked: false,
        }
    }

    /// A check that failed, with an optional hint.
    pub fn fail(check: &'static str, detail: impl Into<String>, hint: Option<String>) -> Self {
        Check {
            check,
            ok: false,
            detail: detail.into(),
            hint,
            not_checked: false,
        }
    }

    /// A check that could not run because `because` failed first.
    pub fn not_checked(check: &'static str, because: &str) -> Self {
        Check {
            not_checked: true,
            ..Check::fail(check, format!("not checked: {because}"), None)
        }
    }
}

/// All checks, in [`CHECKS`] order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when every check passed (the command exits 0).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The documented JSON array (see the module docs).
    pub fn to_json(&self) -> String {
        // A Vec of plain strings and bools always serializes.
        serde_json::to_string_pretty(&self.checks).unwrap_or_else(|_| "[]".into())
    }

    /// The one-screen human report; `heading` names the plan, `color` enables ANSI styles.
    pub fn human(&self, heading: &str, color: bool) -> String {
        render::human(self, heading, color)
    }
}

/// How the checks run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL for every Google API (`--gcp-endpoint`, the sandbox).
    pub gcp_endpoint: Option<String>,
    /// How long any one check may take.
    pub deadline: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gcp_endpoint: None,
            deadline: Duration::from_secs(20),
        }
    }
}

/// Runs every check against the live APIs. Fails only on bad input (an invalid
/// `--gcp-endpoint`); everything the APIs answer, or fail to answer, is a line of the report.
pub async fn run(spec: &Spec, options: &Options) -> Result<Report> {
    let env = |k: &str| std::env::var(k).ok();
    let prefect_setup = prefect::setup(spec);
    // Which secret steps apply plans depends on whether a Prefect API key is configured.
    let has_api_key = prefect_setup
        .as_ref()
        .map(|c| c.config().api_key.is_some())
        .unwrap_or(spec.prefect.api_key.is_some());
    let (gcp_checks, prefect_checks) = tokio::join!(
        gcp::run(spec, options, has_api_key, &env),
        prefect::run(spec, prefect_setup, options.deadline),
    );
    let mut checks = gcp_checks?.to_vec();
    checks.push(region(spec));
    checks.extend(prefect_checks);
    Ok(Report { checks })
}

fn region(spec: &Spec) -> Check {
    let region = spec.gcp.region.as_str();
    if bootstrap_spec::ids::KNOWN_REGIONS.contains(&region) {
        Check::pass("region", format!("{region} (a Cloud Run region)"))
    } else {
        Check::pass(
            "region",
            format!("{region} (not in the list of Cloud Run regions this tool knows)"),
        )
    }
}

/// Runs `check` with a deadline; past it, the check fails saying so.
pub(crate) async fn within(
    id: &'static str,
    deadline: Duration,
    check: impl Future<Output = Check>,
) -> Check {
    match tokio::time::timeout(deadline, check).await {
        Ok(c) => c,
        Err(_) => Check::fail(
            id,
            format!("no answer within {}", seconds(deadline)),
            Some("check the network path to the API, then run doctor again".into()),
        ),
    }
}

/// `20 s`, or `250 ms` below a second.
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_past_its_deadline_fails_and_says_so() {
        let c = within("project", Duration::from_millis(20), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Check::pass("project", "late")
        })
        .await;
        assert!(!c.ok);
        assert_eq!(c.detail, "no answer within 20 ms");
    }

    #[test]
    fn json_is_the_documented_array() {
        let r = Report {
            checks: vec![
                Check::pass("credentials", "me"),
                Check::fail("project", "gone", Some("fix it".into())),
            ],
        };
        assert!(!r.ok());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"check": "credentials", "ok": true, "detail": "me", "hint": null},
                {"check": "project", "ok": false, "detail": "gone", "hint": "fix it"},
            ])
        );
    }
}
