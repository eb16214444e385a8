//! One Linux network namespace per Cloud Run container, as Cloud Run gives every instance its
//! own network: `PORT=8080` is the container's alone.
//!
//! How a container still reaches the host (chosen for having no moving parts: no veth, no
//! routes, no NAT, no iptables): a socket belongs to the network namespace it was *created*
//! in, not to the thread that later uses it. The sandbox creates listening sockets inside the
//! namespace (a short-lived thread enters it with `setns(2)`, binds, and hands the socket back)
//! and serves them from its ordinary tokio runtime:
//! - `127.0.0.1:<P>` inside forwards to `127.0.0.1:<P>` of the host, for the sandbox's port and
//!   every loopback port the container's env names (`PREFECT_API_URL=http://127.0.0.1:4200/api`
//!   works unchanged);
//! - `127.0.0.1:443` inside is the sandbox itself over TLS, and the namespace's
//!   `/etc/netns/<ns>/hosts` (bind-mounted over `/etc/hosts` by `ip netns exec`) maps Google's
//!   API host names there;
//! - `169.254.169.254:80` inside (an address on the namespace's own `lo`) is the metadata
//!   server, `metadata.google.internal` in the same hosts file.
//!
//! The host reaches the container's `8080` the same way in reverse (a socket created inside
//! connects to it). Namespaces are named `bsbx-<sandbox pid>-<n>`; each is deleted when its
//! container is done (also when the runtime drops its task at exit), and those of a dead sandbox process at
//! the next start ([`remove_stale`]).

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The prefix of every namespace the sandbox creates.
pub const PREFIX: &str = "bsbx-";

/// The metadata server's link-local address (`GCE_METADATA_IP`'s default in google-auth).
pub const METADATA_IP: [u8; 4] = [169, 254, 169, 254];

/// Host names that resolve to the sandbox inside a namespace: the global API hosts, the OAuth
/// token host, and Run's regional hosts (`{region}-run.googleapis.com`, the v1 API).
const GLOBAL_HOSTS: &[&str] = &[
    "run.googleapis.com",
    "oauth2.googleapis.com",
    "www.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "serviceusage.googleapis.com",
    "secretmanager.googleapis.com",
    "sts.googleapis.com",
    "logging.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
];

/// Why a namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` failed or is missing.
    #[error("`ip {args}` failed: {message}")]
    Ip {
        /// The arguments.
        args: String,
        /// stderr or the spawn error.
        message: String,
    },
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Ip {
            args: args.join(" "),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn live() -> &'static Mutex<HashSet<String>> {
    static LIVE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Whether this machine lets the sandbox create namespaces (root, `ip netns`): tried once by
/// creating and deleting one. `BOOTSTRAP_SANDBOX_NETNS=off` turns namespaces off.
pub fn available() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            if std::env::var("BOOTSTRAP_SANDBOX_NETNS").is_ok_and(|v| v == "off" || v == "0") {
                return Err("BOOTSTRAP_SANDBOX_NETNS=off".to_owned());
            }
            remove_stale();
            match Netns::create(&[]) {
                Ok(ns) => {
                    drop(ns);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .clone()
}

/// Deletes namespaces left by sandbox processes that no longer run.
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete(&name);
        }
    }
}

fn delete(name: &str) {
    let _ = ip(&["netns", "del", name]);
    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
}

/// A network namespace the sandbox made; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with `lo` up, the metadata address on it, and a hosts file mapping
    /// Google's API hosts to 127.0.0.1 and `metadata.google.internal` to the metadata address;
    /// `extra_hosts` are more names for 127.0.0.1.
    pub fn create(extra_hosts: &[String]) -> Result<Netns, NetnsError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Hosts file first: `ip netns exec` bind-mounts it when the directory exists.
        let dir = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&dir).map_err(|source| NetnsError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, hosts_file(extra_hosts)).map_err(|source| NetnsError::Io {
            what: format!("writing {}", hosts.display()),
            source,
        })?;
        if let Err(e) = ip(&["netns", "add", &name]) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        live()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ])?;
        Ok(ns)
    }

    /// The namespace's name (`ip netns exec <name> ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread that has entered the namespace; sockets it creates stay in
    /// the namespace after the thread ends.
    fn inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f()
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    }

    /// A non-blocking listening socket on `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let std_listener = self.inside(move || {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        tokio::net::TcpListener::from_std(std_listener)
    }

    /// Connects to `addr` as seen inside the namespace, within `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        // A blocking connect on its own thread (bounded by `timeout`): the thread entered the
        // namespace, so it must not be a runtime worker.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = (|| -> std::io::Result<TcpStream> {
                let file = std::fs::File::open(&path)?;
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let s = TcpStream::connect_timeout(&addr, timeout)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })();
            let _ = tx.send(result);
        });
        let stream = rx
            .await
            .map_err(|_| std::io::Error::other("namespace thread ended"))??;
        tokio::net::TcpStream::from_std(stream)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        live()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
        delete(&self.name);
    }
}

fn hosts_file(extra: &[String]) -> String {
    let mut text = String::from(
        "# Written by the bootstrap sandbox: Google's API hosts are the sandbox.\n\
         127.0.0.1 localhost\n::1 localhost ip6-localhost\n169.254.169.254 metadata.google.internal metadata\n",
    );
    let mut names: Vec<String> = GLOBAL_HOSTS.iter().map(|s| (*s).to_owned()).collect();
    names.extend(
        crate::hosts::REGIONS
            .iter()
            .map(|r| format!("{r}-run.googleapis.com")),
    );
    names.extend(extra.iter().cloned());
    for chunk in names.chunks(8) {
        text.push_str("127.0.0.1 ");
        text.push_str(&chunk.join(" "));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_maps_google_and_metadata() {
        let text = hosts_file(&["extra.example".to_owned()]);
        assert!(text.contains("169.254.169.254 metadata.google.internal"));
        for name in [
            "run.googleapis.com",
            "us-central1-run.googleapis.com",
            "oauth2.googleapis.com",
            "iam.googleapis.com",
            "extra.example",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("127.0.0.1 ") && l.split(' ').any(|w| w == name)),
                "{name} missing from\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_namespace_has_its_own_port_and_is_removed_on_drop() {
        if available().is_err() {
            // Not root: the executor falls back to loopback ports (tested elsewhere).
            eprintln!("skipping: network namespaces unavailable");
            return;
        }
        let a = Netns::create(&[]).expect("create");
        let b = Netns::create(&[]).expect("create");
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        // Both can own 8080: each namespace has its own.
        let la = a.listen(addr).expect("listen a");
        let _lb = b.listen(addr).expect("listen b");
        let accept = tokio::spawn(async move { la.accept().await.map(|_| ()) });
        a.connect(addr, Duration::from_secs(2))
            .await
            .expect("connect inside a");
        accept.await.expect("join").expect("accepted");
        let name = a.name().to_owned();
        drop(a);
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
        assert!(!std::path::Path::new(&format!("/etc/netns/{name}")).exists());
    }
}
