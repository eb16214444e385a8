//! Which local program stands in for a container image.
//!
//! The sandbox has no container runtime: an image is mapped, by an ordered table of glob
//! rules, to a local command. The container's `command`/`args` keep Docker's meaning
//! (command replaces the image ENTRYPOINT, args replace its CMD); only the program that
//! `argv[0]` names is looked up locally (a fixed substitute, the rule's directories, or the
//! host `PATH` when the rule allows it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Values a rule file may refer to as `${venv}`, `${bootstrap}`, `${cwd}` and `${dir}`.
#[derive(Debug, Clone)]
pub struct Placeholders {
    /// The Python virtualenv whose `bin/` holds `prefect` and `python`.
    pub venv: PathBuf,
    /// The `bootstrap` binary (the embedded worker image runs it).
    pub bootstrap: PathBuf,
    /// The sandbox's working directory.
    pub cwd: PathBuf,
}

impl Placeholders {
    /// Defaults from the environment: `BOOTSTRAP_VENV` (else `./.venv`), the running binary,
    /// and the current directory.
    pub fn from_env() -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let venv = std::env::var_os("BOOTSTRAP_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| cwd.join(".venv"));
        let bootstrap = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bootstrap"));
        Self {
            venv,
            bootstrap,
            cwd,
        }
    }

    fn expand(&self, text: &str, dir: &Path) -> String {
        text.replace("${venv}", &self.venv.to_string_lossy())
            .replace("${bootstrap}", &self.bootstrap.to_string_lossy())
            .replace("${cwd}", &self.cwd.to_string_lossy())
            .replace("${dir}", &dir.to_string_lossy())
    }
}

/// One pattern or several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Patterns {
    /// A single glob.
    One(String),
    /// Any of these globs.
    Many(Vec<String>),
}

impl Patterns {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let items: Vec<&str> = match self {
            Patterns::One(p) => vec![p.as_str()],
            Patterns::Many(ps) => ps.iter().map(String::as_str).collect(),
        };
        items.into_iter()
    }
}

/// One row of the image table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageRule {
    /// Glob(s) over the image reference: `*` any run of characters, `?` one character.
    /// A leading `docker.io/` or `index.docker.io/` (and then `library/`) of the image is ignored.
    #[serde(rename = "match")]
    pub patterns: Patterns,
    /// Fixed local programs for container executables, by name or full container path.
    #[serde(default)]
    pub programs: BTreeMap<String, String>,
    /// Directories searched (in order) for `argv[0]`'s file name.
    #[serde(default)]
    pub path: Vec<String>,
    /// Whether the host `PATH` (and existing absolute paths) may supply `argv[0]`.
    #[serde(default)]
    pub host_path: bool,
    /// The image's ENTRYPOINT, used when the container sets no `command`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image's CMD, used when the container sets neither `command` nor `args`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Working directory of the process (the container's `workingDir` has no local meaning).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Environment the image itself sets (the container's env wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The file given with `--images FILE` (YAML or JSON): rules tried before the defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageMapFile {
    /// Rules in priority order.
    pub images: Vec<ImageRule>,
}

/// An ordered image table; the first matching rule decides. Images the sandbox built itself
/// (Artifact Registry URIs, see [`BuiltImages`]) are looked up before the table.
#[derive(Debug, Clone)]
pub struct ImageMap {
    rules: Vec<(ImageRule, PathBuf)>,
    vars: Placeholders,
    built: BuiltImages,
}

/// Why an image could not be turned into a local command. The messages follow Cloud Run's.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ResolveError {
    /// No rule matches the image.
    #[error("Image '{image}' not found.")]
    ImageNotFound {
        /// The container's image.
        image: String,
    },
    /// The container has nothing to run.
    #[error("Image '{image}' has no entrypoint or command.")]
    NoCommand {
        /// The container's image.
        image: String,
    },
    /// `argv[0]` names no local program.
    #[error(
        "The user-provided container failed to start: exec: \"{program}\": executable file not found in $PATH"
    )]
    ProgramNotFound {
        /// The program the container asked for.
        program: String,
    },
}

/// Why an image table file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read image table {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid image table.
    #[error("invalid image table {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// A container turned into a local process description.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCommand {
    /// The program to execute.
    pub program: PathBuf,
    /// Its arguments (without `argv[0]`).
    pub args: Vec<String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// Directories to put in front of `PATH`.
    pub path: Vec<PathBuf>,
    /// Whether the host's `PATH` follows them.
    pub host_path: bool,
    /// Environment from the image (the container's own env is applied after it).
    pub image_env: BTreeMap<String, String>,
    /// Host folders to show at container paths (a built image's `WORKDIR`), and so the
    /// directory to start in: the process then runs in a private mount namespace where each
    /// `(host, container)` is bind-mounted, and starts in the last container path.
    pub binds: Vec<(PathBuf, PathBuf)>,
}

impl ImageMap {
    /// The built-in table: the embedded worker image, Prefect images, and plain base images.
    pub fn with_defaults(vars: Placeholders) -> Self {
        let dir = vars.cwd.clone();
        Self {
            rules: default_rules()
                .into_iter()
                .map(|r| (r, dir.clone()))
                .collect(),
            vars,
            built: BuiltImages::default(),
        }
    }

    /// The placeholders' values (the builder installs into environments over `venv`).
    pub fn placeholders(&self) -> &Placeholders {
        &self.vars
    }

    /// The registry of built images (shared by every clone of this map).
    pub fn built(&self) -> &BuiltImages {
        &self.built
    }

    /// Whether `image` names something that can run: a built image whose base the table
    /// knows, or an image the table knows. An Artifact Registry URI in a repository of the
    /// sandbox that was never built is unknown (Google's "Image ... not found").
    pub fn knows(&self, image: &str) -> bool {
        match self.built.lookup(image) {
            Some(Ok(built)) => self.rule_for(&built.base).is_some(),
            Some(Err(_)) => false,
            None => self.rule_for(image).is_some(),
        }
    }

    /// Puts a file's rules in front of the current ones.
    pub fn extend_from_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ImageMapFile = serde_saphyr::from_str(&text).map_err(|e| LoadError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.vars.cwd.clone());
        self.prepend(file.images, &dir);
        Ok(())
    }

    /// Puts rules in front of the current ones; `${dir}` in them means `dir`.
    pub fn prepend(&mut self, rules: Vec<ImageRule>, dir: &Path) {
        let mut new: Vec<_> = rules.into_iter().map(|r| (r, dir.to_path_buf())).collect();
        new.append(&mut self.rules);
        self.rules = new;
    }

    /// The rule that decides for `image`, if any.
    pub fn rule_for(&self, image: &str) -> Option<&ImageRule> {
        let bare = image
            .strip_prefix("docker.io/")
            .or_else(|| image.strip_prefix("index.docker.io/"))
            .unwrap_or(image);
        let bare = bare.strip_prefix("library/").unwrap_or(bare);
        self.rules
            .iter()
            .map(|(r, _)| r)
            .find(|r| r.patterns.iter().any(|p| glob(p, image) || glob(p, bare)))
    }

    /// The deciding rule for `image` and the directory its `${dir}` means.
    fn rule_and_dir(&self, image: &str) -> Option<(&ImageRule, PathBuf)> {
        let rule = self.rule_for(image)?;
        let dir = self
            .rules
            .iter()
            .find(|(r, _)| std::ptr::eq(r, rule))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| self.vars.cwd.clone());
        Some((rule, dir))
    }

    /// Turns a container (image, command, args) into a local command.
    pub fn resolve(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
    ) -> Result<LocalCommand, ResolveError> {
        if let Some(found) = self.built.lookup(image) {
            return self.resolve_built(image, &found?, command, args);
        }
        let (rule, dir) = {
            let rule = self
                .rule_for(image)
                .ok_or_else(|| ResolveError::ImageNotFound {
                    image: image.to_string(),
                })?;
            let dir = self
                .rules
                .iter()
                .find(|(r, _)| std::ptr::eq(r, rule))
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| self.vars.cwd.clone());
            (rule, dir)
        };
        let expand = |s: &str| self.vars.expand(s, &dir);
        let entrypoint: Vec<String> = rule.entrypoint.iter().map(|s| expand(s)).collect();
        let cmd: Vec<String> = rule.cmd.iter().map(|s| expand(s)).collect();
        self.finish(image, rule, &dir, &entrypoint, &cmd, command, args)
    }

    /// A built image runs as its base image's programs, with its own environment's `bin`
    /// first on `PATH`, its working directory, ENV, ENTRYPOINT and CMD.
    fn resolve_built(
        &self,
        image: &str,
        built: &BuiltImage,
        command: &[String],
        args: &[String],
    ) -> Result<LocalCommand, ResolveError> {
        let (rule, dir) =
            self.rule_and_dir(&built.base)
                .ok_or_else(|| ResolveError::ImageNotFound {
                    image: image.to_string(),
                })?;
        let expand = |s: &str| self.vars.expand(s, &dir);
        // Docker: an ENTRYPOINT set in the Dockerfile resets the base image's CMD.
        let (entrypoint, cmd) = match (&built.entrypoint, &built.cmd) {
            (Some(e), c) => (e.clone(), c.clone().unwrap_or_default()),
            (None, Some(c)) => (
                rule.entrypoint.iter().map(|s| expand(s)).collect(),
                c.clone(),
            ),
            (None, None) => (
                rule.entrypoint.iter().map(|s| expand(s)).collect(),
                rule.cmd.iter().map(|s| expand(s)).collect(),
            ),
        };
        let mut local = self.finish_with(
            image,
            rule,
            &dir,
            &entrypoint,
            &cmd,
            command,
            args,
            built.bin.as_deref(),
            built.rootfs.as_deref(),
        )?;
        local.workdir = built.workdir.clone();
        // The image's files are where its Dockerfile put them (Prefect's pull step
        // `set_working_directory: /opt/prefect/<name>` changes into that path by name).
        if let Some(container) = built.container_workdir.as_deref().filter(|c| *c != "/") {
            local
                .binds
                .push((built.workdir.clone(), PathBuf::from(container)));
        }
        local.image_env.extend(built.env.clone());
        if let Some(bin) = &built.bin
            && let Some(venv) = bin.parent()
        {
            local
                .image_env
                .insert("VIRTUAL_ENV".into(), venv.display().to_string());
        }
        Ok(local)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        image: &str,
        rule: &ImageRule,
        dir: &Path,
        entrypoint: &[String],
        cmd: &[String],
        command: &[String],
        args: &[String],
    ) -> Result<LocalCommand, ResolveError> {
        self.finish_with(image, rule, dir, entrypoint, cmd, command, args, None, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_with(
        &self,
        image: &str,
        rule: &ImageRule,
        dir: &Path,
        entrypoint: &[String],
        cmd: &[String],
        command: &[String],
        args: &[String],
        first_bin: Option<&Path>,
        rootfs: Option<&Path>,
    ) -> Result<LocalCommand, ResolveError> {
        let expand = |s: &str| self.vars.expand(s, dir);
        // Docker semantics: `command` replaces ENTRYPOINT and resets CMD; `args` replace CMD.
        let mut argv: Vec<String> = if command.is_empty() {
            entrypoint.to_vec()
        } else {
            command.to_vec()
        };
        if !args.is_empty() {
            argv.extend(args.iter().cloned());
        } else if command.is_empty() {
            argv.extend(cmd.iter().cloned());
        }
        let Some((first, rest)) = argv.split_first() else {
            return Err(ResolveError::NoCommand {
                image: image.to_string(),
            });
        };
        let mut path: Vec<PathBuf> = rule.path.iter().map(|p| PathBuf::from(expand(p))).collect();
        if let Some(bin) = first_bin {
            path.insert(0, bin.to_path_buf());
        }
        // A program the image itself holds (copied in by its Dockerfile) comes before the
        // base image's stand-ins from the host.
        let own = rootfs.and_then(|r| in_image(r, first));
        let program = own
            .or_else(|| find_program(rule, first, &path, &expand))
            .ok_or_else(|| ResolveError::ProgramNotFound {
                program: first.clone(),
            })?;
        Ok(LocalCommand {
            program,
            args: rest.to_vec(),
            workdir: rule
                .workdir
                .as_deref()
                .map(|w| PathBuf::from(expand(w)))
                .unwrap_or_else(|| self.vars.cwd.clone()),
            path,
            host_path: rule.host_path,
            image_env: rule
                .env
                .iter()
                .map(|(k, v)| (k.clone(), expand(v)))
                .collect(),
            binds: Vec::new(),
        })
    }
}

/// What a sandbox build made of a Dockerfile: the base image it runs as and what the
/// Dockerfile added on top (host paths: the context copied under the image's root, the
/// per-requirements environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// The `FROM` image, resolved through the table at run time.
    pub base: String,
    /// The host directory standing for the final `WORKDIR`.
    pub workdir: PathBuf,
    /// The final `WORKDIR` as the container sees it (e.g. `/opt/prefect/flows`); the executor
    /// bind-mounts `workdir` there. Absent in records of older sandboxes.
    #[serde(default)]
    pub container_workdir: Option<String>,
    /// `ENV` of the Dockerfile.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `ENTRYPOINT` of the Dockerfile, when set.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD` of the Dockerfile, when set.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The `bin` of the environment `RUN pip install` filled, first on `PATH`.
    #[serde(default)]
    pub bin: Option<PathBuf>,
    /// The host folder standing for the image's `/`: what the Dockerfile copied in. A program
    /// the container names that is there (e.g. the worker image's
    /// `/usr/local/bin/bootstrap`) runs from there, not from the host. Absent in records of
    /// older sandboxes.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
}

/// The folders of a Debian image's default `PATH` (the Docker library images' `ENV PATH`).
const IMAGE_PATH: &[&str] = &[
    "usr/local/sbin",
    "usr/local/bin",
    "usr/sbin",
    "usr/bin",
    "sbin",
    "bin",
];

/// `program` (as the container names it) in the image root, when the image has it: an
/// absolute path under the root, or a bare name in the root's `PATH` folders.
fn in_image(rootfs: &Path, program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        let p = rootfs.join(program.trim_start_matches('/'));
        return (!program.contains("..") && is_executable(&p)).then_some(p);
    }
    if program.contains('/') {
        return None;
    }
    IMAGE_PATH
        .iter()
        .map(|d| rootfs.join(d).join(program))
        .find(|p| is_executable(p))
}

/// Images the sandbox's builder pushed to its Artifact Registry, by reference. Shared by
/// every clone (the executor's copy sees what the builder adds).
#[derive(Debug, Clone, Default)]
pub struct BuiltImages {
    inner: std::sync::Arc<std::sync::Mutex<BuiltInner>>,
}

#[derive(Debug, Default)]
struct BuiltInner {
    /// `{location}-docker.pkg.dev/{project}/{repository}` of every repository that exists.
    repositories: std::collections::BTreeSet<String>,
    /// `host/project/repo/image@sha256:...` → image.
    by_digest: BTreeMap<String, BuiltImage>,
    /// `host/project/repo/image:tag` → `...@sha256:...`.
    tags: BTreeMap<String, String>,
}

/// The repository part (`host/project/repo`) and the rest of an Artifact Registry docker
/// reference, or `None` for other registries.
fn split_registry_ref(image: &str) -> Option<(&str, &str)> {
    let (host, rest) = image.split_once('/')?;
    if !host.ends_with("-docker.pkg.dev") {
        return None;
    }
    let mut parts = rest.splitn(3, '/');
    let (project, repo, _image) = (parts.next()?, parts.next()?, parts.next()?);
    let cut = host.len() + 1 + project.len() + 1 + repo.len();
    Some((&image[..cut], &image[cut + 1..]))
}

impl BuiltImages {
    fn lock(&self) -> std::sync::MutexGuard<'_, BuiltInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a repository exists (`host/project/repo`) or not.
    pub fn set_repository(&self, repository: &str, exists: bool) {
        let mut inner = self.lock();
        if exists {
            inner.repositories.insert(repository.to_owned());
        } else {
            inner.repositories.remove(repository);
            let prefix = format!("{repository}/");
            inner.by_digest.retain(|k, _| !k.starts_with(&prefix));
            inner.tags.retain(|k, _| !k.starts_with(&prefix));
        }
    }

    /// Records a pushed image under `name@sha256:...` and its tags (`name:tag`).
    pub fn push(&self, by_digest: &str, tags: &[String], image: BuiltImage) {
        let mut inner = self.lock();
        inner.by_digest.insert(by_digest.to_owned(), image);
        for tag in tags {
            inner.tags.insert(tag.clone(), by_digest.to_owned());
        }
    }

    /// `None` when `image` is not in a repository of the sandbox's Artifact Registry (the
    /// image table decides); else the built image or "not found".
    pub fn lookup(&self, image: &str) -> Option<Result<BuiltImage, ResolveError>> {
        let (repository, rest) = split_registry_ref(image)?;
        let inner = self.lock();
        if !inner.repositories.contains(repository) {
            return None;
        }
        let not_found = || ResolveError::ImageNotFound {
            image: image.to_string(),
        };
        let key = if let Some((name, digest)) = image.split_once('@') {
            // `image:tag@sha256:...`: the digest decides.
            let (head, last) = name.rsplit_once('/').unwrap_or(("", name));
            let last = last.split(':').next().unwrap_or(last);
            format!("{head}/{last}@{digest}")
        } else if rest
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            match inner.tags.get(image) {
                Some(d) => d.clone(),
                None => return Some(Err(not_found())),
            }
        } else {
            match inner.tags.get(&format!("{image}:latest")) {
                Some(d) => d.clone(),
                None => return Some(Err(not_found())),
            }
        };
        Some(inner.by_digest.get(&key).cloned().ok_or_else(not_found))
    }
}

fn find_program(
    rule: &ImageRule,
    first: &str,
    path: &[PathBuf],
    expand: &dyn Fn(&str) -> String,
) -> Option<PathBuf> {
    let name = Path::new(first)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| first.to_string());
    if let Some(p) = rule
        .programs
        .get(first)
        .or_else(|| rule.programs.get(&name))
    {
        let p = PathBuf::from(expand(p));
        return is_executable(&p).then_some(p);
    }
    if let Some(p) = path
        .iter()
        .map(|d| d.join(&name))
        .find(|p| is_executable(p))
    {
        return Some(p);
    }
    if !rule.host_path {
        return None;
    }
    if first.contains('/') {
        let p = PathBuf::from(first);
        return is_executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|host| {
        std::env::split_paths(&host)
            .map(|d| d.join(&name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn default_rules() -> Vec<ImageRule> {
    let rule = |patterns: &[&str]| ImageRule {
        patterns: Patterns::Many(patterns.iter().map(|s| s.to_string()).collect()),
        programs: BTreeMap::new(),
        path: Vec::new(),
        host_path: false,
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        workdir: None,
        env: BTreeMap::new(),
    };
    let mut worker = rule(&["*bootstrap*"]);
    worker
        .programs
        .insert("bootstrap".into(), "${bootstrap}".into());
    worker.path.push("${venv}/bin".into());
    worker.entrypoint.push("bootstrap".into());

    // `prefecthq/prefect:*` and images built from it: `prefect`/`python` from the venv.
    let mut prefect = rule(&["prefecthq/prefect:*", "*prefect*"]);
    prefect.path.push("${venv}/bin".into());
    prefect.cmd.push("python".into());
    // The venv is the image: its packages are what the image holds. The guide's
    // `prefect worker start --install-policy always` runs `pip install --upgrade prefect-gcp`;
    // without an index pip finds it installed and changes nothing (a container has no way out
    // to PyPI, and the shared venv must not be upgraded under everyone's feet).
    prefect.env.insert("PIP_NO_INDEX".into(), "1".into());
    prefect
        .env
        .insert("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into());

    // Plain base images: their shell utilities are the host's.
    let mut base = rule(&[
        "busybox",
        "busybox:*",
        "alpine",
        "alpine:*",
        "debian*",
        "ubuntu*",
        "bash",
        "bash:*",
    ]);
    base.host_path = true;
    base.cmd.push("sh".into());
    vec![worker, prefect, base]
}

/// Glob match with `*` (any run) and `?` (one character), over whole strings.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(venv: &Path) -> Placeholders {
        Placeholders {
            venv: venv.to_path_buf(),
            bootstrap: PathBuf::from("/bin/true"),
            cwd: PathBuf::from("/tmp"),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob("prefecthq/prefect:*", "prefecthq/prefect:3-latest"));
        assert!(glob(
            "*prefect*",
            "europe-west1-docker.pkg.dev/p/prefect/flows:1"
        ));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*a*b", "xxaxxb"));
        assert!(!glob("busybox:*", "busybox"));
        assert!(!glob("alpine", "alpine2"));
    }

    #[test]
    fn unknown_image_is_not_found() {
        let map = ImageMap::with_defaults(vars(Path::new("/nonexistent")));
        let err = map.resolve("gcr.io/x/y:1", &s(&["run"]), &[]).unwrap_err();
        assert_eq!(err.to_string(), "Image 'gcr.io/x/y:1' not found.");
    }

    #[test]
    fn base_image_runs_host_shell_with_docker_semantics() {
        let map = ImageMap::with_defaults(vars(Path::new("/nonexistent")));
        // Docker Hub's canonical spelling names the same image.
        let cmd = map
            .resolve("docker.io/library/busybox:1.36", &[], &[])
            .expect("busybox resolves");
        assert!(cmd.program.ends_with("sh"));
        let cmd = map
            .resolve("busybox:1.36", &s(&["sh", "-c"]), &s(&["exit 3"]))
            .expect("sh is on the host");
        assert!(cmd.program.ends_with("sh"));
        assert_eq!(cmd.args, s(&["-c", "exit 3"]));
        // No command: the image CMD runs.
        let cmd = map.resolve("alpine", &[], &[]).expect("resolves");
        assert!(cmd.program.ends_with("sh"));
        assert!(cmd.args.is_empty());
    }

    #[test]
    fn prefect_image_uses_the_venv_and_missing_program_fails_to_start() {
        let venv = tempfile::tempdir().expect("tempdir");
        let bin = venv.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let prefect = bin.join("prefect");
        std::fs::write(&prefect, "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prefect, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let map = ImageMap::with_defaults(vars(venv.path()));
        let cmd = map
            .resolve(
                "prefecthq/prefect:3-latest",
                &s(&["prefect", "flow-run", "execute"]),
                &[],
            )
            .expect("prefect resolves");
        assert_eq!(cmd.program, prefect);
        assert_eq!(cmd.args, s(&["flow-run", "execute"]));
        let err = map
            .resolve("prefecthq/prefect:3-latest", &s(&["sh", "-c", "true"]), &[])
            .unwrap_err();
        assert!(matches!(err, ResolveError::ProgramNotFound { .. }), "{err}");
    }

    #[test]
    fn file_rules_come_first_and_expand_placeholders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("images.yaml");
        std::fs::write(
            &file,
            "images:\n  - match: \"*prefect*\"\n    programs: {run: /bin/sh}\n    workdir: \"${dir}/flows\"\n",
        )
        .expect("write");
        let mut map = ImageMap::with_defaults(vars(Path::new("/nonexistent")));
        map.extend_from_file(&file).expect("loads");
        let cmd = map
            .resolve("my/prefect-flows:1", &s(&["run"]), &s(&["-c", "true"]))
            .expect("resolves");
        assert_eq!(cmd.program, PathBuf::from("/bin/sh"));
        assert_eq!(cmd.workdir, dir.path().join("flows"));
    }

    #[test]
    fn built_images_resolve_over_their_base_and_unknown_ones_are_not_found() {
        let venv = tempfile::tempdir().expect("tempdir");
        let env = tempfile::tempdir().expect("env");
        use std::os::unix::fs::PermissionsExt;
        for dir in [venv.path().join("bin"), env.path().join("bin")] {
            std::fs::create_dir_all(&dir).expect("mkdir");
            let python = dir.join("python");
            std::fs::write(&python, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let map = ImageMap::with_defaults(vars(venv.path()));
        let repo = "us-central1-docker.pkg.dev/p/prefect";
        // Not a sandbox repository: the table decides, as before (`*prefect*`).
        assert!(map.built().lookup(&format!("{repo}/flows:1")).is_none());
        assert!(map.knows(&format!("{repo}/flows:1")));
        map.built().set_repository(repo, true);
        assert!(!map.knows(&format!("{repo}/flows:1")));
        let digest = format!("sha256:{}", "b".repeat(64));
        let built = BuiltImage {
            base: "prefecthq/prefect:3-python3.11".into(),
            workdir: PathBuf::from("/tmp/root/opt/prefect/flows"),
            container_workdir: Some("/opt/prefect/flows".into()),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            entrypoint: None,
            cmd: Some(s(&["python", "flow.py"])),
            bin: Some(env.path().join("bin")),
            rootfs: None,
        };
        map.built().push(
            &format!("{repo}/flows@{digest}"),
            &[format!("{repo}/flows:1")],
            built,
        );
        for image in [
            format!("{repo}/flows:1"),
            format!("{repo}/flows@{digest}"),
            format!("{repo}/flows:1@{digest}"),
        ] {
            let cmd = map.resolve(&image, &[], &[]).expect("built image resolves");
            assert_eq!(cmd.program, env.path().join("bin/python"), "{image}");
            assert_eq!(cmd.args, s(&["flow.py"]));
            assert_eq!(cmd.workdir, PathBuf::from("/tmp/root/opt/prefect/flows"));
            // The image's WORKDIR is shown at its container path.
            assert_eq!(
                cmd.binds,
                vec![(
                    PathBuf::from("/tmp/root/opt/prefect/flows"),
                    PathBuf::from("/opt/prefect/flows")
                )]
            );
            assert_eq!(
                cmd.image_env.get("GREETING").map(String::as_str),
                Some("hi")
            );
            assert_eq!(
                cmd.image_env.get("PIP_NO_INDEX").map(String::as_str),
                Some("1")
            );
        }
        assert!(map.knows(&format!("{repo}/flows:1")));
        let err = map
            .resolve(&format!("{repo}/flows:2"), &[], &[])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Image '{repo}/flows:2' not found.")
        );
        map.built().set_repository(repo, false);
        assert!(map.built().lookup(&format!("{repo}/flows:1")).is_none());
    }

    /// The worker image built from the `bootstrap` binary runs the binary the build copied
    /// into the image, by its absolute ENTRYPOINT or by the bare name Cloud Run's `command`
    /// gives, never a `bootstrap` of the host.
    #[test]
    fn a_program_the_image_holds_runs_from_the_image_root() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().expect("tempdir");
        let venv = tempfile::tempdir().expect("tempdir");
        let map = ImageMap::with_defaults(vars(venv.path()));
        let repo = "us-central1-docker.pkg.dev/p/prefect";
        map.built().set_repository(repo, true);
        let digest = format!("sha256:{}", "c".repeat(64));
        let rootfs = root.path().join("rootfs");
        let built = BuiltImage {
            base: "debian:bookworm-slim".into(),
            workdir: rootfs.clone(),
            container_workdir: Some("/".into()),
            env: BTreeMap::new(),
            entrypoint: Some(s(&["/usr/local/bin/bootstrap"])),
            cmd: Some(s(&["worker", "--healthcheck"])),
            bin: None,
            rootfs: Some(rootfs.clone()),
        };
        let image = format!("{repo}/bootstrap-worker:v1");
        map.built().push(
            &format!("{repo}/bootstrap-worker@{digest}"),
            std::slice::from_ref(&image),
            built,
        );
        // Not in the image root yet: the host has no /usr/local/bin/bootstrap either.
        assert!(matches!(
            map.resolve(&image, &[], &[]),
            Err(ResolveError::ProgramNotFound { .. })
        ));
        let bin = rootfs.join("usr/local/bin/bootstrap");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cmd = map.resolve(&image, &[], &[]).expect("resolves");
        assert_eq!(cmd.program, bin);
        assert_eq!(cmd.args, s(&["worker", "--healthcheck"]));
        let cmd = map
            .resolve(&image, &s(&["bootstrap"]), &s(&["worker", "--pool", "p"]))
            .expect("resolves");
        assert_eq!(cmd.program, bin);
        assert_eq!(cmd.args, s(&["worker", "--pool", "p"]));
        // The base image's other programs are still the host's.
        let sh = map.resolve(&image, &s(&["sh"]), &[]).expect("resolves");
        assert!(!sh.program.starts_with(&rootfs), "{:?}", sh.program);
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("images.yaml");
        std::fs::write(&file, "images:\n  - match: x\n    bogus: 1\n").expect("write");
        let mut map = ImageMap::with_defaults(vars(Path::new("/nonexistent")));
        let err = map.extend_from_file(&file).unwrap_err();
        assert!(err.to_string().contains("invalid image table"), "{err}");
    }
}
