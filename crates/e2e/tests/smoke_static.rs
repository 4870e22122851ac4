//! Smoke test of the test support: an adapter in static mode serves a fake pod's count over TLS.

use ws_e2e as support;

use std::time::Duration;
use support::{Adapter, Behavior, FakePod, StaticPod, exposition, static_pods_yaml};

#[tokio::test]
async fn a_fake_pods_count_is_served_over_https() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 3), ("echo", 4)]))).await;
    let yaml = static_pods_yaml(&[StaticPod {
        namespace: "default",
        name: "ws-0",
        labels: &[("app", "ws")],
        url: pod.url(),
    }]);
    let adapter = Adapter::start_static(
        &yaml,
        &["--scrape-interval", "200ms", "--scrape-timeout", "150ms"],
    )
    .await;
    adapter.wait_ready(Duration::from_secs(10)).await;
    let client = adapter.client();
    let resp = client
        .get(adapter.api, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/websocket_connections?labelSelector=app%3Dws")
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.headers["content-type"], "application/json");
    let body = resp.json();
    assert_eq!(body["items"][0]["value"], "7");
    assert_eq!(body["items"][0]["describedObject"]["name"], "ws-0");
    adapter.stop().await;
}
