//! The remote-build clients (Cloud Run `:uploadSource` / `builds:submit`, Cloud Build, Artifact
//! Registry) against the scripted fake: each request's method and path must be one the
//! discovery document declares for the method id it names, and its JSON body may only use
//! properties of the declared request schema. The documents are google-api-python-client's
//! (`$BOOTSTRAP_VENV/.../googleapiclient/discovery_cache/documents`).

use crate::support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bootstrap_gcp::cloudbuild::{self, BuildEnd};
use bootstrap_gcp::operations::PollBackoff;
use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
use bootstrap_gcp::{artifactregistry, run_builds};
use bootstrap_ids::{ProjectId, Region};
use serde_json::{Value, json};
use support::{Canned, Fake, Seen, fast_retry};

fn project() -> ProjectId {
    ProjectId::parse("demo-project").unwrap()
}

fn region() -> Region {
    Region::parse("us-central1").unwrap()
}

fn docs_dir() -> PathBuf {
    let venv = std::env::var("BOOTSTRAP_VENV")
        .unwrap_or_else(|_| format!("{}/../../.venv", env!("CARGO_MANIFEST_DIR")));
    PathBuf::from(venv)
        .join("lib/python3.11/site-packages/googleapiclient/discovery_cache/documents")
}

fn doc(file: &str) -> Value {
    let path = docs_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "discovery document {} (set BOOTSTRAP_VENV): {e}",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The method `id` of a discovery document, searched through its nested resources.
fn method<'a>(d: &'a Value, id: &str) -> &'a Value {
    fn walk<'a>(r: &'a Value, id: &str) -> Option<&'a Value> {
        if let Some(ms) = r.get("methods").and_then(Value::as_object) {
            for m in ms.values() {
                if m["id"] == id {
                    return Some(m);
                }
            }
        }
        r.get("resources")
            .and_then(Value::as_object)?
            .values()
            .find_map(|x| walk(x, id))
    }
    walk(d, id).unwrap_or_else(|| panic!("no method {id}"))
}

/// Whether `path` (no query) matches a discovery path template: `{+name}` spans segments,
/// `{x}` is one segment.
fn matches_template(template: &str, path: &str) -> bool {
    let mut re = String::from("^/");
    let mut rest = template.trim_start_matches('/');
    while let Some(open) = rest.find('{') {
        re.push_str(&regex_escape(&rest[..open]));
        let close = rest[open..].find('}').unwrap() + open;
        let var = &rest[open + 1..close];
        re.push_str(if var.starts_with('+') {
            "[^?]+"
        } else {
            "[^/?]+"
        });
        rest = &rest[close + 1..];
    }
    re.push_str(&regex_escape(rest));
    re.push('$');
    simple_match(&re, path)
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// A tiny matcher for the patterns `matches_template` makes: literals, `[^?]+`, `[^/?]+`.
fn simple_match(re: &str, s: &str) -> bool {
    enum Tok {
        Lit(char),
        Any { slash: bool },
    }
    let mut toks = Vec::new();
    let body = re.trim_start_matches('^').trim_end_matches('$');
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            toks.push(Tok::Lit(chars.next().unwrap()));
        } else if c == '[' {
            let mut class = String::new();
            for d in chars.by_ref() {
                if d == ']' {
                    break;
                }
                class.push(d);
            }
            chars.next(); // '+'
            toks.push(Tok::Any {
                slash: !class.contains('/'),
            });
        } else {
            toks.push(Tok::Lit(c));
        }
    }
    fn go(t: &[Tok], s: &[char]) -> bool {
        match t.first() {
            None => s.is_empty(),
            Some(Tok::Lit(c)) => s.first() == Some(c) && go(&t[1..], &s[1..]),
            Some(Tok::Any { slash }) => (1..=s.len()).any(|n| {
                s[..n].iter().all(|c| *c != '?' && (*slash || *c != '/')) && go(&t[1..], &s[n..])
            }),
        }
    }
    let s: Vec<char> = s.chars().collect();
    go(&toks, &s)
}

/// Checks one seen request against the method `id` of `file`.
fn check(file: &str, id: &str, seen: &Seen) {
    let d = doc(file);
    let m = method(&d, id);
    assert_eq!(seen.method, m["httpMethod"], "{id}");
    let (path, query) = seen.uri.split_once('?').unwrap_or((&seen.uri, ""));
    let upload = m["mediaUpload"]["protocols"]["simple"]["path"].as_str();
    let template_ok = matches_template(m["path"].as_str().unwrap(), path)
        || upload.is_some_and(|u| matches_template(u, path));
    assert!(template_ok, "{id}: {path} is not {}", m["path"]);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split('=').next().unwrap();
        let key = urlencoding_decode(key);
        let declared = m["parameters"].get(&key).is_some()
            || ["uploadType", "alt"].contains(&key.as_str()) && d["parameters"].get(&key).is_some();
        assert!(declared, "{id}: query parameter {key} is not declared");
    }
    if let (Some(schema), Value::Object(body)) = (m["request"]["$ref"].as_str(), seen.json()) {
        let props = &d["schemas"][schema]["properties"];
        for k in body.keys() {
            assert!(
                props.get(k).is_some(),
                "{id}: {k} is not a property of {schema}"
            );
        }
    }
}

fn urlencoding_decode(s: &str) -> String {
    s.replace("%2E", ".").replace("%2e", ".")
}

fn build_json(status: &str) -> Value {
    json!({
        "id": "b-1", "projectId": "demo-project", "status": status,
        "name": "projects/demo-project/locations/us-central1/builds/b-1",
        "logUrl": "https://console.cloud.google.com/cloud-build/builds;region=us-central1/b-1?project=demo-project",
        "results": {"images": [{"name": "us-central1-docker.pkg.dev/demo-project/prefect/flow:src-1", "digest": "sha256:aa"}]}
    })
}

#[tokio::test]
async fn upload_submit_and_follow_a_build() {
    let op_name = "projects/demo-project/locations/us-central1/operations/b-1";
    let meta = |status: &str| {
        json!({"@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
               "build": build_json(status)})
    };
    let fake = Fake::start(vec![
        Canned::json(
            200,
            json!({"cloudStorageSource": {"bucket": "run-sources-demo-project-us-central1",
                                          "object": "services/x/src.tar.gz", "generation": "7"}}),
        ),
        Canned::json(
            200,
            json!({"buildOperation": {"name": "operations/other", "metadata": meta("QUEUED")}}),
        ),
        Canned::json(200, json!({"name": op_name, "metadata": meta("WORKING")})),
        Canned::json(
            200,
            json!({"name": op_name, "done": true, "metadata": meta("SUCCESS"),
                   "response": build_json("SUCCESS")}),
        ),
    ])
    .await;
    let http = fake.client(fast_retry());
    let archive = b"\x1f\x8b\x08\x00fake-gzip".to_vec();
    let src = run_builds::upload_source(&http, &project(), &region(), archive.clone())
        .await
        .unwrap();
    assert_eq!(src.generation.as_deref(), Some("7"));
    let image = "us-central1-docker.pkg.dev/demo-project/prefect/flow:src-1";
    let submitted = run_builds::submit_docker_build(
        &http,
        &project(),
        &region(),
        &src,
        image,
        &["deployment_flow".to_owned()],
        Some("123-compute@developer.gserviceaccount.com"),
    )
    .await
    .unwrap();
    let mut statuses = Vec::new();
    let backoff = PollBackoff {
        initial: Duration::from_millis(1),
        factor: 1.0,
        max: Duration::from_millis(1),
    };
    let end = cloudbuild::wait_build(
        &http,
        &submitted.build_operation,
        Duration::from_secs(10),
        backoff,
        |b| statuses.push(b.status.clone()),
    )
    .await
    .unwrap();
    let BuildEnd::Finished(b) = end else {
        panic!("{end:?}")
    };
    assert!(b.succeeded());
    assert_eq!(b.results.unwrap().images[0].digest, "sha256:aa");
    assert_eq!(statuses, ["QUEUED", "WORKING", "SUCCESS"]);

    let seen = fake.seen();
    // The upload: Google's multipart media protocol, the archive as the second part.
    check(
        "run.v2.json",
        "run.projects.locations.sourceUploads.upload",
        &seen[0],
    );
    assert_eq!(
        seen[0].uri,
        "/upload/v2/projects/demo-project/locations/us-central1:uploadSource?uploadType=multipart&alt=json"
    );
    let ct = seen[0].content_type.clone().unwrap();
    assert!(ct.starts_with("multipart/related; boundary="), "{ct}");
    assert!(seen[0].body.contains("Content-Type: application/gzip"));
    assert!(seen[0].body.contains("fake-gzip"));
    // The submit: what gcloud's `_PrepareSubmitBuildRequest` sends for a Docker build.
    check(
        "run.v2.json",
        "run.projects.locations.builds.submit",
        &seen[1],
    );
    assert_eq!(
        seen[1].json(),
        json!({"storageSource": {"bucket": "run-sources-demo-project-us-central1",
                                 "object": "services/x/src.tar.gz", "generation": "7"},
               "imageUri": image, "dockerBuild": {}, "tags": ["deployment_flow"],
               "serviceAccount": "projects/demo-project/serviceAccounts/123-compute@developer.gserviceaccount.com"})
    );
    // The poll: the operation gcloud derives from the build, on Cloud Build.
    check(
        "cloudbuild.v1.json",
        "cloudbuild.projects.locations.operations.get",
        &seen[2],
    );
    assert_eq!(seen[2].uri, format!("/v1/{op_name}"));
}

/// Which account builds run as when they name none: the method gcloud reads before a source
/// deploy (`command_lib/run/build_util.py`), answered as a resource name.
#[tokio::test]
async fn the_default_build_account_is_read_as_gcloud_reads_it() {
    let fake = Fake::start(vec![Canned::json(
        200,
        json!({"name": "projects/demo-project/locations/us-central1/defaultServiceAccount",
               "serviceAccountEmail": "projects/demo-project/serviceAccounts/123-compute@developer.gserviceaccount.com"}),
    )])
    .await;
    let http = fake.client(fast_retry());
    let email = cloudbuild::get_default_service_account(&http, &project(), &region())
        .await
        .unwrap();
    assert_eq!(
        email.as_deref(),
        Some("123-compute@developer.gserviceaccount.com")
    );
    let seen = fake.seen();
    check(
        "cloudbuild.v1.json",
        "cloudbuild.projects.locations.getDefaultServiceAccount",
        &seen[0],
    );
    assert_eq!(
        seen[0].uri,
        "/v1/projects/demo-project/locations/us-central1/defaultServiceAccount"
    );
}

#[tokio::test]
async fn a_failed_build_is_reported_with_its_status_and_link() {
    let op_name = "projects/demo-project/locations/us-central1/operations/b-1";
    let failed = json!({"name": op_name, "done": true,
        "metadata": {"build": build_json("FAILURE")},
        "error": {"code": 2, "message": "Build failed; check build logs for details"}});
    let fake = Fake::start(vec![Canned::json(200, failed)]).await;
    let http = fake.client(fast_retry());
    let submitted: bootstrap_gcp::Operation = serde_json::from_value(
        json!({"name": op_name, "metadata": {"build": build_json("QUEUED")}}),
    )
    .unwrap();
    let end = cloudbuild::wait_build(
        &http,
        &submitted,
        Duration::from_secs(10),
        PollBackoff::default(),
        |_| {},
    )
    .await
    .unwrap();
    let BuildEnd::Finished(b) = end else {
        panic!("{end:?}")
    };
    assert_eq!(b.status, "FAILURE");
    assert!(b.log_url.unwrap().contains("cloud-build/builds"));
}

#[tokio::test]
async fn a_build_that_outlasts_the_deadline_times_out() {
    let op_name = "projects/demo-project/locations/us-central1/operations/b-1";
    let working = || {
        Canned::json(
            200,
            json!({"name": op_name, "metadata": {"build": build_json("WORKING")}}),
        )
    };
    let fake = Fake::start((0..50).map(|_| working()).collect()).await;
    let http = fake.client(fast_retry());
    let submitted: bootstrap_gcp::Operation = serde_json::from_value(
        json!({"name": op_name, "metadata": {"build": build_json("QUEUED")}}),
    )
    .unwrap();
    let backoff = PollBackoff {
        initial: Duration::from_millis(20),
        factor: 1.0,
        max: Duration::from_millis(20),
    };
    let end = cloudbuild::wait_build(
        &http,
        &submitted,
        Duration::from_millis(100),
        backoff,
        |_| {},
    )
    .await
    .unwrap();
    assert!(
        matches!(end, BuildEnd::TimedOut { last: Some(ref b), .. } if b.status == "WORKING"),
        "{end:?}"
    );
}

#[tokio::test]
async fn repository_lifecycle_iam_and_images() {
    let repo_name = "projects/demo-project/locations/us-central1/repositories/prefect";
    let op = "projects/demo-project/locations/us-central1/operations/op-1";
    let fake = Fake::start(vec![
        Canned::error(404, "NOT_FOUND", "Requested entity was not found."),
        Canned::json(200, json!({"name": op})),
        Canned::json(200, json!({"name": op, "done": true,
                                 "response": {"name": repo_name, "format": "DOCKER"}})),
        // getIamPolicy, setIamPolicy (read-modify-write).
        Canned::json(200, json!({"etag": "BwA=", "bindings": []})),
        Canned::json(200, json!({"etag": "BwB=", "bindings": [
            {"role": "roles/artifactregistry.reader", "members": ["serviceAccount:sa@demo-project.iam.gserviceaccount.com"]}]})),
        Canned::json(200, json!({"dockerImages": [
            {"name": format!("{repo_name}/dockerImages/flow@sha256:aa"),
             "uri": "us-central1-docker.pkg.dev/demo-project/prefect/flow@sha256:aa", "tags": ["src-1"]}],
            "nextPageToken": "p2"})),
        Canned::json(200, json!({"dockerImages": []})),
        Canned::json(200, json!({"name": format!("{repo_name}/dockerImages/flow@sha256:aa"),
                                 "uri": "us-central1-docker.pkg.dev/demo-project/prefect/flow@sha256:aa"})),
        Canned::json(200, json!({"name": op, "done": true})),
    ])
    .await;
    let http = fake.client(fast_retry());
    assert!(
        artifactregistry::get_repository(&http, &project(), &region(), "prefect")
            .await
            .unwrap()
            .is_none()
    );
    let labels = BTreeMap::from([("managed-by".to_owned(), "bootstrap".to_owned())]);
    let op1 = artifactregistry::create_repository(
        &http,
        &project(),
        &region(),
        "prefect",
        "Prefect flow images",
        &labels,
    )
    .await
    .unwrap();
    artifactregistry::wait(&http, op1, Duration::from_secs(5))
        .await
        .unwrap();
    let target = PolicyTarget::ArtifactRepository {
        project: project(),
        region: region(),
        repository: "prefect".into(),
    };
    let member = "serviceAccount:sa@demo-project.iam.gserviceaccount.com";
    let out = policy::read_modify_write(&http, &target, RmwOptions::default(), |p| {
        policy::add_member(p, "roles/artifactregistry.reader", member)
    })
    .await
    .unwrap();
    assert!(out.changed);
    let images = artifactregistry::list_docker_images(&http, &project(), &region(), "prefect")
        .await
        .unwrap();
    assert_eq!(images.len(), 1);
    let got = artifactregistry::get_docker_image(&http, &images[0].name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.digest(), Some("sha256:aa"));
    let del = artifactregistry::delete_repository(&http, &project(), &region(), "prefect")
        .await
        .unwrap();
    assert!(del.is_some());

    let seen = fake.seen();
    let ar = "artifactregistry.v1.json";
    check(
        ar,
        "artifactregistry.projects.locations.repositories.get",
        &seen[0],
    );
    check(
        ar,
        "artifactregistry.projects.locations.repositories.create",
        &seen[1],
    );
    assert_eq!(
        seen[1].uri,
        "/v1/projects/demo-project/locations/us-central1/repositories?repositoryId=prefect"
    );
    assert_eq!(
        seen[1].json(),
        json!({"format": "DOCKER", "mode": "STANDARD_REPOSITORY",
               "description": "Prefect flow images", "labels": {"managed-by": "bootstrap"}})
    );
    check(
        ar,
        "artifactregistry.projects.locations.operations.get",
        &seen[2],
    );
    check(
        ar,
        "artifactregistry.projects.locations.repositories.getIamPolicy",
        &seen[3],
    );
    assert!(
        seen[3]
            .uri
            .ends_with(":getIamPolicy?options.requestedPolicyVersion=3"),
        "{}",
        seen[3].uri
    );
    check(
        ar,
        "artifactregistry.projects.locations.repositories.setIamPolicy",
        &seen[4],
    );
    assert_eq!(seen[4].json()["policy"]["etag"], "BwA=");
    check(
        ar,
        "artifactregistry.projects.locations.repositories.dockerImages.list",
        &seen[5],
    );
    assert!(seen[6].uri.contains("pageToken=p2"));
    check(
        ar,
        "artifactregistry.projects.locations.repositories.dockerImages.get",
        &seen[7],
    );
    check(
        ar,
        "artifactregistry.projects.locations.repositories.delete",
        &seen[8],
    );
}

#[test]
fn the_template_matcher_matches_what_it_should() {
    assert!(matches_template(
        "v1/{+name}",
        "/v1/projects/p/locations/l/operations/o"
    ));
    assert!(matches_template(
        "v2/{+parent}/builds:submit",
        "/v2/projects/p/locations/l/builds:submit"
    ));
    assert!(!matches_template(
        "v2/{+parent}/builds:submit",
        "/v2/projects/p/locations/l/builds"
    ));
    assert!(matches_template(
        "v1/projects/{projectId}/builds/{id}",
        "/v1/projects/p/builds/b"
    ));
    assert!(!matches_template(
        "v1/projects/{projectId}/builds/{id}",
        "/v1/projects/p/x/builds/b"
    ));
}
