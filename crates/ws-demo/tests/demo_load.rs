//! The real `ws-demo load --json` against demo servers running in this process: least-loaded
//! spreading with a dead target, scenario steps up and down, churn, the summary's consistency,
//! count-ended steps (`--deadline`: exit 1 when a count is not reached), and exit code 2 on bad
//! input. Every wait is a poll with a generous give-up deadline ([`PATIENCE`]).

use ws_e2e as support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::e2e::{self, ProcessGuard};
use support::eventually;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use ws_demo::server::{CloseReason, DemoServer, Route, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_ws-demo");

/// When a poll gives up: a loaded 2-core machine can be 5-10x slower than an idle one, so this
/// bounds a hang, not a speed.
const PATIENCE: Duration = Duration::from_secs(120);

/// `--deadline` of the count-ended plans below (the hold starts when the count is reached).
const DEADLINE: &str = "120s";

/// A `DemoServer` serving on 127.0.0.1:0 in this process; stopped on drop.
struct Running {
    server: DemoServer,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = DemoServer::new(ServerConfig::default());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            server,
            addr,
            stop: Some(stop),
        }
    }

    fn echo_url(&self) -> String {
        format!("ws://{}/ws/echo", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `ws-demo load --json` with `args`, none of the caller's `WS_DEMO_*` variables, logs at info.
fn load_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WS_DEMO_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .arg("load")
        .args(args);
    cmd
}

/// Waits for a spawned load process to exit 0 and returns its JSON summary.
async fn summary(load: ProcessGuard, limit: Duration) -> Value {
    let out: Output = tokio::task::spawn_blocking(move || load.finish_blocking(limit))
        .await
        .expect("load process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected:\n{stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `established` per target, in order.
fn per_target(s: &Value) -> Vec<u64> {
    s["per_target"]
        .as_array()
        .expect("per_target array")
        .iter()
        .map(|t| t["established"].as_u64().expect("established"))
        .collect()
}

fn num(s: &Value, key: &str) -> f64 {
    s[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {s}"))
}

/// Checks the invariants every summary keeps.
fn assert_consistent(s: &Value) {
    let sum: u64 = per_target(s).iter().sum();
    assert_eq!(num(s, "established") as u64, sum, "{s}");
    assert!(num(s, "connect_p50_ms") > 0.0, "{s}");
    assert!(num(s, "connect_p50_ms") <= num(s, "connect_p99_ms"), "{s}");
    assert!(num(s, "achieved_rate") > 0.0, "{s}");
    assert!(num(s, "duration_secs") > 0.0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_spreading_puts_51_and_50_on_two_live_targets_and_counts_a_dead_ones_failures()
{
    let (a, b) = (Running::start().await, Running::start().await);
    let dead = format!("ws://127.0.0.1:{}/ws/echo", e2e::free_port());
    let load = ProcessGuard::spawn(
        load_command(&[
            "--target",
            &a.echo_url(),
            "--target",
            &b.echo_url(),
            "--target",
            &dead,
            "--connections",
            "101",
            "--rate",
            "500",
            "--hold",
            "2s",
            "--deadline",
            DEADLINE,
            "--json",
        ]),
        "ws-demo load",
    );
    eventually(PATIENCE, "51 + 50 open on the servers", || async {
        (a.server.active() == 51 && b.server.active() == 50).then_some(())
    })
    .await;
    let s = summary(load, PATIENCE).await;
    assert_consistent(&s);
    assert_eq!(per_target(&s), [51, 50, 0], "{s}");
    assert_eq!(num(&s, "established"), 101.0, "{s}");
    assert!(num(&s, "failed") >= 1.0, "the dead target's failures: {s}");
    assert_eq!(num(&s, "dropped"), 0.0, "{s}");
    assert_eq!(s["steps_reached"], 1, "{s}");
    // A pacing claim (never faster than --rate), which a slow machine cannot break.
    assert!(
        num(&s, "achieved_rate") <= 500.0 * 1.2,
        "faster than --rate: {s}"
    );
    // Every connection was closed with a close frame at the end.
    eventually(PATIENCE, "servers back to 0", || async {
        (a.server.active() == 0 && b.server.active() == 0).then_some(())
    })
    .await;
    assert_eq!(a.server.closed(Route::Echo, CloseReason::ClientClose), 51);
    assert_eq!(b.server.closed(Route::Echo, CloseReason::ClientClose), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_file_steps_up_then_down_and_the_servers_follow() {
    let (a, b) = (Running::start().await, Running::start().await);
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("scenario.yaml");
    std::fs::write(
        &scenario,
        "steps:\n  - {connections: 60, rate: 300, hold: 1500ms}\n  - {connections: 20, hold: 1500ms}\n",
    )
    .expect("write scenario");
    let load = ProcessGuard::spawn(
        load_command(&[
            "--target",
            &a.echo_url(),
            "--target",
            &b.echo_url(),
            "--scenario",
            &scenario.display().to_string(),
            "--rate",
            "100",
            "--deadline",
            DEADLINE,
            "--json",
        ]),
        "ws-demo load",
    );
    let total = || a.server.active() + b.server.active();
    eventually(PATIENCE, "step 1: 60 open", || async {
        (total() == 60).then_some(())
    })
    .await;
    assert_eq!((a.server.active(), b.server.active()), (30, 30));
    eventually(PATIENCE, "step 2: 20 open", || async {
        (total() == 20).then_some(())
    })
    .await;
    // Going down closes from the most-loaded target, so the spread stays even.
    assert_eq!((a.server.active(), b.server.active()), (10, 10));
    let s = summary(load, PATIENCE).await;
    assert_consistent(&s);
    assert_eq!(per_target(&s), [30, 30], "{s}");
    assert_eq!(num(&s, "failed"), 0.0, "{s}");
    assert_eq!(s["steps_reached"], 2, "{s}");
    eventually(PATIENCE, "servers back to 0", || async {
        (total() == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_sends_that_many_messages_per_connection_and_echo_answers_each() {
    let a = Running::start().await;
    let mut load = ProcessGuard::spawn(
        load_command(&[
            "--target",
            &a.echo_url(),
            "--connections",
            "20",
            "--rate",
            "500",
            "--hold",
            "24h",
            "--deadline",
            DEADLINE,
            "--message-rate",
            "5",
            "--json",
        ]),
        "ws-demo load",
    );
    eventually(PATIENCE, "20 open", || async {
        (a.server.active() == 20).then_some(())
    })
    .await;
    // 20 connections × 5 a second = 100 messages a second; measured over the time the server
    // takes to receive 300 more (ended on the count, not a time).
    let (start, at) = (
        a.server.messages_received(Route::Echo),
        std::time::Instant::now(),
    );
    eventually(PATIENCE, "300 more messages received", || async {
        (a.server.messages_received(Route::Echo) >= start + 300).then_some(())
    })
    .await;
    let rate =
        (a.server.messages_received(Route::Echo) - start) as f64 / at.elapsed().as_secs_f64();
    assert!(
        load.try_wait().is_none(),
        "the load exited while holding:\n{}",
        load.stderr()
    );
    load.signal("TERM");
    let s = summary(load, PATIENCE).await;
    assert_consistent(&s);
    // Every message on /ws/echo is answered: sent catches up with received.
    eventually(PATIENCE, "every message echoed", || async {
        (a.server.messages_sent(Route::Echo) == a.server.messages_received(Route::Echo))
            .then_some(())
    })
    .await;
    // Not a speed claim: a busy machine delivers late, never more than was sent.
    assert!(rate <= 100.0 * 1.5, "{rate:.1} messages/s for 100/s sent");
    // The exposition carries both counters.
    let body = a.server.render_openmetrics();
    for family in [
        "websocket_messages_received_total",
        "websocket_messages_sent_total",
    ] {
        assert!(
            body.contains(&format!("{family}{{route=\"echo\"}}")),
            "{body}"
        );
    }
    let bad = load_command(&["--target", &a.echo_url(), "--message-rate=-1"])
        .output()
        .expect("ws-demo load");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--message-rate -1"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_the_total_constant_while_opened_total_grows() {
    let a = Running::start().await;
    // Held until the test has seen enough churn (then SIGTERM): ended on a count, not a time.
    let mut load = ProcessGuard::spawn(
        load_command(&[
            "--target",
            &a.echo_url(),
            "--connections",
            "100",
            "--rate",
            "500",
            "--hold",
            "24h",
            "--deadline",
            DEADLINE,
            "--churn",
            "0.1",
            "--json",
        ]),
        "ws-demo load",
    );
    eventually(PATIENCE, "100 open", || async {
        (a.server.active() == 100).then_some(())
    })
    .await;
    let opened_at_start = a.server.opened(Route::Echo);
    // Sample the total every 50 ms (the sampling period, not a wait) until 25 connections were
    // replaced (10 a second are).
    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    while a.server.opened(Route::Echo) - opened_at_start < 25 {
        samples.push(a.server.active());
        assert!(
            load.try_wait().is_none(),
            "the load exited while holding:\n{}",
            load.stderr()
        );
        assert!(
            started.elapsed() < PATIENCE,
            "only {} connections replaced in {PATIENCE:?} of 10/s churn",
            a.server.opened(Route::Echo) - opened_at_start
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (lo, hi) = (
        samples.iter().min().copied().unwrap_or(0),
        samples.iter().max().copied().unwrap_or(0),
    );
    assert!(
        (90..=110).contains(&lo) && (90..=110).contains(&hi),
        "total left 100 ± 10: {samples:?}"
    );
    let at_100 = samples.iter().filter(|&&n| n == 100).count();
    assert!(at_100 * 2 >= samples.len(), "mostly at 100: {samples:?}");
    load.signal("TERM");
    let s = summary(load, PATIENCE).await;
    assert_consistent(&s);
    assert!(num(&s, "established") >= 125.0, "{s}");
    // The server counts a connection when it sends 101; a replacement whose 101 was on the wire
    // when SIGTERM arrived is opened there but never established here (seen once in CI: 129
    // established, 130 opened). Churn replaces 10 a second, so at most that many are in flight.
    let (established, opened) = (num(&s, "established") as u64, a.server.opened(Route::Echo));
    assert!(
        (established..=established + 10).contains(&opened),
        "server opened {opened}, load established {established}: {s}"
    );
    assert_eq!(num(&s, "dropped"), 0.0, "{s}");
    assert_eq!(s["steps_reached"], 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_short_of_its_count_at_the_deadline_fails_the_run_naming_the_step() {
    // Only a dead target: no connection can open.
    let dead = format!("ws://127.0.0.1:{}/ws/echo", e2e::free_port());
    let out = e2e::run(
        load_command(&[
            "--target",
            &dead,
            "--connections",
            "20",
            "--rate",
            "10000",
            "--hold",
            "24h",
            "--deadline",
            "2s",
            "--json",
        ]),
        "ws-demo load",
        PATIENCE,
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("ws-demo: step 1 reached 0 of 20 connections within its deadline of 2s"),
        "{stderr}"
    );
    let s: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(s["steps_reached"], 0, "{s}");
    assert_eq!(s["unreached"]["step"], 1, "{s}");
    assert_eq!(s["unreached"]["want"], 20, "{s}");
    assert_eq!(s["unreached"]["deadline_ms"], 2000, "{s}");
    assert_eq!(s["unreached"]["open"], 0, "{s}");
    assert!(num(&s, "failed") >= 1.0, "{s}");
    // The deadline is a lower bound on the run's length.
    assert!(num(&s, "duration_secs") >= 2.0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "steps: [{connections: lots, hold: 1s}]\n").expect("write");
    let bad = bad.display().to_string();
    let missing = dir.path().join("missing.yaml").display().to_string();
    for (args, needles) in [
        (
            vec!["--target", "ws://127.0.0.1:1/ws/echo", "--scenario", &bad],
            vec!["ws-demo: scenario", "bad.yaml", "connections"],
        ),
        (
            vec![
                "--target",
                "ws://127.0.0.1:1/ws/echo",
                "--scenario",
                &missing,
            ],
            vec!["ws-demo: reading scenario", "missing.yaml"],
        ),
        (
            vec!["--target", "http://127.0.0.1:1/ws/echo", "--churn", "2"],
            vec![
                "\"http://127.0.0.1:1/ws/echo\": expected a ws:// URL",
                "--churn 2",
            ],
        ),
        (vec!["--connections", "5"], vec!["no target"]),
    ] {
        let out = e2e::run(load_command(&args), "ws-demo load", Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: {n:?} not in {stderr}");
        }
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}
