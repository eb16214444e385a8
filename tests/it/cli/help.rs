//! What users read first: `--help` of every subcommand, snapshot-tested.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .args(args)
        .arg("--help")
        // Flags show their environment variable's value in help: keep the environment empty.
        .env_clear()
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .output()
        .expect("run bootstrap");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

#[test]
fn help_of_every_subcommand() {
    insta::assert_snapshot!("help", help(&[]));
    for sub in [
        "init",
        "validate",
        "plan",
        "apply",
        "destroy",
        "doctor",
        "worker",
        "run",
        "sandbox",
        "completions",
    ] {
        insta::assert_snapshot!(format!("help_{sub}"), help(&[sub]));
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_bootstrap"))
            .args(["completions", shell])
            .output()
            .expect("run bootstrap");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("bootstrap") && text.contains("destroy"),
            "{shell}"
        );
    }
}
