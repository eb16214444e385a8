//! A service container kept running: readiness, restart with backoff, stop.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ExecutorConfig;
use super::logs::{LogBuffer, Stream};
use super::process::{self, Launch, Running};

/// How readiness is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The container accepts TCP connections on `PORT` (Cloud Run's default startup probe).
    Tcp,
    /// `GET http://127.0.0.1:$PORT{path}` answers 2xx or 3xx.
    Http {
        /// The request path, e.g. `/health`.
        path: String,
    },
    /// Ready as soon as the process runs.
    None,
}

/// Where a service's container stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Started (or restarted), not ready yet.
    Starting {
        /// Restarts so far.
        restarts: u32,
    },
    /// Passing its readiness probe.
    Ready {
        /// Restarts so far.
        restarts: u32,
        /// The current process id.
        pid: Option<i32>,
    },
    /// Never became ready; the sandbox gave up (the revision fails).
    Failed {
        /// Why, in Cloud Run's words.
        message: String,
    },
    /// Stopped on request.
    Stopped,
}

/// A running service container; dropping it stops the container.
#[derive(Debug)]
pub struct ServiceHandle {
    state: watch::Receiver<ServiceState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    port: u16,
    logs: LogBuffer,
}

impl ServiceHandle {
    /// The current state.
    pub fn state(&self) -> ServiceState {
        self.state.borrow().clone()
    }

    /// The host loopback port that reaches the container's `PORT` (the same port without
    /// namespaces).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The container's logs.
    pub fn logs(&self) -> &LogBuffer {
        &self.logs
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<ServiceState> {
        self.state.clone()
    }

    /// Waits until the service is ready, failed or stopped, for at most `deadline`; returns
    /// the state then.
    pub async fn settled(&self, deadline: Duration) -> ServiceState {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(|s| !matches!(s, ServiceState::Starting { .. }));
        match tokio::time::timeout(deadline, wait).await {
            Ok(Ok(state)) => state.clone(),
            _ => self.state(),
        }
    }

    /// Stops the container (SIGTERM, then SIGKILL after the grace) and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        // The supervisor sees this and kills the group; kill_on_drop covers a dead runtime.
        self.stop.cancel();
    }
}

pub(crate) fn start(
    config: Arc<ExecutorConfig>,
    launch: Launch,
    probe: Probe,
    startup_deadline: Duration,
    logs: LogBuffer,
) -> std::io::Result<ServiceHandle> {
    start_with(config, launch, probe, startup_deadline, logs, true)
}

/// Starts a container kept running; `port_contract` says whether it gets `PORT` (services do;
/// worker-pool instances do not: they serve no requests).
pub(crate) fn start_with(
    config: Arc<ExecutorConfig>,
    mut launch: Launch,
    probe: Probe,
    startup_deadline: Duration,
    logs: LogBuffer,
    port_contract: bool,
) -> std::io::Result<ServiceHandle> {
    // With a namespace the container owns 8080 and the host reaches it through `port`; on
    // loopback `PORT` is a free host port.
    let executor = super::Executor {
        config: config.clone(),
    };
    let mut attached = executor.attach(&launch).map_err(std::io::Error::other)?;
    let (port, container_port) = if !port_contract {
        (0, 0)
    } else {
        match attached.as_mut() {
            Some(a) => (a.expose()?, super::CONTAINER_PORT),
            None => {
                let p = free_port()?;
                (p, p)
            }
        }
    };
    if port_contract {
        launch
            .env
            .push(("PORT".to_string(), container_port.to_string()));
    }
    let (tx, rx) = watch::channel(ServiceState::Starting { restarts: 0 });
    let stop = CancellationToken::new();
    let sup = Supervisor {
        config,
        launch,
        probe,
        startup_deadline,
        logs: logs.clone(),
        port,
        container_port,
        attached,
        tx,
        stop: stop.clone(),
    };
    let task = tokio::spawn(sup.run());
    Ok(ServiceHandle {
        state: rx,
        stop,
        task: Some(task),
        port,
        logs,
    })
}

fn free_port() -> std::io::Result<u16> {
    // Bind, read the port, release: the container binds it next.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

struct Supervisor {
    config: Arc<ExecutorConfig>,
    launch: Launch,
    probe: Probe,
    startup_deadline: Duration,
    logs: LogBuffer,
    port: u16,
    /// `PORT` as the container sees it.
    container_port: u16,
    /// The namespace, kept across restarts and dropped with the supervisor.
    attached: Option<super::Attached>,
    tx: watch::Sender<ServiceState>,
    stop: CancellationToken,
}

enum Outcome {
    Stop,
    Exited,
    ProbeFailed,
}

impl Supervisor {
    async fn run(self) {
        let mut restarts: u32 = 0;
        let mut ever_ready = false;
        loop {
            let mut running = match process::spawn(
                &self.config.images,
                &self.config.key_dir,
                &self.launch,
                &self.logs,
                self.attached.as_ref(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    // A container that cannot start at all will not start on retry either.
                    let message = e.to_string();
                    self.logs.push(Stream::System, message.clone());
                    self.tx.send_replace(ServiceState::Failed { message });
                    return;
                }
            };
            let outcome = self.watch_one(&mut running, restarts).await;
            match outcome {
                (Outcome::Stop, _) => {
                    let _ = running.terminate(self.config.grace).await;
                    self.logs.push(Stream::System, "Container stopped.");
                    self.tx.send_replace(ServiceState::Stopped);
                    return;
                }
                (Outcome::ProbeFailed, ready) => {
                    ever_ready |= ready;
                    let _ = running.terminate(self.config.grace).await;
                    if !ever_ready {
                        self.fail(format!(
                            "The user-provided container failed to start and listen on the port defined provided by the PORT={} environment variable within the allocated timeout.",
                            self.container_port
                        ));
                        return;
                    }
                }
                (Outcome::Exited, ready) => {
                    ever_ready |= ready;
                    if !ever_ready {
                        let last = self
                            .logs
                            .lines()
                            .last()
                            .map(|l| l.text.clone())
                            .unwrap_or_default();
                        self.fail(format!(
                            "The user-provided container failed to start and listen on the port defined provided by the PORT={} environment variable. {last}",
                            self.container_port
                        ));
                        return;
                    }
                }
            }
            restarts = restarts.saturating_add(1);
            self.tx.send_replace(ServiceState::Starting { restarts });
            let delay = backoff(self.config.restart_base, self.config.restart_max, restarts);
            self.logs.push(
                Stream::System,
                format!("Restarting container in {} ms.", delay.as_millis()),
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => {
                    self.tx.send_replace(ServiceState::Stopped);
                    return;
                }
            }
        }
    }

    fn fail(&self, message: String) {
        self.logs.push(Stream::System, message.clone());
        self.tx.send_replace(ServiceState::Failed { message });
    }

    /// Watches one process until it exits, fails its probe, or a stop is asked; the bool
    /// says whether it was ready at some point.
    async fn watch_one(&self, running: &mut Running, restarts: u32) -> (Outcome, bool) {
        let pid = running.pid();
        // Inside the namespace, as Cloud Run probes the container (the host-side forwarder
        // accepts whether or not the container listens).
        let target = match &self.attached {
            Some(a) => Target::Netns(a.netns().clone()),
            None => Target::Host(self.port),
        };
        let probe = probe_until(&self.probe, &target, self.startup_deadline);
        tokio::pin!(probe);
        let mut ready = false;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return (Outcome::Stop, ready),
                status = running.wait() => {
                    let text = match status {
                        Ok(s) => process::describe(&s),
                        Err(e) => format!("waiting for the container failed: {e}"),
                    };
                    self.logs.push(Stream::System, text);
                    return (Outcome::Exited, ready);
                }
                ok = &mut probe, if !ready => {
                    if !ok {
                        return (Outcome::ProbeFailed, ready);
                    }
                    ready = true;
                    self.tx.send_replace(ServiceState::Ready { restarts, pid });
                }
            }
        }
    }
}

/// Where a probe connects.
enum Target {
    /// The host's loopback port.
    Host(u16),
    /// `127.0.0.1:8080` inside the namespace.
    Netns(std::sync::Arc<crate::netns::Netns>),
}

impl Target {
    fn port(&self) -> u16 {
        match self {
            Target::Host(p) => *p,
            Target::Netns(_) => super::CONTAINER_PORT,
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let timeout = Duration::from_secs(1);
        match self {
            Target::Host(p) => {
                match tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", *p))).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                }
            }
            Target::Netns(ns) => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], super::CONTAINER_PORT));
                ns.connect(addr, timeout).await
            }
        }
    }
}

/// Polls readiness until it passes (`true`) or `deadline` passes (`false`).
async fn probe_until(probe: &Probe, target: &Target, deadline: Duration) -> bool {
    let attempt = async {
        let mut delay = Duration::from_millis(50);
        loop {
            if probe_once(probe, target).await {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    };
    tokio::time::timeout(deadline, attempt).await.is_ok()
}

async fn probe_once(probe: &Probe, target: &Target) -> bool {
    let port = target.port();
    let connect = target.connect();
    match probe {
        Probe::None => true,
        Probe::Tcp => matches!(
            tokio::time::timeout(Duration::from_secs(1), connect).await,
            Ok(Ok(_))
        ),
        Probe::Http { path } => {
            let check = async {
                let mut stream = connect.await.ok()?;
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: GoogleHC/1.0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.ok()?;
                let mut head = [0u8; 16];
                let n = stream.read(&mut head).await.ok()?;
                // "HTTP/1.1 200 ..." — the status code is the second word.
                let line = String::from_utf8_lossy(&head[..n]).into_owned();
                let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some((200..400).contains(&code))
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(1), check).await,
                Ok(Some(true))
            )
        }
    }
}

/// Exponential backoff with full jitter in [d/2, d].
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let d = exp.min(max);
    let half = d / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..20 {
            let d = backoff(base, max, attempt);
            assert!(d <= max + Duration::from_millis(1), "{d:?}");
        }
        assert!(backoff(base, max, 1) <= Duration::from_millis(101));
        assert!(backoff(base, max, 10) >= Duration::from_millis(500));
    }
}
