//! A real `ws-demo serve` process as a pod: listening on a free 127.0.0.1 port, with WebSocket
//! clients holding connections open, for the tests that run a real Prometheus over real pods.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::e2e::{ProcessGuard, bin, free_port, sample};
use super::{eventually, plain_get};

/// A client connection held open by the test.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A real demo pod with `n` open WebSocket connections (route `echo`).
pub struct DemoPod {
    /// The pod's name (the `pod` label Prometheus attaches, the name in the static pods file).
    pub name: &'static str,
    /// Where it listens: `/ws/*`, `/metrics`, `/healthz`.
    pub addr: SocketAddr,
    process: Option<ProcessGuard>,
    clients: Vec<Ws>,
}

impl DemoPod {
    /// Starts `ws-demo serve` (the workspace's binary) and opens `connections` to `/ws/echo`.
    pub async fn start(name: &'static str, connections: usize) -> Self {
        let port = free_port();
        let mut cmd = Command::new(bin("ws-demo"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WS_DEMO_") {
                cmd.env_remove(&key);
            }
        }
        // Clients here never read, so they would not answer pings: ping hourly.
        cmd.env("NO_COLOR", "1").args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ping-interval",
            "1h",
        ]);
        let process = ProcessGuard::spawn(cmd, name);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eventually(Duration::from_secs(20), "demo pod /healthz", || async move {
            matches!(plain_get(addr, "/healthz").await, Ok((200, _))).then_some(())
        })
        .await;
        let mut clients = Vec::new();
        for _ in 0..connections {
            let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/echo"))
                .await
                .expect("connect to demo pod");
            clients.push(ws);
        }
        Self {
            name,
            addr,
            process: Some(process),
            clients,
        }
    }

    /// The pod's own gauge summed over its routes, read from its /metrics: the truth the adapter
    /// must serve.
    pub async fn active(&self) -> f64 {
        let (_, body) = plain_get(self.addr, "/metrics")
            .await
            .expect("demo /metrics");
        ["echo", "chat", "ticker"]
            .iter()
            .map(|route| {
                sample(
                    &body,
                    &format!("websocket_connections_active{{route=\"{route}\"}}"),
                )
                .unwrap_or(0.0)
            })
            .sum()
    }

    /// Closes the clients and kills the process (SIGKILL).
    pub fn kill(&mut self) {
        self.clients.clear();
        self.process = None;
    }
}
