//! The sandbox's state: one in-memory store shared by every handler, optionally saved as JSON
//! in the sandbox directory so a restart keeps it. The Cloud Run module keeps its own slice
//! (`AppState::run`) with its own locking.
//!
//! Locks are `std::sync::Mutex` and are never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::faults::Faults;
use crate::keys::KeyPool;
use crate::operations::Operation;
use crate::policy::Policy;

/// Eventual-consistency delays, mild by default like Google's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Consistency {
    /// How long a new service account is unknown to `setIamPolicy` ("does not exist").
    #[serde(with = "millis")]
    pub sa_visibility: Duration,
    /// How long a new role grant takes to count in permission checks.
    #[serde(with = "millis")]
    pub grant_delay: Duration,
}

impl Default for Consistency {
    fn default() -> Self {
        Consistency {
            sa_visibility: Duration::from_secs(1),
            grant_delay: Duration::from_secs(1),
        }
    }
}

impl Consistency {
    /// No delays at all.
    pub fn immediate() -> Self {
        Consistency {
            sa_visibility: Duration::ZERO,
            grant_delay: Duration::ZERO,
        }
    }

    /// The grant delay as a chrono duration.
    pub fn grant_delay_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.grant_delay).unwrap_or(chrono::Duration::zero())
    }

    /// The SA visibility delay as a chrono duration.
    pub fn sa_visibility_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.sa_visibility).unwrap_or(chrono::Duration::zero())
    }
}

/// Behaviour switches that tests change at run time through `/_sandbox/...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Eventual-consistency delays.
    pub consistency: Consistency,
    /// How long a long-running operation takes to complete.
    #[serde(with = "millis")]
    pub op_delay: Duration,
    /// `constraints/iam.disableServiceAccountKeyCreation` enforced on every project.
    pub disable_key_creation: bool,
    /// How long after an enable the API still answers SERVICE_DISABLED (propagation).
    #[serde(with = "millis", default)]
    pub api_enable_delay: Duration,
}

/// A project of the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    /// The project id.
    pub id: String,
    /// The project number, as a decimal string.
    pub number: String,
    /// When it was "created" (sandbox start).
    pub create_time: DateTime<Utc>,
    /// The project's IAM policy.
    pub policy: Policy,
    /// Enabled services, e.g. `iam.googleapis.com`.
    pub enabled_services: BTreeSet<String>,
    /// Per-project key-creation org policy (in addition to the global switch).
    #[serde(default)]
    pub disable_key_creation: bool,
    /// When each service was last enabled through Service Usage (for the propagation delay).
    #[serde(default)]
    pub enabled_at: BTreeMap<String, DateTime<Utc>>,
}

/// A service account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// `name@project.iam.gserviceaccount.com`.
    pub email: String,
    /// The project id it lives in.
    pub project: String,
    /// A 21-digit number, also the OAuth2 client id.
    pub unique_id: String,
    /// Optional display name.
    pub display_name: String,
    /// Optional description.
    pub description: String,
    /// Disabled accounts cannot authenticate.
    pub disabled: bool,
    /// Rotated on every change.
    pub etag: String,
    /// When it was created (for the visibility delay).
    pub created_at: DateTime<Utc>,
    /// The account's own IAM policy (who may act as it, manage it).
    pub policy: Policy,
}

/// The public half of a key the sandbox issued; private keys are never kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaKey {
    /// 40 hex characters.
    pub id: String,
    /// Owner account email.
    pub email: String,
    /// SPKI PEM of the public key.
    pub public_key_pem: String,
    /// Validity window start.
    pub valid_after: DateTime<Utc>,
    /// Validity window end.
    pub valid_before: DateTime<Utc>,
    /// Disabled keys cannot authenticate.
    pub disabled: bool,
    /// A Google-managed key (the runtime identity of a Run container), listed as
    /// `SYSTEM_MANAGED`: on Google the container gets such credentials from the metadata server,
    /// never as a user-managed key.
    #[serde(default)]
    pub system_managed: bool,
}

/// An access token handed out by `/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenGrant {
    /// The account it is bound to.
    pub email: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Everything the Google surface (except Cloud Run) stores.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Data {
    /// Projects by id.
    pub projects: BTreeMap<String, Project>,
    /// Service accounts by email.
    pub service_accounts: BTreeMap<String, ServiceAccount>,
    /// Keys by key id.
    pub keys: BTreeMap<String, SaKey>,
    /// Secrets by full name `projects/{number}/secrets/{id}`.
    pub secrets: BTreeMap<String, crate::secrets::Secret>,
    /// Long-running operations by full name.
    pub operations: BTreeMap<String, Operation>,
    /// Access tokens.
    pub tokens: BTreeMap<String, TokenGrant>,
    /// Users, refresh tokens, identity pool providers, the metadata server's account.
    #[serde(default)]
    pub creds: crate::users::CredStore,
    /// Artifact Registry repositories and docker images.
    #[serde(default)]
    pub artifacts: crate::artifacts::Store,
    /// Uploaded sources and builds.
    #[serde(default)]
    pub builds: crate::builds::Store,
}

impl Data {
    /// A project by id or number.
    pub fn project(&self, id_or_number: &str) -> Option<&Project> {
        self.projects
            .get(id_or_number)
            .or_else(|| self.projects.values().find(|p| p.number == id_or_number))
    }

    /// A project by id or number, mutably.
    pub fn project_mut(&mut self, id_or_number: &str) -> Option<&mut Project> {
        let id = self.project(id_or_number)?.id.clone();
        self.projects.get_mut(&id)
    }
}

/// The shared state behind every handler.
pub struct Shared {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The sandbox directory.
    pub dir: PathBuf,
    data: Mutex<Data>,
    settings: Mutex<Settings>,
    denied: Mutex<Vec<Value>>,
    dirty: AtomicBool,
    persist: bool,
    /// Fault injection.
    pub faults: Faults,
    /// Pre-generated RSA keys.
    pub keys: KeyPool,
    /// The Cloud Run slice, owned by the `run` module.
    pub run: crate::run::RunState,
    /// Log entries other modules write for Cloud Logging (`crate::logging`).
    pub logging: crate::logging::Sink,
}

/// A cheap handle on the shared state, given to every handler.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves data that is still consistent enough for a test
    // double; keep serving rather than poisoning every later request.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AppState {
    /// Builds the state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: String,
        dir: PathBuf,
        data: Data,
        settings: Settings,
        faults: Faults,
        keys: KeyPool,
        run: crate::run::RunState,
        persist: bool,
    ) -> Self {
        AppState {
            inner: Arc::new(Shared {
                url,
                dir,
                data: Mutex::new(data),
                settings: Mutex::new(settings),
                denied: Mutex::new(Vec::new()),
                dirty: AtomicBool::new(false),
                persist,
                faults,
                keys,
                run,
                logging: crate::logging::Sink::default(),
            }),
        }
    }

    /// Locks the data for reading.
    pub fn read(&self) -> MutexGuard<'_, Data> {
        lock(&self.data)
    }

    /// Locks the data for a change; marks it to be saved.
    pub fn write(&self) -> MutexGuard<'_, Data> {
        self.dirty.store(true, Ordering::Relaxed);
        lock(&self.data)
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// Changes settings.
    pub fn update_settings(&self, change: impl FnOnce(&mut Settings)) {
        change(&mut lock(&self.settings));
    }

    /// Records a denied call for `/_sandbox/denied`.
    pub fn log_denied(&self, entry: Value) {
        let mut denied = lock(&self.denied);
        // Bounded so a long-running sandbox does not grow without limit.
        if denied.len() >= 1000 {
            denied.remove(0);
        }
        denied.push(entry);
    }

    /// The denied-calls log.
    pub fn denied(&self) -> Vec<Value> {
        lock(&self.denied).clone()
    }

    /// Where state is saved.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Saves the state if persistence is on and something changed since the last save.
    pub fn save_if_dirty(&self) -> anyhow::Result<()> {
        if !self.persist || !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let json = {
            let data = self.read();
            let snapshot = Snapshot {
                data: &data,
                run: self.run.snapshot(),
            };
            serde_json::to_vec_pretty(&snapshot)?
        };
        let tmp = self.dir.join("state.json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, self.state_path())?;
        Ok(())
    }

    /// Marks the state changed (for slices that keep their own locks, like `run`).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }
}

#[derive(Serialize)]
struct Snapshot<'a> {
    data: &'a Data,
    run: Value,
}

/// A saved state read back at start.
#[derive(Deserialize)]
pub struct Restored {
    /// The Google surface's data.
    pub data: Data,
    /// The run module's snapshot.
    #[serde(default)]
    pub run: Value,
}

/// Reads `state.json` from `dir` when it exists.
pub fn load(dir: &std::path::Path) -> anyhow::Result<Option<Restored>> {
    let path = dir.join("state.json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a sandbox state file: {e}", path.display())
        })?)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// A stable 12-digit project number derived from the id (FNV-1a), so restarts agree.
pub fn project_number(id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (100_000_000_000 + hash % 900_000_000_000).to_string()
}

/// Serde for `Duration` as whole milliseconds.
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serializes as milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserializes from milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_numbers_are_stable_and_twelve_digits() {
        let a = project_number("demo-project");
        assert_eq!(a, project_number("demo-project"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, project_number("other-project"));
    }
}
