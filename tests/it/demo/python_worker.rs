//! `./demo --python-worker`: the guide's own worker (prefect-gcp's `prefect worker start`) as the
//! Cloud Run service in the sandbox, a Quick Run through it to Completed, then destroy.

#[test]
fn demo_with_the_python_worker_runs_the_guide_end_to_end() {
    let stdout = super::run_demo(&["--python-worker"]);
    // The plan it applied deploys prefect-gcp's worker, not the embedded one.
    assert!(
        stdout.contains(
            r#"["prefect","worker","start","--install-policy","always","--with-healthcheck""#
        ),
        "{stdout}"
    );
    // prefect-gcp's worker made the job (its own line in the flow run's logs).
    assert!(stdout.contains("Creating Cloud Run JobV2"), "{stdout}");
}
