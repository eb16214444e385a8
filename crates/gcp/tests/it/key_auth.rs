//! A service-account key held in memory gets tokens from the key's own `token_uri`, and the
//! token is sent as the bearer on API calls.

use crate::support;

use std::sync::Arc;

use base64::Engine;
use bootstrap_gcp::{Endpoints, GcpHttp, ServiceAccountKeySource, TokenSource, iam};
use bootstrap_ids::{ProjectId, ServiceAccountEmail};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use support::{Canned, Fake, fast_retry};

const EMAIL: &str = "robot-one@demo-project.iam.gserviceaccount.com";

fn key_json(token_uri: &str) -> SecretString {
    let key = RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    SecretString::from(
        json!({
            "type": "service_account",
            "project_id": "demo-project",
            "private_key_id": "k1",
            "private_key": pem.as_str(),
            "client_email": EMAIL,
            "token_uri": token_uri,
        })
        .to_string(),
    )
}

#[tokio::test]
async fn key_file_tokens_come_from_its_token_uri() {
    let fake = Fake::start(vec![
        Canned::json(
            200,
            json!({"access_token": "ya29.local", "expires_in": 3600, "token_type": "Bearer"}),
        ),
        Canned::json(200, json!({"email": EMAIL})),
        Canned::json(200, json!({"email": EMAIL})),
    ])
    .await;
    let source =
        ServiceAccountKeySource::from_json(&key_json(&format!("{}/token", fake.base))).unwrap();
    assert_eq!(source.identity().unwrap().as_str(), EMAIL);
    assert_eq!(source.project_hint().as_deref(), Some("demo-project"));
    assert!(!format!("{source:?}").contains("PRIVATE KEY"));

    let http = GcpHttp::new(
        Endpoints::with_base(&fake.base).unwrap(),
        Arc::new(source),
        fast_retry(),
    )
    .unwrap();
    let project = ProjectId::parse("demo-project").unwrap();
    let email = ServiceAccountEmail::parse(EMAIL).unwrap();
    iam::get_service_account(&http, &project, &email)
        .await
        .unwrap()
        .unwrap();
    iam::get_service_account(&http, &project, &email)
        .await
        .unwrap()
        .unwrap();

    let seen = fake.seen();
    assert_eq!(seen.len(), 3, "the token is cached between calls");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("POST", "/token")
    );
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(String, String)> = url::form_urlencoded::parse(seen[0].body.as_bytes())
        .into_owned()
        .collect();
    assert!(form.contains(&(
        "grant_type".into(),
        "urn:ietf:params:oauth:grant-type:jwt-bearer".into()
    )));
    let assertion = &form.iter().find(|(k, _)| k == "assertion").unwrap().1;
    let claims_b64 = assertion.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims_b64.trim_end_matches('='))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], EMAIL);
    assert_eq!(claims["aud"], format!("{}/token", fake.base));
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    for s in &seen[1..] {
        assert_eq!(s.authorization.as_deref(), Some("Bearer ya29.local"));
    }
}

#[tokio::test]
async fn a_refused_token_is_an_auth_error_without_key_material() {
    let fake = Fake::start(vec![
        Canned::json(400, json!({"error": "invalid_grant"}));
        5
    ])
    .await;
    let key = key_json(&format!("{}/token", fake.base));
    let source = ServiceAccountKeySource::from_json(&key).unwrap();
    let err = source.token().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("token"), "{text}");
    let parsed: serde_json::Value = serde_json::from_str(key.expose_secret()).unwrap();
    let pem_line = parsed["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(pem_line.len() > 20);
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains(&pem_line),
        "{text}"
    );
}
