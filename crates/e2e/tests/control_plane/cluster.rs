//! A one-machine Kubernetes control plane for tests, on 127.0.0.1 only: etcd, kube-apiserver with
//! the aggregation layer, kube-controller-manager (deployment, replicaset, statefulset, HPA and serviceaccount
//! controllers), the node agent standing in for a kubelet, the adapter binary registered by
//! APIService objects with a `caBundle`, and on request HAProxy as the load balancer of the
//! pods a selector picks ([`Cluster::start_load_balancer`]). The adapter runs with delegated authentication and
//! authorization on (its own identity, bound to `system:auth-delegator` and the
//! `extension-apiserver-authentication-reader` Role). Everything started is stopped by pid when the `Cluster`
//! is dropped, pass or fail; on failure the logs (in a temp dir that is then kept) are printed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};

use crate::load_balancer::{self, Balance, LoadBalancer, Runtime};
use crate::node_agent::{self, NodeAgent};
use crate::pki::{self, Ca};
use crate::pod_network::PodNetwork;
use crate::pod_spec::ApiEndpoint;
use crate::support::e2e::{free_port, parse_listening_addr, require_tool};
use crate::support::plain_get;

/// How long any wait of these tests gives something before failing: a deadline to give up on a
/// daemon that will never get there, not a speed claim. Generous, because a 2-core machine with
/// another build beside is 5-10x slower than an idle one; measured times are printed instead.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(300);

/// Starts of etcd or kube-apiserver on fresh ports before giving up (see
/// [`Cluster::start_on_free_ports`]).
const PORT_ATTEMPTS: u32 = 5;

/// Bearer tokens of the static token file (`token,user,uid,"groups"`). Tokens keep the harness
/// simple; the identities are the ones a real cluster gives these components.
pub(crate) const ADMIN_TOKEN: &str = "admin-token";
const KCM_TOKEN: &str = "kcm-token";
const ADAPTER_TOKEN: &str = "adapter-token";

/// The Service (type ExternalName `localhost`) the APIService objects name; the adapter's serving
/// certificate carries `ws-metrics-adapter.ws-metrics.svc`, the name the aggregator verifies.
pub(crate) const ADAPTER_NAMESPACE: &str = "ws-metrics";
const ADAPTER_SERVICE: &str = "ws-metrics-adapter";

/// What differs between scenarios.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// `--horizontal-pod-autoscaler-sync-period` of kube-controller-manager.
    pub hpa_sync_period: Duration,
    /// Extra flags for the adapter (`--max-age`, ...).
    pub adapter_args: Vec<String>,
    /// The adapter manages its serving CA (`--serving-ca-secret`) and sets the APIServices'
    /// `caBundle` itself; they are registered without one. Otherwise it serves a certificate
    /// from files and the harness writes the `caBundle`.
    pub managed_ca: bool,
    /// Apply-as-shipped: no adapter, RBAC or registration of the harness's own; pods run from
    /// their specs in network namespaces on a [`PodNetwork`] (the agent also binds unscheduled
    /// pods), kube-apiserver listens on the node's address of that network too and routes
    /// aggregated requests to the adapter Service's endpoints (`--enable-aggregator-routing`: there
    /// is no kube-proxy for its ClusterIP), and kube-controller-manager runs the EndpointSlice
    /// and root-CA publisher controllers. The test applies the manifests it checks.
    pub from_spec: bool,
}

/// The Secret holding the adapter's CA with `Options::managed_ca`.
pub(crate) const SERVING_CA_SECRET: &str = "ws-metrics-adapter-serving-ca";

impl Default for Options {
    fn default() -> Self {
        Self {
            hpa_sync_period: Duration::from_secs(1),
            adapter_args: Vec::new(),
            managed_ca: false,
            from_spec: false,
        }
    }
}

/// A process of the cluster, its output in a log file.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A running control plane with the adapter registered.
pub(crate) struct Cluster {
    dir: Option<tempfile::TempDir>,
    daemons: Vec<Daemon>,
    /// Background tasks of the harness (the load balancer's reconciler), aborted on drop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The cluster-admin kubeconfig (kubectl and the harness use it).
    pub kubeconfig: PathBuf,
    /// A client with cluster-admin rights.
    pub client: Client,
    /// The node agent: pods bound to its node run as `ws-demo` processes.
    pub agent: NodeAgent,
    /// The adapter's plain listener (`/readyz`, `/metrics`).
    pub adapter_metrics: SocketAddr,
    /// The adapter's HTTPS API, for calls that bypass kube-apiserver.
    pub adapter_addr: SocketAddr,
    /// kube-apiserver's address.
    pub apiserver_addr: SocketAddr,
    /// The pod network of [`Options::from_spec`]; dropped after the agent (its pods' namespaces
    /// go first).
    _network: Option<Arc<PodNetwork>>,
    /// The CAs: kube-apiserver's serving and client CA (`--client-ca-file`), the front-proxy CA
    /// and the adapter's serving CA.
    pub pki: Pki,
    started: Instant,
}

/// The CAs of a cluster, to sign more certificates in tests.
pub(crate) struct Pki {
    /// Serving CA of kube-apiserver and its `--client-ca-file`.
    pub cluster_ca: Ca,
    /// `--requestheader-client-ca-file`; signs kube-apiserver's front-proxy client certificate.
    pub front_proxy_ca: Ca,
    /// The adapter's serving CA (the APIService `caBundle`).
    pub adapter_ca_pem: String,
}

/// Where the control-plane binaries are: builds them on first use (about 10 minutes on 2 cores;
/// cached outside git afterwards). Go missing fails the test with how to get it: a
/// control-plane test never passes by skipping. Every test of this process calls it; the script
/// runs once per process (a failure is kept and reported to each), so a cold cache is not built
/// by several tests at once.
pub(crate) fn binaries() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    // NB: a panic inside get_or_init would leave the cell empty and make the next test build
    // again; the result is caught instead.
    let dir = DIR.get_or_init(|| {
        std::panic::catch_unwind(build_binaries).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "building the control-plane binaries panicked".into())
        })
    });
    match dir {
        Ok(dir) => dir.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Runs `scripts/build-control-plane.sh` (a cache hit prints the directory at once).
fn build_binaries() -> PathBuf {
    require_tool(
        "go",
        "install Go 1.26+ to build kube-apiserver, kube-controller-manager and etcd",
    );
    let script = crate::support::e2e::workspace_root().join("scripts/build-control-plane.sh");
    // stderr passes through: the first build reports its progress there.
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    PathBuf::from(dir)
}

fn spawn(dir: &Path, name: &'static str, program: &Path, args: &[String]) -> Daemon {
    let log = dir.join("logs").join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
    Daemon { name, child, log }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A kubeconfig for `server` trusting `ca`, authenticating with `token`.
pub(crate) fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) {
    crate::support::e2e::write_kubeconfig(path, server, Some(ca), Some(token));
}

impl Cluster {
    /// Starts everything and waits until the APIService objects are Available. Panics when the
    /// control-plane binaries cannot be had (Go missing), with how to get them.
    pub(crate) async fn start(options: Options) -> Self {
        let bin = tokio::task::spawn_blocking(binaries)
            .await
            .expect("build task");
        ws_metrics_adapter::server::tls::install_provider();
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("ws-control-plane-")
            .tempdir()
            .expect("tempdir");
        let d = &dir.path().to_owned();
        std::fs::create_dir_all(d.join("logs")).expect("logs dir");
        let pki_dir = d.join("pki");
        std::fs::create_dir_all(&pki_dir).expect("pki dir");

        let network = options.from_spec.then(|| Arc::new(PodNetwork::create()));
        let node_ip = network.as_ref().map(|n| n.node_ip().to_string());

        // Certificates.
        let cluster_ca = Ca::new("ws-test-cluster-ca");
        let cluster_ca_file = cluster_ca.write(&pki_dir, "cluster-ca");
        let mut apiserver_names = vec!["localhost", "127.0.0.1", "kubernetes.default.svc"];
        apiserver_names.extend(node_ip.as_deref());
        let apiserver = cluster_ca.leaf(
            &pki_dir,
            "apiserver",
            "kube-apiserver",
            &[],
            &apiserver_names,
            &[ServerAuth],
        );
        let front_proxy_ca = Ca::new("ws-test-front-proxy-ca");
        let front_proxy_ca_file = front_proxy_ca.write(&pki_dir, "front-proxy-ca");
        let front_proxy = front_proxy_ca.leaf(
            &pki_dir,
            "front-proxy-client",
            "front-proxy-client",
            &[],
            &[],
            &[ClientAuth],
        );
        let adapter_ca = Ca::new("ws-metrics-adapter-ca");
        let adapter_tls = adapter_ca.leaf(
            &pki_dir,
            "adapter",
            "ws-metrics-adapter",
            &[],
            &[
                &format!("{ADAPTER_SERVICE}.{ADAPTER_NAMESPACE}.svc"),
                "localhost",
                "127.0.0.1",
            ],
            &[ServerAuth],
        );
        let sa_key = pki_dir.join("sa.key");
        let sa_pub = pki_dir.join("sa.pub");
        pki::write_signing_key(&sa_key, &sa_pub);
        let tokens = d.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n\
                 {KCM_TOKEN},system:kube-controller-manager,kcm-uid\n\
                 {ADAPTER_TOKEN},ws-metrics-adapter,adapter-uid\n"
            ),
        )
        .expect("token file");

        let mut cluster = Self {
            dir: Some(dir),
            daemons: Vec::new(),
            tasks: Vec::new(),
            kubeconfig: PathBuf::new(),
            client: placeholder_client(),
            agent: NodeAgent::inert(),
            adapter_metrics: "127.0.0.1:0".parse().expect("addr"),
            adapter_addr: "127.0.0.1:0".parse().expect("addr"),
            apiserver_addr: "127.0.0.1:0".parse().expect("addr"),
            _network: network.clone(),
            pki: Pki {
                cluster_ca,
                front_proxy_ca,
                adapter_ca_pem: adapter_ca.pem.clone(),
            },
            started,
        };

        // etcd: client and peer ports.
        let etcd_bin = bin.join("etcd");
        let etcd_data = d.join("etcd");
        let [etcd_client, _etcd_peer] = cluster
            .start_on_free_ports(
                "etcd",
                &etcd_bin,
                |[client, peer]| {
                    // A retry starts on an empty data dir: the failed attempt may have written
                    // its peer URL there.
                    let _ = std::fs::remove_dir_all(&etcd_data);
                    args(&[
                        "--name=test",
                        &format!("--data-dir={}", etcd_data.display()),
                        &format!("--listen-client-urls=http://127.0.0.1:{client}"),
                        &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                        &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                        &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                        &format!("--initial-cluster=test=http://127.0.0.1:{peer}"),
                        "--log-level=warn",
                        // A test cluster's data need not survive a power cut; fsync dominates on
                        // shared disks.
                        "--unsafe-no-fsync",
                    ])
                },
                "etcd /health",
                |[client, _]| async move {
                    let addr = SocketAddr::from(([127, 0, 0, 1], client));
                    matches!(plain_get(addr, "/health").await, Ok((200, b)) if b.contains("true"))
                },
            )
            .await;

        // kube-apiserver with the aggregation layer: front-proxy client certificate, requestheader
        // flags, RBAC, service-account keys.
        let p = |path: &Path| path.display().to_string();
        let kubeconfig = d.join("admin.kubeconfig");
        let apiserver_bin = bin.join("kube-apiserver");
        let [api_port] = cluster
            .start_on_free_ports(
                "kube-apiserver",
                &apiserver_bin,
                |[port]| {
                    let mut argv = args(&[
                        &format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                        &format!("--secure-port={port}"),
                        &format!("--tls-cert-file={}", p(&apiserver.cert)),
                        &format!("--tls-private-key-file={}", p(&apiserver.key)),
                        &format!("--client-ca-file={}", p(&cluster_ca_file)),
                        &format!("--token-auth-file={}", p(&tokens)),
                        "--authorization-mode=RBAC",
                        "--service-account-issuer=https://kubernetes.default.svc",
                        &format!("--service-account-key-file={}", p(&sa_pub)),
                        &format!("--service-account-signing-key-file={}", p(&sa_key)),
                        "--service-cluster-ip-range=10.96.0.0/24",
                        &format!("--requestheader-client-ca-file={}", p(&front_proxy_ca_file)),
                        "--requestheader-allowed-names=front-proxy-client",
                        "--requestheader-username-headers=X-Remote-User",
                        "--requestheader-group-headers=X-Remote-Group",
                        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                        &format!("--proxy-client-cert-file={}", p(&front_proxy.cert)),
                        &format!("--proxy-client-key-file={}", p(&front_proxy.key)),
                        "--profiling=false",
                        "--v=1",
                    ]);
                    match &node_ip {
                        // Pods reach it on the node's address; aggregated requests go to the
                        // Service's endpoints (no kube-proxy here for a ClusterIP).
                        Some(ip) => argv.extend(args(&[
                            "--bind-address=0.0.0.0",
                            &format!("--advertise-address={ip}"),
                            "--enable-aggregator-routing=true",
                        ])),
                        None => argv.push("--bind-address=127.0.0.1".into()),
                    }
                    argv
                },
                "kube-apiserver /readyz",
                |[port]| {
                    let kubeconfig = kubeconfig.clone();
                    let ca = cluster_ca_file.clone();
                    async move {
                        let server = format!("https://127.0.0.1:{port}");
                        write_kubeconfig(&kubeconfig, &server, &ca, ADMIN_TOKEN);
                        let Ok(client) = client_from(&kubeconfig).await else {
                            return false;
                        };
                        let req = http::Request::get("/readyz")
                            .body(Vec::new())
                            .expect("request");
                        client
                            .request_text(req)
                            .await
                            .is_ok_and(|t| t.trim() == "ok")
                    }
                },
            )
            .await;
        cluster.apiserver_addr = SocketAddr::from(([127, 0, 0, 1], api_port));
        let server = format!("https://127.0.0.1:{api_port}");
        write_kubeconfig(&kubeconfig, &server, &cluster_ca_file, ADMIN_TOKEN);
        let kcm_kubeconfig = d.join("kcm.kubeconfig");
        write_kubeconfig(&kcm_kubeconfig, &server, &cluster_ca_file, KCM_TOKEN);
        let adapter_kubeconfig = d.join("adapter.kubeconfig");
        write_kubeconfig(
            &adapter_kubeconfig,
            &server,
            &cluster_ca_file,
            ADAPTER_TOKEN,
        );
        cluster.kubeconfig = kubeconfig.clone();
        cluster.client = client_from(&kubeconfig).await.expect("kube client");

        // kube-controller-manager: only the controllers this test needs (NB: not the
        // EndpointSlice controller: the API refuses the node agent's loopback pod IPs in an
        // EndpointSlice; the load balancer follows the pods by its rules instead). With
        // --use-service-account-credentials each controller calls the API as its own service
        // account (the HPA as system:serviceaccount:kube-system:horizontal-pod-autoscaler), as in a
        // kubeadm cluster.
        let mut controllers = String::from(
            "deployment-controller,replicaset-controller,statefulset-controller,horizontal-pod-autoscaler-controller,serviceaccount-controller",
        );
        let mut kcm_extra = Vec::new();
        if options.from_spec {
            // Pod addresses are not loopback ones here, so EndpointSlices work: the aggregator
            // routes through them. kube-root-ca.crt is what a pod's projected token volume holds.
            controllers
                .push_str(",endpointslice-controller,root-ca-certificate-publisher-controller");
            kcm_extra.push(format!("--root-ca-file={}", p(&cluster_ca_file)));
        }
        let mut kcm_args = args(&[
            &format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            &format!("--controllers={controllers}"),
            "--use-service-account-credentials=true",
            &format!(
                "--horizontal-pod-autoscaler-sync-period={}ms",
                options.hpa_sync_period.as_millis()
            ),
            "--leader-elect=false",
            "--secure-port=0",
            "--v=2",
        ]);
        kcm_args.extend(kcm_extra);
        cluster.daemons.push(spawn(
            d,
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &kcm_args,
        ));

        let runtime = match (&network, &node_ip) {
            (Some(network), Some(ip)) => node_agent::Runtime::FromSpec(
                network.clone(),
                ApiEndpoint(SocketAddr::new(ip.parse().expect("node ip"), api_port)),
            ),
            _ => node_agent::Runtime::Loopback,
        };
        cluster.agent = NodeAgent::start(cluster.client.clone(), d.join("pods"), runtime).await;
        if options.from_spec {
            cluster.wait_for_default_service_account().await;
            eprintln!(
                "control plane (pods from their specs) ready in {:.1} s (logs: {})",
                cluster.started.elapsed().as_secs_f64(),
                cluster.dir().join("logs").display()
            );
            return cluster;
        }

        // The adapter's RBAC, then the adapter on port 0, then the registration naming the port
        // it bound (no free-port race for the adapter).
        cluster.kubectl_apply(&rbac()).await;
        start_adapter(&mut cluster, &adapter_kubeconfig, &adapter_tls, &options).await;
        cluster
            .kubectl_apply(&registration(
                (!options.managed_ca).then_some(adapter_ca.pem.as_str()),
                cluster.adapter_addr.port(),
            ))
            .await;
        let metrics = cluster.adapter_metrics;
        cluster
            .wait("adapter /readyz", GIVE_UP, || async move {
                matches!(plain_get(metrics, "/readyz").await, Ok((200, _)))
            })
            .await;
        cluster.wait_for_custom_metrics_apiservices().await;
        cluster.wait_for_default_service_account().await;
        eprintln!(
            "control plane ready in {:.1} s (logs: {})",
            cluster.started.elapsed().as_secs_f64(),
            cluster.dir().join("logs").display()
        );
        cluster
    }

    /// Waits until both custom.metrics.k8s.io APIServices (v1beta2, v1beta1) are Available.
    pub(crate) async fn wait_for_custom_metrics_apiservices(&self) {
        for version in ["v1beta2", "v1beta1"] {
            let name = format!("{version}.custom.metrics.k8s.io");
            let client = self.client.clone();
            self.wait(&format!("APIService {name} Available"), GIVE_UP, || {
                let client = client.clone();
                let name = name.clone();
                async move { apiservice_available(&client, &name).await }
            })
            .await;
        }
    }

    /// Pods need the namespace's default ServiceAccount (ServiceAccount admission).
    async fn wait_for_default_service_account(&self) {
        let client = self.client.clone();
        self.wait("ServiceAccount default/default", GIVE_UP, || {
            let client = client.clone();
            async move {
                let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    kube::Api::namespaced(client, "default");
                api.get_opt("default").await.ok().flatten().is_some()
            }
        })
        .await;
    }

    /// The temp dir holding certificates, kubeconfigs and logs.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir kept until drop").path()
    }

    /// Polls `ready` every 100 ms; on timeout panics (printing the logs through `Drop`).
    pub(crate) async fn wait<F, Fut>(&self, what: &str, deadline: Duration, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !ready().await {
            self.assert_running(what);
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics naming the first daemon that exited: it will not make anything ready.
    fn assert_running(&self, what: &str) {
        if let Some(daemon) = self.daemons.iter().find(|d| exited(d)) {
            panic!("{} exited while waiting for {what}", daemon.name);
        }
    }

    /// Starts daemon `name` (`program` with `argv(ports)`) on `N` ports from [`free_port`] and
    /// waits until `ready(ports)`; returns the ports.
    ///
    /// NB: etcd and kube-apiserver take their ports as flags and cannot bind :0 and report what
    /// they bound, so a port `free_port` released may be taken by another process (another test
    /// binary, another engineer's cluster) before the daemon binds it. The daemon then exits with
    /// "address already in use"; this starts it again on fresh ports, at most [`PORT_ATTEMPTS`]
    /// times, keeping each failed attempt's log beside the others.
    async fn start_on_free_ports<const N: usize, A, F, Fut>(
        &mut self,
        name: &'static str,
        program: &Path,
        argv: A,
        what: &str,
        mut ready: F,
    ) -> [u16; N]
    where
        A: Fn([u16; N]) -> Vec<String>,
        F: FnMut([u16; N]) -> Fut,
        Fut: Future<Output = bool>,
    {
        for attempt in 1..=PORT_ATTEMPTS {
            let ports: [u16; N] = std::array::from_fn(|_| free_port());
            let daemon = spawn(self.dir(), name, program, &argv(ports));
            self.daemons.push(daemon);
            let start = Instant::now();
            loop {
                if ready(ports).await {
                    return ports;
                }
                let last = self.daemons.last().expect("the daemon pushed above");
                if exited(last) {
                    let log = std::fs::read_to_string(&last.log).unwrap_or_default();
                    // etcd and kube-apiserver write it in lower case, HAProxy capitalised.
                    let taken = log.to_ascii_lowercase().contains("address already in use");
                    if !taken || attempt == PORT_ATTEMPTS {
                        panic!("{name} exited while waiting for {what} (attempt {attempt})");
                    }
                    let mut failed = self.daemons.pop().expect("the daemon pushed above");
                    let _ = failed.child.wait();
                    let kept = failed
                        .log
                        .with_file_name(format!("{name}.attempt-{attempt}.log"));
                    let _ = std::fs::rename(&failed.log, &kept);
                    eprintln!(
                        "{name}: one of ports {ports:?} was taken before it bound it ({}); \
                         starting again on fresh ports",
                        kept.display()
                    );
                    break;
                }
                self.assert_running(what);
                assert!(
                    start.elapsed() < GIVE_UP,
                    "timed out after {GIVE_UP:?} waiting for {what}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts HAProxy as the load balancer of the pods of namespace `default` that label selector
    /// `selector` picks, on their `pod_port` (what a Service with that selector would front), on a
    /// free port, balancing new connections with `balance`; and a task that makes its backends
    /// follow those pods ([`load_balancer::follow`]). Both are stopped when the cluster is
    /// dropped; HAProxy's log is with the others. Panics, with how to install it, when HAProxy is
    /// missing.
    ///
    /// NB: HAProxy takes its port from the configuration and cannot bind :0 and report it; it is
    /// started on a fresh port after "Address already in use", like etcd and kube-apiserver
    /// ([`Self::start_on_free_ports`]).
    pub(crate) async fn start_load_balancer(
        &mut self,
        selector: &str,
        pod_port: u16,
        balance: Balance,
    ) -> LoadBalancer {
        let haproxy = load_balancer::haproxy_binary();
        let dir = self.dir().join("haproxy");
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let socket = dir.join("haproxy.sock");
        let cfg = dir.join("haproxy.cfg");
        let runtime = Runtime::new(socket.clone());
        let [port] = self
            .start_on_free_ports(
                "haproxy",
                &haproxy,
                |[port]| {
                    // A retry must not find the failed attempt's socket file.
                    let _ = std::fs::remove_file(&socket);
                    std::fs::write(&cfg, load_balancer::config(port, &socket, balance))
                        .expect("write haproxy.cfg");
                    // -db: in the foreground, one process (no master-worker): the pid the
                    // cluster stops is HAProxy itself.
                    args(&["-db", "-f", &cfg.display().to_string()])
                },
                "HAProxy's frontend and runtime API",
                |[port]| {
                    let runtime = runtime.clone();
                    async move {
                        runtime.command("show info").await.is_ok()
                            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                                .await
                                .is_ok()
                    }
                },
            )
            .await;
        self.tasks.push(tokio::spawn(load_balancer::follow(
            self.client.clone(),
            "default".into(),
            selector.into(),
            pod_port,
            runtime.clone(),
        )));
        eprintln!("HAProxy ({}) on 127.0.0.1:{port}", balance.keyword());
        LoadBalancer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            runtime,
        }
    }

    /// Runs kubectl against this cluster; returns (success, stdout, stderr).
    pub(crate) async fn kubectl(&self, argv: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(argv);
        let out = crate::support::e2e::run(cmd, "kubectl", GIVE_UP).await;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl apply -f` of a YAML document set; panics when kubectl fails.
    pub(crate) async fn kubectl_apply(&self, yaml: &str) {
        let file = tempfile::NamedTempFile::new_in(self.dir()).expect("manifest file");
        std::fs::write(file.path(), yaml).expect("write manifest");
        let path = file.path().display().to_string();
        let (ok, out, err) = self.kubectl(&["apply", "-f", &path]).await;
        assert!(ok, "kubectl apply failed:\n{out}\n{err}\n---\n{yaml}");
    }
}

/// Whether a daemon's process is gone (or a zombie). `Child::try_wait` would need `&mut`.
fn exited(daemon: &Daemon) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.child.id()));
    // The third field of /proc/PID/stat is the state; Z = exited, not yet reaped.
    stat.map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
}

/// Starts the adapter binary with both listeners on port 0, authenticating and authorizing
/// callers with its own identity (`kubeconfig`), and reads the addresses it bound from the
/// `listening on` lines of its log into `cluster`.
async fn start_adapter(
    cluster: &mut Cluster,
    kubeconfig: &Path,
    tls: &pki::Pair,
    options: &Options,
) {
    let mut argv = args(&[
        "serve",
        &format!("--kubeconfig={}", kubeconfig.display()),
        &format!("--authentication-kubeconfig={}", kubeconfig.display()),
        &format!("--authorization-kubeconfig={}", kubeconfig.display()),
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--metrics-bind-address=127.0.0.1:0",
    ]);
    if options.managed_ca {
        argv.push(format!(
            "--serving-ca-secret={ADAPTER_NAMESPACE}/{SERVING_CA_SECRET}"
        ));
    } else {
        argv.push(format!("--tls-cert-file={}", tls.cert.display()));
        argv.push(format!("--tls-private-key-file={}", tls.key.display()));
    }
    argv.extend(options.adapter_args.iter().cloned());
    let daemon = spawn(
        cluster.dir(),
        "ws-metrics-adapter",
        &crate::support::e2e::bin("ws-metrics-adapter"),
        &argv,
    );
    let log = daemon.log.clone();
    cluster.daemons.push(daemon);
    // `https://` is the API, `http://` the metrics and health listener (main.rs logs both).
    let bound = |scheme: &str| {
        parse_listening_addr(&std::fs::read_to_string(&log).unwrap_or_default(), scheme)
    };
    cluster
        .wait("the adapter's `listening on` lines", GIVE_UP, || async {
            bound("https").is_some() && bound("http").is_some()
        })
        .await;
    cluster.adapter_addr = bound("https").expect("logged, waited for above");
    cluster.adapter_metrics = bound("http").expect("logged, waited for above");
}

/// The adapter's namespace, what it may read (pods; the Deployments, StatefulSets, ReplicaSets
/// and Services whose Object metrics it serves, as `manifests/cluster-role-resource-reader.yaml`
/// allows) and do (TokenReview and SubjectAccessReview,
/// read the front-proxy ConfigMap: spec §5.5), what it needs to manage its CA (its Secret,
/// the two APIServices by name), and what `--rebalance` needs: watch HPAs and the workloads they
/// scale (Deployments, StatefulSets), patch pods (their deletion cost), and hold its Lease in the
/// adapter's namespace (the same rules as `manifests/cluster-role-workload-controller.yaml` and
/// `manifests/role-leader-lease.yaml`).
/// Applied before the adapter starts.
fn rbac() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ADAPTER_NAMESPACE}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: ws-metrics-adapter}}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [deployments, statefulsets, replicasets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: ws-metrics-adapter-leader-lease, namespace: {ADAPTER_NAMESPACE}}}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [ws-metrics-adapter-rebalance]
  verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ws-metrics-adapter-leader-lease, namespace: {ADAPTER_NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ws-metrics-adapter-leader-lease}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: ws-metrics-adapter}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: ws-metrics-adapter}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ws-metrics-adapter}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: ws-metrics-adapter}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: ws-metrics-adapter-serving-ca, namespace: {ADAPTER_NAMESPACE}}}
rules:
- {{apiGroups: [""], resources: [secrets], verbs: [create]}}
- {{apiGroups: [""], resources: [secrets], resourceNames: [{SERVING_CA_SECRET}], verbs: [get]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ws-metrics-adapter-serving-ca, namespace: {ADAPTER_NAMESPACE}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ws-metrics-adapter-serving-ca}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: ws-metrics-adapter}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: ws-metrics-adapter-apiservices}}
rules:
- apiGroups: [apiregistration.k8s.io]
  resources: [apiservices]
  resourceNames: [v1beta2.custom.metrics.k8s.io, v1beta1.custom.metrics.k8s.io]
  verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: ws-metrics-adapter-apiservices}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ws-metrics-adapter-apiservices}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: ws-metrics-adapter}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "ws-metrics-adapter:system:auth-delegator"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: ws-metrics-adapter}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: ws-metrics-adapter-auth-reader, namespace: kube-system}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: ws-metrics-adapter}}
"#
    )
}

/// The Service the APIService objects name (ExternalName `localhost`: the aggregator dials the
/// host name directly and skips the endpoints check) and the APIService objects for v1beta2 and
/// v1beta1 on `port`, with the adapter's CA as `caBundle` (without one when `ca_pem` is `None`:
/// the adapter sets it). Applied once the adapter has logged the port it bound.
fn registration(ca_pem: Option<&str>, port: u16) -> String {
    use base64::Engine;
    // `caBundle` is `[]byte`: base64 in JSON and YAML.
    let ca_bundle = ca_pem.map_or(String::new(), |pem| {
        format!(
            "\n  caBundle: {}",
            base64::engine::general_purpose::STANDARD.encode(pem)
        )
    });
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {ADAPTER_SERVICE}, namespace: {ADAPTER_NAMESPACE}}}
spec:
  type: ExternalName
  externalName: localhost
  ports:
  - {{name: https, port: {port}, protocol: TCP}}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta2.custom.metrics.k8s.io}}
spec:
  group: custom.metrics.k8s.io
  version: v1beta2
  service: {{name: {ADAPTER_SERVICE}, namespace: {ADAPTER_NAMESPACE}, port: {port}}}
  groupPriorityMinimum: 100
  versionPriority: 200{ca_bundle}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.custom.metrics.k8s.io}}
spec:
  group: custom.metrics.k8s.io
  version: v1beta1
  service: {{name: {ADAPTER_SERVICE}, namespace: {ADAPTER_NAMESPACE}, port: {port}}}
  groupPriorityMinimum: 100
  versionPriority: 100{ca_bundle}
"#
    )
}

/// Whether the APIService `name` reports `Available=True`.
pub(crate) async fn apiservice_available(client: &Client, name: &str) -> bool {
    let req = http::Request::get(format!(
        "/apis/apiregistration.k8s.io/v1/apiservices/{name}"
    ))
    .body(Vec::new())
    .expect("request");
    let Ok(text) = client.request_text(req).await else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Available" && c["status"] == "True")
}

/// A client for the cluster in `kubeconfig`.
async fn client_from(kubeconfig: &Path) -> Result<Client, String> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| e.to_string())
}

/// A client that is replaced before first use (the struct is built before the apiserver is up so
/// that a failure while starting still stops what was started).
fn placeholder_client() -> Client {
    let config = kube::Config::new("https://127.0.0.1:1".parse().expect("uri"));
    Client::try_from(config).expect("placeholder client")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.agent.stop();
        let failed = std::thread::panicking();
        // Stop in reverse order of start, by pid.
        for daemon in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(daemon.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(daemon.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        if failed {
            for daemon in &self.daemons {
                let text = std::fs::read_to_string(&daemon.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "----- last {} lines of {} ({}) -----\n{}",
                    tail.len(),
                    daemon.name,
                    daemon.log.display(),
                    tail.join("\n")
                );
            }
            if let Some(dir) = self.dir.take() {
                eprintln!("control-plane files kept in {}", dir.keep().display());
            }
        }
    }
}
