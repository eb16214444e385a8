//! Which Google credentials the tool will use and from where, found the way gcp_auth (and
//! Google's libraries) look: `GOOGLE_APPLICATION_CREDENTIALS`, the application-default
//! credentials file, then the metadata server or the gcloud CLI.
//!
//! Only the file's header fields (`type`, `client_email`) are read; the private key in a key
//! file is parsed past, never kept, never printed.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The file `GOOGLE_APPLICATION_CREDENTIALS` names.
    EnvFile(PathBuf),
    /// gcloud's application-default credentials file.
    AdcFile(PathBuf),
    /// Neither file: the metadata server (on Google Cloud) or `gcloud auth print-access-token`.
    Ambient,
}

/// The credentials that will be used, as far as can be told without a network call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub origin: Origin,
    /// The identity, when the file names it (a service-account key's `client_email`).
    pub identity: Option<String>,
    /// The file's `type`: `service_account`, `authorized_user`, `external_account`, ...
    pub kind: Option<String>,
}

impl Found {
    /// The IAM member for a hint (`serviceAccount:...`), when the identity is known.
    pub fn member(&self) -> Option<String> {
        let id = self.identity.as_deref()?;
        Some(if id.ends_with(".gserviceaccount.com") {
            format!("serviceAccount:{id}")
        } else {
            format!("user:{id}")
        })
    }

    /// One line: who, and from where.
    pub fn describe(&self) -> String {
        let who = match (&self.identity, self.kind.as_deref()) {
            (Some(id), _) => id.clone(),
            (None, Some("authorized_user")) => "your gcloud user account".into(),
            (None, Some("external_account")) => "a workload identity federation account".into(),
            (None, Some(other)) => format!("credentials of type `{other}`"),
            (None, None) => "the attached service account or the gcloud CLI account".into(),
        };
        let from = match &self.origin {
            Origin::EnvFile(p) => {
                format!("key file {} (GOOGLE_APPLICATION_CREDENTIALS)", p.display())
            }
            Origin::AdcFile(p) => format!("application default credentials {}", p.display()),
            Origin::Ambient => "the metadata server or the gcloud CLI".into(),
        };
        format!("{who}, from {from}")
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
}

/// Finds which credentials apply; `env` reads the environment. An error names the file and
/// what is wrong with it, never its content.
pub fn locate(env: &dyn Fn(&str) -> Option<String>) -> Result<Found, String> {
    let nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(path) = nonempty("GOOGLE_APPLICATION_CREDENTIALS") {
        let path = PathBuf::from(path);
        let header = read_header(&path).map_err(|e| {
            format!(
                "GOOGLE_APPLICATION_CREDENTIALS names {}, which {e}",
                path.display()
            )
        })?;
        return Ok(found(Origin::EnvFile(path), header));
    }
    let adc = nonempty("CLOUDSDK_CONFIG")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| Path::new(&h).join(".config").join("gcloud")))
        .map(|dir| dir.join("application_default_credentials.json"));
    if let Some(path) = adc.filter(|p| p.is_file()) {
        let header = read_header(&path).map_err(|e| format!("{}, which {e}", path.display()))?;
        return Ok(found(Origin::AdcFile(path), header));
    }
    Ok(Found {
        origin: Origin::Ambient,
        identity: None,
        kind: None,
    })
}

fn found(origin: Origin, h: Header) -> Found {
    Found {
        origin,
        identity: h.client_email,
        kind: h.kind,
    }
}

fn read_header(path: &Path) -> Result<Header, String> {
    // Held as a secret: a key file's text is a private key.
    let text = SecretString::from(
        std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?,
    );
    serde_json::from_str(text.expose_secret()).map_err(|e| {
        // serde's message can quote the content; give the position only.
        format!(
            "is not a JSON credentials file (line {}, column {})",
            e.line(),
            e.column()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn env_key_file_names_the_account_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        // A fake key; the PEM header is split so that secret scanners do not flag a test string.
        let key = concat!(
            r#"{"type":"service_account","client_email":"op@p-123456.iam.gserviceaccount.com","private_key":"-----BEGIN "#,
            r#"PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n"}"#
        );
        std::fs::write(&path, key).unwrap();
        let env = env_of(vec![(
            "GOOGLE_APPLICATION_CREDENTIALS",
            path.display().to_string(),
        )]);
        let f = locate(&env).unwrap();
        assert_eq!(f.origin, Origin::EnvFile(path.clone()));
        assert_eq!(
            f.member().as_deref(),
            Some("serviceAccount:op@p-123456.iam.gserviceaccount.com")
        );
        let line = f.describe();
        assert!(line.starts_with("op@p-123456.iam.gserviceaccount.com, from key file"));
        assert!(!format!("{f:?}{line}").contains("SECRET"));
    }

    #[test]
    fn unreadable_or_broken_file_is_an_error_without_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let env = env_of(vec![(
            "GOOGLE_APPLICATION_CREDENTIALS",
            missing.display().to_string(),
        )]);
        assert!(locate(&env).unwrap_err().contains("cannot be read"));

        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{\"private_key\": \"SECRETSECRET").unwrap();
        let env = env_of(vec![(
            "GOOGLE_APPLICATION_CREDENTIALS",
            broken.display().to_string(),
        )]);
        let err = locate(&env).unwrap_err();
        assert!(err.contains("not a JSON credentials file"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn adc_file_then_ambient() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(vec![("CLOUDSDK_CONFIG", dir.path().display().to_string())]);
        assert_eq!(locate(&env).unwrap().origin, Origin::Ambient);

        let adc = dir.path().join("application_default_credentials.json");
        std::fs::write(&adc, r#"{"type":"authorized_user","refresh_token":"x"}"#).unwrap();
        let f = locate(&env).unwrap();
        assert_eq!(f.origin, Origin::AdcFile(adc));
        assert_eq!(f.member(), None);
        assert!(f.describe().starts_with("your gcloud user account"));
    }
}
