//! Delegated authentication and authorization on the real control plane: who gets through
//! kube-apiserver and the aggregator, and who gets through when calling the adapter directly with
//! forged headers, foreign certificates, ServiceAccount tokens and client certificates; and a
//! front-proxy CA added to the ConfigMap taking effect without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rcgen::ExtendedKeyUsagePurpose::ClientAuth;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cluster::{Cluster, GIVE_UP, Options};
use crate::pki::Ca;

const PODS: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/websocket_connections?labelSelector=app%3Dws-demo";
const DISCOVERY: &str = "/apis/custom.metrics.k8s.io/v1beta2";

/// GET `https://localhost:{addr.port()}{path}` trusting `ca_pem`, presenting `cert` (cert and key
/// files) if given, with extra `headers`. Returns (status, body).
async fn get(
    addr: SocketAddr,
    ca_pem: &str,
    cert: Option<(&Path, &Path)>,
    headers: &[(&str, &str)],
    path: &str,
) -> (u16, String) {
    try_get(addr, ca_pem, cert, headers, path)
        .await
        .expect("request sent")
}

/// Like [`get`]; an error when the request could not be sent or the answer not read.
async fn try_get(
    addr: SocketAddr,
    ca_pem: &str,
    cert: Option<(&Path, &Path)>,
    headers: &[(&str, &str)],
    path: &str,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("read cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .build();
    let client: HyperClient<_, Empty<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(conn);
    let mut req = http::Request::get(format!("https://localhost:{}{path}", addr.port()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A token for ServiceAccount `default/name` (TokenRequest API).
async fn sa_token(cluster: &Cluster, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "default");
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    api.create_token_request(name, &PostParams::default(), &req)
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token
}

const RBAC: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-reader, namespace: default}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: websocket-connections-reader}
rules:
- apiGroups: [custom.metrics.k8s.io]
  resources: [pods/websocket_connections]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: websocket-connections-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: websocket-connections-reader}
subjects:
- {kind: ServiceAccount, name: metrics-reader, namespace: default}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_and_authorized_callers_read_metrics() {
    let _serial = crate::ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(Options::default()).await;
    cluster.kubectl_apply(RBAC).await;
    let reader = sa_token(&cluster, "metrics-reader").await;
    let nobody = sa_token(&cluster, "nobody").await;
    let bearer = |t: &str| format!("Bearer {t}");
    let cluster_ca = cluster.pki.cluster_ca.pem.clone();
    let adapter_ca = cluster.pki.adapter_ca_pem.clone();
    let api = cluster.apiserver_addr;
    let adapter = cluster.adapter_addr;
    let pki = cluster.dir().join("pki");

    // Through kube-apiserver and the aggregator.
    let (code, body) = get(
        api,
        &cluster_ca,
        None,
        &[("authorization", &bearer(&reader))],
        PODS,
    )
    .await;
    assert_eq!(code, 200, "granted user through kube-apiserver: {body}");
    assert!(body.contains(r#""kind":"MetricValueList""#), "{body}");
    let (code, body) = get(
        api,
        &cluster_ca,
        None,
        &[("authorization", &bearer(&nobody))],
        PODS,
    )
    .await;
    assert_eq!(
        code, 403,
        "user without RBAC through kube-apiserver: {body}"
    );

    // Directly at the adapter: ServiceAccount tokens (TokenReview + SAR).
    let (code, body) = get(
        adapter,
        &adapter_ca,
        None,
        &[("authorization", &bearer(&reader))],
        PODS,
    )
    .await;
    assert_eq!(code, 200, "token with a binding: {body}");
    let (code, body) = get(
        adapter,
        &adapter_ca,
        None,
        &[("authorization", &bearer(&nobody))],
        PODS,
    )
    .await;
    assert_eq!(code, 403, "token without a binding: {body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("Status JSON");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "pods.custom.metrics.k8s.io \"*\" is forbidden: User \"system:serviceaccount:default:nobody\" cannot get resource \"pods/websocket_connections\" in API group \"custom.metrics.k8s.io\" in the namespace \"default\""
    );
    // Discovery is a non-resource request that system:discovery grants to everyone authenticated.
    let (code, body) = get(
        adapter,
        &adapter_ca,
        None,
        &[("authorization", &bearer(&nobody))],
        DISCOVERY,
    )
    .await;
    assert_eq!(code, 200, "discovery: {body}");
    let (code, _) = get(
        adapter,
        &adapter_ca,
        None,
        &[("authorization", "Bearer not-a-token")],
        PODS,
    )
    .await;
    assert_eq!(code, 401, "invalid token");

    // Forged identity headers.
    let forged = [
        ("x-remote-user", "system:admin"),
        ("x-remote-group", "system:masters"),
    ];
    let (code, body) = get(adapter, &adapter_ca, None, &forged, PODS).await;
    assert_eq!(code, 401, "forged headers without a certificate: {body}");
    assert!(body.contains(r#""reason":"Unauthorized""#), "{body}");
    let evil_ca = Ca::new("ws-test-evil-ca");
    let evil = evil_ca.leaf(&pki, "evil", "front-proxy-client", &[], &[], &[ClientAuth]);
    let (code, _) = get(
        adapter,
        &adapter_ca,
        Some((&evil.cert, &evil.key)),
        &forged,
        PODS,
    )
    .await;
    assert_eq!(
        code, 401,
        "forged headers with a certificate from another CA"
    );
    let wrong_cn = cluster.pki.front_proxy_ca.leaf(
        &pki,
        "wrong-cn",
        "not-the-front-proxy",
        &[],
        &[],
        &[ClientAuth],
    );
    let (code, _) = get(
        adapter,
        &adapter_ca,
        Some((&wrong_cn.cert, &wrong_cn.key)),
        &forged,
        PODS,
    )
    .await;
    assert_eq!(
        code, 401,
        "forged headers with a front-proxy certificate whose CN is not allowed"
    );

    // The real front-proxy certificate: the headers are the caller, and the caller is authorized.
    let fp = (
        pki.join("front-proxy-client.crt"),
        pki.join("front-proxy-client.key"),
    );
    let fp = Some((fp.0.as_path(), fp.1.as_path()));
    let (code, _) = get(adapter, &adapter_ca, fp, &forged, PODS).await;
    assert_eq!(code, 200, "front proxy, system:masters");
    let (code, body) = get(adapter, &adapter_ca, fp, &[("x-remote-user", "jane")], PODS).await;
    assert_eq!(code, 403, "front proxy, user without RBAC: {body}");
    assert!(body.contains(r#"User \"jane\" cannot get"#), "{body}");
    // A client certificate of --client-ca-file: user = CN, groups = O.
    let admin = cluster.pki.cluster_ca.leaf(
        &pki,
        "cert-admin",
        "cert-admin",
        &["system:masters"],
        &[],
        &[ClientAuth],
    );
    let (code, _) = get(
        adapter,
        &adapter_ca,
        Some((&admin.cert, &admin.key)),
        &[],
        PODS,
    )
    .await;
    assert_eq!(code, 200, "client certificate in system:masters");

    // Bad input: an oversized header is refused and the adapter keeps serving.
    let big = "x".repeat(2 << 20);
    let answer = try_get(
        adapter,
        &adapter_ca,
        None,
        &[
            ("x-remote-extra-big", &big),
            ("authorization", &bearer(&reader)),
        ],
        PODS,
    )
    .await;
    assert!(
        matches!(answer, Ok((431, _)) | Err(_)),
        "2 MiB header: {:?}",
        answer.map(|a| a.0)
    );
    let (code, _) = get(
        adapter,
        &adapter_ca,
        None,
        &[("authorization", &bearer(&reader))],
        PODS,
    )
    .await;
    assert_eq!(code, 200, "still serving");

    // A new front-proxy CA appended to the ConfigMap is trusted without a restart.
    let new_ca = Ca::new("ws-test-front-proxy-ca-2");
    let rotated = new_ca.leaf(
        &pki,
        "front-proxy-2",
        "front-proxy-client",
        &[],
        &[],
        &[ClientAuth],
    );
    let rotated = Some((rotated.cert.as_path(), rotated.key.as_path()));
    let (code, _) = get(adapter, &adapter_ca, rotated, &forged, PODS).await;
    assert_eq!(code, 401, "new CA not trusted yet");
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "kube-system");
    let cm = cms
        .get("extension-apiserver-authentication")
        .await
        .expect("ConfigMap");
    let bundle = cm.data.unwrap_or_default()["requestheader-client-ca-file"].clone();
    let patch = serde_json::json!({"data": {"requestheader-client-ca-file": format!("{}{}", bundle, new_ca.pem)}});
    cms.patch(
        "extension-apiserver-authentication",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .expect("patch ConfigMap");
    let changed = Instant::now();
    loop {
        let (code, _) = get(adapter, &adapter_ca, rotated, &forged, PODS).await;
        if code == 200 {
            break;
        }
        assert!(
            changed.elapsed() < GIVE_UP,
            "new front-proxy CA not picked up after {GIVE_UP:?} (last {code})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "new front-proxy CA trusted {:.1} s after the ConfigMap change",
        changed.elapsed().as_secs_f64()
    );
    // The old CA still works (kube-apiserver keeps proxying).
    let (code, body) = get(
        api,
        &cluster_ca,
        None,
        &[("authorization", &bearer(&reader))],
        PODS,
    )
    .await;
    assert_eq!(code, 200, "through kube-apiserver after the change: {body}");
}
