//! The self-managed serving CA on the real control plane: APIServices registered without a
//! `caBundle` (and without `insecureSkipTLSVerify`) become Available once the adapter publishes
//! its CA, and reads through the aggregator keep working while the serving certificate is
//! re-issued every few seconds.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};

use crate::cluster::{ADAPTER_NAMESPACE, Cluster, GIVE_UP, Options, SERVING_CA_SECRET};

/// An APIService of another server, named in --apiservices.
const FOREIGN: &str = "v1alpha1.foreign.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ca_is_published_and_rotation_keeps_reads_working() {
    let _serial = crate::ONE_AT_A_TIME.lock().await;
    // Lifetime 6 s: a new serving certificate every 4 s.
    let cluster = Cluster::start(Options {
        adapter_args: vec![
            "--serving-cert-validity=6s".into(),
            // The last one points at another server (as prometheus-adapter's do before a
            // takeover): its caBundle must be left alone.
            format!("--apiservices=v1beta2.custom.metrics.k8s.io,v1beta1.custom.metrics.k8s.io,{FOREIGN}"),
        ],
        managed_ca: true,
        ..Options::default()
    })
    .await;
    // Cluster::start waited for both APIServices to be Available: the aggregator verified the
    // adapter's certificate against the caBundle the adapter wrote. It is the Secret's CA.
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ADAPTER_NAMESPACE);
    let secret = secrets.get(SERVING_CA_SECRET).await.expect("CA Secret");
    let ca = secret.data.expect("data")["ca.crt"].0.clone();
    let resource = ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    };
    let apiservices: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &resource);
    for name in [
        "v1beta2.custom.metrics.k8s.io",
        "v1beta1.custom.metrics.k8s.io",
    ] {
        let svc = apiservices.get(name).await.expect("APIService");
        let bundle: k8s_openapi::ByteString =
            serde_json::from_value(svc.data["spec"]["caBundle"].clone()).expect("caBundle");
        assert_eq!(bundle.0, ca, "{name}: caBundle is the managed CA");
        assert!(
            svc.data["spec"]
                .get("insecureSkipTLSVerify")
                .is_none_or(|v| v.is_null() || v == false)
        );
    }

    // The HPA controller reads the metric through the aggregator with its own identity.
    cluster.kubectl_apply(&crate::deployment(1)).await;
    cluster.kubectl_apply(&crate::hpa(1, 3, 0)).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.client.clone(), "default");
    let scaling_active = || {
        let hpas = hpas.clone();
        async move {
            let status = hpas.get_status("ws-demo").await.ok()?.status?;
            let active = status
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "ScalingActive")?;
            Some((
                active.status == "True",
                format!(
                    "{}: {:?}",
                    active.reason.unwrap_or_default(),
                    active.message
                ),
            ))
        }
    };
    cluster
        .wait("HPA computing from the metric", GIVE_UP, || async {
            scaling_active().await.is_some_and(|(ok, _)| ok)
        })
        .await;

    // Reads through kube-apiserver and the aggregator, and the HPA's own reads, until the adapter
    // has renewed its serving certificate twice more (a count of rotations, not a time).
    let path =
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/websocket_connections";
    let renewals_before = renewals(&cluster);
    let started = Instant::now();
    let mut reads = 0;
    while renewals(&cluster) < renewals_before + 2 {
        assert!(
            started.elapsed() < GIVE_UP,
            "{} renewals in {GIVE_UP:?} (serving certificate valid 6 s)",
            renewals(&cluster) - renewals_before
        );
        let req = http::Request::get(path).body(Vec::new()).expect("request");
        let text =
            cluster.client.request_text(req).await.unwrap_or_else(|e| {
                panic!("read {reads} failed after {:?}: {e}", started.elapsed())
            });
        assert!(text.contains("MetricValueList"), "{text}");
        let (ok, why) = scaling_active().await.expect("HPA status");
        assert!(
            ok,
            "HPA stopped computing from the metric after {:?}: {why}",
            started.elapsed()
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let renewed = renewals(&cluster) - renewals_before;
    eprintln!(
        "{reads} reads, all 200, HPA ScalingActive throughout, across {renewed} serving-certificate \
         renewals in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(reads > 0, "no read between the renewals");
    // An APIService pointing at another Service keeps its own TLS settings through a caBundle
    // check of the adapter, although the adapter may patch it.
    cluster
        .kubectl_apply(&format!(
            "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {{name: {FOREIGN}}}\n\
             spec:\n  group: foreign.example.com\n  version: v1alpha1\n\
             \x20 service: {{name: prometheus-adapter, namespace: monitoring, port: 443}}\n\
             \x20 groupPriorityMinimum: 100\n  versionPriority: 100\n  insecureSkipTLSVerify: true\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
             metadata: {{name: foreign-apiservice}}\nrules:\n\
             - {{apiGroups: [apiregistration.k8s.io], resources: [apiservices], \
             resourceNames: [{FOREIGN}], verbs: [get, patch]}}\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata: {{name: foreign-apiservice}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: foreign-apiservice}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: ws-metrics-adapter}}]\n"
        ))
        .await;
    // What must not happen (a patch of FOREIGN) is watched for one event, not a time: the
    // adapter's next caBundle check (every CA_BUNDLE_CHECK, 10 s) after the apply. Until the
    // object and its RBAC exist, that check fails on it (GET 404 or 403, "caBundle not
    // applied"); the first check that reads it decides and logs "caBundle left alone" in the
    // same step in which it would otherwise patch (serving_ca.rs, patch_apiservices).
    let applied = Instant::now();
    cluster
        .wait(
            &format!("a caBundle check that left {FOREIGN} alone"),
            GIVE_UP,
            || async { !adapter_log_lines(&cluster, &["caBundle left alone", FOREIGN]).is_empty() },
        )
        .await;
    eprintln!(
        "{FOREIGN} left alone by the check {:.1} s after it was applied (checks every {:?})",
        applied.elapsed().as_secs_f64(),
        server_ca_check()
    );
    assert!(
        adapter_log_lines(&cluster, &["caBundle set", FOREIGN]).is_empty(),
        "the adapter patched {FOREIGN}"
    );
    let foreign = apiservices.get(FOREIGN).await.expect("foreign APIService");
    assert_eq!(
        foreign.data["spec"]["insecureSkipTLSVerify"], true,
        "{foreign:?}"
    );
    assert!(
        foreign.data["spec"]
            .get("caBundle")
            .is_none_or(|v| v.is_null()),
        "{foreign:?}"
    );
}

/// The adapter's log so far.
fn adapter_log(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.dir().join("logs/ws-metrics-adapter.log")).expect("adapter log")
}

/// Lines of the adapter's log containing every one of `needles`.
fn adapter_log_lines(cluster: &Cluster, needles: &[&str]) -> Vec<String> {
    adapter_log(cluster)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Serving-certificate renewals the adapter has logged so far.
fn renewals(cluster: &Cluster) -> usize {
    adapter_log_lines(cluster, &["serving certificate renewed"]).len()
}

fn server_ca_check() -> Duration {
    ws_metrics_adapter::server::serving_ca::CA_BUNDLE_CHECK
}
