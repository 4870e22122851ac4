//! The shipped manifests applied as a user applies them (issue 14): `kubectl apply -k manifests/`
//! and `kubectl apply -k manifests/examples/` from the README's quick start, verbatim, on a
//! control plane whose node agent runs every pod from its spec ([`Options::from_spec`]): the
//! adapter runs with exactly the shipped args, RBAC, ServiceAccount token (TokenRequest, mounted
//! where a kubelet puts it) and self-managed serving CA. Checks: both APIServices turn Available
//! with a `caBundle` the adapter wrote and no `insecureSkipTLSVerify`, the README's `kubectl get
//! --raw` examples answer, and the example HPA scales the example Deployment from 2 to 3.

use super::*;

use k8s_openapi::api::core::v1::Pod;
use tokio_tungstenite::connect_async;

/// The example HPA's target (manifests/examples/hpa.yaml): 500 connections per pod on average.
/// 1,200 connections over its 2 replicas make 600 per pod: it asks for ⌈2 × 600 / 500⌉ = 3, and
/// at 3 replicas (400 per pod) it stays there.
const CONNECTIONS: usize = 1200;

/// The lines of the README's fenced `sh` block that follows the line containing `after`, in order,
/// comments and blank lines left out.
fn readme_commands(after: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(crate::support::e2e::workspace_root().join("README.md"))
        .expect("README.md");
    let start = readme
        .find(after)
        .unwrap_or_else(|| panic!("README has no {after:?}"));
    let block = readme[start..]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("no sh block after {after:?} in README"));
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Runs a README command line with `sh` from the repository root, against this cluster
/// (`KUBECONFIG`); returns (success, stdout, stderr).
async fn run_line(cluster: &Cluster, line: &str) -> (bool, String, String) {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", line])
        .current_dir(crate::support::e2e::workspace_root())
        .env("KUBECONFIG", &cluster.kubeconfig);
    let out = crate::support::e2e::run(cmd, "sh", GIVE_UP).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pods of `namespace` matching `selector` that are Ready.
async fn ready_pods(cluster: &Cluster, namespace: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let list = api
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// The real user id of process `pid` (`/proc/PID/status`).
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` sees its root filesystem read-only (`/proc/PID/mountinfo`: the mount
/// point is the 5th field, its options the 6th).
fn root_read_only(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.get(4) == Some(&"/"))
        .last()
        .is_some_and(|f| f.get(5).is_some_and(|o| o.split(',').any(|o| o == "ro")))
}

/// The APIService object.
async fn apiservice(cluster: &Cluster, name: &str) -> serde_json::Value {
    let req = http::Request::get(format!(
        "/apis/apiregistration.k8s.io/v1/apiservices/{name}"
    ))
    .body(Vec::new())
    .expect("request");
    let text = cluster
        .client
        .request_text(req)
        .await
        .unwrap_or_else(|e| panic!("reading APIService {name}: {e}"));
    serde_json::from_str(&text).expect("APIService JSON")
}

/// The whole scenario once the adapter's manifests under test are applied (at `applied`, in
/// namespace `ws-metrics`); prints a `SHIPPED <what>` line with the times.
async fn adapter_as_shipped_scales_the_example(cluster: &Cluster, what: &str, applied: Instant) {
    // The adapter Deployment's two replicas run and turn Ready (/readyz: the front-proxy CA
    // ConfigMap loaded through the shipped RBAC).
    cluster
        .wait("both adapter pods Ready", GIVE_UP, || async {
            ready_pods(
                cluster,
                "ws-metrics",
                "app.kubernetes.io/name=ws-metrics-adapter",
            )
            .await
            .len()
                == 2
        })
        .await;
    let ready_at = applied.elapsed();
    // They run as the securityContext's user, not as root, on a read-only root filesystem.
    for (name, _) in cluster.agent.pods.pods() {
        if name.starts_with("ws-metrics-adapter-") {
            let pid = cluster.agent.pods.pid(&name);
            assert_eq!(
                uid_of(pid),
                Some(65532),
                "{name} (pid {pid}) runs as another user"
            );
            assert!(
                root_read_only(pid),
                "{name} (pid {pid}) has a writable root"
            );
        }
    }
    for version in ["v1beta2", "v1beta1"] {
        let name = format!("{version}.custom.metrics.k8s.io");
        let client = cluster.client.clone();
        cluster
            .wait(&format!("APIService {name} Available"), GIVE_UP, || {
                let client = client.clone();
                let name = name.clone();
                async move { cluster::apiservice_available(&client, &name).await }
            })
            .await;
        let object = apiservice(cluster, &name).await;
        let spec = &object["spec"];
        assert!(
            spec["insecureSkipTLSVerify"].as_bool() != Some(true),
            "{name} skips TLS verification: {spec}"
        );
        assert!(
            spec["caBundle"].as_str().is_some_and(|b| !b.is_empty()),
            "{name} has no caBundle (the adapter writes it): {spec}"
        );
    }

    let available_at = applied.elapsed();

    // The example workload and its HPA, as the quick start applies them.
    let quick_start = readme_commands("Then apply the adapter");
    let examples = quick_start
        .iter()
        .find(|l| l.starts_with("kubectl apply -k manifests/examples"))
        .expect("the quick start applies manifests/examples");
    let (ok, out, err) = run_line(cluster, examples).await;
    assert!(ok, "{examples}: {out}{err}");
    cluster
        .wait("both ws-demo pods Ready", GIVE_UP, || async {
            ready_pods(cluster, NAMESPACE, "app=ws-demo").await.len() == 2
        })
        .await;

    // Connections, all to the first pod (its own address on the pod network).
    let first = ready_pods(cluster, NAMESPACE, "app=ws-demo")
        .await
        .into_iter()
        .next()
        .expect("a ws-demo pod");
    let ip = first
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("podIP");
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let route = ["chat", "echo", "ticker"][i % 3];
        let (ws, _) = connect_async(format!("ws://{ip}:9000/ws/{route}"))
            .await
            .unwrap_or_else(|e| panic!("connection {i} to {ip}: {e}"));
        clients.push(ws);
    }

    // The README's `kubectl get --raw` lines answer, verbatim but for the example pod name.
    let pod_name = first.metadata.name.clone().expect("pod name");
    let mut lines: Vec<String> = quick_start
        .iter()
        .filter(|l| l.starts_with("kubectl get --raw"))
        .cloned()
        .collect();
    lines.extend(
        readme_commands("## `kubectl get --raw` examples")
            .into_iter()
            .map(|l| l.replace("ws-demo-7d9c5-x2k4p", &pod_name)),
    );
    assert!(lines.len() >= 6, "README get --raw lines: {lines:?}");
    for line in &lines {
        let start = Instant::now();
        loop {
            let (ok, out, err) = run_line(cluster, line).await;
            if ok && serde_json::from_str::<serde_json::Value>(&out).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < GIVE_UP,
                "`{line}` did not answer within {GIVE_UP:?}: {out}{err}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The namespace total through kubectl is what the test holds open.
    let total = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/deployments.apps/ws-demo/websocket_connections";
    cluster
        .wait("the Deployment's total at 1200", GIVE_UP, || async {
            let (ok, out, _) = cluster.kubectl(&["get", "--raw", total]).await;
            ok && serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| v["items"][0]["value"].as_str().map(str::to_owned))
                .is_some_and(|v| v == CONNECTIONS.to_string())
        })
        .await;

    // The example HPA (min 2, 500 per pod) goes to 3, and the third pod turns Ready.
    let loaded_at = applied.elapsed();
    wait_for_hpa_at(cluster, 3).await;
    cluster
        .wait("3 ws-demo pods Ready", GIVE_UP, || async {
            ready_pods(cluster, NAMESPACE, "app=ws-demo").await.len() == 3
        })
        .await;
    eprintln!(
        "SHIPPED {what}: adapter pods Ready {:.1} s after apply, APIServices Available {:.1} s, \
         {CONNECTIONS} connections held at {:.1} s, example HPA at 3 replicas with 3 pods Ready \
         {:.1} s",
        ready_at.as_secs_f64(),
        available_at.as_secs_f64(),
        loaded_at.as_secs_f64(),
        applied.elapsed().as_secs_f64()
    );
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_manifests_applied_as_shipped_scale_the_example() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(Options {
        from_spec: true,
        ..Options::default()
    })
    .await;
    let quick_start = readme_commands("Then apply the adapter");
    let base = quick_start
        .iter()
        .find(|l| l.starts_with("kubectl apply -k manifests/") && !l.contains("examples"))
        .expect("the quick start applies manifests/");
    let applied = Instant::now();
    let (ok, out, err) = run_line(&cluster, base).await;
    assert!(ok, "{base}: {out}{err}");
    adapter_as_shipped_scales_the_example(&cluster, "kustomize", applied).await;
}
