//! The node agent: a stand-in for a kubelet. It registers a Node and runs the pods bound to it,
//! in one of two ways ([`Runtime`]):
//! - **loopback**: whatever the spec says, the real demo WebSocket server (`ws-demo serve`) as a
//!   process on a loopback address of its own (127.x.y.z, unique on the machine), reported Running
//!   and Ready with that podIP once its /healthz answers;
//! - **from the spec** (the apply-as-shipped scenarios): each pod in a network namespace of its
//!   own on a [`PodNetwork`], its container run as its spec says ([`pod_spec`]), Ready as its
//!   readiness probe says; the agent also binds unscheduled pods to its node, standing in for
//!   kube-scheduler on this one-node cluster.
//!
//! When a pod is deleted it stops the process (SIGTERM, drain) and removes the pod as a kubelet
//! does.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use crate::pod_network::{PodNetns, PodNetwork};
use crate::pod_spec::{self, ApiEndpoint};
use crate::support::plain_get;

/// The node the agent registers; pod templates bind to it with `nodeName`.
pub(crate) const NODE_NAME: &str = "agent-0";
/// The port every demo pod listens on (WebSocket routes, /metrics, /healthz).
pub(crate) const POD_PORT: u16 = 8080;

/// How long a pod's process has to answer /healthz before the agent gives up on it (the pod
/// then never turns Ready, and the test waiting for it fails). Generous: it is not a speed claim.
const HEALTHZ_GIVE_UP: Duration = crate::cluster::GIVE_UP;

/// One pod the agent runs.
pub(crate) struct PodProcess {
    /// Pod name.
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's own loopback address.
    pub ip: Ipv4Addr,
    /// Reported Ready and not terminating: a Service would send it traffic.
    pub ready: bool,
    /// Deleted: SIGTERM sent, waiting for the process to exit.
    terminating: bool,
    /// The pod's process, killed by pid when this is dropped.
    process: Child,
    /// The readiness prober (pods run from their spec), stopped when this is dropped.
    prober: Option<AbortOnDrop>,
    /// The pod's network namespace (pods run from their spec), deleted after the process is
    /// killed (fields drop after `drop`).
    _netns: Option<PodNetns>,
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.prober.take();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Sends `signal` to `pid` with the `kill` command.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

impl PodProcess {
    /// A just-started pod: not Ready yet, not terminating, no prober.
    fn new(pod: &Pod, ip: Ipv4Addr, process: Child, netns: Option<PodNetns>) -> Self {
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            ready: false,
            terminating: false,
            process,
            prober: None,
            _netns: netns,
        }
    }

    /// Where the pod serves.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, POD_PORT))
    }
}

#[derive(Default)]
struct State {
    /// By `namespace/name`.
    pods: BTreeMap<String, PodProcess>,
}

/// A loopback address no other process listens on at [`POD_PORT`]: every pod of every cluster on
/// this machine (other test processes included) gets its own. Candidates run through
/// 127.1.0.0–127.254.255.255 from a pid-derived start, skipping addresses in use.
fn allocate_ip() -> Ipv4Addr {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 0x7F01_0000; // 127.1.0.0
    const SPAN: u32 = 0x00FE_0000; // up to 127.254.255.255
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(4096) % SPAN));
    loop {
        let ip = Ipv4Addr::from(FIRST + next.fetch_add(1, Ordering::Relaxed) % SPAN);
        let last = ip.octets()[3];
        if last != 0 && last != 255 && std::net::TcpListener::bind((ip, POD_PORT)).is_ok() {
            return ip;
        }
    }
}

/// How the agent runs a pod.
#[derive(Clone)]
pub(crate) enum Runtime {
    /// `ws-demo serve` on a loopback address, whatever the spec says.
    Loopback,
    /// The pod's own container from its spec, in a network namespace on this network, reaching
    /// kube-apiserver at this endpoint.
    FromSpec(Arc<PodNetwork>, ApiEndpoint),
}

/// Handle on the agent; stops every pod process when stopped or dropped.
pub(crate) struct NodeAgent {
    /// The pods the agent runs.
    pub pods: Pods,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A shared view of the pods the agent runs.
#[derive(Clone, Default)]
pub(crate) struct Pods(Arc<Mutex<State>>);

impl NodeAgent {
    /// An agent that runs nothing (placeholder while the cluster starts).
    pub(crate) fn inert() -> Self {
        Self {
            pods: Pods::default(),
            tasks: Vec::new(),
        }
    }

    /// Registers the Node (Ready) and starts watching the pods bound to it. `logs` receives one
    /// log file per pod process. With [`Runtime::FromSpec`] it also binds unscheduled pods to
    /// its node.
    pub(crate) async fn start(client: Client, logs: PathBuf, runtime: Runtime) -> Self {
        std::fs::create_dir_all(&logs).expect("pod log dir");
        register_node(&client).await;
        let pods = Pods::default();
        let mut tasks = Vec::new();
        if matches!(runtime, Runtime::FromSpec(..)) {
            tasks.push(tokio::spawn(bind_unscheduled(client.clone())));
        }
        tasks.push(tokio::spawn(run(client, pods.0.clone(), logs, runtime)));
        Self { pods, tasks }
    }

    /// Stops watching and kills every pod process.
    pub(crate) fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        // PodProcess kills its process by pid on drop.
        self.pods.0.lock().expect("agent state").pods.clear();
    }
}

impl Pods {
    /// Addresses of the Ready, non-terminating pods whose labels include `key=value`, sorted by
    /// pod name (what a Service with that selector would send traffic to).
    pub(crate) fn endpoints(&self, key: &str, value: &str) -> Vec<SocketAddr> {
        let state = self.0.lock().expect("agent state");
        state
            .pods
            .values()
            .filter(|p| p.ready && p.labels.get(key).is_some_and(|v| v == value))
            .map(PodProcess::addr)
            .collect()
    }

    /// Names of the pods reported Ready and not terminating (whatever their labels).
    pub(crate) fn ready(&self) -> std::collections::BTreeSet<String> {
        let state = self.0.lock().expect("agent state");
        state
            .pods
            .values()
            .filter(|p| p.ready)
            .map(|p| p.name.clone())
            .collect()
    }

    /// `(pod name, address)` of every pod process, terminating ones included.
    pub(crate) fn pods(&self) -> Vec<(String, SocketAddr)> {
        let state = self.0.lock().expect("agent state");
        state
            .pods
            .values()
            .map(|p| (p.name.clone(), p.addr()))
            .collect()
    }

    /// The pid of pod `name`'s process.
    pub(crate) fn pid(&self, name: &str) -> u32 {
        let state = self.0.lock().expect("agent state");
        state
            .pods
            .values()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod process for {name}"))
            .process
            .id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process of pod `name`.
    pub(crate) fn signal(&self, name: &str, signal: &str) {
        let state = self.0.lock().expect("agent state");
        let pod = state
            .pods
            .values()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod process for {name}"));
        send_signal(pod.process.id(), signal);
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn register_node(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
        }},
    }))
    .expect("node object");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create Node");
    let now = now_rfc3339();
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "node agent is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": NODE_NAME}],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("Node status");
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid nanosecond")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// kube-scheduler's job on a one-node cluster: every pod with no `nodeName` is bound to the
/// agent's node (the `pods/binding` subresource, as the scheduler does). Node selectors and
/// affinities are not evaluated: there is one node, and it carries the labels the shipped
/// manifests select on.
async fn bind_unscheduled(client: Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut events = watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(_) => continue,
            Err(e) => {
                eprintln!("node agent: unscheduled-pod watch error (retrying): {e}");
                continue;
            }
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        });
        let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/binding"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&binding).expect("json"))
            .expect("request");
        match client.request::<serde_json::Value>(req).await {
            Ok(_) => {}
            // Already bound (a second event for the same pod) or gone.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => eprintln!("node agent: binding {ns}/{name} failed: {e}"),
        }
    }
}

async fn run(client: Client, state: Arc<Mutex<State>>, logs: PathBuf, runtime: Runtime) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
    let mut events = watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    terminate(&client, &state, &pod);
                } else {
                    match &runtime {
                        Runtime::Loopback => start_if_new(&client, &state, &logs, &pod).await,
                        Runtime::FromSpec(network, api) => {
                            start_from_spec(&client, &state, &logs, &pod, network, *api).await;
                        }
                    }
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                // Deleted without a grace period: kill at once.
                state.lock().expect("agent state").pods.remove(&key(&pod));
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => eprintln!("node agent: watch error (retrying): {e}"),
        }
    }
}

/// Starts the pod's process and reports it Running and Ready once its /healthz answers.
async fn start_if_new(
    client: &Client,
    state: &Arc<Mutex<State>>,
    logs: &std::path::Path,
    pod: &Pod,
) {
    let key = key(pod);
    if state.lock().expect("agent state").pods.contains_key(&key) {
        return;
    }
    // Every 127/8 address is on the loopback interface.
    let ip = allocate_ip();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let log = logs.join(format!("{namespace}_{name}.log"));
    let file = std::fs::File::create(&log).expect("pod log file");
    let process = Command::new(crate::support::e2e::bin("ws-demo"))
        .args([
            "serve",
            "--listen",
            &format!("{ip}:{POD_PORT}"),
            "--drain-grace",
            "2s",
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .expect("starting ws-demo serve");
    let addr = SocketAddr::from((ip, POD_PORT));
    state
        .lock()
        .expect("agent state")
        .pods
        .insert(key.clone(), PodProcess::new(pod, ip, process, None));
    let started = Instant::now();
    while !matches!(plain_get(addr, "/healthz").await, Ok((200, _))) {
        let exited = match state.lock().expect("agent state").pods.get_mut(&key) {
            Some(p) => !matches!(p.process.try_wait(), Ok(None)),
            None => true,
        };
        if exited {
            eprintln!("node agent: pod {key}'s process exited before answering /healthz");
            return;
        }
        if started.elapsed() > HEALTHZ_GIVE_UP {
            eprintln!("node agent: pod {key} did not answer /healthz within {HEALTHZ_GIVE_UP:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if report(client, pod, ip, &now_rfc3339(), true).await
        && let Some(p) = state.lock().expect("agent state").pods.get_mut(&key)
        && !p.terminating
    {
        p.ready = true;
    }
}

/// The pod is being deleted: stop sending it traffic, SIGTERM its process (the demo server drains
/// its connections with close frames), then remove the pod object with grace 0 as a kubelet does
/// once the containers are gone.
fn terminate(client: &Client, state: &Arc<Mutex<State>>, pod: &Pod) {
    let key = key(pod);
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    {
        let mut s = state.lock().expect("agent state");
        match s.pods.get_mut(&key) {
            Some(p) if !p.terminating => {
                p.terminating = true;
                p.ready = false;
                p.prober.take();
                send_signal(p.process.id(), "TERM");
            }
            Some(_) => return, // already terminating
            None => {}
        }
    }
    let client = client.clone();
    let state = state.clone();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(30));
        loop {
            let gone = {
                let mut s = state.lock().expect("agent state");
                match s.pods.get_mut(&key) {
                    Some(p) => !matches!(p.process.try_wait(), Ok(None)),
                    None => true,
                }
            };
            if gone || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Past the grace period the process is killed (PodProcess's drop).
        state.lock().expect("agent state").pods.remove(&key);
        let api: Api<Pod> = Api::namespaced(client, &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            // Already gone: a second event for the same deletion got here first.
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => eprintln!("node agent: final delete of {key} failed: {e}"),
        }
    });
}

/// Runs the pod as its spec says ([`pod_spec`]) in a network namespace of its own, reports it
/// Running (not Ready), and starts its readiness prober. A spec the harness cannot run is logged
/// and the pod stays Pending, as a kubelet leaves a pod it cannot start.
async fn start_from_spec(
    client: &Client,
    state: &Arc<Mutex<State>>,
    logs: &std::path::Path,
    pod: &Pod,
    network: &PodNetwork,
    api: ApiEndpoint,
) {
    let key = key(pod);
    if state.lock().expect("agent state").pods.contains_key(&key) {
        return;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let netns = network.add_pod();
    let ip = netns.ip;
    let volumes = logs.join("volumes").join(format!("{namespace}_{name}"));
    let launch = match pod_spec::prepare(client, pod, ip, api, &volumes).await {
        Ok(launch) => launch,
        Err(e) => {
            eprintln!("node agent: cannot run pod {key}: {e}");
            return;
        }
    };
    let log = logs.join(format!("{namespace}_{name}.log"));
    let process = match launch.spawn(&netns.name, &log) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("node agent: starting pod {key}: {e}");
            return;
        }
    };
    let pid = process.id();
    {
        let mut s = state.lock().expect("agent state");
        if s.pods.contains_key(&key) {
            return; // started by a concurrent event while this one prepared (dropped: killed)
        }
        s.pods
            .insert(key.clone(), PodProcess::new(pod, ip, process, Some(netns)));
    }
    eprintln!(
        "node agent: pod {key} runs {} as pid {pid} on {ip} (log {})",
        launch.program.display(),
        log.display()
    );
    let started = now_rfc3339();
    report(client, pod, ip, &started, false).await;
    let prober = tokio::spawn(probe_readiness(
        client.clone(),
        state.clone(),
        key.clone(),
        pod.clone(),
        ip,
        started,
        launch.readiness.clone(),
    ));
    if let Some(p) = state.lock().expect("agent state").pods.get_mut(&key) {
        p.prober = Some(AbortOnDrop(prober));
    }
}

/// Patches the pod's status: Running on `ip` since `started`, Ready or not. Returns whether
/// kube-apiserver took it (a failure is logged).
async fn report(client: &Client, pod: &Pod, ip: Ipv4Addr, started: &str, ready: bool) -> bool {
    let now = now_rfc3339();
    let flag = if ready { "True" } else { "False" };
    let condition = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastTransitionTime": now});
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .unwrap_or_default();
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": started,
        "conditions": [condition("PodScheduled", "True"), condition("Initialized", "True"),
                       condition("ContainersReady", flag), condition("Ready", flag)],
        "containerStatuses": [{
            "name": container.0, "image": container.1, "imageID": "",
            "ready": ready, "started": true, "restartCount": 0,
            "state": {"running": {"startedAt": started}},
        }],
    }});
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("node agent: reporting pod {namespace}/{name} (ready={ready}) failed: {e}");
            false
        }
    }
}

/// The kubelet's readiness prober: an HTTP GET every period after the initial delay; Ready on a
/// success, not Ready after `failureThreshold` failures in a row; each change reported. A pod with
/// no readiness probe is Ready once started. Like the kubelet's pod lifecycle events (a relist
/// every second), a process that exits makes the pod not Ready within a second; the harness does
/// not restart it (a kubelet would, with `restartPolicy: Always`).
async fn probe_readiness(
    client: Client,
    state: Arc<Mutex<State>>,
    key: String,
    pod: Pod,
    ip: Ipv4Addr,
    started: String,
    probe: Option<pod_spec::Probe>,
) {
    const TICK: Duration = Duration::from_millis(200);
    let mut ready = false;
    let mut failures = 0;
    let mut next_probe =
        Instant::now() + probe.as_ref().map_or(Duration::ZERO, |p| p.initial_delay);
    loop {
        let exited = state
            .lock()
            .expect("agent state")
            .pods
            .get_mut(&key)
            .is_none_or(|p| !matches!(p.process.try_wait(), Ok(None)));
        if exited {
            if ready {
                report(&client, &pod, ip, &started, false).await;
                if let Some(p) = state.lock().expect("agent state").pods.get_mut(&key) {
                    p.ready = false;
                }
            }
            eprintln!(
                "node agent: pod {key}'s process exited; the pod is not Ready (not restarted)"
            );
            return;
        }
        if Instant::now() >= next_probe {
            let now_ready = match &probe {
                None => true,
                Some(probe) => {
                    let addr = SocketAddr::from((ip, probe.port));
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(1), plain_get(addr, &probe.path))
                            .await,
                        Ok(Ok((200..=399, _)))
                    );
                    if ok {
                        failures = 0;
                        true
                    } else {
                        failures += 1;
                        ready && failures < probe.failure_threshold
                    }
                }
            };
            if now_ready != ready {
                ready = now_ready;
                report(&client, &pod, ip, &started, ready).await;
                if let Some(p) = state.lock().expect("agent state").pods.get_mut(&key) {
                    p.ready = ready && !p.terminating;
                }
            }
            // Until the first success, probe every tick rather than every period: the pod turns
            // Ready as soon as it answers (a kubelet probes at the period; this only shortens the
            // wait, it never makes an unready pod Ready).
            next_probe = Instant::now()
                + match (&probe, ready) {
                    (Some(p), true) => p.period,
                    _ => TICK,
                };
        }
        tokio::time::sleep(TICK).await;
    }
}
