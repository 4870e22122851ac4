//! The shed contract, version 1 (`docs/shed-contract.md`), on the wire against two real servers:
//! the `ws-demo serve` binary and the Python example `examples/shed-server/server.py` (the
//! third-party `websockets` library). For each: bad requests are refused with the documented
//! codes and close nothing; `count = k` closes exactly the k oldest connections with 1013 and the
//! gauge drops by k; a count above what the pod holds closes what it holds; and clients of the
//! load generator reconnect after a shed, none lost, back to the count they had.

use ws_e2e as support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt as _;
use support::e2e::{self, ProcessGuard};
use support::{eventually, plain_get};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use ws_demo::load::{LoadGenerator, LoadPlan, Step};
use ws_demo::shed;

/// When a poll gives up: a loaded 2-core machine can be 5-10x slower than an idle one, so this
/// bounds a hang, not a speed.
const PATIENCE: Duration = Duration::from_secs(120);

/// Connections each contract check opens (plain clients that do not reconnect).
const N: usize = 8;

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A running pod: where its WebSocket route is, and the port the adapter scrapes (`/metrics` and
/// the shed endpoint).
struct Pod {
    _process: ProcessGuard,
    name: &'static str,
    ws_url: String,
    scrape: SocketAddr,
}

impl Pod {
    /// The real `ws-demo serve` on 127.0.0.1:0: one port for everything.
    async fn ws_demo() -> Self {
        let mut cmd = Command::new(e2e::bin("ws-demo"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WS_DEMO_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .args(["serve", "--listen", "127.0.0.1:0"]);
        let mut process = ProcessGuard::spawn(cmd, "ws-demo serve");
        let addr = process.listening_addr("http", PATIENCE).await;
        Self {
            _process: process,
            name: "ws-demo serve",
            ws_url: format!("ws://{addr}/ws/echo"),
            scrape: addr,
        }
    }

    /// `examples/shed-server/server.py`: WebSockets on one port, `/metrics` and `/shed` on its
    /// admin port (the `websockets` server answers only GET).
    async fn python_example() -> Self {
        let (python, pythonpath) = python_with_websockets();
        let script = e2e::workspace_root().join("examples/shed-server/server.py");
        let mut cmd = Command::new(python);
        if let Some(path) = pythonpath {
            cmd.env("PYTHONPATH", path);
        }
        cmd.env("PYTHONUNBUFFERED", "1").arg(&script).args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-port",
            "0",
        ]);
        let mut process = ProcessGuard::spawn(cmd, "examples/shed-server/server.py");
        let ws = process.listening_addr("ws", PATIENCE).await;
        let admin = process.listening_addr("http", PATIENCE).await;
        Self {
            _process: process,
            name: "examples/shed-server/server.py",
            ws_url: format!("ws://{ws}/ws/echo"),
            scrape: admin,
        }
    }

    /// The sum of the `websocket_connections_active` series on `/metrics`.
    async fn gauge(&self) -> Option<f64> {
        let (code, body) = plain_get(self.scrape, "/metrics").await.ok()?;
        (code == 200).then(|| {
            body.lines()
                .filter(|l| l.starts_with("websocket_connections_active{"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        })
    }

    async fn expect_gauge(&self, want: usize, what: &str) {
        eventually(PATIENCE, &format!("{}: {what}", self.name), || async {
            (self.gauge().await? == want as f64).then_some(())
        })
        .await;
    }

    /// `POST /shed` with this content type and body: status and body.
    async fn post_shed(&self, content_type: &str, body: &str) -> (u16, String) {
        request(self.scrape, "POST", "/shed", Some(content_type), body).await
    }

    async fn shed(&self, count: u64) -> serde_json::Value {
        let (code, body) = self
            .post_shed(
                "application/json",
                &format!(
                    r#"{{"apiVersion":"{}","count":{count}}}"#,
                    shed::API_VERSION
                ),
            )
            .await;
        assert_eq!(code, 200, "{}: {body}", self.name);
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {body}", self.name))
    }
}

/// `python3` and the `PYTHONPATH` under which it imports `websockets` (13 or newer: the asyncio
/// API the example uses): the interpreter's own, or the private directory
/// `scripts/install-deps.sh` installs the pinned version into. Fails with an install hint
/// otherwise: the test never passes without running the example.
fn python_with_websockets() -> (PathBuf, Option<PathBuf>) {
    let hint = "run scripts/install-deps.sh (pip-installs examples/shed-server/requirements.txt)";
    let python = e2e::require_tool("python3", hint);
    let tools = std::env::var_os("TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|c| PathBuf::from(c).join("ws-metrics-adapter/tools"))
        })
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache/ws-metrics-adapter/tools")
        });
    let private = tools.join("shed-server-python");
    let check = "import websockets, sys; sys.exit(int(websockets.__version__.split('.')[0]) < 13)";
    for pythonpath in [Some(private.clone()), None] {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", check]);
        match &pythonpath {
            Some(p) => cmd.env("PYTHONPATH", p),
            None => cmd.env_remove("PYTHONPATH"),
        };
        if cmd.output().is_ok_and(|o| o.status.success()) {
            return (python, pythonpath);
        }
    }
    panic!(
        "python3 cannot import websockets >= 13, neither its own nor from {}: {hint}",
        private.display()
    );
}

/// One HTTP/1.1 request (`Connection: close`, `Content-Length`): status and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to the pod");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    // A server may answer 413 before reading a large body and close: a failed write is fine.
    let _ = s.write_all(body.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_owned())
}

/// Reads until the stream ends, answering the server's close frame as a cooperative client
/// does (tungstenite sends the reply on the next read): that frame's code, or `None` for none.
async fn close_code(mut ws: Client) -> Option<u16> {
    let mut code = None;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Close(frame)) => code = frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    code
}

/// The contract's codes and semantics, with plain clients that do not reconnect.
async fn keeps_the_contract(pod: &Pod) {
    let v1 = shed::API_VERSION;
    // Opened one at a time, each counted before the next, so that open order is known.
    let mut readers = Vec::new();
    for i in 0..N {
        let (ws, _) = tokio_tungstenite::connect_async(&pod.ws_url)
            .await
            .unwrap_or_else(|e| panic!("{}: connecting to {}: {e}", pod.name, pod.ws_url));
        pod.expect_gauge(i + 1, "the new connection counted").await;
        readers.push(tokio::spawn(close_code(ws)));
    }

    // Refused requests close nothing.
    let (code, body) = request(pod.scrape, "GET", "/shed", None, "").await;
    assert_eq!(code, 405, "{}: GET /shed: {body}", pod.name);
    for (content_type, body, want, needle) in [
        ("application/json", "{".to_owned(), 400, "not JSON"),
        (
            "application/json",
            r#"{"apiVersion":"shed.ws-metrics-adapter.io/v2","count":1}"#.to_owned(),
            400,
            v1,
        ),
        (
            "application/json",
            format!(r#"{{"apiVersion":"{v1}"}}"#),
            400,
            "count",
        ),
        (
            "application/json",
            format!(r#"{{"apiVersion":"{v1}","count":0}}"#),
            400,
            "count 0",
        ),
        (
            "application/json",
            format!(r#"{{"apiVersion":"{v1}","count":-3}}"#),
            400,
            "count -3",
        ),
        (
            "application/json",
            format!(
                r#"{{"apiVersion":"{v1}","count":1,"pad":"{}"}}"#,
                "x".repeat(2048)
            ),
            413,
            "1024",
        ),
        (
            "text/plain",
            format!(r#"{{"apiVersion":"{v1}","count":1}}"#),
            415,
            "application/json",
        ),
    ] {
        let (code, answer) = pod.post_shed(content_type, &body).await;
        assert_eq!(code, want, "{}: {body:.80}: {answer}", pod.name);
        assert!(
            answer.contains(needle),
            "{}: {body:.80}: {needle:?} not in {answer:?}",
            pod.name
        );
    }
    assert_eq!(
        pod.gauge().await,
        Some(N as f64),
        "{}: a refused request closed connections",
        pod.name
    );
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "{}: a client was closed",
        pod.name
    );

    // count = 3: the three oldest get 1013 and the gauge drops by 3.
    let k = 3;
    assert_eq!(
        pod.shed(k as u64).await,
        serde_json::json!({"apiVersion": v1, "closing": k}),
        "{}",
        pod.name
    );
    pod.expect_gauge(N - k, "the gauge down by 3").await;
    eventually(
        PATIENCE,
        &format!("{}: {k} clients closed", pod.name),
        || async { (readers.iter().filter(|r| r.is_finished()).count() >= k).then_some(()) },
    )
    .await;
    let closed: Vec<usize> = (0..N).filter(|&i| readers[i].is_finished()).collect();
    assert_eq!(
        closed,
        (0..k).collect::<Vec<_>>(),
        "{}: not the {k} oldest",
        pod.name
    );
    let mut readers = readers.into_iter();
    for i in 0..k {
        let code = readers.next().expect("reader").await.expect("reader task");
        assert_eq!(code, Some(shed::CLOSE_CODE), "{}: client {i}", pod.name);
    }
    let rest: Vec<_> = readers.collect();

    // More than it holds: it closes what it holds.
    assert_eq!(
        pod.shed(100).await,
        serde_json::json!({"apiVersion": v1, "closing": N - k}),
        "{}",
        pod.name
    );
    for r in rest {
        let code = tokio::time::timeout(PATIENCE, r)
            .await
            .unwrap_or_else(|_| panic!("{}: a client was never closed", pod.name))
            .expect("reader task");
        assert_eq!(code, Some(shed::CLOSE_CODE), "{}", pod.name);
    }
    pod.expect_gauge(0, "every connection shed").await;
    assert_eq!(
        pod.shed(1).await,
        serde_json::json!({"apiVersion": v1, "closing": 0}),
        "{}: nothing left to shed",
        pod.name
    );
    let (_, metrics) = plain_get(pod.scrape, "/metrics")
        .await
        .expect("GET /metrics");
    let shed_closes: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("websocket_connections_closed_total{") && l.contains("reason=\"shed\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(shed_closes, N as f64, "{}: {metrics}", pod.name);
}

/// Clients of the load generator, shed, come back by themselves: none lost, the count restored,
/// no replacement opened beside them.
async fn clients_reconnect_after_a_shed(pod: &Pod) {
    const CLIENTS: usize = 10;
    let load = LoadGenerator::new(LoadPlan {
        targets: vec![pod.ws_url.clone()],
        steps: vec![Step {
            connections: CLIENTS,
            rate: 1000.0,
            hold: Duration::from_secs(24 * 3600),
        }],
        churn_per_sec: 0.0,
        messages_per_sec: 0.0,
        deadline: Some(PATIENCE),
    });
    let runner = load.clone();
    let run = tokio::spawn(async move { runner.run(std::future::pending()).await });
    pod.expect_gauge(CLIENTS, "the generator's clients open")
        .await;
    let mark = load.reconnect_mark();
    assert_eq!(pod.shed(4).await["closing"], 4, "{}", pod.name);
    let stats = eventually(PATIENCE, "4 reconnections", || async {
        let s = load.reconnect_stats_since(&mark);
        (s.reconnects == 4).then_some(s)
    })
    .await;
    pod.expect_gauge(CLIENTS, "the shed clients back").await;
    assert_eq!(
        stats.server_closes.try_again_later, 4,
        "{}: {stats:?}",
        pod.name
    );
    assert_eq!(stats.server_closes.total(), 4, "{}: {stats:?}", pod.name);
    assert_eq!(stats.lost, 0, "{}: {stats:?}", pod.name);
    assert_eq!(load.open(), CLIENTS, "{}", pod.name);
    load.end_step(1);
    let summary = run.await.expect("the load did not panic");
    assert_eq!(summary.reconnects, 4, "{}: {summary}", pod.name);
    assert_eq!(summary.lost, 0, "{}: {summary}", pod.name);
    // The first CLIENTS connections and the 4 reconnections: nothing opened beside them.
    assert_eq!(
        summary.established,
        (CLIENTS + 4) as u64,
        "{}: {summary}",
        pod.name
    );
    pod.expect_gauge(0, "the load closed its clients").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_demo_serve_keeps_the_shed_contract_and_its_clients_come_back() {
    let pod = Pod::ws_demo().await;
    keeps_the_contract(&pod).await;
    clients_reconnect_after_a_shed(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_websockets_example_keeps_the_shed_contract_and_its_clients_come_back() {
    let pod = Pod::python_example().await;
    keeps_the_contract(&pod).await;
    clients_reconnect_after_a_shed(&pod).await;
}
