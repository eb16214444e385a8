//! `worker.scale_to_zero: {idle: <duration>}`: only a Cloud Run worker pool can sit at 0
//! instances with its worker setting the count itself (a service scales on requests, which a
//! pull worker never gets), so the key is refused for any other `worker.kind`.

use std::time::Duration;

use crate::model::{ScaleToZero, WorkerRuntime};
use crate::node::{Node, Value};
use crate::reader::{Fields, Reader, Secret, show};

/// The keys of `worker.scale_to_zero`.
const KEYS: &[&str] = &["idle"];

/// Shortest and longest `idle`: below a second the worker would scale down between two polls
/// of one burst; above a day the pool is not really scaling to zero.
const MIN_IDLE: Duration = Duration::from_secs(1);
const MAX_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Reads `worker.scale_to_zero` from the worker section `f`. `worker_pool` tells whether
/// `worker.kind` is `worker-pool`; `runtime` is the checked `worker.runtime`. `Some(None)`: not set; `None`: an error was reported.
pub(crate) fn read(
    r: &mut Reader<'_>,
    f: &Fields<'_>,
    worker_pool: bool,
    runtime: Option<WorkerRuntime>,
) -> Option<Option<ScaleToZero>> {
    let Some(node) = f.get("scale_to_zero") else {
        return Some(None);
    };
    let path = f.child("scale_to_zero");
    let s = r.fields(Some(node), f.pos, &path, KEYS)?;
    let idle = match s.get("idle") {
        None => r.missing(&s, "idle", "10m"),
        Some(n) => idle(r, n, &s.child("idle")),
    };
    if !worker_pool {
        r.error(
            node.pos,
            format!("`{path}` needs `worker.kind: worker-pool`"),
            Some(
                "a Cloud Run service is scaled by requests, which a pull worker never gets; \
                 add `kind: worker-pool` to `worker`, or remove `scale_to_zero`"
                    .into(),
            ),
        );
        return None;
    }
    if runtime == Some(WorkerRuntime::Python) {
        r.error(
            node.pos,
            format!("`{path}` needs `worker.runtime: embedded`"),
            Some(
                "Prefect's Python worker cannot set its pool's instance count without patching it; \
                 use `runtime: embedded` (bootstrap worker)"
                    .into(),
            ),
        );
        return None;
    }
    Some(Some(ScaleToZero { idle: idle? }))
}

/// A duration: `90s`, `10m`, `1h 30m` (humantime's units), or a whole number of seconds.
fn idle(r: &mut Reader<'_>, n: &Node, path: &str) -> Option<Duration> {
    let (parsed, shown) = match &n.value {
        Value::Int(i) => (
            u64::try_from(*i).ok().map(Duration::from_secs),
            i.to_string(),
        ),
        _ => {
            let v = r.string(n, path, Secret::No)?;
            (humantime::parse_duration(v.trim()).ok(), v)
        }
    };
    match parsed.filter(|d| (MIN_IDLE..=MAX_IDLE).contains(d)) {
        Some(d) => Some(d),
        None => {
            r.error(
                n.pos,
                format!("invalid `{path}` {}", show(&shown)),
                Some("a duration from 1s to 24h, such as `90s`, `10m` or `1h`".into()),
            );
            None
        }
    }
}
