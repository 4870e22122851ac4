//! The replica count a HorizontalPodAutoscaler would choose for a `type: Pods` metric with an
//! `AverageValue` target, computed the way the controller does (kubernetes/kubernetes
//! `pkg/controller/podautoscaler/replica_calculator.go` `calcPlainMetricReplicas` and `groupPods`;
//! spec §6.1), for the demo's live view. Behaviour policies and stabilization windows are not
//! modelled; min/max clamping is.

use std::collections::BTreeMap;

/// What the HPA's pod lister knows about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Pod name (the key the metric items are matched on).
    pub name: String,
    /// Phase as reported by the kubelet.
    pub phase: Phase,
    /// Whether the pod has a deletionTimestamp.
    pub deleting: bool,
}

/// The pod phases that matter to the calculation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet: counted as unready.
    Pending,
    /// Running (readiness is not consulted for non-CPU metrics).
    Running,
    /// Failed: ignored.
    Failed,
}

/// Why no recommendation could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The HPA's own message when no pod of its list is left with a value.
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoMetrics,
    /// No pods at all.
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
}

/// The HPA's settings that enter the calculation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Target average per pod. Unit: milli-units (500 connections = 500_000).
    pub average_milli: i64,
    /// Tolerance around ratio 1 within which the size is kept (default 0.1).
    pub tolerance: f64,
    /// `minReplicas`.
    pub min_replicas: u32,
    /// `maxReplicas`.
    pub max_replicas: u32,
}

/// `usage = sum / count` in integer milli-units, `ratio = usage / target`, as
/// `GetMetricUsageRatio` computes them.
fn usage_ratio(metrics: &BTreeMap<String, i64>, target_milli: i64) -> f64 {
    let count = i64::try_from(metrics.len()).unwrap_or(i64::MAX).max(1);
    let total: i64 = metrics.values().fold(0i64, |a, v| a.saturating_add(*v));
    (total / count) as f64 / target_milli as f64
}

/// The replica count before clamping, given the current size, the HPA's pod list and the values
/// the custom metrics API returned (pod name → milli-units).
///
/// # Errors
/// [`Error::NoPods`] for an empty pod list, [`Error::NoMetrics`] when no listed pod has a value.
pub fn plain_metric_replicas(
    current: u32,
    pods: &[PodView],
    values: &BTreeMap<String, i64>,
    target: &Target,
) -> Result<u32, Error> {
    if pods.is_empty() {
        return Err(Error::NoPods);
    }
    let mut metrics = values.clone();
    let mut ready = 0u32;
    let mut unready = Vec::new();
    let mut missing = Vec::new();
    for pod in pods {
        if pod.deleting || pod.phase == Phase::Failed {
            metrics.remove(&pod.name);
            continue;
        }
        if pod.phase == Phase::Pending {
            unready.push(pod.name.clone());
            metrics.remove(&pod.name);
            continue;
        }
        if metrics.contains_key(&pod.name) {
            ready += 1;
        } else {
            missing.push(pod.name.clone());
        }
    }
    if metrics.is_empty() {
        return Err(Error::NoMetrics);
    }
    let ratio = usage_ratio(&metrics, target.average_milli);
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= target.tolerance {
            return Ok(current);
        }
        return Ok((ratio * f64::from(ready)).ceil() as u32);
    }
    // Missing pods slow a scale-down (assumed at target) and a scale-up (assumed at 0).
    let fill = if ratio < 1.0 { target.average_milli } else { 0 };
    for name in missing {
        metrics.insert(name, fill);
    }
    if scale_up_with_unready {
        for name in unready {
            metrics.insert(name, 0);
        }
    }
    let new_ratio = usage_ratio(&metrics, target.average_milli);
    if (1.0 - new_ratio).abs() <= target.tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(current);
    }
    let desired = (new_ratio * metrics.len() as f64).ceil() as u32;
    if (new_ratio < 1.0 && desired > current) || (new_ratio > 1.0 && desired < current) {
        return Ok(current);
    }
    Ok(desired)
}

/// [`plain_metric_replicas`] clamped to `[min_replicas, max_replicas]`.
///
/// # Errors
/// As [`plain_metric_replicas`].
pub fn desired_replicas(
    current: u32,
    pods: &[PodView],
    values: &BTreeMap<String, i64>,
    target: &Target,
) -> Result<u32, Error> {
    plain_metric_replicas(current, pods, values, target).map(|d| {
        d.clamp(
            target.min_replicas,
            target.max_replicas.max(target.min_replicas),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(names: &[&str]) -> Vec<PodView> {
        names
            .iter()
            .map(|n| PodView {
                name: (*n).into(),
                phase: Phase::Running,
                deleting: false,
            })
            .collect()
    }

    fn values(v: &[(&str, i64)]) -> BTreeMap<String, i64> {
        v.iter()
            .map(|(n, c)| ((*n).to_string(), c * 1000))
            .collect()
    }

    const T100: Target = Target {
        average_milli: 100_000,
        tolerance: 0.1,
        min_replicas: 1,
        max_replicas: 10,
    };

    #[test]
    fn six_hundred_connections_on_one_pod_at_target_100_gives_six() {
        let r = desired_replicas(1, &running(&["a"]), &values(&[("a", 600)]), &T100);
        assert_eq!(r, Ok(6));
    }

    #[test]
    fn within_tolerance_keeps_the_current_size() {
        // 2 pods, average 105 against 100: ratio 1.05 is inside 10 %.
        let r = desired_replicas(
            2,
            &running(&["a", "b"]),
            &values(&[("a", 110), ("b", 100)]),
            &T100,
        );
        assert_eq!(r, Ok(2));
        // 115 is outside: ceil(1.15 × 2) = 3.
        let r = desired_replicas(
            2,
            &running(&["a", "b"]),
            &values(&[("a", 130), ("b", 100)]),
            &T100,
        );
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn scale_down_to_the_floor_of_the_load() {
        // 150 connections over 6 pods at target 100: ceil(0.25 × 6) = 2.
        let pods = running(&["a", "b", "c", "d", "e", "f"]);
        let v = values(&[
            ("a", 25),
            ("b", 25),
            ("c", 25),
            ("d", 25),
            ("e", 25),
            ("f", 25),
        ]);
        assert_eq!(desired_replicas(6, &pods, &v, &T100), Ok(2));
    }

    #[test]
    fn a_missing_pod_counts_at_target_when_scaling_down() {
        // Without b: a's 20 would say ceil(0.2 × 1) = 1; with b at target the ratio is 0.6 → 2.
        let r = plain_metric_replicas(2, &running(&["a", "b"]), &values(&[("a", 20)]), &T100);
        assert_eq!(r, Ok(2));
    }

    #[test]
    fn a_missing_pod_counts_as_zero_when_scaling_up() {
        // a at 300, b missing → filled with 0: ratio 1.5 over 2 entries → 3.
        let r = plain_metric_replicas(2, &running(&["a", "b"]), &values(&[("a", 300)]), &T100);
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn pending_and_failed_pods_are_not_counted_and_no_values_is_the_hpa_error() {
        let pods = vec![
            PodView {
                name: "a".into(),
                phase: Phase::Pending,
                deleting: false,
            },
            PodView {
                name: "b".into(),
                phase: Phase::Failed,
                deleting: false,
            },
        ];
        assert_eq!(
            plain_metric_replicas(2, &pods, &values(&[("a", 300), ("b", 300)]), &T100),
            Err(Error::NoMetrics)
        );
        assert_eq!(
            plain_metric_replicas(2, &[], &values(&[]), &T100),
            Err(Error::NoPods)
        );
    }

    #[test]
    fn the_result_is_clamped_to_min_and_max() {
        let r = desired_replicas(1, &running(&["a"]), &values(&[("a", 5000)]), &T100);
        assert_eq!(r, Ok(10));
        let r = desired_replicas(
            3,
            &running(&["a", "b", "c"]),
            &values(&[("a", 0), ("b", 0), ("c", 0)]),
            &T100,
        );
        assert_eq!(r, Ok(1));
    }
}
