//! The `gatehouse` binary: command line, logging, signals. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gatehouse::config::{Config, ConfigError};
use gatehouse::server::Server;
use tokio::signal::unix::{signal, SignalKind};

/// Exit codes, distinct so scripts can tell a bad config from a failed start.
const EXIT_CONFIG: u8 = 2;
const EXIT_START: u8 = 3;

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "One proxy server for every job: HTTP forward proxy and CONNECT, SOCKS, reverse proxy")]
struct Cli {
    /// Configuration file (TOML). Without it, the built-in safe default runs on loopback.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file and report every problem in it.
    Check,
    /// Print the built-in default configuration.
    DefaultConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let text = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("gatehouse: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => gatehouse::config::DEFAULT_CONFIG.to_string(),
    };
    let source = cli
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<built-in default>".into());
    match cli.command {
        Some(Command::DefaultConfig) => {
            print!("{}", gatehouse::config::DEFAULT_CONFIG.trim_start());
            ExitCode::SUCCESS
        }
        Some(Command::Check) => match Config::parse(&text) {
            Ok(c) => {
                println!("{source}: ok ({} listener(s))", c.listeners.len());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                report(&source, &errs);
                ExitCode::from(EXIT_CONFIG)
            }
        },
        None => {
            let config = match Config::parse(&text) {
                Ok(c) => c,
                Err(errs) => {
                    report(&source, &errs);
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging();
            raise_fd_limit();
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("gatehouse: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_START);
                }
            };
            match rt.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("gatehouse: {e:#}");
                    ExitCode::from(EXIT_START)
                }
            }
        }
    }
}

fn report(source: &str, errs: &[ConfigError]) {
    eprintln!("gatehouse: {source}: {} problem(s):", errs.len());
    for e in errs {
        eprintln!("  {e}");
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Thousands of clients need thousands of descriptors: take the hard limit.
fn raise_fd_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if soft < hard {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let server = Server::start(&config).await?;
    for (name, addr) in &server.bound {
        tracing::info!(listener = %name, %addr, "ready");
    }
    if let Some(addr) = server.admin {
        tracing::info!(listener = "admin", %addr, "ready");
    }
    tracing::info!("all listeners ready");

    // SIGTERM: graceful drain. SIGINT: exit at once. A second signal during a drain: at once.
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {
            tracing::info!("SIGINT: exiting now");
            return Ok(());
        }
    }
    let shutdown = &server.services.shutdown;
    tracing::info!(in_flight = shutdown.in_flight(), "SIGTERM: draining for up to {:?}", config.shutdown.drain_timeout);
    shutdown.begin();
    let deadline: Duration = config.shutdown.drain_timeout;
    tokio::select! {
        _ = shutdown.drained() => tracing::info!("drained; exiting"),
        _ = tokio::time::sleep(deadline) => tracing::warn!(in_flight = shutdown.in_flight(), "drain deadline passed; exiting"),
        _ = term.recv() => tracing::warn!("second signal; exiting now"),
        _ = int.recv() => tracing::warn!("SIGINT; exiting now"),
    }
    Ok(())
}
