//! Reliability 4b: bad server answers. A loopback fake answers every Google (or Prefect) call
//! of `bootstrap plan` with malformed JSON, wrong types, a truncated body, a proxy's HTML 502
//! page, a captive portal's HTML 200 page, or never answers. Every case ends with exit 1 and a
//! clear error within a bound (the tool's own deadlines: 120 s per Google call, 60 s per Prefect
//! call), never a panic.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::World;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy)]
enum Answer {
    MalformedJson,
    WrongTypes,
    Truncated,
    ProxyHtml502,
    PortalHtml200,
    Hang,
}

const ANSWERS: [Answer; 6] = [
    Answer::MalformedJson,
    Answer::WrongTypes,
    Answer::Truncated,
    Answer::ProxyHtml502,
    Answer::PortalHtml200,
    Answer::Hang,
];

fn response(answer: Answer) -> Option<Vec<u8>> {
    let full = |status: &str, ctype: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    Some(match answer {
        Answer::MalformedJson => full(
            "200 OK",
            "application/json",
            r#"{"name": "projects/p/serviceAccounts/x", "email": "#,
        ),
        Answer::WrongTypes => full(
            "200 OK",
            "application/json",
            r#"{"name":42,"email":["x"],"disabled":"maybe","keys":"none","bindings":{"a":1},"etag":7,"services":7,"id":false,"type":9,"state":{},"version":"x"}"#,
        ),
        // Promises 4000 bytes, sends 40, hangs up.
        Answer::Truncated => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n{\"name\": \"projects/p/serviceAccounts/abc".to_vec(),
        Answer::ProxyHtml502 => full(
            "502 Bad Gateway",
            "text/html",
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
        ),
        Answer::PortalHtml200 => full(
            "200 OK",
            "text/html",
            "<!DOCTYPE html><html><body><form>Sign in to the hotel Wi-Fi</form></body></html>",
        ),
        Answer::Hang => return None,
    })
}

/// A loopback server that reads each request and gives `answer`; returns its URL and the
/// number of requests it saw.
async fn fake(answer: Answer) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says (bounded).
                while let Ok(n) = socket.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len.min(1 << 20) {
                            break;
                        }
                    }
                    if buf.len() > 2 << 20 {
                        return;
                    }
                }
                s.fetch_add(1, Ordering::SeqCst);
                match response(answer) {
                    Some(bytes) => {
                        let _ = socket.write_all(&bytes).await;
                        let _ = socket.shutdown().await;
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        drop(socket);
                    }
                }
            });
        }
    });
    (url, seen)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Case {
    what: String,
    child: Child,
    bound: Duration,
    seen: Arc<AtomicUsize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_end_in_a_clear_error_in_bounded_time() {
    let w = World::start("answers-project").await;
    let suffix = testkit::suffix("ans");
    let path = w.plan_file(
        "bootstrap.yaml",
        &testkit::light_plan("answers-project", &suffix),
    );
    let plan = path.to_str().expect("utf-8 path");
    let mut cases = Vec::new();
    for answer in ANSWERS {
        for side in ["google", "prefect"] {
            let (url, seen) = fake(answer).await;
            let mut cmd = w.command(&["plan", "-f", plan]);
            match side {
                "google" => cmd.env("BOOTSTRAP_GCP_ENDPOINT", &url),
                _ => cmd.env("PREFECT_API_URL", format!("{url}/api")),
            };
            let child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn plan");
            // Beyond the tool's own deadlines, with room for a loaded machine.
            let bound = match (answer, side) {
                (Answer::Hang, "google") => Duration::from_secs(170),
                (Answer::Hang, _) => Duration::from_secs(110),
                _ => Duration::from_secs(100),
            };
            cases.push(Case {
                what: format!("{answer:?} from {side}"),
                child,
                bound,
                seen,
            });
        }
    }
    let started = Instant::now();
    let mut results = Vec::new();
    for mut case in cases {
        loop {
            if case.child.try_wait().expect("wait").is_some() {
                break;
            }
            if started.elapsed() > case.bound {
                let _ = case.child.kill();
                panic!("{}: no end within {:?}", case.what, case.bound);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out = case.child.wait_with_output().expect("output");
        w.note(&case.what, &out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = &case.what;
        assert!(
            case.seen.load(Ordering::SeqCst) > 0,
            "{what}: the fake got no call"
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(
            stderr.lines().any(|l| l.starts_with("error: ")),
            "{what}: no error line: {stderr}"
        );
        assert!(
            stderr.len() < 4000,
            "{what}: {} bytes of stderr",
            stderr.len()
        );
        results.push(json!({ "case": what, "secs": started.elapsed().as_secs(),
                             "error": stderr.lines().find(|l| l.starts_with("error: ")) }));
    }
    testkit::record("bad_answers", json!({ "cases": results }));
}
