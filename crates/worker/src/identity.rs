//! The worker's default name: unique per instance, stable across restarts of the same instance.
//!
//! Adoption of PENDING runs after a restart is keyed on the name (`Claimed by worker <name>`),
//! so two live instances must never share one: on Cloud Run every instance of a service may
//! report the same hostname, so the name comes from the metadata server's `instance/id`
//! (<https://cloud.google.com/run/docs/container-contract#metadata-server>), read with
//! `Metadata-Flavor: Google` and a bounded timeout. Elsewhere it is the hostname plus a suffix
//! derived from the machine id, stable for the machine and different between machines that
//! happen to share a hostname. (Prefect's worker takes a fresh uuid per process and never
//! adopts; this worker adopts, so the name must survive a restart.)

use std::time::Duration;

/// Longest wait for the metadata server.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// 64-bit FNV-1a, as hex: a short, stable digest (not a security boundary).
fn digest(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The name from what is known of the instance.
pub fn name_from(instance_id: Option<&str>, host: &str, machine_id: Option<&str>) -> String {
    match instance_id.map(str::trim).filter(|i| !i.is_empty()) {
        Some(id) => format!("bootstrap-{}", digest(&[id])),
        None => {
            let suffix = digest(&[machine_id.unwrap_or("").trim(), host]);
            format!("bootstrap-{host}-{}", &suffix[..8])
        }
    }
}

/// The metadata server's host when this runs on Google's infrastructure: `GCE_METADATA_HOST`
/// (also what Google's client libraries honour), else `metadata.google.internal` on Cloud Run
/// (`K_SERVICE` for services, `CLOUD_RUN_JOB` for jobs). Elsewhere none is asked, so a laptop
/// never waits for a name lookup.
fn metadata_host() -> Option<String> {
    if let Ok(h) = std::env::var("GCE_METADATA_HOST")
        && !h.is_empty()
    {
        return Some(h);
    }
    (std::env::var_os("K_SERVICE").is_some() || std::env::var_os("CLOUD_RUN_JOB").is_some())
        .then(|| "metadata.google.internal".to_string())
}

/// `instance/id` from the metadata server at `host` (the request is built by `bootstrap_gcp`,
/// which owns every Google request), `None` on any failure or after the timeout.
async fn instance_id(host: &str) -> Option<String> {
    bootstrap_gcp::auth::metadata::instance_id(host, METADATA_TIMEOUT).await
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

/// The default worker name for this instance.
pub async fn default_name() -> String {
    let id = match metadata_host() {
        Some(host) => {
            let id = instance_id(&host).await;
            if id.is_none() {
                tracing::warn!(
                    host,
                    "no instance id from the metadata server; naming the worker after the host"
                );
            }
            id
        }
        None => None,
    };
    let machine = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))
        .ok();
    name_from(id.as_deref(), &hostname(), machine.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_per_instance_and_stay_stable() {
        let a = name_from(Some("00bf4bf02d1d6b"), "localhost", None);
        let b = name_from(Some("00bf4bf02d1d6c"), "localhost", None);
        assert_ne!(a, b);
        assert_eq!(a, name_from(Some("00bf4bf02d1d6b"), "other", Some("m")));
        assert!(
            a.starts_with("bootstrap-") && a.len() == "bootstrap-".len() + 16,
            "{a}"
        );
        let h1 = name_from(None, "web", Some("machine-1"));
        let h2 = name_from(None, "web", Some("machine-2"));
        assert_ne!(h1, h2);
        assert!(h1.starts_with("bootstrap-web-"), "{h1}");
        assert_eq!(h1, name_from(None, "web", Some("machine-1\n")));
    }
}
