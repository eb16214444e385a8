//! A container's network: its own namespace (see [`crate::netns`]) with the sandbox attached
//! inside it — loopback forwarders to the host, Google's hosts over TLS, the metadata server —
//! or, where namespaces are unavailable, the host's loopback with a random `PORT`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::netns::{METADATA_IP, Netns, NetnsError};
use crate::tls::SandboxTls;

/// The port Cloud Run gives every container (`PORT`).
pub const CONTAINER_PORT: u16 = 8080;

/// How containers are networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// One network namespace per container; `PORT=8080`.
    Namespaces,
    /// The host's loopback, a free port as `PORT` (no root, or turned off); the reason.
    Loopback(String),
}

impl NetworkMode {
    /// Namespaces when this process may create them; otherwise loopback, with a warning.
    pub fn detect() -> Self {
        match crate::netns::available() {
            Ok(()) => NetworkMode::Namespaces,
            Err(reason) => {
                static WARNED: OnceLock<()> = OnceLock::new();
                WARNED.get_or_init(|| {
                    tracing::warn!(
                        "sandbox containers share the host network (no per-container namespace: \
                         {reason}); each gets a random loopback PORT instead of 8080, and \
                         Google's host names and the metadata server are not reachable from \
                         them (run as root with `ip netns` for Cloud Run's contract)"
                    );
                });
                NetworkMode::Loopback(reason)
            }
        }
    }
}

/// Who the metadata server says the container is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataIdentity {
    /// The runtime service account's email.
    pub email: String,
    /// Project id.
    pub project_id: String,
    /// Project number.
    pub project_number: String,
    /// Region (`us-central1`).
    pub region: String,
    /// A stable id of this instance.
    pub instance_id: String,
}

/// What the sandbox serves inside every namespace; set once the sandbox's router exists.
#[derive(Clone)]
pub struct Gateway {
    /// The Google surface (served at `127.0.0.1:443` inside, over TLS).
    pub google: Router,
    /// The metadata server (at `169.254.169.254:80` inside); its handlers read a
    /// [`MetadataIdentity`] request extension.
    pub metadata: Router,
    /// The CA and server configuration.
    pub tls: SandboxTls,
    /// Host loopback ports always forwarded (the sandbox's own).
    pub host_ports: Vec<u16>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("tls", &self.tls)
            .field("host_ports", &self.host_ports)
            .finish_non_exhaustive()
    }
}

/// The gateway slot of an executor (filled by the server after start).
pub type GatewaySlot = Arc<OnceLock<Gateway>>;

/// A namespace with the sandbox attached; dropping it stops the attachments and deletes the
/// namespace.
#[derive(Debug)]
pub struct Attached {
    tasks: Vec<JoinHandle<()>>,
    ns: Arc<Netns>,
    trust: Vec<(String, String)>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Attached {
    /// Creates a namespace and attaches forwarders for `ports` (plus the gateway's), TLS and the
    /// metadata server for `identity`.
    pub fn new(
        gateway: Option<&Gateway>,
        ports: &[u16],
        identity: Option<MetadataIdentity>,
    ) -> Result<Attached, NetnsError> {
        let ns = Arc::new(Netns::create(&[])?);
        let io = |what: String| move |source| NetnsError::Io { what, source };
        let mut tasks = Vec::new();
        let mut all: Vec<u16> = ports.to_vec();
        if let Some(g) = gateway {
            all.extend(&g.host_ports);
        }
        all.sort_unstable();
        all.dedup();
        for port in all {
            if matches!(port, 0 | 80 | 443 | CONTAINER_PORT) {
                continue;
            }
            let listener = ns
                .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                .map_err(io(format!("forwarding port {port} into {}", ns.name())))?;
            tasks.push(tokio::spawn(forward_to_host(listener, port)));
        }
        let mut trust = Vec::new();
        if let Some(g) = gateway {
            let listener = ns
                .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 443)))
                .map_err(io(format!("serving TLS in {}", ns.name())))?;
            tasks.push(tokio::spawn(serve_tls(
                listener,
                g.google.clone(),
                tokio_rustls::TlsAcceptor::from(g.tls.server.clone()),
            )));
            let listener = ns
                .listen(SocketAddr::from((METADATA_IP, 80)))
                .map_err(io(format!("serving metadata in {}", ns.name())))?;
            let router = g
                .metadata
                .clone()
                .layer(axum::Extension(identity.unwrap_or_default()));
            tasks.push(tokio::spawn(serve_plain(listener, router)));
            trust = g.tls.trust_env();
        }
        Ok(Attached { tasks, ns, trust })
    }

    /// The namespace.
    pub fn netns(&self) -> &Arc<Netns> {
        &self.ns
    }

    /// Whether the namespace has the metadata server (and Google's hosts).
    pub fn serves_metadata(&self) -> bool {
        !self.trust.is_empty()
    }

    /// The trust variables (CA bundle) for the container's env.
    pub fn trust_env(&self) -> &[(String, String)] {
        &self.trust
    }

    /// Listens on a free host loopback port and forwards each connection to the container's
    /// `PORT` inside; returns the host port.
    pub fn expose(&mut self) -> std::io::Result<u16> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let listener = TcpListener::from_std(std_listener)?;
        let ns = self.ns.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let ns = ns.clone();
                tokio::spawn(async move {
                    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, CONTAINER_PORT));
                    if let Ok(mut outbound) = ns.connect(target, Duration::from_secs(5)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        Ok(port)
    }
}

/// Host loopback ports named in env values (`http://127.0.0.1:4200/api`, `localhost:8000`).
pub fn loopback_ports<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<u16> {
    let mut ports = Vec::new();
    for v in values {
        for host in ["127.0.0.1:", "localhost:"] {
            let mut rest = v;
            while let Some(i) = rest.find(host) {
                rest = &rest[i + host.len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(p) = digits.parse::<u16>() {
                    ports.push(p);
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

async fn forward_to_host(listener: TcpListener, port: u16) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
            if let Ok(Ok(mut outbound)) =
                tokio::time::timeout(Duration::from_secs(10), connect).await
            {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn serve_tls(listener: TcpListener, router: Router, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            if let Ok(Ok(tls)) = handshake.await {
                serve_connection(tls, router).await;
            }
        });
    }
}

async fn serve_plain(listener: TcpListener, router: Router) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(serve_connection(stream, router.clone()));
    }
}

async fn serve_connection<S>(io: S, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move { router.oneshot(req.map(axum::body::Body::new)).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ports_are_read_from_urls() {
        assert_eq!(
            loopback_ports([
                "http://127.0.0.1:4200/api",
                "x",
                "localhost:99 and 127.0.0.1:4200",
                "127.0.0.1:",
            ]),
            vec![99, 4200]
        );
    }
}
