//! Logging to stderr. `RUST_LOG` wins over `-v`/`-q`; colours follow the terminal and `NO_COLOR`.

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        // gcp_auth warns on every retry while it looks for credentials (e.g. the metadata server
        // when not on GCP); the final error says all of it once.
        (false, 0) => "warn,gcp_auth=error",
        (false, 1) => "info,bootstrap=debug,bootstrap_gcp=debug,bootstrap_prefect=debug",
        (false, _) => "debug,bootstrap=trace,bootstrap_gcp=trace,bootstrap_prefect=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = console::colors_enabled_stderr();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}
