//! Harness of the end-to-end tests: an in-process GCP sandbox, the real Prefect server the
//! test command started, and the `bootstrap` binary run as a user would, with every byte it
//! prints kept for the secret scan.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use gcp_sandbox::executor::{ImageMap, Placeholders};

pub struct World {
    pub dir: tempfile::TempDir,
    pub sandbox: gcp_sandbox::Sandbox,
    pub prefect_url: String,
    /// Everything the binary printed, for the secret scan.
    pub transcript: Mutex<String>,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bootstrap"))
}

impl World {
    /// A fresh sandbox with `project`, and the shared Prefect server.
    pub async fn start(project: &str) -> World {
        Self::start_with(project, |_| {}).await
    }

    pub async fn start_with(project: &str, tweak: impl FnOnce(&mut gcp_sandbox::Config)) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = gcp_sandbox::Config::new(dir.path().join("sandbox"));
        config.projects = vec![project.to_string()];
        config.images = ImageMap::with_defaults(Placeholders {
            venv: testkit::venv(),
            bootstrap: bin(),
            cwd: testkit::repo_root(),
        });
        tweak(&mut config);
        let sandbox = gcp_sandbox::start(config).await.expect("sandbox starts");
        World {
            dir,
            prefect_url: testkit::prefect_api_url(),
            sandbox,
            transcript: Mutex::new(String::new()),
            env: Vec::new(),
        }
    }

    /// Writes a plan file into the test's directory.
    pub fn plan_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write plan");
        path
    }

    /// Runs `bootstrap <args>` against this world (blocking; call from spawn_blocking or a
    /// plain test).
    pub fn run(&self, args: &[&str]) -> Run {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).ok();
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("NO_COLOR", "1")
            .env("BOOTSTRAP_GCP_ENDPOINT", &self.sandbox.url)
            .env(
                "GOOGLE_APPLICATION_CREDENTIALS",
                &self.sandbox.operator_key_path,
            )
            .env("PREFECT_API_URL", &self.prefect_url);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().expect("run bootstrap");
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        let mut t = self.transcript.lock().unwrap();
        t.push_str(&format!(
            "$ bootstrap {}\n{}\n{}\n",
            args.join(" "),
            run.stdout,
            run.stderr
        ));
        run
    }

    /// Runs and requires exit code `code`, showing the output otherwise.
    pub fn expect(&self, args: &[&str], code: i32) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code,
            code,
            "bootstrap {} exited {} (wanted {code})\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            r.code,
            r.stdout,
            r.stderr
        );
        r
    }

    /// A GCP client acting as the operator (for drift and foreign writers in tests).
    pub async fn operator_http(&self) -> bootstrap_gcp::GcpHttp {
        let key = std::fs::read_to_string(&self.sandbox.operator_key_path).expect("operator key");
        let tokens =
            bootstrap_gcp::ServiceAccountKeySource::from_json(&secrecy::SecretString::from(key))
                .expect("operator key parses");
        bootstrap_gcp::GcpHttp::new(
            bootstrap_gcp::Endpoints::with_base(&self.sandbox.url).expect("endpoint"),
            std::sync::Arc::new(tokens),
            bootstrap_gcp::RetryPolicy::default(),
        )
        .expect("client")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Replaces `key: value` lines of a YAML plan (first match, by indentation-free key).
pub fn set_line(plan: &str, key: &str, value: &str) -> String {
    let mut done = false;
    plan.lines()
        .map(|l| {
            let t = l.trim_start();
            if !done && (t.starts_with(&format!("{key}:")) || t.starts_with(&format!("- {key}:"))) {
                done = true;
                let indent = &l[..l.len() - t.len()];
                let dash = if t.starts_with("- ") { "- " } else { "" };
                format!("{indent}{dash}{key}: {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
