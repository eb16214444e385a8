//! `/health` for `--healthcheck`: 200 while the loop polls, 503 when the last successful poll
//! is older than a few poll intervals (the Prefect API unreachable, or the loop stuck).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::runtime::Shared;

/// The age of the last good poll beyond which the worker reports unhealthy.
pub(crate) fn stale_after(poll_interval: Duration) -> Duration {
    poll_interval * 4 + Duration::from_secs(30)
}

async fn health(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.since_last_poll() <= stale_after(shared.ctx.opts.poll_interval) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no successful poll of the Prefect API recently\n",
        )
    }
}

/// Serves `/health` on `listener` until the task is aborted.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/health", get(health))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the health endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn staleness_scales_with_the_poll_interval() {
        use std::time::Duration;
        assert_eq!(
            super::stale_after(Duration::from_secs(10)),
            Duration::from_secs(70)
        );
        assert!(super::stale_after(Duration::from_secs(1)) > Duration::from_secs(30));
    }
}
