//! The Service the load generator connects through: HAProxy (Debian's package, started by the
//! test, never as a system service) in front of the demo pods, its backends following the pods
//! over HAProxy's runtime API, as kube-proxy or an ingress controller follows a Service's
//! endpoints. Ready pods take new connections, serving-but-terminating ones keep theirs and take
//! no new ones (`drain`), gone ones are put in maintenance.
//!
//! NB: the endpoints are computed from a watch of the pods, by the EndpointSlice controller's own
//! rules, not read from EndpointSlices: the API refuses an EndpointSlice (and an Endpoints)
//! address in the loopback range (`may not be in the loopback range (127.0.0.0/8, ::1/128)`), and
//! every pod of this harness has one (the node agent's 127.x.y.z). The controller is not run.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Backend slots of the configuration (`server-template ws 1-SLOTS`): pods a scenario can have
/// over its life before slots are reused. A scenario here has at most about ten.
pub(crate) const SLOTS: usize = 32;

/// The backend's name in the configuration and in runtime commands.
const BACKEND: &str = "be";

/// Where an unused slot points (`server-template`'s address): never dialled, the slot is in
/// maintenance until given a pod's address.
const UNUSED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1);

/// How long one runtime-API command may take before the reconciler reports it and moves on.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the reconciler compares HAProxy with the pods without an event: it
/// converges on the state it reads back, so a failed command is retried here.
const RESYNC: Duration = Duration::from_millis(500);

/// How HAProxy picks a backend for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Balance {
    /// In turn, whatever each backend holds (close to kube-proxy's spreading: established
    /// connections never move, so load that predates a scale-up stays where it is).
    RoundRobin,
    /// The backend with the fewest connections open through HAProxy.
    LeastConn,
}

impl Balance {
    /// The `balance` keyword.
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            Self::RoundRobin => "roundrobin",
            Self::LeastConn => "leastconn",
        }
    }
}

/// HAProxy's configuration: an HTTP frontend on `127.0.0.1:port` (WebSocket upgrades pass
/// through as tunnels), one backend of [`SLOTS`] disabled slots, the admin runtime socket at
/// `socket`, logs on standard output.
///
/// A connection refused by a pod that just closed its listener (a drain racing the endpoint
/// update), or a 503 of an upgrade refused while draining, is retried on another backend
/// (`retry-on`, `option redispatch`): what a client of a real load balancer would also see.
pub(crate) fn config(port: u16, socket: &Path, balance: Balance) -> String {
    format!(
        r#"global
    log stdout format raw local0 info
    stats socket {socket} mode 600 level admin expose-fd listeners
    # 600 client connections and as many to the pods are the largest scenario.
    maxconn 4000

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 5s
    timeout client 1m
    timeout server 1m
    timeout queue 10s
    timeout http-request 10s
    # An upgraded WebSocket is a tunnel: the demo pods ping every few seconds, the tests hold
    # connections for minutes.
    timeout tunnel 1h
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 503

frontend fe
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance {balance}
    server-template ws 1-{SLOTS} {UNUSED} disabled
"#,
        socket = socket.display(),
        balance = balance.keyword(),
    )
}

/// What an endpoint of the Service should be in HAProxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Ready: takes new connections.
    Ready,
    /// Serving but terminating: keeps its connections, takes no new ones.
    Drain,
}

/// The admin state of a slot, as `show stat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Takes new connections (status `UP` or `no check`: there are no health checks).
    Ready,
    /// `DRAIN`: keeps its connections, takes no new ones.
    Drain,
    /// `MAINT`: takes nothing (unused slots, pods gone).
    Maint,
}

/// One backend slot of HAProxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// `ws1` … `wsN`.
    pub name: String,
    /// Where it points.
    pub addr: SocketAddr,
    /// Its admin state.
    pub state: SlotState,
    /// Connections open through it now (`scur`).
    pub sessions: u64,
}

/// The endpoints a Service selecting `pods` on `port` would have, by the EndpointSlice
/// controller's rules: a pod with a `podIP` that has not finished (phase neither `Succeeded` nor
/// `Failed`) is serving when its `Ready` condition is `True`, and terminating once it has a
/// deletion timestamp. Serving and not terminating → [`Want::Ready`]; serving and terminating →
/// [`Want::Drain`]; not serving → left out (its slot goes to maintenance).
pub(crate) fn wanted<P: Borrow<Pod>>(pods: &[P], port: u16) -> BTreeMap<SocketAddr, Want> {
    let mut out = BTreeMap::new();
    for pod in pods.iter().map(Borrow::borrow) {
        let Some(status) = &pod.status else {
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ip) = status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let serving = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !serving {
            continue;
        }
        let want = if pod.metadata.deletion_timestamp.is_some() {
            Want::Drain
        } else {
            Want::Ready
        };
        out.insert(SocketAddr::from((ip, port)), want);
    }
    out
}

/// The runtime-API commands that take HAProxy's `slots` to `want`: a slot pointing at a wanted
/// endpoint gets its state; a slot pointing anywhere else (or a second slot on the same
/// endpoint) goes to maintenance; a ready endpoint without a slot gets a free one (never used
/// first, so that a reused slot rarely still carries a drained pod's connections), address
/// first, then state. Pure: the reconciler reads the slots back and plans again, so a command
/// that failed is planned again.
///
/// # Errors
/// When ready endpoints outnumber the free slots, the commands for the ones that fit, and the
/// endpoints left without a slot.
pub(crate) fn plan(
    want: &BTreeMap<SocketAddr, Want>,
    slots: &[Slot],
) -> Result<Vec<String>, (Vec<String>, Vec<SocketAddr>)> {
    let state_cmd = |slot: &Slot, state: SlotState| {
        let keyword = match state {
            SlotState::Ready => "ready",
            SlotState::Drain => "drain",
            SlotState::Maint => "maint",
        };
        format!("set server {BACKEND}/{} state {keyword}", slot.name)
    };
    let mut cmds = Vec::new();
    let mut placed = BTreeSet::new();
    let mut free = Vec::new();
    for slot in slots {
        match want.get(&slot.addr) {
            Some(w) if placed.insert(slot.addr) => {
                let state = match w {
                    Want::Ready => SlotState::Ready,
                    Want::Drain => SlotState::Drain,
                };
                if slot.state != state {
                    cmds.push(state_cmd(slot, state));
                }
            }
            _ => {
                if slot.state != SlotState::Maint {
                    cmds.push(state_cmd(slot, SlotState::Maint));
                }
                free.push(slot);
            }
        }
    }
    // Stable: slot order within each group.
    free.sort_by_key(|s| s.addr != UNUSED);
    let mut free = free.into_iter();
    let mut homeless = Vec::new();
    for (addr, w) in want {
        // A draining endpoint without a slot has no connections from here to keep.
        if placed.contains(addr) || *w != Want::Ready {
            continue;
        }
        match free.next() {
            Some(slot) => {
                cmds.push(format!(
                    "set server {BACKEND}/{} addr {} port {}",
                    slot.name,
                    addr.ip(),
                    addr.port()
                ));
                cmds.push(state_cmd(slot, SlotState::Ready));
            }
            None => homeless.push(*addr),
        }
    }
    if homeless.is_empty() {
        Ok(cmds)
    } else {
        Err((cmds, homeless))
    }
}

/// The backend's slots from `show stat` output (CSV with a `# pxname,svname,…` header; columns
/// found by name, so that another HAProxy version's extra columns do not matter).
///
/// # Errors
/// No header, a missing column, or an unparsable row.
pub(crate) fn parse_stat(text: &str) -> Result<Vec<Slot>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| format!("no `# pxname,…` header in {text:?}"))?;
    let columns: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name} in {header}"))
    };
    let (px, sv, scur, status, addr) = (
        col("pxname")?,
        col("svname")?,
        col("scur")?,
        col("status")?,
        col("addr")?,
    );
    let mut slots = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or_default();
        if field(px) != BACKEND || matches!(field(sv), "BACKEND" | "FRONTEND") {
            continue;
        }
        let state = match field(status) {
            s if s.starts_with("MAINT") => SlotState::Maint,
            s if s.starts_with("DRAIN") => SlotState::Drain,
            _ => SlotState::Ready,
        };
        slots.push(Slot {
            name: field(sv).to_owned(),
            addr: field(addr)
                .parse()
                .map_err(|e| format!("addr {:?} in {line:?}: {e}", field(addr)))?,
            state,
            sessions: field(scur)
                .parse()
                .map_err(|e| format!("scur {:?} in {line:?}: {e}", field(scur)))?,
        });
    }
    Ok(slots)
}

/// HAProxy's runtime API on its unix socket: one connection per command (the socket's
/// non-interactive mode answers and closes).
#[derive(Clone, Debug)]
pub(crate) struct Runtime {
    socket: PathBuf,
}

impl Runtime {
    /// The API on `socket`.
    pub(crate) fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// Sends one command; returns HAProxy's answer.
    ///
    /// # Errors
    /// The socket refused, or no answer within [`RUNTIME_TIMEOUT`].
    pub(crate) async fn command(&self, cmd: &str) -> Result<String, String> {
        let exchange = async {
            let mut s = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
            s.write_all(format!("{cmd}\n").as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok(out)
        };
        tokio::time::timeout(RUNTIME_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{cmd:?}: no answer within {RUNTIME_TIMEOUT:?}"))?
    }

    /// Sends a `set server` command.
    ///
    /// # Errors
    /// As [`Self::command`], or HAProxy's answer when it is not a success (`set server … state`
    /// answers nothing; `… addr` says what changed, or that nothing needed to).
    pub(crate) async fn set(&self, cmd: &str) -> Result<(), String> {
        let answer = self.command(cmd).await?;
        let answer = answer.trim();
        if answer.is_empty() || answer.contains(" changed ") || answer.starts_with("no need") {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {answer}"))
        }
    }

    /// The backend's slots now.
    ///
    /// # Errors
    /// As [`Self::command`] and [`parse_stat`].
    pub(crate) async fn slots(&self) -> Result<Vec<Slot>, String> {
        parse_stat(&self.command("show stat").await?)
    }
}

/// The load balancer of a running cluster: where clients connect, and its runtime API.
#[derive(Clone, Debug)]
pub(crate) struct LoadBalancer {
    /// HAProxy's frontend.
    pub addr: SocketAddr,
    /// Its runtime API.
    pub runtime: Runtime,
}

impl LoadBalancer {
    /// Addresses of the slots taking new connections now.
    pub(crate) async fn ready_backends(&self) -> Vec<SocketAddr> {
        self.runtime
            .slots()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.state == SlotState::Ready)
            .map(|s| s.addr)
            .collect()
    }
}

/// The HAProxy binary: on `PATH`, or where Debian's package puts it (`/usr/sbin`, not on a
/// non-root user's `PATH`). Missing, the test fails with how to install it: a test that needs
/// the load balancer never passes by skipping.
pub(crate) fn haproxy_binary() -> PathBuf {
    let debian = Path::new("/usr/sbin/haproxy");
    crate::support::e2e::find_on_path("haproxy")
        .or_else(|| debian.is_file().then(|| debian.to_owned()))
        .unwrap_or_else(|| {
            crate::support::e2e::require_tool(
                "haproxy",
                "install HAProxy (`apt-get install haproxy` on Debian; the tests start it themselves, \
                 its system service is not needed)",
            )
        })
}

/// Makes HAProxy's slots follow the pods of `namespace` matching label selector `selector`, on
/// `port` ([`wanted`]), until the task is aborted: on every watch event and every [`RESYNC`],
/// reads the slots back and applies [`plan`]. Failures are printed and retried at the next pass,
/// never fatal.
pub(crate) async fn follow(
    client: Client,
    namespace: String,
    selector: String,
    port: u16,
    runtime: Runtime,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&selector);
    let (reader, writer) = reflector::store();
    let mut events = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut resync = tokio::time::interval(RESYNC);
    let mut last_error = String::new();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("load balancer: pod watch error (retrying): {e}"),
                None => return,
            },
            _ = resync.tick() => {}
        }
        let pods: Vec<Arc<Pod>> = reader.state();
        let want = wanted(&pods, port);
        let result = async {
            let slots = runtime.slots().await?;
            let cmds = plan(&want, &slots).unwrap_or_else(|(cmds, homeless)| {
                eprintln!("load balancer: no free slot of {SLOTS} for {homeless:?}");
                cmds
            });
            for cmd in cmds {
                runtime.set(&cmd).await?;
            }
            Ok::<(), String>(())
        }
        .await;
        // Printed once per distinct failure: the next pass retries.
        match result {
            Err(e) if e != last_error => {
                eprintln!("load balancer: {e} (retrying)");
                last_error = e;
            }
            Err(_) => {}
            Ok(()) => last_error.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: usize, addr: &str, state: SlotState) -> Slot {
        Slot {
            name: format!("ws{n}"),
            addr: addr.parse().expect("addr"),
            state,
            sessions: 0,
        }
    }

    fn unused(n: usize) -> Slot {
        slot(n, "127.0.0.1:1", SlotState::Maint)
    }

    fn want(list: &[(&str, Want)]) -> BTreeMap<SocketAddr, Want> {
        list.iter()
            .map(|(a, w)| (a.parse().expect("addr"), *w))
            .collect()
    }

    #[test]
    fn pods_map_to_ready_drain_or_nothing() {
        let pod = |ip: Option<&str>, phase: &str, ready: &str, deleting: bool| {
            let mut p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "status": {
                    "phase": phase,
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": ready}],
                },
            }))
            .expect("pod");
            if deleting {
                p.metadata.deletion_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
                );
            }
            p
        };
        let pods = [
            pod(Some("127.1.0.1"), "Running", "True", false),
            // Terminating but still Ready: serving, terminating → drain.
            pod(Some("127.1.0.2"), "Running", "True", true),
            // Not Ready (yet, or any more): no endpoint.
            pod(Some("127.1.0.3"), "Running", "False", false),
            pod(Some("127.1.0.4"), "Running", "False", true),
            // Finished, or without an address: none.
            pod(Some("127.1.0.5"), "Succeeded", "True", false),
            pod(None, "Pending", "False", false),
        ];
        assert_eq!(
            wanted(&pods, 8080),
            want(&[
                ("127.1.0.1:8080", Want::Ready),
                ("127.1.0.2:8080", Want::Drain),
            ])
        );
    }

    /// What is wanted, what HAProxy has, the commands planned.
    type Case = (BTreeMap<SocketAddr, Want>, Vec<Slot>, Vec<&'static str>);

    #[test]
    fn plans_take_slots_to_the_endpoints() {
        let cases: Vec<Case> = vec![
            // Nothing wanted, nothing in use: nothing to do.
            (want(&[]), vec![unused(1), unused(2)], vec![]),
            // A new ready pod takes the first unused slot.
            (
                want(&[("127.1.0.1:8080", Want::Ready)]),
                vec![unused(1), unused(2)],
                vec![
                    "set server be/ws1 addr 127.1.0.1 port 8080",
                    "set server be/ws1 state ready",
                ],
            ),
            // Terminating → drain; gone → maint; already right → nothing.
            (
                want(&[
                    ("127.1.0.1:8080", Want::Drain),
                    ("127.1.0.3:8080", Want::Ready),
                ]),
                vec![
                    slot(1, "127.1.0.1:8080", SlotState::Ready),
                    slot(2, "127.1.0.2:8080", SlotState::Ready),
                    slot(3, "127.1.0.3:8080", SlotState::Ready),
                ],
                vec![
                    "set server be/ws1 state drain",
                    "set server be/ws2 state maint",
                ],
            ),
            // Unused slots before reused ones; a draining endpoint without a slot gets none.
            (
                want(&[
                    ("127.1.0.5:8080", Want::Ready),
                    ("127.1.0.6:8080", Want::Drain),
                ]),
                vec![slot(1, "127.1.0.2:8080", SlotState::Maint), unused(2)],
                vec![
                    "set server be/ws2 addr 127.1.0.5 port 8080",
                    "set server be/ws2 state ready",
                ],
            ),
            // A second slot on the same endpoint is put away.
            (
                want(&[("127.1.0.1:8080", Want::Ready)]),
                vec![
                    slot(1, "127.1.0.1:8080", SlotState::Ready),
                    slot(2, "127.1.0.1:8080", SlotState::Ready),
                ],
                vec!["set server be/ws2 state maint"],
            ),
        ];
        for (want, slots, expected) in cases {
            assert_eq!(
                plan(&want, &slots).expect("enough slots"),
                expected,
                "{want:?} over {slots:?}"
            );
        }
    }

    #[test]
    fn more_ready_pods_than_slots_is_an_error_naming_them() {
        let want = want(&[
            ("127.1.0.1:8080", Want::Ready),
            ("127.1.0.2:8080", Want::Ready),
        ]);
        let (cmds, homeless) = plan(&want, &[unused(1)]).expect_err("one slot for two");
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        assert_eq!(homeless, vec!["127.1.0.2:8080".parse().expect("addr")]);
    }

    #[test]
    fn show_stat_is_read_by_column_name() {
        let text = "# pxname,svname,qcur,scur,status,extra,addr\n\
                    fe,FRONTEND,,3,OPEN,,\n\
                    be,ws1,0,2,no check,x,127.1.0.1:8080\n\
                    be,ws2,0,1,DRAIN,x,127.1.0.2:8080\n\
                    be,ws3,0,0,MAINT,x,127.0.0.1:1\n\
                    be,BACKEND,0,3,UP,,\n";
        assert_eq!(
            parse_stat(text).expect("parses"),
            vec![
                Slot {
                    sessions: 2,
                    ..slot(1, "127.1.0.1:8080", SlotState::Ready)
                },
                Slot {
                    sessions: 1,
                    ..slot(2, "127.1.0.2:8080", SlotState::Drain)
                },
                unused(3),
            ]
        );
        assert!(parse_stat("no header").is_err());
    }

    #[test]
    fn the_configuration_names_the_balance_and_the_slots() {
        let cfg = config(18080, Path::new("/tmp/x/haproxy.sock"), Balance::LeastConn);
        assert!(cfg.contains("bind 127.0.0.1:18080"), "{cfg}");
        assert!(cfg.contains("balance leastconn"), "{cfg}");
        assert!(
            cfg.contains("server-template ws 1-32 127.0.0.1:1 disabled"),
            "{cfg}"
        );
        assert!(
            cfg.contains("stats socket /tmp/x/haproxy.sock mode 600 level admin"),
            "{cfg}"
        );
    }
}
