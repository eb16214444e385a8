//! The human report: one ✓/✗ line per check, hints under failures, a verdict at the end.

use console::Style;

use super::Report;

/// Column the details start at (after the glyph and the label).
const LABEL_WIDTH: usize = 20;

fn label(check: &str) -> &'static str {
    match check {
        "credentials" => "Google credentials",
        "project" => "GCP project",
        "apis" => "APIs",
        "permissions" => "IAM permissions",
        "region" => "region",
        "prefect_api" => "Prefect API",
        "prefect_auth" => "Prefect auth",
        "block_type" => "block type",
        "job_template" => "job template",
        _ => "check",
    }
}

pub(super) fn human(report: &Report, heading: &str, color: bool) -> String {
    let style = |s: Style| s.force_styling(color);
    let (green, red, dim, bold) = (
        style(Style::new().green()),
        style(Style::new().red()),
        style(Style::new().dim()),
        style(Style::new().bold()),
    );
    let mut out = format!("{}\n\n", bold.apply_to(format!("Preflight for {heading}")));
    let indent = " ".repeat(4 + LABEL_WIDTH + 1);
    for c in &report.checks {
        let glyph = if c.ok {
            green.apply_to("✓")
        } else if c.not_checked {
            dim.apply_to("-")
        } else {
            red.apply_to("✗")
        };
        // A detail of several lines (the credentials: one line per fact) continues under
        // the first, aligned.
        let mut lines = c.detail.lines();
        out.push_str(&format!(
            "  {glyph} {:<width$} {}\n",
            label(c.check),
            lines.next().unwrap_or_default(),
            width = LABEL_WIDTH
        ));
        for line in lines {
            out.push_str(&format!("{indent}{line}\n"));
        }
        if let Some(hint) = &c.hint {
            for (i, line) in hint.lines().enumerate() {
                let text = if i == 0 {
                    format!("hint: {line}")
                } else {
                    format!("      {line}")
                };
                out.push_str(&format!("{indent}{}\n", dim.apply_to(text)));
            }
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| !c.ok && !c.not_checked)
        .count();
    let skipped = report.checks.iter().filter(|c| c.not_checked).count();
    out.push('\n');
    if failed == 0 {
        out.push_str(&format!(
            "{}\n",
            green.apply_to(format!(
                "All {} checks passed: apply has what it needs.",
                report.checks.len()
            ))
        ));
    } else {
        out.push_str(&format!(
            "{}\n",
            red.apply_to(format!(
                "{failed} of {} checks failed{}.",
                report.checks.len(),
                if skipped > 0 {
                    format!(" ({skipped} not checked)")
                } else {
                    String::new()
                }
            ))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Check;
    use super::*;

    fn report() -> Report {
        Report {
            checks: vec![
                Check::pass("credentials", "me@p.iam.gserviceaccount.com, from a key"),
                Check::fail(
                    "permissions",
                    "missing 1 of 2: run.services.create",
                    Some("grant:\n  roles/run.admin".into()),
                ),
                Check::not_checked("block_type", "the Prefect API is not reachable"),
            ],
        }
    }

    #[test]
    fn plain_text_without_colour() {
        insta::assert_snapshot!(report().human("guide.yaml (project p)", false), @r"
        Preflight for guide.yaml (project p)

          ✓ Google credentials   me@p.iam.gserviceaccount.com, from a key
          ✗ IAM permissions      missing 1 of 2: run.services.create
                                 hint: grant:
                                         roles/run.admin
          - block type           not checked: the Prefect API is not reachable

        1 of 3 checks failed (1 not checked).
        ");
    }

    #[test]
    fn colour_only_when_asked() {
        assert!(report().human("x", true).contains("\u{1b}["));
        assert!(!report().human("x", false).contains('\u{1b}'));
    }
}
