//! Test support shared by the workspace's tests.
//!
//! The test command (`./test`) starts one real Prefect server for the whole run and hands its
//! URL to the tests in `BOOTSTRAP_TEST_PREFECT_API_URL`; tests share it and give the objects
//! they create their own names (see [`unique_name`]).
//!
//! With the `world` feature (the integration tests, `tests/it`): the [`World`] of an end-to-end
//! test (an in-process GCP sandbox, the shared Prefect server, the `bootstrap` binary run as a
//! user would), the reliability suite's plan and footprint, the guide's plan, and the worker
//! tests' [`harness`] and [`observe`].

#[cfg(feature = "world")]
pub mod harness;
#[cfg(feature = "world")]
pub mod observe;
#[cfg(feature = "world")]
mod world;
#[cfg(feature = "world")]
pub use world::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The repository root (where `Cargo.toml` of the workspace lives).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join(".git").exists() || p.join("Cargo.lock").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.join("../.."))
}

/// The API URL of the shared Prefect server (`http://127.0.0.1:PORT/api`).
///
/// Panics when the test command did not start one: these tests must run, not skip.
pub fn prefect_api_url() -> String {
    match std::env::var("BOOTSTRAP_TEST_PREFECT_API_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "BOOTSTRAP_TEST_PREFECT_API_URL is not set: this test needs the real Prefect server \
             that ./test starts (run ./test, or scripts/prefect-server start and export the URL it prints)"
        ),
    }
}

/// The project's `.venv` (created by `scripts/ensure-venv`).
pub fn venv() -> PathBuf {
    std::env::var_os("BOOTSTRAP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"))
}

/// A program of the project's `.venv`, such as `prefect` or `python`.
pub fn venv_bin(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// A name unique to this test process, for objects on the shared Prefect server.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos % 0xffff)
}

/// Fails the test if any of `haystacks` contains any of `secrets` (ignoring empty secrets).
/// Secrets are reported by position, never printed.
pub fn assert_no_secret(secrets: &[&str], haystacks: &[(&str, &str)]) {
    for (i, secret) in secrets.iter().enumerate() {
        if secret.len() < 8 {
            continue;
        }
        for (name, text) in haystacks {
            assert!(
                !text.contains(secret),
                "secret #{i} leaked into {name} (content not shown)"
            );
        }
    }
}

/// Scans every regular file under `dir` for `secrets`.
pub fn assert_no_secret_in_dir(secrets: &[&str], dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let text = String::from_utf8_lossy(&bytes);
                assert_no_secret(secrets, &[(&path.display().to_string(), &text)]);
            }
        }
    }
}
