//! Entry points: a plan file (or text) -> a checked [`Spec`] or every problem found.

use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Diagnostics, Pos};
use crate::model::*;
use crate::node::{self, MAX_PLAN_BYTES};
use crate::reader::{Reader, Secret};
use crate::sections::{self, CrossInput, TOP_KEYS};

/// Reads and checks the plan at `path`, with templates seeing the process environment.
pub fn load(path: &Path) -> Result<Spec, Diagnostics> {
    load_with(path, &|name| std::env::var(name).ok())
}

/// [`load`] with `env` answering `{{ env.NAME }}` and gcloud's `CLOUDSDK_*` defaults.
pub fn load_with(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Spec, Diagnostics> {
    let fail = |message: String, hint: Option<String>| {
        Diagnostics(vec![
            Diagnostic::new(path, Pos::NONE, message).with_hint_opt(hint),
        ])
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        fail(
            format!("cannot read the plan file: {e}"),
            Some("pass the plan with `-f PATH`; `bootstrap init` writes a new one".into()),
        )
    })?;
    if meta.len() > MAX_PLAN_BYTES as u64 {
        return Err(fail(
            format!(
                "the file is {} bytes; a plan file may be at most {MAX_PLAN_BYTES} bytes",
                meta.len()
            ),
            Some("is this the right file?".into()),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        fail(
            format!("cannot read the plan file: {e}"),
            Some("check the path and its permissions".into()),
        )
    })?;
    load_bytes(&bytes, path, env)
}

/// Checks plan bytes (reporting where they stop being UTF-8).
pub fn load_bytes(
    bytes: &[u8],
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Spec, Diagnostics> {
    match decode(bytes) {
        Ok(text) => load_path_str(text, file, env),
        Err((pos, message)) => Err(Diagnostics(vec![
            Diagnostic::new(file, pos, message).with_hint("save the plan file as UTF-8"),
        ])),
    }
}

/// Checks plan text. `file_name` is used in messages, and its directory is where
/// `deployments_from` looks. `env` answers `{{ env.NAME }}`, so callers choose what templates
/// see (tests and the wizard pass no process environment).
pub fn load_str(
    source: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Spec, Diagnostics> {
    load_path_str(source, Path::new(file_name), env)
}

/// [`load_str`] as read by another process than this one (tests of a macOS or arm64 host).
pub fn load_str_on(
    source: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    running: crate::worker_image::Running,
) -> Result<Spec, Diagnostics> {
    load_path_str_on(source, Path::new(file_name), env, running)
}

/// UTF-8 text of `bytes`, or the position of the first byte that is not.
pub(crate) fn decode(bytes: &[u8]) -> Result<&str, (Pos, String)> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        // The valid prefix is UTF-8 by construction.
        let prefix = String::from_utf8_lossy(valid);
        let line = prefix.matches('\n').count() + 1;
        let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let pos = Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        };
        let byte = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
        (
            pos,
            format!("the file is not UTF-8 text (byte 0x{byte:02x})"),
        )
    })
}

fn load_path_str(
    source: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Spec, Diagnostics> {
    load_path_str_on(source, file, env, crate::worker_image::Running::current())
}

fn load_path_str_on(
    source: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    running: crate::worker_image::Running,
) -> Result<Spec, Diagnostics> {
    let root = node::parse(source).map_err(|e| {
        Diagnostics(vec![
            Diagnostic::new(file, e.pos, e.message).with_hint_opt(e.hint),
        ])
    })?;
    let mut r = Reader::new(file, env);
    r.running = running;
    let spec = build(&mut r, &root, file);
    match spec {
        Some(spec) if r.diags.is_empty() => Ok(spec),
        _ if r.diags.is_empty() => Err(Diagnostics(vec![Diagnostic::new(
            file,
            Pos::START,
            "internal error: the plan was rejected without a reason (please report this)",
        )])),
        _ => Err(r.diags.finish()),
    }
}

/// Sections in the order templates see them: each may refer to values of those above it.
fn build(r: &mut Reader<'_>, root: &node::Node, file: &Path) -> Option<Spec> {
    let top = r.fields(Some(root), root.pos, "", TOP_KEYS)?;
    sections::version(r, &top);
    let gcp = sections::gcp(r, &top);
    let project = r
        .vars
        .get("gcp")
        .and_then(|g| g.get("project"))
        .and_then(|p| p.as_str())
        .and_then(|p| crate::ids::ProjectId::parse(p).ok());
    let service_account = sections::service_account(r, &top, project.as_ref());
    let credentials_block = sections::credentials_block(r, &top);
    let work_pool = sections::work_pool(r, &top);
    let prefect = sections::prefect(r, &top);
    let worker = sections::worker(r, &top);

    let mut deployments: Vec<(Deployment, Pos, PathBuf)> = Vec::new();
    let mut deployments_ok = match sections::deployments(r, &top) {
        Some(list) => {
            deployments.extend(list.into_iter().map(|(d, p)| (d, p, file.to_path_buf())));
            true
        }
        None => false,
    };
    if let Some(n) = top.get("deployments_from") {
        let dir = file.parent().unwrap_or(Path::new(""));
        match r.string(n, "deployments_from", Secret::No) {
            Some(rel) => match crate::prefect_yaml::read(r, dir, &rel, n.pos) {
                Some(list) => deployments.extend(list),
                None => deployments_ok = false,
            },
            None => deployments_ok = false,
        }
    }

    // A section that failed to read has its own errors; do not add a second one about it.
    let has_api_url = prefect.as_ref().is_none_or(|p| p.api_url.is_some());
    let has_worker = top.get("worker").is_some();
    sections::cross_checks(
        r,
        &top,
        &CrossInput {
            deployments: &deployments,
            has_worker,
            has_api_url,
        },
    );

    let mut worker = worker;
    // The worker's image goes where the deployments' images go, one repository in all.
    if let (Some(Some(w)), Some(repo)) = (
        worker.as_mut(),
        deployments
            .iter()
            .find_map(|(d, _, _)| d.build.as_ref().map(|b| b.repository.clone())),
    ) && let Some(b) = w.build.as_mut()
        && b.repository != repo
    {
        let name = b.image_name.replace(
            &format!("/{}/{}", b.repository, crate::worker_image::IMAGE),
            &format!("/{repo}/{}", crate::worker_image::IMAGE),
        );
        b.repository = repo;
        b.image_name = name;
        if let Ok(image) = crate::ids::ImageRef::parse(b.image_name.clone()) {
            w.image = image;
        }
    }
    let (project, region, apis, quota_project) = gcp?;
    let prefect = prefect?;
    let apis =
        apis.unwrap_or_else(|| sections::default_apis(has_worker, prefect.api_key.is_some()));
    deployments_ok.then_some(())?;
    Some(Spec {
        source: file.to_path_buf(),
        gcp: Gcp {
            project,
            region,
            apis,
            quota_project,
        },
        service_account: service_account?,
        prefect,
        credentials_block: credentials_block?,
        work_pool: work_pool?,
        worker: worker?,
        deployments: deployments.into_iter().map(|(d, _, _)| d).collect(),
    })
}
