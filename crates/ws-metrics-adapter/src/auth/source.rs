//! Loads ConfigMap `kube-system/extension-apiserver-authentication` (written by kube-apiserver)
//! and keeps the authentication config in step with it: a rotated front-proxy or client CA is in
//! force for the next request, without a restart (spec §5.3, §7).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};

use super::Auth;
use super::authn::{AuthnConfig, FlagSources};
use crate::health::Latch;
use crate::telemetry::Telemetry;

/// Namespace of the ConfigMap.
pub(crate) const NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap.
pub(crate) const NAME: &str = "extension-apiserver-authentication";

/// Builds the config from `data` and puts it in force; a bad value keeps the previous config.
/// Returns whether the config was applied.
pub(crate) fn apply(auth: &Auth, data: &BTreeMap<String, String>, flags: &FlagSources) -> bool {
    match AuthnConfig::build(data, flags) {
        Ok(config) => {
            if config.request_header.is_none() {
                tracing::warn!(
                    "no requestheader-client-ca-file: requests proxied by kube-apiserver will be refused (401); is the aggregation layer configured?"
                );
            }
            tracing::info!(
                front_proxy = ?config.request_header.as_ref().map(|rh| &rh.allowed_names),
                client_ca = config.has_certificate_auth(),
                "authentication config loaded"
            );
            auth.set_config(config);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "authentication config unusable; keeping the previous one");
            false
        }
    }
}

/// Marks the config as in force: readiness (`loaded`) and
/// `ws_metrics_adapter_authentication_config_loaded`.
fn mark_loaded(loaded: &Latch, telemetry: &Telemetry) {
    loaded.set();
    telemetry.set_authentication_config_loaded(true);
}

/// Keeps `auth` in step with the ConfigMap until `shutdown`. When the flags give every CA, the
/// ConfigMap is not read at all. `loaded` (and the `authentication_config_loaded` gauge) is set
/// at the first good load; until then readiness stays false and each failure is logged with its
/// likely cause.
pub(crate) async fn watch(
    client: kube::Client,
    auth: Arc<Auth>,
    flags: FlagSources,
    loaded: Latch,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()>,
) {
    telemetry.set_authentication_config_loaded(loaded.is_set());
    if flags.complete() {
        if apply(&auth, &BTreeMap::new(), &flags) {
            mark_loaded(&loaded, &telemetry);
        }
        return;
    }
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, NAMESPACE);
    // RBAC (extension-apiserver-authentication-reader) allows list/watch only by name.
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let stream = watcher(api, config).default_backoff();
    tokio::pin!(stream);
    tokio::pin!(shutdown);
    let mut found = false;
    loop {
        let event = tokio::select! {
            () = &mut shutdown => return,
            event = stream.next() => event,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                found = true;
                if apply(&auth, &cm.data.unwrap_or_default(), &flags) {
                    mark_loaded(&loaded, &telemetry);
                }
            }
            Some(Ok(watcher::Event::InitDone)) if !found => {
                tracing::warn!(
                    "ConfigMap {NAMESPACE}/{NAME} not found; not ready until kube-apiserver writes it"
                );
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!("ConfigMap {NAMESPACE}/{NAME} deleted; keeping the config in force");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::warn!(
                error = %e,
                ready = auth.is_loaded(),
                "watching ConfigMap {NAMESPACE}/{NAME} failed (is the adapter bound to Role \
                 kube-system/extension-apiserver-authentication-reader?); retrying"
            ),
        }
    }
}
