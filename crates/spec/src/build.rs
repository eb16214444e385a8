//! `build:` on a deployment: the image is built remotely from a folder instead of named.
//!
//! Everything here is checked when the plan is read, before any network call: the context is
//! a directory, the Dockerfile is inside it, `dockerfile: auto` does not collide with a
//! Dockerfile of the user's (Prefect's own `generate_default_dockerfile` refuses that too), the
//! repository id is one Artifact Registry accepts. The image *tag* depends on the folder's
//! contents and is computed later by [`crate::context`]; the image *name* is fixed here.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diag::Pos;
use crate::ids::{ProjectId, Region};
use crate::node::Node;
use crate::reader::{Reader, Secret, show};

pub const BUILD_KEYS: &[&str] = &["context", "dockerfile", "repository", "platform"];

/// The Artifact Registry repository a plan builds into when it names none.
pub const DEFAULT_REPOSITORY: &str = "prefect";

/// The only platform Cloud Run runs (and so the only one worth building).
pub const PLATFORM: &str = "linux/amd64";

/// Which Dockerfile builds the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerfileSpec {
    /// What `prefect deploy`'s `dockerfile: auto` generates (see [`crate::context::auto_dockerfile`]).
    Auto,
    /// A file inside the context, `/`-separated and relative to it.
    Path(String),
    /// The embedded worker's image: a generated Dockerfile around the `bootstrap` binary of
    /// this version at `Build::context` (see [`crate::worker_image`]).
    Worker { version: String },
}

/// A checked `build:` (read back from a saved plan too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The context directory, canonical (symlinks and `..` resolved).
    pub context: PathBuf,
    /// The context as the plan wrote it, for messages.
    pub context_shown: String,
    pub dockerfile: DockerfileSpec,
    /// Artifact Registry docker repository id, in `gcp.region`.
    pub repository: String,
    /// `<region>-docker.pkg.dev/<project>/<repository>/<deployment slug>`, without a tag.
    pub image_name: String,
    /// Where the auto Dockerfile puts the context: `/opt/prefect/<context dir name>`.
    pub workdir: String,
    /// Warnings for the user (e.g. a prefect.yaml that pushes to the shut-down gcr.io).
    pub notes: Vec<String>,
}

impl Build {
    /// The Artifact Registry host of `region` (docker format).
    pub fn registry_host(region: &Region) -> String {
        format!("{region}-docker.pkg.dev")
    }
}

/// Reads `build:` of the deployment at `path`; `plan_dir` is the plan file's directory.
pub fn read(
    r: &mut Reader<'_>,
    node: &Node,
    path: &str,
    plan_dir: &Path,
    deployment: Option<&str>,
    gcp: Option<(&ProjectId, &Region)>,
) -> Option<Build> {
    let f = r.fields(Some(node), node.pos, path, BUILD_KEYS)?;
    let (context_rel, context_pos) = match f.get("context") {
        None => (".".to_owned(), f.pos),
        Some(n) => (r.string(n, &f.child("context"), Secret::No)?, n.pos),
    };
    let mut value = |key: &str| -> Option<Option<(String, Pos)>> {
        match f.get(key) {
            None => Some(None),
            Some(n) => Some(Some((r.string(n, &f.child(key), Secret::No)?, n.pos))),
        }
    };
    let dockerfile = value("dockerfile")?;
    let repository = value("repository")?;
    let platform = value("platform")?;
    resolve(
        r,
        Parts {
            path,
            pos: f.pos,
            context: (context_rel, context_pos),
            dockerfile,
            repository,
            platform,
        },
        plan_dir,
        deployment,
        gcp,
    )
}

/// The values of a `build:` (or of a prefect.yaml `build_docker_image` step), unchecked.
pub struct Parts<'a> {
    /// Dotted path for messages, e.g. `deployments[0].build`.
    pub path: &'a str,
    pub pos: Pos,
    pub context: (String, Pos),
    pub dockerfile: Option<(String, Pos)>,
    pub repository: Option<(String, Pos)>,
    pub platform: Option<(String, Pos)>,
}

/// Checks [`Parts`] and resolves them against the plan's directory, project and region.
pub fn resolve(
    r: &mut Reader<'_>,
    parts: Parts<'_>,
    plan_dir: &Path,
    deployment: Option<&str>,
    gcp: Option<(&ProjectId, &Region)>,
) -> Option<Build> {
    let child = |k: &str| format!("{}.{k}", parts.path);
    let (context_rel, context_pos) = parts.context;
    let context = check_context(r, plan_dir, &context_rel, context_pos, &child("context"));
    let dockerfile = match &parts.dockerfile {
        None => Some(DockerfileSpec::Auto),
        Some((v, pos)) => match &context {
            Some(ctx) => check_dockerfile(r, ctx, &context_rel, v, *pos, &child("dockerfile")),
            None => None,
        },
    };
    if let (Some(ctx), Some(DockerfileSpec::Auto)) = (&context, &dockerfile)
        && ctx.join("Dockerfile").exists()
    {
        let pos = parts.dockerfile.as_ref().map_or(parts.pos, |(_, p)| *p);
        r.error(
            pos,
            format!(
                "`{}` is `auto` but the context `{context_rel}` already has a Dockerfile",
                child("dockerfile")
            ),
            Some(
                "set `dockerfile: Dockerfile` to build with yours (`prefect deploy` refuses \
                 `auto` here too)"
                    .into(),
            ),
        );
        return None;
    }
    let repository = match parts.repository {
        None => Some(DEFAULT_REPOSITORY.to_owned()),
        Some((v, pos)) => match check_repository(&v) {
            Ok(()) => Some(v),
            Err(why) => {
                r.error(
                    pos,
                    format!("invalid `{}` {}", child("repository"), show(&v)),
                    Some(format!("an Artifact Registry repository id {why}")),
                );
                None
            }
        },
    };
    if let Some((v, pos)) = &parts.platform
        && v != PLATFORM
    {
        r.error(
            *pos,
            format!("unsupported `{}` {}", child("platform"), show(v)),
            Some(format!(
                "Cloud Run runs `{PLATFORM}` images only; leave it out or write `{PLATFORM}`"
            )),
        );
        return None;
    }
    let context = context?;
    let workdir = workdir_of(r, &context, context_pos, &child("context"))?;
    let (project, region) = gcp?;
    let repository = repository?;
    let image_name = format!(
        "{}/{project}/{repository}/{}",
        Build::registry_host(region),
        image_slug(deployment?)
    );
    Some(Build {
        context,
        context_shown: context_rel,
        dockerfile: dockerfile?,
        repository,
        image_name,
        workdir,
        notes: Vec::new(),
    })
}

fn check_context(
    r: &mut Reader<'_>,
    plan_dir: &Path,
    rel: &str,
    pos: Pos,
    path: &str,
) -> Option<PathBuf> {
    let joined = plan_dir.join(rel);
    let joined = if joined.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        joined
    };
    match std::fs::canonicalize(&joined) {
        Ok(p) if p.is_dir() => Some(p),
        Ok(_) => {
            r.error(
                pos,
                format!("`{path}` {} is not a directory", show(rel)),
                Some("the build context is a folder, relative to the plan file".into()),
            );
            None
        }
        Err(e) => {
            r.error(
                pos,
                format!("cannot read `{path}` {}: {e}", show(rel)),
                Some("the build context is a folder, relative to the plan file's directory".into()),
            );
            None
        }
    }
}

fn check_dockerfile(
    r: &mut Reader<'_>,
    context: &Path,
    context_rel: &str,
    v: &str,
    pos: Pos,
    path: &str,
) -> Option<DockerfileSpec> {
    if v == "auto" {
        return Some(DockerfileSpec::Auto);
    }
    let rel = Path::new(v);
    let inside = !v.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        r.error(
            pos,
            format!(
                "`{path}` {} is not a path inside the build context",
                show(v)
            ),
            Some("`auto`, or a relative path such as `Dockerfile` or `docker/Dockerfile`".into()),
        );
        return None;
    }
    if !context.join(rel).is_file() {
        r.error(
            pos,
            format!(
                "`{path}`: no file {} in the build context {}",
                show(v),
                show(context_rel)
            ),
            Some("the path is relative to `context`; or use `dockerfile: auto`".into()),
        );
        return None;
    }
    let normal: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    Some(DockerfileSpec::Path(normal.join("/")))
}

/// `/opt/prefect/<name>`, as Prefect's auto Dockerfile (`COPY . /opt/prefect/{dir_name}/`).
fn workdir_of(r: &mut Reader<'_>, context: &Path, pos: Pos, path: &str) -> Option<String> {
    let name = context
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        r.error(
            pos,
            format!(
                "`{path}`: the folder name {} cannot be a path in the image",
                show(&name)
            ),
            Some(
                "the image keeps the context in /opt/prefect/<folder name>; use a folder \
                 named with letters, digits, `.`, `_` and `-`"
                    .into(),
            ),
        );
        return None;
    }
    Some(format!("/opt/prefect/{name}"))
}

/// Artifact Registry repository ids: lowercase letters, digits and hyphens, starting with a
/// letter, ending with a letter or digit, at most 63 characters (the API's `repositoryId`).
pub fn check_repository(v: &str) -> Result<(), &'static str> {
    let ok_chars = v
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let first = v.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let last = v
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if v.is_empty() || v.len() > 63 {
        Err("has 1 to 63 characters")
    } else if !(ok_chars && first && last) {
        Err("is lowercase letters, digits and `-`, starting with a letter, e.g. `prefect`")
    } else {
        Ok(())
    }
}

/// A deployment name as a docker image path component (lowercase alphanumerics separated by
/// single `-`), since Prefect names may have capitals and spaces.
pub fn image_slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() { "flow".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(image_slug("gcp-weather-deploy"), "gcp-weather-deploy");
        assert_eq!(image_slug("My Deploy_2"), "my-deploy-2");
        assert_eq!(image_slug("--"), "flow");
    }

    #[test]
    fn repositories() {
        assert!(check_repository("prefect").is_ok());
        assert!(check_repository("my-repo-1").is_ok());
        assert!(check_repository("Prefect").is_err());
        assert!(check_repository("1repo").is_err());
        assert!(check_repository("repo-").is_err());
        assert!(check_repository(&"a".repeat(64)).is_err());
    }
}
