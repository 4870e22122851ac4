//! Per-pod rates of counter families, computed from successive scrapes: what a mapping
//! `SERVED=rate(FAMILY[WINDOW])` serves. Each series keeps its samples of the last `WINDOW`; its
//! rate is the increase from the first to the last of them divided by the time between the two
//! reads (monotonic clock). A counter that goes down was reset: the increase across the reset is
//! the new value, as Prometheus counts it (`extrapolatedRate` in promql/functions.go adds the
//! value before a drop back). Unlike Prometheus' `rate()`, nothing is extrapolated to the window's
//! edges: the rate is exact for the samples read, and its time is the last read (the window's
//! end). A series needs two samples in the window; until the family has two, the pod has no value.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::clock::SampleTime;

use super::{FamilyReading, Series};

/// One series' samples within the window.
#[derive(Debug)]
struct CounterSeries {
    /// Prometheus labels, sorted by name (an exporter may write them in any order).
    labels: Vec<(String, String)>,
    /// Last raw value read. Unit: milli-units.
    last_raw: i64,
    /// (read time, reset-adjusted value): the value plus every drop seen before it, so that the
    /// increase between any two points is their difference. Unit: milli-units.
    points: VecDeque<(SampleTime, i64)>,
}

/// The counter history of one family of one pod, for one window.
#[derive(Debug)]
pub(super) struct CounterHistory {
    window: Duration,
    /// Read times at which the family was present, oldest first, within the window.
    present: VecDeque<SampleTime>,
    series: Vec<CounterSeries>,
}

impl CounterHistory {
    /// An empty history for `window`.
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window,
            present: VecDeque::new(),
            series: Vec::new(),
        }
    }

    /// Adds one scrape's reading of the counter family (`None`: the pod did not expose it, and
    /// the history starts over) read at `time`, and returns the family's rates then: one series
    /// per counter series with two samples in the window, in the last reading's order, in
    /// milli-units per second. `None` until the family was read twice within the window.
    pub(super) fn observe(
        &mut self,
        family: Option<&FamilyReading>,
        time: SampleTime,
    ) -> Option<FamilyReading> {
        let Some(family) = family else {
            self.present.clear();
            self.series.clear();
            return None;
        };
        // By label set, so that a family of many series costs one hash lookup per series (this
        // runs under the store's write lock).
        let mut previous: HashMap<Vec<(String, String)>, CounterSeries> = self
            .series
            .drain(..)
            .map(|s| (s.labels.clone(), s))
            .collect();
        let mut kept = Vec::with_capacity(family.series.len());
        for s in &family.series {
            let mut labels = s.labels.clone();
            labels.sort();
            let mut series = previous.remove(&labels).unwrap_or(CounterSeries {
                labels,
                last_raw: s.milli,
                points: VecDeque::new(),
            });
            let adjusted = match series.points.back() {
                None => s.milli,
                // A drop is a reset: the counter restarted from zero and rose to `s.milli`.
                Some(&(_, prev)) if s.milli < series.last_raw => prev.saturating_add(s.milli),
                Some(&(_, prev)) => prev.saturating_add(s.milli.saturating_sub(series.last_raw)),
            };
            series.last_raw = s.milli;
            series.points.push_back((time, adjusted));
            kept.push(series);
        }
        // A series missing from this reading ended (its counter is gone): dropped.
        self.series = kept;
        self.present.push_back(time);
        let window = self.window;
        let outside = |t: &SampleTime| time.read_since(t) > window;
        while self.present.front().is_some_and(outside) {
            self.present.pop_front();
        }
        for s in &mut self.series {
            while s.points.front().is_some_and(|(t, _)| outside(t)) {
                s.points.pop_front();
            }
        }
        if self.present.len() < 2 {
            return None;
        }
        let series: Vec<Series> = self
            .series
            .iter()
            .filter_map(|s| {
                let (&(t0, v0), &(t1, v1)) = (s.points.front()?, s.points.back()?);
                let elapsed = t1.read_since(&t0).as_micros();
                if elapsed == 0 {
                    return None;
                }
                let per_sec =
                    (i128::from(v1) - i128::from(v0)) * 1_000_000 / i128::try_from(elapsed).ok()?;
                Some(Series {
                    labels: s.labels.clone(),
                    milli: i64::try_from(per_sec).unwrap_or(i64::MAX),
                })
            })
            .collect();
        // Series, none with two samples yet (all new, or relabelled): no value, not a 0. A family
        // exposed with no series at all is a 0, as for a gauge.
        if series.is_empty() && !family.series.is_empty() {
            return None;
        }
        let total_milli = series
            .iter()
            .fold(0i64, |sum, s| sum.saturating_add(s.milli));
        Some(FamilyReading {
            series,
            total_milli,
            // A counter stamped long ago is as stale as its stamp: the rate ages with it.
            stamped_ms: family.stamped_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Moment;

    fn at(start: Moment, ms: u64) -> SampleTime {
        let d = Duration::from_millis(ms);
        SampleTime::read_at(Moment {
            mono: start.mono + d,
            wall: start.wall + d,
        })
    }

    fn counter(series: &[(&str, i64)]) -> FamilyReading {
        let series: Vec<Series> = series
            .iter()
            .map(|(route, milli)| Series {
                labels: vec![("route".into(), (*route).into())],
                milli: *milli,
            })
            .collect();
        FamilyReading {
            total_milli: series.iter().map(|s| s.milli).sum(),
            series,
            stamped_ms: None,
        }
    }

    fn rates(r: &FamilyReading) -> Vec<(String, i64)> {
        r.series
            .iter()
            .map(|s| (s.labels[0].1.clone(), s.milli))
            .collect()
    }

    #[test]
    fn no_rate_until_two_samples_then_the_exact_increase_over_the_window() {
        let start = Moment::now();
        let mut h = CounterHistory::new(Duration::from_secs(10));
        // 1000 milli = 1 message.
        assert_eq!(
            h.observe(Some(&counter(&[("echo", 5_000)])), at(start, 0)),
            None
        );
        let r = h
            .observe(Some(&counter(&[("echo", 25_000)])), at(start, 2_000))
            .expect("two samples");
        // 20 messages in 2 s.
        assert_eq!(rates(&r), vec![("echo".to_owned(), 10_000)]);
        assert_eq!(r.total_milli, 10_000);
        // 1 s later, 5 more: (30 − 5) over 3 s from the first sample.
        let r = h
            .observe(Some(&counter(&[("echo", 30_000)])), at(start, 3_000))
            .expect("rate");
        assert_eq!(r.total_milli, 8_333);
        // 11 s: the first sample is outside the 10 s window; (60 − 25) over 9 s.
        let r = h
            .observe(Some(&counter(&[("echo", 60_000)])), at(start, 11_000))
            .expect("rate");
        assert_eq!(r.total_milli, 3_888);
    }

    #[test]
    fn labels_in_another_order_are_the_same_series_and_extreme_counters_do_not_overflow() {
        let start = Moment::now();
        let mut h = CounterHistory::new(Duration::from_secs(60));
        // {a="1",b="2"}, written in the order given.
        let two = |first: &str, second: &str, milli| FamilyReading {
            series: vec![Series {
                labels: [first, second]
                    .iter()
                    .map(|k| {
                        (
                            (*k).to_owned(),
                            if *k == "a" { "1" } else { "2" }.to_owned(),
                        )
                    })
                    .collect(),
                milli,
            }],
            total_milli: milli,
            stamped_ms: Some(1_000),
        };
        h.observe(Some(&two("b", "a", 0)), at(start, 0));
        let r = h
            .observe(Some(&two("a", "b", 3_000)), at(start, 1_000))
            .expect("the same series");
        assert_eq!(r.total_milli, 3_000);
        assert_eq!(r.stamped_ms, Some(1_000), "aged by the counter's own stamp");
        // Only new series: no value rather than a 0.
        assert_eq!(
            h.observe(Some(&counter(&[("other", 1)])), at(start, 2_000)),
            None
        );
        let mut h = CounterHistory::new(Duration::from_secs(60));
        h.observe(
            Some(&counter(&[("x", -9_000_000_000_000_000)])),
            at(start, 0),
        );
        let r = h
            .observe(
                Some(&counter(&[("x", 9_000_000_000_000_000)])),
                at(start, 1_000),
            )
            .expect("rate");
        assert!(r.total_milli > 0, "{r:?}");
    }

    #[test]
    fn a_reset_counts_the_new_value_as_the_increase() {
        let start = Moment::now();
        let mut h = CounterHistory::new(Duration::from_secs(60));
        h.observe(Some(&counter(&[("chat", 100_000)])), at(start, 0));
        h.observe(Some(&counter(&[("chat", 110_000)])), at(start, 1_000));
        // Restarted: 110 → 4 means 4 new messages, not −106.
        let r = h
            .observe(Some(&counter(&[("chat", 4_000)])), at(start, 2_000))
            .expect("rate");
        // (10 + 4) over 2 s.
        assert_eq!(r.total_milli, 7_000);
        let r = h
            .observe(Some(&counter(&[("chat", 8_000)])), at(start, 3_000))
            .expect("rate");
        // (10 + 4 + 4) over 3 s.
        assert_eq!(r.total_milli, 6_000);
    }

    #[test]
    fn a_new_series_waits_for_its_second_sample_and_a_missing_family_starts_over() {
        let start = Moment::now();
        let mut h = CounterHistory::new(Duration::from_secs(60));
        h.observe(Some(&counter(&[("chat", 0)])), at(start, 0));
        let r = h
            .observe(
                Some(&counter(&[("chat", 2_000), ("echo", 50_000)])),
                at(start, 1_000),
            )
            .expect("rate");
        // `echo` appeared: its first sample gives no rate yet.
        assert_eq!(rates(&r), vec![("chat".to_owned(), 2_000)]);
        let r = h
            .observe(
                Some(&counter(&[("chat", 4_000), ("echo", 53_000)])),
                at(start, 2_000),
            )
            .expect("rate");
        assert_eq!(
            rates(&r),
            vec![("chat".to_owned(), 2_000), ("echo".to_owned(), 3_000)]
        );
        // The pod stopped exposing the family: no value, and the next reading starts over.
        assert_eq!(h.observe(None, at(start, 3_000)), None);
        assert_eq!(
            h.observe(Some(&counter(&[("chat", 9_000)])), at(start, 4_000)),
            None
        );
        // A family exposed with no series at all: a rate of 0 once read twice.
        let mut empty = CounterHistory::new(Duration::from_secs(60));
        empty.observe(Some(&counter(&[])), at(start, 0));
        let r = empty
            .observe(Some(&counter(&[])), at(start, 1_000))
            .expect("rate");
        assert_eq!(r.total_milli, 0);
        assert!(r.series.is_empty());
    }
}
