//! What the sandbox stores for Cloud Run: the client's JSON plus server-side facts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a parent (project + location) lives, parsed from a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    /// Project id (or number) as the path gave it.
    pub project: String,
    /// Region.
    pub location: String,
}

impl Parent {
    /// `projects/{p}/locations/{l}`.
    pub fn name(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.location)
    }
}

/// The readiness a resource settles to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settled {
    /// Still reconciling (a service waiting for its container).
    Pending,
    /// Ready.
    Ready,
    /// Failed with a `reason` enum value and a message.
    Failed {
        /// A `GoogleCloudRunV2Condition.reason` value.
        reason: String,
        /// The message.
        message: String,
    },
}

/// Metadata common to Run resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Full resource name.
    pub name: String,
    /// Parent.
    pub parent: Parent,
    /// Short id.
    pub id: String,
    /// UUID.
    pub uid: String,
    /// Bumped by every spec change.
    pub generation: i64,
    /// Created.
    pub create_time: DateTime<Utc>,
    /// Last changed.
    pub update_time: DateTime<Utc>,
    /// Who created it.
    pub creator: String,
    /// Who changed it last.
    pub last_modifier: String,
    /// Changes with every update.
    pub etag: String,
    /// Not settled (reconciling) before this time.
    pub settle_at: DateTime<Utc>,
}

/// A Run v2 job (v1 jobs are the same records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRec {
    /// Common metadata.
    pub meta: Meta,
    /// The client's Job JSON (spec fields only).
    pub body: Value,
    /// What it settles to.
    pub settled: Settled,
    /// Executions started so far.
    pub execution_count: i64,
    /// The newest execution's full name.
    pub latest_execution: Option<String>,
}

/// How a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting to start.
    Pending,
    /// A process runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Out of retries.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// One task of an execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRec {
    /// 0-based index.
    pub index: i64,
    /// State.
    pub state: TaskState,
    /// Retries so far (attempts - 1).
    pub retried: i64,
    /// Exit code of the last attempt.
    pub exit_code: Option<i32>,
    /// Signal that ended the last attempt.
    pub term_signal: Option<i32>,
    /// Message of the last attempt's end.
    pub message: Option<String>,
    /// First start.
    pub start_time: Option<DateTime<Utc>>,
    /// End.
    pub completion_time: Option<DateTime<Utc>>,
}

/// One execution of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRec {
    /// Common metadata (generation stays 1).
    pub meta: Meta,
    /// The job's full name.
    pub job: String,
    /// The job's short id.
    pub job_id: String,
    /// The task template after overrides.
    pub template: Value,
    /// Labels and annotations copied from the job's execution template.
    pub labels: Value,
    /// Annotations.
    pub annotations: Value,
    /// Launch stage of the job.
    pub launch_stage: String,
    /// Tasks.
    pub tasks: Vec<TaskRec>,
    /// Maximum tasks run at once.
    pub parallelism: i64,
    /// Set by `:cancel`.
    pub cancelled: bool,
    /// When the first task started.
    pub start_time: Option<DateTime<Utc>>,
    /// When every task ended.
    pub completion_time: Option<DateTime<Utc>>,
    /// Set when the execution could not start at all (e.g. secret access).
    pub failure: Option<String>,
}

impl ExecRec {
    /// Count of tasks in `state`.
    pub fn count(&self, state: TaskState) -> i64 {
        self.tasks.iter().filter(|t| t.state == state).count() as i64
    }
}

/// The revision bookkeeping a service and a worker pool share: both make a new revision when
/// their template changes, and report the newest created and the newest ready one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revisions {
    /// Revisions created so far.
    pub revision_seq: u32,
    /// The newest revision's short name.
    pub latest_created_revision: String,
    /// The newest revision that became ready.
    pub latest_ready_revision: Option<String>,
    /// What the newest revision settled to.
    pub settled: Settled,
}

impl Revisions {
    /// The first revision of the resource `id`, not yet settled.
    pub fn first(id: &str) -> Self {
        Revisions {
            revision_seq: 1,
            latest_created_revision: revision_name(id, 1),
            latest_ready_revision: None,
            settled: Settled::Pending,
        }
    }

    /// A spec change: a new revision when `new_revision` (a changed template, or
    /// `forceNewRevision`), and the newest revision reconciles again either way.
    pub fn respec(&mut self, id: &str, new_revision: bool) {
        if new_revision {
            self.revision_seq += 1;
            self.latest_created_revision = revision_name(id, self.revision_seq);
        }
        self.settled = Settled::Pending;
    }

    /// Records how the newest revision settled: once ready, it is the latest ready one.
    pub fn settle(&mut self, outcome: Result<(), &Settled>) {
        match outcome {
            Ok(()) => {
                self.settled = Settled::Ready;
                self.latest_ready_revision = Some(self.latest_created_revision.clone());
            }
            Err(settled) => self.settled = settled.clone(),
        }
    }

    /// After a restart nothing runs: a revision still pending will not become ready.
    fn interrupt(&mut self) {
        if self.settled == Settled::Pending {
            self.settled = Settled::Failed {
                reason: "REVISION_FAILED".into(),
                message: "The sandbox restarted before the revision became ready.".into(),
            };
        }
    }
}

/// `{id}-{seq:05}-{3 random hex}`, as Google names revisions.
fn revision_name(id: &str, seq: u32) -> String {
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..3].to_owned();
    format!("{id}-{seq:05}-{suffix}")
}

/// A Run v2 service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRec {
    /// Common metadata.
    pub meta: Meta,
    /// The client's Service JSON (spec fields only).
    pub body: Value,
    /// Its revisions (flattened: the stored state keeps one level of fields).
    #[serde(flatten)]
    pub revisions: Revisions,
    /// The `.run.app` URL.
    pub uri: String,
}

/// Every stored Run resource.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Store {
    /// Services by full name.
    pub services: BTreeMap<String, ServiceRec>,
    /// Jobs by full name.
    pub jobs: BTreeMap<String, JobRec>,
    /// Executions by full name.
    pub executions: BTreeMap<String, ExecRec>,
    /// IAM policies of services and jobs, by `{full name}#{uid}` (see `run::iam`).
    #[serde(default)]
    pub policies: BTreeMap<String, crate::policy::Policy>,
    /// Worker pools by full name (see `run::worker_pools`).
    #[serde(default)]
    pub worker_pools: BTreeMap<String, super::worker_pools::WorkerPoolRec>,
}

impl Store {
    /// Ends every unfinished execution as failed (after a restart nothing runs any more).
    pub fn interrupt_running(&mut self) {
        let now = Utc::now();
        for exec in self.executions.values_mut() {
            if exec.completion_time.is_some() {
                continue;
            }
            for task in &mut exec.tasks {
                if matches!(task.state, TaskState::Pending | TaskState::Running) {
                    task.state = TaskState::Failed;
                    task.message = Some("The sandbox restarted while the task ran.".into());
                    task.completion_time = Some(now);
                }
            }
            exec.completion_time = Some(now);
        }
        for pool in self.worker_pools.values_mut() {
            pool.revisions.interrupt();
        }
        for svc in self.services.values_mut() {
            svc.revisions.interrupt();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        let now = Utc::now();
        Meta {
            name: "projects/p/locations/r/services/s".into(),
            parent: Parent {
                project: "p".into(),
                location: "r".into(),
            },
            id: "s".into(),
            uid: "u".into(),
            generation: 1,
            create_time: now,
            update_time: now,
            creator: "a@example.com".into(),
            last_modifier: "a@example.com".into(),
            etag: "\"e\"".into(),
            settle_at: now,
        }
    }

    /// The stored state of a sandbox written before `Revisions` existed must still load: the
    /// revision fields stay top-level fields of the service (and worker pool) record.
    #[test]
    fn revisions_are_stored_as_top_level_fields() {
        let rec = ServiceRec {
            meta: meta(),
            body: serde_json::json!({"template": {}}),
            revisions: Revisions {
                revision_seq: 2,
                latest_created_revision: "s-00002-abc".into(),
                latest_ready_revision: Some("s-00001-xyz".into()),
                settled: Settled::Failed {
                    reason: "REVISION_FAILED".into(),
                    message: "m".into(),
                },
            },
            uri: "http://s".into(),
        };
        let v = serde_json::to_value(&rec).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "meta",
                "body",
                "revision_seq",
                "latest_created_revision",
                "latest_ready_revision",
                "settled",
                "uri"
            ]
        );
        assert_eq!(v["settled"]["Failed"]["reason"], "REVISION_FAILED");
        let back: ServiceRec = serde_json::from_value(v).unwrap();
        assert_eq!(back.revisions, rec.revisions);
    }

    #[test]
    fn a_new_revision_only_when_asked_and_ready_once_settled() {
        let mut r = Revisions::first("svc");
        assert!(r.latest_created_revision.starts_with("svc-00001-"));
        r.settle(Ok(()));
        assert_eq!(r.settled, Settled::Ready);
        assert_eq!(
            r.latest_ready_revision.as_ref(),
            Some(&r.latest_created_revision)
        );
        let first = r.latest_created_revision.clone();
        r.respec("svc", false);
        assert_eq!((r.revision_seq, &r.latest_created_revision), (1, &first));
        assert_eq!(r.settled, Settled::Pending);
        r.respec("svc", true);
        assert!(r.latest_created_revision.starts_with("svc-00002-"));
        let failed = Settled::Failed {
            reason: "CONTAINER_MISSING".into(),
            message: "m".into(),
        };
        r.settle(Err(&failed));
        assert_eq!(r.settled, failed);
        assert_eq!(r.latest_ready_revision, Some(first));
        let mut pending = Revisions::first("p");
        pending.interrupt();
        assert!(matches!(pending.settled, Settled::Failed { .. }));
    }
}
