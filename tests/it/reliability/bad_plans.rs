//! Reliability 4a: bad plans. The binary, run on a corpus of malformed plans
//! (`tests/bad_input/plans/`, plus huge, deeply nested, non-UTF-8 and binary files made here),
//! exits 1 with a clear error that names the file, never panics, and makes no network call:
//! the Google endpoint and the Prefect URL point at a loopback listener that must see zero
//! connections.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

/// A loopback listener that counts the connections it gets (and answers none).
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (url, count)
}

/// Plans too big or odd to keep in the repository, written into `dir`.
fn generated(dir: &Path) -> Vec<PathBuf> {
    let base = std::fs::read_to_string(corpus_dir().join("syntax_tab_indent.yaml"))
        .expect("corpus")
        .replace('\t', "  ");
    let mut out = Vec::new();
    let mut write = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        out.push(p);
    };
    // 12 MB: a role list of 400 000 entries.
    let roles: Vec<String> = (0..400_000).map(|i| format!("roles/r{i}")).collect();
    write(
        "huge.yaml",
        base.replace(
            "roles: [roles/iam.serviceAccountUser, roles/run.admin]",
            &format!("roles: [{}]", roles.join(", ")),
        )
        .into_bytes(),
    );
    // 200 000 levels of flow sequences, and of block mappings.
    write(
        "deep_flow.yaml",
        format!("a: {}{}\n", "[".repeat(200_000), "]".repeat(200_000)).into_bytes(),
    );
    let mut deep = String::new();
    for i in 0..5_000 {
        deep.push_str(&" ".repeat(i));
        deep.push_str("k:\n");
    }
    write("deep_block.yaml", deep.into_bytes());
    // Invalid UTF-8 inside a value, and in a key.
    let mut bad = base.clone().into_bytes();
    let at = base.find("creds").expect("creds");
    bad.splice(at..at, [0xff, 0xfe, 0xc3]);
    write("non_utf8_value.yaml", bad);
    write("non_utf8_start.yaml", b"\xff\xfe\x00v\x00e\x00r".to_vec());
    // Binary noise with NULs.
    write(
        "binary.yaml",
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    write(
        "nul_in_text.yaml",
        base.replace("pool", "po\0ol").into_bytes(),
    );
    out
}

fn corpus_dir() -> PathBuf {
    testkit::repo_root().join("tests/bad_input/plans")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_fail_clearly_without_network() {
    let (url, connections) = counting_listener().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut plans: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus")
        .flatten()
        .map(|e| e.path())
        .collect();
    plans.sort();
    assert!(plans.len() >= 30, "corpus too small: {}", plans.len());
    plans.extend(generated(tmp.path()));
    plans.push(tmp.path().join("does-not-exist.yaml"));
    plans.push(tmp.path().to_path_buf()); // a directory
    let commands: &[&[&str]] = &[
        &["validate"],
        &["plan", "--detailed-exitcode"],
        &["apply", "--auto-approve"],
        &["destroy", "--auto-approve"],
    ];
    let key = tmp.path().join("key.json");
    std::fs::write(&key, "{}").expect("key");
    let mut runs = 0;
    for plan in &plans {
        let shown = plan.file_name().map(|n| n.to_string_lossy().into_owned());
        for args in commands {
            let started = Instant::now();
            let out = tokio::task::block_in_place(|| {
                Command::new(testkit::bin())
                    .args(*args)
                    .arg("-f")
                    .arg(plan)
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .env("HOME", tmp.path())
                    .env("NO_COLOR", "1")
                    .env("BOOTSTRAP_GCP_ENDPOINT", &url)
                    .env("PREFECT_API_URL", format!("{url}/api"))
                    .env("GOOGLE_APPLICATION_CREDENTIALS", &key)
                    .output()
                    .expect("run bootstrap")
            });
            runs += 1;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("bootstrap {} -f {}", args.join(" "), plan.display());
            assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            let first = stderr.lines().next().unwrap_or_default();
            assert!(first.contains("error: "), "{what}: {stderr}");
            if let Some(name) = &shown {
                assert!(
                    stderr.contains(name.as_str()),
                    "{what}: name the file: {stderr}"
                );
            }
            // One error, not a dump of the input.
            assert!(
                stderr.len() < 2000,
                "{what}: {} bytes of stderr",
                stderr.len()
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: took {:?}",
                started.elapsed()
            );
        }
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a bad plan led to a network call"
    );
    testkit::record(
        "bad_plans",
        json!({ "plans": plans.len(), "runs": runs, "network_connections": 0 }),
    );
}
