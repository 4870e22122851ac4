//! One controller acts at a time. The adapter runs several replicas so that the API stays up,
//! but two controllers shedding from the same pod would take it below the mean: only the holder
//! of a `coordination.k8s.io/v1` Lease sends shed requests and deletion-cost patches.
//!
//! The scheme is client-go's (`k8s.io/client-go/tools/leaderelection/leaderelection.go`): a
//! candidate takes the Lease when it is free or when its record has not changed for the lease
//! duration *as observed locally* (so clock skew between replicas does not matter), writes with
//! the read `resourceVersion` (a concurrent writer gets 409 and loses), and the holder renews
//! every retry period; a holder that cannot renew within the renew deadline steps down. On
//! shutdown the holder releases the Lease so another replica takes over at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// client-go's defaults (`LeaseDuration`, `RenewDeadline`, `RetryPeriod`).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (`holderIdentity`).
    pub identity: String,
}

impl Candidate {
    /// The identity: the pod's name (`HOSTNAME`) and a per-process suffix, so that a restarted
    /// container is a new candidate.
    pub(crate) fn identity() -> String {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "ws-metrics-adapter".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{host}_{:x}{:x}", std::process::id(), nanos)
    }
}

/// The namespace the adapter runs in (its service account's), else `default`.
pub(crate) fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The record as last read, and when it was first seen so (local monotonic time).
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    since: Instant,
}

/// Campaigns for the Lease until `shutdown`, keeping `leading` true while this replica holds it.
pub(crate) async fn campaign(
    client: kube::Client,
    candidate: Candidate,
    leading: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &candidate.namespace);
    let mut observed: Option<Observed> = None;
    let mut renewed: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let now = Instant::now();
        let won = try_acquire_or_renew(&api, &candidate, &mut observed, now).await;
        match won {
            Ok(true) => renewed = Some(now),
            Ok(false) => renewed = None,
            Err(e) => tracing::debug!(error = %e, "lease request failed"),
        }
        // A holder that could not renew within the deadline steps down.
        let lead = renewed.is_some_and(|at| now.duration_since(at) < RENEW_DEADLINE);
        if lead != leading.swap(lead, Ordering::SeqCst) {
            tracing::info!(lease = %format!("{}/{}", candidate.namespace, candidate.name),
                identity = %candidate.identity, leading = lead,
                "{}", if lead { "now leading the workload controller" } else { "no longer leading the workload controller" });
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
    if leading.swap(false, Ordering::SeqCst) {
        release(&api, &candidate).await;
    }
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One round: take or renew the Lease if allowed. `Ok(true)`: we hold it now.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    c: &Candidate,
    observed: &mut Option<Observed>,
    now: Instant,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&c.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(c.name.clone()),
                namespace: Some(c.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(c.identity.clone()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != spec.holder_identity || o.renew != spec.renew_time);
    if changed {
        *observed = Some(Observed {
            holder: spec.holder_identity.clone(),
            renew: spec.renew_time.clone(),
            since: now,
        });
    }
    let mine = spec.holder_identity.as_deref() == Some(c.identity.as_str());
    let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(LEASE_DURATION, Duration::from_secs);
    let expired = observed
        .as_ref()
        .is_some_and(|o| now.duration_since(o.since) >= duration);
    if !(mine || free || expired) {
        return Ok(false);
    }
    let mut next = spec;
    if !mine {
        next.acquire_time = Some(micro_now());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        next.holder_identity = Some(c.identity.clone());
    }
    next.renew_time = Some(micro_now());
    next.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    lease.spec = Some(next);
    // `replace` sends the read resourceVersion: a concurrent writer makes this a 409.
    match api.replace(&c.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (client-go's ReleaseOnCancel): no holder, so the next candidate takes it
/// at its next round.
async fn release(api: &Api<Lease>, c: &Candidate) {
    let Ok(Some(mut lease)) = api.get_opt(&c.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(c.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = Some(micro_now());
    if let Err(e) = api.replace(&c.name, &PostParams::default(), &lease).await {
        tracing::debug!(error = %e, "releasing the lease failed");
    }
}
