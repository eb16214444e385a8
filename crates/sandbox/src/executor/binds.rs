//! A built image's files at the paths its Dockerfile gave them.
//!
//! The sandbox has no image filesystem: a built image's `WORKDIR` is a host folder under the
//! builder's image root. Programs that change into the container path by name (Prefect's pull
//! step `set_working_directory: /opt/prefect/<name>`, which `dockerfile: auto` deployments run
//! before loading their flow) need the folder there. So the container runs in a private mount
//! namespace (`unshare --mount --propagation private`, nothing leaks to the host's mounts or
//! to other containers, which may run another build of the same path) where the folder is
//! bind-mounted at its container path, and starts there, as Docker starts in `WORKDIR`.
//!
//! This needs root, as the per-container network namespaces do, and is used with them. The
//! mount points are created on the host when missing (empty folders, left in place, like the
//! sandbox's `/etc/hosts` names).

use std::path::PathBuf;

use tokio::process::Command;

/// Binds each `(host, container)` pair, changes into the last container path, then execs the
/// rest of its arguments. Run by `/bin/sh` with `N h1 c1 ... hN cN program args...`.
const SCRIPT: &str = r#"n=$1; shift
while [ "$n" -gt 0 ]; do
  mount --bind "$1" "$2" || { echo "sandbox: cannot show $1 at $2" >&2; exit 127; }
  dir=$2; shift 2; n=$((n - 1))
done
cd "$dir" || exit 127
exec "$@""#;

/// The command prefix that shows `binds` and then runs the program appended to it, or `None`
/// when there is nothing to bind.
pub(crate) fn wrapper(binds: &[(PathBuf, PathBuf)]) -> Option<Command> {
    if binds.is_empty() {
        return None;
    }
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(SCRIPT)
        .arg("sh")
        .arg(binds.len().to_string());
    for (host, container) in binds {
        if !container.exists() {
            // A failure shows in the container's log through `mount`'s own message.
            let _ = std::fs::create_dir_all(container);
        }
        c.arg(host).arg(container);
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_binds_no_wrapper() {
        assert!(wrapper(&[]).is_none());
    }

    /// The script itself, without the mount (which needs root): argument order and the final
    /// exec in the last directory.
    #[test]
    fn the_script_binds_in_order_and_execs_in_the_last_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let log = t.path().join("mounts");
        let fake = t.path().join("mount");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let out = std::process::Command::new("/bin/sh")
            .env("PATH", format!("{}:/usr/bin:/bin", t.path().display()))
            .arg("-c")
            .arg(SCRIPT)
            .arg("sh")
            .arg("2")
            .args(["/h1", "/", "/h2"])
            .arg(t.path())
            .args(["/bin/sh", "-c", "pwd"])
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            t.path().display().to_string()
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            format!("--bind /h1 /\n--bind /h2 {}\n", t.path().display())
        );
    }
}
