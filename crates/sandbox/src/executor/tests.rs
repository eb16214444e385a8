//! Real processes: exit codes, timeouts, cancellation, credentials, services.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::*;

fn executor(dir: &Path) -> Executor {
    let images = ImageMap::with_defaults(Placeholders {
        venv: PathBuf::from("/nonexistent-venv"),
        bootstrap: PathBuf::from("/nonexistent-bootstrap"),
        cwd: dir.to_path_buf(),
    });
    let mut config = ExecutorConfig::new(images, dir);
    config.grace = Duration::from_millis(300);
    config.restart_base = Duration::from_millis(50);
    config.restart_max = Duration::from_millis(200);
    Executor::new(config)
}

fn sh(script: &str) -> Launch {
    Launch {
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec![script.into()],
        ..Launch::default()
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as dead: it no longer runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Whether `pid` is gone within a short while: a signal sent to a busy process is delivered
/// when it next runs, so on a loaded machine "killed" and "gone" are milliseconds apart.
async fn dies_soon(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn pid_from(file: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid written to {file:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exit_code_decides_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let never = CancellationToken::new();
    let end = ex
        .run_task(&sh("echo out; echo err >&2; exit 3"), None, &never, &logs)
        .await;
    assert_eq!(end, TaskEnd::Exited(3));
    assert!(!end.succeeded());
    let text = logs.text();
    assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
    assert!(text.contains("Container called exit(3)."), "{text}");
    let end = ex.run_task(&sh("exit 0"), None, &never, &logs).await;
    assert!(end.succeeded());
}

#[tokio::test]
async fn container_env_is_given_and_host_env_withheld() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let mut launch = sh("echo \"A=$A CARGO=${CARGO_PKG_NAME:-unset}\"");
    launch.env = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
    let end = ex
        .run_task(&launch, None, &CancellationToken::new(), &logs)
        .await;
    assert!(end.succeeded(), "{end:?}");
    assert!(logs.text().contains("A=2 CARGO=unset"), "{}", logs.text());
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let started = Instant::now();
    let end = ex
        .run_task(
            &sh(&script),
            Some(Duration::from_millis(2000)),
            &CancellationToken::new(),
            &logs,
        )
        .await;
    assert_eq!(end, TaskEnd::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(10));
    let grandchild = pid_from(&pidfile).await;
    assert!(
        dies_soon(grandchild).await,
        "background sleep {grandchild} survived"
    );
}

#[tokio::test]
async fn cancel_kills_the_group_even_when_sigterm_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let pidfile = dir.path().join("main.pid");
    let script = format!(
        "trap '' TERM; echo $$ > {}; sleep 30; sleep 30",
        pidfile.display()
    );
    let cancel = CancellationToken::new();
    let task = {
        let (ex, logs, cancel) = (ex.clone(), logs.clone(), cancel.clone());
        tokio::spawn(async move { ex.run_task(&sh(&script), None, &cancel, &logs).await })
    };
    let pid = pid_from(&pidfile).await;
    assert!(alive(pid));
    let started = Instant::now();
    cancel.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("cancel finishes")
        .expect("task joins");
    assert_eq!(end, TaskEnd::Cancelled);
    // The grace (300 ms) passed before SIGKILL.
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(dies_soon(pid).await, "shell {pid} survived the cancel");
}

/// Regression (tests/it/worker/e2e.rs): Prefect's `flow-run execute` runs its engine in a new
/// session; cancelling the container must stop it too, as Cloud Run stops the whole container.
#[tokio::test]
async fn cancel_kills_descendants_that_left_the_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let pidfile = dir.path().join("escaped.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 30' & wait",
        pidfile.display()
    );
    let cancel = CancellationToken::new();
    let task = {
        let (ex, logs, cancel) = (ex.clone(), logs.clone(), cancel.clone());
        tokio::spawn(async move { ex.run_task(&sh(&script), None, &cancel, &logs).await })
    };
    let escaped = pid_from(&pidfile).await;
    assert!(alive(escaped));
    cancel.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("cancel finishes")
        .expect("task joins");
    assert_eq!(end, TaskEnd::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(escaped) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(escaped),
        "process {escaped} in its own session survived the cancel"
    );
}

#[tokio::test]
async fn unknown_image_and_missing_program_fail_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let never = CancellationToken::new();
    let mut launch = sh("true");
    launch.image = "gcr.io/nope/nothing:1".into();
    let end = ex.run_task(&launch, None, &never, &logs).await;
    assert_eq!(
        end,
        TaskEnd::FailedToStart("Image 'gcr.io/nope/nothing:1' not found.".into())
    );
    let mut launch = sh("true");
    launch.command = vec!["no-such-program-here".into()];
    let end = ex.run_task(&launch, None, &never, &logs).await;
    assert!(
        matches!(&end, TaskEnd::FailedToStart(m) if m.contains("no-such-program-here")),
        "{end:?}"
    );
}

#[tokio::test]
async fn identity_key_is_private_and_removed_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let mut launch = sh(
        "stat -c '%a' \"$GOOGLE_APPLICATION_CREDENTIALS\"; cat \"$GOOGLE_APPLICATION_CREDENTIALS\"; echo; echo \"$GOOGLE_APPLICATION_CREDENTIALS\"",
    );
    launch.identity = Some(Identity {
        email: "runner@p.iam.gserviceaccount.com".into(),
        key_json: SecretString::from("{\"type\":\"service_account\"}"),
    });
    let end = ex
        .run_task(&launch, None, &CancellationToken::new(), &logs)
        .await;
    assert!(end.succeeded(), "{end:?} {}", logs.text());
    let lines: Vec<String> = logs.lines().into_iter().map(|l| l.text).collect();
    assert_eq!(lines[0], "600");
    assert_eq!(lines[1], "{\"type\":\"service_account\"}");
    let path = PathBuf::from(&lines[2]);
    assert!(path.starts_with(dir.path()), "{path:?}");
    assert!(!path.exists(), "key file left behind");
}

// Multi-threaded, and the container lives long enough to be seen ready even on a loaded
// machine: on 2 busy cores a 0.1 s container could exit before its readiness was observed
// (then it counts as never started), and a starved single-threaded runtime hung the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_is_restarted_when_it_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let svc = ex
        .start_service(
            sh("echo \"up on $PORT\"; sleep 0.5; exit 1"),
            Probe::None,
            Duration::from_secs(5),
            logs.clone(),
        )
        .expect("starts");
    let mut rx = svc.watch();
    // Keep no borrow of the channel across awaits: the supervisor writes to it.
    let seen = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| matches!(s, ServiceState::Ready { restarts, .. } if *restarts >= 2)),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    assert!(seen, "state {:?}, logs {}", svc.state(), logs.text());
    // Cloud Run's contract: 8080 in the container's own namespace (the host reaches it on
    // `port()`); a free loopback port where namespaces are unavailable.
    let port = match ex.config().network {
        NetworkMode::Namespaces => CONTAINER_PORT,
        NetworkMode::Loopback(_) => svc.port(),
    };
    assert!(
        logs.text().contains(&format!("up on {port}")),
        "{}",
        logs.text()
    );
    svc.stop().await;
}

fn python() -> PathBuf {
    let candidates = [
        PathBuf::from("/usr/bin/python3"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("a python3 for the listening service test (/usr/bin/python3 or .venv)")
}

#[tokio::test]
async fn service_becomes_ready_on_its_http_probe_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    // http.server takes the port as a trailing argument: pass it through the shell.
    let launch = sh(&format!(
        "exec {} -m http.server --bind 127.0.0.1 \"$PORT\"",
        python().display()
    ));
    let svc = ex
        .start_service(
            launch,
            Probe::Http { path: "/".into() },
            Duration::from_secs(20),
            logs.clone(),
        )
        .expect("starts");
    let state = svc.settled(Duration::from_secs(25)).await;
    assert!(
        matches!(state, ServiceState::Ready { restarts: 0, .. }),
        "{state:?} {}",
        logs.text()
    );
    let ServiceState::Ready { pid: Some(pid), .. } = state else {
        panic!("no pid");
    };
    svc.stop().await;
    assert!(dies_soon(pid).await);
}

#[tokio::test]
async fn service_that_exits_before_listening_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = executor(dir.path());
    let logs = ex.new_logs();
    let svc = ex
        .start_service(
            sh("echo boom; exit 2"),
            Probe::Tcp,
            Duration::from_secs(5),
            logs.clone(),
        )
        .expect("starts");
    let state = svc.settled(Duration::from_secs(10)).await;
    match state {
        ServiceState::Failed { message } => {
            assert!(message.contains("failed to start and listen"), "{message}");
            assert!(message.contains("exit(2)"), "{message}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
}
