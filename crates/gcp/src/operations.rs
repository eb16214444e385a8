//! Long-running operations (`google.longrunning.Operation`): poll until done or until the
//! caller's deadline, then return the operation's response or its error as a [`GcpError`].

use std::time::{Duration, Instant};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{self, GcpError, Status};
use crate::http::{Api, Call, GcpHttp, resource_path};

/// A long-running operation as every API here returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Status>,
}

impl Operation {
    /// `None` while running; then the response (`{}` when the operation has none) or the error.
    pub fn outcome(&self) -> Option<Result<Value, GcpError>> {
        if !self.done {
            return None;
        }
        Some(match &self.error {
            Some(status) => Err(error::from_operation_status(
                &format!("operation {}", self.name),
                status.clone(),
            )),
            None => Ok(self
                .response
                .clone()
                .unwrap_or_else(|| Value::Object(Default::default()))),
        })
    }

    /// The metadata decoded as `T` (Cloud Run's `:run` puts the Execution there).
    pub fn metadata_as<T: DeserializeOwned>(&self) -> Result<Option<T>, GcpError> {
        self.metadata
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| GcpError::Decode {
                method: format!("operation {} metadata", self.name),
                source: e,
            })
    }
}

/// Polling cadence: starts at 250 ms, grows by 1.5x, capped at 5 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollBackoff {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Default for PollBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            factor: 1.5,
            max: Duration::from_secs(5),
        }
    }
}

impl PollBackoff {
    /// The wait after `previous`.
    pub fn next(&self, previous: Duration) -> Duration {
        previous.mul_f64(self.factor).min(self.max)
    }
}

/// Reads an operation once. `version` is the API version path prefix (`v1`, `v2`).
pub async fn get(
    http: &GcpHttp,
    api: Api,
    version: &str,
    name: &str,
) -> Result<Operation, GcpError> {
    let path = format!("{version}/{}", resource_path(name)?);
    http.send(Call::new("operations.get", Method::GET, api, path))
        .await
}

/// Polls `op` until it is done or `deadline` has passed, and returns its response.
pub async fn wait(
    http: &GcpHttp,
    api: Api,
    version: &str,
    op: Operation,
    deadline: Duration,
) -> Result<Value, GcpError> {
    wait_with(http, api, version, op, deadline, PollBackoff::default()).await
}

/// [`wait`] with a chosen cadence.
pub async fn wait_with(
    http: &GcpHttp,
    api: Api,
    version: &str,
    mut op: Operation,
    deadline: Duration,
    backoff: PollBackoff,
) -> Result<Value, GcpError> {
    let started = Instant::now();
    let mut delay = backoff.initial;
    loop {
        if let Some(outcome) = op.outcome() {
            return outcome;
        }
        if op.name.is_empty() {
            return Err(GcpError::Config(
                "a running operation came back without a name to poll".into(),
            ));
        }
        let elapsed = started.elapsed();
        if elapsed >= deadline {
            return Err(GcpError::OperationTimeout {
                name: op.name,
                waited: elapsed,
            });
        }
        tokio::time::sleep(delay.min(deadline - elapsed)).await;
        delay = backoff.next(delay);
        op = get(http, api.clone(), version, &op.name).await?;
    }
}

/// [`wait`], decoding the response as `T`.
pub async fn wait_as<T: DeserializeOwned>(
    http: &GcpHttp,
    api: Api,
    version: &str,
    op: Operation,
    deadline: Duration,
) -> Result<T, GcpError> {
    let name = op.name.clone();
    let value = wait(http, api, version, op, deadline).await?;
    serde_json::from_value(value).map_err(|e| GcpError::Decode {
        method: format!("operation {name} response"),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap() {
        let b = PollBackoff::default();
        let mut d = b.initial;
        let mut seq = vec![d];
        for _ in 0..10 {
            d = b.next(d);
            seq.push(d);
        }
        assert_eq!(seq[1], Duration::from_millis(375));
        assert_eq!(*seq.last().unwrap(), Duration::from_secs(5));
        assert!(seq.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn outcomes() {
        let running: Operation = serde_json::from_str(r#"{"name":"operations/1"}"#).unwrap();
        assert!(running.outcome().is_none());
        let ok: Operation = serde_json::from_str(
            r#"{"name":"o","done":true,"response":{"@type":"x","name":"svc"}}"#,
        )
        .unwrap();
        assert_eq!(ok.outcome().unwrap().unwrap()["name"], "svc");
        let empty: Operation = serde_json::from_str(r#"{"name":"o","done":true}"#).unwrap();
        assert_eq!(empty.outcome().unwrap().unwrap(), serde_json::json!({}));
        let failed: Operation = serde_json::from_str(
            r#"{"name":"o","done":true,"error":{"code":9,"message":"Revision failed to start"}}"#,
        )
        .unwrap();
        let err = failed.outcome().unwrap().unwrap_err();
        assert!(
            matches!(err, GcpError::FailedPrecondition { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("Revision failed to start"));
    }
}
