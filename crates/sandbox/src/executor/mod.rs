//! Runs Cloud Run containers as local processes.
//!
//! A container image is mapped to a local command by an [`ImageMap`]; a job task runs once
//! to an exit code ([`Executor::run_task`]), a service revision is kept running and
//! restarted ([`Executor::start_service`]). Every process gets its own process group so that
//! a timeout or a cancel stops everything the container started.

mod binds;
mod images;
mod logs;
mod network;
mod process;
mod service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use images::{
    BuiltImage, BuiltImages, ImageMap, ImageMapFile, ImageRule, LoadError, LocalCommand, Patterns,
    Placeholders, ResolveError,
};
pub use logs::{DEFAULT_LOG_LIMIT, LogBuffer, LogLine, Stream};
pub use network::{
    Attached, CONTAINER_PORT, Gateway, GatewaySlot, MetadataIdentity, NetworkMode, loopback_ports,
};
pub use process::{Identity, Launch, StartError};
pub use service::{Probe, ServiceHandle, ServiceState};
pub use tokio_util::sync::CancellationToken;

/// How the executor behaves.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Image → local command table.
    pub images: ImageMap,
    /// Where key files for `GOOGLE_APPLICATION_CREDENTIALS` are written (inside the sandbox dir).
    pub key_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when stopping a container (Cloud Run gives 10 s).
    pub grace: Duration,
    /// Bytes of output kept per execution or service.
    pub log_limit: usize,
    /// First delay before restarting a service's process; doubles up to `restart_max`.
    pub restart_base: Duration,
    /// Longest delay between restarts.
    pub restart_max: Duration,
    /// One namespace per container (Cloud Run's contract) or the host's loopback.
    pub network: NetworkMode,
    /// What the sandbox serves inside each namespace (filled in once the server runs).
    pub gateway: GatewaySlot,
}

impl ExecutorConfig {
    /// Defaults with `images` and key files under `sandbox_dir`.
    pub fn new(images: ImageMap, sandbox_dir: impl Into<PathBuf>) -> Self {
        Self {
            images,
            key_dir: sandbox_dir.into().join("keys"),
            grace: Duration::from_secs(10),
            log_limit: DEFAULT_LOG_LIMIT,
            restart_base: Duration::from_secs(1),
            restart_max: Duration::from_secs(30),
            network: NetworkMode::detect(),
            gateway: GatewaySlot::default(),
        }
    }
}

/// How one task attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal (not by us).
    Signaled(i32),
    /// The attempt ran past its timeout and was killed.
    TimedOut,
    /// The attempt was cancelled and killed.
    Cancelled,
    /// The container never started (unknown image, missing program, ...).
    FailedToStart(String),
}

impl TaskEnd {
    /// Whether the task attempt succeeded (exit code 0).
    pub fn succeeded(&self) -> bool {
        matches!(self, TaskEnd::Exited(0))
    }

    /// A one-line description in Cloud Run's words.
    pub fn message(&self) -> String {
        match self {
            TaskEnd::Exited(0) => "Task completed successfully.".to_string(),
            TaskEnd::Exited(code) => {
                format!("The container exited with an error. Container called exit({code}).")
            }
            TaskEnd::Signaled(sig) => format!("The container was terminated by signal {sig}."),
            TaskEnd::TimedOut => "The configured timeout was reached.".to_string(),
            TaskEnd::Cancelled => "The task was cancelled.".to_string(),
            TaskEnd::FailedToStart(message) => message.clone(),
        }
    }
}

/// Starts and stops container processes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    config: Arc<ExecutorConfig>,
}

impl Executor {
    /// An executor with this configuration.
    pub fn new(config: ExecutorConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// A fresh log buffer with the configured bound.
    pub fn new_logs(&self) -> LogBuffer {
        LogBuffer::new(self.config.log_limit)
    }

    /// Whether a container could start, without starting it (used at create time to fail a
    /// job whose image maps to nothing, as Google's `CONTAINER_MISSING`).
    pub fn check(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
    ) -> Result<LocalCommand, ResolveError> {
        self.config.images.resolve(image, command, args)
    }

    /// Whether an image can run at all (the create-time `CONTAINER_MISSING` check).
    pub fn knows(&self, image: &str) -> bool {
        self.config.images.knows(image)
    }

    /// Runs one task attempt to its end: exit, `timeout`, or `cancel`.
    pub async fn run_task(
        &self,
        launch: &Launch,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
        logs: &LogBuffer,
    ) -> TaskEnd {
        let fail = |message: String| {
            logs.push(Stream::System, message.clone());
            TaskEnd::FailedToStart(message)
        };
        // Lives as long as the attempt: dropped after the process is gone.
        let attached = match self.attach(launch) {
            Ok(a) => a,
            Err(e) => return fail(process::StartError::from(e).to_string()),
        };
        let mut running = match process::spawn(
            &self.config.images,
            &self.config.key_dir,
            launch,
            logs,
            attached.as_ref(),
        ) {
            Ok(r) => r,
            Err(e) => return fail(e.to_string()),
        };
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let grace = self.config.grace;
        let end = tokio::select! {
            status = running.wait() => match status {
                Ok(status) => {
                    logs.push(Stream::System, process::describe(&status));
                    exit_kind(&status)
                }
                Err(e) => TaskEnd::FailedToStart(format!("waiting for the container failed: {e}")),
            },
            () = deadline => {
                logs.push(Stream::System, "Terminating task: the configured timeout was reached.");
                let _ = running.terminate(grace).await;
                TaskEnd::TimedOut
            }
            () = cancel.cancelled() => {
                logs.push(Stream::System, "Terminating task: the execution was cancelled.");
                let _ = running.terminate(grace).await;
                TaskEnd::Cancelled
            }
        };
        end
    }

    /// The container's own namespace with the sandbox attached (forwarders for the loopback
    /// ports its env names, TLS for Google's hosts, metadata), or `None` on loopback.
    pub(crate) fn attach(
        &self,
        launch: &Launch,
    ) -> Result<Option<Attached>, crate::netns::NetnsError> {
        if self.config.network != NetworkMode::Namespaces {
            return Ok(None);
        }
        let ports = loopback_ports(launch.env.iter().map(|(_, v)| v.as_str()));
        Attached::new(self.config.gateway.get(), &ports, launch.metadata.clone()).map(Some)
    }

    /// Starts a service container that is kept running until the handle is stopped or
    /// dropped. With namespaces `PORT` is 8080 inside the container's own namespace and
    /// [`ServiceHandle::port`] a host loopback port forwarded to it; on loopback `PORT` is a
    /// free host port. Readiness comes from `probe`, which must pass within
    /// `startup_deadline`.
    pub fn start_service(
        &self,
        launch: Launch,
        probe: Probe,
        startup_deadline: Duration,
        logs: LogBuffer,
    ) -> std::io::Result<ServiceHandle> {
        service::start(self.config.clone(), launch, probe, startup_deadline, logs)
    }

    /// Starts a worker-pool instance: kept running and restarted like a service container, in
    /// its own namespace, but with no `PORT` and no probe (worker pools serve no requests;
    /// <https://cloud.google.com/run/docs/container-contract>). Ready once the process runs;
    /// [`ServiceHandle::port`] is 0.
    pub fn start_instance(
        &self,
        launch: Launch,
        logs: LogBuffer,
    ) -> std::io::Result<ServiceHandle> {
        service::start_with(
            self.config.clone(),
            launch,
            Probe::None,
            Duration::from_secs(1),
            logs,
            false,
        )
    }
}

fn exit_kind(status: &std::process::ExitStatus) -> TaskEnd {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => TaskEnd::Exited(code),
        (None, Some(sig)) => TaskEnd::Signaled(sig),
        (None, None) => TaskEnd::Exited(-1),
    }
}

#[cfg(test)]
mod tests;
