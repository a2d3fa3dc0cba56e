//! The `sluice` command: `run` serves a configuration, `validate` checks one, `ctl` talks to a
//! running one, `demo` shows the whole product.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::admin::Admin;
use sluice::config;
use sluice::control::Control;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The configuration file used when `-c` is not given.
const DEFAULT_CONFIG: &str = "config/sluice.yaml";

#[derive(Parser)]
#[command(name = "sluice", version, about = "A layer-7 traffic-shifting reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Parse and validate a configuration, print every error, exit 0 or 1. Opens no sockets.
    Validate {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Talk to a running sluice through its admin API.
    Ctl(sluice::ctl::CtlArgs),
    /// A self-contained showcase: upstreams, proxy, dashboard, load and a canary rollout that
    /// turns faulty and is rolled back by itself.
    Demo(sluice::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Ctl(args) => sluice::ctl::run(args),
        Command::Demo(args) => sluice::demo::run(args),
        Command::Run { config } => match serve(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("sluice: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    // The certificate files are read here too: a file that cannot be served fails at start.
    let loaded = config::load(path).and_then(|config| {
        let errors: Vec<_> = (config.listeners.iter().enumerate())
            .filter_map(|(i, l)| l.tls.as_ref().map(|tls| sluice::tls::check_listener(i, tls)))
            .flatten()
            .collect();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(config::ConfigErrors(errors))
        }
    });
    match loaded {
        Ok(config) => {
            for warning in &config.warnings {
                println!("warning: {warning}");
            }
            println!(
                "{}: ok ({} listeners, {} services)",
                path.display(),
                config.listeners.len(),
                config.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                println!("error: {error}");
            }
            println!("{}: {} error(s)", path.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = config::parse(&text)
        .map_err(|errors| anyhow::anyhow!("invalid configuration {}:\n{errors}", path.display()))?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let token = match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(file) => {
            Some(Admin::read_token(file).with_context(|| format!("cannot read admin.token_file {}", file.display()))?)
        }
        None => None,
    };
    if config.state_dir.is_none() {
        tracing::warn!("state_dir is not set: weight overrides and history will not survive a restart");
    }
    let max_connections = config.limits.max_connections as u64;
    // Each client connection can hold an upstream one too; and listeners, pooled idle
    // connections and files need some more.
    let needed = 2 * max_connections + 256;
    if let Some(open_files) = sluice::listener::open_files_limit().filter(|&n| n < needed) {
        tracing::warn!(
            open_files,
            max_connections,
            needed,
            "ulimit -n is below twice defaults.limits.max_connections (each connection can also hold an upstream one): sockets will run out before the limit refuses anything; raise it"
        );
    }
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One worker: a current-thread runtime, with no work-stealing scheduler to pay for.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = builder.enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async move {
        // First of all: a SIGHUP before this would end the process (its default action).
        #[cfg(unix)]
        let hangup = sluice::reload::listen_for_sighup().context("cannot listen for SIGHUP")?;
        let shutdown = shutdown_signal()?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut terminators = Vec::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let tls = match &listener.tls {
                Some(tls) => {
                    let terminator = sluice::tls::Terminator::new(&listener.name, tls)
                        .map_err(|e| anyhow::anyhow!("listeners[{index}].tls: {e}"))?;
                    terminators.push(Arc::clone(&terminator));
                    Some(terminator)
                }
                None => None,
            };
            let tcp = tokio::net::TcpListener::bind(listener.address)
                .await
                .with_context(|| format!("cannot bind listener {} on {}", listener.name, listener.address))?;
            let addr = tcp.local_addr()?;
            match tls {
                Some(_) => tracing::info!(name = %listener.name, %addr, "listening with TLS"),
                None => tracing::info!(name = %listener.name, %addr, "listening"),
            }
            listeners.push(sluice::listener::Listener { tcp, tls });
        }
        let _certificate_watchers = terminators
            .iter()
            .map(|t| t.watch())
            .collect::<Result<Vec<_>, _>>()
            .context("cannot watch the certificate files")?;
        let admin_address = config.admin.as_ref().map(|a| a.address);
        let control = Arc::new(
            Control::start(config, Some(text), Some(path.to_owned())).context("cannot start the control plane")?,
        );
        control.start_health_checks();
        control.start_rollouts();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if let Some(address) = admin_address {
            let admin = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot bind the admin listener on {address}"))?;
            tracing::info!(addr = %admin.local_addr()?, "admin listening");
            let mut stopped = stopped.clone();
            let api = Arc::new(Admin::new(Arc::clone(&control), token).with_tls(terminators.clone()));
            tokio::spawn(sluice::admin::serve(admin, api, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }));
        }
        let _watcher = sluice::reload::watch(Arc::clone(&control), path).context("cannot watch the config file")?;
        #[cfg(unix)]
        sluice::reload::on_sighup(Arc::clone(&control), terminators, hangup);
        let routing = Arc::clone(control.routing());
        tracing::info!(revision = routing.load().revision, workers, "sluice started");
        sluice::run(listeners, routing, async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, before the
/// returned future is first polled, so a signal during start-up is not lost (or fatal).
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
