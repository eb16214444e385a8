//! Carrying out a plan: steps run as soon as the steps they depend on have finished (independent
//! steps in parallel), each reported as it ends. Outputs that later steps need (a new key, a new
//! block's id) pass in memory through [`Outputs`]; a new private key never leaves it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::Result;
use futures::stream::{FuturesUnordered, StreamExt as _};
use secrecy::SecretString;
use serde::Serialize;
use tokio::sync::Mutex;

use super::context::Context;
use super::exec;
use super::plan::{Action, Address, Mode, Plan, Step};

/// What the steps of one apply hand to each other.
#[derive(Default)]
pub struct Outputs {
    /// The JSON key file created by a key step, by the step's address.
    pub keys: BTreeMap<Address, SecretString>,
    /// The id of the block a step created, by the step's address (a later step's template
    /// names it).
    pub ids: BTreeMap<Address, bootstrap_spec::ids::BlockId>,
    /// Whether this apply granted a role (later steps then wait out IAM propagation).
    pub granted: bool,
    /// The flows this apply upserted, by name: the deployment steps of one new flow run at
    /// once and share one `POST /flows/` instead of sending one each.
    pub flows: BTreeMap<String, std::sync::Arc<tokio::sync::OnceCell<uuid::Uuid>>>,
}

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub address: Address,
    pub action: Action,
    pub outcome: Outcome,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Replaced,
    Deleted,
    /// Nothing to do after all (someone else made it so meanwhile).
    Unchanged,
    Failed,
    /// Not started because a step it depends on failed.
    Skipped,
}

/// The record of an apply.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Changelog {
    pub entries: Vec<Entry>,
}

impl Changelog {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn summary(&self, mode: Mode) -> String {
        let n = |o: Outcome| self.entries.iter().filter(|e| e.outcome == o).count();
        match mode {
            Mode::Apply => format!(
                "Apply complete: {} created, {} updated, {} replaced, {} deleted.",
                n(Outcome::Created),
                n(Outcome::Updated),
                n(Outcome::Replaced),
                n(Outcome::Deleted)
            ),
            Mode::Destroy => format!(
                "Destroy complete: {} deleted, {} updated.",
                n(Outcome::Deleted),
                n(Outcome::Updated)
            ),
        }
    }
}

/// An apply that stopped: what was done, and why it stopped.
pub struct Failure {
    pub log: Changelog,
    pub error: anyhow::Error,
}

/// What apply tells its caller as it goes (uv's reporters: the engine says what happened, the
/// CLI decides how it looks). Called from the apply's own task, never concurrently.
pub trait Reporter {
    /// The steps running now.
    fn running(&self, in_flight: &BTreeSet<Address>);
    /// A step ended (or was skipped).
    fn done(&self, entry: &Entry);
    /// The apply ended.
    fn finish(&self);
}

fn outcome_for(action: Action, did_something: bool) -> Outcome {
    if !did_something {
        return Outcome::Unchanged;
    }
    match action {
        Action::Create => Outcome::Created,
        Action::Update => Outcome::Updated,
        Action::Replace => Outcome::Replaced,
        Action::Delete => Outcome::Deleted,
    }
}

/// Prefect writes (steps) in flight at once (see [`PrefectWrites`]).
pub const PREFECT_WRITE_CONCURRENCY: usize = 1;

/// How many Prefect writes run at once. Independent Prefect writes (one per deployment) would
/// otherwise all start at once, and a self-hosted server on SQLite answers 503 (or resets
/// connections) at ~200 concurrent ones. SQLite has one writer, and two upserts that each read
/// before writing collide (`SQLITE_BUSY_SNAPSHOT`, which Prefect's server answers with 503 at
/// once rather than waiting): the loser retries after 0.25-0.5 s, longer than a write takes
/// (about 0.1 s). Measured by ./bench's scale section (BENCHMARKS.md, "Apply and the Prefect
/// server's one writer"), the first apply of 100 deployments: 4 in flight 22.4 s (22 retries
/// after 503), 4 until the first 503 and then 1: 21.9-22.8 s, 1 in flight: 18.2-20.8 s (4-6
/// retries, after 503s the server's own scheduler causes). One at a time was the fastest.
struct PrefectWrites<S> {
    in_flight: usize,
    /// Ready Prefect steps waiting for a slot, in plan order.
    queue: std::collections::VecDeque<S>,
}

impl<S> PrefectWrites<S> {
    fn new() -> Self {
        Self {
            in_flight: 0,
            queue: Default::default(),
        }
    }

    /// A write ended.
    fn ended(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The queued steps that may start now.
    fn start(&mut self) -> Vec<S> {
        let mut out = Vec::new();
        while self.in_flight < PREFECT_WRITE_CONCURRENCY {
            let Some(step) = self.queue.pop_front() else {
                break;
            };
            self.in_flight += 1;
            out.push(step);
        }
        out
    }
}

/// Runs the plan's steps in dependency order, in parallel where independent. Stops starting
/// new steps after the first failure, lets the running ones finish, and reports all.
pub async fn apply(
    ctx: &Context,
    plan: &Plan,
    progress: &dyn Reporter,
) -> Result<Changelog, Failure> {
    let outputs = Mutex::new(Outputs::default());
    let mut log = Changelog::default();
    let mut done: BTreeSet<Address> = BTreeSet::new();
    let mut failed: Option<anyhow::Error> = None;
    let mut pending: Vec<&Step> = plan.steps.iter().collect();
    let mut in_flight_names: BTreeSet<Address> = BTreeSet::new();
    let mut prefect = PrefectWrites::new();
    let mut running = FuturesUnordered::new();
    let planned: BTreeSet<&Address> = plan.steps.iter().map(|s| &s.address).collect();

    loop {
        if failed.is_none() {
            let (ready, rest): (Vec<&Step>, Vec<&Step>) = pending.into_iter().partition(|s| {
                s.depends_on
                    .iter()
                    .all(|d| done.contains(d) || !planned.contains(d))
            });
            pending = rest;
            let (writes, google): (Vec<&Step>, Vec<&Step>) =
                ready.into_iter().partition(|s| s.op.is_prefect());
            prefect.queue.extend(writes);
            // Google's steps are few and are not bounded.
            for step in google.into_iter().chain(prefect.start()) {
                in_flight_names.insert(step.address.clone());
                let outputs = &outputs;
                running.push(async move {
                    let t = Instant::now();
                    let r = exec::run(ctx, plan, step, outputs).await;
                    (step, r, t.elapsed())
                });
            }
        }
        progress.running(&in_flight_names);
        let Some((step, result, took)) = running.next().await else {
            break;
        };
        in_flight_names.remove(&step.address);
        if step.op.is_prefect() {
            prefect.ended();
        }
        let entry = match result {
            Ok(did) => {
                done.insert(step.address.clone());
                Entry {
                    address: step.address.clone(),
                    action: step.action,
                    outcome: outcome_for(step.action, did),
                    seconds: took.as_secs_f64(),
                    error: None,
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                if failed.is_none() {
                    failed = Some(e.context(format!(
                        "{} could not be {}",
                        step.address,
                        verb(step.action)
                    )));
                }
                Entry {
                    address: step.address.clone(),
                    action: step.action,
                    outcome: Outcome::Failed,
                    seconds: took.as_secs_f64(),
                    error: Some(message),
                }
            }
        };
        progress.done(&entry);
        log.entries.push(entry);
    }
    // Steps never started: those still waiting on others, and ready writes left in the queue.
    for step in prefect.queue.into_iter().chain(pending) {
        let entry = Entry {
            address: step.address.clone(),
            action: step.action,
            outcome: Outcome::Skipped,
            seconds: 0.0,
            error: None,
        };
        progress.done(&entry);
        log.entries.push(entry);
    }
    progress.finish();
    match failed {
        None => Ok(log),
        Some(error) => Err(Failure {
            log,
            error: error.context("apply stopped; what finished is kept, and running apply again continues from there"),
        }),
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Replace => "replaced",
        Action::Delete => "deleted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (./bench's scale section): four deployment upserts at once on a SQLite
    /// server met 503s whose backoff cost more than the parallel writes saved. One at a time,
    /// in plan order; the next starts when one ends.
    #[test]
    fn prefect_writes_run_one_at_a_time_in_plan_order() {
        let mut w = PrefectWrites::new();
        w.queue.extend(0..5);
        assert_eq!(w.start(), [0]);
        assert!(w.start().is_empty(), "the one slot is taken");
        w.ended();
        assert_eq!(w.start(), [1]);
        w.ended();
        w.ended();
        assert_eq!(
            w.start(),
            [2],
            "never more than one, however often ended is called"
        );
    }
}
