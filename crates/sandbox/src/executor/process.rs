//! Starting one container process, reading its output, and stopping its whole group.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::images::{ImageMap, ResolveError};
use super::logs::{LogBuffer, Stream};
use super::network::Attached;

/// Host variables a local "container" keeps; everything else of the sandbox's own environment
/// is withheld, as a container would not see it.
const KEPT_HOST_VARS: &[&str] = &[
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
];

/// A service account the process runs as: a sandbox-issued key file in JSON.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The account's email.
    pub email: String,
    /// The key file's JSON (holds a private key).
    pub key_json: SecretString,
}

/// What to run: one container of a Run service revision or job task.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The container image.
    pub image: String,
    /// The container's `command` (replaces the image ENTRYPOINT).
    pub command: Vec<String>,
    /// The container's `args` (replace the image CMD).
    pub args: Vec<String>,
    /// Environment in order, later entries winning: Cloud Run's own variables, then the
    /// container's `env` with secret references already resolved.
    pub env: Vec<(String, String)>,
    /// The service account the container runs as.
    pub identity: Option<Identity>,
    /// What the metadata server inside the container's namespace reports.
    pub metadata: Option<super::network::MetadataIdentity>,
}

/// Why a process could not be started. Messages follow Cloud Run's.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The image or its program is unknown.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The program exists but could not be executed.
    #[error("The user-provided container failed to start: {program}: {source}")]
    Spawn {
        /// The local program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The container's network namespace could not be set up.
    #[error("The container's network could not be set up: {0}")]
    Network(#[from] crate::netns::NetnsError),
    /// The credentials file could not be written.
    #[error("cannot write the service account key file in {dir}")]
    Credentials {
        /// The directory.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A started process and what must live as long as it.
pub(crate) struct Running {
    pub(crate) child: Child,
    pgid: Option<Pid>,
    /// Descendants that left the group (pid, start time), remembered at the first signal.
    escaped: Vec<(i32, u64)>,
    /// The main process was waited for: its pid may now belong to another process.
    reaped: bool,
    readers: Vec<JoinHandle<()>>,
    // Removed from disk when dropped, i.e. when the process is done with it.
    _key: Option<tempfile::NamedTempFile>,
}

/// Starts `launch` in its own process group, its output going to `logs`.
pub(crate) fn spawn(
    images: &ImageMap,
    key_dir: &Path,
    launch: &Launch,
    logs: &LogBuffer,
    attached: Option<&Attached>,
) -> Result<Running, StartError> {
    let local = images.resolve(&launch.image, &launch.command, &launch.args)?;
    // As on Cloud Run, a container with a metadata server finds its identity there (no key
    // file); without one (loopback mode) a sandbox-issued key file stands in for it.
    let key = match &launch.identity {
        Some(identity) if !attached.is_some_and(Attached::serves_metadata) => {
            Some(write_key(key_dir, identity)?)
        }
        _ => None,
    };
    let mut cmd = match attached {
        // `ip netns exec` enters the namespace, bind-mounts `/etc/netns/<ns>/hosts` over
        // `/etc/hosts` in a private mount namespace, then execs the program (same pid, so the
        // process group below is still the container's).
        Some(a) => {
            let mut c = match super::binds::wrapper(&local.binds) {
                Some(mut w) => {
                    w.arg("ip");
                    w
                }
                None => Command::new("ip"),
            };
            c.args(["netns", "exec", a.netns().name()])
                .arg(&local.program);
            c
        }
        None => Command::new(&local.program),
    };
    cmd.args(&local.args)
        .current_dir(&local.workdir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in KEPT_HOST_VARS {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    let mut path = local.path.clone();
    if let Some(host) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&host));
    }
    if let Ok(joined) = std::env::join_paths(path) {
        cmd.env("PATH", joined);
    }
    cmd.envs(&local.image_env);
    if let Some(a) = attached {
        cmd.envs(a.trust_env().iter().map(|(k, v)| (k, v)));
    }
    cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
    if let Some(key) = &key {
        cmd.env("GOOGLE_APPLICATION_CREDENTIALS", key.path());
    }
    let mut child = cmd.spawn().map_err(|source| StartError::Spawn {
        program: local.program.display().to_string(),
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(out, Stream::Stdout, logs.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(err, Stream::Stderr, logs.clone())));
    }
    Ok(Running {
        child,
        pgid,
        escaped: Vec::new(),
        reaped: false,
        readers,
        _key: key,
    })
}

fn write_key(dir: &Path, identity: &Identity) -> Result<tempfile::NamedTempFile, StartError> {
    use std::io::Write;
    let err = |source| StartError::Credentials {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // tempfile creates the file 0600 on Unix: only the sandbox's user can read the key.
    let mut file = tempfile::Builder::new()
        .prefix(".sa-key-")
        .suffix(".json")
        .tempfile_in(dir)
        .map_err(err)?;
    file.write_all(identity.key_json.expose_secret().as_bytes())
        .and_then(|()| file.flush())
        .map_err(err)?;
    Ok(file)
}

async fn pump(reader: impl AsyncRead + Unpin, stream: Stream, logs: LogBuffer) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                logs.push(stream, line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

impl Running {
    /// The process id (also the process group id).
    pub(crate) fn pid(&self) -> Option<i32> {
        self.pgid.map(|p| p.as_raw_nonzero().get())
    }

    /// Sends `signal` to the whole group and to descendants that left it (a container stops
    /// as a whole: Prefect's `flow-run execute` starts its engine in a new session); a process
    /// already gone is not an error.
    fn signal(&mut self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // Found while the tree is intact: once their parent dies they belong to init.
            // Never after the main process was reaped: its pid is then free for reuse, and the
            // scan would find (and kill) the children of whatever process got it next.
            let scan = if self.reaped {
                Vec::new()
            } else {
                escaped_descendants(pgid.as_raw_nonzero().get())
            };
            for found in scan {
                if !self.escaped.contains(&found) {
                    self.escaped.push(found);
                }
            }
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
        for &(pid, start) in &self.escaped {
            // The same process only, not a later one that reused its pid.
            let Some((_, pgrp, started)) = proc_stat(pid) else {
                continue;
            };
            if started != start {
                continue;
            }
            if let Some(p) = Pid::from_raw(pid) {
                if pgrp == pid {
                    let _ = rustix::process::kill_process_group(p, signal);
                }
                let _ = rustix::process::kill_process(p, signal);
            }
        }
    }

    /// Waits for the main process, then kills what it left behind in its group (a container
    /// stops as a whole) and lets the output readers drain.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await;
        self.reaped = true;
        self.signal(Signal::KILL);
        self.drain().await;
        status
    }

    /// SIGTERM to the group, SIGKILL after `grace`, as Cloud Run stops a container.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        self.signal(Signal::TERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.signal(Signal::KILL);
                self.child.wait().await
            }
        };
        self.reaped = true;
        self.signal(Signal::KILL);
        self.drain().await;
        status
    }

    async fn drain(&mut self) {
        // Output pipes close when the group is gone; bound the wait anyway.
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
    }
}

/// `(parent, process group, start time)` of a process, from `/proc/{pid}/stat`.
fn proc_stat(pid: i32) -> Option<(i32, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // fields[0] is the state (field 3 of stat(5)), so starttime (field 22) is fields[19].
    Some((
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// Descendants of the group leader `root` that are not in its process group, with their start
/// times.
fn escaped_descendants(root: i32) -> Vec<(i32, u64)> {
    let procs: Vec<(i32, (i32, i32, u64))> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect();
    let mut tree = vec![root];
    let mut escaped = Vec::new();
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        for &(pid, (ppid, pgrp, start)) in &procs {
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
                if pgrp != root {
                    escaped.push((pid, start));
                }
            }
        }
        next += 1;
    }
    escaped
}

/// Describes an exit status the way Cloud Run's logs do.
pub(crate) fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("Container called exit({code})."),
        (None, Some(sig)) => format!("Container terminated on signal {sig}."),
        (None, None) => "Container exited.".to_string(),
    }
}
