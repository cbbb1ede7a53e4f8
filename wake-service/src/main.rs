//! `wake-service serve` runs the control plane; the other subcommands call its API.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wake_service::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Endpoints(command) => wake_service::cli::endpoints(command).await,
        Command::Roles(command) => wake_service::cli::roles(command).await,
        Command::Databases(command) => wake_service::cli::databases(command).await,
        Command::Branches(command) => wake_service::cli::branches(command).await,
        Command::Jwks(command) => wake_service::cli::jwks(command).await,
        Command::Usage(command) => wake_service::cli::usage(command).await,
    }
}

async fn serve(args: wake_service::config::ServeArgs) -> anyhow::Result<()> {
    let check = args.check_config;
    let config = args.validate()?;
    if check {
        println!("{config:#?}");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        signal.cancel();
    });
    wake_service::run(config, listener, shutdown).await
}
