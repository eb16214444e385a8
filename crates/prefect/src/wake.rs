//! The Prefect side of `worker.scale_to_zero`'s wake path (README, "Scale to zero"): the
//! Webhook block that calls the waker and the two automations that use it. Pure builders, so
//! the engine plans them and the tests run the very same bodies against a real server.
//!
//! Shapes follow Prefect 3.9.1's server schemas (`prefect/server/events/schemas/automations.py`
//! `EventTrigger`, `actions.py` `CallWebhook`, `prefect/blocks/webhook.py` `Webhook`).

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::AutomationSpec;
use crate::models::SecretValue;

/// The Webhook block type's slug (registered by every Prefect server).
pub const WEBHOOK_BLOCK_TYPE: &str = "webhook";

/// The seconds of one sweep window: while the pool is idle the sweep calls the waker once per
/// window (plus the triggers service's 5 s evaluation period).
pub const SWEEP_WITHIN_SECONDS: u64 = 60;

/// The Webhook block's data: `POST <url>` with `Authorization: Bearer <secret>`. `url` and
/// `headers` are secret fields of the block (`SecretStr`, `SecretDict`), so the API returns them
/// masked unless asked to include secrets.
pub fn webhook_block_data(url: &str, secret: &SecretString) -> SecretValue {
    SecretValue::new(json!({
        "method": "POST",
        "url": url,
        "headers": {"Authorization": format!("Bearer {}", secret.expose_secret())},
        // The waker runs on a private (or, in the sandbox, loopback) address on purpose.
        "allow_private_urls": true,
        "verify": true,
    }))
}

/// Related-resource match: events of runs in the work pool named `pool`.
fn in_pool(pool: &str) -> Value {
    json!({"prefect.resource.role": "work-pool", "prefect.resource.name": pool})
}

fn call_webhook(block_id: Uuid) -> Value {
    json!({"type": "call-webhook", "block_document_id": block_id, "payload": ""})
}

/// The wake automation: a run becoming Scheduled, or marked Late by Prefect's late-runs
/// service, in `pool` calls the waker at once.
pub fn wake_automation(name: &str, pool: &str, block_id: Uuid) -> AutomationSpec {
    AutomationSpec {
        name: name.to_owned(),
        description: format!(
            "Wakes the worker pool of work pool `{pool}` when a run is scheduled (made by bootstrap)"
        ),
        enabled: true,
        tags: vec![],
        trigger: json!({
            "type": "event",
            "posture": "Reactive",
            "expect": ["prefect.flow-run.Scheduled", "prefect.flow-run.Late"],
            "after": [],
            "for_each": [],
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": in_pool(pool),
            "threshold": 1,
            "within": 0,
        }),
        actions: vec![call_webhook(block_id)],
    }
}

/// The sweep automation: Proactive with no `for_each`, so Prefect's triggers service fires it
/// after every window of `within_seconds` in which no run of `pool` went Pending, calling the
/// waker again; a wake call that failed (waker down, lost event) is retried by the next window.
/// Proactive triggers need `within` of at least 10 s.
pub fn sweep_automation(
    name: &str,
    pool: &str,
    block_id: Uuid,
    within_seconds: u64,
) -> AutomationSpec {
    AutomationSpec {
        name: name.to_owned(),
        description: format!(
            "Sweep: calls the waker of work pool `{pool}` every {within_seconds} s while no run goes Pending (made by bootstrap)"
        ),
        enabled: true,
        tags: vec![],
        trigger: json!({
            "type": "event",
            "posture": "Proactive",
            "expect": ["prefect.flow-run.Pending"],
            "after": [],
            "for_each": [],
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": in_pool(pool),
            "threshold": 1,
            "within": within_seconds.max(10),
        }),
        actions: vec![call_webhook(block_id)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_data_carries_the_secret_only_when_exposed() {
        let d = webhook_block_data("http://w/wake", &SecretString::from("s3cr3t-value-123456"));
        assert!(!format!("{d:?}").contains("s3cr3t"));
        assert_eq!(
            d.expose()["headers"]["Authorization"],
            "Bearer s3cr3t-value-123456"
        );
    }

    #[test]
    fn the_sweep_window_is_never_below_prefects_proactive_minimum() {
        let a = sweep_automation("s", "p", Uuid::nil(), 3);
        assert_eq!(a.trigger["within"], 10);
        assert_eq!(a.trigger["posture"], "Proactive");
        assert_eq!(a.trigger["match_related"]["prefect.resource.name"], "p");
    }
}
