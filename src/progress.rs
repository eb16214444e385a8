//! How `apply` and `destroy` look while they run: one line per finished step on stderr, and a
//! spinner naming the steps in flight when stderr is a terminal. The engine reports through
//! [`bootstrap_engine::apply::Reporter`]; the terminal is the CLI's business.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bootstrap_engine::Address;
use bootstrap_engine::apply::{Entry, Outcome, Reporter};

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Progress {
    pub fn new(interactive: bool) -> Self {
        let bar = interactive.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
        }
    }
}

impl Reporter for Progress {
    fn running(&self, in_flight: &BTreeSet<Address>) {
        if let Some(bar) = &self.bar {
            let names: Vec<String> = in_flight.iter().map(|a| a.to_string()).collect();
            bar.set_message(names.join(", "));
        }
    }

    fn done(&self, entry: &Entry) {
        let line = match entry.outcome {
            Outcome::Failed => format!(
                "{}: failed after {:.1}s: {}",
                entry.address,
                entry.seconds,
                entry.error.as_deref().unwrap_or("")
            ),
            Outcome::Skipped => format!("{}: skipped (a step it depends on failed)", entry.address),
            o => format!(
                "{}: {} in {:.1}s",
                entry.address,
                serde_json::to_value(o)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                entry.seconds
            ),
        };
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::debug!(elapsed = ?self.started.elapsed(), "apply finished");
    }
}
