//! `ws-demo demo`: the whole loop on one laptop with no cluster. Three demo WebSocket
//! servers ("pods") on loopback, the adapter in static mode over TLS scraping them, a load ramp,
//! and a live view of what the HPA would read (fetched over HTTPS like the HPA) and the replica
//! count its formula would choose.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use crate::hpa::{self, Phase, PodView, Target};
use crate::load::{LoadGenerator, LoadPlan, Step};
use crate::server::{DemoServer, ServerConfig};
use ws_metrics_adapter::app::{self, Listeners, Shutdown};
use ws_metrics_adapter::server::tls;
use ws_metrics_adapter::tls::client::{self as client_tls, ClientTls};

/// Flags of `ws-demo demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How long to run (Ctrl-C ends it earlier).
    #[arg(long, env = "WS_DEMO_DURATION", default_value = "75s", value_parser = ws_metrics_adapter::config::parse_duration)]
    pub duration: Duration,
    /// The HPA's target average connections per pod (`averageValue`).
    #[arg(long, env = "WS_DEMO_TARGET", default_value_t = 100)]
    pub target: u32,
    /// Number of demo WebSocket servers ("pods").
    #[arg(long, env = "WS_DEMO_PODS", default_value_t = 3)]
    pub pods: usize,
    /// HTTPS port of the adapter (0 picks a free one).
    #[arg(long, env = "WS_DEMO_PORT", default_value_t = 18443)]
    pub port: u16,
    /// Directory for the generated certificates, pods file and kubeconfig.
    #[arg(
        long,
        env = "WS_DEMO_DIR",
        default_value = "/tmp/ws-metrics-adapter-demo"
    )]
    pub dir: PathBuf,
    /// Print the view as plain text, one block a second (the time, a row per pod, the HPA's
    /// decision), instead of redrawing the screen.
    #[arg(long, env = "WS_DEMO_PLAIN")]
    pub plain: bool,
}

/// Errors that stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding a loopback listener or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The adapter's configuration was refused (a bug in the demo if it happens).
    #[error("adapter configuration: {0}")]
    Config(String),
    /// The adapter stopped with an error.
    #[error(transparent)]
    Adapter(#[from] app::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The load ramp, in multiples of the target so the replica count moves through a useful range:
/// up to 1.5×, 4.5× and 9× the target in total, back down to 3×, then 1.5×, held until the demo
/// ends (so the view shows load to its last second, however long `--duration` is).
fn ramp(target: u32, targets: Vec<String>) -> LoadPlan {
    let t = f64::from(target.max(1));
    let step = |mult: f64, hold: u64| Step {
        connections: (t * mult).round() as usize,
        rate: (t * 1.5).max(50.0),
        hold: Duration::from_secs(hold),
    };
    LoadPlan {
        targets,
        steps: vec![
            step(1.5, 10),
            step(4.5, 12),
            step(9.0, 15),
            step(3.0, 12),
            // Ended by the demo's stop signal, not by time.
            step(1.5, 365 * 24 * 3600),
        ],
        churn_per_sec: 0.02,
        messages_per_sec: 0.0,
        deadline: None,
    }
}

fn write_kubeconfig(dir: &Path, port: u16) -> Result<PathBuf, Error> {
    let path = dir.join("kubeconfig");
    let ca = dir.join("certs").join(tls::CA_FILE);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ws-metrics-adapter-demo\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n# Static mode does not authenticate; the token only stops kubectl from prompting.\n- name: demo\n  user: {{token: static-mode-needs-no-credentials}}\ncontexts:\n- name: demo\n  context: {{cluster: ws-metrics-adapter-demo, user: demo}}\ncurrent-context: demo\n",
        ca.display()
    );
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn https_client(ca: &Path) -> Result<HttpsClient, Error> {
    let cfg = client_tls::config(ClientTls {
        ca_file: Some(ca),
        identity: None,
    })
    .map_err(|e| Error::Io {
        what: format!("trusting {}", ca.display()),
        source: std::io::Error::other(e),
    })?;
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(conn))
}

/// What the custom metrics API answered, pod name → milli-units, or the error text.
async fn read_api(client: &HttpsClient, port: u16) -> Result<BTreeMap<String, i64>, String> {
    let uri = format!(
        "https://127.0.0.1:{port}/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/websocket_connections?labelSelector=app%3Dws-demo"
    );
    let req = http::Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(json["message"].as_str().unwrap_or("error").to_owned());
    }
    let mut out = BTreeMap::new();
    for item in json["items"].as_array().into_iter().flatten() {
        let name = item["describedObject"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let milli = parse_quantity_milli(item["value"].as_str().unwrap_or_default());
        if let Some(m) = milli {
            out.insert(name, m);
        }
    }
    Ok(out)
}

/// Reads the canonical forms the adapter writes (`412`, `1k`, `12k`, `1500m`, `2M`) into
/// milli-units.
fn parse_quantity_milli(s: &str) -> Option<i64> {
    let (digits, mult): (&str, i64) = match s.as_bytes().last()? {
        b'm' => (&s[..s.len() - 1], 1),
        b'k' => (&s[..s.len() - 1], 1_000_000),
        b'M' => (&s[..s.len() - 1], 1_000_000_000),
        b'G' => (&s[..s.len() - 1], 1_000_000_000_000),
        _ => (s, 1000),
    };
    digits.parse::<i64>().ok()?.checked_mul(mult)
}

/// `1 replica`, `3 replicas`.
fn replicas(n: u32) -> String {
    if n == 1 {
        "1 replica".into()
    } else {
        format!("{n} replicas")
    }
}

fn fmt_milli(m: i64) -> String {
    if m % 1000 == 0 {
        (m / 1000).to_string()
    } else {
        format!("{:.1}", m as f64 / 1000.0)
    }
}

/// Runs the demo until `--duration` passes or `shutdown` resolves.
///
/// # Errors
/// When a listener cannot be bound, a file cannot be written, or the adapter fails to start.
pub async fn run(
    args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    tls::install_provider();
    std::fs::create_dir_all(&args.dir).map_err(io(format!("creating {}", args.dir.display())))?;
    let (trigger, stop) = Shutdown::new();

    // The "pods": demo WebSocket servers on loopback.
    let mut servers = Vec::new();
    let mut pods_yaml = String::from("pods:\n");
    for i in 0..args.pods.max(1) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("binding a demo server"))?;
        let addr: SocketAddr = listener.local_addr().map_err(io("demo server address"))?;
        let server = DemoServer::new(ServerConfig::default());
        tokio::spawn(server.clone().serve(listener, stop.wait()));
        let name = format!("ws-demo-{i}");
        let _ = writeln!(
            pods_yaml,
            "- {{namespace: default, name: {name}, labels: {{app: ws-demo}}, metricsUrl: \"http://{addr}/metrics\"}}"
        );
        servers.push((name, addr, server));
    }
    let pods_file = args.dir.join("pods.yaml");
    std::fs::write(&pods_file, &pods_yaml)
        .map_err(io(format!("writing {}", pods_file.display())))?;

    // The adapter, in static mode over TLS.
    let cert_dir = args.dir.join("certs");
    let argv = [
        "ws-metrics-adapter".to_string(),
        "serve".into(),
        "--static-pods".into(),
        pods_file.display().to_string(),
        "--cert-dir".into(),
        cert_dir.display().to_string(),
        "--scrape-interval".into(),
        "1s".into(),
    ];
    let secure = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(io(format!(
            "binding the adapter on 127.0.0.1:{}",
            args.port
        )))?;
    let port = secure.local_addr().map_err(io("adapter address"))?.port();
    let metrics = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io("binding the adapter's metrics port"))?;
    let metrics_addr = metrics.local_addr().map_err(io("metrics address"))?;
    // The configuration names the listeners actually bound, so that what the adapter logs (its
    // static-mode warning names the API's address) is where it listens.
    let argv = argv.into_iter().chain([
        "--secure-port".into(),
        port.to_string(),
        "--metrics-bind-address".into(),
        metrics_addr.to_string(),
    ]);
    let config =
        ws_metrics_adapter::config::load(argv).map_err(|e| Error::Config(e.to_string()))?;
    let adapter = tokio::spawn(app::run(
        config,
        Listeners {
            secure,
            metrics,
            remote_write: None,
        },
        stop.clone(),
    ));

    // Wait for the generated CA, then build the HPA-like client and the kubeconfig.
    let ca = cert_dir.join(tls::CA_FILE);
    let started = Instant::now();
    while !ca.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = https_client(&ca)?;
    let kubeconfig = write_kubeconfig(&args.dir, port)?;

    let targets: Vec<String> = servers
        .iter()
        .map(|(_, a, _)| format!("ws://{a}/ws/chat"))
        .collect();
    let load = LoadGenerator::new(ramp(args.target, targets));
    println!(
        "ws-demo demo: {} WebSocket pods, the adapter on https://127.0.0.1:{port} (own metrics on http://{metrics_addr}/metrics)",
        servers.len()
    );
    let kubectl = format!(
        "kubectl --kubeconfig {} get --raw '/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/websocket_connections?labelSelector=app%3Dws-demo'",
        kubeconfig.display()
    );
    println!("Read what the HPA reads, with the real kubectl, while this runs:");
    println!("  {kubectl}");
    println!();

    let target = Target {
        average_milli: i64::from(args.target) * 1000,
        tolerance: 0.1,
        min_replicas: 1,
        max_replicas: 20,
    };
    let fancy = !args.plain && std::io::stdout().is_terminal();
    let load_task = {
        let load = load.clone();
        let stop = stop.wait();
        tokio::spawn(async move { load.run(stop).await })
    };
    tokio::pin!(shutdown);
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let t0 = Instant::now();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut deadline => break,
            _ = ticker.tick() => {}
        }
        let api = read_api(&client, port).await;
        let pods: Vec<PodView> = servers
            .iter()
            .map(|(name, _, _)| PodView {
                name: name.clone(),
                phase: Phase::Running,
                deleting: false,
            })
            .collect();
        let current = u32::try_from(servers.len()).unwrap_or(u32::MAX);
        let mut out = String::new();
        if fancy {
            out.push_str("\x1b[H\x1b[J");
        }
        let _ = writeln!(
            out,
            "t={:>3}s  load generator: {} open",
            t0.elapsed().as_secs(),
            load.open()
        );
        let _ = writeln!(
            out,
            "  {:<10} {:>12} {:>14}",
            "pod", "connections", "API value"
        );
        for (name, _, server) in &servers {
            let api_value = match &api {
                Ok(v) => v
                    .get(name)
                    .map_or_else(|| "(left out)".to_string(), |m| fmt_milli(*m)),
                Err(_) => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:<10} {:>12} {:>14}",
                name,
                server.active(),
                api_value
            );
        }
        match &api {
            Ok(values) => {
                let decision = match hpa::desired_replicas(current, &pods, values, &target) {
                    Ok(d) => format!("would want {}", replicas(d)),
                    Err(e) => format!("could not decide ({e})"),
                };
                let total: i64 = values.values().sum();
                let avg = if values.is_empty() {
                    0
                } else {
                    total / values.len() as i64
                };
                let _ = writeln!(
                    out,
                    "  API average {} per pod, target {} → an HPA (tolerance 10 %, min 1, max 20) {decision} (now {current})",
                    fmt_milli(avg),
                    args.target,
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  custom metrics API: {e}");
            }
        }
        if fancy {
            // The screen is cleared at every redraw: the line to paste stays in the view.
            let _ = writeln!(
                out,
                "\n  Read it with the real kubectl (Ctrl-C to stop):\n  {kubectl}"
            );
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
    trigger.trigger();
    let summary = load_task.await.ok();
    let _ = tokio::time::timeout(Duration::from_secs(15), adapter).await;
    if let Some(s) = summary {
        println!(
            "\nload: {} connections established, {} failed, connect p50 {:.1} ms, p99 {:.1} ms, {:.0} connections/s while opening",
            s.established, s.failed, s.connect_p50_ms, s.connect_p99_ms, s.achieved_rate
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adapters_canonical_quantities_read_back() {
        for (s, m) in [
            ("0", 0),
            ("7", 7000),
            ("1k", 1_000_000),
            ("12k", 12_000_000),
            ("1500m", 1500),
            ("2M", 2_000_000_000),
        ] {
            assert_eq!(parse_quantity_milli(s), Some(m), "{s}");
        }
        assert_eq!(parse_quantity_milli("x"), None);
    }

    #[test]
    fn the_ramp_moves_through_several_replica_counts_and_holds_its_last_step_to_the_end() {
        let plan = ramp(100, vec!["ws://x".into()]);
        let counts: Vec<usize> = plan.steps.iter().map(|s| s.connections).collect();
        assert_eq!(counts, vec![150, 450, 900, 300, 150]);
        // The last step outlasts any demo: the view shows load until it stops.
        let last = plan.steps.last().expect("steps");
        assert!(
            last.hold >= Duration::from_secs(365 * 24 * 3600),
            "{last:?}"
        );
    }

    #[test]
    fn replica_counts_are_pluralized() {
        assert_eq!(replicas(1), "1 replica");
        assert_eq!(replicas(0), "0 replicas");
        assert_eq!(replicas(7), "7 replicas");
    }
}
