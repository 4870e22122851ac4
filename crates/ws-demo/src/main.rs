//! `ws-demo`: the demo WebSocket workload. `serve` runs the service whose connection gauge the
//! adapter scrapes; `load` opens, holds and churns connections against one or more of them;
//! `demo` runs the whole loop on one machine (what `make demo` runs).

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ws_demo::load::{LoadArgs, LoadGenerator, ProgressMode, ProgressView};
use ws_demo::server::{self, DemoServer, ServeArgs};
use ws_metrics_adapter::app::shutdown_signal;
use ws_metrics_adapter::config::LogFormat;
use ws_metrics_adapter::telemetry;

/// Demo WebSocket workload for ws-metrics-adapter.
#[derive(Debug, Parser)]
#[command(
    name = "ws-demo",
    version,
    about = "The demo WebSocket workload of ws-metrics-adapter: a server that exports its live connection count, and a load generator",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve /ws/chat, /ws/echo and /ws/ticker with /metrics, /healthz and POST /shed (close N
    /// connections with 1013, docs/shed-contract.md); drain on SIGTERM.
    Serve(ServeArgs),
    /// Open, hold and churn connections against one or more targets, then print a summary.
    Load(LoadArgs),
    /// Run the whole loop locally: demo WebSocket pods, the adapter over TLS, a load ramp and a
    /// live view of what an HPA would read and decide.
    Demo(ws_demo::local::DemoArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => {
            // The live view owns the terminal: only warnings and errors are logged.
            if std::env::var_os("RUST_LOG").is_none() {
                telemetry::init_logging_with_default(LogFormat::Text, "warn");
            } else {
                telemetry::init_logging(LogFormat::Text);
            }
            ws_demo::local::run(args, shutdown_signal()).await?;
        }
        Command::Serve(args) => {
            telemetry::init_logging(LogFormat::Text);
            let config = args.validate().unwrap_or_else(|e| {
                eprintln!("ws-demo: {e}");
                std::process::exit(2);
            });
            let listener = server::bind(args.listen)
                .with_context(|| format!("binding --listen {}", args.listen))?;
            let addr = listener.local_addr().context("reading the bound address")?;
            tracing::info!("listening on http://{addr}");
            DemoServer::new(config)
                .serve(listener, shutdown_signal())
                .await
                .context("serving")?;
        }
        Command::Load(args) => {
            telemetry::init_logging(LogFormat::Text);
            let (json, progress) = (args.json, args.progress);
            let plan = args.into_plan().unwrap_or_else(|e| {
                eprintln!("ws-demo: {e}");
                std::process::exit(2);
            });
            let generator = LoadGenerator::new(plan);
            let mode = if progress {
                ProgressMode::Forced
            } else if std::io::stderr().is_terminal() {
                ProgressMode::Auto
            } else {
                ProgressMode::Hidden
            };
            let view = ProgressView::start(&generator, mode);
            let summary = generator.run(shutdown_signal()).await;
            view.finish().await;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{summary}");
            }
            if let Some(unreached) = &summary.unreached {
                eprintln!("ws-demo: {unreached} (--deadline)");
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_its_ws_demo_environment_variable() {
        use clap::CommandFactory;
        let (checked, problems) =
            ws_metrics_adapter::config::env_fallback_problems(&Cli::command(), "WS_DEMO_");
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(checked >= 18, "only {checked} flags walked");
    }
}
