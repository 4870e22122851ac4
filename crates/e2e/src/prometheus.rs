//! A real Prometheus (Debian's `prometheus` package) for tests: started on 127.0.0.1 with a temp
//! data dir and a 1 s scrape interval, polled for readiness with a deadline, stopped by pid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::e2e::{ProcessGuard, free_port, require_tool};
use super::{eventually, plain_get};

/// One scrape target: address and the `namespace`/`pod` labels Prometheus attaches.
pub struct Target<'a> {
    pub addr: String,
    pub namespace: &'a str,
    pub pod: &'a str,
}

/// `prometheus.yml` scraping `targets` every second.
pub fn scrape_config(targets: &[Target<'_>]) -> String {
    let mut s = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 800ms\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: ws\n  static_configs:\n",
    );
    for t in targets {
        s.push_str(&format!(
            "  - targets: ['{}']\n    labels: {{namespace: '{}', pod: '{}'}}\n",
            t.addr, t.namespace, t.pod
        ));
    }
    if targets.is_empty() {
        s = "global:\n  scrape_interval: 1s\nscrape_configs: []\n".into();
    }
    s
}

/// Why [`Prometheus::query_result`] has no result.
#[derive(Debug)]
pub enum QueryError {
    /// Prometheus refused the query (HTTP 400 `bad_data`, 422 `execution`): the message.
    Rejected(String),
    /// No usable answer: the connection, the status or the body.
    Unanswered(String),
}

/// A running (or stopped) Prometheus with its config and data under `dir`.
pub struct Prometheus {
    pub port: u16,
    pub dir: PathBuf,
    binary: PathBuf,
    /// Agent mode (`--enable-feature=agent`): scrapes and remote-writes, no TSDB, no queries.
    agent: bool,
    process: Option<ProcessGuard>,
}

impl Prometheus {
    /// The `prometheus` binary; a missing one fails the test with how to install it.
    pub fn binary() -> PathBuf {
        require_tool(
            "prometheus",
            "install Debian's `prometheus` package (scripts/install-deps.sh does)",
        )
    }

    /// Writes `config` to `dir/prometheus.yml` and starts Prometheus on a free port with its
    /// TSDB in `dir/data` (which may already hold blocks, e.g. from promtool).
    pub fn start(binary: PathBuf, dir: &Path, config: &str) -> Self {
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let mut p = Self {
            port: free_port(),
            dir: dir.to_owned(),
            binary,
            agent: false,
            process: None,
        };
        p.spawn();
        p
    }

    /// Like [`Self::start`], in agent mode (`--enable-feature=agent`, its WAL in
    /// `dir/data-agent`): it scrapes and remote-writes; [`Self::restart`] keeps its WAL.
    pub fn start_agent(binary: PathBuf, dir: &Path, config: &str) -> Self {
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let mut p = Self {
            port: free_port(),
            dir: dir.to_owned(),
            binary,
            agent: true,
            process: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!(
            "--config.file={}",
            self.dir.join("prometheus.yml").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
        .arg("--log.level=warn");
        if self.agent {
            // Server-only flags such as --storage.tsdb.path make an agent exit.
            cmd.arg("--enable-feature=agent").arg(format!(
                "--storage.agent.path={}",
                self.dir.join("data-agent").display()
            ));
        } else {
            cmd.arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ));
        }
        self.process = Some(ProcessGuard::spawn(cmd, "prometheus"));
    }

    /// The process id while it runs (a benchmark reads its CPU time from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessGuard::pid)
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Polls `/-/ready` until 200. Prometheus cannot listen on port 0 and report its port, so
    /// [`Self::start`] takes a port that was free a moment ago; if another process took it in
    /// between, Prometheus exits with "address already in use" and is started again on a new
    /// free port (a few times).
    pub async fn wait_ready(&mut self, deadline: Duration) {
        for _ in 0..3 {
            let started = std::time::Instant::now();
            loop {
                if matches!(plain_get(self.addr(), "/-/ready").await, Ok((200, _))) {
                    return;
                }
                let process = self.process.as_mut().expect("spawned by start");
                if let Some(status) = process.try_wait() {
                    assert!(
                        process.stderr().contains("address already in use"),
                        "prometheus exited ({status}) before it was ready:\n{}",
                        process.stderr()
                    );
                    break;
                }
                assert!(
                    started.elapsed() < deadline,
                    "prometheus not ready within {deadline:?}:\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.port = free_port();
            self.spawn();
        }
        panic!("prometheus: its port was taken three times in a row");
    }

    /// Runs an instant query and returns the `data.result` array.
    pub async fn query(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (code, body) = plain_get(self.addr(), &format!("/api/v1/query?query={q}"))
            .await
            .ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    /// Runs an instant query and says how it went: `Ok(result)` on success, `Err(Rejected)` when
    /// Prometheus refuses the query itself (a parse or evaluation error: retrying cannot help),
    /// `Err(Unanswered)` when there is no usable answer (not up yet, a timeout, ...).
    pub async fn query_result(&self, promql: &str) -> Result<Vec<serde_json::Value>, QueryError> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (code, body) = plain_get(self.addr(), &format!("/api/v1/query?query={q}"))
            .await
            .map_err(QueryError::Unanswered)?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| QueryError::Unanswered(format!("{code}, not JSON ({e}): {body}")))?;
        match (code, v["status"].as_str()) {
            (200, Some("success")) => v["data"]["result"]
                .as_array()
                .cloned()
                .ok_or_else(|| QueryError::Rejected(format!("not a vector: {body}"))),
            (400 | 422, _) => Err(QueryError::Rejected(format!("{code}: {body}"))),
            _ => Err(QueryError::Unanswered(format!("{code}: {body}"))),
        }
    }

    /// Polls until `promql` returns at least `n` series (Prometheus hands its first targets to the
    /// scraper only after about 5 s).
    pub async fn wait_series(&self, promql: &str, n: usize, deadline: Duration) {
        eventually(deadline, &format!("{n} series of {promql}"), || async {
            self.query(promql)
                .await
                .filter(|r| r.len() >= n)
                .map(|_| ())
        })
        .await;
    }

    /// `prometheus_http_requests_total` for `handler`, summed over codes, from its /metrics.
    pub async fn requests_served(&self, handler: &str) -> f64 {
        let (_, body) = plain_get(self.addr(), "/metrics")
            .await
            .expect("prometheus /metrics");
        let needle = format!("handler=\"{handler}\"");
        body.lines()
            .filter(|l| l.starts_with("prometheus_http_requests_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The `pod` label of every active scrape target (`/api/v1/targets`, served in agent mode
    /// too), sorted: which pods this Prometheus' relabelling kept.
    pub async fn target_pods(&self) -> Option<Vec<String>> {
        let (code, body) = plain_get(self.addr(), "/api/v1/targets?state=active")
            .await
            .ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mut pods: Vec<String> = v["data"]["activeTargets"]
            .as_array()?
            .iter()
            .filter_map(|t| t["labels"]["pod"].as_str().map(str::to_owned))
            .collect();
        pods.sort();
        Some(pods)
    }

    /// Kills the process (SIGKILL, by pid) and waits for it.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts it again on the same port and data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Its logs so far (for failure messages).
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.stderr())
            .unwrap_or_default()
    }
}
