//! The sandbox builds (#18 item 4), end to end over its REST surface: a temp folder with a
//! flow and a requirements.txt (a tiny pure-Python package from PyPI) is uploaded as a tar.gz
//! through Cloud Run's `:uploadSource`, built with `builds:submit`, polled through Cloud
//! Build's operation to SUCCESS; a Cloud Run job with the pushed image runs the flow with the
//! package installed, and its output is in the execution's logs. A bad requirement and an
//! unsupported RUN fail the build with pip's last lines / the Dockerfile line; an image of the
//! repository that was never built is "not found" at job create time.

use std::path::Path;
use std::time::{Duration, Instant};

use gcp_sandbox::executor::{ImageMap, Placeholders};
use serde_json::{Value, json};

const PROJECT: &str = "build-project";
const REGION: &str = "us-central1";
const REPO: &str = "prefect";

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("sandbox answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// Polls a Cloud Build or Artifact Registry operation (one path) until done.
    async fn wait(&self, name: &str, limit: Duration) -> Value {
        self.wait_on("v1", name, limit).await
    }

    /// Polls a Cloud Run v2 operation until done.
    async fn wait_run(&self, name: &str, limit: Duration) -> Value {
        self.wait_on("v2", name, limit).await
    }

    async fn wait_on(&self, version: &str, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let op = self
                .ok(reqwest::Method::GET, &format!("{version}/{name}"), None)
                .await;
            if op["done"] == true {
                return op;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not done after {limit:?}: {op}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn upload(&self, folder: &Path) -> Value {
        let archive = folder.with_extension("tar.gz");
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(folder)
            .arg("-czf")
            .arg(&archive)
            .arg(".")
            .status()
            .expect("tar runs");
        assert!(status.success());
        let bytes = std::fs::read(&archive).expect("archive");
        let resp = self
            .http
            .post(format!(
                "{}/upload/v2/projects/{PROJECT}/locations/{REGION}:uploadSource?uploadType=media",
                self.url
            ))
            .bearer_auth(&self.token)
            .header("content-type", "application/gzip")
            .body(bytes)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await.expect("json");
        v["cloudStorageSource"].clone()
    }

    /// Uploads `folder`, builds it into `image`, waits; returns (operation, build, log).
    async fn build(&self, folder: &Path, image: &str) -> (Value, Value, Vec<String>) {
        let source = self.upload(folder).await;
        let resp = self
            .ok(
                reqwest::Method::POST,
                &format!("v2/projects/{PROJECT}/locations/{REGION}/builds:submit"),
                Some(json!({"storageSource": source, "imageUri": image, "dockerBuild": {}})),
            )
            .await;
        assert!(resp["buildOperation"]["name"].is_string(), "{resp}");
        // gcloud does not poll that name: it derives
        // `projects/{build.projectId}/locations/{region}/operations/{build.id}` from the build
        // in the metadata (deployer.py `_SubmitBuild`); that operation must be this build's.
        // (Regression: the sandbox named its operations with an id of their own.)
        let submitted = &resp["buildOperation"]["metadata"]["build"];
        let derived = format!(
            "projects/{}/locations/{REGION}/operations/{}",
            submitted["projectId"].as_str().expect("projectId"),
            submitted["id"].as_str().expect("build id")
        );
        let op = self.wait(&derived, Duration::from_secs(300)).await;
        let build = op["metadata"]["build"].clone();
        let id = build["id"].as_str().expect("id");
        let record = self
            .ok(reqwest::Method::GET, &format!("_sandbox/builds/{id}"), None)
            .await;
        let log = record["log"]
            .as_array()
            .expect("log")
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        (op, build, log)
    }
}

/// Grants the builds' default account (the Compute Engine default account, Cloud Build's
/// default for new projects) `roles/artifactregistry.writer` on the repository only.
async fn grant_writer(api: &Api) {
    let repo = format!("v1/projects/{PROJECT}/locations/{REGION}/repositories/{REPO}");
    let policy = api
        .ok(reqwest::Method::GET, &format!("{repo}:getIamPolicy"), None)
        .await;
    let member = format!(
        "serviceAccount:{}-compute@developer.gserviceaccount.com",
        gcp_sandbox::state::project_number(PROJECT)
    );
    api.ok(
        reqwest::Method::POST,
        &format!("{repo}:setIamPolicy"),
        Some(json!({"policy": {"etag": policy["etag"], "bindings": [
            {"role": "roles/artifactregistry.writer", "members": [member]}
        ]}})),
    )
    .await;
}

fn folder(root: &Path, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = root.join(name);
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}

const DOCKERFILE: &str = "FROM prefecthq/prefect:3-python3.11\n\
COPY requirements.txt /opt/prefect/flows/requirements.txt\n\
RUN python -m pip install -r /opt/prefect/flows/requirements.txt\n\
COPY . /opt/prefect/flows/\n\
WORKDIR /opt/prefect/flows/\n\
ENV GREETING=built\n\
CMD [\"python\", \"flows/hello.py\"]\n";

const FLOW: &str = "import os\nimport art\nfrom prefect import flow\n\n\
@flow(log_prints=True)\ndef hello():\n    assert art.text2art('hi')\n    print(f\"{os.environ['GREETING']} flow says hello from the built image\")\n    print('cwd', os.getcwd())\n\n\
if __name__ == '__main__':\n    hello.fn()\n";

/// A sandbox with Run, Cloud Build and Artifact Registry enabled, and an operator token.
async fn start(dir: &Path) -> (gcp_sandbox::Sandbox, Api) {
    let mut config = gcp_sandbox::Config::new(dir.join("sandbox"));
    config.projects = vec![PROJECT.into()];
    config.op_delay = Duration::from_millis(50);
    config.consistency = gcp_sandbox::Consistency::immediate();
    config.enabled_apis.extend(
        [
            "run.googleapis.com",
            "cloudbuild.googleapis.com",
            "artifactregistry.googleapis.com",
        ]
        .map(String::from),
    );
    config.images = ImageMap::with_defaults(Placeholders {
        venv: testkit::venv(),
        bootstrap: std::path::PathBuf::from("/bin/false"),
        cwd: testkit::repo_root(),
    });
    let sandbox = gcp_sandbox::start(config).await.expect("sandbox starts");
    let token = format!("test-{}", uuid::Uuid::new_v4());
    sandbox.state.write().tokens.insert(
        token.clone(),
        gcp_sandbox::state::TokenGrant {
            email: sandbox.operator_email.clone(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        },
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        http: reqwest::Client::new(),
        url: sandbox.url.clone(),
        token,
    };
    (sandbox, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_upload_build_and_run_a_job_from_the_built_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sandbox, api) = start(dir.path()).await;
    let registry = format!("{REGION}-docker.pkg.dev/{PROJECT}/{REPO}");

    // A push to a repository that does not exist fails the build, as on Google.
    let ok_src = folder(
        dir.path(),
        "ok",
        &[
            ("Dockerfile", DOCKERFILE),
            ("requirements.txt", "art==6.5\n"),
            ("flows/hello.py", FLOW),
        ],
    );
    let (_, build, log) = api.build(&ok_src, &format!("{registry}/hello:v1")).await;
    assert_eq!(build["status"], "FAILURE", "{log:?}");
    assert_eq!(build["failureInfo"]["type"], "PUSH_FAILED", "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("Successfully installed art-6.5")),
        "pip ran: {log:#?}"
    );

    let op = api
        .ok(
            reqwest::Method::POST,
            &format!("v1/projects/{PROJECT}/locations/{REGION}/repositories?repositoryId={REPO}"),
            Some(json!({"format": "DOCKER"})),
        )
        .await;
    api.wait(op["name"].as_str().expect("op"), Duration::from_secs(10))
        .await;

    // Never built: Google's "Image ... not found" at job create time.
    let never = format!("{registry}/never:v1");
    let job_path = format!("v2/projects/{PROJECT}/locations/{REGION}/jobs");
    let (status, job) = api
        .call(
            reqwest::Method::POST,
            &format!("{job_path}?jobId=never-built"),
            Some(json!({"template": {"template": {"containers": [{"image": never}], "maxRetries": 0}}})),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let job = api
        .wait_run(job["name"].as_str().expect("op"), Duration::from_secs(10))
        .await;
    assert!(
        job.to_string()
            .contains(&format!("Image '{never}' not found.")),
        "{job}"
    );

    // The build's account needs uploadArtifacts on the repository.
    let (_, build, log) = api.build(&ok_src, &format!("{registry}/hello:v1")).await;
    assert_eq!(build["status"], "FAILURE", "{log:#?}");
    assert_eq!(build["failureInfo"]["type"], "PUSH_NOT_AUTHORIZED");
    assert!(
        log.join("\n")
            .contains("artifactregistry.repositories.uploadArtifacts"),
        "{log:#?}"
    );
    grant_writer(&api).await;

    let (op, build, log) = api.build(&ok_src, &format!("{registry}/hello:v1")).await;
    assert_eq!(build["status"], "SUCCESS", "{log:#?}");
    assert_eq!(op["response"]["status"], "SUCCESS");
    let digest = build["results"]["images"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    assert!(
        log.iter().any(|l| l.contains("Using cache")),
        "pip's environment reused: {log:#?}"
    );

    // The image runs: CMD from the Dockerfile, WORKDIR, ENV, the requirement installed.
    let image = format!("{registry}/hello@{digest}");
    let op = api
        .ok(
            reqwest::Method::POST,
            &format!("{job_path}?jobId=hello"),
            Some(json!({"template": {"template": {"containers": [{"image": image}], "maxRetries": 0}}})),
        )
        .await;
    let job = api
        .wait_run(op["name"].as_str().expect("op"), Duration::from_secs(10))
        .await;
    assert!(job.get("error").is_none(), "{job}");
    let run = api
        .ok(
            reqwest::Method::POST,
            &format!("{job_path}/hello:run"),
            Some(json!({})),
        )
        .await;
    let done = api
        .wait_run(run["name"].as_str().expect("op"), Duration::from_secs(180))
        .await;
    let execution = done["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let logs = api
        .http
        .get(format!("{}/_sandbox/logs/{execution}", sandbox.url))
        .send()
        .await
        .expect("logs")
        .text()
        .await
        .expect("text");
    assert!(done.get("error").is_none(), "{done}\n{logs}");
    assert_eq!(done["response"]["succeededCount"], 1, "{done}\n{logs}");
    assert!(
        logs.contains("built flow says hello from the built image"),
        "{logs}"
    );
    assert!(logs.contains("/opt/prefect/flows"), "{logs}");

    // The same folder gives the same digest; the tag form runs it too.
    let (_, again, _) = api.build(&ok_src, &format!("{registry}/hello:v2")).await;
    assert_eq!(again["results"]["images"][0]["digest"], digest.as_str());

    // A bad requirement fails with pip's last lines.
    let bad = folder(
        dir.path(),
        "bad",
        &[
            ("Dockerfile", DOCKERFILE),
            (
                "requirements.txt",
                "this-package-does-not-exist-bootstrap==9.9\n",
            ),
            ("flows/hello.py", FLOW),
        ],
    );
    let (op, build, log) = api.build(&bad, &format!("{registry}/bad:v1")).await;
    assert_eq!(build["status"], "FAILURE", "{log:#?}");
    assert_eq!(
        op["error"]["message"],
        "Build failed; check build logs for details"
    );
    let text = log.join("\n");
    assert!(
        text.contains("No matching distribution found for this-package-does-not-exist-bootstrap"),
        "{text}"
    );

    // A RUN the builder cannot mimic fails naming the line.
    let unsupported = folder(
        dir.path(),
        "apt",
        &[(
            "Dockerfile",
            "FROM prefecthq/prefect:3-python3.11\nWORKDIR /app\nRUN apt-get install -y curl\n",
        )],
    );
    let (_, build, log) = api.build(&unsupported, &format!("{registry}/apt:v1")).await;
    assert_eq!(build["status"], "FAILURE");
    assert!(
        log.join("\n")
            .contains("Dockerfile line 3: RUN apt-get install -y curl"),
        "{log:#?}"
    );
    sandbox.shutdown().await.expect("shutdown");
}

/// gcloud's path: `BOOTSTRAP_GCLOUD`, else `gcloud` on `PATH`; these tests need it.
fn gcloud_path() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("BOOTSTRAP_GCLOUD") {
        return p.into();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("gcloud"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("gcloud (google-cloud-cli) is not on PATH: this test needs the real gcloud")
        })
}

/// Runs gcloud (its own config dir, aimed at the sandbox) with a deadline; returns exit
/// code, stdout, stderr.
async fn gcloud(config: &Path, home: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(gcloud_path());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CLOUDSDK_CONFIG", config)
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("gcloud {} did not finish in 180 s", args.join(" ")))
        .expect("gcloud runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gcloud artifacts repositories VERB` of the test's repository, then `extra`.
fn repository<'a>(verb: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "artifacts",
        "repositories",
        verb,
        REPO,
        "--location",
        REGION,
    ];
    args.extend_from_slice(extra);
    args
}

async fn gcloud_json(config: &Path, home: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--format=json");
    let (code, out, err) = gcloud(config, home, &all).await;
    assert_eq!(code, 0, "gcloud {}\n{out}\n{err}", args.join(" "));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("gcloud {} printed no JSON ({e}): {out}", args.join(" ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcloud_reads_repositories_images_and_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sandbox, api) = start(dir.path()).await;
    gcp_sandbox::hosts::ensure_hosts_file(Path::new("/etc/hosts"))
        .expect("the sandbox's host names in /etc/hosts (gcloud needs them)");
    let config = dir.path().join("gcloud");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    gcp_sandbox::hosts::GcloudConfig {
        port: sandbox.port,
        project: PROJECT.into(),
        region: REGION.into(),
        key_file: sandbox.operator_key_path.clone(),
        account: sandbox.operator_email.clone(),
    }
    .write(&config)
    .expect("gcloud configuration");
    let (c, h) = (config.as_path(), home.as_path());

    let (code, out, err) = gcloud(
        c,
        h,
        &repository(
            "create",
            &["--repository-format=docker", "--description", "flows"],
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let listed = gcloud_json(
        c,
        h,
        &["artifacts", "repositories", "list", "--location", REGION],
    )
    .await;
    let name = format!("projects/{PROJECT}/locations/{REGION}/repositories/{REPO}");
    assert!(
        listed
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["name"] == name.as_str())),
        "{listed}"
    );
    let described = gcloud_json(c, h, &repository("describe", &[])).await;
    assert_eq!(described["format"], "DOCKER");
    assert_eq!(described["description"], "flows");

    let src = folder(
        dir.path(),
        "src",
        &[
            (
                "Dockerfile",
                "FROM prefecthq/prefect:3-python3.11\nCOPY . /app\nWORKDIR /app\nCMD [\"python\", \"main.py\"]\n",
            ),
            ("main.py", "print('hi')\n"),
        ],
    );
    let registry = format!("{REGION}-docker.pkg.dev/{PROJECT}/{REPO}");
    grant_writer(&api).await;
    let (_, build, log) = api.build(&src, &format!("{registry}/app:v1")).await;
    assert_eq!(build["status"], "SUCCESS", "{log:#?}");
    let digest = build["results"]["images"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();

    let images = gcloud_json(
        c,
        h,
        &[
            "artifacts",
            "docker",
            "images",
            "list",
            &registry,
            "--include-tags",
        ],
    )
    .await;
    let images = images.as_array().expect("a list");
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["package"], format!("{registry}/app").as_str());
    assert_eq!(images[0]["version"], digest.as_str());
    assert!(images[0]["tags"].to_string().contains("v1"), "{images:?}");

    let id = build["id"].as_str().expect("id");
    let described = gcloud_json(c, h, &["builds", "describe", id, "--region", REGION]).await;
    assert_eq!(described["status"], "SUCCESS");
    assert_eq!(described["results"]["images"][0]["digest"], digest.as_str());

    let (code, out, err) = gcloud(c, h, &repository("delete", &["--quiet"])).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = gcloud(c, h, &repository("describe", &[])).await;
    assert_ne!(code, 0, "{err}");
    sandbox.shutdown().await.expect("shutdown");
}
