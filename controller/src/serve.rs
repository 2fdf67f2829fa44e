//! `canaryctl serve`: the control plane process.

use crate::analyst::EnvoyAnalyst;
use crate::api::{app, AppState};
use crate::controller::{now_ms, Controller, TimeOnly};
use crate::notify::Notifier;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub webhooks: Vec<String>,
    pub envoy_admins: Vec<String>,
    pub runtime_weights: bool,
    /// How often the control loop runs (each rollout is analysed at its own interval).
    pub tick: Duration,
    /// How often every Envoy's stats are read.
    pub scrape_interval: Duration,
}

/// The token from the flag or environment, else from the token file, else a new
/// one written to the token file with mode 0600.
pub fn resolve_token(token: Option<String>, file: &Path) -> anyhow::Result<String> {
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(token.trim().to_string());
    }
    if let Ok(text) = std::fs::read_to_string(file) {
        let token = text.trim().to_string();
        anyhow::ensure!(
            !token.is_empty(),
            "the token file {} is empty",
            file.display()
        );
        return Ok(token);
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = crate::policy::hex(&bytes);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(file, &token).with_context(|| format!("writing {}", file.display()))?;
    tracing::info!(file = %file.display(), "generated an API token");
    Ok(token)
}

#[cfg(unix)]
fn write_private(file: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    writeln!(f, "{token}")
}

#[cfg(not(unix))]
fn write_private(file: &Path, token: &str) -> std::io::Result<()> {
    std::fs::write(file, format!("{token}\n"))
}

pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let token_file = options
        .token_file
        .clone()
        .unwrap_or_else(|| options.state_dir.join("token"));
    let token = resolve_token(options.token.clone(), &token_file)?;
    let notifier = Notifier::spawn(options.webhooks.clone(), 5, Duration::from_millis(500));
    // With Envoy admins to read, stages move on evidence; without, on time alone.
    let envoy_analyst = (!options.envoy_admins.is_empty()).then(EnvoyAnalyst::default);
    let analyst: Box<dyn crate::controller::Analyst> = match &envoy_analyst {
        Some(a) => Box::new(a.clone()),
        None => Box::new(TimeOnly),
    };
    let controller = Controller::open(&options.state_dir, notifier.clone(), analyst)
        .with_context(|| format!("opening the state in {}", options.state_dir.display()))?;
    if let Some(analyst) = envoy_analyst {
        tokio::spawn(crate::analyst::collect(
            Arc::clone(&controller),
            analyst,
            options.envoy_admins.clone(),
            options.scrape_interval,
        ));
    }

    let loop_controller = Arc::clone(&controller);
    let tick = options.tick;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let c = Arc::clone(&loop_controller);
            match tokio::task::spawn_blocking(move || c.reconcile(now_ms())).await {
                Ok(Err(e)) => tracing::error!(error = %e, "control loop"),
                Err(e) => tracing::error!(error = %e, "control loop task"),
                Ok(Ok(())) => {}
            }
        }
    });
    if options.runtime_weights {
        anyhow::ensure!(
            !options.envoy_admins.is_empty(),
            "--runtime-weights needs at least one --envoy-admin URL"
        );
        tokio::spawn(crate::envoy_runtime::run(
            Arc::clone(&controller),
            options.envoy_admins.clone(),
        ));
    }

    if !options.listen.ip().is_loopback() {
        tracing::warn!(listen = %options.listen, "listening beyond loopback: protect this port");
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    // Long-poll answers are small: without TCP_NODELAY, Nagle plus the peer's
    // delayed ACK holds each one back ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    println!(
        "canaryctl listening on http://{address} (state in {})",
        options.state_dir.display()
    );
    let state = AppState {
        controller,
        token: Arc::from(token),
        webhooks: notifier,
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
