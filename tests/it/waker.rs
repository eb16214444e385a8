//! The scale-to-zero wake path against the real Prefect 3.9.1 server: `bootstrap waker`'s
//! authentication and wake decision, the worker's idle reading of the pool, and Prefect's own
//! automations (the wake and the sweep, built by `bootstrap_prefect::wake`) calling the waker
//! through a Webhook block. The worker pool is a counter here (the Cloud Run side is the
//! sandbox's and is not in this test).

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bootstrap::commands::waker::{Waker, Woke, router};
use bootstrap_prefect::wake::{
    WEBHOOK_BLOCK_TYPE, sweep_automation, wake_automation, webhook_block_data,
};
use bootstrap_prefect::{
    AutomationSpec, BlockDocumentCreate, PrefectClient, PrefectConfig, pick_block_schema,
};
use bootstrap_worker::idle::{PoolScaler, PrefectWork, WorkSource};
use chrono::Utc;
use secrecy::SecretString;
use testkit::{prefect_api_url, quick_run, unique_name};
use uuid::Uuid;

const SECRET: &str = "test-shared-secret-0123456789abcdef";

fn client() -> PrefectClient {
    PrefectClient::new(PrefectConfig::for_url(&prefect_api_url()).expect("url")).expect("client")
}

/// A worker pool's instance count, with every write recorded.
#[derive(Default)]
struct Counter {
    count: StdMutex<u32>,
    writes: StdMutex<Vec<u32>>,
}

#[async_trait]
impl PoolScaler for Counter {
    async fn instance_count(&self) -> anyhow::Result<u32> {
        Ok(*self.count.lock().unwrap())
    }
    async fn set_instance_count(&self, n: u32) -> anyhow::Result<()> {
        *self.count.lock().unwrap() = n;
        self.writes.lock().unwrap().push(n);
        Ok(())
    }
}

/// A client of the shared server, a new pool and one deployment on it; returns (client, pool
/// name, deployment id).
async fn pool_with_deployment() -> (PrefectClient, String, Uuid) {
    bootstrap_gcp::init_crypto();
    let c = client();
    let pool = testkit::new_pool(&c, "wake", "cloud-run-v2", None).await;
    let dep = testkit::hello_deployment(&c, &pool).await;
    (c, pool, dep)
}

/// Serves `bootstrap waker` for `pool` on `listener`, scaling a new [`Counter`]; the waker,
/// the counter and the port.
async fn serve(pool: &str, listener: tokio::net::TcpListener) -> (Arc<Waker>, Arc<Counter>, u16) {
    let counter = Arc::new(Counter::default());
    let waker = waker(pool, counter.clone());
    let port = listener.local_addr().unwrap().port();
    let app = router(waker.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (waker, counter, port)
}

async fn any_port() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn waker(pool: &str, scaler: Arc<Counter>) -> Arc<Waker> {
    Arc::new(Waker {
        client: client(),
        work_pool: pool.into(),
        scaler,
        instances: 1,
        secret: SecretString::from(SECRET),
        lock: tokio::sync::Mutex::new(()),
    })
}

async fn post(port: u16, auth: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/wake"))
        .timeout(Duration::from_secs(10));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = req.send().await.expect("waker answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_waker_wakes_only_for_due_runs_and_only_with_the_secret() {
    let (c, pool, dep) = pool_with_deployment().await;
    let (w, counter, port) = serve(&pool, any_port().await).await;

    let health = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    for bad in [None, Some("Bearer wrong"), Some(SECRET), Some("Basic x")] {
        let (status, body) = post(port, bad).await;
        assert_eq!(status, 401, "{bad:?}");
        assert!(!body.contains(SECRET));
    }
    let bearer = format!("Bearer {SECRET}");
    // Nothing scheduled: no write.
    let (status, body) = post(port, Some(&bearer)).await;
    assert_eq!(
        (status, body.contains("\"due\":false")),
        (200, true),
        "{body}"
    );
    assert!(counter.writes.lock().unwrap().is_empty());
    // A Quick Run: count 0 -> 1, once.
    quick_run(&c, dep).await;
    let (status, body) = post(port, Some(&bearer)).await;
    assert_eq!(
        (status, body.contains("\"woken\":true")),
        (200, true),
        "{body}"
    );
    assert_eq!(w.wake().await.expect("wake"), Woke::AlreadyUp(1));
    assert_eq!(*counter.writes.lock().unwrap(), vec![1]);
}

#[tokio::test]
async fn the_idle_reading_counts_due_and_active_runs_but_not_later_ones() {
    let (c, pool, dep) = pool_with_deployment().await;
    let work = PrefectWork {
        client: c.clone(),
        pool: pool.clone(),
    };
    let horizon = || Utc::now() + chrono::Duration::seconds(60);
    assert_eq!(work.busy_runs(horizon()).await.unwrap(), 0);
    // A run an hour ahead (a cron deployment's next run) does not keep the worker up.
    let at = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = reqwest::Client::new()
        .post(format!("{}/deployments/{dep}/create_flow_run", prefect_api_url()))
        .json(&serde_json::json!({"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": at}}}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("create a later run");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(work.busy_runs(horizon()).await.unwrap(), 0);
    quick_run(&c, dep).await;
    assert_eq!(work.busy_runs(horizon()).await.unwrap(), 1);
}

/// A Webhook block pointing at `port` and the automations of the wake path; returns their ids.
async fn wake_path(
    c: &PrefectClient,
    port: u16,
    specs: impl Fn(Uuid) -> Vec<AutomationSpec>,
) -> (Uuid, Vec<Uuid>) {
    let bt = c
        .block_type_by_slug(WEBHOOK_BLOCK_TYPE)
        .await
        .unwrap()
        .expect("every server has the webhook block type");
    let schemas = c.block_schemas_for_type(bt.id).await.unwrap();
    let schema = pick_block_schema(&schemas, None).expect("a webhook schema");
    let block = c
        .create_block_document(&BlockDocumentCreate {
            name: unique_name("waker"),
            block_type_id: bt.id,
            block_schema_id: schema.id,
            data: webhook_block_data(
                &format!("http://127.0.0.1:{port}/wake"),
                &SecretString::from(SECRET),
            ),
        })
        .await
        .expect("webhook block");
    let mut ids = Vec::new();
    for spec in specs(block.id) {
        ids.push(c.create_automation(&spec).await.expect("automation").id);
    }
    (block.id, ids)
}

async fn cleanup(c: &PrefectClient, block: Uuid, automations: &[Uuid]) {
    for id in automations {
        let _ = c.delete_automation(*id).await;
    }
    let _ = c.delete_block_document(block).await;
}

async fn wait_for_count(counter: &Counter, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if *counter.count.lock().unwrap() == 1 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test]
async fn prefects_automation_wakes_the_pool_on_a_quick_run() {
    let (c, pool, dep) = pool_with_deployment().await;
    let (_, counter, port) = serve(&pool, any_port().await).await;
    let name = unique_name("wake");
    let (block, ids) = wake_path(&c, port, |b| vec![wake_automation(&name, &pool, b)]).await;
    // The triggers service loads new automations from its change feed; give it a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    quick_run(&c, dep).await;
    let took = wait_for_count(&counter, Duration::from_secs(30)).await;
    cleanup(&c, block, &ids).await;
    let took = took.expect("Prefect's call-webhook action woke the pool within 30 s");
    eprintln!("woken {took:?} after the Quick Run");
    assert_eq!(*counter.writes.lock().unwrap(), vec![1]);
}

#[tokio::test]
async fn a_run_created_while_the_waker_is_down_is_picked_up_by_the_sweep() {
    let (c, pool, dep) = pool_with_deployment().await;
    // The waker's port, with nothing listening yet: the wake call is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    const WITHIN: u64 = 10;
    let (wake, sweep) = (unique_name("wake"), unique_name("sweep"));
    let (block, ids) = wake_path(&c, port, |b| {
        vec![
            wake_automation(&wake, &pool, b),
            sweep_automation(&sweep, &pool, b, WITHIN),
        ]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    quick_run(&c, dep).await;
    // The wake automation fires now, at a closed port.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (_, counter, _) = serve(&pool, listener).await;
    // Bound: one sweep window + the 5 s evaluation period + slack for a loaded machine.
    let bound = Duration::from_secs(WITHIN + 5 + 10);
    let took = wait_for_count(&counter, bound).await;
    cleanup(&c, block, &ids).await;
    let took = took.unwrap_or_else(|| panic!("the sweep did not wake the pool within {bound:?}"));
    eprintln!("sweep woke the pool {took:?} after the waker came up");
}
