//! The sandbox's own certificate authority, so that clients inside a container's namespace can
//! call `https://run.googleapis.com` and friends unchanged and get the sandbox.
//!
//! A fresh CA per sandbox start (its key lives only in memory) signs one leaf for
//! `*.googleapis.com`, `googleapis.com` and `metadata.google.internal`. The CA certificate is
//! written to `<dir>/ca.pem`; `<dir>/ca-bundle.pem` is that CA followed by the host's system
//! bundle, and is what a container's trust variables point at ([`TRUST_VARS`]): OpenSSL and
//! Python's `ssl` (`SSL_CERT_FILE`), `requests`/google-auth (`REQUESTS_CA_BUNDLE`), `httplib2`,
//! which googleapiclient uses (`HTTPLIB2_CA_CERTS`), curl (`CURL_CA_BUNDLE`), gRPC, and reqwest's
//! rustls-platform-verifier (it reads `SSL_CERT_FILE` through rustls-native-certs on Linux).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Environment variables that name the trust bundle for the common clients.
pub const TRUST_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "HTTPLIB2_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

/// Names the leaf certificate covers.
const LEAF_NAMES: &[&str] = &[
    "*.googleapis.com",
    "googleapis.com",
    "metadata.google.internal",
    "localhost",
];

/// System bundles appended after the sandbox CA (the first that exists).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The CA's files and the server configuration for the leaf.
#[derive(Clone)]
pub struct SandboxTls {
    /// `<dir>/ca.pem`: the CA certificate alone.
    pub ca_path: PathBuf,
    /// `<dir>/ca-bundle.pem`: the CA, then the system roots.
    pub bundle_path: PathBuf,
    /// rustls server configuration presenting the leaf.
    pub server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for SandboxTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxTls")
            .field("ca_path", &self.ca_path)
            .field("bundle_path", &self.bundle_path)
            .finish_non_exhaustive()
    }
}

impl SandboxTls {
    /// Makes a CA and a leaf, writes the CA files into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bootstrap sandbox CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut leaf_params = CertificateParams::new(
            LEAF_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "*.googleapis.com");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem())
            .with_context(|| format!("writing {}", ca_path.display()))?;
        let mut bundle = ca.pem();
        if let Some(system) = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
        {
            bundle.push('\n');
            bundle.push_str(&system);
        }
        let bundle_path = dir.join("ca-bundle.pem");
        std::fs::write(&bundle_path, bundle)
            .with_context(|| format!("writing {}", bundle_path.display()))?;

        let chain = vec![
            CertificateDer::from(leaf.der().to_vec()),
            CertificateDer::from(ca.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("building the sandbox's TLS configuration")?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_path,
            bundle_path,
            server: Arc::new(server),
        })
    }

    /// `(variable, bundle path)` for every trust variable.
    pub fn trust_env(&self) -> Vec<(String, String)> {
        let path = self.bundle_path.display().to_string();
        TRUST_VARS
            .iter()
            .map(|v| ((*v).to_owned(), path.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_a_bundle_that_starts_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = SandboxTls::create(dir.path()).expect("create");
        let ca = std::fs::read_to_string(&tls.ca_path).expect("ca");
        let bundle = std::fs::read_to_string(&tls.bundle_path).expect("bundle");
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        assert!(bundle.starts_with(&ca));
        assert!(
            tls.trust_env()
                .iter()
                .any(|(k, v)| k == "REQUESTS_CA_BUNDLE" && v.ends_with("ca-bundle.pem"))
        );
    }
}
