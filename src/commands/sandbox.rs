//! `bootstrap sandbox`: runs the `bootstrap-sandbox` binary (crate `gcp-sandbox`) that sits
//! next to this one, with the same flags. The emulator is a binary of its own so that the
//! release `bootstrap` and the worker image do not carry it (RSA keys, a process executor).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, anyhow};

use crate::cli::{GlobalArgs, SandboxArgs};

/// The sandbox binary's file name.
pub const SANDBOX_BIN: &str = "bootstrap-sandbox";

/// Replaces this process with the sandbox (same pid, so scripts that kill it still work).
pub fn run(args: &SandboxArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let me = std::env::current_exe().context("cannot find the running bootstrap binary")?;
    let sandbox = sibling(&me)?;
    let mut cmd = Command::new(&sandbox);
    cmd.args(argv(args, global, &me));
    exec(cmd, &sandbox)
}

/// `bootstrap-sandbox` in the directory of `me`, or an error that says how to build it.
fn sibling(me: &Path) -> Result<PathBuf> {
    let path = me.with_file_name(format!("{SANDBOX_BIN}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(anyhow!(
            "`bootstrap sandbox` runs the `{SANDBOX_BIN}` binary, and there is none at {} \
             (hint: build it next to bootstrap with `cargo build -p gcp-sandbox`, adding \
             `--release` for target/release, or `cargo install --path crates/sandbox`)",
            path.display()
        ))
    }
}

/// The sandbox's command line for these flags; `${bootstrap}` in image rules names `me`.
pub fn argv(args: &SandboxArgs, global: &GlobalArgs, me: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: OsString| {
        out.push(name.into());
        out.push(value);
    };
    flag("--port", args.port.to_string().into());
    flag("--dir", args.dir.clone().into());
    for p in &args.projects {
        flag("--project", p.into());
    }
    if let Some(f) = &args.faults {
        flag("--faults", f.into());
    }
    for api in &args.enable_apis {
        flag("--enable-api", api.into());
    }
    if let Some(images) = &args.images {
        flag("--images", images.clone().into());
    }
    flag("--op-delay", (&args.op_delay).into());
    flag("--consistency-delay", (&args.consistency_delay).into());
    flag("--bootstrap-bin", me.into());
    if args.disable_key_creation {
        out.push("--disable-key-creation".into());
    }
    if args.persist {
        out.push("--persist".into());
    }
    if let Some(dir) = &args.gcloud_config {
        flag_gcloud(&mut out, dir, &args.gcloud_region);
    }
    for _ in 0..global.verbose {
        out.push("--verbose".into());
    }
    if global.quiet {
        out.push("--quiet".into());
    }
    out
}

fn flag_gcloud(out: &mut Vec<OsString>, dir: &Path, region: &str) {
    out.push("--gcloud-config".into());
    out.push(dir.into());
    out.push("--gcloud-region".into());
    out.push(region.into());
}

#[cfg(unix)]
fn exec(mut cmd: Command, sandbox: &Path) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    // Only returns on failure.
    let err = cmd.exec();
    Err(anyhow!(err).context(format!("cannot run {}", sandbox.display())))
}

#[cfg(not(unix))]
fn exec(mut cmd: Command, sandbox: &Path) -> Result<ExitCode> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", sandbox.display()))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The flags `bootstrap sandbox` accepts reach the sandbox binary with the same meaning.
    #[test]
    fn every_flag_reaches_the_sandbox_binary() {
        let cli = crate::cli::Cli::try_parse_from([
            "bootstrap",
            "-vv",
            "sandbox",
            "--port",
            "0",
            "--dir",
            "/tmp/sb",
            "--project",
            "p-1",
            "--project",
            "p-2",
            "--faults",
            "seed=7,rate=0.2",
            "--enable-api",
            "run.googleapis.com",
            "--images",
            "rules.yaml",
            "--op-delay",
            "2s",
            "--consistency-delay",
            "0",
            "--disable-key-creation",
            "--persist",
        ])
        .expect("bootstrap flags");
        let crate::cli::Command::Sandbox(args) = &cli.command else {
            panic!("not the sandbox command");
        };
        let mut line = vec![OsString::from(SANDBOX_BIN)];
        line.extend(argv(args, &cli.global, Path::new("/opt/bootstrap")));
        let parsed = gcp_sandbox::cli::Args::try_parse_from(line).expect("sandbox flags");
        assert_eq!(parsed.port, 0);
        assert_eq!(parsed.dir, PathBuf::from("/tmp/sb"));
        assert_eq!(parsed.projects, ["p-1", "p-2"]);
        assert_eq!(parsed.faults.as_deref(), Some("seed=7,rate=0.2"));
        assert_eq!(parsed.enable_apis, ["run.googleapis.com"]);
        assert_eq!(parsed.images, Some(PathBuf::from("rules.yaml")));
        assert_eq!(parsed.op_delay, "2s");
        assert_eq!(parsed.consistency_delay, "0");
        assert!(parsed.disable_key_creation && parsed.persist);
        assert_eq!(parsed.bootstrap_bin, Some(PathBuf::from("/opt/bootstrap")));
        assert_eq!((parsed.verbose, parsed.quiet), (2, false));
    }

    #[test]
    fn a_missing_sandbox_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("dir");
        let err = sibling(&dir.path().join("bootstrap")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("cargo build -p gcp-sandbox"), "{text}");
    }
}
