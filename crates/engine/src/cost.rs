//! The worker's estimated monthly cost at Cloud Run list prices, for `plan` (human and JSON).
//!
//! One table, [`PRICES`], holds every figure with its date and source. They are Google's
//! published list prices for Tier 1 regions (e.g. us-central1) in USD, before the free tier and
//! committed-use discounts, and before any sustained use of other products. Tier 2 regions cost
//! more: the estimate says which tier it assumes. Update the table (and [`PRICES_AS_OF`]) when
//! Google's pricing page changes; the snapshot tests then show the new figures.

use bootstrap_spec::{Worker, WorkerKind};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Where the prices come from.
pub const PRICES_SOURCE: &str = "https://cloud.google.com/run/pricing";
/// When the table was last checked against [`PRICES_SOURCE`].
pub const PRICES_AS_OF: &str = "2025-06-01";
/// Seconds in a billing month as Google's pricing calculator counts it (730 hours).
pub const MONTH_SECONDS: f64 = 730.0 * 3600.0;

/// One billing model's unit prices (USD, Tier 1 regions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UnitPrices {
    /// The model, as Google names it.
    pub model: &'static str,
    /// Per vCPU-second.
    pub vcpu_second: f64,
    /// Per GiB-second of memory.
    pub gib_second: f64,
    /// Per million requests (request-based billing only).
    pub million_requests: f64,
}

/// Instance-based billing ("CPU always allocated"): what an always-on service with
/// `--no-cpu-throttling` pays for every second an instance exists.
pub const INSTANCE_BASED: UnitPrices = UnitPrices {
    model: "instance-based",
    vcpu_second: 0.000018,
    gib_second: 0.000002,
    million_requests: 0.0,
};

/// Request-based billing ("CPU only allocated during request processing"): what a
/// scale-to-zero service such as a waker pays, per second of request processing plus per
/// request.
pub const REQUEST_BASED: UnitPrices = UnitPrices {
    model: "request-based",
    vcpu_second: 0.000024,
    gib_second: 0.0000025,
    million_requests: 0.40,
};

/// Worker pools are billed per second an instance runs at the instance-based rates.
pub const WORKER_POOL: UnitPrices = UnitPrices {
    model: "worker-pool (instance-based rates)",
    vcpu_second: 0.000018,
    gib_second: 0.000002,
    million_requests: 0.0,
};

/// Every price the estimates use.
pub const PRICES: &[UnitPrices] = &[INSTANCE_BASED, REQUEST_BASED, WORKER_POOL];

/// The worker's estimated monthly cost, as `plan` prints it and `--json` carries it.
/// (`Cow`: a saved plan read back owns its text.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostEstimate {
    /// `service` or `worker-pool`.
    pub kind: Cow<'static, str>,
    /// The billing model the figure uses.
    pub billing: Cow<'static, str>,
    /// Instances billed all month.
    pub instances: u32,
    /// vCPUs per instance.
    pub vcpu: f64,
    /// GiB of memory per instance.
    pub memory_gib: f64,
    /// USD per month, rounded to cents.
    pub monthly_usd: f64,
    /// What the figure leaves out, in a few words.
    pub assumes: String,
    pub prices_as_of: Cow<'static, str>,
    pub source: Cow<'static, str>,
    /// Scale to zero: USD per hour the pool's instances are up (on top of `monthly_usd`, which
    /// is then the floor: the waker alone, the pool at 0 all month).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_awake_hour_usd: Option<f64>,
}

/// The waker's sweep calls in a month: the sweep is a timer (it calls whatever the pool is
/// doing), one call per window plus up to the triggers service's 5 s evaluation period
/// (`bootstrap_prefect::wake::SWEEP_WITHIN_SECONDS`).
pub fn sweep_calls_per_month(within_seconds: u64) -> f64 {
    (MONTH_SECONDS / (within_seconds as f64 + 5.0)).round()
}

/// Request-based billing rounds each request's processing time up to the next 100 ms
/// (cloud.google.com/run/pricing, "billable time").
pub const BILLED_SECONDS_PER_CALL: f64 = 0.1;

/// The waker's month while the pool sleeps: request-billed, one 1 vCPU / 512 MiB instance,
/// every sweep call billed [`BILLED_SECONDS_PER_CALL`].
pub fn waker_monthly(within_seconds: u64) -> f64 {
    let calls = sweep_calls_per_month(within_seconds);
    request_billed(1.0, 0.5, calls * BILLED_SECONDS_PER_CALL, calls)
}

/// Cost of `instances` always-on instances of `vcpu` / `memory_gib` for a month at `prices`.
pub fn always_on(prices: &UnitPrices, instances: u32, vcpu: f64, memory_gib: f64) -> f64 {
    let per_second = vcpu * prices.vcpu_second + memory_gib * prices.gib_second;
    cents(per_second * MONTH_SECONDS * f64::from(instances))
}

/// Cost of a request-billed service busy `busy_seconds` in a month over `requests` requests.
pub fn request_billed(vcpu: f64, memory_gib: f64, busy_seconds: f64, requests: f64) -> f64 {
    let p = REQUEST_BASED;
    cents(
        (vcpu * p.vcpu_second + memory_gib * p.gib_second) * busy_seconds
            + requests / 1e6 * p.million_requests,
    )
}

fn cents(usd: f64) -> f64 {
    (usd * 100.0).round() / 100.0
}

/// The estimate for the plan's worker, `None` when cpu or memory cannot be read as numbers.
pub fn estimate(worker: &Worker) -> Option<CostEstimate> {
    let vcpu = parse_cpu(&worker.cpu)?;
    let memory_gib = parse_memory_gib(&worker.memory)?;
    let (kind, prices, instances, assumes) = match worker.kind {
        WorkerKind::Service => {
            // A throttled service is billed per request, and its idle minimum instances at a
            // lower rate this table does not hold: the figure then only says the order.
            let note = if worker.cpu_throttling {
                "min_instances always on; cpu_throttling is on, which is billed request-based \
                 and is not modelled here"
            } else {
                "min_instances always on"
            };
            ("service", INSTANCE_BASED, worker.min_instances, note)
        }
        WorkerKind::WorkerPool if worker.scale_to_zero.is_some() => {
            let within = bootstrap_prefect::wake::SWEEP_WITHIN_SECONDS;
            let per_second = vcpu * WORKER_POOL.vcpu_second + memory_gib * WORKER_POOL.gib_second;
            let per_hour =
                (per_second * 3600.0 * f64::from(worker.instances) * 10_000.0).round() / 10_000.0;
            return Some(CostEstimate {
                kind: "worker-pool".into(),
                billing: "worker-pool (instance-based rates) + request-based waker".into(),
                instances: worker.instances,
                vcpu,
                memory_gib,
                monthly_usd: waker_monthly(within),
                assumes: format!(
                    "awake while runs are due or running and for idle ({}s) after; the waker's \
                     {} sweep calls a month billed {BILLED_SECONDS_PER_CALL}s each; Tier 1 region \
                     list prices in USD, before the free tier and discounts",
                    worker
                        .scale_to_zero
                        .as_ref()
                        .map_or(0, |s| s.idle.as_secs()),
                    sweep_calls_per_month(within),
                ),
                prices_as_of: PRICES_AS_OF.into(),
                source: PRICES_SOURCE.into(),
                per_awake_hour_usd: Some(per_hour),
            });
        }
        WorkerKind::WorkerPool => (
            "worker-pool",
            WORKER_POOL,
            worker.instances,
            "instances always on",
        ),
    };
    Some(CostEstimate {
        kind: kind.into(),
        billing: prices.model.into(),
        instances,
        vcpu,
        memory_gib,
        monthly_usd: always_on(&prices, instances, vcpu, memory_gib),
        assumes: format!(
            "{assumes}; Tier 1 region list prices in USD, before the free tier and discounts"
        ),
        prices_as_of: PRICES_AS_OF.into(),
        source: PRICES_SOURCE.into(),
        per_awake_hour_usd: None,
    })
}

/// `1`, `2`, `0.5`, `1000m` -> vCPUs.
pub fn parse_cpu(text: &str) -> Option<f64> {
    let t = text.trim();
    let v = match t.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => t.parse::<f64>().ok()?,
    };
    (v.is_finite() && v > 0.0).then_some(v)
}

/// `512Mi`, `1Gi`, `2G`, `512M`, `1024Ki` -> GiB (decimal units converted to binary GiB).
pub fn parse_memory_gib(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let bytes_per_unit = match unit {
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "K" | "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "" => 1.0,
        _ => return None,
    };
    let gib = n * bytes_per_unit / (1024.0 * 1024.0 * 1024.0);
    (gib.is_finite() && gib > 0.0).then_some(gib)
}

/// One line for people: `Estimated worker cost: $49.93/month (...)`.
pub fn human(e: &CostEstimate) -> String {
    let plural = if e.instances == 1 { "" } else { "s" };
    let size = format!(
        "{} instance{plural} of {} vCPU / {} GiB",
        e.instances,
        trim(e.vcpu),
        trim(e.memory_gib)
    );
    let basis = format!(
        "{} billing; {}; list prices of {}, {}",
        e.billing, e.assumes, e.prices_as_of, e.source
    );
    if let Some(per_hour) = e.per_awake_hour_usd {
        return format!(
            "Estimated worker cost: ${:.2}/month + ${per_hour:.4} per hour awake (worker pool \
             scaled to zero, {size} when awake, {basis})",
            e.monthly_usd
        );
    }
    let kind = if e.kind == "service" {
        "service"
    } else {
        "worker pool"
    };
    format!(
        "Estimated worker cost: ${:.2}/month ({kind}, {size}, {basis})",
        e.monthly_usd
    )
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guides_service_is_about_49_dollars() {
        // 1 vCPU and 512 MiB always on: the "$49/month" figure.
        let usd = always_on(&INSTANCE_BASED, 1, 1.0, 0.5);
        assert!((usd - 49.93).abs() < 0.01, "{usd}");
        assert_eq!(always_on(&WORKER_POOL, 0, 1.0, 0.5), 0.0);
        assert_eq!(always_on(&WORKER_POOL, 2, 1.0, 0.5), 99.86);
    }

    #[test]
    fn request_billing_counts_busy_seconds_and_requests() {
        // An hour of processing and 10 000 requests in a month.
        let usd = request_billed(1.0, 0.5, 3600.0, 10_000.0);
        assert_eq!(usd, cents(3600.0 * (0.000024 + 0.5 * 0.0000025) + 0.004));
    }

    #[test]
    fn scale_to_zero_costs_the_waker_plus_the_hours_awake() {
        // 2026 months of 730 h: 40 431 sweeps of 65 s, each billed 0.1 s of 1 vCPU / 0.5 GiB.
        assert_eq!(sweep_calls_per_month(60), 40_431.0);
        let waker = waker_monthly(60);
        assert_eq!(
            waker,
            cents(4043.1 * (0.000024 + 0.5 * 0.0000025) + 40_431.0 / 1e6 * 0.40)
        );
        assert!(waker < 0.2, "{waker}");
        // An hour awake of the guide's size: 1/730 of the always-on month.
        let hour: f64 = (0.000018 + 0.5 * 0.000002) * 3600.0;
        assert!((hour * 730.0 - 49.93).abs() < 0.01);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("1"), Some(1.0));
        assert_eq!(parse_cpu("1000m"), Some(1.0));
        assert_eq!(parse_cpu("0.5"), Some(0.5));
        assert_eq!(parse_cpu("x"), None);
        assert_eq!(parse_memory_gib("512Mi"), Some(0.5));
        assert_eq!(parse_memory_gib("2Gi"), Some(2.0));
        assert!((parse_memory_gib("1G").unwrap() - 0.931).abs() < 0.001);
        assert_eq!(parse_memory_gib("5Zi"), None);
    }
}
