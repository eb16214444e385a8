//! Rendering a plan for people (Terraform-like) and for programs (JSON).

use std::fmt::Write;

use console::Style;
use serde_json::Value;

use super::plan::{Action, FieldChange, Mode, Op, Plan, Step};

/// Styles, all plain when colour is off (not a terminal, or `NO_COLOR`).
struct Palette {
    add: Style,
    change: Style,
    delete: Style,
    dim: Style,
    bold: Style,
}

impl Palette {
    fn new(color: bool) -> Self {
        let s = |st: Style| st.force_styling(color);
        Palette {
            add: s(Style::new().green()),
            change: s(Style::new().yellow()),
            delete: s(Style::new().red()),
            dim: s(Style::new().dim()),
            bold: s(Style::new().bold()),
        }
    }
}

fn symbol(action: Action) -> &'static str {
    match action {
        Action::Create => "+",
        Action::Update => "~",
        Action::Replace => "-/+",
        Action::Delete => "-",
    }
}

fn value(v: &Option<Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

fn field_line(out: &mut String, c: &FieldChange, action: Action, width: usize, p: &Palette) {
    let path = format!("{:width$}", c.path);
    let line = if c.sensitive {
        format!(
            "{} {path} = (sensitive)",
            if action == Action::Create { "+" } else { "~" }
        )
    } else if c.known_after_apply {
        format!("~ {path} = {} -> (known after apply)", value(&c.old))
    } else {
        match (&c.old, &c.new) {
            (None, Some(_)) => format!("+ {path} = {}", value(&c.new)),
            (Some(_), None) => format!("- {path} = {}", value(&c.old)),
            _ => format!("~ {path} = {} -> {}", value(&c.old), value(&c.new)),
        }
    };
    let style = match line.as_bytes().first() {
        Some(b'+') => &p.add,
        Some(b'-') => &p.delete,
        _ => &p.change,
    };
    let _ = writeln!(out, "      {}", style.apply_to(line));
}

fn step(out: &mut String, s: &Step, p: &Palette) {
    if let Op::DeleteWorkerJobs { label, jobs, .. } = &s.op {
        // One line for any number of jobs (there can be hundreds).
        let regions: std::collections::BTreeSet<&str> =
            jobs.iter().map(|j| j.region.as_str()).collect();
        let count = jobs.len();
        let _ = writeln!(
            out,
            "  {} {}: {count} Cloud Run job{} made by the worker (label {label}, in {}) {}",
            p.delete.apply_to(format!("{:>3}", symbol(s.action))),
            p.bold.apply_to(&s.address),
            if count == 1 { "" } else { "s" },
            regions.into_iter().collect::<Vec<_>>().join(", "),
            p.dim.apply_to("will be deleted")
        );
        return;
    }
    let style = match s.action {
        Action::Create => &p.add,
        Action::Update => &p.change,
        Action::Replace | Action::Delete => &p.delete,
    };
    let verb = match s.action {
        Action::Create => "will be created",
        Action::Update if s.adopted => "will be adopted and updated in place",
        Action::Update => "will be updated in place",
        Action::Replace => "must be replaced",
        Action::Delete => "will be deleted",
    };
    let _ = writeln!(
        out,
        "  {} {} {}",
        style.apply_to(format!("{:>3}", symbol(s.action))),
        p.bold.apply_to(&s.address),
        p.dim.apply_to(verb)
    );
    if let Some(reason) = &s.reason {
        let _ = writeln!(out, "      {}", p.dim.apply_to(format!("# {reason}")));
    }
    let width = s.changes.iter().map(|c| c.path.len()).max().unwrap_or(0);
    for c in &s.changes {
        field_line(out, c, s.action, width, p);
    }
}

/// The plan as people read it.
pub fn human(plan: &Plan, color: bool) -> String {
    let p = Palette::new(color);
    let mut out = String::new();
    if !plan.has_changes() {
        let _ = writeln!(
            out,
            "No changes. Project {} and Prefect match the plan ({} resources checked).",
            plan.project,
            plan.unchanged.len()
        );
        render_adopted(&mut out, plan, &p);
        render_cost(&mut out, plan, &p);
        return out;
    }
    let what = match plan.mode {
        Mode::Apply => "make these changes",
        Mode::Destroy => "tear down these resources",
    };
    let _ = writeln!(out, "bootstrap will {what} (project {}):\n", plan.project);
    for s in &plan.steps {
        step(&mut out, s, &p);
        out.push('\n');
    }
    render_adopted(&mut out, plan, &p);
    let _ = writeln!(
        out,
        "{} {} to create, {} to update, {} to replace, {} to delete; {} unchanged.",
        p.bold.apply_to("Plan:"),
        plan.count(Action::Create),
        plan.count(Action::Update),
        plan.count(Action::Replace),
        plan.count(Action::Delete),
        plan.unchanged.len()
    );
    render_cost(&mut out, plan, &p);
    out
}

fn render_cost(out: &mut String, plan: &Plan, p: &Palette) {
    if let Some(cost) = &plan.cost {
        let _ = writeln!(out, "{}", p.dim.apply_to(super::cost::human(cost)));
    }
}

fn render_adopted(out: &mut String, plan: &Plan, p: &Palette) {
    if plan.adopted.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{}",
        p.dim
            .apply_to("Kept (they existed before bootstrap and carry no bootstrap marker):")
    );
    for a in &plan.adopted {
        let _ = writeln!(out, "      {a}");
    }
    out.push('\n');
}

/// The plan as JSON (documented in the README: `format_version`, `mode`, `project`, `steps[]`
/// with `address`, `action`, `changes[]`, `depends_on`, `op`; secrets never included).
pub fn json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
