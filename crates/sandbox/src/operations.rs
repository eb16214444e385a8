//! Long-running operations (`google.longrunning.Operation`): `{name, metadata, done, response |
//! error}`. An operation reports `done` once its outcome is known and its ready time has passed;
//! the ready time is `now + op_delay` at creation, and `/_sandbox/operations:finish` pulls every
//! ready time to now.
//!
//! Operations are keyed by their full name, so each API chooses its own naming
//! (`operations/acat.p2-...` for Service Usage, `projects/p/locations/r/operations/uuid` for Run)
//! and its own GET route, and calls [`get`] here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// How an operation ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// `response`: the resulting resource (with its `@type`).
    Response(Value),
    /// `error`: a `google.rpc.Status`.
    Error(Value),
}

impl Outcome {
    /// A failed outcome from an API error.
    pub fn from_error(error: &ApiError) -> Self {
        Outcome::Error(error.rpc_status())
    }
}

/// A stored operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    /// Full name.
    pub name: String,
    /// Metadata, with its `@type`.
    pub metadata: Option<Value>,
    /// Not done before this time.
    pub ready_at: DateTime<Utc>,
    /// `None` while the owner has not decided the outcome (it calls [`finish`] later).
    pub outcome: Option<Outcome>,
}

impl Operation {
    /// Whether it is done at `now`.
    pub fn done(&self, now: DateTime<Utc>) -> bool {
        self.outcome.is_some() && self.ready_at <= now
    }

    /// The wire form at `now`.
    pub fn to_json(&self, now: DateTime<Utc>) -> Value {
        let done = self.done(now);
        let mut out = json!({ "name": self.name, "done": done });
        if let Some(metadata) = &self.metadata {
            out["metadata"] = metadata.clone();
        }
        if done {
            match &self.outcome {
                Some(Outcome::Response(response)) => out["response"] = response.clone(),
                Some(Outcome::Error(error)) => out["error"] = error.clone(),
                None => {}
            }
        }
        out
    }
}

/// Starts an operation that completes after the configured delay with `outcome` (or, with
/// `None`, when its owner calls [`finish`]). Returns the wire form to send back.
pub fn create(
    state: &AppState,
    name: &str,
    metadata: Option<Value>,
    outcome: Option<Outcome>,
) -> Value {
    let delay =
        chrono::Duration::from_std(state.settings().op_delay).unwrap_or(chrono::Duration::zero());
    let now = Utc::now();
    let op = Operation {
        name: name.to_owned(),
        metadata,
        ready_at: now + delay,
        outcome,
    };
    let json = op.to_json(now);
    state.write().operations.insert(name.to_owned(), op);
    json
}

/// Sets the outcome of an operation created without one. Unknown names are ignored (the
/// operation may have been deleted).
pub fn finish(state: &AppState, name: &str, outcome: Outcome) {
    if let Some(op) = state.write().operations.get_mut(name) {
        op.outcome = Some(outcome);
    }
}

/// Replaces an operation's metadata (e.g. the Run resource as it progresses).
pub fn set_metadata(state: &AppState, name: &str, metadata: Value) {
    if let Some(op) = state.write().operations.get_mut(name) {
        op.metadata = Some(metadata);
    }
}

/// The wire form of an operation, or 404.
pub fn get(state: &AppState, name: &str) -> Result<Value, ApiError> {
    let data = state.read();
    data.operations
        .get(name)
        .map(|op| op.to_json(Utc::now()))
        .ok_or_else(|| ApiError::not_found(format!("Operation {name} not found.")))
}

/// Whether an operation is done now (false for unknown names).
pub fn is_done(state: &AppState, name: &str) -> bool {
    state
        .read()
        .operations
        .get(name)
        .is_some_and(|op| op.done(Utc::now()))
}

/// Pulls every pending operation's ready time to now; returns how many were pending.
pub fn finish_all_now(state: &AppState) -> usize {
    let now = Utc::now();
    let mut data = state.write();
    let mut count = 0;
    for op in data.operations.values_mut() {
        if op.ready_at > now {
            op.ready_at = now;
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_done_before_ready_time_or_without_outcome() {
        let now = Utc::now();
        let mut op = Operation {
            name: "operations/x".into(),
            metadata: None,
            ready_at: now + chrono::Duration::seconds(5),
            outcome: Some(Outcome::Response(json!({"a": 1}))),
        };
        assert_eq!(op.to_json(now)["done"], false);
        assert!(op.to_json(now).get("response").is_none());
        assert_eq!(
            op.to_json(now + chrono::Duration::seconds(5))["response"]["a"],
            1
        );
        op.outcome = None;
        assert_eq!(
            op.to_json(now + chrono::Duration::seconds(10))["done"],
            false
        );
    }
}
