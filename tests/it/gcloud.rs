//! The real gcloud (google-cloud-cli, `/usr/bin/gcloud`) as the judge of the sandbox: the
//! guide's Steps 1-3 typed as the guide says, then `bootstrap` adopting what gcloud made, then
//! gcloud reading back what `bootstrap` did. Each test has its own `CLOUDSDK_CONFIG`, written by
//! `gcp_sandbox::hosts::GcloudConfig` (what `bootstrap sandbox --gcloud-config` writes).
//!
//! gcloud is required: without it these tests fail with a message (they never skip).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gcp_sandbox::executor::{ImageRule, Patterns};
use serde_json::Value;
use testkit::World;
use testkit::run_in as run;

const PROJECT: &str = "prefect-project";
const SA: &str = "prefect-service-account";
const REGION: &str = "us-central1";

fn email() -> String {
    format!("{SA}@{PROJECT}.iam.gserviceaccount.com")
}

/// gcloud's path: `BOOTSTRAP_GCLOUD`, else `gcloud` on `PATH`, else a failure that says so.
fn gcloud_path() -> PathBuf {
    if let Ok(p) = std::env::var("BOOTSTRAP_GCLOUD") {
        return PathBuf::from(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("gcloud"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "gcloud (google-cloud-cli) is not installed or not on PATH: these tests need the \
                 real gcloud as the judge of the sandbox and do not skip. Install google-cloud-cli \
                 or set BOOTSTRAP_GCLOUD to its path."
            )
        })
}

/// One gcloud installation with its own configuration directory, aimed at a sandbox.
struct Gcloud {
    bin: PathBuf,
    config: tempfile::TempDir,
    home: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Gcloud {
    fn for_world(w: &World) -> Gcloud {
        // gcloud derives Run v1's regional host from the override's host name.
        gcp_sandbox::hosts::ensure_hosts_file(Path::new("/etc/hosts")).unwrap_or_else(|e| {
            panic!(
                "adding the sandbox's host names to /etc/hosts (gcloud needs them; the tests run \
                 as root on these machines): {e:#}"
            )
        });
        let config = tempfile::tempdir().expect("config dir");
        gcp_sandbox::hosts::GcloudConfig {
            port: w.sandbox.port,
            project: PROJECT.into(),
            region: REGION.into(),
            key_file: w.sandbox.operator_key_path.clone(),
            account: w.sandbox.operator_email.clone(),
        }
        .write(config.path())
        .expect("gcloud configuration");
        Gcloud {
            bin: gcloud_path(),
            config,
            home: tempfile::tempdir().expect("home"),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("CLOUDSDK_CONFIG", self.config.path())
            .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "starting {} (google-cloud-cli): {e}; these tests need the real gcloud",
                self.bin.display()
            )
        });
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        let output = wait_bounded(child, std::time::Duration::from_secs(180), args);
        Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs gcloud and requires exit 0.
    fn ok(&self, args: &[&str]) -> Out {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let out = self.run(args, stdin);
        assert_eq!(
            out.code,
            0,
            "gcloud {} exited {}\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr
        );
        out
    }

    /// Runs gcloud with `--format=json` and parses its output.
    fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--format=json");
        let out = self.ok(&all);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gcloud {} printed no JSON ({e}): {}",
                args.join(" "),
                out.stdout
            )
        })
    }
}

/// Waits for a child with a deadline (a hung gcloud must not hang the suite).
fn wait_bounded(
    mut child: std::process::Child,
    limit: std::time::Duration,
    args: &[&str],
) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait for gcloud") {
            Some(_) => return child.wait_with_output().expect("gcloud output"),
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("gcloud output");
                panic!(
                    "gcloud {} did not finish in {limit:?}\n--- stderr\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

fn shell_image(script: &str) -> ImageRule {
    ImageRule {
        patterns: Patterns::Many(vec!["prefecthq/prefect:*".into()]),
        programs: Default::default(),
        path: vec![],
        host_path: true,
        entrypoint: vec!["sh".into(), "-c".into(), script.into(), "worker".into()],
        cmd: vec![],
        workdir: None,
        env: Default::default(),
    }
}

fn gc<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What [`guide_by_hand`] leaves: gcloud, the names' suffix, the pool and the deploy's result.
struct ByHand {
    g: Gcloud,
    suffix: String,
    pool: String,
    deployed: Out,
}

/// The guide by hand in `w` with gcloud: steps 1 and 2 with a Prefect Cloud-style API key
/// (also in the world's environment, for bootstrap later), then `gcloud run deploy` of the
/// worker for a pool named after a new suffix (from `prefix`).
fn guide_by_hand(w: &mut World, prefix: &str) -> ByHand {
    let g = Gcloud::for_world(w);
    let api_key = w.use_api_key();
    let suffix = testkit::unique_name(prefix).replace('_', "-");
    let pool = format!("my-cloud-run-pool-{suffix}");
    gc(|| guide_steps_1_and_2(&g, &api_key));
    let deployed = gc(|| deploy_worker(&g, &pool, &w.prefect_url, &[]));
    ByHand {
        g,
        suffix,
        pool,
        deployed,
    }
}

/// `gcloud run services {verb} prefect-worker --region {REGION}` as JSON (`describe`,
/// `get-iam-policy`): how a user reads back the guide's worker service.
fn worker_service(g: &Gcloud, verb: &str) -> Value {
    gc(|| {
        g.json(&[
            "run",
            "services",
            verb,
            "prefect-worker",
            "--region",
            REGION,
        ])
    })
}

/// The guide's Step 1 (service account, two roles), Step 2 (a key) and the worker's secret, by
/// gcloud, with the read commands a user checks them with.
fn guide_steps_1_and_2(g: &Gcloud, api_key: &str) {
    let email = email();
    g.ok(&[
        "services",
        "enable",
        "iam.googleapis.com",
        "run.googleapis.com",
        "secretmanager.googleapis.com",
    ]);
    let listed = g.json(&["services", "list", "--enabled"]);
    let names: Vec<&str> = listed
        .as_array()
        .expect("services list")
        .iter()
        .filter_map(|s| s["config"]["name"].as_str().or(s["name"].as_str()))
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("run.googleapis.com")),
        "{names:?}"
    );

    g.ok(&[
        "iam",
        "service-accounts",
        "create",
        SA,
        "--display-name=prefect-service-account",
        "--description=service account to use for the prefect worker",
    ]);
    let described = g.json(&["iam", "service-accounts", "describe", &email]);
    assert_eq!(described["email"], email.as_str());
    let accounts = g.json(&["iam", "service-accounts", "list"]);
    assert!(
        accounts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["email"] == email.as_str()),
        "{accounts}"
    );
    for role in ["roles/iam.serviceAccountUser", "roles/run.admin"] {
        g.ok(&[
            "projects",
            "add-iam-policy-binding",
            PROJECT,
            &format!("--member=serviceAccount:{email}"),
            &format!("--role={role}"),
        ]);
    }
    let key_file = g.home.path().join("prefect-key.json");
    g.ok(&[
        "iam",
        "service-accounts",
        "keys",
        "create",
        key_file.to_str().unwrap(),
        &format!("--iam-account={email}"),
    ]);
    let key: Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    let keys = g.json(&[
        "iam",
        "service-accounts",
        "keys",
        "list",
        &format!("--iam-account={email}"),
        "--managed-by=user",
    ]);
    assert!(
        keys.as_array().unwrap().iter().any(|k| k["name"]
            .as_str()
            .unwrap_or_default()
            .ends_with(key["private_key_id"].as_str().unwrap())),
        "{keys}"
    );

    // The worker's Prefect API key, in Secret Manager.
    g.ok(&[
        "secrets",
        "create",
        "prefect-api-key",
        "--replication-policy=automatic",
    ]);
    g.ok_with(
        &[
            "secrets",
            "versions",
            "add",
            "prefect-api-key",
            "--data-file=-",
        ],
        Some(api_key),
    );
    let accessed = g.ok(&[
        "secrets",
        "versions",
        "access",
        "latest",
        "--secret=prefect-api-key",
    ]);
    assert_eq!(accessed.stdout, api_key);
    let secrets = g.json(&["secrets", "list"]);
    assert!(secrets.to_string().contains("prefect-api-key"), "{secrets}");
    g.ok(&[
        "secrets",
        "add-iam-policy-binding",
        "prefect-api-key",
        &format!("--member=serviceAccount:{email}"),
        "--role=roles/secretmanager.secretAccessor",
    ]);
}

/// The guide's worker: `gcloud run deploy prefect-worker ...` with the guide's flags.
fn deploy_worker(g: &Gcloud, pool: &str, prefect_url: &str, extra: &[&str]) -> Out {
    let email = email();
    let args = format!(
        "prefect,worker,start,--install-policy,always,--with-healthcheck,-p,{pool},-t,cloud-run"
    );
    let mut all = vec![
        "run",
        "deploy",
        "prefect-worker",
        "--image=prefecthq/prefect:3-latest",
        "--region",
        REGION,
    ];
    let sa = format!("--service-account={email}");
    let env = format!("--set-env-vars=PREFECT_API_URL={prefect_url}");
    let argv = format!("--args={args}");
    all.extend([
        sa.as_str(),
        "--no-cpu-throttling",
        "--min-instances",
        "1",
        argv.as_str(),
        env.as_str(),
        "--set-secrets=PREFECT_API_KEY=prefect-api-key:latest",
        "--no-allow-unauthenticated",
    ]);
    all.extend(extra);
    g.run(&all, None)
}

/// Whether the pool shows an ONLINE worker within 120 s (Prefect's
/// `POST /work_pools/{pool}/workers/filter`).
async fn wait_for_online_worker(prefect_url: &str, pool: &str) -> bool {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let listed = client
            .post(format!("{prefect_url}/work_pools/{pool}/workers/filter"))
            .json(&serde_json::json!({}))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await;
        if let Ok(r) = listed
            && let Ok(v) = r.json::<Value>().await
            && v.as_array()
                .is_some_and(|ws| ws.iter().any(|w| w["status"] == "ONLINE"))
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    false
}

/// The guide's scaling of the worker service (`--min-instances 1 --no-cpu-throttling`), as
/// `gcloud run services describe` shows it.
fn assert_guide_scaling(described: &Value) {
    assert_eq!(
        template_annotations(described)["autoscaling.knative.dev/minScale"],
        "1"
    );
    assert_eq!(
        template_annotations(described)["run.googleapis.com/cpu-throttling"],
        "false"
    );
}

fn template_annotations(described: &Value) -> &Value {
    &described["spec"]["template"]["metadata"]["annotations"]
}

fn has_all_users(policy: &Value) -> bool {
    policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["members"].as_array().into_iter().flatten())
        .any(|m| m == "allUsers" || m == "allAuthenticatedUsers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_guide_then_bootstrap_adopts_applies_and_destroys() {
    // The guide's own container: the sandbox's `prefecthq/prefect` mapping runs Prefect's
    // `prefect worker start --with-healthcheck` from the venv, in its own network namespace
    // with PORT=8080 (Cloud Run's container contract), so `gcloud run deploy` waits for a real
    // worker's /health.
    let mut w = World::start_with(PROJECT, |_| {}).await;

    // The guide by hand, with gcloud.
    let ByHand {
        g,
        suffix,
        pool,
        deployed,
    } = guide_by_hand(&mut w, "gc");
    assert_eq!(
        deployed.code, 0,
        "gcloud run deploy\n--- stdout\n{}\n--- stderr\n{}",
        deployed.stdout, deployed.stderr
    );
    let described = worker_service(&g, "describe");
    assert_guide_scaling(&described);
    let ready = described["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["status"], "True", "{described}");
    // The guide's worker itself is up: Prefect lists it ONLINE in the pool it created.
    let online = wait_for_online_worker(&w.prefect_url, &pool).await;
    assert!(online, "no ONLINE worker in {pool} within 120 s");
    let policy = worker_service(&g, "get-iam-policy");
    assert!(!has_all_users(&policy), "{policy}");
    let listed = gc(|| g.json(&["run", "services", "list"]));
    assert!(listed.to_string().contains("prefect-worker"), "{listed}");

    // The same plan by bootstrap: adoption, never re-creation.
    let plan_path = w.plan_file("bootstrap.yaml", &testkit::guide_plan(&suffix));
    let plan = plan_path.to_str().unwrap();
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    for created in [
        format!("gcp.service_account[\"{SA}\"] will be created"),
        "gcp.run_service[\"prefect-worker\"] will be created".into(),
    ] {
        assert!(!p.stdout.contains(&created), "{created}\n{}", p.stdout);
    }
    assert!(
        p.stdout
            .contains("gcp.run_service[\"prefect-worker\"] will be adopted and updated in place"),
        "{}",
        p.stdout
    );
    assert!(
        !p.stdout.contains("gcp.project_iam"),
        "the two bindings gcloud made are the plan's: {}",
        p.stdout
    );
    // The key gcloud made is in no block: an orphan, said so in one line.
    assert!(
        p.stdout.contains("(orphan)"),
        "the gcloud-made key is reported as an orphan: {}",
        p.stdout
    );

    let uid_before = described["metadata"]["uid"].clone();
    let a = run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert!(a.stdout.contains("Apply complete"), "{}", a.stdout);
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);

    // gcloud reads back what bootstrap did: the same service (updated in place), still the
    // guide's scaling and CPU, no public invoker.
    let described = worker_service(&g, "describe");
    assert_eq!(described["metadata"]["uid"], uid_before, "never recreated");
    assert_guide_scaling(&described);
    let container = &described["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["startupProbe"]["httpGet"]["path"], "/health",
        "{container}"
    );
    assert!(
        container.to_string().contains("prefect-api-key"),
        "the API key is a secret reference: {container}"
    );
    let policy = worker_service(&g, "get-iam-policy");
    assert!(!has_all_users(&policy), "{policy}");

    let d = run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(!d.stdout.is_empty());
    let listed = gc(|| g.json(&["run", "services", "list"]));
    assert!(!listed.to_string().contains("prefect-worker"), "{listed}");
    let gone = gc(|| g.run(&["iam", "service-accounts", "describe", &email()], None));
    assert_ne!(gone.code, 0, "the account is destroyed: {}", gone.stdout);
    w.sandbox.shutdown().await.unwrap();
}

/// gcloud sends a policy `etag` back in URL-safe base64 (`3XIu_sZL164=` for `3XIu/sZL164=`).
/// The etag is a bytes field that Google decodes in either alphabet; a sandbox that compared text
/// answered 409 "concurrent policy changes" whenever the etag held `+` or `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_etags_in_either_base64_alphabet() {
    let w = World::start(PROJECT).await;
    let g = Gcloud::for_world(&w);
    let member = "--member=user:someone@example.com";
    let mut url_safe_seen = 0;
    for i in 0..40 {
        for verb in ["add-iam-policy-binding", "remove-iam-policy-binding"] {
            let out = gc(|| {
                g.ok(&[
                    "projects",
                    verb,
                    PROJECT,
                    member,
                    "--role=roles/viewer",
                    "--format=value(etag)",
                ])
            });
            // gcloud prints the new etag as it holds it: URL-safe.
            if out.stdout.contains(['-', '_']) {
                url_safe_seen += 1;
            }
        }
        // Each write in this loop read an etag and sent it back; a few with `-`/`_` suffice.
        if url_safe_seen >= 3 && i >= 4 {
            break;
        }
    }
    assert!(
        url_safe_seen >= 3,
        "no etag with '-' or '_' came up in 80 writes"
    );
    let policy = gc(|| g.json(&["projects", "get-iam-policy", PROJECT]));
    assert!(
        !policy.to_string().contains("someone@example.com"),
        "{policy}"
    );
    w.sandbox.shutdown().await.unwrap();
}

/// A worker revision that never became ready is drift: `plan --detailed-exitcode` exits 2 and
/// names the revision's failure; `apply` redeploys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_is_not_ready_is_drift() {
    let marker = tempfile::tempdir().unwrap();
    let healthy_flag = marker.path().join("healthy");
    // Fails its startup probe until the flag file exists, then serves /health.
    let script = format!(
        "[ -f '{}' ] || {{ echo 'worker: cannot reach Prefect' >&2; exit 1; }}; d=$(mktemp -d) && echo ok > \"$d/health\" && exec python3 -m http.server --bind 127.0.0.1 --directory \"$d\" \"$PORT\"",
        healthy_flag.display()
    );
    let mut w = World::start_with(PROJECT, |c| {
        let dir = c.dir.clone();
        c.images.prepend(vec![shell_image(&script)], &dir);
    })
    .await;
    let ByHand {
        g,
        suffix,
        deployed,
        ..
    } = guide_by_hand(&mut w, "nr");
    assert_ne!(deployed.code, 0, "the revision fails: {}", deployed.stderr);

    let plan_path = w.plan_file("bootstrap.yaml", &testkit::guide_plan(&suffix));
    let plan = plan_path.to_str().unwrap();
    // First converge everything else (the service still fails), then look at the service alone.
    let a = run(&w, &["apply", "-f", plan, "--auto-approve"], 1);
    assert!(
        a.stderr.contains("not ready") || a.stdout.contains("not ready"),
        "{}\n{}",
        a.stdout,
        a.stderr
    );
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    assert!(
        p.stdout
            .contains("gcp.run_service[\"prefect-worker\"] will be adopted and updated in place")
            || p.stdout
                .contains("gcp.run_service[\"prefect-worker\"] will be updated in place"),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout.contains("is not ready (REVISION_FAILED)"),
        "the plan names Google's reason: {}",
        p.stdout
    );
    assert!(p.stdout.contains("apply redeploys it"), "{}", p.stdout);

    // Once the container can start, apply redeploys (a new revision) and the plan is quiet.
    std::fs::write(&healthy_flag, "").unwrap();
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    let described = worker_service(&g, "describe");
    let status = &described["status"];
    assert_eq!(
        status["latestReadyRevisionName"], status["latestCreatedRevisionName"],
        "{status}"
    );
    run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    w.sandbox.shutdown().await.unwrap();
}
