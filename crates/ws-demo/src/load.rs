//! The load generator (`ws-demo load`): opens WebSocket connections at a rate, each to the target
//! with the fewest connections open from here (as a Service would spread them), holds them through
//! a scenario of steps, churns a fraction per second, and ends with a summary. Each connection is a
//! client that behaves like a real one: when the server closes it (a 1001 drain, a 1013 shed, any
//! close or a broken TCP connection), it reconnects to its target URL after a jittered
//! exponential back-off, and the generator measures how long that took.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Deadline of one connection attempt, TCP connect to the end of the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time given to each part of a close (our close frame, then the server's reply).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connection attempts in flight at most (above that, opening waits for attempts to finish).
const MAX_IN_FLIGHT: usize = 512;

/// Longest sleep of the controller between two looks at the counters.
const TICK: Duration = Duration::from_millis(20);

/// First retry delay of a target whose last attempt failed; doubles per failure in a row.
const RETRY_BASE: Duration = Duration::from_millis(50);

/// Longest retry delay of a failing target.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A client the server dropped waits a random time in `[0, RECONNECT_BASE]` before its first
/// reconnection attempt; the bound doubles after each failed attempt (full jitter), up to
/// [`RECONNECT_CAP`], and is back to this after a successful reconnection.
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);

/// Largest bound of a reconnection delay.
pub const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// A dropped client not connected again within this time of its drop is counted lost (once, when
/// this time passes; it keeps retrying).
pub const LOST_AFTER: Duration = Duration::from_secs(5);

/// One step of a scenario: reach `connections` open, opening or closing at `rate`, then hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Connections to have open during the step.
    pub connections: usize,
    /// Connections opened (or closed, going down) per second at most. Unit: 1/s.
    pub rate: f64,
    /// How long to hold once `connections` are open.
    pub hold: Duration,
}

/// What to run: targets, steps and churn.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    /// WebSocket URLs (`ws://HOST:PORT/PATH`).
    pub targets: Vec<String>,
    /// Steps, run in order.
    pub steps: Vec<Step>,
    /// Fraction of open connections closed (and reopened) each second while holding.
    pub churn_per_sec: f64,
    /// Text messages each open connection sends per second (0: none). On `/ws/echo` each is
    /// answered, so a pod's `websocket_messages_received_total` grows by this rate per
    /// connection it holds. Unit: 1/s.
    pub messages_per_sec: f64,
    /// Time each step has, from its start, to reach its connection count. `Some`: the hold
    /// starts only once the count is reached (a count-ended ramp), and a step still short of it
    /// at the deadline ends the run, reported in [`Summary::unreached`]. `None`: a step that
    /// has not reached its count after its ramp time (`|change| / rate × 1.5 + 10 s`) holds
    /// anyway, with a warning.
    pub deadline: Option<Duration>,
}

/// Why a plan cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The scenario file could not be read.
    #[error("reading scenario {}: {source}", path.display())]
    ScenarioUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The scenario file is not the expected YAML.
    #[error(
        "scenario {}: {message} (expected `steps: [{{connections: 600, rate: 200, hold: 30s}}, …]`)",
        path.display()
    )]
    ScenarioUnparseable {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        message: String,
    },
    /// One or more values are out of range; every problem is listed.
    #[error("invalid load plan:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        /// One message per problem.
        problems: Vec<String>,
    },
}

/// Flags of `ws-demo load` (each with a `WS_DEMO_*` environment fallback).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// WebSocket URL to connect to (ws://HOST:PORT/PATH). Repeat to spread connections over
    /// several targets, each new one to the target with the fewest open from here.
    #[arg(long = "target", env = "WS_DEMO_TARGET", value_delimiter = ',')]
    pub targets: Vec<String>,

    /// Connections to open and hold (a one-step scenario).
    #[arg(
        long,
        env = "WS_DEMO_CONNECTIONS",
        default_value_t = 100,
        conflicts_with = "scenario"
    )]
    pub connections: usize,

    /// Connections opened (or closed) per second; the default rate of scenario steps.
    #[arg(long, env = "WS_DEMO_RATE", default_value_t = 100.0)]
    pub rate: f64,

    /// How long to hold the connections once open (e.g. 30s, 2m).
    #[arg(long, env = "WS_DEMO_HOLD", default_value = "30s", value_parser = ws_metrics_adapter::config::parse_duration, conflicts_with = "scenario")]
    pub hold: Duration,

    /// YAML scenario instead of --connections/--hold:
    /// `steps: [{connections: 600, rate: 200, hold: 30s}, {connections: 150, hold: 20s}]`.
    #[arg(long, env = "WS_DEMO_SCENARIO")]
    pub scenario: Option<PathBuf>,

    /// Fraction of open connections closed and reopened each second while holding (e.g. 0.01).
    #[arg(long, env = "WS_DEMO_CHURN", default_value_t = 0.0)]
    pub churn: f64,

    /// Text messages each open connection sends per second (e.g. 2; 0.5 is one every 2 s), for
    /// a message rate the adapter can serve with `--metric …=rate(websocket_messages_received_total[…])`.
    #[arg(long, env = "WS_DEMO_MESSAGE_RATE", default_value_t = 0.0)]
    pub message_rate: f64,

    /// Each step must reach its connection count within this time of its start (e.g. 5m): the
    /// hold starts only once the count is reached, and a step short of it at the deadline ends
    /// the run with exit status 1. Without it, a step that falls short holds anyway after its
    /// ramp time (change / rate × 1.5 + 10 s).
    #[arg(long, env = "WS_DEMO_DEADLINE", value_parser = ws_metrics_adapter::config::parse_duration)]
    pub deadline: Option<Duration>,

    /// Print the summary as one JSON object.
    #[arg(long, env = "WS_DEMO_JSON")]
    pub json: bool,

    /// Draw progress bars on stderr even when it is not a terminal.
    #[arg(long, env = "WS_DEMO_PROGRESS")]
    pub progress: bool,
}

impl LoadArgs {
    /// Reads the scenario (if any) and checks everything.
    ///
    /// # Errors
    /// A [`PlanError`] for an unreadable or unparsable scenario, or every invalid value.
    pub fn into_plan(self) -> Result<LoadPlan, PlanError> {
        let steps = match &self.scenario {
            Some(path) => read_scenario(path, self.rate)?,
            None => vec![Step {
                connections: self.connections,
                rate: self.rate,
                hold: self.hold,
            }],
        };
        let plan = LoadPlan {
            targets: self.targets,
            steps,
            churn_per_sec: self.churn,
            messages_per_sec: self.message_rate,
            deadline: self.deadline,
        };
        plan.validate()?;
        Ok(plan)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    steps: Vec<ScenarioStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioStep {
    connections: usize,
    rate: Option<f64>,
    hold: String,
}

/// Parses a scenario (`steps: [{connections: 600, rate: 200, hold: 30s}, …]`); a step without
/// `rate` takes `default_rate`. `path` only names the source in errors.
///
/// # Errors
/// [`PlanError::ScenarioUnparseable`] for YAML that does not have this shape or a bad `hold`.
pub fn parse_scenario(yaml: &str, default_rate: f64, path: &Path) -> Result<Vec<Step>, PlanError> {
    let unparseable = |message: String| PlanError::ScenarioUnparseable {
        path: path.to_owned(),
        message,
    };
    let file: ScenarioFile =
        ws_metrics_adapter::config::from_yaml(yaml).map_err(|e| unparseable(e.to_string()))?;
    file.steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let hold = ws_metrics_adapter::config::parse_duration(&s.hold)
                .map_err(|e| unparseable(format!("step {}: hold {:?}: {e}", i + 1, s.hold)))?;
            Ok(Step {
                connections: s.connections,
                rate: s.rate.unwrap_or(default_rate),
                hold,
            })
        })
        .collect()
}

/// Reads and parses a scenario file (see [`parse_scenario`]).
///
/// # Errors
/// [`PlanError::ScenarioUnreadable`] or [`PlanError::ScenarioUnparseable`].
pub fn read_scenario(path: &Path, default_rate: f64) -> Result<Vec<Step>, PlanError> {
    let yaml = std::fs::read_to_string(path).map_err(|source| PlanError::ScenarioUnreadable {
        path: path.to_owned(),
        source,
    })?;
    parse_scenario(&yaml, default_rate, path)
}

/// `host:port` to connect to for a `ws://` URL.
///
/// # Errors
/// Why the URL cannot be used.
pub fn target_authority(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected ws://HOST:PORT/PATH"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => return Err("wss:// needs TLS, which ws-demo is built without".into()),
        _ => return Err("expected a ws:// URL such as ws://127.0.0.1:9000/ws/echo".into()),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or("no host; expected ws://HOST:PORT/PATH")?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

impl LoadPlan {
    /// Checks the plan, reporting every problem at once.
    ///
    /// # Errors
    /// [`PlanError::Invalid`] listing each problem.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut problems = Vec::new();
        if self.targets.is_empty() {
            problems.push("no target: give at least one --target ws://HOST:PORT/PATH".into());
        }
        for t in &self.targets {
            if let Err(e) = target_authority(t) {
                problems.push(format!("--target {t:?}: {e}"));
            }
        }
        if self.steps.is_empty() {
            problems.push("no step: the scenario needs at least one step".into());
        }
        for (i, s) in self.steps.iter().enumerate() {
            if !(s.rate.is_finite() && s.rate > 0.0) {
                problems.push(format!(
                    "step {}: rate {}: must be a positive number of connections per second",
                    i + 1,
                    s.rate
                ));
            }
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            problems.push("--deadline 0s: must be positive".into());
        }
        if !(self.messages_per_sec.is_finite() && (0.0..=1000.0).contains(&self.messages_per_sec)) {
            problems.push(format!(
                "--message-rate {}: must be between 0 and 1000 messages per second per connection",
                self.messages_per_sec
            ));
        }
        if !(0.0..=1.0).contains(&self.churn_per_sec) {
            problems.push(format!(
                "--churn {}: must be between 0 and 1 (a fraction of open connections per second)",
                self.churn_per_sec
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PlanError::Invalid { problems })
        }
    }
}

/// Counters of one target. `load` is what "least loaded" compares: connections open or being
/// opened, minus those asked to close.
#[derive(Debug)]
struct Target {
    url: String,
    /// `host:port`, or the reason the URL is unusable (every attempt then fails).
    authority: Result<String, String>,
    load: AtomicUsize,
    open: AtomicUsize,
    pending: AtomicUsize,
    established: AtomicU64,
    failed: AtomicU64,
    fail_streak: AtomicU32,
    /// No new attempt before this many milliseconds after the generator's epoch.
    retry_at_ms: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    plan: LoadPlan,
    targets: Vec<Target>,
    epoch: Instant,
    /// Successful connect times. Unit: microseconds.
    connect_us: Mutex<Vec<u32>>,
    /// Connections that ended without being asked to (server close or error).
    dropped: AtomicU64,
    /// What the clients' reconnections did.
    reconnect: Mutex<ReconnectLog>,
    step: AtomicUsize,
    desired: AtomicUsize,
    /// Steps up to this one (1-based) end their hold as soon as it starts ([`LoadGenerator::end_step`]).
    ended: AtomicUsize,
    /// Wakes the controller when a connection opens or ends.
    wake: Notify,
}

impl Shared {
    fn reconnect_log(&self) -> MutexGuard<'_, ReconnectLog> {
        // Every change is a counter or a push: consistent across a panic.
        self.reconnect
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How the server ended a connection the generator did not ask to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerClose {
    /// A close frame with this code (1005 for a frame without one).
    Code(u16),
    /// The connection ended (TCP close, reset, protocol error) without a close frame.
    NoCloseFrame,
}

/// Connections the servers closed without the generator asking, by how: the close code of the
/// server's close frame, or none. Serialized with the codes as keys:
/// `{"1001":0,"1012":0,"1013":5,"other":0,"no_close_frame":1}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerCloses {
    /// 1001 Going Away: the server drains (shutting down, a pod being deleted).
    #[serde(rename = "1001")]
    pub going_away: u64,
    /// 1012 Service Restart.
    #[serde(rename = "1012")]
    pub service_restart: u64,
    /// 1013 Try Again Later: the server shed the connection (the shed contract).
    #[serde(rename = "1013")]
    pub try_again_later: u64,
    /// Any other code, or a close frame without one.
    pub other: u64,
    /// No close frame: the TCP connection ended or broke.
    pub no_close_frame: u64,
}

impl ServerCloses {
    /// Every server close counted.
    pub fn total(&self) -> u64 {
        self.going_away
            + self.service_restart
            + self.try_again_later
            + self.other
            + self.no_close_frame
    }

    fn count(&mut self, how: ServerClose) {
        let n = match how {
            ServerClose::Code(1001) => &mut self.going_away,
            ServerClose::Code(1012) => &mut self.service_restart,
            ServerClose::Code(1013) => &mut self.try_again_later,
            ServerClose::Code(_) => &mut self.other,
            ServerClose::NoCloseFrame => &mut self.no_close_frame,
        };
        *n += 1;
    }

    fn since(&self, mark: &ServerCloses) -> ServerCloses {
        ServerCloses {
            going_away: self.going_away - mark.going_away,
            service_restart: self.service_restart - mark.service_restart,
            try_again_later: self.try_again_later - mark.try_again_later,
            other: self.other - mark.other,
            no_close_frame: self.no_close_frame - mark.no_close_frame,
        }
    }
}

/// Every count only grows, so a mark is a copy of the counts.
#[derive(Debug, Default)]
struct ReconnectLog {
    /// Time from each drop to the client being connected again, in reconnection order.
    /// Unit: microseconds.
    latencies_us: Vec<u32>,
    lost: u64,
    closes: ServerCloses,
    /// Clients dropped and not connected again yet.
    reconnecting: usize,
}

impl ReconnectLog {
    fn dropped(&mut self, how: ServerClose) {
        self.closes.count(how);
        self.reconnecting += 1;
    }

    fn reconnected(&mut self, latency: Duration) {
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        self.reconnecting = self.reconnecting.saturating_sub(1);
    }
}

/// What the clients' reconnections did, since the start of the run or since a
/// [`ReconnectMark`] ([`LoadGenerator::reconnect_stats`], [`LoadGenerator::reconnect_stats_since`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconnectStats {
    /// Clients connected again after a server close.
    pub reconnects: u64,
    /// Clients not connected again within [`LOST_AFTER`] of their drop, each counted once when
    /// that time passed (a lost client keeps retrying and may reconnect later).
    pub lost: u64,
    /// Time from each drop to the client being connected again, in reconnection order; one per
    /// reconnect. Unit: milliseconds.
    pub latencies_ms: Vec<f64>,
    /// Server closes (the drops that started reconnections), by close code.
    pub server_closes: ServerCloses,
    /// Clients dropped and not connected again yet, now (not relative to a mark).
    pub reconnecting: usize,
}

impl ReconnectStats {
    /// Nearest-rank percentile (`p` in 0..=1) of [`latencies_ms`](Self::latencies_ms); 0 without
    /// any. Unit: milliseconds.
    pub fn latency_percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = (p * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }
}

/// A point in the reconnection record, to measure one phase of a run
/// ([`LoadGenerator::reconnect_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectMark {
    reconnects: usize,
    lost: u64,
    closes: ServerCloses,
}

/// Live counters for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Current step, from 1 (0 before the first).
    pub step: usize,
    /// Number of steps.
    pub steps: usize,
    /// Connections the current step wants open.
    pub desired: usize,
    /// Connections open now.
    pub open: usize,
    /// Connections established so far.
    pub established: u64,
    /// Failed attempts so far (reconnection attempts included).
    pub failed: u64,
    /// Clients the servers dropped that are not connected again yet.
    pub reconnecting: usize,
}

/// End-of-run figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Connections whose handshake completed (including churn reopenings and reconnections).
    pub established: u64,
    /// Attempts that failed (refused, timed out, rejected handshake), reconnection attempts
    /// included.
    pub failed: u64,
    /// Median connect time, TCP connect to handshake done. Unit: milliseconds.
    pub connect_p50_ms: f64,
    /// 99th percentile connect time. Unit: milliseconds.
    pub connect_p99_ms: f64,
    /// Connections established per second of time spent below the step's target.
    /// Unit: 1/s.
    pub achieved_rate: f64,
    /// Connections established per target, in `--target` order.
    #[serde(serialize_with = "per_target_objects")]
    pub per_target: Vec<(String, u64)>,
    /// Connections that ended without the generator asking (closed by the server or failed):
    /// the sum of [`server_closes`](Self::server_closes).
    pub dropped: u64,
    /// Clients connected again after a server close.
    pub reconnects: u64,
    /// Median time from a drop to the client being connected again (0 without a reconnect).
    /// Unit: milliseconds.
    pub reconnect_ms_p50: f64,
    /// 99th percentile of the same. Unit: milliseconds.
    pub reconnect_ms_p99: f64,
    /// Clients not connected again within [`LOST_AFTER`] of a drop (each drop counted at most
    /// once).
    pub lost: u64,
    /// The drops by the server's close code.
    pub server_closes: ServerCloses,
    /// Length of the run. Unit: seconds.
    pub duration_secs: f64,
    /// Steps whose connection count was reached, from the first, in order.
    pub steps_reached: usize,
    /// The step that missed [`LoadPlan::deadline`] (the run ended there), if one did.
    pub unreached: Option<Unreached>,
}

/// A step that did not reach its connection count within [`LoadPlan::deadline`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreached {
    /// The step, from 1.
    pub step: usize,
    /// Connections open at the deadline.
    pub open: usize,
    /// Connections the step wanted open.
    pub want: usize,
    /// The deadline. Unit: milliseconds.
    pub deadline_ms: u64,
}

impl fmt::Display for Unreached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} reached {} of {} connections within its deadline of {:?}",
            self.step,
            self.open,
            self.want,
            Duration::from_millis(self.deadline_ms)
        )
    }
}

fn per_target_objects<S: serde::Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        target: &'a str,
        established: u64,
    }
    s.collect_seq(v.iter().map(|(target, established)| Entry {
        target,
        established: *established,
    }))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "established      {}", self.established)?;
        writeln!(f, "failed           {}", self.failed)?;
        writeln!(f, "dropped          {}", self.dropped)?;
        let c = &self.server_closes;
        writeln!(
            f,
            "server closes    1001: {}, 1012: {}, 1013: {}, other: {}, no close frame: {}",
            c.going_away, c.service_restart, c.try_again_later, c.other, c.no_close_frame
        )?;
        writeln!(
            f,
            "reconnects       {} (p50 {:.1} ms, p99 {:.1} ms), lost {}",
            self.reconnects, self.reconnect_ms_p50, self.reconnect_ms_p99, self.lost
        )?;
        writeln!(
            f,
            "connect time     p50 {:.2} ms, p99 {:.2} ms",
            self.connect_p50_ms, self.connect_p99_ms
        )?;
        writeln!(
            f,
            "achieved rate    {:.1} connections/s",
            self.achieved_rate
        )?;
        writeln!(f, "duration         {:.1} s", self.duration_secs)?;
        writeln!(f, "steps reached    {}", self.steps_reached)?;
        if let Some(u) = &self.unreached {
            writeln!(f, "UNREACHED        {u}")?;
        }
        writeln!(f, "per target (established):")?;
        for (target, n) in &self.per_target {
            writeln!(f, "  {n:>8}  {target}")?;
        }
        Ok(())
    }
}

/// Opens new connections no faster than `rate` per second, counted from the moment work appears.
struct Pacer {
    rate: f64,
    start: Instant,
    used: u64,
    active: bool,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            start: Instant::now(),
            used: 0,
            active: false,
        }
    }

    /// Tokens available now (the first immediately). Starts counting on the first call after
    /// [`Self::idle`], so time spent with nothing to do does not build a burst.
    fn available(&mut self, now: Instant) -> u64 {
        if !self.active {
            self.active = true;
            self.start = now;
            self.used = 0;
        }
        // Saturating float-to-int cast: a huge rate just means "no limit".
        let earned =
            ((now.duration_since(self.start).as_secs_f64() * self.rate) as u64).saturating_add(1);
        earned.saturating_sub(self.used)
    }

    fn idle(&mut self) {
        self.active = false;
    }

    /// When the next token becomes available.
    fn next_at(&self) -> Instant {
        self.start + Duration::from_secs_f64(self.used as f64 / self.rate)
    }
}

/// The load generator. A cheap handle: clones share the connections and counters.
#[derive(Debug, Clone)]
pub struct LoadGenerator {
    shared: Arc<Shared>,
}

impl LoadGenerator {
    /// Prepares a run of `plan` (nothing is opened before [`run`](Self::run)). A target whose
    /// URL is unusable only fails its attempts; check the plan with [`LoadPlan::validate`] first.
    pub fn new(plan: LoadPlan) -> Self {
        let targets = plan
            .targets
            .iter()
            .map(|url| Target {
                url: url.clone(),
                authority: target_authority(url),
                load: AtomicUsize::new(0),
                open: AtomicUsize::new(0),
                pending: AtomicUsize::new(0),
                established: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                fail_streak: AtomicU32::new(0),
                retry_at_ms: AtomicU64::new(0),
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                plan,
                targets,
                epoch: Instant::now(),
                connect_us: Mutex::new(Vec::new()),
                dropped: AtomicU64::new(0),
                reconnect: Mutex::new(ReconnectLog::default()),
                step: AtomicUsize::new(0),
                desired: AtomicUsize::new(0),
                ended: AtomicUsize::new(0),
                wake: Notify::new(),
            }),
        }
    }

    /// Connections open now, per target in plan order.
    pub fn open_per_target(&self) -> Vec<(String, usize)> {
        self.shared
            .targets
            .iter()
            .map(|t| (t.url.clone(), t.open.load(Ordering::SeqCst)))
            .collect()
    }

    /// Connections open now, all targets together.
    pub fn open(&self) -> usize {
        self.shared
            .targets
            .iter()
            .map(|t| t.open.load(Ordering::SeqCst))
            .sum()
    }

    /// Live counters for a progress display.
    pub fn progress(&self) -> Progress {
        let s = &self.shared;
        Progress {
            step: s.step.load(Ordering::Relaxed),
            steps: s.plan.steps.len(),
            desired: s.desired.load(Ordering::Relaxed),
            open: self.open(),
            established: s
                .targets
                .iter()
                .map(|t| t.established.load(Ordering::Relaxed))
                .sum(),
            failed: s
                .targets
                .iter()
                .map(|t| t.failed.load(Ordering::Relaxed))
                .sum(),
            reconnecting: s.reconnect_log().reconnecting,
        }
    }

    /// What the clients' reconnections did since the start of the run (live).
    pub fn reconnect_stats(&self) -> ReconnectStats {
        self.reconnect_stats_since(&ReconnectMark {
            reconnects: 0,
            lost: 0,
            closes: ServerCloses::default(),
        })
    }

    /// A mark from which [`reconnect_stats_since`](Self::reconnect_stats_since) counts: take one
    /// before the phase to measure (a shed, a scale-down).
    pub fn reconnect_mark(&self) -> ReconnectMark {
        let log = self.shared.reconnect_log();
        ReconnectMark {
            reconnects: log.latencies_us.len(),
            lost: log.lost,
            closes: log.closes,
        }
    }

    /// What the clients' reconnections did since `mark` (live): reconnections, lost clients and
    /// server closes that happened after it ([`ReconnectStats::reconnecting`] is the number now).
    pub fn reconnect_stats_since(&self, mark: &ReconnectMark) -> ReconnectStats {
        let log = self.shared.reconnect_log();
        let latencies_ms: Vec<f64> = log.latencies_us
            [mark.reconnects.min(log.latencies_us.len())..]
            .iter()
            .map(|&us| f64::from(us) / 1000.0)
            .collect();
        ReconnectStats {
            reconnects: latencies_ms.len() as u64,
            lost: log.lost - mark.lost,
            latencies_ms,
            server_closes: log.closes.since(&mark.closes),
            reconnecting: log.reconnecting,
        }
    }

    /// Ends the hold of step `step` (1-based, as in [`Progress::step`]) and of every step before
    /// it: one that is holding moves on now, one still reaching its count moves on when it reaches
    /// it. For a caller that ends a step on what it waits for (an autoscaler reaching its replica
    /// count) rather than after a fixed hold; give such steps a hold longer than the caller's
    /// own give-up time. Later steps are not affected; asking twice is harmless.
    pub fn end_step(&self, step: usize) {
        self.shared.ended.fetch_max(step, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Runs the plan: each step reaches its connection count at its rate (least-loaded target
    /// first; failed attempts are counted and retried, a failing target backs off), holds it
    /// (churning if asked), then moves on. A client the server closes reconnects by itself to
    /// the same target URL after a jittered back-off ([`RECONNECT_BASE`], [`RECONNECT_CAP`]),
    /// keeping its place in the count meanwhile ([`reconnect_stats`](Self::reconnect_stats)). Ends after
    /// the last step, when `shutdown` resolves, or when a step misses [`LoadPlan::deadline`]
    /// ([`Summary::unreached`]), closing every connection with a close frame. Meant to be called
    /// once per generator.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Summary {
        let started = Instant::now();
        let mut shutdown = pin!(shutdown);
        let mut conns: Vec<VecDeque<oneshot::Sender<()>>> = self
            .shared
            .targets
            .iter()
            .map(|_| VecDeque::new())
            .collect();
        let mut opening_time = Duration::ZERO;
        let mut last_prune = Instant::now();
        let mut steps_reached = 0;
        let mut unreached = None;
        'steps: for (i, step) in self.shared.plan.steps.iter().enumerate() {
            self.shared.step.store(i + 1, Ordering::Relaxed);
            self.shared
                .desired
                .store(step.connections, Ordering::Relaxed);
            let step_start = Instant::now();
            let delta = step.connections.abs_diff(self.live());
            // Without a deadline, a step that cannot reach its count (targets down) still ends:
            // hold from here. With one, the count ends the ramp, and the deadline the run.
            let ramp_limit = match self.shared.plan.deadline {
                Some(d) => step_start + d,
                None => {
                    step_start
                        + Duration::from_secs_f64(delta as f64 / step.rate * 1.5)
                        + Duration::from_secs(10)
                }
            };
            let mut open_pacer = Pacer::new(step.rate);
            let mut close_pacer = Pacer::new(step.rate);
            let mut hold_until: Option<Instant> = None;
            let mut next_churn = Instant::now();
            let mut churn_carry = 0.0_f64;
            let mut was_opening = false;
            let mut last = Instant::now();
            loop {
                let now = Instant::now();
                if was_opening {
                    opening_time += now.duration_since(last);
                }
                last = now;
                if now.duration_since(last_prune) >= Duration::from_secs(1) {
                    for q in &mut conns {
                        q.retain(|s| !s.is_closed());
                    }
                    last_prune = now;
                }
                let open = self.open();
                was_opening = open < step.connections;
                let settled = open == step.connections
                    && self.live() == step.connections
                    && self.pending() == 0;
                if hold_until.is_none() && (settled || now >= ramp_limit) {
                    if settled && steps_reached == i {
                        steps_reached = i + 1;
                    }
                    if !settled && let Some(d) = self.shared.plan.deadline {
                        let u = Unreached {
                            step: i + 1,
                            open,
                            want: step.connections,
                            deadline_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                        };
                        tracing::error!(failed = self.failed(), "{u}: stopping");
                        unreached = Some(u);
                        break 'steps;
                    }
                    if !settled {
                        tracing::warn!(
                            step = i + 1,
                            open,
                            want = step.connections,
                            "step did not reach its connection count in time; holding anyway"
                        );
                    }
                    hold_until = Some(now + step.hold);
                    next_churn = now + Duration::from_secs(1);
                }
                if hold_until.is_some_and(|h| now >= h)
                    || (hold_until.is_some() && self.shared.ended.load(Ordering::SeqCst) > i)
                {
                    continue 'steps;
                }
                let mut wake = now + TICK;

                // Churn: close a fraction of what is open; the deficit below reopens it.
                if hold_until.is_some() && self.shared.plan.churn_per_sec > 0.0 && now >= next_churn
                {
                    churn_carry += self.shared.plan.churn_per_sec * open as f64;
                    let n = churn_carry.floor();
                    churn_carry -= n;
                    for _ in 0..n as usize {
                        if !self.close_one(&mut conns) {
                            break;
                        }
                    }
                    next_churn += Duration::from_secs(1);
                }
                if hold_until.is_some() {
                    wake = wake.min(next_churn);
                }

                let live = self.live();
                if live < step.connections {
                    let room = MAX_IN_FLIGHT.saturating_sub(self.pending());
                    let n = (step.connections - live)
                        .min(room)
                        .min(usize::try_from(open_pacer.available(now)).unwrap_or(usize::MAX));
                    for _ in 0..n {
                        match self.pick_target(now) {
                            Some(t) => {
                                conns[t].push_back(self.spawn_connection(t));
                                open_pacer.used += 1;
                            }
                            None => {
                                wake = wake.min(self.next_retry());
                                break;
                            }
                        }
                    }
                    wake = wake.min(open_pacer.next_at());
                } else {
                    open_pacer.idle();
                }
                if live > step.connections {
                    let n = (live - step.connections)
                        .min(usize::try_from(close_pacer.available(now)).unwrap_or(usize::MAX));
                    for _ in 0..n {
                        if !self.close_one(&mut conns) {
                            break;
                        }
                        close_pacer.used += 1;
                    }
                    wake = wake.min(close_pacer.next_at());
                } else {
                    close_pacer.idle();
                }
                if let Some(h) = hold_until {
                    wake = wake.min(h);
                }
                let wake = wake.max(Instant::now() + Duration::from_millis(1));
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    () = self.shared.wake.notified() => {}
                    () = &mut shutdown => {
                        tracing::info!("stopping early: closing every connection");
                        break 'steps;
                    }
                }
            }
        }
        self.close_all(&mut conns).await;
        let mut summary = self.summary(opening_time, started.elapsed());
        summary.steps_reached = steps_reached;
        summary.unreached = unreached;
        summary
    }

    fn failed(&self) -> u64 {
        self.shared
            .targets
            .iter()
            .map(|t| t.failed.load(Ordering::SeqCst))
            .sum()
    }

    /// Connections open or being opened, minus those asked to close.
    fn live(&self) -> usize {
        self.shared
            .targets
            .iter()
            .map(|t| t.load.load(Ordering::SeqCst))
            .sum()
    }

    fn pending(&self) -> usize {
        self.shared
            .targets
            .iter()
            .map(|t| t.pending.load(Ordering::SeqCst))
            .sum()
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.shared.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The least-loaded target not backing off (ties: the first in plan order).
    fn pick_target(&self, now: Instant) -> Option<usize> {
        let now_ms = self.now_ms(now);
        self.shared
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.retry_at_ms.load(Ordering::SeqCst) <= now_ms)
            .min_by_key(|(i, t)| (t.load.load(Ordering::SeqCst), *i))
            .map(|(i, _)| i)
    }

    fn next_retry(&self) -> Instant {
        let ms = self
            .shared
            .targets
            .iter()
            .map(|t| t.retry_at_ms.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0);
        self.shared.epoch + Duration::from_millis(ms)
    }

    /// Asks the oldest connection of the most-loaded target to close. False if none is left.
    fn close_one(&self, conns: &mut [VecDeque<oneshot::Sender<()>>]) -> bool {
        loop {
            let Some(t) = (0..conns.len())
                .filter(|&t| !conns[t].is_empty())
                .max_by_key(|&t| {
                    (
                        self.shared.targets[t].load.load(Ordering::SeqCst),
                        std::cmp::Reverse(t),
                    )
                })
            else {
                return false;
            };
            while let Some(tx) = conns[t].pop_front() {
                // Accounted here, once: the task sees the request and leaves `load` alone. A task
                // that already ended refuses the request and has accounted for itself.
                if tx.send(()).is_ok() {
                    self.shared.targets[t].load.fetch_sub(1, Ordering::SeqCst);
                    return true;
                }
            }
        }
    }

    fn spawn_connection(&self, t: usize) -> oneshot::Sender<()> {
        let target = &self.shared.targets[t];
        target.load.fetch_add(1, Ordering::SeqCst);
        target.pending.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        let slot = Slot {
            shared: self.shared.clone(),
            target: t,
            open: false,
            reconnecting: false,
            close: rx,
            close_requested: false,
        };
        tokio::spawn(connection(slot));
        tx
    }

    async fn close_all(&self, conns: &mut [VecDeque<oneshot::Sender<()>>]) {
        for q in conns.iter_mut() {
            for tx in q.drain(..) {
                let _ = tx.send(());
            }
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT * 3;
        while self.open() + self.pending() > 0 && Instant::now() < deadline {
            let notified = self.shared.wake.notified();
            let _ = tokio::time::timeout(TICK, notified).await;
        }
        if self.open() + self.pending() > 0 {
            tracing::warn!(
                open = self.open(),
                "some connections did not finish closing in time"
            );
        }
    }

    fn summary(&self, opening_time: Duration, duration: Duration) -> Summary {
        let s = &self.shared;
        let mut times = s
            .connect_us
            .lock()
            .map(|v| v.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        times.sort_unstable();
        let established: u64 = s
            .targets
            .iter()
            .map(|t| t.established.load(Ordering::SeqCst))
            .sum();
        let achieved_rate = if opening_time.is_zero() {
            0.0
        } else {
            established as f64 / opening_time.as_secs_f64()
        };
        let reconnects = self.reconnect_stats();
        Summary {
            established,
            failed: self.failed(),
            connect_p50_ms: percentile_ms(&times, 0.50),
            connect_p99_ms: percentile_ms(&times, 0.99),
            achieved_rate,
            per_target: s
                .targets
                .iter()
                .map(|t| (t.url.clone(), t.established.load(Ordering::SeqCst)))
                .collect(),
            dropped: s.dropped.load(Ordering::SeqCst),
            reconnects: reconnects.reconnects,
            reconnect_ms_p50: reconnects.latency_percentile_ms(0.50),
            reconnect_ms_p99: reconnects.latency_percentile_ms(0.99),
            lost: reconnects.lost,
            server_closes: reconnects.server_closes,
            duration_secs: duration.as_secs_f64(),
            steps_reached: 0,
            unreached: None,
        }
    }
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds (0 with no sample).
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[idx]) / 1000.0
}

/// One client's share of the target counters, settled exactly once when it drops (also if the
/// task is cancelled). A client keeps its slot across reconnections: while it reconnects it is
/// counted as pending, so the pool neither sees a gap nor opens a replacement.
struct Slot {
    shared: Arc<Shared>,
    target: usize,
    /// False while connecting or reconnecting.
    open: bool,
    /// True while counted in [`ReconnectLog::reconnecting`].
    reconnecting: bool,
    close: oneshot::Receiver<()>,
    close_requested: bool,
}

impl Slot {
    fn target(&self) -> &Target {
        &self.shared.targets[self.target]
    }

    /// A handshake completed (first connection or reconnection) after `connect_time`.
    fn connected(&mut self, connect_time: Duration) {
        let elapsed_us = u32::try_from(connect_time.as_micros()).unwrap_or(u32::MAX);
        let target = &self.shared.targets[self.target];
        // Open before no longer pending, so that the total never dips in between.
        target.open.fetch_add(1, Ordering::SeqCst);
        target.pending.fetch_sub(1, Ordering::SeqCst);
        target.established.fetch_add(1, Ordering::SeqCst);
        self.open = true;
        if let Ok(mut v) = self.shared.connect_us.lock() {
            v.push(elapsed_us);
        }
        self.shared.wake.notify_one();
    }

    /// The server closed the connection (or it broke) without the generator asking: the client
    /// is pending again until it reconnects.
    fn dropped(&mut self, how: ServerClose) {
        let target = &self.shared.targets[self.target];
        // Pending before no longer open, so that the total never dips in between.
        target.pending.fetch_add(1, Ordering::SeqCst);
        target.open.fetch_sub(1, Ordering::SeqCst);
        self.open = false;
        self.shared.dropped.fetch_add(1, Ordering::SeqCst);
        self.shared.reconnect_log().dropped(how);
        self.reconnecting = true;
        tracing::debug!(target = %target.url, close = ?how, "server closed a connection: reconnecting");
        self.shared.wake.notify_one();
    }

    /// Connected again, `latency` after the drop.
    fn reconnected(&mut self, latency: Duration) {
        self.reconnecting = false;
        self.shared.reconnect_log().reconnected(latency);
    }

    /// Runs `work` until it completes, or returns `None` when the generator asks this client to
    /// close (or is gone). Meanwhile counts the client lost once `lost` passes.
    async fn unless_closed<F: Future>(
        &mut self,
        lost: &mut LostTimer,
        work: F,
    ) -> Option<F::Output> {
        let mut work = pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                r = &mut self.close => {
                    // Ok: asked to close. Err: the generator is gone. Stop either way.
                    self.close_requested = r.is_ok();
                    return None;
                }
                () = lost.fired(), if lost.armed => {
                    lost.armed = false;
                    self.shared.reconnect_log().lost += 1;
                    tracing::debug!(target = %self.target().url, "a client is not connected again within {LOST_AFTER:?} of its drop (still retrying)");
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Closing the receiver first makes any later request fail at the sender, so the request
        // is counted on exactly one side.
        self.close.close();
        let requested = self.close_requested || self.close.try_recv().is_ok();
        let target = &self.shared.targets[self.target];
        if self.open {
            target.open.fetch_sub(1, Ordering::SeqCst);
        } else {
            target.pending.fetch_sub(1, Ordering::SeqCst);
        }
        if !requested {
            target.load.fetch_sub(1, Ordering::SeqCst);
        }
        if self.reconnecting {
            let mut log = self.shared.reconnect_log();
            log.reconnecting = log.reconnecting.saturating_sub(1);
        }
        self.shared.wake.notify_one();
    }
}

/// Fires once, [`LOST_AFTER`] after a client's drop, unless it is connected again before.
struct LostTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl LostTimer {
    fn start(dropped_at: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(dropped_at + LOST_AFTER)),
            armed: true,
        }
    }

    async fn fired(&mut self) {
        self.sleep.as_mut().await;
    }
}

/// Exponential back-off with full jitter: the n-th delay (from 0) is uniform in
/// `[0, min(cap, base × 2^n)]`, so clients dropped together spread their reconnections out.
#[derive(Debug, Clone)]
struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The largest delay the next call can return.
    fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.cap)
    }

    /// The delay before the next attempt; each call doubles the ceiling, up to the cap.
    fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rng.f64())
    }

    /// Back to the first delay (after a successful reconnection).
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

async fn connect(authority: &str, url: &str) -> Result<WebSocketStream<TcpStream>, String> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // Small messages: send them at once.
    let _ = tcp.set_nodelay(true);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(url, tcp, Some(super::websocket_config()))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// One connection attempt to the slot's target, bounded by [`CONNECT_TIMEOUT`].
async fn attempt(target: &Target) -> Result<WebSocketStream<TcpStream>, String> {
    let authority = target.authority.as_deref().map_err(String::clone)?;
    tokio::time::timeout(CONNECT_TIMEOUT, connect(authority, &target.url))
        .await
        .map_err(|_| format!("no handshake within {CONNECT_TIMEOUT:?}"))?
}

/// How a held connection ended.
enum Ended {
    /// The generator asked (or is gone); the close frame was sent.
    Asked,
    /// The server closed it, or it broke, without the generator asking.
    Dropped(ServerClose),
}

/// Holds an open connection until the server drops it or the generator asks it to close.
async fn hold(slot: &mut Slot, ws: &mut WebSocketStream<TcpStream>) -> Ended {
    let mut server_close = ServerClose::NoCloseFrame;
    // Messages at the plan's rate, the first after a random part of one period so that the
    // connections of a step do not send in bursts.
    let rate = slot.shared.plan.messages_per_sec;
    let mut messages = (rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / rate);
        let first = period.mul_f64(fastrand::f64());
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every
    });
    // Polling the read side keeps answering the server's pings (tungstenite queues the pong and
    // flushes it on the next read).
    loop {
        tokio::select! {
            _ = async { messages.as_mut().expect("guarded").tick().await }, if messages.is_some() => {
                // A failed send shows as the read side ending, handled below.
                let _ = ws.send(Message::Text("load".into())).await;
            }
            msg = ws.next() => match msg {
                // The server's close frame: tungstenite replies; the next read ends the stream.
                Some(Ok(Message::Close(frame))) => {
                    // No code in the frame is 1005 (RFC 6455 §7.1.5): not one of ours.
                    server_close = ServerClose::Code(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::Dropped(server_close),
            },
            r = &mut slot.close, if !slot.close_requested => {
                // Ok: asked to close. Err: the generator is gone. Close either way.
                slot.close_requested = r.is_ok();
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "load finished".into(),
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return Ended::Asked;
            }
        }
    }
}

/// One client: its first connection (a failure ends the slot, the pool retries and backs the
/// target off), then, each time the server drops it, reconnections to the same target with
/// [`Backoff`] until connected again or asked to close.
async fn connection(mut slot: Slot) {
    let started = Instant::now();
    let shared = slot.shared.clone();
    let target = &shared.targets[slot.target];
    let result = tokio::select! {
        r = attempt(target) => r,
        r = &mut slot.close => {
            // Asked to close before the connection was up: just stop.
            slot.close_requested = r.is_ok();
            return;
        }
    };
    let mut ws = match result {
        Ok(ws) => ws,
        Err(e) => {
            target.failed.fetch_add(1, Ordering::SeqCst);
            let streak = target.fail_streak.fetch_add(1, Ordering::SeqCst);
            let backoff = RETRY_BASE
                .saturating_mul(1 << streak.min(10))
                .min(RETRY_MAX);
            let retry_at = slot.shared.epoch.elapsed() + backoff;
            target.retry_at_ms.store(
                u64::try_from(retry_at.as_millis()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
            if streak == 0 {
                tracing::warn!(target = %target.url, error = %e, "connection failed (retrying with back-off)");
            } else {
                tracing::debug!(target = %target.url, error = %e, "connection failed");
            }
            return;
        }
    };
    target.fail_streak.store(0, Ordering::SeqCst);
    slot.connected(started.elapsed());

    let mut rng = fastrand::Rng::new();
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP);
    loop {
        let how = match hold(&mut slot, &mut ws).await {
            Ended::Asked => return,
            Ended::Dropped(how) => how,
        };
        drop(ws);
        let dropped_at = Instant::now();
        slot.dropped(how);
        let mut lost = LostTimer::start(dropped_at);
        backoff.reset();
        let (next, connect_time) = loop {
            let delay = backoff.next_delay(&mut rng);
            if slot
                .unless_closed(&mut lost, tokio::time::sleep(delay))
                .await
                .is_none()
            {
                return;
            }
            let attempt_started = Instant::now();
            match slot.unless_closed(&mut lost, attempt(target)).await {
                None => return,
                Some(Ok(ws)) => break (ws, attempt_started.elapsed()),
                Some(Err(e)) => {
                    target.failed.fetch_add(1, Ordering::SeqCst);
                    tracing::debug!(target = %target.url, error = %e, next_within = ?backoff.ceiling(), "reconnection failed");
                }
            }
        };
        ws = next;
        slot.connected(connect_time);
        slot.reconnected(dropped_at.elapsed());
    }
}

/// Draws progress (one bar for the step, one per target) to stderr until dropped or finished.
#[derive(Debug)]
pub struct ProgressView {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Where [`ProgressView`] draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing is drawn.
    Hidden,
    /// Drawn if stderr is a terminal.
    Auto,
    /// Drawn on stderr even if it is not a terminal (`--progress`).
    Forced,
}

impl ProgressView {
    /// Starts drawing the generator's progress (10 times a second).
    pub fn start(generator: &LoadGenerator, mode: ProgressMode) -> Self {
        use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
        let target = match mode {
            ProgressMode::Hidden => ProgressDrawTarget::hidden(),
            ProgressMode::Auto => ProgressDrawTarget::stderr(),
            ProgressMode::Forced => ProgressDrawTarget::term_like(Box::new(StderrTerm)),
        };
        if target.is_hidden() {
            return Self {
                stop: None,
                task: None,
            };
        }
        let multi = MultiProgress::with_draw_target(target);
        let style = |template: &str| {
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        let main = multi.add(ProgressBar::new(0));
        main.set_style(
            style("step {prefix} [{bar:40.cyan/blue}] {pos}/{len} open  {msg}")
                .progress_chars("=> "),
        );
        let per_target: Vec<ProgressBar> = generator
            .shared
            .targets
            .iter()
            .map(|t| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(style("  {pos:>7} open  {msg}"));
                bar.set_message(t.url.clone());
                bar
            })
            .collect();
        let generator = generator.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let p = generator.progress();
                main.set_prefix(format!("{}/{}", p.step, p.steps));
                main.set_length(p.desired as u64);
                main.set_position(p.open as u64);
                main.set_message(format!(
                    "{} established, {} failed, {} reconnecting",
                    p.established, p.failed, p.reconnecting
                ));
                for (bar, (_, open)) in per_target.iter().zip(generator.open_per_target()) {
                    bar.set_position(open as u64);
                }
                if tokio::time::timeout(Duration::from_millis(100), &mut stopped)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            for bar in &per_target {
                bar.finish_and_clear();
            }
            main.finish_and_clear();
            let _ = multi.clear();
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops drawing and clears the bars.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A minimal ANSI terminal on stderr, for `--progress` when stderr is not a terminal.
#[derive(Debug)]
struct StderrTerm;

impl StderrTerm {
    fn write(s: &str) -> std::io::Result<()> {
        std::io::stderr().write_all(s.as_bytes())
    }
}

impl indicatif::TermLike for StderrTerm {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            Self::write(&format!("\x1b[{n}A"))?;
        }
        Ok(())
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            Self::write(&format!("\x1b[{n}B"))?;
        }
        Ok(())
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            Self::write(&format!("\x1b[{n}C"))?;
        }
        Ok(())
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            Self::write(&format!("\x1b[{n}D"))?;
        }
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        Self::write(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        Self::write(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Self::write("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(targets: &[&str], steps: Vec<Step>, churn: f64) -> LoadPlan {
        LoadPlan {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            steps,
            churn_per_sec: churn,
            messages_per_sec: 0.0,
            deadline: None,
        }
    }

    fn step(connections: usize) -> Step {
        Step {
            connections,
            rate: 100.0,
            hold: Duration::from_secs(1),
        }
    }

    #[test]
    fn scenario_steps_take_the_default_rate_when_they_name_none() {
        let steps = parse_scenario(
            "steps: [{connections: 600, rate: 200, hold: 30s}, {connections: 150, hold: 20s}]",
            50.0,
            Path::new("s.yaml"),
        )
        .expect("valid scenario");
        assert_eq!(
            steps,
            vec![
                Step {
                    connections: 600,
                    rate: 200.0,
                    hold: Duration::from_secs(30)
                },
                Step {
                    connections: 150,
                    rate: 50.0,
                    hold: Duration::from_secs(20)
                },
            ]
        );
    }

    #[test]
    fn scenario_errors_name_the_file_and_the_problem() {
        for (yaml, needle) in [
            ("steps: [{connections: ten, hold: 1s}]", "connections"),
            ("steps: [{connections: 1, hold: soon}]", "hold \"soon\""),
            (
                "steps: [{connections: 1, hold: 1s, ramp: 2}]",
                "unknown field `ramp`",
            ),
            ("[1, 2]", "expected"),
        ] {
            let err = parse_scenario(yaml, 1.0, Path::new("bad.yaml"))
                .expect_err(yaml)
                .to_string();
            assert!(err.contains("scenario bad.yaml"), "{err}");
            assert!(err.contains(needle), "{needle} not in {err}");
        }
    }

    #[test]
    fn plan_validation_lists_every_problem() {
        let mut bad_rate = step(1);
        bad_rate.rate = 0.0;
        let err = plan(&["http://x/ws", "wss://x/ws"], vec![bad_rate], 1.5)
            .validate()
            .expect_err("invalid")
            .to_string();
        for needle in [
            "\"http://x/ws\": expected a ws:// URL",
            "\"wss://x/ws\": wss:// needs TLS",
            "step 1: rate 0",
            "--churn 1.5",
        ] {
            assert!(err.contains(needle), "{needle} not in {err}");
        }
        let err = plan(&[], vec![], 0.0)
            .validate()
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("no target"), "{err}");
        assert!(err.contains("no step"), "{err}");
        let mut zero_deadline = plan(&["ws://127.0.0.1:9000/ws/echo"], vec![step(1)], 0.0);
        zero_deadline.deadline = Some(Duration::ZERO);
        let err = zero_deadline.validate().expect_err("invalid").to_string();
        assert!(err.contains("--deadline 0s"), "{err}");
        assert!(
            plan(&["ws://127.0.0.1:9000/ws/echo"], vec![step(1)], 0.01)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn target_authority_defaults_to_port_80_and_keeps_ipv6_brackets() {
        assert_eq!(
            target_authority("ws://example.test/ws/echo").as_deref(),
            Ok("example.test:80")
        );
        assert_eq!(
            target_authority("ws://[::1]:9000/ws/echo").as_deref(),
            Ok("[::1]:9000")
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&samples, 0.5), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        assert_eq!(percentile_ms(&[1500], 0.99), 1.5);
    }

    /// A step ended from outside moves on at once, however long its hold, and a later step keeps
    /// holding until it is ended too. Paused time: a hold that was not cut would show as an hour
    /// of virtual time. Steps of 0 connections are reached at once and never dial the target.
    #[tokio::test(start_paused = true)]
    async fn end_step_cuts_that_steps_hold_and_no_later_one() {
        const HOLD: Duration = Duration::from_secs(3600);
        let held = || Step {
            connections: 0,
            rate: 100.0,
            hold: HOLD,
        };
        let generator = LoadGenerator::new(plan(
            &["ws://127.0.0.1:9/ws/echo"],
            vec![held(), held()],
            0.0,
        ));
        let start = Instant::now();
        // Before the run: the hold is cut as soon as it starts.
        generator.end_step(1);
        let runner = generator.clone();
        let run = tokio::spawn(async move { runner.run(std::future::pending()).await });
        while generator.progress().step < 2 {
            tokio::time::sleep(TICK).await;
        }
        assert!(start.elapsed() < HOLD, "step 1 held {:?}", start.elapsed());
        // Step 2 is not ended with it: still holding after a while of virtual time.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!run.is_finished(), "step 2 ended without being asked");
        generator.end_step(2);
        let summary = run.await.expect("the run did not panic");
        assert_eq!(summary.steps_reached, 2, "{summary}");
        assert!(summary.unreached.is_none(), "{summary}");
        assert!(start.elapsed() < HOLD, "step 2 held {:?}", start.elapsed());
    }

    #[test]
    fn pacer_allows_one_at_once_then_rate_per_second() {
        let mut p = Pacer::new(10.0);
        let t0 = Instant::now();
        assert_eq!(p.available(t0), 1);
        p.used += 1;
        assert_eq!(p.available(t0), 0);
        assert_eq!(p.next_at(), p.start + Duration::from_millis(100));
        assert_eq!(p.available(p.start + Duration::from_millis(500)), 5);
        p.idle();
        // Idle time does not build up a burst.
        assert_eq!(p.available(t0 + Duration::from_secs(60)), 1);
    }

    #[test]
    fn backoff_delays_are_jittered_within_a_doubling_bound_capped_and_reset_after_success() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(RECONNECT_BASE, RECONNECT_CAP);
        let ceilings: Vec<Duration> = (0..10)
            .map(|_| {
                let ceiling = b.ceiling();
                // Full jitter: every delay lies in [0, ceiling].
                for _ in 0..200 {
                    let mut probe = b.clone();
                    assert!(probe.next_delay(&mut rng) <= ceiling);
                }
                b.next_delay(&mut rng);
                ceiling
            })
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            ceilings,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000),
                ms(5000),
                ms(5000)
            ]
        );
        // Thousands of failures in a row stay at the cap (no overflow).
        for _ in 0..10_000 {
            assert!(b.next_delay(&mut rng) <= RECONNECT_CAP);
        }
        b.reset();
        assert_eq!(b.ceiling(), RECONNECT_BASE);
        // Jittered: the first delays of clients dropped together are spread over [0, 100 ms],
        // not equal.
        let first: Vec<Duration> = (0..1000)
            .map(|_| Backoff::new(RECONNECT_BASE, RECONNECT_CAP).next_delay(&mut rng))
            .collect();
        let below_half = first.iter().filter(|d| **d < ms(50)).count();
        assert!(
            (300..=700).contains(&below_half),
            "{below_half} of 1000 below 50 ms"
        );
        assert!(first.iter().all(|d| *d <= RECONNECT_BASE));
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert!(distinct.len() > 900, "{} distinct delays", distinct.len());
    }

    #[test]
    fn reconnect_stats_since_a_mark_count_only_what_came_after_it() {
        let generator = LoadGenerator::new(plan(&["ws://127.0.0.1:9/ws/echo"], vec![step(1)], 0.0));
        {
            let mut log = generator.shared.reconnect_log();
            log.dropped(ServerClose::Code(1001));
            log.reconnected(Duration::from_millis(40));
            log.lost += 1;
        }
        let mark = generator.reconnect_mark();
        {
            let mut log = generator.shared.reconnect_log();
            for how in [
                ServerClose::Code(1013),
                ServerClose::Code(1013),
                ServerClose::Code(1000),
                ServerClose::NoCloseFrame,
                ServerClose::Code(1012),
            ] {
                log.dropped(how);
            }
            log.reconnected(Duration::from_millis(10));
            log.reconnected(Duration::from_millis(30));
        }
        let since = generator.reconnect_stats_since(&mark);
        assert_eq!(since.reconnects, 2);
        assert_eq!(since.latencies_ms, [10.0, 30.0]);
        assert_eq!(since.lost, 0);
        assert_eq!(
            since.server_closes,
            ServerCloses {
                going_away: 0,
                service_restart: 1,
                try_again_later: 2,
                other: 1,
                no_close_frame: 1
            }
        );
        assert_eq!(since.reconnecting, 3);
        assert_eq!(since.latency_percentile_ms(0.5), 10.0);
        assert_eq!(since.latency_percentile_ms(0.99), 30.0);
        let all = generator.reconnect_stats();
        assert_eq!((all.reconnects, all.lost), (3, 1));
        assert_eq!(all.server_closes.total(), 6);
        assert_eq!(all.server_closes.going_away, 1);
    }

    /// A `DemoServer` on 127.0.0.1:0 in this process, drained when `stop` is dropped.
    async fn demo_server() -> (
        crate::server::DemoServer,
        std::net::SocketAddr,
        oneshot::Sender<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = crate::server::DemoServer::new(crate::server::ServerConfig::default());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        (server, addr, stop)
    }

    /// Polls `done` every 10 ms until it holds; panics naming `what` after a minute (a bound on
    /// a hang, not a speed claim).
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_shed_by_the_server_reconnect_themselves_keeping_the_count_and_none_is_lost() {
        use crate::server::{CloseReason, Route};
        let (server, addr, _stop) = demo_server().await;
        let generator = LoadGenerator::new(plan(
            &[&format!("ws://{addr}/ws/echo")],
            vec![Step {
                connections: 20,
                rate: 1000.0,
                hold: Duration::from_secs(24 * 3600),
            }],
            0.0,
        ));
        let runner = generator.clone();
        let run = tokio::spawn(async move { runner.run(std::future::pending()).await });
        until("20 open on the server", || {
            server.active() == 20 && generator.open() == 20
        })
        .await;
        assert_eq!(server.opened(Route::Echo), 20);
        let mark = generator.reconnect_mark();

        assert_eq!(server.shed(5), 5);
        until("5 reconnections", || {
            generator.reconnect_stats_since(&mark).reconnects == 5
        })
        .await;
        until("20 open again on the server", || server.active() == 20).await;
        let stats = generator.reconnect_stats_since(&mark);
        assert_eq!(stats.server_closes.try_again_later, 5, "{stats:?}");
        assert_eq!(stats.server_closes.total(), 5, "{stats:?}");
        assert_eq!(stats.lost, 0, "{stats:?}");
        assert_eq!(stats.reconnecting, 0, "{stats:?}");
        assert_eq!(stats.latencies_ms.len(), 5);
        assert!(stats.latencies_ms.iter().all(|ms| *ms > 0.0), "{stats:?}");
        // The same clients came back: no replacement was opened beside them.
        assert_eq!(server.opened(Route::Echo), 25);
        assert_eq!(server.closed(Route::Echo, CloseReason::Shed), 5);
        assert_eq!(generator.open(), 20);
        assert_eq!(generator.live(), 20);

        generator.end_step(1);
        let summary = run.await.expect("the run did not panic");
        assert_eq!(summary.reconnects, 5, "{summary}");
        assert_eq!(summary.lost, 0, "{summary}");
        assert_eq!(summary.dropped, 5, "{summary}");
        assert_eq!(summary.server_closes.try_again_later, 5, "{summary}");
        assert_eq!(summary.established, 25, "{summary}");
        assert!(summary.reconnect_ms_p50 > 0.0, "{summary}");
        assert!(
            summary.reconnect_ms_p50 <= summary.reconnect_ms_p99,
            "{summary}"
        );
        until("every connection closed", || server.active() == 0).await;
        assert_eq!(server.closed(Route::Echo, CloseReason::ClientClose), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_whose_server_is_gone_is_counted_lost_once_and_keeps_retrying() {
        let (server, addr, stop) = demo_server().await;
        let generator = LoadGenerator::new(plan(
            &[&format!("ws://{addr}/ws/echo")],
            vec![Step {
                connections: 3,
                rate: 1000.0,
                hold: Duration::from_secs(24 * 3600),
            }],
            0.0,
        ));
        let runner = generator.clone();
        let run = tokio::spawn(async move { runner.run(std::future::pending()).await });
        until("3 open", || server.active() == 3 && generator.open() == 3).await;
        // The server drains (1001 to each client) and its listener is gone: no reconnection can
        // succeed.
        drop(stop);
        until("3 lost", || generator.reconnect_stats().lost == 3).await;
        let stats = generator.reconnect_stats();
        assert_eq!(stats.server_closes.going_away, 3, "{stats:?}");
        assert_eq!(stats.reconnects, 0, "{stats:?}");
        assert_eq!(stats.reconnecting, 3, "{stats:?}");
        // Still retrying: failed attempts keep growing; each client is lost only once.
        let failed = generator.progress().failed;
        until("more failed attempts", || {
            generator.progress().failed > failed
        })
        .await;
        assert_eq!(generator.reconnect_stats().lost, 3);
        // The slots are kept: nothing opened beside them, the count the pool sees is still 3.
        assert_eq!(generator.live(), 3);
        assert_eq!(generator.pending(), 3);
        generator.end_step(1);
        let summary = run.await.expect("the run did not panic");
        assert_eq!(summary.lost, 3, "{summary}");
        assert_eq!(summary.reconnects, 0, "{summary}");
        assert_eq!(generator.reconnect_stats().reconnecting, 0);
    }

    #[test]
    fn summary_json_lists_targets_as_objects() {
        let s = Summary {
            established: 3,
            failed: 1,
            connect_p50_ms: 1.0,
            connect_p99_ms: 2.0,
            achieved_rate: 30.0,
            per_target: vec![("ws://a/ws".into(), 2), ("ws://b/ws".into(), 1)],
            dropped: 6,
            reconnects: 5,
            reconnect_ms_p50: 80.5,
            reconnect_ms_p99: 190.0,
            lost: 1,
            server_closes: ServerCloses {
                going_away: 1,
                service_restart: 0,
                try_again_later: 4,
                other: 0,
                no_close_frame: 1,
            },
            duration_secs: 1.0,
            steps_reached: 1,
            unreached: Some(Unreached {
                step: 2,
                open: 18_859,
                want: 20_000,
                deadline_ms: 300_000,
            }),
        };
        let v = serde_json::to_value(&s).expect("serializes");
        assert_eq!(
            v["per_target"],
            serde_json::json!([
                {"target": "ws://a/ws", "established": 2},
                {"target": "ws://b/ws", "established": 1}
            ])
        );
        assert_eq!(v["established"], 3);
        assert_eq!(v["reconnects"], 5);
        assert_eq!(v["reconnect_ms_p50"], 80.5);
        assert_eq!(v["reconnect_ms_p99"], 190.0);
        assert_eq!(v["lost"], 1);
        assert_eq!(
            v["server_closes"],
            serde_json::json!({"1001": 1, "1012": 0, "1013": 4, "other": 0, "no_close_frame": 1})
        );
        assert!(
            s.to_string().contains(
                "server closes    1001: 1, 1012: 0, 1013: 4, other: 0, no close frame: 1"
            ),
            "{s}"
        );
        assert!(
            s.to_string()
                .contains("reconnects       5 (p50 80.5 ms, p99 190.0 ms), lost 1"),
            "{s}"
        );
        assert_eq!(
            v["unreached"],
            serde_json::json!({"step": 2, "open": 18859, "want": 20000, "deadline_ms": 300000})
        );
        assert!(
            s.to_string().contains(
                "UNREACHED        step 2 reached 18859 of 20000 connections within its deadline of 300s"
            ),
            "{s}"
        );
        assert!(
            s.to_string()
                .contains("achieved rate    30.0 connections/s")
        );
    }
}
