//! The README's first command, run as a new user would: `./demo` applies the guide on the
//! sandbox and a Prefect server of its own, runs the deployment, prints the artifact, destroys.

#[test]
fn demo_runs_the_guide_end_to_end() {
    let stdout = super::run_demo(&[]);
    // The flow's image is built from its folder (#18 item 6), and the run starts in it (the
    // pull step changes into /opt/prefect/offline, where the built image has the flow). Not as
    // a non-root user: the demo says so and runs the Prefect image instead.
    if !stdout.contains("note: not root") {
        assert!(
            stdout.contains(
                "gcp.image[\"us-central1-docker.pkg.dev/sandbox-project/flows/offline-report\"] will be created"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("Deployment step 'set_working_directory' completed successfully"),
            "{stdout}"
        );
    }
}
