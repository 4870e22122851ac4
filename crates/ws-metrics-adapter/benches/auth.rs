//! Cost of authentication plus authorization per request on cache hits (target: ≤ 50 µs p99):
//! (a) a bearer token (TokenReview cache) and (b) the front proxy (a verified client certificate
//! plus `X-Remote-*` headers), each followed by attribute derivation and the SAR cache, in
//! process. The TokenReview/SAR endpoint is an in-process stand-in that answers "allowed"; the
//! review counters show it is called once per caller.
//!
//! `cargo bench --bench auth` (`WSMA_BENCH_REQUESTS`, default 200000 per case).

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::CertificateDer;
use ws_metrics_adapter::auth::authn::{AuthnConfig, FlagSources};
use ws_metrics_adapter::auth::{Auth, Authenticated, Decision, Settings, attributes};

const PATH: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/websocket_connections";
const QUERY: &str = "labelSelector=app%3Dws-demo";

fn allowing_apiserver() -> kube::Client {
    let service = tower::service_fn(|req: http::Request<kube::client::Body>| async move {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let mut obj: serde_json::Value = serde_json::from_slice(&body).expect("json");
        obj["status"] = if path.ends_with("tokenreviews") {
            serde_json::json!({"authenticated": true, "user": {"username": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system"]}})
        } else {
            serde_json::json!({"allowed": true})
        };
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
            serde_json::to_vec(&obj).expect("json"),
        ))))
    });
    kube::Client::new(service, "default")
}

fn front_proxy() -> (String, CertificateDer<'static>) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name
        .push(DnType::CommonName, "front-proxy-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.distinguished_name
        .push(DnType::CommonName, "front-proxy-client");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (ca_cert.pem(), cert.der().clone())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn measure(
    name: &str,
    auth: &Auth,
    headers: &HeaderMap,
    chain: Option<&[CertificateDer<'static>]>,
    n: usize,
) {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let Ok(Authenticated::User(user)) = auth.authenticate(headers, chain).await else {
            panic!("{name}: not authenticated");
        };
        let attrs = attributes::derive(&Method::GET, PATH, Some(QUERY));
        let decision = auth.authorize(&user, &attrs).await.expect("authorized");
        samples.push(start.elapsed().as_nanos() as u64);
        assert_eq!(decision, Decision::Allow);
    }
    samples.sort_unstable();
    println!(
        "{name:<34} n={n:<7} p50={:>6.2} µs  p99={:>6.2} µs  p99.9={:>6.2} µs  max={:>8.2} µs",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        percentile(&samples, 1.0),
    );
}

fn main() {
    ws_metrics_adapter::server::tls::install_provider();
    let n: usize = std::env::var("WSMA_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = allowing_apiserver();
        // TTLs long enough that every measured request is a cache hit.
        let settings = Settings {
            token_ttl: std::time::Duration::from_secs(3600),
            allow_ttl: std::time::Duration::from_secs(3600),
            ..Settings::default()
        };
        let auth = Auth::new(client.clone(), client, settings);
        let (ca_pem, leaf) = front_proxy();
        let mut data = std::collections::BTreeMap::new();
        data.insert("requestheader-client-ca-file".to_owned(), ca_pem);
        data.insert(
            "requestheader-allowed-names".to_owned(),
            r#"["front-proxy-client"]"#.to_owned(),
        );
        data.insert(
            "requestheader-username-headers".to_owned(),
            r#"["X-Remote-User"]"#.to_owned(),
        );
        data.insert(
            "requestheader-group-headers".to_owned(),
            r#"["X-Remote-Group"]"#.to_owned(),
        );
        data.insert(
            "requestheader-extra-headers-prefix".to_owned(),
            r#"["X-Remote-Extra-"]"#.to_owned(),
        );
        auth.set_config(AuthnConfig::build(&data, &FlagSources::default()).expect("config"));

        let mut token = HeaderMap::new();
        token.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IiJ9.a-service-account-token-of-typical-length-for-the-bench.c2lnbmF0dXJl"),
        );
        measure("(a) bearer token, cache hits", &auth, &token, None, n).await;

        let mut proxied = HeaderMap::new();
        proxied.insert(
            "x-remote-user",
            HeaderValue::from_static("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        );
        proxied.append(
            "x-remote-group",
            HeaderValue::from_static("system:serviceaccounts"),
        );
        proxied.append(
            "x-remote-group",
            HeaderValue::from_static("system:serviceaccounts:kube-system"),
        );
        proxied.append(
            "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
            HeaderValue::from_static("JTI=5f2e1c9a-0d7b-4a51-9d0e-3f1b2c4d5e6f"),
        );
        let chain = [leaf];
        measure(
            "(b) front proxy, cache hits",
            &auth,
            &proxied,
            Some(&chain),
            n,
        )
        .await;
        println!(
            "review calls: {} TokenReview, {} SubjectAccessReview (one per caller)",
            auth.token_reviews(),
            auth.access_reviews()
        );
    });
}
