//! Liveness and readiness: the latches the background loops flip (pods known, first round done,
//! authentication config loaded) and the interval loop that flips them, read by `/livez` and
//! `/readyz` in the server module. Knows nothing of the store or of auth: `app` wires them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

// NB: tokio's clock, which is std's unless a test pauses time.
use tokio::time::Instant;

/// A condition that, once set, stays set: readiness never flips back, as in metrics-server and
/// linkerd2-proxy, so that a data-source problem never takes the APIService down (spec §5.2).
/// Cheap to clone; every clone is the same latch.
#[derive(Debug, Clone, Default)]
pub struct Latch(Arc<AtomicBool>);

impl Latch {
    /// An unset latch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the latch (idempotent).
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the latch has been set.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Liveness and readiness, written by the loops and read by the probes.
#[derive(Debug)]
pub struct Health {
    origin: Instant,
    /// Milliseconds since `origin` at which the last tick started; 0 = none yet.
    last_tick_ms: AtomicU64,
    max_tick_gap: Duration,
    /// The pod inventory is complete (watch synced or static file read).
    pods_known: Latch,
    /// A collection round has finished.
    first_round: Latch,
    /// Set when readiness must also wait for the authentication config.
    auth_config: OnceLock<Latch>,
    /// Every condition held once.
    ready: Latch,
    /// Shutting down: not ready again, whatever held before.
    draining: Latch,
}

impl Health {
    /// Health for a loop ticking every `interval` with per-request `timeout`: live while a tick
    /// started within 1.5 × interval + timeout (metrics-server uses 1.5 × resolution
    /// [metrics-server: pkg/server/health.go]).
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            origin: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            max_tick_gap: interval.mul_f64(1.5) + timeout,
            pods_known: Latch::new(),
            first_round: Latch::new(),
            auth_config: OnceLock::new(),
            ready: Latch::new(),
            draining: Latch::new(),
        }
    }

    /// Makes readiness also wait for the returned latch, to be set once the authentication config
    /// is loaded (spec §5.6: serving before it would turn the aggregator's calls into 401s).
    /// Calling it again returns the same latch.
    pub fn require_auth_config(&self) -> Latch {
        self.auth_config.get_or_init(Latch::new).clone()
    }

    fn auth_pending(&self) -> bool {
        self.auth_config.get().is_some_and(|l| !l.is_set())
    }

    /// Called when a tick starts.
    pub fn tick_started(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.last_tick_ms.store(ms, Ordering::Relaxed);
    }

    /// Called once the pod inventory is complete (watch synced or static file read).
    pub fn pods_known(&self) {
        self.pods_known.set();
    }

    /// Called when a collection round has finished.
    pub fn round_finished(&self) {
        self.first_round.set();
    }

    /// Live: the loop is ticking on time. Before its first tick (start-up, a slow first watch
    /// sync) the gap is counted from start-up, with 5 s of extra allowance.
    pub fn is_live(&self) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        let since_start = self.origin.elapsed();
        if last == 0 {
            return since_start <= self.max_tick_gap + Duration::from_secs(5);
        }
        since_start.saturating_sub(Duration::from_millis(last)) <= self.max_tick_gap
    }

    /// Shutdown has begun: from now on not ready (the one way back from ready), so that the
    /// endpoints drop this replica while it still serves.
    pub fn begin_drain(&self) {
        self.draining.set();
    }

    /// Ready once pods are known, the first round finished and (when required) the
    /// authentication config is loaded, until shutdown begins. A latch: once ready, stays ready
    /// until then; failures show as missing values instead.
    pub fn is_ready(&self) -> bool {
        if self.draining.is_set() {
            return false;
        }
        if self.ready.is_set() {
            return true;
        }
        let ready = self.pods_known.is_set() && self.first_round.is_set() && !self.auth_pending();
        if ready {
            self.ready.set();
        }
        ready
    }

    /// Why not ready, for the `/readyz` body; `None` when ready.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_ready() {
            None
        } else if self.draining.is_set() {
            Some("shutting down")
        } else if self.auth_pending() {
            Some(
                "authentication config (ConfigMap kube-system/extension-apiserver-authentication) not loaded yet; see the log",
            )
        } else if !self.pods_known.is_set() {
            Some("pod inventory not loaded yet (watch not synced or static file not read)")
        } else {
            Some(
                "first collection round not finished yet (--source=remote-write: no write received and --remote-write-ready-grace not over)",
            )
        }
    }
}

/// The loop of a background source: a round every `interval` until `shutdown` resolves. Marks
/// `health` as ticking at the start of each round and collected after each finished one; skips
/// rounds until `inventory_synced()` holds, so "collected" means something. Shared by the scrape
/// loop and the Prometheus source.
pub(crate) async fn every_interval<F, Fut>(
    interval: Duration,
    health: &Health,
    inventory_synced: impl Fn() -> bool,
    shutdown: impl Future<Output = ()>,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    // A round that overran is followed by one right away, then the cadence resumes.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        health.tick_started();
        if !inventory_synced() {
            continue;
        }
        health.pods_known();
        tokio::select! {
            () = &mut shutdown => return,
            () = round() => {}
        }
        health.round_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    #[test]
    fn readiness_waits_for_pods_then_the_first_round_then_stays() {
        let health = Health::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(
            health.not_ready_reason(),
            Some("pod inventory not loaded yet (watch not synced or static file not read)")
        );
        health.pods_known();
        assert_eq!(
            health.not_ready_reason(),
            Some(
                "first collection round not finished yet (--source=remote-write: no write received and --remote-write-ready-grace not over)"
            )
        );
        health.round_finished();
        assert!(health.is_ready());
        assert_eq!(health.not_ready_reason(), None);
    }

    #[test]
    fn shutdown_is_the_one_way_back_from_ready() {
        let health = Health::new(Duration::from_secs(1), Duration::from_secs(1));
        health.pods_known();
        health.round_finished();
        assert!(health.is_ready());
        health.begin_drain();
        assert!(!health.is_ready());
        assert_eq!(health.not_ready_reason(), Some("shutting down"));
        assert!(health.is_live(), "draining is not dead");
    }

    #[test]
    fn readiness_waits_for_the_auth_config_when_required() {
        let health = Health::new(Duration::from_secs(1), Duration::from_secs(1));
        let loaded = health.require_auth_config();
        health.pods_known();
        health.round_finished();
        assert!(!health.is_ready());
        assert!(
            health
                .not_ready_reason()
                .is_some_and(|r| r.starts_with("authentication config"))
        );
        loaded.set();
        assert!(health.is_ready());
    }

    #[test]
    fn a_latch_is_shared_by_its_clones() {
        let latch = Latch::new();
        let clone = latch.clone();
        assert!(!latch.is_set());
        clone.set();
        assert!(latch.is_set());
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_skips_rounds_until_the_inventory_is_synced() {
        let health = Health::new(Duration::from_secs(1), Duration::from_secs(1));
        let synced = Latch::new();
        let rounds = AtomicUsize::new(0);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driver = async {
            // Paused time: each sleep lets the ticker fire exactly when due.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert_eq!(rounds.load(Ordering::SeqCst), 0, "no round before the sync");
            assert!(
                health.is_live(),
                "ticks happen while waiting for the inventory"
            );
            assert!(!health.is_ready());
            synced.set();
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(rounds.load(Ordering::SeqCst), 1);
            assert!(health.is_ready());
            let _ = stop_tx.send(());
        };
        let looping = every_interval(
            Duration::from_secs(1),
            &health,
            || synced.is_set(),
            async {
                let _ = stop_rx.await;
            },
            || async {
                rounds.fetch_add(1, Ordering::SeqCst);
            },
        );
        tokio::join!(driver, looping);
    }

    #[tokio::test(start_paused = true)]
    async fn not_live_once_ticks_stop_for_longer_than_the_allowed_gap() {
        // 1.5 × 2 s + 1 s = 4 s of allowed gap.
        let health = Health::new(Duration::from_secs(2), Duration::from_secs(1));
        health.tick_started();
        tokio::time::advance(Duration::from_millis(3900)).await;
        assert!(health.is_live());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!health.is_live());
    }
}
