//! The sandbox's builder: unpacks the uploaded archive, follows its Dockerfile into an image
//! root under `<dir>/builds/images/<digest>/rootfs`, installs `RUN pip install` requirements
//! into an environment shared by builds with the same requirements
//! (`<dir>/builds/envs/<hash>`), and pushes the result to the sandbox's Artifact Registry.
//!
//! The digest is sha256 over the context's files (paths and contents, sorted), Dockerfile
//! included, so the same source gives the same digest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::BuildRec;
use super::dockerfile::{self, Instruction};
use crate::artifacts::ImageUri;
use crate::executor::BuiltImage;
use crate::operations::{self, Outcome};
use crate::state::AppState;

/// Cloud Build's default build timeout.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How many of pip's last lines a failure repeats.
const TAIL: usize = 20;
/// Builds run one at a time (2-core machines; pip environments are shared by hash).
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why a build failed: Cloud Build's `FailureInfo.type` and the log lines saying why.
struct Failure {
    kind: &'static str,
    lines: Vec<String>,
}

fn step_failure(lines: Vec<String>) -> Failure {
    Failure {
        kind: "USER_BUILD_STEP",
        lines,
    }
}

/// Starts the build in the background.
pub fn spawn(state: AppState, id: String) {
    tokio::spawn(async move {
        let _guard = BUILD_LOCK.lock().await;
        update(&state, &id, |b| {
            b.status = "WORKING".into();
            b.start_time = Some(Utc::now());
        });
        let outcome = tokio::time::timeout(BUILD_TIMEOUT, run(&state, &id)).await;
        let result = match outcome {
            Ok(r) => r,
            Err(_) => Err(Failure {
                kind: "USER_BUILD_STEP",
                lines: vec!["ERROR: context deadline exceeded (the build's 600s timeout)".into()],
            }),
        };
        finish(&state, &id, result);
    });
}

fn update(state: &AppState, id: &str, change: impl FnOnce(&mut BuildRec)) {
    let (op, metadata) = {
        let mut data = state.write();
        let Some(b) = data.builds.builds.get_mut(id) else {
            return;
        };
        change(b);
        (b.operation.clone(), b.metadata())
    };
    operations::set_metadata(state, &op, metadata);
}

/// One line of the build's log: kept in the record (`/_sandbox/builds/{id}`) and written to
/// Cloud Logging as Cloud Build writes it: log `cloudbuild`, resource type `build` with labels
/// `build_id`, `build_trigger_id` and `project_id` ("Viewing build results",
/// cloud.google.com/build/docs/view-build-results; the `build` type in the monitored resource
/// list), so `resource.type="build" AND resource.labels.build_id="ID"` finds it.
fn log(state: &AppState, id: &str, line: impl Into<String>) {
    let line = line.into();
    let project = {
        let mut data = state.write();
        let Some(b) = data.builds.builds.get_mut(id) else {
            return;
        };
        b.log.push(line.clone());
        b.project.clone()
    };
    let severity = if line.starts_with("ERROR") {
        crate::logging::Severity::Error
    } else {
        crate::logging::Severity::Info
    };
    state.logging.append(crate::logging::LogEntry::text(
        &project,
        "cloudbuild",
        crate::logging::Resource::new(
            "build",
            [
                ("build_id", id),
                ("build_trigger_id", ""),
                ("project_id", project.as_str()),
            ],
        ),
        severity,
        line,
    ));
}

fn finish(state: &AppState, id: &str, result: Result<String, Failure>) {
    let kind = state
        .read()
        .builds
        .builds
        .get(id)
        .map(|b| b.kind.clone())
        .unwrap_or_default();
    // The log lines first (record and Cloud Logging alike), then the status.
    let failure = match &result {
        Ok(_) => {
            log(state, id, "DONE");
            None
        }
        Err(f) => {
            for line in &f.lines {
                log(state, id, line.clone());
            }
            let detail = match f.kind {
                "USER_BUILD_STEP" => format!(
                    "Build step failure: build step 0 \"{}\" failed: step exited with non-zero status: 1",
                    if kind == "docker" {
                        "gcr.io/cloud-builders/docker"
                    } else {
                        "gcr.io/k8s-skaffold/pack"
                    }
                ),
                _ => f.lines.last().cloned().unwrap_or_default(),
            };
            log(state, id, format!("ERROR: {detail}"));
            Some((f.kind.to_owned(), detail))
        }
    };
    let mut op = String::new();
    let mut build = Value::Null;
    update(state, id, |b| {
        b.finish_time = Some(Utc::now());
        match (&result, failure) {
            (Ok(digest), _) => {
                b.status = "SUCCESS".into();
                b.digest = Some(digest.clone());
            }
            (Err(_), failure) => {
                b.status = "FAILURE".into();
                b.failure = failure;
            }
        }
        op = b.operation.clone();
        build = b.to_json();
    });
    let outcome = if result.is_ok() {
        build["@type"] = json!(super::BUILD_TYPE);
        Outcome::Response(build)
    } else {
        // What Cloud Build's operation says for a failed build; the reason is in its log.
        Outcome::Error(json!({"code": 2, "message": "Build failed; check build logs for details"}))
    };
    operations::finish(state, &op, outcome);
}

async fn run(state: &AppState, id: &str) -> Result<String, Failure> {
    let Some(rec) = state.read().builds.builds.get(id).cloned() else {
        return Err(step_failure(vec!["build record vanished".into()]));
    };
    let uri = ImageUri::parse(&rec.image_uri).map_err(|e| step_failure(vec![e]))?;
    let key = format!(
        "{}/{}",
        rec.source["bucket"].as_str().unwrap_or_default(),
        rec.source["object"].as_str().unwrap_or_default()
    );
    let upload = state.read().builds.uploads.get(&key).cloned();
    let Some(upload) = upload.filter(|u| {
        rec.source
            .get("generation")
            .and_then(Value::as_str)
            .is_none_or(|g| g == u.generation)
    }) else {
        return Err(Failure {
            kind: "FETCH_SOURCE_FAILED",
            lines: vec![format!(
                "failed to fetch source gs://{key}: storage: object doesn't exist"
            )],
        });
    };
    log(
        state,
        id,
        format!("Fetching storage object: gs://{key}#{}", upload.generation),
    );
    let work = state.dir.join("builds").join("work").join(id);
    let archive = upload.path.clone();
    let context = work.join("context");
    let unpacked = {
        let context = context.clone();
        tokio::task::spawn_blocking(move || unpack(&archive, &context))
            .await
            .map_err(|e| step_failure(vec![format!("unpacking failed: {e}")]))?
    };
    unpacked.map_err(|e| Failure {
        kind: "FETCH_SOURCE_FAILED",
        lines: vec![format!("failed to unpack the source archive: {e}")],
    })?;
    let result = follow(state, id, &rec, &uri, &context).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Unpacks a `.tar.gz` or `.zip` archive into `dest` (entries outside `dest` are refused by
/// both crates).
fn unpack(archive: &Path, dest: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(archive).map_err(|e| e.to_string())?;
    let n = file.read(&mut head).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(archive).map_err(|e| e.to_string())?;
    if n == 4 && head == *b"PK\x03\x04" {
        let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a zip archive: {e}"))?;
        zip.extract(dest).map_err(|e| e.to_string())
    } else if n >= 2 && head[..2] == [0x1f, 0x8b] {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        tar.set_preserve_permissions(true);
        tar.unpack(dest)
            .map_err(|e| format!("not a gzipped tar archive: {e}"))
    } else {
        Err("the object is neither a gzipped tar archive nor a zip archive".into())
    }
}

/// Every regular file under `root`, relative, sorted.
fn files_of(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push(
                    entry
                        .path()
                        .strip_prefix(root)
                        .unwrap_or(&entry.path())
                        .to_path_buf(),
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// sha256 over (path, length, content) of every file, sorted: the image digest.
fn context_digest(root: &Path) -> std::io::Result<(String, u64)> {
    let mut hash = Sha256::new();
    let mut size = 0u64;
    for rel in files_of(root)? {
        let bytes = std::fs::read(root.join(&rel))?;
        hash.update(rel.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(&bytes);
        size += bytes.len() as u64;
    }
    Ok((format!("sha256:{:x}", hash.finalize()), size))
}

/// Where a container path is in the image root.
fn in_root(rootfs: &Path, container: &str) -> PathBuf {
    let mut p = rootfs.to_path_buf();
    for c in Path::new(container).components() {
        match c {
            Component::Normal(n) => p.push(n),
            Component::ParentDir if p != rootfs => {
                p.pop();
            }
            _ => {}
        }
    }
    p
}

/// A container path made absolute against the working directory.
fn absolute(workdir: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{path}", workdir.trim_end_matches('/'))
    }
}

fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dest)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(src, dest).map(|_| ())
    }
}

/// A pip step as it will run: working directory and arguments with files mapped into the root.
#[derive(Clone)]
struct PipStep {
    cwd: PathBuf,
    args: Vec<String>,
    /// What the step depends on, for the environment's hash.
    fingerprint: String,
}

fn unsupported(ins: &Instruction, why: &str) -> Failure {
    step_failure(vec![
        format!("Step: {}", ins.text),
        format!(
            "ERROR: Dockerfile line {}: {} ({why}). The sandbox builder follows FROM, WORKDIR, COPY, ADD of context files, ENV, ARG, LABEL, EXPOSE, USER, RUN pip install / uv pip install, RUN apt-get install ca-certificates and CMD/ENTRYPOINT only.",
            ins.line, ins.text
        ),
    ])
}

async fn follow(
    state: &AppState,
    id: &str,
    rec: &BuildRec,
    uri: &ImageUri,
    context: &Path,
) -> Result<String, Failure> {
    if rec.kind != "docker" {
        return Err(step_failure(vec![
            "ERROR: the sandbox builder follows Dockerfiles only; buildpack builds are not modelled. Submit a dockerBuild with a Dockerfile in the source.".into(),
        ]));
    }
    let dockerfile_path = context.join("Dockerfile");
    let text = std::fs::read_to_string(&dockerfile_path).map_err(|_| {
        step_failure(vec![
            "unable to prepare context: unable to evaluate symlinks in Dockerfile path: lstat /workspace/Dockerfile: no such file or directory".into(),
        ])
    })?;
    let instructions = dockerfile::parse(&text).map_err(|e| step_failure(vec![e]))?;
    let (digest, size) = context_digest(context)
        .map_err(|e| step_failure(vec![format!("reading the context: {e}")]))?;
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let images_dir = state.dir.join("builds").join("images");
    let image_dir = images_dir.join(&hex);
    let staging = images_dir.join(format!("{hex}.{id}"));
    let rootfs = staging.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| step_failure(vec![format!("{e}")]))?;

    let table = state.run.executor().config().images.clone();
    let mut base: Option<String> = None;
    let mut workdir = "/".to_owned();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut entrypoint: Option<Vec<String>> = None;
    let mut cmd: Option<Vec<String>> = None;
    let mut pips: Vec<PipStep> = Vec::new();
    let total = instructions.len();
    for (n, ins) in instructions.iter().enumerate() {
        log(state, id, format!("Step {}/{total} : {}", n + 1, ins.text));
        let mut vars = args.clone();
        vars.extend(env.clone());
        let value = dockerfile::substitute(&ins.args, &vars);
        if base.is_none() && !matches!(ins.keyword.as_str(), "FROM" | "ARG") {
            return Err(unsupported(ins, "the first instruction must be FROM"));
        }
        match ins.keyword.as_str() {
            "FROM" => {
                if base.is_some() {
                    return Err(unsupported(ins, "multi-stage builds are not followed"));
                }
                let image = value
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if value.split_whitespace().nth(1).is_some() {
                    return Err(unsupported(
                        ins,
                        "FROM ... AS / --platform are not followed",
                    ));
                }
                if table.rule_for(&image).is_none() {
                    return Err(step_failure(vec![format!(
                        "ERROR: Dockerfile line {}: pull access denied for {image}, repository does not exist or may require 'docker login' (no image rule of the sandbox maps it)",
                        ins.line
                    )]));
                }
                log(
                    state,
                    id,
                    format!(" ---> {image}: the sandbox's local programs for this image"),
                );
                base = Some(image);
            }
            "ARG" => {
                let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                args.entry(k.trim().to_owned())
                    .or_insert_with(|| v.trim().to_owned());
            }
            "ENV" => {
                for (k, v) in env_pairs(&value).map_err(|why| unsupported(ins, &why))? {
                    env.insert(k, v);
                }
            }
            "WORKDIR" => {
                workdir = absolute(&workdir, value.trim());
                std::fs::create_dir_all(in_root(&rootfs, &workdir))
                    .map_err(|e| step_failure(vec![e.to_string()]))?;
            }
            "COPY" | "ADD" => copy(ins, &value, context, &rootfs, &workdir)?,
            "RUN"
                if dockerfile::apt_install(&value)
                    .map_err(|why| unsupported(ins, &why))?
                    .is_some() =>
            {
                let packages = dockerfile::apt_install(&value)
                    .map_err(|why| unsupported(ins, &why))?
                    .unwrap_or_default();
                apt(state, id, ins, &packages)?;
            }
            "RUN" => {
                let pip = dockerfile::pip_install(&value)
                    .map_err(|why| unsupported(ins, &why))?
                    .ok_or_else(|| {
                        unsupported(
                            ins,
                            "only RUN pip install (or uv pip install) can be followed",
                        )
                    })?;
                let cwd = in_root(&rootfs, &workdir);
                let mut pip_args = Vec::new();
                let mut fingerprint = String::new();
                for file in &pip.requirement_files {
                    let host = in_root(&rootfs, &absolute(&workdir, file));
                    let content = std::fs::read_to_string(&host).map_err(|_| {
                        step_failure(vec![format!(
                            "ERROR: Could not open requirements file: [Errno 2] No such file or directory: '{file}'"
                        ), format!("ERROR: Dockerfile line {}: {} returned a non-zero code: 1", ins.line, ins.text)])
                    })?;
                    fingerprint.push_str(&content);
                    pip_args.push("-r".to_owned());
                    pip_args.push(host.display().to_string());
                }
                fingerprint.push_str(&pip.args.join("\u{0}"));
                pip_args.extend(pip.args.clone());
                pips.push(PipStep {
                    cwd,
                    args: pip_args,
                    fingerprint: format!("{}\n{fingerprint}", ins.line),
                });
            }
            "CMD" => {
                cmd = Some(command_form(&value));
            }
            "ENTRYPOINT" => {
                entrypoint = Some(command_form(&value));
            }
            "LABEL" | "EXPOSE" | "USER" | "STOPSIGNAL" | "HEALTHCHECK" | "VOLUME"
            | "MAINTAINER" => {
                log(
                    state,
                    id,
                    format!(" ---> {} has no effect on a sandbox process", ins.keyword),
                );
            }
            _ => return Err(unsupported(ins, "this instruction is not followed")),
        }
    }
    let Some(base) = base else {
        return Err(step_failure(vec![
            "ERROR: the Dockerfile has no FROM".into(),
        ]));
    };
    let bin = if pips.is_empty() {
        None
    } else {
        Some(install(state, id, &table.placeholders().venv, &pips).await?)
    };
    // Content-addressed: an image root already made from the same digest is the same.
    if image_dir.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    } else {
        std::fs::rename(&staging, &image_dir).map_err(|e| step_failure(vec![e.to_string()]))?;
    }
    let built = BuiltImage {
        base,
        workdir: in_root(&image_dir.join("rootfs"), &workdir),
        container_workdir: Some(workdir.clone()),
        env,
        entrypoint,
        cmd,
        bin,
        rootfs: Some(image_dir.join("rootfs")),
    };
    log(state, id, format!("Successfully built {}", &hex[..12]));
    push(state, id, rec, uri, &digest, size, built)
}

fn push(
    state: &AppState,
    id: &str,
    rec: &BuildRec,
    uri: &ImageUri,
    digest: &str,
    size: u64,
    built: BuiltImage,
) -> Result<String, Failure> {
    log(state, id, "PUSH");
    log(state, id, format!("Pushing {}", rec.image_uri));
    let repo_name = uri.repository_name();
    let caller = crate::auth::Caller {
        email: rec.service_account.clone(),
    };
    let exists = state.read().artifacts.repositories.contains_key(&repo_name);
    if !exists {
        return Err(Failure {
            kind: "PUSH_FAILED",
            lines: vec![format!(
                "name unknown: Repository \"{}\" not found",
                uri.repository
            )],
        });
    }
    if !crate::artifacts::holds_on_repo(
        state,
        &caller,
        &repo_name,
        "artifactregistry.repositories.uploadArtifacts",
    ) {
        return Err(Failure {
            kind: "PUSH_NOT_AUTHORIZED",
            lines: vec![format!(
                "denied: Permission \"artifactregistry.repositories.uploadArtifacts\" denied on resource \"{repo_name}\" (or it may not exist) for {}",
                rec.service_account
            )],
        });
    }
    let start = rec.start_time.unwrap_or_else(Utc::now);
    crate::artifacts::push_image(state, uri, digest, size, start, built).map_err(|e| Failure {
        kind: "PUSH_FAILED",
        lines: vec![e],
    })?;
    log(
        state,
        id,
        format!(
            "{}: digest: {digest} size: {size}",
            uri.tag.clone().unwrap_or_default()
        ),
    );
    Ok(digest.to_owned())
}

/// Follows `RUN apt-get install PACKAGES`: each package must be one whose files the
/// sandbox's processes already get from the host (see `dockerfile::HOST_PACKAGES`); any other
/// is a failed step with the line, never a silent success.
fn apt(state: &AppState, id: &str, ins: &Instruction, packages: &[String]) -> Result<(), Failure> {
    for name in packages {
        let file = dockerfile::host_package(name).map_err(|why| unsupported(ins, &why))?;
        if !Path::new(file).exists() {
            return Err(step_failure(vec![
                format!("Step: {}", ins.text),
                format!(
                    "ERROR: Dockerfile line {}: apt-get install {name}: the host has no {file} for the sandbox's processes to use (install {name} on the host)",
                    ins.line
                ),
            ]));
        }
        log(state, id, format!(" ---> {name}: the host's {file}"));
    }
    Ok(())
}

fn env_pairs(value: &str) -> Result<Vec<(String, String)>, String> {
    if !value.contains('=') {
        // Legacy `ENV KEY value with spaces`.
        let (k, v) = value
            .split_once(char::is_whitespace)
            .ok_or_else(|| "ENV needs KEY=value".to_owned())?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    let words =
        dockerfile::shell_words(value).ok_or_else(|| "ENV value uses shell syntax".to_owned())?;
    words
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{w} is not KEY=value"))
        })
        .collect()
}

fn command_form(value: &str) -> Vec<String> {
    dockerfile::exec_form(value)
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into(), value.trim().to_owned()])
}

fn copy(
    ins: &Instruction,
    value: &str,
    context: &Path,
    rootfs: &Path,
    workdir: &str,
) -> Result<(), Failure> {
    let mut words: Vec<String> = match dockerfile::exec_form(value) {
        Some(w) => w,
        None => value.split_whitespace().map(str::to_owned).collect(),
    };
    if words.iter().any(|w| w.starts_with("--from")) {
        return Err(unsupported(ins, "COPY --from needs multi-stage builds"));
    }
    words.retain(|w| !w.starts_with("--"));
    if words.len() < 2 {
        return Err(unsupported(ins, "COPY needs a source and a destination"));
    }
    let dest = words.pop().unwrap_or_default();
    let dest_abs = absolute(workdir, &dest);
    let as_dir = dest.ends_with('/') || words.len() > 1;
    for src in &words {
        if src.contains("://") {
            return Err(unsupported(ins, "ADD from a URL is not followed"));
        }
        if ins.keyword == "ADD"
            && [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"]
                .iter()
                .any(|s| src.ends_with(s))
        {
            return Err(unsupported(
                ins,
                "ADD of an archive (auto-extraction) is not followed",
            ));
        }
        if src.contains('*') || src.contains('?') {
            return Err(unsupported(
                ins,
                "wildcards in COPY sources are not followed",
            ));
        }
        let from = in_root(context, src);
        if !from.exists() {
            return Err(step_failure(vec![format!(
                "ERROR: Dockerfile line {}: COPY failed: file not found in build context or excluded by .dockerignore: stat {src}: file does not exist",
                ins.line
            )]));
        }
        let to = if from.is_dir() {
            in_root(rootfs, &dest_abs)
        } else if as_dir || in_root(rootfs, &dest_abs).is_dir() {
            in_root(rootfs, &dest_abs).join(from.file_name().unwrap_or_default())
        } else {
            in_root(rootfs, &dest_abs)
        };
        copy_tree(&from, &to).map_err(|e| step_failure(vec![format!("COPY failed: {e}")]))?;
    }
    Ok(())
}

/// Makes (or reuses) the environment for these pip steps: a virtualenv over the base venv,
/// which a `.pth` file adds to its path. (`--system-site-packages` would not do: from a
/// virtualenv's interpreter it exposes the interpreter's own site-packages, not the base
/// venv's, so prefect would be missing; the `.pth` keeps the base venv's packages visible
/// after the environment's own, which win.) Returns the environment's `bin`.
async fn install(
    state: &AppState,
    id: &str,
    base_venv: &Path,
    steps: &[PipStep],
) -> Result<PathBuf, Failure> {
    let mut hash = Sha256::new();
    hash.update(base_venv.to_string_lossy().as_bytes());
    for s in steps {
        hash.update([0]);
        hash.update(s.fingerprint.as_bytes());
    }
    let key = format!("{:x}", hash.finalize());
    let envs = state.dir.join("builds").join("envs");
    let env_dir = envs.join(&key[..32]);
    let bin = env_dir.join("bin");
    if env_dir.join(".complete").exists() {
        log(
            state,
            id,
            format!(" ---> Using cache: requirements environment {}", &key[..12]),
        );
        return Ok(bin);
    }
    let _ = std::fs::remove_dir_all(&env_dir);
    let base_python = base_venv.join("bin").join("python");
    run_logged(
        state,
        id,
        &base_python,
        &[
            "-m".into(),
            "venv".into(),
            "--without-pip".into(),
            env_dir.display().to_string(),
        ],
        &envs,
    )
    .await
    .map_err(step_failure)?;
    let base_site = purelib(&base_python)
        .await
        .map_err(|e| step_failure(vec![e]))?;
    let env_python = bin.join("python");
    let env_site = purelib(&env_python)
        .await
        .map_err(|e| step_failure(vec![e]))?;
    std::fs::write(
        Path::new(&env_site).join("_sandbox_base_image.pth"),
        format!("{base_site}\n"),
    )
    .map_err(|e| step_failure(vec![e.to_string()]))?;
    for step in steps {
        let mut args = vec![
            "-m".to_owned(),
            "pip".to_owned(),
            "install".to_owned(),
            "--disable-pip-version-check".to_owned(),
            "--no-input".to_owned(),
        ];
        args.extend(step.args.clone());
        if let Err(tail) = run_logged(state, id, &env_python, &args, &step.cwd).await {
            let _ = std::fs::remove_dir_all(&env_dir);
            let mut lines = vec!["pip's last lines:".to_owned()];
            lines.extend(tail);
            lines.push(
                "The command '/bin/sh -c pip install ...' returned a non-zero code: 1".into(),
            );
            return Err(step_failure(lines));
        }
    }
    relink_scripts(&base_venv.join("bin"), &bin, &env_python);
    let _ = std::fs::write(env_dir.join(".complete"), key);
    Ok(bin)
}

/// The base venv's console scripts (`prefect`, ...) run the base interpreter; copies in the
/// environment's `bin` run the environment's, so they see its packages too.
fn relink_scripts(base_bin: &Path, bin: &Path, python: &Path) {
    let Ok(entries) = std::fs::read_dir(base_bin) else {
        return;
    };
    let base_prefix = format!("#!{}", base_bin.display());
    for entry in entries.flatten() {
        let target = bin.join(entry.file_name());
        if target.exists() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Some((first, rest)) = text.split_once('\n') else {
            continue;
        };
        if !first.starts_with(&base_prefix) || !first.contains("python") {
            continue;
        }
        let script = format!("#!{}\n{rest}", python.display());
        if std::fs::write(&target, script).is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
        }
    }
}

async fn purelib(python: &Path) -> Result<String, String> {
    let out = tokio::process::Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .map_err(|_| format!("{} did not answer within 60 s", python.display()))?
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs a builder program, every output line into the build log; on failure the last lines.
async fn run_logged(
    state: &AppState,
    id: &str,
    program: &Path,
    args: &[String],
    cwd: &Path,
) -> Result<(), Vec<String>> {
    use tokio::io::AsyncBufReadExt;
    std::fs::create_dir_all(cwd).map_err(|e| vec![e.to_string()])?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("PIP_NO_INDEX")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| vec![format!("starting {}: {e}", program.display())])?;
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut readers = Vec::new();
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    for stream in [out, err].into_iter().flatten() {
        let state = state.clone();
        let id = id.to_owned();
        let tail = tail.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log(&state, &id, line.clone());
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.push(line);
                if t.len() > TAIL {
                    t.remove(0);
                }
            }
        }));
    }
    let status = child.wait().await.map_err(|e| vec![e.to_string()])?;
    for r in readers {
        let _ = r.await;
    }
    if status.success() {
        Ok(())
    } else {
        Err(tail.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_and_content_addressed() {
        let a = tempfile::tempdir().expect("tempdir");
        std::fs::write(a.path().join("Dockerfile"), "FROM x\n").expect("write");
        std::fs::create_dir_all(a.path().join("flows")).expect("mkdir");
        std::fs::write(a.path().join("flows/f.py"), "print(1)\n").expect("write");
        let (d1, size) = context_digest(a.path()).expect("digest");
        assert_eq!(size, 16);
        assert_eq!(d1, context_digest(a.path()).expect("digest").0);
        std::fs::write(a.path().join("flows/f.py"), "print(2)\n").expect("write");
        assert_ne!(d1, context_digest(a.path()).expect("digest").0);
        assert!(d1.starts_with("sha256:") && d1.len() == 71);
    }

    #[test]
    fn container_paths_stay_in_the_root() {
        let root = Path::new("/r");
        assert_eq!(
            in_root(root, "/opt/prefect/flows"),
            PathBuf::from("/r/opt/prefect/flows")
        );
        assert_eq!(in_root(root, "/../../etc"), PathBuf::from("/r/etc"));
        assert_eq!(absolute("/opt/x", "req.txt"), "/opt/x/req.txt");
        assert_eq!(absolute("/", "a"), "/a");
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            env_pairs("A=1 B=\"two words\"").expect("ok"),
            vec![("A".into(), "1".into()), ("B".into(), "two words".into())]
        );
        assert_eq!(
            env_pairs("A one two").expect("ok"),
            vec![("A".into(), "one two".into())]
        );
    }
}
