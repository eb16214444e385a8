//! Reads shared by the runs of one poll cycle.
//!
//! A burst of runs from one deployment used to cost every run its own reads of the pool, the
//! deployment, the flow and the credentials block (and a fresh OAuth token exchange): on a
//! SQLite-backed Prefect server those reads, not the worker, set the submission rate
//! (BENCHMARKS.md). Here they are fetched once per key and shared for a short time-to-live, so
//! a changed pool template or deployment is still seen within seconds. Concurrent misses of one
//! key share a single request; failures are not kept (the next caller asks again).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootstrap_prefect::{Deployment, Flow, PrefectClient, PrefectError, SecretValue, WorkPool};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::cloudrun::RunJobs;
use super::config::PoolKind;

/// How long a Prefect read is reused: short, so edits made while the worker runs apply to the
/// runs picked up a few seconds later, as with Prefect's own worker (which reads per poll).
pub(crate) const PREFECT_TTL: Duration = Duration::from_secs(5);

/// Deployments are read afresh for every run, as Prefect's own worker does: a deployment
/// changed by `apply` (a rebuilt image) must apply to a Quick Run made a second later
/// (regression: `builds_e2e` ran the old image when its rebuild and run took under
/// [`PREFECT_TTL`]).
pub(crate) const DEPLOYMENT_TTL: Duration = Duration::ZERO;

/// Beyond this many entries, expired ones are dropped on the next insert (bounds memory).
const PRUNE_AT: usize = 64;

/// When an entry was made, and its value once fetched.
type Entry<V> = (Instant, Arc<OnceCell<V>>);

/// A map of values fetched once per key and reused until they are `ttl` old.
pub(crate) struct TtlMap<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, Entry<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    /// An empty map whose entries live `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value of `key`: the stored one while fresh, else `fetch`'s (callers racing on a
    /// missing key wait for one fetch). An error is returned to the callers of that fetch and
    /// not stored.
    pub(crate) async fn get_or_fetch<E, F, Fut>(&self, key: &K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        match self.cell(key) {
            Some(cell) => cell.get_or_try_init(fetch).await.cloned(),
            // A poisoned lock (a panic elsewhere) only costs the cache: fetch directly.
            None => fetch().await,
        }
    }

    /// The fresh cell of `key`, a new one when missing or expired (`None`: lock poisoned).
    fn cell(&self, key: &K) -> Option<Arc<OnceCell<V>>> {
        let now = Instant::now();
        let mut map = self.entries.lock().ok()?;
        if let Some((at, cell)) = map.get(key)
            && now.duration_since(*at) < self.ttl
        {
            return Some(cell.clone());
        }
        if map.len() >= PRUNE_AT {
            map.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        }
        let cell = Arc::new(OnceCell::new());
        map.insert(key.clone(), (now, cell.clone()));
        Some(cell)
    }
}

/// The Prefect reads a submission makes, each shared for [`PREFECT_TTL`]. Block data holds
/// secrets: it stays wrapped in [`SecretValue`] and only in memory.
pub(crate) struct Reads {
    pool: TtlMap<String, Option<WorkPool>>,
    deployments: TtlMap<Uuid, Option<Deployment>>,
    flows: TtlMap<Uuid, Option<Flow>>,
    blocks_by_id: TtlMap<Uuid, Option<SecretValue>>,
    blocks_by_name: TtlMap<(String, String), Option<SecretValue>>,
    variables: TtlMap<String, Option<Value>>,
}

impl Default for Reads {
    fn default() -> Self {
        Self {
            pool: TtlMap::new(PREFECT_TTL),
            deployments: TtlMap::new(DEPLOYMENT_TTL),
            flows: TtlMap::new(PREFECT_TTL),
            blocks_by_id: TtlMap::new(PREFECT_TTL),
            blocks_by_name: TtlMap::new(PREFECT_TTL),
            variables: TtlMap::new(PREFECT_TTL),
        }
    }
}

impl Reads {
    /// The work pool `name`.
    pub(crate) async fn work_pool(
        &self,
        client: &PrefectClient,
        name: &str,
    ) -> Result<Option<WorkPool>, PrefectError> {
        self.pool
            .get_or_fetch(&name.to_string(), || client.work_pool(name))
            .await
    }

    /// A deployment by id.
    pub(crate) async fn deployment(
        &self,
        client: &PrefectClient,
        id: Uuid,
    ) -> Result<Option<Deployment>, PrefectError> {
        self.deployments
            .get_or_fetch(&id, || client.deployment(id))
            .await
    }

    /// A flow by id.
    pub(crate) async fn flow(
        &self,
        client: &PrefectClient,
        id: Uuid,
    ) -> Result<Option<Flow>, PrefectError> {
        self.flows.get_or_fetch(&id, || client.flow(id)).await
    }

    /// A block document's data (with secrets) by id.
    pub(crate) async fn block_by_id(
        &self,
        client: &PrefectClient,
        id: Uuid,
    ) -> Result<Option<SecretValue>, PrefectError> {
        self.blocks_by_id
            .get_or_fetch(&id, || async move {
                Ok(client
                    .block_document_with_secrets(id)
                    .await?
                    .map(|d| d.data))
            })
            .await
    }

    /// A block document's data (with secrets) by type slug and name.
    pub(crate) async fn block_by_name(
        &self,
        client: &PrefectClient,
        slug: &str,
        name: &str,
    ) -> Result<Option<SecretValue>, PrefectError> {
        self.blocks_by_name
            .get_or_fetch(&(slug.to_string(), name.to_string()), || async move {
                Ok(client
                    .block_document_by_name_with_secrets(slug, name)
                    .await?
                    .map(|d| d.data))
            })
            .await
    }

    /// A variable's value.
    pub(crate) async fn variable(
        &self,
        client: &PrefectClient,
        name: &str,
    ) -> Result<Option<Value>, PrefectError> {
        self.variables
            .get_or_fetch(&name.to_string(), || async move {
                Ok(client.variable_by_name(name).await?.map(|v| v.value))
            })
            .await
    }
}

/// What identifies a Cloud Run client: pool type, region, project and the key (compared, never
/// printed or hashed into anything that leaves the process).
struct JobsKey {
    kind: PoolKind,
    region: String,
    project: Option<String>,
    key: Option<SecretString>,
}

impl JobsKey {
    fn same(&self, other: &JobsKey) -> bool {
        self.kind == other.kind
            && self.region == other.region
            && self.project == other.project
            && match (&self.key, &other.key) {
                (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
                (None, None) => true,
                _ => false,
            }
    }
}

/// Cloud Run clients by credentials: each holds its token source, whose token is reused until
/// it expires, instead of one token exchange per run.
#[derive(Default)]
pub(crate) struct JobsCache {
    entries: Mutex<Vec<(JobsKey, RunJobs)>>,
}

/// At most this many clients are kept (a pool normally has one set of credentials).
const JOBS_KEPT: usize = 16;

impl JobsCache {
    /// The client for these credentials, made by `make` the first time.
    pub(crate) async fn get_or_make<F, Fut>(
        &self,
        kind: PoolKind,
        region: &str,
        project: Option<&str>,
        key: Option<&SecretString>,
        make: F,
    ) -> anyhow::Result<RunJobs>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<RunJobs>>,
    {
        let wanted = JobsKey {
            kind,
            region: region.to_string(),
            project: project.map(str::to_string),
            key: key.cloned(),
        };
        if let Ok(list) = self.entries.lock()
            && let Some((_, jobs)) = list.iter().find(|(k, _)| k.same(&wanted))
        {
            return Ok(jobs.clone());
        }
        // Two runs may both make a client the first time; one of them is kept. Making one is
        // local work (no request), so the race costs nothing but a token exchange.
        let jobs = make().await?;
        if let Ok(mut list) = self.entries.lock()
            && !list.iter().any(|(k, _)| k.same(&wanted))
        {
            if list.len() >= JOBS_KEPT {
                list.remove(0);
            }
            list.push((wanted, jobs.clone()));
        }
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_fetch_per_key_while_fresh_and_errors_are_not_kept() {
        let map: TtlMap<u32, String> = TtlMap::new(Duration::from_millis(200));
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>("v".to_string())
        };
        // Concurrent misses share one fetch.
        let (a, b) = tokio::join!(map.get_or_fetch(&1, fetch), map.get_or_fetch(&1, fetch));
        assert_eq!((a.as_deref(), b.as_deref()), (Ok("v"), Ok("v")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another key is fetched on its own.
        assert_eq!(map.get_or_fetch(&2, fetch).await.as_deref(), Ok("v"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // An error is returned, then the next caller fetches again.
        let failing = map
            .get_or_fetch(&3, || async { Err::<String, _>("down".to_string()) })
            .await;
        assert_eq!(failing, Err("down".to_string()));
        assert_eq!(map.get_or_fetch(&3, fetch).await.as_deref(), Ok("v"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Once expired, a key is fetched again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(map.get_or_fetch(&1, fetch).await.as_deref(), Ok("v"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn deployments_are_read_for_every_run() {
        let reads = Reads::default();
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let got = reads
                .deployments
                .get_or_fetch(&Uuid::nil(), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(None)
                })
                .await;
            assert!(matches!(got, Ok(None)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn jobs_keys_compare_the_key_material() {
        let k = |key: Option<&str>, region: &str| JobsKey {
            kind: PoolKind::V2,
            region: region.into(),
            project: Some("p".into()),
            key: key.map(|s| SecretString::from(s.to_string())),
        };
        assert!(k(Some("a"), "r").same(&k(Some("a"), "r")));
        assert!(!k(Some("a"), "r").same(&k(Some("b"), "r")));
        assert!(!k(Some("a"), "r").same(&k(None, "r")));
        assert!(!k(None, "r").same(&k(None, "s")));
        assert!(k(None, "r").same(&k(None, "r")));
    }
}
