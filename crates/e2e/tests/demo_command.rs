//! `ws-demo demo` (what `make demo` runs, the README's first command), run as a real process: it
//! must show connections flowing into the custom metrics API, write a kubeconfig that the real
//! kubectl can use while it runs, and end by itself after `--duration`.

use ws_e2e as support;

use std::process::Command;
use std::time::Duration;

use support::e2e::ProcessGuard;

#[tokio::test]
async fn the_demo_shows_api_values_equal_to_live_connections_and_ends_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `demo` moved to the ws-demo binary with the workspace split.
    let mut cmd = Command::new(support::e2e::bin("ws-demo"));
    cmd.args([
        "demo",
        "--duration",
        "30s",
        "--plain",
        "--port",
        "0",
        "--target",
        "20",
        "--dir",
    ])
    .arg(dir.path());
    let mut demo = ProcessGuard::spawn(cmd, "ws-demo demo");

    // While it runs, the printed kubectl line works: the kubeconfig trusts the generated CA.
    let kubeconfig = dir.path().join("kubeconfig");
    let raw = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/websocket_connections?labelSelector=app%3Dws-demo";
    // Within the demo's 30 s: the kubectl line must work while it runs.
    let items = support::eventually(
        Duration::from_secs(30),
        "kubectl reads three demo pods",
        || {
            let kubeconfig = kubeconfig.clone();
            async move {
                if !kubeconfig.exists() {
                    return None;
                }
                let out = Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["get", "--raw", raw])
                    .output()
                    .ok()?;
                let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let items = body["items"].as_array()?.clone();
                (items.len() == 3).then_some(items)
            }
        },
    )
    .await;
    assert!(
        items
            .iter()
            .all(|i| i["metric"]["name"] == "websocket_connections")
    );

    let status = demo
        .wait(Duration::from_secs(300))
        .await
        .expect("demo ends after --duration");
    let out = demo.stdout();
    assert!(status.success(), "demo failed: {out}\n{}", demo.stderr());
    assert!(
        out.contains("kubectl --kubeconfig"),
        "no kubectl line in: {out}"
    );
    // Some view line shows every pod with an API value equal to its live connection count,
    // and a non-zero count: connections reached the API within the run.
    let matching_rows = out
        .lines()
        .filter(|l| l.trim_start().starts_with("ws-demo-"))
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() == 3 && cols[1] == cols[2] && cols[1] != "0"
        })
        .count();
    assert!(
        matching_rows >= 3,
        "no row with API value = live connections: {out}"
    );
    assert!(out.contains("would want"), "no HPA decision in: {out}");
    assert!(
        out.contains("0 failed"),
        "load summary missing or failures: {out}"
    );
}
