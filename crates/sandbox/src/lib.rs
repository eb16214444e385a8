//! A local stand-in for the Google Cloud APIs the guide touches.
//!
//! [`start`] serves, on one loopback port, IAM v1, Resource Manager v1, Service Usage v1, Secret
//! Manager v1 and Cloud Run v2/v1 with Google's paths, field names and error bodies, plus an OAuth
//! token endpoint that accepts keys the sandbox issued. Test-only handles live under
//! `/_sandbox/...` (see [`control`]), apart from the Google surface.
//!
//! A fresh sandbox is like a fresh project: `iam`, `cloudresourcemanager` and `serviceusage` are
//! enabled; `run` and `secretmanager` are not until enabled through Service Usage (change with
//! [`Config::enabled_apis`]).

pub mod artifacts;
pub mod auth;
pub mod authz;
pub mod builds;
pub mod cli;
pub mod control;
pub mod crm;
pub mod error;
pub mod executor;
pub mod faults;
mod google;
pub mod hosts;
pub mod iam;
pub mod iamcredentials;
pub mod keys;
pub mod logging;
pub mod metadata;
pub mod methods;
pub mod netns;
pub mod netns_control;
pub mod operations;
pub mod policy;
pub mod quota;
pub mod run;
pub mod secrets;
mod server;
pub mod serviceusage;
pub mod state;
pub mod sts;
pub mod tls;
pub mod users;

use std::path::PathBuf;
use std::time::Duration;

pub use server::{Sandbox, start};
pub use state::{AppState, Consistency};

/// The services enabled in a fresh sandbox project.
pub const DEFAULT_ENABLED_APIS: &[&str] = &[
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "serviceusage.googleapis.com",
];

/// The region the host-side metadata server reports (`instance/region`).
pub const HOST_METADATA_REGION: &str = "us-central1";

/// The project a sandbox has when none is named.
pub const DEFAULT_PROJECT: &str = "sandbox-project";

/// How to start a sandbox.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Directory for the operator key, the env file and (with `persist`) the state.
    pub dir: PathBuf,
    /// Projects that exist (default: [`DEFAULT_PROJECT`]).
    pub projects: Vec<String>,
    /// Fault injection spec (see [`faults`]).
    pub faults: faults::FaultSpec,
    /// Eventual-consistency delays.
    pub consistency: Consistency,
    /// Services enabled at start in every project.
    pub enabled_apis: Vec<String>,
    /// How long long-running operations take.
    pub op_delay: Duration,
    /// How long a just-enabled API still answers SERVICE_DISABLED (0: at once; tests of the
    /// client's propagation waits raise it, also at run time via `/_sandbox/settings`).
    pub api_enable_delay: Duration,
    /// Enforce `constraints/iam.disableServiceAccountKeyCreation` from the start.
    pub disable_key_creation: bool,
    /// Save state in `dir/state.json` and load it at start.
    pub persist: bool,
    /// RSA keys to keep pre-generated for key creation.
    pub key_pool: usize,
    /// Container image → local command table for the Cloud Run executor.
    pub images: executor::ImageMap,
}

impl Config {
    /// Defaults: a free port, one project, mild consistency delays, 500 ms operations.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Config {
            port: 0,
            dir: dir.into(),
            projects: vec![DEFAULT_PROJECT.to_owned()],
            faults: faults::FaultSpec::default(),
            consistency: Consistency::default(),
            enabled_apis: DEFAULT_ENABLED_APIS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            op_delay: Duration::from_millis(500),
            api_enable_delay: Duration::ZERO,
            disable_key_creation: false,
            persist: false,
            key_pool: 2,
            images: executor::ImageMap::with_defaults(executor::Placeholders::from_env()),
        }
    }
}
