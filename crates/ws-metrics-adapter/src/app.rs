//! The composition root: builds the store, telemetry, pod source, collector and listeners from a
//! [`Config`] and runs them until shutdown. Listeners and the shutdown signal are passed in, so
//! tests bind `127.0.0.1:0` and stop the adapter when they like.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::auth::Auth;
use crate::auth::flags::AuthOptions;
use crate::collect::{self, Collector};
use crate::config::{Config, PodSource, Source, TlsSource};
use crate::discovery::{cluster, static_file};
use crate::health::{Health, Latch};
use crate::server::{self, serving_ca, tls};
use crate::store::{MetricCatalog, Store};
use crate::telemetry::Telemetry;

/// Errors that stop the adapter at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The serving certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// rustls refused the server configuration.
    #[error("building the TLS server configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// The static pods file could not be used.
    #[error(transparent)]
    StaticPods(#[from] static_file::Error),
    /// The kubeconfig file given could not be read.
    #[error("reading kubeconfig {path}: {source}")]
    KubeconfigUnreadable {
        /// Path given.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig file does not make a client configuration (context, cluster, credentials).
    #[error("using kubeconfig {path}: {source}")]
    KubeconfigUnusable {
        /// Path given.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither the in-cluster environment nor a default kubeconfig gave a client configuration.
    #[error("configuring the Kubernetes client: {0}")]
    KubeConfigInferFailed(#[source] kube::config::InferConfigError),
    /// The client configuration was refused when building the client (TLS, proxy).
    #[error("building the Kubernetes client: {0}")]
    KubeClientFailed(#[source] kube::Error),
    /// The authentication config given by flags could not be read.
    #[error("authentication config: {0}")]
    AuthConfig(#[from] crate::auth::authn::ConfigError),
    /// The self-managed serving CA could not be set up.
    #[error(transparent)]
    ServingCa(#[from] crate::server::serving_ca::Error),
    /// The collector could not be built.
    #[error(transparent)]
    Collect(#[from] collect::Error),
    /// The Prometheus source could not be set up.
    #[error(transparent)]
    Prometheus(#[from] crate::prometheus::Error),
    /// A listener failed.
    #[error("serving {what}: {source}")]
    Serve {
        /// Which listener.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The two listeners, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS API.
    pub secure: TcpListener,
    /// Plain-HTTP health and metrics.
    pub metrics: TcpListener,
    /// The remote-write receiver's (with `--source=remote-write`); `None` binds
    /// `--remote-write-bind-address` at start-up.
    pub remote_write: Option<TcpListener>,
}

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    /// Tells every loop and listener to stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

/// Receives the shutdown signal; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A connected trigger and receiver.
    pub fn new() -> (ShutdownTrigger, Self) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Self(rx))
    }

    /// A receiver that resolves `delay` after this one does; `health` turns not ready at once.
    /// Serving and collecting go on meanwhile: the Service's endpoints drop this replica before
    /// it stops answering (kube-apiserver's --shutdown-delay-duration, for the same reason).
    fn delayed(self, delay: Duration, health: Arc<Health>) -> Self {
        let (trigger, delayed) = Self::new();
        tokio::spawn(async move {
            self.wait().await;
            health.begin_drain();
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "not ready; serving on for --shutdown-delay-duration before the listeners close"
                );
                tokio::time::sleep(delay).await;
            }
            trigger.trigger();
        });
        delayed
    }

    /// Resolves once shutdown is triggered (or the trigger is dropped).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                Error::KubeconfigUnreadable {
                    path: path.to_owned(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::KubeconfigUnusable {
                    path: path.to_owned(),
                    source,
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(Error::KubeConfigInferFailed)?,
    };
    kube::Client::try_from(config).map_err(Error::KubeClientFailed)
}

/// Builds the authenticator (its own clients when --authentication-kubeconfig /
/// --authorization-kubeconfig are given) and starts keeping its config in step with the cluster;
/// `loaded` is set once a config is in force.
async fn start_auth(
    options: &AuthOptions,
    client: &kube::Client,
    loaded: Latch,
    telemetry: Arc<Telemetry>,
    shutdown: &Shutdown,
) -> Result<Arc<Auth>> {
    let flags = options.flag_sources()?;
    let authn = match &options.authentication_kubeconfig {
        Some(path) => kube_client(Some(path)).await?,
        None => client.clone(),
    };
    let authz = match &options.authorization_kubeconfig {
        Some(path) => kube_client(Some(path)).await?,
        None => client.clone(),
    };
    let auth = Arc::new(Auth::new(authn.clone(), authz, options.settings.clone()));
    tokio::spawn(crate::auth::source::watch(
        authn,
        auth.clone(),
        flags,
        loaded,
        telemetry,
        shutdown.wait(),
    ));
    Ok(auth)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How often `--metrics-config` is looked at: a change is served within about this long (a
/// ConfigMap mounted as a volume changes when the kubelet swaps its symlink, within a minute).
const METRICS_CONFIG_PERIOD: Duration = Duration::from_secs(1);

/// Re-reads `--metrics-config` every [`METRICS_CONFIG_PERIOD`]; when its text changed and it
/// parses, the store serves the new metrics at once (what carries over keeps its values). A file
/// that cannot be used is logged once per version with every problem, counted in
/// `config_reload_failures_total`, and the previous metrics stay.
async fn reload_metrics_config(
    path: std::path::PathBuf,
    scrape_interval: Duration,
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()>,
) {
    // The last version looked at, good or bad: a bad one is reported once, not every second.
    let mut last: Option<Result<String, String>> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(METRICS_CONFIG_PERIOD) => {}
        }
        let p = path.clone();
        let Ok(looked) = tokio::task::spawn_blocking(move || {
            crate::config::metrics_file::read_text(&p)
                .map_err(|e| format!("--metrics-config {}: {e}", p.display()))
        })
        .await
        else {
            continue;
        };
        if last.as_ref() == Some(&looked) {
            continue;
        }
        let first = last.is_none();
        last = Some(looked.clone());
        let parsed = looked.and_then(|text| {
            crate::config::metrics_file::parse(&text, scrape_interval).map_err(|problems| {
                format!(
                    "--metrics-config {}: {}",
                    path.display(),
                    problems.join("; ")
                )
            })
        });
        match parsed {
            Ok(metrics) if metrics == store.catalog().mappings() => {
                if !first {
                    telemetry.config_applied(unix_now());
                }
            }
            Ok(metrics) => {
                tracing::info!(
                    path = %path.display(),
                    metrics_served = ?metrics.iter().map(|m| m.served.as_str()).collect::<Vec<_>>(),
                    "metrics config reloaded"
                );
                store.replace_catalog(MetricCatalog::new(metrics));
                telemetry.config_applied(unix_now());
            }
            Err(e) => {
                tracing::error!(error = %e, "metrics config changed but cannot be used; keeping the previous metrics");
                telemetry.config_reload_failed();
            }
        }
    }
}

/// Runs the adapter until `shutdown` fires.
///
/// # Errors
/// Start-up failures (certificates, static file, kube config, CA file) and listener failures.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<()> {
    tls::install_provider();
    let health = Arc::new(match &config.source {
        Source::Scrape => Health::new(config.collect.interval, config.collect.timeout),
        Source::Prometheus(prom) => Health::new(prom.interval, prom.timeout),
        // The receiver's sweep ticks every second and takes no network time.
        Source::RemoteWrite(_) => Health::new(Duration::from_secs(1), Duration::from_secs(1)),
    });
    let shutdown = shutdown.delayed(config.shutdown_delay, health.clone());
    let telemetry = Arc::new(Telemetry::new());
    let store = Arc::new(Store::new(
        MetricCatalog::new(config.metrics.clone()),
        config.max_age,
    ));
    if let Some(path) = &config.metrics_config {
        telemetry.config_applied(unix_now());
        tokio::spawn(reload_metrics_config(
            path.clone(),
            config.collect.interval,
            store.clone(),
            telemetry.clone(),
            shutdown.wait(),
        ));
    }

    // Serving certificate: files re-read when they change, or issued from the managed CA.
    let (resolver, files) = match &config.tls {
        TlsSource::Files { cert, key } => (
            Arc::new(tls::CertResolver::new(tls::load_pair(cert, key)?)),
            Some((cert.clone(), key.clone())),
        ),
        TlsSource::SelfSigned { dir } => {
            let extra: Vec<String> = match config.secure_addr.ip() {
                ip if ip.is_unspecified() || ip.is_loopback() => Vec::new(),
                ip => vec![ip.to_string()],
            };
            let (cert, key) = tls::ensure_self_signed(dir, &extra)?;
            (
                Arc::new(tls::CertResolver::new(tls::load_pair(&cert, &key)?)),
                Some((cert, key)),
            )
        }
        TlsSource::Managed(managed) => {
            let kubeconfig = match &config.pods {
                PodSource::Cluster { kubeconfig } => kubeconfig.as_deref(),
                PodSource::Static { .. } => None,
            };
            let client = kube_client(kubeconfig).await?;
            let managed = &managed.clone().in_namespace(client.default_namespace());
            let ca = serving_ca::load_or_create(&client, managed).await?;
            let resolver = Arc::new(tls::CertResolver::new(
                ca.issue(&managed.dns_names, managed.validity)?,
            ));
            tokio::spawn(serving_ca::maintain(
                client,
                managed.clone(),
                ca,
                resolver.clone(),
                shutdown.wait(),
            ));
            (resolver, None)
        }
    };
    let tls_config = Arc::new(if config.auth.is_some() {
        tls::server_config_requesting_client_certs(resolver.clone())?
    } else {
        tls::server_config(resolver.clone())?
    });
    if let Some((cert, key)) = files {
        tokio::spawn(tls::watch_files(
            resolver,
            cert,
            key,
            Duration::from_secs(1),
            shutdown.wait(),
        ));
    }

    // Health: live while the collection (or query) loop ticks on time.
    // Pod inventory, and in cluster mode delegated authentication.
    let mut auth: Option<Arc<Auth>> = None;
    match &config.pods {
        PodSource::Static { path } => {
            // No authentication in static mode: no config to wait for.
            telemetry.set_authentication_config_loaded(true);
            // The file names every namespace there is: any other has no total to serve.
            store.set_namespaces_seen(std::collections::HashMap::new());
            static_file::load_into(path, &store)?;
            tracing::warn!(
                address = %config.secure_addr,
                "static mode: the custom metrics API is served WITHOUT authentication; keep it on loopback"
            );
            tokio::spawn(static_file::watch(
                path.clone(),
                store.clone(),
                telemetry.clone(),
                Duration::from_millis(500),
                shutdown.wait(),
            ));
        }
        PodSource::Cluster { kubeconfig } => {
            let client = kube_client(kubeconfig.as_deref()).await?;
            match &config.auth {
                Some(options) => {
                    let loaded = health.require_auth_config();
                    auth = Some(
                        start_auth(options, &client, loaded, telemetry.clone(), &shutdown).await?,
                    );
                }
                None => {
                    telemetry.set_authentication_config_loaded(true);
                    tracing::warn!(
                        address = %config.secure_addr,
                        "--insecure-allow-unauthenticated: the custom metrics API does not authenticate or authorize callers"
                    );
                }
            }
            let mut inventory = cluster::Inventory::new(
                store.clone(),
                telemetry.clone(),
                config.annotation_prefix.clone(),
            );
            // With Prometheus (or its agents' remote-write) as the source, Prometheus decides
            // what is scraped: every running pod may have values, annotated or not.
            if matches!(
                config.source,
                Source::Prometheus(_) | Source::RemoteWrite(_)
            ) {
                inventory = inventory.tracking_all_running_pods();
            }
            // Object metrics (`deployments.apps/ws/…`): with the scrape source the sum over the
            // object's pods; with the Prometheus source the rules' values, and the watched
            // objects' labels answer a `labelSelector` over them.
            let stop = shutdown.clone();
            crate::discovery::objects::start(&client, &store, &telemetry, move || {
                let stop = stop.clone();
                async move { stop.wait().await }
            });
            if let Some(settings) = &config.rebalance {
                let facts = Arc::new(crate::rebalance::PodFacts::default());
                inventory = inventory.feeding(facts.clone());
                let shed_tls = crate::tls::client::config(crate::tls::client::ClientTls {
                    ca_file: config.collect.ca_file.as_deref(),
                    identity: None,
                })
                .map_err(collect::Error::TlsClientUnusable)?;
                let stop = shutdown.clone();
                tokio::spawn(crate::rebalance::run(
                    client.clone(),
                    store.clone(),
                    telemetry.clone(),
                    facts,
                    shed_tls,
                    settings.clone(),
                    move || {
                        let stop = stop.clone();
                        async move { stop.wait().await }
                    },
                ));
            }
            tokio::spawn(cluster::watch(client, inventory, shutdown.wait()));
        }
    }

    // Collection: scrape the pods, query Prometheus, or receive remote-write.
    let mut remote_write_listener = listeners.remote_write;
    let (collecting, api_state) = match &config.source {
        Source::RemoteWrite(rw) => {
            let listener = match remote_write_listener.take() {
                Some(l) => l,
                None => TcpListener::bind(rw.addr)
                    .await
                    .map_err(|source| Error::Serve {
                        what: "remote-write",
                        source,
                    })?,
            };
            let rw_tls = match &rw.tls {
                None => None,
                Some(t) => {
                    let resolver =
                        Arc::new(tls::CertResolver::new(tls::load_pair(&t.cert, &t.key)?));
                    tokio::spawn(tls::watch_files(
                        resolver.clone(),
                        t.cert.clone(),
                        t.key.clone(),
                        Duration::from_secs(1),
                        shutdown.wait(),
                    ));
                    Some(Arc::new(match &t.client_ca {
                        Some(ca) => tls::server_config_verifying_client_certs(resolver, ca)?,
                        None => tls::server_config(resolver)?,
                    }))
                }
            };
            tracing::info!(
                address = %listener.local_addr().map_err(|source| Error::Serve { what: "remote-write", source })?,
                tls = rw_tls.is_some(),
                mutual_tls = rw.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
                bearer_token = rw.bearer_token_file.is_some(),
                "values come from remote-write (POST /api/v1/write)"
            );
            if rw.bearer_token_file.is_none()
                && rw.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
            {
                tracing::warn!(
                    "--remote-write-insecure-allow-unauthenticated: anyone who can reach the remote-write listener can write values"
                );
            }
            let receiver = Arc::new(crate::remote_write::Receiver::new(
                store.clone(),
                telemetry.clone(),
                (**rw).clone(),
            ));
            tokio::spawn(server::serve_remote_write(
                listener,
                rw_tls,
                crate::remote_write::router(receiver.clone()),
                config.limits,
                config.shutdown_grace,
                shutdown.wait(),
            ));
            let h = health.clone();
            let stop = shutdown.wait();
            let task = tokio::spawn(async move { receiver.run(h, stop).await });
            (task, ApiState::new(store.clone(), telemetry.clone()))
        }
        Source::Scrape => {
            let collector =
                Collector::new(store.clone(), telemetry.clone(), config.collect.clone())?;
            let h = health.clone();
            let stop = shutdown.wait();
            let task = collector
                .run_on_own_threads(config.collect.threads, h, stop)
                .map_err(|source| Error::Serve {
                    what: "collection runtime",
                    source,
                })?;
            (task, ApiState::new(store.clone(), telemetry.clone()))
        }
        Source::Prometheus(prom) => {
            tracing::info!(
                url = %prom.url,
                interval = %humantime::format_duration(prom.interval),
                rules = prom.rules.len(),
                "values come from Prometheus"
            );
            let source = crate::prometheus::Source::new(
                (**prom).clone(),
                &config.metrics,
                store.clone(),
                telemetry.clone(),
            )?;
            let h = health.clone();
            let stop = shutdown.wait();
            let task = tokio::spawn(async move { source.run(h, stop).await });
            (task, ApiState::new(store.clone(), telemetry.clone()))
        }
    };

    // Listeners. Health routes are merged after the auth layer: probes need no credentials.
    let api_state = if config.serve_external_metrics {
        tracing::info!(
            "serving external.metrics.k8s.io/v1beta1 as well (--serve-external-metrics)"
        );
        api_state.serving_external_metrics()
    } else {
        api_state
    };
    let mut api_app = api::router(api_state);
    if let Some(auth) = auth {
        let layer = crate::auth::layer::AuthLayer {
            auth,
            telemetry: telemetry.clone(),
        };
        api_app = api_app.layer(axum::middleware::from_fn_with_state(
            layer,
            crate::auth::layer::authenticate_and_authorize,
        ));
    }
    let api_app = api_app.merge(server::health_routes(health.clone()));
    tracing::info!(
        api = %listeners.secure.local_addr().map_err(|source| Error::Serve { what: "API", source })?,
        metrics = %listeners.metrics.local_addr().map_err(|source| Error::Serve { what: "metrics", source })?,
        metrics_served = ?config.metrics.iter().map(|m| format!("{}={}", m.served, m.family)).collect::<Vec<_>>(),
        "serving custom.metrics.k8s.io"
    );
    let plain = tokio::spawn(server::serve_plain(
        listeners.metrics,
        server::metrics_router(health, telemetry),
        config.limits,
        shutdown.wait(),
    ));
    server::serve_tls(
        listeners.secure,
        tls_config,
        api_app,
        config.limits,
        config.shutdown_grace,
        shutdown.wait(),
    )
    .await;
    let _ = collecting.await;
    let _ = plain.await;
    Ok(())
}
