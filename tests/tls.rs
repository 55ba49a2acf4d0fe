//! TLS termination: `server.tls_cert` / `server.tls_key` make the gateway speak HTTPS (rustls).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test]
async fn the_gateway_terminates_tls_with_the_configured_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();

    let mock = MockUpstream::start().await.unwrap();
    let (key, hash) = TestKey::new("app");
    let text = config_text(
        &mock.url(),
        "tls_cert = \"tls.crt\"\ntls_key = \"tls.key\"",
        &key_toml("app", &hash, "scopes = [\"chat\"]"),
    )
    .replace("KEYGATE_TEST_UNUSED", "KG_UPSTREAM");
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    let gw = Binary::serve(&path, &[("KG_UPSTREAM", UPSTREAM_KEY)]).await;

    // A client that trusts exactly this certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let port = gw.addr.rsplit(':').next().unwrap();
    let req = Request::post(format!("https://localhost:{port}/v1/chat/completions"))
        .header("authorization", key.bearer())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("chat.completion"));

    // Plain HTTP on the TLS port gets nowhere.
    let answer = raw(
        gw.addr.parse().unwrap(),
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 200"));
    gw.signal("-TERM");
    assert!(gw.wait().await.0.success());
}
