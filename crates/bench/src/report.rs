//! The results: one JSON document and a table, each target with met / not met.

use serde::Serialize;

use crate::lifecycle::Lifecycle;
use crate::stats::Summary;
use crate::worker::WorkerFigures;

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// Total memory, MB.
    pub memory_mb: f64,
    /// CPU model name.
    pub cpu_model: String,
    /// 1-minute load average at the start (shared machines are noisy).
    pub load_average: String,
}

impl Machine {
    /// Reads /proc.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_mb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_mb,
            cpu_model,
            load_average: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// One target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The goal, in words.
    pub goal: String,
    /// The figure, in words.
    pub value: String,
    /// `None` when it could not be measured.
    pub met: Option<bool>,
}

/// One section of the run and whether it could be measured.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Its name (`start-up`, `plan/apply`, `scale`, a worker).
    pub name: String,
    /// `measured`, `partial` (some figures), `failed` or `skipped` (a section it needs failed).
    pub status: String,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its wall time, seconds (what a run's length is made of; issue #20 bounds the quick run).
    pub seconds: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// `quick` or `full`.
    pub mode: String,
    /// When the run started (UTC, RFC 3339).
    pub started: String,
    /// The machine.
    pub machine: Machine,
    /// `bootstrap validate` wall time, ms.
    pub startup_ms: Option<Summary>,
    /// plan / apply / no-op plan.
    pub lifecycle: Option<Lifecycle>,
    /// How plan/apply grow with the number of deployments.
    pub scale: Option<crate::scale::Scale>,
    /// `build:` on a 1,000-file context.
    pub build: Option<crate::build::BuildFigures>,
    /// The workers, side by side.
    pub workers: Vec<WorkerFigures>,
    /// Per pool type: the Prefect server's ceiling for the calls one run needs.
    pub pairs: Vec<crate::peer::Pair>,
    /// The targets.
    pub targets: Vec<Target>,
    /// Every section, measured or not.
    pub sections: Vec<Section>,
    /// Sections that broke (the harness or the tool failed), with the error.
    pub errors: Vec<String>,
}

impl Results {
    /// Records how a section that took `seconds` went; its figures when it was measured.
    pub fn section<T>(&mut self, name: &str, seconds: f64, r: anyhow::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.sections.push(Section {
                    name: name.into(),
                    status: "measured".into(),
                    error: None,
                    seconds,
                });
                Some(v)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.errors.push(format!("{name}: {msg}"));
                self.sections.push(Section {
                    name: name.into(),
                    status: "failed".into(),
                    error: Some(msg),
                    seconds,
                });
                None
            }
        }
    }
}

fn fmt_opt(v: Option<f64>, unit: &str, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$} {unit}"))
        .unwrap_or_else(|| "n/a".into())
}

/// Fills `targets` from the figures.
pub fn evaluate(r: &mut Results) {
    let mut t = Vec::new();
    let ms = r.startup_ms.as_ref().map(|s| s.p50);
    t.push(Target {
        name: "CLI start-up (validate, p50)".into(),
        goal: "< 20 ms".into(),
        value: fmt_opt(ms, "ms", 1),
        met: ms.map(|m| m < 20.0),
    });
    let l = r.lifecycle.as_ref();
    t.push(Target {
        name: "no-op plan".into(),
        goal: "<= 3 round trips of latency".into(),
        value: l
            .map(|l| {
                format!(
                    "{:.2} round trips ({:.3} s)",
                    l.noop_round_trips, l.noop_plan.seconds
                )
            })
            .unwrap_or_else(|| "n/a".into()),
        met: l.map(|l| l.noop_round_trips <= 3.0),
    });
    t.push(Target {
        name: "apply / critical path".into(),
        goal: "<= 1.25x".into(),
        value: l
            .map(|l| {
                format!(
                    "{:.2}x ({:.2} s / {:.2} s)",
                    l.apply_ratio, l.apply.seconds, l.critical_path.seconds
                )
            })
            .unwrap_or_else(|| "n/a".into()),
        met: l.map(|l| l.apply_ratio <= 1.25),
    });
    if let Some(s) = &r.scale {
        scale_targets(s, &mut t);
    }
    if let Some(b) = &r.build {
        let ms = b.noop_plan.hash_ms;
        t.push(Target {
            name: format!("build: hashing {} files", b.files),
            goal: "well under 1 s (< 0.5 s)".into(),
            value: format!(
                "{} (no-change plan {:.3} s)",
                ms.map(|m| format!("{m} ms"))
                    .unwrap_or_else(|| "not logged".into()),
                b.noop_plan.command.seconds
            ),
            met: ms.map(|m| m < 500),
        });
    }
    let find = |name: &str| r.workers.iter().find(|w| w.name == name);
    let ours = find("bootstrap worker (cloud-run-v2)");
    let peer = find("prefect-gcp worker (cloud-run-v2)");
    let idle = ours.and_then(|w| w.idle).map(|u| u.rss_mb);
    t.push(Target {
        name: "worker idle RSS".into(),
        goal: "< 15 MB".into(),
        value: match (idle, peer.and_then(|w| w.idle).map(|u| u.rss_mb)) {
            (Some(a), Some(b)) => format!("{a:.1} MB ({:.1}x less than {b:.1} MB)", b / a),
            (a, _) => fmt_opt(a, "MB", 1),
        },
        met: idle.map(|m| m < 15.0),
    });
    let p50 = |w: Option<&WorkerFigures>| w.and_then(|w| w.pickup.as_ref()).map(|s| s.p50);
    t.push(Target {
        name: "worker pickup p50".into(),
        goal: "< 0.1 s".into(),
        value: match (p50(ours), p50(peer)) {
            (Some(a), Some(b)) => format!("{a:.3} s (prefect-gcp {b:.3} s)"),
            (a, _) => fmt_opt(a, "s", 3),
        },
        met: p50(ours).map(|p| p < 0.1),
    });
    let rate = |w: Option<&WorkerFigures>| {
        w.and_then(|w| w.throughput.as_ref())
            .map(|t| t.runs_per_second)
    };
    let ratio_target = |name: &str, other: Option<&WorkerFigures>, t: &mut Vec<Target>| {
        let ratio = match (rate(ours), rate(other)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        t.push(Target {
            name: name.into(),
            goal: ">= 10x".into(),
            value: match (rate(ours), rate(other), ratio) {
                (Some(a), Some(b), Some(x)) => format!("{x:.1}x ({a:.2} vs {b:.2} runs/s)"),
                _ => "n/a".into(),
            },
            met: ratio.map(|x| x >= 10.0),
        });
    };
    ratio_target("runs/s vs prefect-gcp cloud-run-v2", peer, &mut t);
    let (v1_ours, v1_theirs) = (
        rate(find("bootstrap worker (cloud-run)")),
        rate(find("prefect-gcp worker (cloud-run)")),
    );
    if let (Some(x), Some(y)) = (v1_ours, v1_theirs) {
        t.push(Target {
            name: "runs/s vs prefect-gcp cloud-run (v1)".into(),
            goal: ">= 10x".into(),
            value: if y > 0.0 {
                format!("{:.1}x ({x:.2} vs {y:.2} runs/s)", x / y)
            } else {
                "n/a".into()
            },
            met: (y > 0.0).then(|| x / y >= 10.0),
        });
    }
    r.targets = t;
}

/// The scale section's targets: at the largest N, a no-op plan within 3 round trips of Google
/// latency plus the Prefect server's own time for its reads (the health check's round trip, then
/// the slowest read, which the others overlap); the first apply within 1.10x of its critical
/// path at the smallest and the largest N; a one-deployment change sending calls for it only.
fn scale_targets(s: &crate::scale::Scale, t: &mut Vec<Target>) {
    let (Some(first), Some(last)) = (s.points.first(), s.points.last()) else {
        return;
    };
    let budget =
        3.0 * s.latency + s.prefect_rtt + last.noop_plan.prefect_slowest_ms as f64 / 1000.0;
    t.push(Target {
        name: format!("no-op plan, N={}", last.deployments),
        goal: "<= 3 RT + Prefect server time".into(),
        value: format!(
            "{:.3} s vs {:.3} s ({:.2} RT)",
            last.noop_plan.seconds, budget, last.noop_round_trips
        ),
        met: Some(last.noop_plan.seconds <= budget),
    });
    for p in [first, last] {
        t.push(Target {
            name: format!("first apply / critical path, N={}", p.deployments),
            goal: "<= 1.10x".into(),
            value: format!(
                "{:.2}x ({:.2} s / {:.2} s)",
                p.apply_ratio, p.first_apply.seconds, p.critical_path
            ),
            met: Some(p.apply_ratio <= 1.10),
        });
        if p.deployments == last.deployments {
            break;
        }
    }
    let extra: Vec<String> = last
        .change_one_extra
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} x{v}"))
        .collect();
    t.push(Target {
        name: format!("one-deployment apply, N={}", last.deployments),
        goal: "calls for that deployment only".into(),
        value: format!("beyond the reads: {}", extra.join(", ")),
        met: Some(last.change_one_only_that),
    });
}

/// Where the machine's CPU went in each burst (crates/bench/src/cpu.rs), when it was measured:
/// which of the programs sharing the cores a worker's throughput is waiting for.
fn cpu_table(r: &Results) -> String {
    let rows: Vec<(&str, &crate::worker::Throughput, &crate::cpu::Split)> = r
        .workers
        .iter()
        .filter_map(|w| {
            let t = w.throughput.as_ref()?;
            Some((w.name.as_str(), t, t.cpu.as_ref()?))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "  {:<34}{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12}\n",
        "CPU-s in the burst",
        "wall",
        "busy",
        "worker",
        "server",
        "sandbox",
        "execs",
        "other",
        "server/run"
    );
    for (name, t, c) in rows {
        o.push_str(&format!(
            "  {:<34}{:>8.1} {:>7.0}% {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>12}\n",
            name,
            c.wall_seconds,
            100.0 * c.machine_busy_fraction,
            c.worker_seconds,
            c.server_seconds,
            c.sandbox_seconds,
            c.executions_seconds,
            c.other_seconds,
            if t.started > 0 {
                format!("{:.3}", c.server_seconds / t.started as f64)
            } else {
                "n/a".into()
            }
        ));
    }
    o.push('\n');
    o
}

/// Per pool type: ours against prefect-gcp's as ratios, and both against the server's ceiling.
fn side_by_side(r: &Results) -> String {
    let mut o = String::new();
    for p in &r.pairs {
        let t = &p.pool_type;
        let find = |n: String| r.workers.iter().find(|w| w.name == n);
        let (ours, theirs) = (
            find(format!("bootstrap worker ({t})")),
            find(format!("prefect-gcp worker ({t})")),
        );
        o.push_str(&format!(
            "{t} pool, bootstrap worker vs prefect-gcp's (same run)\n"
        ));
        match &p.ceiling {
            Some(c) => {
                let levels: Vec<String> = c
                    .levels
                    .iter()
                    .map(|l| {
                        let cpu = l
                            .server_cpu_seconds_per_run
                            .map(|s| format!(", server {:.3} CPU-s/run", s))
                            .unwrap_or_default();
                        format!("{} in flight {:.1}{cpu}", l.in_flight, l.runs_per_second)
                    })
                    .collect();
                o.push_str(&format!(
                    "  Prefect server ceiling (poll + PENDING claim + infrastructure id per run): {:.1} runs/s ({})\n",
                    c.runs_per_second,
                    levels.join(", ")
                ));
            }
            None => o.push_str(&format!(
                "  Prefect server ceiling: not measured ({})\n",
                p.ceiling_error.as_deref().unwrap_or("?")
            )),
        }
        match (&p.calls, &p.calls_error) {
            (Some(c), _) => o.push_str(&crate::calls::table(c)),
            (None, Some(e)) => o.push_str(&format!("  server cost per call: not measured ({e})\n")),
            (None, None) => {}
        }
        let (Some(a), Some(b)) = (ours, theirs) else {
            o.push_str("  (one of the two workers was not measured)\n\n");
            continue;
        };
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.1}x", x / y),
            _ => "n/a".into(),
        };
        let rate = |w: &WorkerFigures| w.throughput.as_ref().map(|t| t.runs_per_second);
        let frac = |w: &WorkerFigures| match (&p.ceiling, rate(w)) {
            (Some(c), Some(x)) if c.runs_per_second > 0.0 => {
                format!("{:.0} %", 100.0 * x / c.runs_per_second)
            }
            _ => "n/a".into(),
        };
        o.push_str(&format!(
            "  runs/s {} ours / theirs (of the ceiling: ours {}, theirs {})\n",
            ratio(rate(a), rate(b)),
            frac(a),
            frac(b)
        ));
        let p50 = |w: &WorkerFigures| w.pickup.as_ref().map(|s| s.p50);
        let p95 = |w: &WorkerFigures| w.pickup.as_ref().map(|s| s.p95);
        o.push_str(&format!(
            "  pickup p50 {} and p95 {} faster; idle RSS {} less; peak RSS {} less; CPU per run {} less\n\n",
            ratio(p50(b), p50(a)),
            ratio(p95(b), p95(a)),
            ratio(b.idle.map(|u| u.rss_mb), a.idle.map(|u| u.rss_mb)),
            ratio(
                b.throughput.as_ref().map(|t| t.peak_rss_mb),
                a.throughput.as_ref().map(|t| t.peak_rss_mb)
            ),
            ratio(
                b.throughput.as_ref().map(|t| t.cpu_seconds_per_run),
                a.throughput.as_ref().map(|t| t.cpu_seconds_per_run)
            ),
        ));
    }
    o
}

/// The human table.
pub fn table(r: &Results) -> String {
    let mut o = String::new();
    let m = &r.machine;
    o.push_str(&format!(
        "bootstrap benchmarks ({} mode) on {} CPUs, {:.0} MB, {} (load {})\n\n",
        r.mode, m.nproc, m.memory_mb, m.cpu_model, m.load_average
    ));
    if let Some(s) = &r.startup_ms {
        o.push_str(&format!(
            "CLI start-up  bootstrap validate -f plans/guide.yaml: p50 {:.1} ms, p95 {:.1} ms (n={})\n\n",
            s.p50, s.p95, s.n
        ));
    }
    if let Some(l) = &r.lifecycle {
        o.push_str(&format!(
            "plan/apply of the guide (latency {:.0} ms per Google call, operations {:.1} s, Prefect round trip {:.1} ms)\n",
            l.latency * 1000.0,
            l.op_delay,
            l.prefect_rtt * 1000.0
        ));
        o.push_str(&format!(
            "  {:<22}{:>10}{:>12}   {}\n",
            "command", "wall s", "API calls", "vs floor"
        ));
        o.push_str(&format!(
            "  {:<22}{:>10.2}{:>12}   {}\n",
            format!("plan ({} steps)", l.plan_steps),
            l.plan.seconds,
            l.plan.calls,
            ""
        ));
        o.push_str(&format!(
            "  {:<22}{:>10.2}{:>12}   {:.2}x of {:.2} s\n",
            "apply", l.apply.seconds, l.apply.calls, l.apply_ratio, l.critical_path.seconds
        ));
        o.push_str(&format!(
            "  {:<22}{:>10.3}{:>12}   {:.2} round trips\n",
            "plan (no changes)", l.noop_plan.seconds, l.noop_plan.calls, l.noop_round_trips
        ));
        let chain: Vec<String> = l
            .critical_path
            .chain
            .iter()
            .map(|s| format!("{} {:.2}s", s.address, s.seconds))
            .collect();
        o.push_str(&format!(
            "  critical path: observe {:.2}s -> {}\n\n",
            l.critical_path.observe_seconds,
            chain.join(" -> ")
        ));
    }
    if let Some(s) = &r.scale {
        o.push_str(&crate::scale::table(s));
        o.push('\n');
    }
    if let Some(b) = &r.build {
        o.push_str(&crate::build::table(b));
        o.push('\n');
    }
    if !r.workers.is_empty() {
        o.push_str(&format!(
            "  {:<34}{:>9} {:>9} {:>9} {:>9} {:>14} {:>9} {:>9} {:>9}\n",
            "worker",
            "idle MB",
            "idle CPU",
            "pickup50",
            "pickup95",
            "runs/s (n)",
            "peak MB",
            "burst CPU",
            "CPU/run"
        ));
        for w in &r.workers {
            let t = w.throughput.as_ref();
            o.push_str(&format!(
                "  {:<34}{:>9} {:>9} {:>9} {:>9} {:>14} {:>9} {:>9} {:>9}\n",
                w.name,
                fmt_opt(w.idle.map(|u| u.rss_mb), "", 1).trim(),
                fmt_opt(w.idle.map(|u| u.cpu_seconds), "", 2).trim(),
                fmt_opt(w.pickup.as_ref().map(|s| s.p50), "", 3).trim(),
                fmt_opt(w.pickup.as_ref().map(|s| s.p95), "", 3).trim(),
                t.map(|t| format!("{:.2} ({}/{})", t.runs_per_second, t.started, t.queued))
                    .unwrap_or_else(|| "n/a".into()),
                fmt_opt(t.map(|t| t.peak_rss_mb), "", 1).trim(),
                fmt_opt(t.map(|t| t.cpu_seconds), "", 2).trim(),
                fmt_opt(t.map(|t| t.cpu_seconds_per_run), "", 4).trim(),
            ));
            for n in &w.notes {
                o.push_str(&format!("      note: {n}\n"));
            }
        }
        o.push('\n');
        o.push_str(&cpu_table(r));
        o.push_str(&side_by_side(r));
    }
    o.push_str("targets\n");
    for t in &r.targets {
        let mark = match t.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        o.push_str(&format!(
            "  {:<32} goal {:<28} {:<40} {mark}\n",
            t.name, t.goal, t.value
        ));
    }
    o.push_str("sections (wall time)\n");
    for s in &r.sections {
        o.push_str(&format!(
            "  {:<34}{:>8.1} s  {}\n",
            s.name, s.seconds, s.status
        ));
    }
    o.push_str(&format!(
        "  {:<34}{:>8.1} s\n",
        "harness in all",
        r.sections.iter().map(|s| s.seconds).sum::<f64>()
    ));
    for e in &r.errors {
        o.push_str(&format!("error: {e}\n"));
    }
    o
}
