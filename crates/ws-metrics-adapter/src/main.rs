//! `ws-metrics-adapter`: parse flags, set up logging, bind the listeners and run until SIGTERM or
//! Ctrl-C. Everything else lives in the library.

use anyhow::Context;
use tokio::net::TcpListener;
use ws_metrics_adapter::app::{self, Listeners, Shutdown};
use ws_metrics_adapter::config::{self, LoadError};
use ws_metrics_adapter::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(LoadError::Clap(e)) => e.exit(),
        Err(LoadError::Invalid(e)) => {
            eprintln!("ws-metrics-adapter: {e}");
            std::process::exit(2);
        }
    };
    telemetry::init_logging(config.log_format);
    let secure = TcpListener::bind(config.secure_addr)
        .await
        .with_context(|| format!("binding --secure-port on {}", config.secure_addr))?;
    let metrics = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-bind-address {}", config.metrics_addr))?;
    // One line per listener with the bound address, so that a parent that passed port 0 (the
    // end-to-end tests) learns the port without a free-port race.
    if let Ok(addr) = secure.local_addr() {
        tracing::info!("listening on https://{addr} (custom metrics API)");
    }
    if let Ok(addr) = metrics.local_addr() {
        tracing::info!("listening on http://{addr} (metrics and health)");
    }
    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        app::shutdown_signal().await;
        tracing::info!("shutting down");
        trigger.trigger();
    });
    let remote_write = match &config.source {
        ws_metrics_adapter::config::Source::RemoteWrite(rw) => {
            let l = TcpListener::bind(rw.addr)
                .await
                .with_context(|| format!("binding --remote-write-bind-address {}", rw.addr))?;
            if let Ok(addr) = l.local_addr() {
                tracing::info!("listening on {addr} (remote-write receiver, POST /api/v1/write)");
            }
            Some(l)
        }
        _ => None,
    };
    app::run(
        config,
        Listeners {
            secure,
            metrics,
            remote_write,
        },
        shutdown,
    )
    .await?;
    Ok(())
}
