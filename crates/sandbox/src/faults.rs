//! Fault injection on the Google surface, deterministic under a seed.
//!
//! Spec: comma-separated `key=value` items:
//! - `seed=7`: the RNG seed (same seed and same request order, same faults);
//! - `rate=0.2`: probability that a call fails;
//! - `kinds=429|500|503|drop`: the failures to pick from (uniformly);
//! - `latency=100ms`: added to every call;
//! - `op_delay=2s`: how long long-running operations take;
//! - `op_fail=0.1`: probability that an operation ends in error;
//! - `retry_after=2`: seconds in the `Retry-After` of a 429;
//! - `method:<id>=0.5`: a rate for one method, by discovery id (`iam.projects.serviceAccounts.create`)
//!   or the short form without `projects.`/`locations.` (`iam.serviceAccounts.create`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::ApiError;

/// A failure the injector can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// 429 RESOURCE_EXHAUSTED with `Retry-After`.
    TooManyRequests,
    /// 500 INTERNAL.
    Internal,
    /// 503 UNAVAILABLE.
    Unavailable,
    /// The connection is closed without a response.
    Drop,
}

/// A parsed fault spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSpec {
    /// RNG seed.
    pub seed: u64,
    /// Default failure probability.
    pub rate: f64,
    /// Failures to choose from.
    pub kinds: Vec<Kind>,
    /// Added latency per call.
    pub latency: Duration,
    /// Operation duration override.
    pub op_delay: Option<Duration>,
    /// Probability that an operation fails.
    pub op_fail: f64,
    /// `Retry-After` seconds on 429.
    pub retry_after: u64,
    /// Per-method rates.
    pub methods: Vec<(String, f64)>,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            seed: 0,
            rate: 0.0,
            kinds: vec![
                Kind::TooManyRequests,
                Kind::Internal,
                Kind::Unavailable,
                Kind::Drop,
            ],
            latency: Duration::ZERO,
            op_delay: None,
            op_fail: 0.0,
            retry_after: 1,
            methods: Vec::new(),
        }
    }
}

/// Parses `100ms`, `2s`, `1.5s`, `1m` (a bare number is milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "ms"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration `{text}`"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in `{text}` (use ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration `{text}`"))
}

fn parse_rate(key: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "`{key}` must be a number between 0 and 1, got `{value}`"
        )),
    }
}

impl std::str::FromStr for FaultSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut out = FaultSpec::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got `{item}`"))?;
            match key {
                "seed" => {
                    out.seed = value
                        .parse()
                        .map_err(|_| format!("invalid seed `{value}`"))?
                }
                "rate" => out.rate = parse_rate(key, value)?,
                "op_fail" => out.op_fail = parse_rate(key, value)?,
                "latency" => out.latency = parse_duration(value)?,
                "op_delay" => out.op_delay = Some(parse_duration(value)?),
                "retry_after" => {
                    out.retry_after = value
                        .parse()
                        .map_err(|_| format!("invalid retry_after `{value}`"))?
                }
                "kinds" => {
                    out.kinds = value
                        .split('|')
                        .map(|k| match k {
                            "429" => Ok(Kind::TooManyRequests),
                            "500" => Ok(Kind::Internal),
                            "503" => Ok(Kind::Unavailable),
                            "drop" => Ok(Kind::Drop),
                            other => Err(format!(
                                "unknown fault kind `{other}` (use 429, 500, 503, drop)"
                            )),
                        })
                        .collect::<Result<_, _>>()?;
                    if out.kinds.is_empty() {
                        return Err("`kinds` is empty".into());
                    }
                }
                _ => match key.strip_prefix("method:") {
                    Some(method) if !method.is_empty() => out
                        .methods
                        .push((method.to_owned(), parse_rate(key, value)?)),
                    _ => return Err(format!("unknown fault setting `{key}`")),
                },
            }
        }
        Ok(out)
    }
}

/// Drops `projects.` and `locations.` from a discovery id: `iam.serviceAccounts.create`.
fn short_id(id: &str) -> String {
    id.split('.')
        .filter(|p| *p != "projects" && *p != "locations")
        .collect::<Vec<_>>()
        .join(".")
}

impl FaultSpec {
    /// The failure probability for a method.
    pub fn rate_for(&self, method_id: &str) -> f64 {
        let short = short_id(method_id);
        self.methods
            .iter()
            .find(|(m, _)| m == method_id || *m == short)
            .map(|(_, rate)| *rate)
            .unwrap_or(self.rate)
    }
}

/// What to do to one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Wait this long first.
    pub latency: Duration,
    /// Then fail this way, if any.
    pub fault: Option<Kind>,
}

/// The injector: the spec and its seeded RNG, and how often each method was called (every
/// Google call passes [`Faults::decide`] exactly once, so benchmarks count calls here).
pub struct Faults {
    inner: Mutex<(FaultSpec, StdRng, u64)>,
    calls: Mutex<BTreeMap<String, u64>>,
}

impl Faults {
    /// An injector for `spec`.
    pub fn new(spec: FaultSpec) -> Self {
        let rng = StdRng::seed_from_u64(spec.seed);
        Faults {
            inner: Mutex::new((spec, rng, 0)),
            calls: Mutex::new(BTreeMap::new()),
        }
    }

    /// Calls per discovery method id since start or the last [`Faults::reset_calls`].
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the call counts.
    pub fn reset_calls(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Replaces the spec and reseeds.
    pub fn set(&self, spec: FaultSpec) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rng = StdRng::seed_from_u64(spec.seed);
        *inner = (spec, rng, 0);
    }

    /// The current spec.
    pub fn spec(&self) -> FaultSpec {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// How many faults were injected since the spec was set.
    pub fn injected(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).2
    }

    /// Decides the fate of one call to `method_id`.
    pub fn decide(&self, method_id: &str) -> Decision {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(method_id.to_owned())
            .or_default() += 1;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (spec, rng, count) = &mut *inner;
        let rate = spec.rate_for(method_id);
        let fault = if rate > 0.0 && rng.random_bool(rate) {
            *count += 1;
            Some(spec.kinds[rng.random_range(0..spec.kinds.len())])
        } else {
            None
        };
        Decision {
            latency: spec.latency,
            fault,
        }
    }

    /// Whether a new long-running operation should end in error.
    pub fn operation_fails(&self) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (spec, rng, count) = &mut *inner;
        let fails = spec.op_fail > 0.0 && rng.random_bool(spec.op_fail);
        if fails {
            *count += 1;
        }
        fails
    }
}

/// The error response of an injected failure (`Drop` is handled by the server loop).
pub fn error_for(kind: Kind, retry_after: u64) -> Option<ApiError> {
    match kind {
        Kind::TooManyRequests => Some(ApiError::resource_exhausted(retry_after)),
        Kind::Internal => Some(ApiError::internal(
            "Internal error encountered (sandbox fault injection).",
        )),
        Kind::Unavailable => Some(ApiError::unavailable(
            "The service is currently unavailable (sandbox fault injection).",
        )),
        Kind::Drop => None,
    }
}

/// The error an injected operation failure ends with.
pub fn operation_error() -> ApiError {
    ApiError::internal("Operation failed (sandbox fault injection).")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_spec() {
        let spec: FaultSpec = "seed=7,rate=0.2,kinds=429|drop,latency=100ms,op_delay=2s,method:iam.serviceAccounts.create=0.5"
            .parse()
            .expect("valid");
        assert_eq!(spec.seed, 7);
        assert_eq!(spec.kinds, vec![Kind::TooManyRequests, Kind::Drop]);
        assert_eq!(spec.latency, Duration::from_millis(100));
        assert_eq!(spec.op_delay, Some(Duration::from_secs(2)));
        assert_eq!(spec.rate_for("iam.projects.serviceAccounts.create"), 0.5);
        assert_eq!(spec.rate_for("iam.projects.serviceAccounts.get"), 0.2);
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "rate=2",
            "kinds=418",
            "latency=5h",
            "nonsense=1",
            "seed",
            "method:=0.1",
        ] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deterministic_under_seed() {
        let spec: FaultSpec = "seed=42,rate=0.5".parse().expect("valid");
        let run = || {
            let faults = Faults::new(spec.clone());
            (0..50)
                .map(|_| faults.decide("x.y").fault)
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.iter().any(Option::is_some) && first.iter().any(Option::is_none));
    }

    #[test]
    fn counts_calls_per_method() {
        let faults = Faults::new(FaultSpec::default());
        for id in ["a.get", "a.get", "b.create"] {
            faults.decide(id);
        }
        let calls = faults.calls();
        assert_eq!(calls.get("a.get"), Some(&2));
        assert_eq!(calls.get("b.create"), Some(&1));
        faults.reset_calls();
        assert!(faults.calls().is_empty());
    }

    #[test]
    fn zero_rate_never_fails() {
        let faults = Faults::new(FaultSpec::default());
        assert!((0..100).all(|_| faults.decide("a.b").fault.is_none()));
    }
}
