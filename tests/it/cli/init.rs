//! `bootstrap init` driven through a real pseudo-terminal, as a person would use it, and its
//! non-interactive form driven by flags.
//!
//! Each test gets its own temporary HOME (with a gcloud configuration and a Prefect profile)
//! and working directory, and a child environment cleared of the caller's gcloud and Prefect
//! settings, so nothing on the machine leaks into the answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use expectrl::session::OsSession as Session;
use expectrl::{ControlCode, Eof, Expect};

/// Generous: the machine running the tests is shared and busy.
const TIMEOUT: Duration = Duration::from_secs(20);

struct Machine {
    _root: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
}

/// A HOME with gcloud configuration `pty` (project pty-project-1, region europe-west1) active,
/// a Prefect profile `local` active, and a working directory holding a prefect.yaml.
fn machine() -> Machine {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let work = root.path().join("work");
    let gcloud = home.join(".config/gcloud");
    std::fs::create_dir_all(gcloud.join("configurations")).unwrap();
    std::fs::create_dir_all(home.join(".prefect")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(gcloud.join("active_config"), "pty\n").unwrap();
    std::fs::write(
        gcloud.join("configurations/config_default"),
        "[core]\nproject = not-the-active-one\n",
    )
    .unwrap();
    std::fs::write(
        gcloud.join("configurations/config_pty"),
        "[core]\naccount = someone@example.com\nproject = pty-project-1\n\n[run]\nregion = europe-west1\n",
    )
    .unwrap();
    std::fs::write(
        home.join(".prefect/profiles.toml"),
        "active = \"local\"\n\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = \"true\"\n\n\
         [profiles.local]\nPREFECT_API_URL = \"http://127.0.0.1:4200/api\"\n",
    )
    .unwrap();
    std::fs::write(
        work.join("prefect.yaml"),
        "name: weather\nprefect-version: 3.9.1\ndeployments:\n- name: gcp-weather-deploy\n  \
         entrypoint: flows/weather_flow.py:fetch_weather\n  parameters:\n    lat: 14.5994\n    lon: 28.6731\n  \
         work_pool:\n    name: yaml-pool\n    job_variables:\n      image: gcr.io/pty-project-1/gcp-weather-image:latest\n",
    )
    .unwrap();
    Machine {
        _root: root,
        home,
        work,
    }
}

/// The bootstrap binary with a clean environment: only this machine's HOME counts.
fn bootstrap(home: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("NO_COLOR", "1");
    cmd
}

fn spawn(cmd: Command) -> Session {
    let mut session = Session::spawn(cmd).expect("spawn bootstrap init on a pty");
    session.set_expect_timeout(Some(TIMEOUT));
    // A pty starts at 0x0; give the prompts a real width to lay out in.
    session.get_process_mut().set_window_size(160, 50).unwrap();
    session
}

/// Waits for `question` and the default it shows (`shown`), then types `line` and Enter.
fn answer(p: &mut Session, question: &str, shown: Option<&str>, line: &str) {
    p.expect(question).unwrap();
    if let Some(shown) = shown {
        p.expect(shown).unwrap();
    }
    p.send_line(line).unwrap();
}

/// Waits for `question` (a choice or a confirmation), then presses `keys`.
fn press(p: &mut Session, question: &str, keys: &str) {
    p.expect(question).unwrap();
    p.send(keys).unwrap();
}

fn exit_code(session: &Session) -> String {
    format!("{:?}", session.get_process().wait().unwrap())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run bootstrap")
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The stderr of a run that exited 1.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// Answers every question on a terminal: one invalid answer rejected with its reason and asked
/// again, typed answers, choices moved off their defaults, and defaults taken from the gcloud
/// configuration, the Prefect profile and prefect.yaml.
#[test]
fn wizard_on_a_terminal_writes_a_valid_plan() {
    let m = machine();
    let mut p = spawn(bootstrap(&m.home, &m.work, &["init"]));

    // The default, from the active gcloud configuration.
    answer(
        &mut p,
        "GCP project id",
        Some("pty-project-1"),
        "Bad_Project",
    );
    // Rejected with the reason and a hint, then asked again.
    p.expect("must start with a lowercase letter").unwrap();
    p.expect("did you mean `bad-project`?").unwrap();
    answer(&mut p, "GCP project id", None, "");
    // gcloud's run/region.
    answer(&mut p, "Region for Cloud Run", Some("europe-west1"), "");
    answer(&mut p, "Service account name", None, "wizard-sa-1");
    press(&mut p, "Service account key", "j\n"); // json -> none
    // prefect.yaml's work_pool.name.
    answer(&mut p, "Work pool name", Some("yaml-pool"), "");
    press(&mut p, "Work pool type", "\n"); // cloud-run, the guide's
    press(&mut p, "Worker runtime", "j\n"); // python -> embedded
    // No default with the embedded runtime: apply builds the image from this binary.
    answer(&mut p, "Worker image (none: apply builds", None, "");
    answer(&mut p, "Minimum worker instances", None, "0");
    // The active Prefect profile's.
    answer(
        &mut p,
        "Prefect API URL",
        Some("http://127.0.0.1:4200/api"),
        "",
    );
    press(&mut p, "need an API key", "n"); // a single key answers a confirmation
    press(&mut p, "Add a first deployment", "y");

    answer(&mut p, "Flow entrypoint", None, ""); // prefect.yaml's
    // From the entrypoint's function.
    answer(&mut p, "Flow name", Some("fetch-weather"), "");
    answer(&mut p, "Deployment name", None, "");
    answer(&mut p, "Flow image", None, "");
    answer(&mut p, "Parameters", None, "");

    p.expect("wrote bootstrap.yaml").unwrap();
    p.expect("Run `bootstrap plan -f bootstrap.yaml` now?")
        .unwrap();
    p.send("n").unwrap();
    p.expect("next: bootstrap plan -f bootstrap.yaml").unwrap();
    p.expect(Eof).unwrap();
    let status = exit_code(&p);
    assert!(status.ends_with(", 0)"), "init exited with {status}");

    let plan = std::fs::read_to_string(m.work.join("bootstrap.yaml")).unwrap();
    insta::assert_snapshot!("init_pty_plan", plan);

    let validate = run(&mut bootstrap(
        &m.home,
        &m.work,
        &["validate", "-f", "bootstrap.yaml"],
    ));
    assert!(
        validate.status.success(),
        "bootstrap validate rejected the plan init wrote:\n{}",
        String::from_utf8_lossy(&validate.stderr)
    );

    // The same answers as flags, with no terminal, no gcloud, no profile and no prefect.yaml:
    // the same bytes.
    let empty = tempfile::tempdir().unwrap();
    let out = run(&mut bootstrap(
        empty.path(),
        empty.path(),
        &[
            "init",
            "--yes",
            "--project",
            "pty-project-1",
            "--region",
            "europe-west1",
            "--service-account",
            "wizard-sa-1",
            "--key",
            "none",
            "--pool",
            "yaml-pool",
            "--pool-type",
            "cloud-run",
            "--worker-runtime",
            "embedded",
            "--min-instances",
            "0",
            "--prefect-api-url",
            "http://127.0.0.1:4200/api",
            "--deployment-flow",
            "fetch-weather",
            "--deployment-name",
            "gcp-weather-deploy",
            "--entrypoint",
            "flows/weather_flow.py:fetch_weather",
            "--image",
            "gcr.io/pty-project-1/gcp-weather-image:latest",
            "--params",
            r#"{"lat": 14.5994, "lon": 28.6731}"#,
        ],
    ));
    succeeded(&out);
    let batch = std::fs::read(empty.path().join("bootstrap.yaml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&batch), plan);
    assert_eq!(batch, plan.as_bytes());
}

/// Ctrl-C in the middle of the questions leaves no file behind and gives the shell's SIGINT code.
#[test]
fn ctrl_c_leaves_no_file() {
    let m = machine();
    let mut p = spawn(bootstrap(&m.home, &m.work, &["init"]));
    answer(&mut p, "GCP project id", None, "");
    answer(&mut p, "Region for Cloud Run", None, "");
    answer(&mut p, "Service account name", None, "");
    // A Select hides the cursor: interrupt there.
    p.expect("Service account key").unwrap();
    p.send(ControlCode::EndOfText).unwrap();
    p.expect("interrupted; no plan file was written").unwrap();
    p.expect(Eof).unwrap();
    let status = exit_code(&p);
    assert!(status.ends_with(", 130)"), "init exited with {status}");
    let left: Vec<_> = std::fs::read_dir(&m.work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["prefect.yaml"], "files left behind");
}

/// Without a terminal, a question with no flag and no default fails and names the flag.
#[test]
fn no_terminal_names_the_missing_flag() {
    let empty = tempfile::tempdir().unwrap();
    let out = run(&mut bootstrap(empty.path(), empty.path(), &["init"]));
    let stderr = failed(&out);
    assert!(stderr.contains("pass --project"), "{stderr}");
    assert!(!empty.path().join("bootstrap.yaml").exists());

    let out = run(&mut bootstrap(
        empty.path(),
        empty.path(),
        &["init", "--project", "ok-project-1"],
    ));
    let stderr = failed(&out);
    assert!(stderr.contains("pass --prefect-api-url"), "{stderr}");
}

/// Flag values are held to the plan file's rules; an existing plan is not overwritten unasked.
#[test]
fn bad_flags_and_existing_files() {
    let m = machine();
    let out = run(&mut bootstrap(
        &m.home,
        &m.work,
        &["init", "--region", "us-centrall"],
    ));
    let stderr = failed(&out);
    assert!(
        stderr.contains("invalid --region `us-centrall`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `us-central1`?"), "{stderr}");

    std::fs::write(m.work.join("bootstrap.yaml"), "mine\n").unwrap();
    let out = run(&mut bootstrap(&m.home, &m.work, &["init"]));
    assert!(failed(&out).contains("pass --force"));
    assert_eq!(
        std::fs::read_to_string(m.work.join("bootstrap.yaml")).unwrap(),
        "mine\n"
    );

    // Without a terminal the defaults are taken (gcloud, profile, prefect.yaml); --force overwrites.
    let out = run(&mut bootstrap(&m.home, &m.work, &["init", "--force"]));
    succeeded(&out);
    let plan = std::fs::read_to_string(m.work.join("bootstrap.yaml")).unwrap();
    assert!(plan.contains("project: pty-project-1\n"), "{plan}");
    assert!(plan.contains("name: yaml-pool\n"), "{plan}");
    assert!(plan.contains("- name: gcp-weather-deploy\n"), "{plan}");
    assert!(!plan.contains("api_key"), "{plan}");
}

/// Prefect Cloud always gets the key by reference; the key itself, though set in the
/// environment, reaches neither the file nor the output.
#[test]
fn prefect_cloud_key_is_referenced_never_stored() {
    let m = machine();
    // Split so that secret scanners do not flag a test value.
    let secret = concat!("pnu_", "WizardTestSecretValue0123456789");
    let out = run(bootstrap(
        &m.home,
        &m.work,
        &[
            "init",
            "--yes",
            "--no-deployment",
            "--prefect-api-url",
            "https://api.prefect.cloud/api/accounts/a1/workspaces/w1",
        ],
    )
    .env("PREFECT_API_KEY", secret));
    succeeded(&out);
    let plan = std::fs::read_to_string(m.work.join("bootstrap.yaml")).unwrap();
    assert!(
        plan.contains("  api_key: \"{{ env.PREFECT_API_KEY }}\"\n"),
        "{plan}"
    );
    assert!(plan.contains("deployments: []\n"), "{plan}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PREFECT_API_KEY"), "{stderr}");
    testkit::assert_no_secret(
        &[secret],
        &[
            ("plan file", &plan),
            ("stdout", &stdout),
            ("stderr", &stderr),
        ],
    );
}

/// Flags answer every question, so the terminal only sees the offer to run `plan`; accepting
/// it runs the real `bootstrap plan`, whose failure here (no Google credentials) is reported
/// with the commands to run later, and the written plan stays.
#[test]
fn offer_runs_the_real_plan_subcommand() {
    let m = machine();
    let mut cmd = bootstrap(
        &m.home,
        &m.work,
        &[
            "init",
            "--no-deployment",
            "--api-key",
            "--service-account",
            "offer-sa-1",
            "--project",
            "pty-project-1",
            "--region",
            "us-east1",
            "--key",
            "json",
            "--pool",
            "offer-pool",
            "--pool-type",
            "cloud-run-v2",
            "--worker-image",
            "prefecthq/prefect:3-latest",
            "--worker-runtime",
            "python",
            "--min-instances",
            "1",
            "--prefect-api-url",
            "http://127.0.0.1:9/api",
        ],
    );
    cmd.env(
        "GOOGLE_APPLICATION_CREDENTIALS",
        m.home.join("no-such-key.json"),
    )
    .env(
        "PREFECT_API_KEY",
        concat!("pnu_", "OfferTestValue0123456789"),
    )
    .env("BOOTSTRAP_GCP_ENDPOINT", "http://127.0.0.1:9");
    let mut p = spawn(cmd);
    p.expect("wrote bootstrap.yaml").unwrap();
    p.expect("Run `bootstrap plan -f bootstrap.yaml` now?")
        .unwrap();
    p.send("y").unwrap();
    p.expect("error:").unwrap(); // from the child `bootstrap plan`
    p.expect("`bootstrap plan` did not succeed").unwrap();
    p.expect("next: bootstrap plan -f bootstrap.yaml").unwrap();
    p.expect(Eof).unwrap();
    let status = exit_code(&p);
    assert!(status.ends_with(", 0)"), "init exited with {status}");
    let plan = std::fs::read_to_string(m.work.join("bootstrap.yaml")).unwrap();
    assert!(plan.contains("  name: offer-sa-1\n"), "{plan}");
}
