//! Images built from a folder (`build:`): which builds the plan has, what is live for them
//! (observe), and carrying out one build (apply).
//!
//! One build per distinct (context, Dockerfile, repository): deployments that share a folder
//! share one image, named after the first of them in plan order. The tag is the context
//! digest, so "an image with this tag is in the repository" is "this source was built" and
//! needs no state file. Which files changed since the last build cannot be told from the
//! registry (an image's tag list carries no file manifest), so the plan says "source changed"
//! and how many files the new source has.
//!
//! The path: Cloud Run v2's `:uploadSource` + `builds:submit`, then the Cloud Build operation
//! (see `bootstrap_gcp::run_builds` for why this and not Cloud Build + Cloud Storage).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bootstrap_gcp::cloudbuild::{self, BuildEnd};
use bootstrap_gcp::operations::PollBackoff;
use bootstrap_gcp::{GcpError, artifactregistry, logging, resourcemanager, run_builds};
use bootstrap_spec::build::Build;
use bootstrap_spec::context::{self, EntrySource};
use bootstrap_spec::ids::{ProjectId, Region};
use bootstrap_spec::{Deployment, Spec};

use super::context::Context;
use super::observed;
use super::planner::prefect::deployment_key;

/// The role the job's service account gets on the repository (pull images; nothing else).
pub const READER_ROLE: &str = "roles/artifactregistry.reader";

/// The role the build's account gets on the repository: push the built image (Cloud Build
/// pushes as the account the build runs as; without it the build ends PUSH_NOT_AUTHORIZED),
/// on the repository only.
pub const WRITER_ROLE: &str = "roles/artifactregistry.writer";

/// APIs a plan with `build:` needs on top of the others.
pub const BUILD_APIS: &[&str] = &[
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    // A failed build's log is read from Cloud Logging (on by default in new projects).
    "logging.googleapis.com",
];

/// How long one build may take before `apply` gives up on it (Cloud Build's default build
/// timeout is 10 minutes; queueing comes on top).
pub const BUILD_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// One image to build, and the deployments that run it.
#[derive(Debug, Clone)]
pub struct Unit {
    pub build: Build,
    /// Keys (`flow/name`) of the deployments using this image.
    pub deployments: Vec<String>,
}

/// The plan's builds, one per distinct (context, Dockerfile, repository), in plan order.
pub fn units(spec: &Spec) -> Vec<Unit> {
    let mut out: Vec<Unit> = Vec::new();
    for d in &spec.deployments {
        let Some(b) = &d.build else { continue };
        let key = deployment_key(d);
        match out.iter_mut().find(|u| same_source(&u.build, b)) {
            Some(u) => u.deployments.push(key),
            None => out.push(Unit {
                build: b.clone(),
                deployments: vec![key],
            }),
        }
    }
    if let Some(b) = super::worker_image::build(spec) {
        out.push(Unit {
            build: b.clone(),
            deployments: Vec::new(),
        });
    }
    out
}

fn same_source(a: &Build, b: &Build) -> bool {
    a.context == b.context && a.dockerfile == b.dockerfile && a.repository == b.repository
}

/// Whether the plan builds anything.
pub fn any(spec: &Spec) -> bool {
    spec.deployments
        .iter()
        .any(|d: &Deployment| d.build.is_some())
        || super::worker_image::build(spec).is_some()
}

/// Reads the sources (hashing on blocking threads) and, per repository, the repository, its
/// policy and its docker images.
pub async fn observe(
    ctx: &Context,
    spec: &Spec,
) -> Result<(
    Vec<observed::BuiltImage>,
    BTreeMap<String, Option<observed::Repository>>,
)> {
    for note in spec
        .deployments
        .iter()
        .filter_map(|d| d.build.as_ref())
        .flat_map(|b| &b.notes)
        .collect::<BTreeSet<_>>()
    {
        tracing::warn!("{note}");
    }
    let units = units(spec);
    if units.is_empty() {
        return Ok((Vec::new(), BTreeMap::new()));
    }
    let repos: BTreeSet<String> = units.iter().map(|u| u.build.repository.clone()).collect();
    let reads = repos.iter().map(|r| async move {
        let repo = read_repository(ctx, spec, r).await?;
        Ok::<_, anyhow::Error>((r.clone(), repo))
    });
    let hashes = units.iter().map(|u| {
        let b = u.build.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                // Timed for the benchmark (issue #18: hashing must stay well under a second).
                let t = std::time::Instant::now();
                let c = context::read(&b);
                if let Ok(c) = &c {
                    tracing::debug!(
                        files = c.file_count(),
                        elapsed_ms = t.elapsed().as_millis() as u64,
                        "build context hashed"
                    );
                }
                c
            })
            .await
            .context("hashing a build context")?
            .map_err(|e| {
                let hint = e.hint();
                anyhow::Error::new(e).context(hint)
            })
        }
    });
    let (repos, hashes, account) = tokio::try_join!(
        futures::future::try_join_all(reads),
        futures::future::try_join_all(hashes),
        build_account(ctx, spec),
    )?;
    let mut images_by_repo = BTreeMap::new();
    let mut repositories = BTreeMap::new();
    for (name, r) in repos {
        let (repo, images) = match r {
            Some((repo, images)) => (Some(repo), images),
            None => (None, Vec::new()),
        };
        repositories.insert(name.clone(), repo);
        images_by_repo.insert(name, images);
    }
    let built = units
        .into_iter()
        .zip(hashes)
        .map(|(u, c)| {
            let images = images_by_repo
                .get(&u.build.repository)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let tag = c.tag();
            let present =
                artifactregistry::find_tagged(images, &u.build.image_name, &tag).is_some();
            // The newest image of this name: what the deployments ran before this source.
            let previous_tag = images
                .iter()
                .filter(|i| i.image_name() == u.build.image_name)
                .max_by(|a, b| a.upload_time.cmp(&b.upload_time))
                .and_then(|i| {
                    i.tags
                        .iter()
                        .find(|t| super::worker_image::is_source_tag(&u.build, t))
                        .cloned()
                });
            observed::BuiltImage {
                build: u.build,
                deployments: u.deployments,
                digest: c.digest.clone(),
                tag,
                files: c.file_count(),
                present,
                previous_tag,
                build_account: account.clone(),
            }
        })
        .collect();
    Ok((built, repositories))
}

/// The account the builds run as: Cloud Build's default account of the project, read as
/// gcloud reads it before a source deploy (`cloudbuild::get_default_service_account`); apply
/// checks it again before submitting (see [`check_build_account`]). While Cloud Build is not enabled yet (a first plan; apply enables it before
/// building) the default cannot be read: it is then the Compute Engine default account, Cloud
/// Build's default for projects made since 2024 ("Cloud Build service account",
/// cloud.google.com/build/docs/cloud-build-service-account-updates); a project still on the
/// legacy `N@cloudbuild.gserviceaccount.com` is told so by that check, and the next plan
/// grants the right account.
async fn build_account(ctx: &Context, spec: &Spec) -> Result<String> {
    let (project, region) = (&spec.gcp.project, &spec.gcp.region);
    match cloudbuild::get_default_service_account(&ctx.gcp, project, region).await {
        Ok(Some(email)) => Ok(email),
        Ok(None) => bail!(
            "Cloud Build has no default service account in project {project} ({region}), so \
             a build cannot push its image; give the project one (gcloud builds \
             set-default-service-account) and plan again"
        ),
        Err(GcpError::ServiceDisabled { .. }) => {
            let number = resourcemanager::get_project(&ctx.gcp, project)
                .await
                .with_context(|| {
                    format!("reading project {project} (its number names the build account)")
                })?
                .and_then(|p| p.project_number)
                .with_context(|| format!("project {project} has no project number"))?;
            Ok(format!("{number}-compute@developer.gserviceaccount.com"))
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context("reading the Cloud Build default service account (the build's identity)")),
    }
}

type RepoRead = Option<(observed::Repository, Vec<artifactregistry::DockerImage>)>;

async fn read_repository(ctx: &Context, spec: &Spec, name: &str) -> Result<RepoRead> {
    let (project, region) = (&spec.gcp.project, &spec.gcp.region);
    let repo = match artifactregistry::get_repository(&ctx.gcp, project, region, name).await {
        Err(GcpError::ServiceDisabled { .. }) => None,
        other => other.with_context(|| format!("reading Artifact Registry repository {name}"))?,
    };
    let Some(repo) = repo else { return Ok(None) };
    let (policy, images) = tokio::try_join!(
        async {
            artifactregistry::get_iam_policy(&ctx.gcp, project, region, name)
                .await
                .with_context(|| format!("reading the IAM policy of repository {name}"))
        },
        async {
            artifactregistry::list_docker_images(&ctx.gcp, project, region, name)
                .await
                .with_context(|| format!("listing the images of repository {name}"))
        },
    )?;
    let members = |role: &str| {
        policy
            .bindings
            .iter()
            .filter(|b| b.condition.is_none() && b.role == role)
            .flat_map(|b| b.members.iter().cloned())
            .collect()
    };
    Ok(Some((
        observed::Repository {
            format: repo.format.clone(),
            labels: repo.labels.clone(),
            readers: members(READER_ROLE),
            writers: members(WRITER_ROLE),
        },
        images,
    )))
}

/// The `.tar.gz` of a context's entries, as `gcloud run deploy --source` uploads it (files
/// and links with their modes; owner and times zeroed so equal sources give equal archives).
pub fn archive(entries: &[context::Entry]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match &e.source {
            EntrySource::File(path) => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, &e.path, bytes.as_slice())?;
            }
            EntrySource::Text(text) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(text.len() as u64);
                tar.append_data(&mut header, &e.path, text.as_bytes())?;
            }
            EntrySource::Link(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &e.path, target)?;
            }
        }
    }
    let gz = tar.into_inner()?;
    let mut bytes = gz.finish()?;
    bytes.flush()?;
    Ok(bytes)
}

/// Builds `image` (`<name>:<tag>`) from `build`, checking first that the source is still the
/// one planned (`digest`): a plan is carried out as shown, or not at all.
pub async fn run(
    ctx: &Context,
    at: (&ProjectId, &Region),
    build: &Build,
    image: &str,
    digest: &str,
    service_account: Option<&str>,
) -> Result<()> {
    let (project, region) = at;
    let b = build.clone();
    let source = tokio::task::spawn_blocking(move || -> Result<(String, usize, Vec<u8>)> {
        let c = context::read(&b)?;
        let bytes = archive(&c.entries)?;
        let files = c.file_count();
        Ok((c.digest, files, bytes))
    })
    .await
    .context("packing the build context")??;
    let (now, files, bytes) = source;
    if now != digest {
        bail!(
            "the source in {} changed since the plan was made; run `bootstrap plan` again",
            build.context.display()
        );
    }
    if let Some(planned) = service_account {
        check_build_account(ctx, at, planned).await?;
    }
    let started = Instant::now();
    let size = bytes.len();
    let src = run_builds::upload_source(&ctx.gcp, project, region, bytes)
        .await
        .with_context(|| {
            format!(
                "uploading {} ({files} files, {size} bytes)",
                build.context_shown
            )
        })?;
    let mut attempt = 1;
    loop {
        let end = submit_and_follow(ctx, at, &src, image, started).await?;
        match end {
            BuildEnd::Finished(b) if b.succeeded() => return Ok(()),
            // Push rights granted moments ago (this apply's own grant step) take a while to
            // reach Artifact Registry: IAM changes "typically" apply within 2 minutes, up to
            // 7 (cloud.google.com/iam/docs/access-change-propagation). The build is cheap to
            // repeat from the uploaded source; a lasting denial still ends as the error.
            BuildEnd::Finished(b) if push_denied(&b) && attempt < PUSH_ATTEMPTS => {
                let wait = push_retry_delay(attempt);
                eprintln!(
                    "  building {image}: the push was not yet authorized (a new grant propagates); \
                     building again in {}s (attempt {} of {PUSH_ATTEMPTS})",
                    wait.as_secs(),
                    attempt + 1
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            BuildEnd::Finished(b) => {
                let tail = log_tail(ctx, project, &b).await;
                return Err(failure(image, &b, &tail));
            }
            BuildEnd::TimedOut { last, waited } => {
                let link = last
                    .as_ref()
                    .and_then(|b| b.log_url.clone())
                    .unwrap_or_else(|| "(no link)".into());
                bail!(
                    "the build of {image} did not finish within {}s; it may still finish on its own \
                     (logs: {link}); run `bootstrap apply` again, which does not build twice once the image exists",
                    waited.as_secs()
                )
            }
        }
    }
}

/// How many times a build denied its push is submitted in all.
const PUSH_ATTEMPTS: u32 = 4;

/// Whether the build failed only because its account may not push (yet).
fn push_denied(b: &cloudbuild::Build) -> bool {
    b.failure_info.as_ref().and_then(|f| f.kind.as_deref()) == Some("PUSH_NOT_AUTHORIZED")
}

/// 10 s, 20 s, 40 s (so about 70 s in all, within IAM's usual 2 minutes), each with up to
/// 25 % jitter so that parallel applies do not resubmit in step.
fn push_retry_delay(attempt: u32) -> Duration {
    use rand::Rng as _;
    let base = 10u64 << (attempt - 1).min(4);
    let jitter = rand::rng().random_range(0..=base * 250);
    Duration::from_millis(base * 1000 + jitter)
}

/// One `builds:submit` of the uploaded source, followed to its end with a progress line.
async fn submit_and_follow(
    ctx: &Context,
    (project, region): (&ProjectId, &Region),
    src: &run_builds::StorageSource,
    image: &str,
    started: Instant,
) -> Result<BuildEnd> {
    let submitted = run_builds::submit_docker_build(
        &ctx.gcp,
        project,
        region,
        src,
        image,
        &["bootstrap".to_owned()],
        // The build runs as Cloud Build's default account, checked before to be the planned
        // one. Naming it would also do, but would need `iam.serviceAccounts.actAs` on it
        // for the caller, which the guide's operator need not hold.
        None,
    )
    .await
    .with_context(|| format!("submitting the build of {image}"))?;
    if let Some(w) = &submitted.base_image_warning {
        tracing::warn!("{w}");
    }
    let mut last_status = String::new();
    let mut last_line = Instant::now();
    cloudbuild::wait_build(
        &ctx.gcp,
        &submitted.build_operation,
        BUILD_DEADLINE,
        PollBackoff {
            initial: Duration::from_secs(1),
            factor: 1.5,
            max: Duration::from_secs(5),
        },
        |b| {
            // A progress line when the status changes, and every 30 s while it does not.
            if b.status != last_status || last_line.elapsed() >= Duration::from_secs(30) {
                let logs = b
                    .log_url
                    .as_deref()
                    .map(|u| format!("; logs: {u}"))
                    .unwrap_or_default();
                eprintln!(
                    "  building {image}: {} ({}s){logs}",
                    b.status,
                    started.elapsed().as_secs()
                );
                last_status = b.status.clone();
                last_line = Instant::now();
            }
        },
    )
    .await
    .with_context(|| format!("following the build of {image}"))
}

/// That Cloud Build's default account is still the one the plan granted push rights to (the
/// plan may have had to assume it while Cloud Build was not enabled, see [`build_account`]).
async fn check_build_account(
    ctx: &Context,
    (project, region): (&ProjectId, &Region),
    planned: &str,
) -> Result<()> {
    let now = cloudbuild::get_default_service_account(&ctx.gcp, project, region)
        .await
        .context("reading the Cloud Build default service account (the build's identity)")?;
    match now.as_deref() {
        Some(a) if a == planned => Ok(()),
        Some(a) => bail!(
            "builds in project {project} run as {a}, but the plan granted push rights to \
             {planned} (Cloud Build was not enabled when it was made); run `bootstrap apply` \
             again, whose plan grants {a}"
        ),
        None => bail!(
            "Cloud Build has no default service account in project {project} ({region}); \
             give the project one (gcloud builds set-default-service-account) and apply again"
        ),
    }
}

/// How many of a failed build's last log lines `apply` shows.
const TAIL_LINES: u32 = 20;

/// The last lines of a build's log, from Cloud Logging (where Cloud Build writes it, see
/// `cloudbuild::log_filter`); reading them needs `logging.logEntries.list` on the project. A
/// read that fails says why in place of the lines: the build's failure is the error, not this.
async fn log_tail(ctx: &Context, project: &ProjectId, b: &cloudbuild::Build) -> Vec<String> {
    if b.id.is_empty() {
        return Vec::new();
    }
    let filter = cloudbuild::log_filter(&b.id);
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        logging::list_entries(&ctx.gcp, project, &filter, true, TAIL_LINES, None),
    )
    .await;
    match read {
        Ok(Ok((mut lines, _))) => {
            lines.reverse();
            lines.into_iter().map(|l| l.text).collect()
        }
        Ok(Err(e)) => vec![format!(
            "(the build log could not be read from Cloud Logging: {e})"
        )],
        Err(_) => vec!["(the build log could not be read from Cloud Logging within 30 s)".into()],
    }
}

/// The error of a failed build: its status, Google's detail, the log's last lines, and where
/// the whole log is.
fn failure(image: &str, b: &cloudbuild::Build, tail: &[String]) -> anyhow::Error {
    let detail = b
        .failure_info
        .as_ref()
        .and_then(|f| f.detail.clone())
        .or_else(|| b.status_detail.clone())
        .unwrap_or_default();
    let link = b.log_url.as_deref().unwrap_or("(no link)");
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!(
            "\n  last lines of the build log:\n{}",
            tail.iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    anyhow::anyhow!(
        "the build of {image} ended {}{}{tail}\n  logs: {link}\n  the deployments keep the image they had",
        b.status,
        if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn archive_round_trips_and_is_reproducible() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("proj");
        std::fs::create_dir_all(dir.join("flows")).unwrap();
        std::fs::write(dir.join("flows/a.py"), "print('hi')\n").unwrap();
        let build = Build {
            context: std::fs::canonicalize(&dir).unwrap(),
            context_shown: ".".into(),
            dockerfile: bootstrap_spec::build::DockerfileSpec::Auto,
            repository: "prefect".into(),
            image_name: "us-central1-docker.pkg.dev/p/prefect/d".into(),
            workdir: "/opt/prefect/proj".into(),
            notes: Vec::new(),
        };
        let c = context::read(&build).unwrap();
        let one = archive(&c.entries).unwrap();
        assert_eq!(one, archive(&c.entries).unwrap());
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(one.as_slice()));
        let mut seen = Vec::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            seen.push((path, text));
        }
        assert_eq!(seen[0].0, "Dockerfile");
        assert!(seen[0].1.contains("WORKDIR /opt/prefect/proj/"));
        assert_eq!(seen[1], ("flows/a.py".into(), "print('hi')\n".into()));
    }

    #[test]
    fn push_retries_are_bounded_and_jittered() {
        for attempt in 1..PUSH_ATTEMPTS {
            let d = push_retry_delay(attempt).as_millis() as u64;
            let base = 10_000u64 << (attempt - 1);
            assert!((base..=base * 5 / 4).contains(&d), "{attempt}: {d}");
        }
        let denied: cloudbuild::Build = serde_json::from_value(serde_json::json!({
            "id": "b", "status": "FAILURE", "failureInfo": {"type": "PUSH_NOT_AUTHORIZED"}
        }))
        .unwrap();
        assert!(push_denied(&denied));
        let step: cloudbuild::Build = serde_json::from_value(serde_json::json!({
            "id": "b", "status": "FAILURE", "failureInfo": {"type": "USER_BUILD_STEP"}
        }))
        .unwrap();
        assert!(!push_denied(&step));
    }

    #[test]
    fn failure_names_status_detail_and_link() {
        let b: cloudbuild::Build = serde_json::from_value(serde_json::json!({
            "id": "b", "status": "FAILURE", "logUrl": "https://console.cloud.google.com/cloud-build/builds/b",
            "failureInfo": {"type": "USER_BUILD_STEP", "detail": "step 1: RUN uv pip install exited 1"}
        }))
        .unwrap();
        let e = failure(
            "img:src-1",
            &b,
            &["ERROR: No matching distribution found for nope==9".into()],
        )
        .to_string();
        assert!(
            e.contains("last lines of the build log:\n    ERROR: No matching distribution"),
            "{e}"
        );
        // What `apply` prints for it, whole.
        insta::assert_snapshot!("build_failure", e);
        assert!(
            e.contains("ended FAILURE: step 1: RUN uv pip install exited 1"),
            "{e}"
        );
        assert!(
            e.contains("logs: https://console.cloud.google.com/cloud-build/builds/b"),
            "{e}"
        );
    }
}
