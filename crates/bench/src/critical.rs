//! The critical path of an apply: the least time any tool could take for the same plan, given
//! the round-trip latency `L` and the time `D` a long-running operation takes.
//!
//! The model (explained in BENCHMARKS.md):
//! - a step costs the Google round trips it cannot avoid, in sequence, times `L`, plus `D` for
//!   each long-running operation it must wait out (an operation is one call to start it, `D`,
//!   and one call that sees it done), plus its Prefect round trips times the measured Prefect
//!   round trip;
//! - steps run as soon as the steps in their `depends_on` are done (as `bootstrap apply` does),
//!   so the apply's floor is the longest path through the plan's dependency graph;
//! - before the steps, apply observes: reads run in parallel, the deepest chain is the service
//!   account read and then its keys and policy (one round trip when the account is absent).

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;

/// The costs the model needs.
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    /// Added latency per Google call, seconds.
    pub latency: f64,
    /// Duration of a long-running operation, seconds.
    pub op_delay: f64,
    /// One round trip to the Prefect server, seconds (measured).
    pub prefect_rtt: f64,
}

/// What one step needs at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepCalls {
    /// Google calls that must happen one after another.
    pub gcp_sequential: u32,
    /// Long-running operations waited out one after another.
    pub operations: u32,
    /// Prefect calls that must happen one after another.
    pub prefect_sequential: u32,
}

/// The minimal sequential calls of a step, by its operation (`op` in `bootstrap plan --json`).
pub fn calls_for(op: &Value) -> Result<StepCalls> {
    let kind = op
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("a plan step without `op`"))?;
    let flag = |k: &str| op.get(k).and_then(Value::as_bool).unwrap_or(false);
    let c = |gcp_sequential, operations, prefect_sequential| StepCalls {
        gcp_sequential,
        operations,
        prefect_sequential,
    };
    Ok(match kind {
        // batchEnable, then one read of the finished operation.
        "enable_apis" => c(2, 1, 0),
        // create, then three consecutive reads that see it (the tool's rule against IAM's
        // eventual consistency, as Terraform's provider does).
        "create_service_account" => c(4, 0, 0),
        "patch_service_account" | "delete_service_account" => c(1, 0, 0),
        // read-modify-write: getIamPolicy, setIamPolicy.
        "edit_project_policy" | "edit_service_account_policy" | "grant_secret_access" => c(2, 0, 0),
        "create_key" | "delete_key" | "delete_secret" => c(1, 0, 0),
        "put_secret" => c(
            u32::from(flag("create")) + u32::from(flag("add_version")),
            0,
            0,
        ),
        // PATCH allowMissing=true, then one read of the finished operation.
        "upsert_service" | "delete_service" => c(2, 1, 0),
        // block type by slug, its schemas, create (or update).
        "upsert_block" => c(0, 0, 3),
        // The plan says which (no read of the pool first): one write, or delete then create.
        "create_work_pool" | "update_work_pool" => c(0, 0, 1),
        "replace_work_pool" => c(0, 0, 2),
        // upsert the flow, upsert the deployment.
        "upsert_deployment" => c(0, 0, 2),
        "delete_block" | "delete_work_pool" | "delete_deployment" => c(0, 0, 1),
        other => bail!("unknown plan operation `{other}`"),
    })
}

/// One step on the critical path.
#[derive(Debug, Clone, Serialize)]
pub struct PathStep {
    /// The step's address.
    pub address: String,
    /// Its model cost, seconds.
    pub seconds: f64,
    /// The calls behind the cost.
    pub calls: StepCalls,
}

/// The result of the model.
#[derive(Debug, Clone, Serialize)]
pub struct CriticalPath {
    /// The observe phase's floor, seconds.
    pub observe_seconds: f64,
    /// The longest chain of steps, in order.
    pub chain: Vec<PathStep>,
    /// Observe plus the chain, seconds.
    pub seconds: f64,
    /// Google round trips on the path (observe included).
    pub gcp_round_trips: u32,
    /// Operations waited out on the path.
    pub operations: u32,
    /// Deployment upserts in the plan.
    pub deployment_writes: u32,
    /// When the first of them can start at the earliest (observe included), seconds.
    pub deployments_start: Option<f64>,
}

impl CriticalPath {
    /// The floor when the Prefect server does its writes one at a time and they take
    /// `server_seconds` in all (SQLite has one writer): they cannot end before the first
    /// deployment upsert can start plus all of that time. The model above counts each Prefect
    /// write as one round trip, in parallel, which a server on SQLite cannot do; this is the
    /// floor that server allows.
    pub fn with_serial_writes(&self, server_seconds: f64) -> f64 {
        match self.deployments_start {
            Some(start) => self.seconds.max(start + server_seconds),
            None => self.seconds,
        }
    }
}

fn cost(c: StepCalls, k: &Costs) -> f64 {
    f64::from(c.gcp_sequential) * k.latency
        + f64::from(c.operations) * k.op_delay
        + f64::from(c.prefect_sequential) * k.prefect_rtt
}

/// The critical path of the plan printed by `bootstrap plan --json`.
pub fn critical_path(plan: &Value, k: &Costs) -> Result<CriticalPath> {
    let steps = plan
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the plan has no `steps` array"))?;
    let mut nodes: BTreeMap<String, (StepCalls, Vec<String>)> = BTreeMap::new();
    let mut order = Vec::new();
    for s in steps {
        let address = s
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("a plan step without `address`"))?
            .to_string();
        let op = s
            .get("op")
            .ok_or_else(|| anyhow!("step {address} has no `op`"))?;
        let deps = s
            .get("depends_on")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        nodes.insert(address.clone(), (calls_for(op)?, deps));
        order.push(address);
    }
    // Longest path by memoised depth-first search; a cycle is an error, not a hang.
    let mut finish: BTreeMap<String, (f64, Option<String>)> = BTreeMap::new();
    fn visit(
        a: &str,
        nodes: &BTreeMap<String, (StepCalls, Vec<String>)>,
        k: &Costs,
        finish: &mut BTreeMap<String, (f64, Option<String>)>,
        stack: &mut Vec<String>,
    ) -> Result<f64> {
        if let Some((f, _)) = finish.get(a) {
            return Ok(*f);
        }
        if stack.iter().any(|s| s == a) {
            bail!("the plan's dependencies form a cycle through {a}");
        }
        let Some((calls, deps)) = nodes.get(a) else {
            // A dependency outside the plan is already done.
            return Ok(0.0);
        };
        stack.push(a.to_string());
        let mut start = 0.0;
        let mut via = None;
        for d in deps {
            let f = visit(d, nodes, k, finish, stack)?;
            if nodes.contains_key(d) && f >= start {
                start = f;
                via = Some(d.clone());
            }
        }
        stack.pop();
        let f = start + cost(*calls, k);
        finish.insert(a.to_string(), (f, via));
        Ok(f)
    }
    let mut last: Option<(String, f64)> = None;
    for a in &order {
        let f = visit(a, &nodes, k, &mut finish, &mut Vec::new())?;
        if last.as_ref().is_none_or(|(_, best)| f > *best) {
            last = Some((a.clone(), f));
        }
    }
    let mut chain = Vec::new();
    let mut cursor = last.map(|(a, _)| a);
    while let Some(a) = cursor {
        let calls = nodes[&a].0;
        chain.push(PathStep {
            address: a.clone(),
            seconds: cost(calls, k),
            calls,
        });
        cursor = finish.get(&a).and_then(|(_, via)| via.clone());
    }
    chain.reverse();
    let creates_account = steps
        .iter()
        .any(|s| s.pointer("/op/op").and_then(Value::as_str) == Some("create_service_account"));
    let observe_trips = if creates_account { 1 } else { 2 };
    let observe_seconds = f64::from(observe_trips) * k.latency;
    let mut deployment_writes = 0;
    let mut deployments_start: Option<f64> = None;
    for s in steps {
        if s.pointer("/op/op").and_then(Value::as_str) == Some("upsert_deployment")
            && let Some(a) = s.get("address").and_then(Value::as_str)
            && let (Some((f, _)), Some((calls, _))) = (finish.get(a), nodes.get(a))
        {
            deployment_writes += 1;
            let start = f - cost(*calls, k) + observe_seconds;
            deployments_start = Some(deployments_start.map_or(start, |d| d.min(start)));
        }
    }
    let seconds = observe_seconds + chain.iter().map(|s| s.seconds).sum::<f64>();
    Ok(CriticalPath {
        observe_seconds,
        gcp_round_trips: observe_trips + chain.iter().map(|s| s.calls.gcp_sequential).sum::<u32>(),
        operations: chain.iter().map(|s| s.calls.operations).sum(),
        chain,
        seconds,
        deployment_writes,
        deployments_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const K: Costs = Costs {
        latency: 0.1,
        op_delay: 2.0,
        prefect_rtt: 0.01,
    };

    fn step(address: &str, op: Value, deps: &[&str]) -> Value {
        json!({"address": address, "op": op, "depends_on": deps})
    }

    #[test]
    fn longest_chain_through_dependencies() {
        let plan = json!({"steps": [
            step("apis", json!({"op": "enable_apis"}), &[]),
            step("sa", json!({"op": "create_service_account"}), &["apis"]),
            step("key", json!({"op": "create_key"}), &["sa"]),
            step("block", json!({"op": "upsert_block"}), &["key"]),
            step("roles", json!({"op": "edit_project_policy"}), &["sa"]),
            step("service", json!({"op": "upsert_service"}), &["roles", "apis"]),
        ]});
        let p = critical_path(&plan, &K).expect("model");
        let names: Vec<&str> = p.chain.iter().map(|s| s.address.as_str()).collect();
        assert_eq!(names, ["apis", "sa", "roles", "service"]);
        // observe 1 trip (account absent) + apis 2 + sa 4 + roles 2 + service 2 = 11 trips, 2 ops.
        assert_eq!(p.gcp_round_trips, 11);
        assert_eq!(p.operations, 2);
        assert!((p.seconds - (1.1 + 4.0)).abs() < 1e-9, "{}", p.seconds);
    }

    #[test]
    fn serial_writes_bound_the_floor_of_many_deployments() {
        let mut steps = vec![
            step("apis", json!({"op": "enable_apis"}), &[]),
            step("sa", json!({"op": "create_service_account"}), &["apis"]),
            step("service", json!({"op": "upsert_service"}), &["sa"]),
            step("pool", json!({"op": "create_work_pool"}), &["sa"]),
        ];
        for i in 0..100 {
            steps.push(step(
                &format!("d{i}"),
                json!({"op": "upsert_deployment"}),
                &["pool"],
            ));
        }
        let p = critical_path(&json!({ "steps": steps }), &K).expect("model");
        // observe 0.1 + apis 2.2 + sa 0.4 + service 2.2 = 4.9 s; the deployments may start
        // after observe, apis, sa and the pool's one write: 0.1 + 2.2 + 0.4 + 0.01.
        assert!((p.seconds - 4.9).abs() < 1e-9, "{}", p.seconds);
        assert_eq!(p.deployment_writes, 100);
        let start = p.deployments_start.expect("deployments");
        assert!((start - 2.71).abs() < 1e-9, "{start}");
        // 100 writes of 50 ms one after another end at 7.71 s, past the Google chain.
        assert!((p.with_serial_writes(100.0 * 0.05) - 7.71).abs() < 1e-9);
        // Fast writes leave the Google chain the floor.
        assert!((p.with_serial_writes(100.0 * 0.001) - 4.9).abs() < 1e-9);
    }

    #[test]
    fn dependencies_outside_the_plan_are_done() {
        let plan = json!({"steps": [
            step("roles", json!({"op": "edit_project_policy"}), &["sa"]),
        ]});
        let p = critical_path(&plan, &K).expect("model");
        assert_eq!(p.chain.len(), 1);
        // observe 2 trips (account exists) + 2.
        assert!((p.seconds - 0.4).abs() < 1e-9);
    }

    #[test]
    fn cycles_and_unknown_ops_are_errors() {
        let cyclic = json!({"steps": [
            step("a", json!({"op": "create_key"}), &["b"]),
            step("b", json!({"op": "create_key"}), &["a"]),
        ]});
        assert!(critical_path(&cyclic, &K).is_err());
        let unknown = json!({"steps": [step("a", json!({"op": "teleport"}), &[])]});
        assert!(critical_path(&unknown, &K).is_err());
        assert!(critical_path(&json!({}), &K).is_err());
    }

    #[test]
    fn put_secret_counts_only_what_it_does() {
        let both = calls_for(&json!({"op": "put_secret", "create": true, "add_version": true}));
        let one = calls_for(&json!({"op": "put_secret", "create": false, "add_version": true}));
        assert_eq!(both.expect("known").gcp_sequential, 2);
        assert_eq!(one.expect("known").gcp_sequential, 1);
    }
}
