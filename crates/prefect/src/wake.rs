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

/// The sweep's period in seconds: the sweep automation calls the waker once per window, plus up
/// to the triggers service's 5 s evaluation period ([`sweep_automation`] has the whole bound).
pub const SWEEP_WITHIN_SECONDS: u64 = 60;

/// The event the sweep automation expects. Nothing emits it: the sweep is a timer, and Prefect
/// has no timer trigger (see [`sweep_automation`]).
pub const SWEEP_NEVER_EVENT: &str = "bootstrap.sweep.never-emitted";

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

/// The sweep automation: a timer that calls the waker once every window, whatever the pool
/// is doing. The waker wakes the pool only when one of its runs is SCHEDULED and due, so a call
/// with nothing to do is a ~50 ms no-op; a wake call that failed (waker down, a lost event) is
/// made good by the next window.
///
/// Prefect has no timer trigger, so this is a Proactive trigger, with no `for_each` and no
/// `after`, that expects an event nothing emits ([`SWEEP_NEVER_EVENT`]). Prefect 3.9.1's
/// `prefect/server/events/triggers.py`: `evaluate_proactive_triggers` runs every
/// `PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY` (5 s); `proactive_evaluation` keeps one bucket
/// of `within` seconds open; `evaluate` fires a Proactive trigger when the bucket has ended with
/// fewer than `threshold` events and then `start_new_bucket`s the next window from
/// `max(bucket.end, now)`. With an event that never comes every bucket fires, so consecutive
/// calls are at most `within` + 5 s apart (`now` there is shifted by `get_events_clock_offset`,
/// the lag of the triggers service behind the event stream: a lag that grows during a window
/// stretches it by as much).
///
/// Why not "no run went Pending in the window" (`expect: [prefect.flow-run.Pending]`, the
/// first design): a window that saw a Pending event is not rolled over. At its next evaluation
/// `remove_buckets_exceeding_threshold` deletes it (count >= threshold), nothing is evaluated
/// and `proactive_evaluation` schedules the next run a whole `within` later; only that run opens
/// a new bucket, which fires one `within` after that. So after a run went Pending the sweep was
/// silent for up to three windows (180 s), longer than its e2e's 150 s: the run before the
/// missed one had just gone Pending. Measured on Prefect 3.9.1: a Pending event 20 s into a
/// window delayed the next call by 3 windows, while a trigger expecting nothing called on every
/// window.
///
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
            "Sweep: calls the waker of work pool `{pool}` every {within_seconds} s; it wakes the pool if a run is due (made by bootstrap)"
        ),
        enabled: true,
        tags: vec![],
        trigger: json!({
            "type": "event",
            "posture": "Proactive",
            "expect": [SWEEP_NEVER_EVENT],
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

    /// Regression (issue #19): the sweep expected `prefect.flow-run.Pending`, so a window that
    /// saw a run go Pending silenced it for up to three windows. It is a timer now: a Proactive
    /// trigger with no `after` or `for_each` (one bucket, rolled over after every window) that
    /// expects an event nothing emits. The e2e that shows it firing is
    /// `scale_to_zero::a_run_the_waker_missed_is_picked_up_by_the_sweep`.
    #[test]
    fn the_sweep_is_a_timer_not_silenced_by_runs_going_pending() {
        let a = sweep_automation("s", "p", Uuid::nil(), SWEEP_WITHIN_SECONDS);
        let t = &a.trigger;
        assert_eq!(t["expect"], json!([SWEEP_NEVER_EVENT]));
        assert!(!SWEEP_NEVER_EVENT.starts_with("prefect."));
        assert_eq!(t["after"], json!([]));
        assert_eq!(t["for_each"], json!([]));
        assert_eq!(t["threshold"], 1);
        assert_eq!(t["within"], SWEEP_WITHIN_SECONDS);
    }
}
