//! Scale to zero: after `idle` with nothing to do in its work pool, the worker sets its own
//! Cloud Run worker pool's `scaling.manualInstanceCount` to 0. The waker (`bootstrap waker`)
//! sets it back to 1 when a run arrives; see the README, "Scale to zero".
//!
//! "Nothing to do" is: no run of this process in flight, and Prefect lists no run of the work
//! pool that is PENDING, RUNNING or CANCELLING, or SCHEDULED to start before `now + idle`
//! (a run due later does not keep the pool up: Prefect's Late event or the sweep wakes it).
//! A failed read counts as busy, so an unreachable Prefect never scales the worker away.
//!
//! The Prefect read and the pool write are traits ([`WorkSource`], [`PoolScaler`]) so that the
//! loop is tested with a paused tokio clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bootstrap_prefect::{FlowRunQuery, PrefectClient, StateType};
use chrono::{DateTime, Utc};
use rand::Rng as _;
use tokio::time::Instant;

/// Reads the work pool's runs that keep the worker up.
#[async_trait]
pub trait WorkSource: Send + Sync {
    /// How many runs of the pool are PENDING, RUNNING, CANCELLING, or SCHEDULED to start
    /// before `horizon`.
    async fn busy_runs(&self, horizon: DateTime<Utc>) -> anyhow::Result<usize>;
}

/// Sets the instance count of the worker's own Cloud Run worker pool.
#[async_trait]
pub trait PoolScaler: Send + Sync {
    /// The pool's `scaling.manualInstanceCount` now.
    async fn instance_count(&self) -> anyhow::Result<u32>;
    /// Sets `scaling.manualInstanceCount` (an in-place update, not a new revision).
    async fn set_instance_count(&self, count: u32) -> anyhow::Result<()>;
}

/// What the idle watch needs.
#[derive(Clone)]
pub struct ScaleDown {
    /// Time with nothing to do before the count goes to 0.
    pub idle: Duration,
    /// The worker pool's count.
    pub scaler: Arc<dyn PoolScaler>,
}

impl std::fmt::Debug for ScaleDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleDown")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// Time between two looks at the pool: a quarter of `idle`, from 1 s to 15 s, so that the
/// worker goes down at most a check late and a long `idle` does not poll Prefect every second.
pub fn check_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// Attempts of one count write before waiting for the next idle period.
const WRITE_ATTEMPTS: u32 = 3;

/// A worker pool's resource name, `projects/P/locations/R/workerPools/N`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPoolRef {
    /// The project id.
    pub project: String,
    /// The region.
    pub region: String,
    /// The worker pool id.
    pub pool: String,
}

impl std::str::FromStr for WorkerPoolRef {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.split('/').collect::<Vec<_>>()[..] {
            ["projects", p, "locations", r, "workerPools", n]
                if !p.is_empty() && !r.is_empty() && !n.is_empty() =>
            {
                Ok(WorkerPoolRef {
                    project: p.into(),
                    region: r.into(),
                    pool: n.into(),
                })
            }
            _ => anyhow::bail!(
                "`{s}` is not a worker pool name; expected projects/PROJECT/locations/REGION/workerPools/NAME"
            ),
        }
    }
}

/// The Cloud Run worker pool `name` as a [`PoolScaler`]; the Google token source (the
/// metadata server on Cloud Run, else Google's usual discovery) is found on first use.
pub fn cloud_run_scaler(
    name: &str,
    endpoints: &bootstrap_gcp::Endpoints,
) -> anyhow::Result<Arc<dyn PoolScaler>> {
    let r: WorkerPoolRef = name.parse()?;
    let project = bootstrap_ids::ProjectId::parse(&r.project)
        .map_err(|e| anyhow::anyhow!("worker pool `{name}`: {e}"))?;
    let region = bootstrap_ids::Region::parse(&r.region)
        .map_err(|e| anyhow::anyhow!("worker pool `{name}`: {e}"))?;
    let pool = bootstrap_ids::RunWorkerPoolName::parse(&r.pool)
        .map_err(|e| anyhow::anyhow!("worker pool `{name}`: {e}"))?;
    Ok(Arc::new(CloudRunPool {
        endpoints: endpoints.clone(),
        http: tokio::sync::OnceCell::new(),
        project,
        region,
        pool,
    }))
}

/// A Cloud Run worker pool's `scaling.manualInstanceCount` through `bootstrap_gcp::run_v2`.
struct CloudRunPool {
    endpoints: bootstrap_gcp::Endpoints,
    http: tokio::sync::OnceCell<bootstrap_gcp::GcpHttp>,
    project: bootstrap_ids::ProjectId,
    region: bootstrap_ids::Region,
    pool: bootstrap_ids::RunWorkerPoolName,
}

/// Longest wait for Cloud Run's operation of one count write.
const WRITE_DEADLINE: Duration = Duration::from_secs(120);

impl CloudRunPool {
    async fn http(&self) -> anyhow::Result<&bootstrap_gcp::GcpHttp> {
        self.http
            .get_or_try_init(|| async {
                let tokens = bootstrap_gcp::AmbientTokenSource::discover().await?;
                let http = bootstrap_gcp::GcpHttp::new(
                    self.endpoints.clone(),
                    Arc::new(tokens),
                    bootstrap_gcp::RetryPolicy::default(),
                )?;
                Ok::<_, bootstrap_gcp::GcpError>(http)
            })
            .await
            .map_err(anyhow::Error::from)
    }
}

#[async_trait]
impl PoolScaler for CloudRunPool {
    async fn instance_count(&self) -> anyhow::Result<u32> {
        let http = self.http().await?;
        let p =
            bootstrap_gcp::run_v2::get_worker_pool(http, &self.project, &self.region, &self.pool)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the worker pool `{}` does not exist", self.pool))?;
        Ok(u32::try_from(p.instance_count().unwrap_or(0)).unwrap_or(0))
    }
    async fn set_instance_count(&self, count: u32) -> anyhow::Result<()> {
        let http = self.http().await?;
        let n = i32::try_from(count).unwrap_or(i32::MAX);
        let op = bootstrap_gcp::run_v2::set_instance_count(
            http,
            &self.project,
            &self.region,
            &self.pool,
            n,
        )
        .await?;
        bootstrap_gcp::run_v2::wait_worker_pool(http, op, WRITE_DEADLINE).await?;
        Ok(())
    }
}

/// Prefect's runs of one work pool, by name.
pub struct PrefectWork {
    /// The worker's client.
    pub client: PrefectClient,
    /// The work pool.
    pub pool: String,
}

#[async_trait]
impl WorkSource for PrefectWork {
    async fn busy_runs(&self, horizon: DateTime<Utc>) -> anyhow::Result<usize> {
        let query = FlowRunQuery {
            states: vec![
                StateType::Scheduled,
                StateType::Pending,
                StateType::Running,
                StateType::Cancelling,
            ],
            work_pool_names: vec![self.pool.clone()],
            limit: Some(200),
            ..FlowRunQuery::default()
        };
        let runs = self.client.filter_flow_runs(&query).await?;
        Ok(runs
            .iter()
            .filter(|r| {
                let scheduled = r
                    .state
                    .as_ref()
                    .is_some_and(|s| s.state_type == StateType::Scheduled);
                // A scheduled run counts only when it is due within the idle period.
                let due = r.next_scheduled_start_time.or(r.expected_start_time);
                !scheduled || due.is_none_or(|t| t <= horizon)
            })
            .count())
    }
}

/// Watches the pool for ever (the task is aborted at shutdown). `in_flight` counts this
/// process's own runs. Scaling down does not stop the loop: Cloud Run stops the instance, and
/// if the waker set the count back to 1 first, the watch starts over.
pub async fn watch(
    down: ScaleDown,
    work: Arc<dyn WorkSource>,
    in_flight: impl Fn() -> usize + Send + Sync,
    dormant: Arc<AtomicBool>,
) {
    let every = check_interval(down.idle);
    let mut idle_since = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        if dormant.load(Ordering::SeqCst) {
            // This worker set the count to 0 and claims nothing until Cloud Run stops its
            // instance. Should the pool be woken before that (the count is above 0 again),
            // Cloud Run may keep this instance: claim again, or no worker would serve the pool.
            if matches!(down.scaler.instance_count().await, Ok(n) if n > 0) {
                dormant.store(false, Ordering::SeqCst);
                idle_since = Instant::now();
                tracing::info!("the worker pool was woken again: claiming runs");
            }
            continue;
        }
        if is_busy(&*work, &in_flight, down.idle).await {
            idle_since = Instant::now();
            continue;
        }
        if idle_since.elapsed() < down.idle {
            continue;
        }
        match scale_to_zero(&down, &*work, &in_flight, &dormant).await {
            Ok(true) => tracing::info!(
                idle_s = down.idle.as_secs(),
                "nothing to do in the work pool: worker pool scaled to 0 instances"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot scale the worker pool to 0; trying again after the next idle period")
            }
        }
        idle_since = Instant::now();
    }
}

async fn is_busy(
    work: &dyn WorkSource,
    in_flight: &(impl Fn() -> usize + Send + Sync),
    idle: Duration,
) -> bool {
    if in_flight() > 0 {
        return true;
    }
    let horizon = Utc::now() + chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
    match work.busy_runs(horizon).await {
        Ok(n) => n > 0,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the work pool's runs; staying up");
            true
        }
    }
}

/// Sets the count to 0 unless work arrived meanwhile or it is 0 already. `Ok(true)` when it
/// wrote.
///
/// The worker goes dormant (claims no new run) *before* its last look and stays so after the
/// write: a run claimed by an instance that Cloud Run is about to stop would be left PENDING
/// with no worker, and the waker, which wakes the pool only for SCHEDULED runs (whoever calls
/// it: the wake automation or the sweep), would not see it as stranded (regression: `scale_to_zero::a_quick_run_wakes_the_pool_from_zero_and_it_sleeps_again`
/// had a run created right after the scale-down claimed by the stopping instance).
async fn scale_to_zero(
    down: &ScaleDown,
    work: &dyn WorkSource,
    in_flight: &(impl Fn() -> usize + Send + Sync),
    dormant: &AtomicBool,
) -> anyhow::Result<bool> {
    if down.scaler.instance_count().await? == 0 {
        return Ok(false);
    }
    dormant.store(true, Ordering::SeqCst);
    // The last look right before the write narrows the race with a run arriving now; a run
    // that still slips through stays SCHEDULED and is woken by the waker's sweep.
    if is_busy(work, in_flight, down.idle).await {
        dormant.store(false, Ordering::SeqCst);
        return Ok(false);
    }
    let mut attempt = 1;
    loop {
        match down.scaler.set_instance_count(0).await {
            Ok(()) => return Ok(true),
            Err(e) if attempt >= WRITE_ATTEMPTS => {
                dormant.store(false, Ordering::SeqCst);
                return Err(e);
            }
            Err(e) => {
                let base = Duration::from_millis(500) * 2u32.pow(attempt - 1);
                let wait = base.mul_f64(rand::rng().random_range(0.8..1.2));
                tracing::debug!(error = %format!("{e:#}"), attempt, "count write failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A pool whose count and busy runs the test sets; failures make writes fail.
    #[derive(Default)]
    struct Fake {
        busy: AtomicUsize,
        count: Mutex<u32>,
        writes: Mutex<Vec<(Duration, u32)>>,
        write_failures: AtomicUsize,
        read_fails: std::sync::atomic::AtomicBool,
        start: Mutex<Option<Instant>>,
    }

    impl Fake {
        fn new(count: u32) -> Arc<Self> {
            let f = Arc::new(Fake::default());
            *f.count.lock().unwrap() = count;
            *f.start.lock().unwrap() = Some(Instant::now());
            f
        }
        fn at(&self) -> Duration {
            self.start.lock().unwrap().unwrap().elapsed()
        }
    }

    #[async_trait]
    impl WorkSource for Fake {
        async fn busy_runs(&self, _: DateTime<Utc>) -> anyhow::Result<usize> {
            if self.read_fails.load(Ordering::SeqCst) {
                anyhow::bail!("503 from Prefect");
            }
            Ok(self.busy.load(Ordering::SeqCst))
        }
    }

    #[async_trait]
    impl PoolScaler for Fake {
        async fn instance_count(&self) -> anyhow::Result<u32> {
            Ok(*self.count.lock().unwrap())
        }
        async fn set_instance_count(&self, count: u32) -> anyhow::Result<()> {
            if self.write_failures.load(Ordering::SeqCst) > 0 {
                self.write_failures.fetch_sub(1, Ordering::SeqCst);
                anyhow::bail!("429 from Cloud Run");
            }
            *self.count.lock().unwrap() = count;
            self.writes.lock().unwrap().push((self.at(), count));
            Ok(())
        }
    }

    fn spawn(fake: &Arc<Fake>, idle: Duration, local: Arc<AtomicUsize>) -> Arc<AtomicBool> {
        let down = ScaleDown {
            idle,
            scaler: fake.clone(),
        };
        let work: Arc<dyn WorkSource> = fake.clone();
        let dormant = Arc::new(AtomicBool::new(false));
        tokio::spawn(watch(
            down,
            work,
            move || local.load(Ordering::SeqCst),
            dormant.clone(),
        ));
        dormant
    }

    #[tokio::test(start_paused = true)]
    async fn after_scaling_to_zero_the_worker_claims_nothing_until_woken_again() {
        let fake = Fake::new(1);
        let dormant = spawn(&fake, Duration::from_secs(4), Arc::default());
        assert!(!dormant.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*fake.count.lock().unwrap(), 0);
        assert!(
            dormant.load(Ordering::SeqCst),
            "a stopping instance must not claim"
        );
        // Still dormant while the count stays 0, whatever arrives in Prefect.
        fake.busy.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(dormant.load(Ordering::SeqCst));
        // The waker sets 1 and Cloud Run keeps this instance: it claims again.
        *fake.count.lock().unwrap() = 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!dormant.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_cannot_read_prefect_never_goes_dormant() {
        let fake = Fake::new(1);
        fake.read_fails.store(true, Ordering::SeqCst);
        let dormant = spawn(&fake, Duration::from_secs(4), Arc::default());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!dormant.load(Ordering::SeqCst));
        assert_eq!(*fake.count.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pool_goes_to_zero_after_idle_and_not_before() {
        let fake = Fake::new(1);
        spawn(&fake, Duration::from_secs(60), Arc::default());
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(fake.writes.lock().unwrap().is_empty(), "scaled down early");
        tokio::time::sleep(Duration::from_secs(20)).await;
        let writes = fake.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 1, "{writes:?}");
        let (at, count) = writes[0];
        assert_eq!(count, 0);
        // At most one check interval (15 s) late.
        assert!(
            at >= Duration::from_secs(60) && at <= Duration::from_secs(75),
            "{at:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_in_prefect_or_in_flight_restarts_the_idle_period() {
        let fake = Fake::new(1);
        let local = Arc::new(AtomicUsize::new(0));
        spawn(&fake, Duration::from_secs(8), local.clone());
        // A run in the pool for 20 s, then one of ours for 20 s.
        fake.busy.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(20)).await;
        fake.busy.store(0, Ordering::SeqCst);
        local.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(fake.writes.lock().unwrap().is_empty());
        local.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(12)).await;
        let writes = fake.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 1, "{writes:?}");
        // Work ends at 40 s; idle counts from the last check that saw it (38 or 40 s, checks
        // every 2 s), so the pool goes down 8 s later, between 46 s and 50 s.
        assert!(
            writes[0].0 >= Duration::from_secs(46) && writes[0].0 <= Duration::from_secs(50),
            "{writes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_prefect_read_never_scales_down() {
        let fake = Fake::new(1);
        fake.read_fails.store(true, Ordering::SeqCst);
        spawn(&fake, Duration::from_secs(4), Arc::default());
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(fake.writes.lock().unwrap().is_empty());
        assert_eq!(*fake.count.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_already_at_zero_is_not_written_and_a_woken_pool_goes_down_again() {
        let fake = Fake::new(0);
        spawn(&fake, Duration::from_secs(4), Arc::default());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(fake.writes.lock().unwrap().is_empty());
        // The waker sets 1 and the instance lives on: down again after another idle.
        *fake.count.lock().unwrap() = 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.writes.lock().unwrap().len(), 1);
        assert_eq!(*fake.count.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn count_writes_are_retried_a_bounded_number_of_times() {
        let fake = Fake::new(1);
        fake.write_failures.store(2, Ordering::SeqCst);
        spawn(&fake, Duration::from_secs(4), Arc::default());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            *fake.count.lock().unwrap(),
            0,
            "two failures, third attempt wins"
        );
        // Always failing: three attempts, then nothing until the next idle period has passed
        // (the failed write at about 5-6 s restarts it; the next try comes after 9 s).
        let fake = Fake::new(1);
        fake.write_failures.store(1000, Ordering::SeqCst);
        spawn(&fake, Duration::from_secs(4), Arc::default());
        tokio::time::sleep(Duration::from_secs(9)).await;
        let used = 1000 - fake.write_failures.load(Ordering::SeqCst);
        assert_eq!(used, WRITE_ATTEMPTS as usize);
        assert_eq!(*fake.count.lock().unwrap(), 1);
    }

    #[test]
    fn worker_pool_names_are_split_or_refused() {
        let r: WorkerPoolRef = "projects/p-1/locations/us-central1/workerPools/w"
            .parse()
            .unwrap();
        assert_eq!(
            (r.project.as_str(), r.region.as_str(), r.pool.as_str()),
            ("p-1", "us-central1", "w")
        );
        for bad in [
            "",
            "w",
            "projects/p/locations/r/services/w",
            "projects//locations/r/workerPools/w",
        ] {
            assert!(bad.parse::<WorkerPoolRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_are_a_quarter_of_idle_within_bounds() {
        assert_eq!(
            check_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            check_interval(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(
            check_interval(Duration::from_secs(600)),
            Duration::from_secs(15)
        );
    }
}
