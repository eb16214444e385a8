//! What the worker end-to-end tests observe besides the Prefect API: the sandbox's Cloud Run
//! store over time, live processes, and a Prefect server of a test's own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::World;

pub fn jobs_in(snapshot: &Value, id: Uuid) -> BTreeMap<String, Value> {
    let hex = id.simple().to_string();
    snapshot
        .get("jobs")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.ends_with(&hex))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Watches the sandbox's Cloud Run store every 10 ms and records every job (by uid) and
/// execution ever seen, so that a job created and deleted twice still counts twice.
pub struct Sampler {
    pub seen: Arc<Mutex<Seen>>,
    pub task: tokio::task::JoinHandle<()>,
}

#[derive(Default, Debug)]
pub struct Seen {
    /// Job uids by short job name.
    pub jobs: BTreeMap<String, BTreeSet<String>>,
    /// Execution names by short job name.
    pub executions: BTreeMap<String, BTreeSet<String>>,
}

impl Sampler {
    pub fn start(w: &World) -> Sampler {
        let run = w.sandbox.state.run.clone();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let snap = run.snapshot();
                if let Ok(mut s) = out.lock() {
                    for job in snap["jobs"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(_, j)| j)
                    {
                        if let (Some(id), Some(uid)) =
                            (job["meta"]["id"].as_str(), job["meta"]["uid"].as_str())
                        {
                            s.jobs
                                .entry(id.to_string())
                                .or_default()
                                .insert(uid.to_string());
                        }
                    }
                    for (name, e) in snap["executions"].as_object().into_iter().flatten() {
                        if let Some(job) = e["job_id"].as_str() {
                            s.executions
                                .entry(job.to_string())
                                .or_default()
                                .insert(name.clone());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Sampler { seen, task }
    }

    /// (job uids, executions) ever seen for the flow run's job.
    pub fn of(&self, id: Uuid) -> (usize, usize) {
        let hex = id.simple().to_string();
        let s = self.seen.lock().expect("sampler");
        let count = |m: &BTreeMap<String, BTreeSet<String>>| {
            m.iter()
                .filter(|(k, _)| k.ends_with(&hex))
                .map(|(_, v)| v.len())
                .sum()
        };
        (count(&s.jobs), count(&s.executions))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pids of live processes whose environment names this flow run (the job's container).
pub fn processes_of(id: Uuid) -> Vec<u32> {
    let needle = format!("PREFECT__FLOW_RUN_ID={id}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// A process's command line and `stat` line (state, parent, group), for failure messages.
pub fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    format!("{pid}: {cmdline} [{}]", stat.trim())
}

/// A Prefect server of the test's own (`scripts/prefect-server`), stopped on drop.
pub struct OwnServer {
    pub dir: PathBuf,
    pub url: String,
    pub port: u16,
}

impl OwnServer {
    pub fn start(dir: &Path, port: Option<u16>) -> OwnServer {
        let mut cmd = std::process::Command::new(crate::repo_root().join("scripts/prefect-server"));
        cmd.args(["start", &dir.display().to_string()]);
        if let Some(p) = port {
            cmd.env("PREFECT_SERVER_PORT", p.to_string());
        }
        let out = cmd.output().expect("run scripts/prefect-server");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "prefect server did not start: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export BOOTSTRAP_TEST_PREFECT_API_URL="))
            .expect("the script prints the URL")
            .trim()
            .to_string();
        let port = url
            .trim_end_matches("/api")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL");
        OwnServer {
            dir: dir.to_path_buf(),
            url,
            port,
        }
    }

    pub fn stop(&self) {
        let _ = std::process::Command::new(crate::repo_root().join("scripts/prefect-server"))
            .args(["stop", &self.dir.display().to_string()])
            .status();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}
