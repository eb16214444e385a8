//! The single integration test of the workspace's `bootstrap` package (uv's layout): one test
//! binary, one link of the CLI, one compile of the shared helpers, with a module per area.
//!
//! Adding tests: put them in the module of their area, or add a file `tests/it/<area>.rs` (or
//! `tests/it/<area>/<name>.rs` plus a `mod <name>;` line in that folder's `mod.rs`) and a `mod`
//! line below. A former `tests/<name>.rs` file ports by moving it here, dropping its
//! `mod common;` (and the `#[path]` mods of the worker harness) and writing `testkit::` for
//! `common::`: the shared world is in `crates/testkit` under the same names (`World`, `Run`,
//! `bin()`, `plan_file`, `light_plan`, `run_in`, ...), the worker harness is
//! `testkit::{harness, observe}`. Test names in nextest are module paths
//! (`cargo nextest run -E 'test(/^worker::/)'`), and insta names snapshots after the module
//! path (`it__<module>__<name>.snap`, in `snapshots/` beside the file).

/// `bootstrap_snapshot!(name, world, args, code)`: runs `bootstrap <args>` in a
/// [`testkit::World`] (from a multi-threaded tokio test), requires exit code `code`, snapshots
/// what the user reads (the exit code and stdout) under `name` with the world's filters
/// ([`testkit::World::filters`]: the per-test suffix and temporary directory the test
/// registered, ports, uuids, durations), and returns the run (uv's `uv_snapshot!`).
macro_rules! bootstrap_snapshot {
    ($name:expr, $world:expr, $args:expr, $code:expr) => {{
        let world: &testkit::World = &$world;
        let run = testkit::run_in(world, $args, $code);
        let mut settings = insta::Settings::clone_current();
        for (regex, placeholder) in world.filters() {
            settings.add_filter(&regex, placeholder);
        }
        settings.bind(|| {
            insta::assert_snapshot!($name, testkit::shown(&run, false), stringify!($args))
        });
        run
    }};
}

mod apply_calls;
mod builds;
mod builds_e2e;
mod cli;
mod credentials;
mod demo;
mod doctor;
mod gcloud;
mod guide;
mod prefect_half;
mod reliability;
mod rotate_key;
mod saved_plan;
mod scale_to_zero;
mod support;
mod waker;
mod worker;
mod worker_image_e2e;
