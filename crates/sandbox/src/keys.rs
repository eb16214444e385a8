//! RSA keys for issued service-account keys: generated in the background into a small pool
//! (2048-bit generation takes a noticeable while), and turned into Google's JSON key file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;

/// A pool of pre-generated RSA 2048 keys, refilled on a blocking thread.
#[derive(Clone)]
pub struct KeyPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    ready: Mutex<Vec<RsaPrivateKey>>,
    target: usize,
    refilling: AtomicBool,
}

/// Generates one RSA 2048 key.
pub fn generate() -> anyhow::Result<RsaPrivateKey> {
    let mut rng = rand_core::OsRng;
    RsaPrivateKey::new(&mut rng, 2048).context("generating an RSA key")
}

impl KeyPool {
    /// A pool that keeps `target` keys ready (0 disables pre-generation).
    pub fn new(target: usize) -> Self {
        KeyPool {
            inner: Arc::new(PoolInner {
                ready: Mutex::new(Vec::new()),
                target,
                refilling: AtomicBool::new(false),
            }),
        }
    }

    /// Starts filling the pool in the background (needs a tokio runtime).
    pub fn refill(&self) {
        if self.inner.target == 0 || self.inner.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                let have = inner.ready.lock().map(|r| r.len()).unwrap_or(usize::MAX);
                if have >= inner.target {
                    break;
                }
                match generate() {
                    Ok(key) => {
                        if let Ok(mut ready) = inner.ready.lock() {
                            ready.push(key);
                        }
                    }
                    Err(err) => {
                        tracing::warn!("key pool: {err:#}");
                        break;
                    }
                }
            }
            inner.refilling.store(false, Ordering::Release);
        });
    }

    /// Adds a key generated elsewhere.
    pub fn push(&self, key: RsaPrivateKey) {
        if let Ok(mut ready) = self.inner.ready.lock() {
            ready.push(key);
        }
    }

    /// A key as fast as possible: two generations race on blocking threads (prime search
    /// time varies a lot) and the slower one goes into the pool. Used at startup.
    pub async fn take_fast(&self) -> anyhow::Result<RsaPrivateKey> {
        if let Some(key) = self.inner.ready.lock().ok().and_then(|mut r| r.pop()) {
            return Ok(key);
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        for _ in 0..2 {
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let _ = tx.blocking_send(generate());
            });
        }
        drop(tx);
        let first = rx.recv().await.context("key generation task")??;
        let pool = self.clone();
        tokio::spawn(async move {
            if let Some(Ok(key)) = rx.recv().await {
                pool.push(key);
            }
        });
        Ok(first)
    }

    /// A key from the pool, or a freshly generated one when the pool is empty.
    pub async fn take(&self) -> anyhow::Result<RsaPrivateKey> {
        let pooled = self.inner.ready.lock().ok().and_then(|mut r| r.pop());
        let key = match pooled {
            Some(key) => key,
            None => tokio::task::spawn_blocking(generate)
                .await
                .context("key generation task")??,
        };
        self.refill();
        Ok(key)
    }
}

/// What goes into a key file besides the key.
pub struct KeyFileInfo<'a> {
    /// 40-hex key id.
    pub key_id: &'a str,
    /// Account email.
    pub email: &'a str,
    /// Project id.
    pub project: &'a str,
    /// Account unique id (OAuth2 client id).
    pub client_id: &'a str,
    /// The sandbox's `/token` URL.
    pub token_uri: &'a str,
}

/// The JSON key file Google hands out (`TYPE_GOOGLE_CREDENTIALS_FILE`), with the private key
/// as PKCS#8 PEM. The caller must treat the result as secret.
pub fn key_file(key: &RsaPrivateKey, info: &KeyFileInfo<'_>) -> anyhow::Result<String> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the private key")?;
    let file = json!({
        "type": "service_account",
        "project_id": info.project,
        "private_key_id": info.key_id,
        "private_key": pem.as_str(),
        "client_email": info.email,
        "client_id": info.client_id,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": info.token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": format!(
            "https://www.googleapis.com/robot/v1/metadata/x509/{}",
            info.email.replace('@', "%40")
        ),
        "universe_domain": "googleapis.com",
    });
    Ok(serde_json::to_string_pretty(&file)?)
}

/// The SPKI PEM of a key's public half (what the sandbox keeps to verify assertions).
pub fn public_pem(key: &RsaPrivateKey) -> anyhow::Result<String> {
    key.to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the public key")
}

/// A new key id: 40 lowercase hex characters, like Google's.
pub fn new_key_id() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_has_pkcs8_pem_and_token_uri() {
        let key = generate().expect("keygen");
        let file = key_file(
            &key,
            &KeyFileInfo {
                key_id: &new_key_id(),
                email: "a@p.iam.gserviceaccount.com",
                project: "p",
                client_id: "1",
                token_uri: "http://127.0.0.1:1/token",
            },
        )
        .expect("key file");
        let parsed: serde_json::Value = serde_json::from_str(&file).expect("json");
        assert!(
            parsed["private_key"]
                .as_str()
                .is_some_and(|k| k.starts_with(concat!("-----BEGIN ", "PRIVATE KEY-----")))
        );
        assert_eq!(parsed["token_uri"], "http://127.0.0.1:1/token");
        assert_eq!(new_key_id().len(), 40);
    }
}
