//! Automations (`/api/automations/`): read by name, create, replace, delete. The trigger and
//! actions are kept as JSON: the server validates them against its own schemas
//! (`prefect/server/events/schemas/automations.py`, `actions.py`), and the engine diffs the
//! keys it owns.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::work_pools::to_value;
use crate::client::{OptionalExt, PrefectClient};
use crate::error::PrefectError;

/// An automation as the server returns it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Automation {
    /// Server id.
    pub id: Uuid,
    /// Its name (not unique on the server; this tool keeps one per name).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Whether the server evaluates it.
    pub enabled: bool,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The trigger (an `event` trigger for this tool).
    pub trigger: Value,
    /// What happens when it fires.
    #[serde(default)]
    pub actions: Vec<Value>,
    /// What happens when a trigger's state becomes Triggered.
    #[serde(default)]
    pub actions_on_trigger: Vec<Value>,
    /// What happens when a trigger's state becomes Resolved.
    #[serde(default)]
    pub actions_on_resolve: Vec<Value>,
}

/// The body of a create or a replace (`AutomationCreate` / `AutomationUpdate`, both
/// `extra="forbid"`: no other keys).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AutomationSpec {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Whether the server evaluates it.
    pub enabled: bool,
    /// Tags.
    pub tags: Vec<String>,
    /// The trigger.
    pub trigger: Value,
    /// What happens when it fires.
    pub actions: Vec<Value>,
}

impl PrefectClient {
    /// Every automation with this exact name (oldest first).
    pub async fn automations_by_name(&self, name: &str) -> Result<Vec<Automation>, PrefectError> {
        let body = json!({"automations": {"name": {"any_": [name]}}, "sort": "CREATED_DESC", "limit": 200});
        let mut found: Vec<Automation> = self
            .post(
                "/automations/filter",
                &body,
                &format!("automation `{name}`"),
            )
            .await?;
        found.reverse();
        Ok(found)
    }

    /// The automation with this id.
    pub async fn automation(&self, id: Uuid) -> Result<Option<Automation>, PrefectError> {
        self.get(&format!("/automations/{id}"), &format!("automation {id}"))
            .await
            .optional()
    }

    /// Creates an automation.
    pub async fn create_automation(
        &self,
        spec: &AutomationSpec,
    ) -> Result<Automation, PrefectError> {
        let body = to_value(spec)?;
        self.post(
            "/automations/",
            &body,
            &format!("automation `{}`", spec.name),
        )
        .await
    }

    /// Replaces an automation's fields (`PUT`, 204).
    pub async fn update_automation(
        &self,
        id: Uuid,
        spec: &AutomationSpec,
    ) -> Result<(), PrefectError> {
        let body = to_value(spec)?;
        self.no_content(
            Method::PUT,
            &format!("/automations/{id}"),
            Some(&body),
            &format!("automation `{}`", spec.name),
        )
        .await
    }

    /// Deletes an automation: `false` when it was already gone.
    pub async fn delete_automation(&self, id: Uuid) -> Result<bool, PrefectError> {
        self.delete(&format!("/automations/{id}"), &format!("automation {id}"))
            .await
    }
}
