//! The corpus of bad plans: each must be rejected, every diagnostic must point at a line and
//! column and carry a hint, and the rendered messages are snapshotted.

use std::path::Path;

use bootstrap_spec::{Diagnostics, load_bytes};

/// What templates see: only a Prefect URL, so that `unset_env` has something unset.
fn env(name: &str) -> Option<String> {
    (name == "PREFECT_API_URL").then(|| "http://127.0.0.1:4200/api".to_owned())
}

fn check(bytes: &[u8], shown: &Path) -> Diagnostics {
    let diags = match load_bytes(bytes, shown, &env) {
        Ok(spec) => panic!("{} was accepted: {spec:?}", shown.display()),
        Err(d) => d,
    };
    assert!(!diags.is_empty());
    for d in diags.iter() {
        assert!(d.line > 0 && d.column > 0, "no position: {d}");
        assert!(d.hint.is_some(), "no hint: {d}");
        assert_eq!(d.file.file_name(), shown.file_name(), "{d}");
    }
    diags
}

#[test]
fn bad_plans() {
    insta::glob!("../bad", "*.yaml", |path| {
        let bytes = std::fs::read(path).expect("corpus file is readable");
        let name = path.file_name().expect("a file name");
        // A path relative to the crate, so snapshots do not depend on the checkout.
        let shown = Path::new("tests/bad").join(name);
        let diags = if name == "deployments_from_missing.yaml" {
            // `deployments_from` resolves next to the plan; point it at the real directory.
            let d = load_bytes(&bytes, path, &env).expect_err("rejected");
            Diagnostics(
                d.into_iter()
                    .map(|mut x| {
                        x.file = shown.clone();
                        x.message = x
                            .message
                            .replace(&path.parent().unwrap().display().to_string(), "tests/bad");
                        x
                    })
                    .collect(),
            )
        } else {
            check(&bytes, &shown)
        };
        insta::assert_snapshot!(diags.to_string());
    });
}

#[test]
fn not_utf8() {
    let bytes = b"version: 1\ngcp:\n  project: caf\xe9-project\n";
    let d = check(bytes, Path::new("tests/bad/latin1.yaml"));
    insta::assert_snapshot!(d.to_string());
}

#[test]
fn huge_file() {
    let mut plan = String::from("version: 1\ndeployments:\n");
    while plan.len() <= bootstrap_spec::MAX_PLAN_BYTES {
        plan.push_str("  - {name: d, flow: f, entrypoint: flows/a.py:f}\n");
    }
    let d = check(plan.as_bytes(), Path::new("tests/bad/huge.yaml"));
    insta::assert_snapshot!(d.to_string());
}

#[test]
fn alias_bomb() {
    // Each level refers to the one before ten times: a classic "billion laughs".
    let mut plan = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        plan.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let d = check(plan.as_bytes(), Path::new("tests/bad/bomb.yaml"));
    assert_eq!(d.len(), 1, "{d}");
}

#[test]
fn a_missing_file_is_one_clear_error() {
    let d = bootstrap_spec::load(Path::new("tests/bad/does-not-exist.yaml")).unwrap_err();
    assert_eq!(d.len(), 1);
    assert!(
        d.to_string()
            .starts_with("tests/bad/does-not-exist.yaml: error: cannot read the plan file"),
        "{d}"
    );
}
