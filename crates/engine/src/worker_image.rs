//! The embedded worker's own image, built from the running `bootstrap` binary when the plan
//! names no `worker.image` (see `bootstrap_spec::worker_image` for the source and its tag).
//!
//! It is one more build of [`crate::builds`]: observed, planned and carried out as the
//! deployments' builds are (same repository, same grants, the same `BuildImage` step). What
//! is particular to it is here: the worker's service, worker pool and waker run the *tagged*
//! image, which is only known once the binary is hashed, so the planner plans against a copy
//! of the spec with the tag filled in; those steps wait for the build; and the plan says
//! which `bootstrap` version the image changes from and to.

use std::borrow::Cow;

use bootstrap_spec::build::{Build, DockerfileSpec};
use bootstrap_spec::ids::ImageRef;
use bootstrap_spec::{Spec, worker_image};

use super::observed::{BuiltImage, Observed};
use super::plan::{Action, Step};
use super::planner::addr;

/// Whether `build` is the worker's image (not a deployment's).
pub fn is_worker(build: &Build) -> bool {
    matches!(build.dockerfile, DockerfileSpec::Worker { .. })
}

/// The worker image's build of the plan, if it builds one.
pub fn build(spec: &Spec) -> Option<&Build> {
    spec.worker.as_ref().and_then(|w| w.build.as_ref())
}

/// Whether `tag` is a source tag of `build`'s kind (what the image ran before).
pub fn is_source_tag(build: &Build, tag: &str) -> bool {
    if is_worker(build) {
        worker_image::is_tag(tag)
    } else {
        tag.starts_with("src-")
    }
}

fn observed_image<'a>(spec: &Spec, observed: &'a Observed) -> Option<&'a BuiltImage> {
    let b = build(spec)?;
    observed.images.iter().find(|i| &i.build == b)
}

/// `spec` with the worker's image set to the tagged reference of the built image; unchanged
/// (borrowed) when the plan names its image or nothing was observed (destroy).
pub fn with_tagged_image<'a>(spec: &'a Spec, observed: &Observed) -> Cow<'a, Spec> {
    let Some(img) = observed_image(spec, observed) else {
        return Cow::Borrowed(spec);
    };
    let Ok(image) = ImageRef::parse(img.image_ref()) else {
        return Cow::Borrowed(spec);
    };
    let mut owned = spec.clone();
    if let Some(w) = owned.worker.as_mut() {
        w.image = image;
    }
    Cow::Owned(owned)
}

/// The worker's Cloud Run service or worker pool, and the waker service (all the Run
/// services and worker pools a plan has run this image), wait for its build.
pub fn wait_for_build(spec: &Spec, observed: &Observed, steps: &mut [Step]) {
    let Some(img) = observed_image(spec, observed) else {
        return;
    };
    let image = addr::image(&img.build.image_name);
    if !steps.iter().any(|s| s.address == image) {
        return;
    }
    for s in steps.iter_mut() {
        let runs_it = s.address.0.starts_with("gcp.run_service[")
            || s.address.0.starts_with("gcp.run_worker_pool[");
        if runs_it
            && matches!(s.action, Action::Create | Action::Update | Action::Replace)
            && !s.depends_on.contains(&image)
        {
            s.depends_on.push(image.clone());
        }
    }
}

/// Why the worker's image is built: first, a new `bootstrap` version, or another binary of
/// the same version (a local build).
pub fn reason(img: &BuiltImage) -> String {
    let DockerfileSpec::Worker { version } = &img.build.dockerfile else {
        return String::new();
    };
    match img.previous_tag.as_deref() {
        None => format!("first build of the worker image from bootstrap {version}"),
        Some(prev) => match worker_image::version_of(prev) {
            Some(old) if old != version => {
                format!(
                    "bootstrap {old} -> {version}: the worker image is rebuilt from this binary"
                )
            }
            _ => format!(
                "this bootstrap {version} binary differs from the one the worker image was built from ({prev})"
            ),
        },
    }
}
