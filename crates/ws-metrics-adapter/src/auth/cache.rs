//! A bounded time-to-live cache with single-flight fills: concurrent misses for one key share one
//! review call, so a burst of requests from one caller costs one TokenReview or SAR per period.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

/// One key's slot: empty while its first fill runs (or after a failed fill), then the value and
/// its expiry.
type Slot<V> = Arc<OnceCell<(Instant, V)>>;

/// Cache of at most `capacity` keys; values expire after the TTL their fill returned.
#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `capacity` keys (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Number of keys held (filled, being filled, or expired and not yet evicted).
    pub(crate) fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The cached value of `key` when fresh; otherwise runs `fill` (once for all concurrent
    /// callers of that key) and caches its value for the TTL it returns. A failed fill caches
    /// nothing: the next caller tries again.
    ///
    /// # Errors
    /// The error of `fill`.
    pub(crate) async fn get_or_fill<E, F, Fut>(&self, key: &K, fill: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            match slots.get(key) {
                Some(slot) if slot.get().is_none_or(|(expires, _)| *expires > now) => slot.clone(),
                existing => {
                    if existing.is_none() && slots.len() >= self.capacity {
                        evict(&mut slots, now, self.capacity);
                    }
                    let slot: Slot<V> = Arc::new(OnceCell::new());
                    slots.insert(key.clone(), slot.clone());
                    slot
                }
            }
        };
        let (_, value) = slot
            .get_or_try_init(|| async {
                let (value, ttl) = fill().await?;
                Ok((Instant::now() + ttl, value))
            })
            .await?;
        Ok(value.clone())
    }
}

/// Makes room for one key: drops expired entries and failed ones nobody waits on; if that is not
/// enough (a flood of distinct fresh keys), drops arbitrary entries down to 3/4 of `capacity`.
/// Dropping a fresh entry only costs a repeated review later, never a wrong answer.
fn evict<K: Eq + Hash + Clone, V>(slots: &mut HashMap<K, Slot<V>>, now: Instant, capacity: usize) {
    slots.retain(|_, slot| match slot.get() {
        Some((expires, _)) => *expires > now,
        None => Arc::strong_count(slot) > 1,
    });
    if slots.len() >= capacity {
        let keep = capacity * 3 / 4;
        let drop: Vec<K> = slots.keys().skip(keep).cloned().collect();
        for key in drop {
            slots.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn values_are_served_until_their_ttl_then_refilled() {
        let cache: TtlCache<&str, u32> = TtlCache::new(10);
        let calls = AtomicUsize::new(0);
        let fill = |v: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, ()>((v, Duration::from_secs(10))) }
        };
        assert_eq!(cache.get_or_fill(&"a", || fill(1)).await, Ok(1));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(cache.get_or_fill(&"a", || fill(2)).await, Ok(1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get_or_fill(&"a", || fill(3)).await, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_fills_are_not_cached() {
        let cache: TtlCache<&str, u32> = TtlCache::new(10);
        let failed = cache
            .get_or_fill(&"a", || async { Err::<(u32, Duration), _>("down") })
            .await;
        assert_eq!(failed, Err("down"));
        let ok = cache
            .get_or_fill(&"a", || async {
                Ok::<_, &str>((7, Duration::from_secs(1)))
            })
            .await;
        assert_eq!(ok, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fill() {
        let cache: Arc<TtlCache<&str, u32>> = Arc::new(TtlCache::new(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fill(&"k", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, ()>((5, Duration::from_secs(10)))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), Ok(5));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn thousands_of_distinct_keys_stay_within_capacity() {
        let cache: TtlCache<u32, u32> = TtlCache::new(100);
        for k in 0..5000 {
            let v = cache
                .get_or_fill(
                    &k,
                    || async move { Ok::<_, ()>((k, Duration::from_secs(10))) },
                )
                .await;
            assert_eq!(v, Ok(k));
            assert!(cache.len() <= 100, "len {} at key {k}", cache.len());
        }
        // The newest key is still served from the cache.
        let again = cache
            .get_or_fill(&4999, || async {
                Ok::<_, ()>((0, Duration::from_secs(10)))
            })
            .await;
        assert_eq!(again, Ok(4999));
    }
}
