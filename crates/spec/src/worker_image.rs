//! The embedded worker's own image, built from the running `bootstrap` binary.
//!
//! With `worker.runtime: embedded` and no `worker.image`, the plan builds the worker's image
//! the same remote way as `build:` (Cloud Run's `builds:submit`, no local Docker): the source
//! is two files made here - a generated Dockerfile (a minimal Debian base with CA
//! certificates) and this very binary - and the image goes to the same Artifact Registry
//! repository as the deployments' builds. Its tag is the binary's version and digest, so a new
//! `bootstrap` is a planned image update of the worker, and an unchanged one builds nothing.
//!
//! Everything is checked when the plan is read: the binary must be one Cloud Run can run
//! (linux/amd64), else the plan is rejected before any network call with the fix.

use std::path::PathBuf;

use crate::build::{Build, DEFAULT_REPOSITORY, DockerfileSpec};
use crate::context::{Context, ContextError, Entry, EntrySource};
use crate::ids::{ProjectId, Region};

/// The base: Debian 12, whose glibc (2.36) is the one the release binary is built against
/// (the repository's Dockerfile builds on `rust:*-slim-bookworm`). A binary linked on a newer
/// glibc would not start on it; see [`Running::glibc_note`].
pub const BASE_IMAGE: &str = "debian:bookworm-slim";

/// The image's name inside the repository.
pub const IMAGE: &str = "bootstrap-worker";

/// Where the binary is in the uploaded source, and where the image has it.
pub const SOURCE_BINARY: &str = "bootstrap";
pub const IMAGE_BINARY: &str = "/usr/local/bin/bootstrap";

/// The version of this build of `bootstrap`. The workspace's crates share one version (the
/// root crate asserts it equals its own), so this is the binary's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the plan needs to know about the process reading it: the platform it was built for
/// and where its executable is. Injected in tests (a macOS or arm64 host).
#[derive(Debug, Clone)]
pub struct Running {
    /// `std::env::consts::OS` of the binary (`linux`, `macos`, ...).
    pub os: String,
    /// `std::env::consts::ARCH` of the binary (`x86_64`, `aarch64`, ...).
    pub arch: String,
    /// The running executable, canonical; the error says why it could not be found.
    pub exe: Result<PathBuf, String>,
    pub version: String,
}

impl Running {
    /// This process.
    pub fn current() -> Self {
        Self {
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            exe: std::env::current_exe()
                .and_then(std::fs::canonicalize)
                .map_err(|e| e.to_string()),
            version: VERSION.to_owned(),
        }
    }

    /// `linux/amd64` in Docker's spelling, for messages.
    pub fn platform(&self) -> String {
        let arch = match self.arch.as_str() {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        format!("{}/{arch}", self.os)
    }

    /// Why this binary cannot be the worker's image, with the fix; `None` when it can.
    /// Cloud Run runs linux/amd64 images only, and the image is this very binary, so a binary
    /// built for another platform (a Mac, an arm64 laptop) would not start there.
    pub fn unfit(&self) -> Option<(String, String)> {
        if self.os == "linux" && self.arch == "x86_64" {
            return None;
        }
        Some((
            format!(
                "`worker.image` is not set, so the worker's image would be built from this \
                 `bootstrap` binary, which is {}; Cloud Run runs linux/amd64 only",
                self.platform()
            ),
            "run `bootstrap apply` from a linux/amd64 machine (a CI runner or Cloud Shell), or \
             build the image from the repository's Dockerfile (`docker build --platform \
             linux/amd64`), push it, and set `worker.image` to it"
                .into(),
        ))
    }
}

/// The generated Dockerfile. Every line is one the sandbox's builder follows, so the sandbox
/// runs this image as Google would (the binary from the image, not the host's).
pub fn dockerfile(version: &str) -> String {
    format!(
        "# The embedded Prefect worker: bootstrap {version}, built by `bootstrap apply` from the\n\
         # binary that ran it (worker.image left out).\n\
         FROM {BASE_IMAGE}\n\
         # CA certificates for Google and Prefect Cloud over TLS.\n\
         RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*\n\
         COPY {SOURCE_BINARY} {IMAGE_BINARY}\n\
         # No login, no home, no root: the worker only talks HTTP.\n\
         USER 65534:65534\n\
         ENV RUST_LOG=info\n\
         ENTRYPOINT [\"{IMAGE_BINARY}\"]\n\
         CMD [\"worker\", \"--healthcheck\"]\n"
    )
}

/// The worker image's build: `<region>-docker.pkg.dev/<project>/<repository>/bootstrap-worker`
/// from `exe`.
pub fn build(
    project: &ProjectId,
    region: &Region,
    repository: Option<&str>,
    exe: PathBuf,
    version: &str,
) -> Build {
    let repository = repository.unwrap_or(DEFAULT_REPOSITORY).to_owned();
    Build {
        context_shown: format!("bootstrap {version} ({})", exe.display()),
        context: exe,
        dockerfile: DockerfileSpec::Worker {
            version: version.to_owned(),
        },
        image_name: format!(
            "{}/{project}/{repository}/{IMAGE}",
            Build::registry_host(region)
        ),
        repository,
        workdir: "/".into(),
        notes: Vec::new(),
    }
}

/// The source of the worker image: the Dockerfile and the binary at `build.context`.
///
/// The digest is over the binary's bytes, as for any context. Hashing them is cheap enough
/// to do on every `plan`: sha256 runs at several hundred MB/s even in the test profile
/// (dependencies are built at opt-level 1), so a 60 MB debug binary takes a fraction of a
/// second (measured in `tests::hashing_the_running_binary_is_quick`), and a release binary
/// is a third of that size. Nothing cheaper is as sound: a version string misses local
/// builds, and size and mtime miss a copied or rebuilt file.
pub fn context(build: &Build, version: &str) -> Result<Context, ContextError> {
    let meta = std::fs::metadata(&build.context).map_err(|e| ContextError::Read {
        path: build.context.clone(),
        message: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(ContextError::Read {
            path: build.context.clone(),
            message: "not a file".into(),
        });
    }
    let entries = vec![
        Entry {
            path: "Dockerfile".into(),
            mode: 0o644,
            source: EntrySource::Text(dockerfile(version)),
        },
        Entry {
            path: SOURCE_BINARY.into(),
            mode: 0o755,
            source: EntrySource::File(build.context.clone()),
        },
    ];
    Context::new(entries)
}

/// The tag: `v<version>-<first 16 hex digits of the source digest>` (Docker tags allow
/// `[A-Za-z0-9_.-]`, at most 128 characters).
pub fn tag(version: &str, digest: &str) -> String {
    format!("v{version}-{}", &digest[..16])
}

/// Whether `tag` is one of this image's tags (to find what the worker ran before).
pub fn is_tag(tag: &str) -> bool {
    tag.starts_with('v') && tag.contains('-')
}

/// The version in a tag made by [`tag`].
pub fn version_of(tag: &str) -> Option<&str> {
    let rest = tag.strip_prefix('v')?;
    let (v, _) = rest.rsplit_once('-')?;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(os: &str, arch: &str) -> Running {
        Running {
            os: os.into(),
            arch: arch.into(),
            exe: Ok(PathBuf::from("/bin/true")),
            version: "1.2.3".into(),
        }
    }

    #[test]
    fn only_linux_amd64_binaries_can_be_the_image() {
        assert!(running("linux", "x86_64").unfit().is_none());
        let (msg, hint) = running("macos", "aarch64").unfit().unwrap();
        assert!(msg.contains("which is macos/arm64"), "{msg}");
        assert!(msg.contains("Cloud Run runs linux/amd64 only"), "{msg}");
        assert!(hint.contains("set `worker.image`"), "{hint}");
        assert!(running("linux", "aarch64").unfit().is_some());
    }

    #[test]
    fn tags_carry_the_version_and_the_digest() {
        let t = tag("0.1.0", &"ab".repeat(32));
        assert_eq!(t, "v0.1.0-abababababababab");
        assert!(is_tag(&t));
        assert_eq!(version_of(&t), Some("0.1.0"));
        assert_eq!(
            version_of("v1.0.0-rc.1-0123456789abcdef"),
            Some("1.0.0-rc.1")
        );
        assert!(!is_tag("src-0123456789abcdef"));
    }

    #[test]
    fn the_source_is_the_dockerfile_and_the_binary() {
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("bootstrap-copy");
        std::fs::write(&exe, b"\x7fELF not really").unwrap();
        let b = build(
            &ProjectId::parse("p-1234").unwrap(),
            &Region::parse("us-central1").unwrap(),
            None,
            exe.clone(),
            "0.1.0",
        );
        assert_eq!(
            b.image_name,
            "us-central1-docker.pkg.dev/p-1234/prefect/bootstrap-worker"
        );
        let c = context(&b, "0.1.0").unwrap();
        let paths: Vec<_> = c
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.mode))
            .collect();
        assert_eq!(paths, [("Dockerfile", 0o644), ("bootstrap", 0o755)]);
        // Another binary is another image; another version of the same bytes too.
        std::fs::write(&exe, b"\x7fELF another").unwrap();
        let other = context(&b, "0.1.0").unwrap();
        assert_ne!(c.digest, other.digest);
        assert_ne!(other.digest, context(&b, "0.2.0").unwrap().digest);
    }

    /// The running binary (this test's, about the size of a debug `bootstrap`) is hashed in
    /// well under a second: `plan` hashes it every time.
    #[test]
    fn hashing_the_running_binary_is_quick() {
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        let size = std::fs::metadata(&exe).unwrap().len();
        let b = build(
            &ProjectId::parse("p-1234").unwrap(),
            &Region::parse("us-central1").unwrap(),
            None,
            exe,
            VERSION,
        );
        // Warm the page cache as a second `plan` would find it.
        context(&b, VERSION).unwrap();
        let start = std::time::Instant::now();
        context(&b, VERSION).unwrap();
        let took = start.elapsed();
        let mb_per_s = size as f64 / 1e6 / took.as_secs_f64();
        eprintln!("hashed {size} bytes in {took:?} ({mb_per_s:.0} MB/s)");
        // 100 MB (a large debug binary) within a second, on a loaded shared machine.
        assert!(mb_per_s > 100.0, "{mb_per_s:.0} MB/s");
    }
}
