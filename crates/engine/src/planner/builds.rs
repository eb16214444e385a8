//! Images built from folders: the Artifact Registry repository (created, adopted, destroyed
//! only when the tool made it), the job's read access and the build's push access to it, and
//! one build per stale source.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::super::builds::{READER_ROLE, WRITER_ROLE};
use super::super::observed::MARKER_LABEL;
use super::super::plan::{Action, FieldChange, Op, Step};
use super::{Builder, addr};

fn repositories_of(b: &Builder) -> BTreeSet<String> {
    b.observed
        .images
        .iter()
        .map(|i| i.build.repository.clone())
        .collect()
}

/// The members that push to `repo`: the build account of each image built into it.
fn writers_of(b: &Builder, repo: &str) -> BTreeSet<String> {
    b.observed
        .images
        .iter()
        .filter(|i| i.build.repository == repo)
        .map(|i| format!("serviceAccount:{}", i.build_account))
        .collect()
}

fn marked(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(MARKER_LABEL.0).map(String::as_str) == Some(MARKER_LABEL.1)
}

/// The repositories and, on each, `roles/artifactregistry.reader` for the job's service
/// account (on the repository only: least privilege, not project-wide).
pub(super) fn repositories(b: &mut Builder) {
    let member = b.spec.service_account.email.member();
    let region = b.spec.gcp.region.clone();
    for repo in repositories_of(b) {
        let address = addr::repository(&repo);
        let live = b.observed.repositories.get(&repo).cloned().flatten();
        match &live {
            None => {
                let mut labels = serde_json::Map::new();
                labels.insert(MARKER_LABEL.0.into(), json!(MARKER_LABEL.1));
                let depends_on = b.deps(&[addr::apis()]);
                b.push(Step {
                    changes: vec![
                        FieldChange::set("format", None, Some(json!("DOCKER"))),
                        FieldChange::set("location", None, Some(json!(region.as_str()))),
                    ],
                    depends_on,
                    ..Step::new(
                        address.clone(),
                        Action::Create,
                        Op::CreateRepository {
                            repository: repo.clone(),
                            region: region.clone(),
                            labels,
                        },
                    )
                });
            }
            Some(r) => {
                if !marked(&r.labels) {
                    b.adopted.push(address.clone());
                }
                b.unchanged(address.clone());
            }
        }
        let iam = addr::repository_iam(&repo);
        // The job's account pulls; the builds' account pushes. Each gets its role on this
        // repository only.
        let writers = writers_of(b, &repo);
        let mut add: Vec<(String, String)> = Vec::new();
        if !live.as_ref().is_some_and(|r| r.readers.contains(&member)) {
            add.push((READER_ROLE.to_owned(), member.clone()));
        }
        for w in writers {
            if !live.as_ref().is_some_and(|r| r.writers.contains(&w)) {
                add.push((WRITER_ROLE.to_owned(), w));
            }
        }
        if add.is_empty() {
            b.unchanged(iam);
            continue;
        }
        let depends_on = b.deps(&[address, addr::service_account(b.spec)]);
        let changes = add
            .iter()
            .map(|(role, m)| FieldChange::set(role, None, Some(json!(m))))
            .collect();
        b.push(Step {
            changes,
            depends_on,
            ..Step::new(
                iam,
                Action::upsert(live.is_some()),
                Op::EditRepositoryPolicy {
                    repository: repo,
                    add,
                    remove: Vec::new(),
                },
            )
        });
    }
}

/// One build step per source whose tag is not in the repository yet.
pub(super) fn images(b: &mut Builder) {
    for img in b.observed.images.clone() {
        let address = addr::image(&img.build.image_name);
        if img.present {
            b.unchanged(address);
            continue;
        }
        let old = img
            .previous_tag
            .as_ref()
            .map(|t| Value::String(format!("{}:{t}", img.build.image_name)));
        let worker = crate::worker_image::is_worker(&img.build);
        let (action, reason) = match &old {
            _ if worker => (
                Action::upsert(old.is_some()),
                crate::worker_image::reason(&img),
            ),
            None => (
                Action::Create,
                format!(
                    "first build of {} ({} files)",
                    img.build.context_shown, img.files
                ),
            ),
            // The registry keeps no file list of the last build, so which files changed is
            // not known without state; that the source differs is.
            Some(_) => (
                Action::Update,
                format!(
                    "source changed ({} files in {}; no image tagged {} yet)",
                    img.files, img.build.context_shown, img.tag
                ),
            ),
        };
        // After the grant: the build pushes as `build_account`.
        let depends_on = b.deps(&[
            addr::apis(),
            addr::repository(&img.build.repository),
            addr::repository_iam(&img.build.repository),
        ]);
        b.push(Step {
            changes: vec![FieldChange::set("image", old, Some(json!(img.image_ref())))],
            reason: Some(reason),
            depends_on,
            ..Step::new(
                address,
                action,
                Op::BuildImage {
                    image: img.image_ref(),
                    digest: img.digest.clone(),
                    files: img.files,
                    build: img.build.clone(),
                    service_account: Some(img.build_account.clone()),
                },
            )
        });
    }
}

/// Destroy: a repository the tool made goes (with its images and policy); one it adopted
/// stays, with only the reader grant of the plan removed.
pub(super) fn destroy_repositories(b: &mut Builder) {
    let member = b.spec.service_account.email.member();
    for repo in repositories_of(b) {
        let Some(Some(live)) = b.observed.repositories.get(&repo).cloned() else {
            continue;
        };
        let address = addr::repository(&repo);
        if marked(&live.labels) {
            b.push(Step {
                reason: Some("made by bootstrap; its images go with it".into()),
                ..Step::new(
                    address,
                    Action::Delete,
                    Op::DeleteRepository { repository: repo },
                )
            });
        } else {
            b.adopted.push(address);
            let mut remove: Vec<(String, String)> = Vec::new();
            if live.readers.contains(&member) {
                remove.push((READER_ROLE.to_owned(), member.clone()));
            }
            let writers = writers_of(b, &repo).into_iter();
            remove.extend(
                writers
                    .filter(|w| live.writers.contains(w))
                    .map(|w| (WRITER_ROLE.to_owned(), w)),
            );
            if !remove.is_empty() {
                let changes = remove
                    .iter()
                    .map(|(role, m)| FieldChange::set(role, Some(json!(m)), None))
                    .collect();
                b.push(Step {
                    changes,
                    reason: Some("the repository was not made by bootstrap and stays".into()),
                    ..Step::new(
                        addr::repository_iam(&repo),
                        Action::Delete,
                        Op::EditRepositoryPolicy {
                            repository: repo,
                            add: Vec::new(),
                            remove,
                        },
                    )
                });
            }
        }
    }
}
