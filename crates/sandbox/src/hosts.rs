//! Host names for clients that derive endpoints from host names, and the gcloud configuration
//! that points gcloud at a running sandbox.
//!
//! gcloud reaches Cloud Run v1 (Knative) on a regional host it derives by prefixing
//! `<region>-` to the override's host name (`googlecloudsdk/command_lib/run/connection_context.py`,
//! `DeriveRegionalEndpoint`), so an override of `http://127.0.0.1:PORT/` becomes the unresolvable
//! `us-central1-127.0.0.1:PORT`. The sandbox is therefore also reachable as [`HOST`] and
//! `<region>-`[`HOST`] for every region in [`REGIONS`]; glibc on these machines does not resolve
//! `*.localhost` by itself (nsswitch `hosts: files dns`), so [`ensure_hosts_file`] adds the names
//! to `/etc/hosts`, all on 127.0.0.1. The lines are shared by every sandbox on the machine (the
//! port tells sandboxes apart), so they are added once and never removed: removing them when one
//! sandbox stops would break the others, and they name only the loopback address.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The sandbox's global host name (always on 127.0.0.1).
pub const HOST: &str = "sandbox.localhost";

/// The regions whose `<region>-sandbox.localhost` names are set up: Cloud Run's regions.
/// (Also the regional `<region>-run.googleapis.com` names inside containers: `netns`.)
pub const REGIONS: &[&str] = &[
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-west10",
    "europe-west12",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
];

/// Marks the lines this module writes.
const MARK: &str = "# bootstrap sandbox (loopback names for gcloud)";

/// Every host name the sandbox answers under.
pub fn host_names() -> Vec<String> {
    let mut names = vec![HOST.to_owned()];
    names.extend(REGIONS.iter().map(|r| format!("{r}-{HOST}")));
    names
}

/// The region a request's `Host` header names (`us-central1-sandbox.localhost:8099` →
/// `us-central1`), as Google's regional endpoints `{region}-run.googleapis.com` do.
pub fn region_of_host(host: &str) -> Option<&'static str> {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let prefix = name.strip_suffix(HOST)?.strip_suffix('-')?;
    REGIONS.iter().copied().find(|r| *r == prefix)
}

/// Names of `names` that `text` (an `/etc/hosts`) does not yet map to 127.0.0.1.
fn missing<'a>(text: &str, names: &'a [String]) -> Vec<&'a str> {
    let mapped: std::collections::HashSet<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next() == Some("127.0.0.1")).then_some(fields)
        })
        .flatten()
        .collect();
    names
        .iter()
        .map(String::as_str)
        .filter(|n| !mapped.contains(n))
        .collect()
}

/// Adds the sandbox's host names to `path` (normally `/etc/hosts`) when they are missing, in
/// one appended write (several sandboxes starting at once at worst add a duplicate line, which
/// the resolver ignores). Returns the names added.
pub fn ensure_hosts_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let names = host_names();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let todo = missing(&text, &names);
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(MARK);
    out.push('\n');
    // A few names per line: some resolvers limit the aliases of one line.
    for chunk in todo.chunks(8) {
        out.push_str("127.0.0.1 ");
        out.push_str(&chunk.join(" "));
        out.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {} to add the sandbox's host names", path.display()))?;
    file.write_all(out.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(todo.into_iter().map(str::to_owned).collect())
}

/// What a gcloud configuration for a sandbox needs.
#[derive(Debug, Clone)]
pub struct GcloudConfig {
    /// The sandbox's port.
    pub port: u16,
    /// The project gcloud uses by default.
    pub project: String,
    /// The Cloud Run region gcloud uses by default.
    pub region: String,
    /// The operator's key file.
    pub key_file: PathBuf,
    /// The operator's email.
    pub account: String,
}

/// The `api_endpoint_overrides` keys gcloud 528 has for the APIs the sandbox serves (checked
/// with `gcloud config set api_endpoint_overrides/<key>`, which rejects unknown keys).
pub const GCLOUD_OVERRIDES: &[&str] = &[
    "iam",
    "iamcredentials",
    "cloudresourcemanager",
    "serviceusage",
    "run",
    "secretmanager",
    "artifactregistry",
    "cloudbuild",
];

impl GcloudConfig {
    /// The base URL gcloud is given (a host name, so that regional hosts can be derived).
    pub fn endpoint(&self) -> String {
        format!("http://{HOST}:{}/", self.port)
    }

    /// The `properties` file of a gcloud configuration named `default`.
    pub fn properties(&self) -> String {
        let endpoint = self.endpoint();
        let mut text = String::from("[core]\n");
        text.push_str(&format!("project = {}\n", self.project));
        text.push_str(&format!("account = {}\n", self.account));
        text.push_str("disable_usage_reporting = True\n");
        text.push_str("\n[auth]\n");
        // gcloud reads the key file on each call, as `auth activate-service-account` would
        // have stored it; the token endpoint is the sandbox's.
        text.push_str(&format!(
            "credential_file_override = {}\n",
            self.key_file.display()
        ));
        text.push_str(&format!("token_host = {endpoint}token\n"));
        text.push_str("\n[api_endpoint_overrides]\n");
        for key in GCLOUD_OVERRIDES {
            text.push_str(&format!("{key} = {endpoint}\n"));
        }
        text.push_str("\n[run]\n");
        text.push_str(&format!("region = {}\n", self.region));
        text.push_str("\n[component_manager]\ndisable_update_check = True\n");
        text
    }

    /// Writes the configuration into `dir` (a `CLOUDSDK_CONFIG` directory): the properties of
    /// the `default` configuration and `active_config`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let configs = dir.join("configurations");
        std::fs::create_dir_all(&configs)
            .with_context(|| format!("creating {}", configs.display()))?;
        let path = configs.join("config_default");
        std::fs::write(&path, self.properties())
            .with_context(|| format!("writing {}", path.display()))?;
        let active = dir.join("active_config");
        std::fs::write(&active, "default")
            .with_context(|| format!("writing {}", active.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_from_host_headers() {
        assert_eq!(
            region_of_host("us-central1-sandbox.localhost:8099"),
            Some("us-central1")
        );
        assert_eq!(
            region_of_host("europe-west1-sandbox.localhost"),
            Some("europe-west1")
        );
        assert_eq!(region_of_host("sandbox.localhost:8099"), None);
        assert_eq!(region_of_host("127.0.0.1:8099"), None);
        assert_eq!(region_of_host("mars-sandbox.localhost:1"), None);
    }

    #[test]
    fn hosts_file_gets_missing_names_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        std::fs::write(
            &path,
            "127.0.0.1 localhost\n127.0.0.1 sandbox.localhost # old\n",
        )
        .expect("write");
        let added = ensure_hosts_file(&path).expect("adds");
        assert_eq!(added.len(), REGIONS.len());
        assert!(!added.contains(&HOST.to_owned()));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("us-central1-sandbox.localhost"));
        assert!(ensure_hosts_file(&path).expect("again").is_empty());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }

    #[test]
    fn gcloud_properties_name_every_override() {
        let config = GcloudConfig {
            port: 8099,
            project: "p-123456".into(),
            region: "us-central1".into(),
            key_file: PathBuf::from("/tmp/key.json"),
            account: "op@p-123456.iam.gserviceaccount.com".into(),
        };
        let text = config.properties();
        for key in GCLOUD_OVERRIDES {
            assert!(
                text.contains(&format!("{key} = http://sandbox.localhost:8099/\n")),
                "{key}"
            );
        }
        assert!(text.contains("token_host = http://sandbox.localhost:8099/token\n"));
        assert!(text.contains("credential_file_override = /tmp/key.json\n"));
        assert!(text.contains("region = us-central1\n"));
    }
}
