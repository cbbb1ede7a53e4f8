//! The `gateway` binary: parse and validate config, start logging, run until a signal.
//!
//! Signals: SIGTERM drains (stop accepting, finish in-flight requests within the shutdown
//! timeout, close pooled connections); a second SIGTERM or any SIGINT exits at once.

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use gateway::Args;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let check_only = args.check_config;
    let config = args.validate()?;
    if check_only {
        println!("configuration is valid:\n{config:#?}");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let signals = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM: draining");
                    signals.cancel();
                }
                _ = interrupt.recv() => exit_now("SIGINT"),
            }
            tokio::select! {
                _ = terminate.recv() => exit_now("second SIGTERM"),
                _ = interrupt.recv() => exit_now("SIGINT"),
            }
        });
        gateway::run(config, shutdown).await
    })
}

fn exit_now(why: &str) {
    tracing::info!("{why}: exiting now");
    std::process::exit(130);
}
