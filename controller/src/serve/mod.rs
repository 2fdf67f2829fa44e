//! `canaryctl serve`: the control plane process.

pub mod http;

use crate::analysis::evidence::envoy_admin;
use crate::analysis::evidence::prometheus::{self, Prometheus, PrometheusOptions};
use crate::analysis::evidence::sync::SyncEvidence;
use crate::analysis::judge::{EvidenceJudge, Judge, TimeOnlyJudge, WindowStore};
use crate::api::auth::resolve_token;
use crate::api::{app, AppState, Limits, ENVOY_STALE_AFTER};
use crate::controller::Controller;
use crate::notify::Notifier;
use crate::units::Now;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Where the analysis reads the Envoys' counts.
    pub evidence: Evidence,
    pub connections: http::ConnectionLimits,
    pub limits: Limits,
    /// Route polls need no token.
    pub open_routes: bool,
    /// Serve TLS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The analysis' evidence source.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// None: stages move on time alone.
    None,
    /// Every `--envoy-admin`'s stats, read every `scrape_interval`.
    EnvoyAdmin,
    /// A Prometheus server's history, read this often.
    Prometheus(PrometheusOptions, Duration),
    /// The Envoys' own reports through the sync channel, every `interval`.
    Sync { interval: Duration },
}

pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let token_file = options
        .token_file
        .clone()
        .unwrap_or_else(|| options.state_dir.join("token"));
    // The state directory first, private: the token may be written into it.
    crate::store::create_private_dir(&options.state_dir)
        .with_context(|| format!("creating {}", options.state_dir.display()))?;
    let token = resolve_token(options.token.clone(), &token_file)?;
    let notifier = Notifier::spawn(options.webhooks.clone(), 5, Duration::from_millis(500));
    // With an evidence source, stages move on evidence; without, on time alone.
    let has_evidence = !matches!(options.evidence, Evidence::None);
    let evidence_judge = has_evidence.then(EvidenceJudge::default);
    let judge: Box<dyn Judge> = match &evidence_judge {
        Some(j) => Box::new(j.clone()),
        None => Box::new(TimeOnlyJudge),
    };
    let controller = Controller::open(&options.state_dir, notifier.clone(), judge)
        .with_context(|| format!("opening the state in {}", options.state_dir.display()))?;
    let mut sync_evidence = None;
    if let Some(judge) = evidence_judge {
        // Each stage's analysis window is kept in the state, so that a restart
        // continues it: Prometheus keeps the history (the window's start is all
        // that is needed), the other sources do not (the whole window is kept).
        let windows = WindowStore::open_at(
            &options.state_dir.join("canaryctl.db"),
            matches!(options.evidence, Evidence::Prometheus(..)),
        )
        .context("opening the analysis windows' store")?;
        judge.keep_windows_in(windows);
        let store = Arc::clone(&controller);
        let active = move || store.rollout_rows(true);
        let metrics = Arc::clone(controller.metrics());
        match options.evidence.clone() {
            Evidence::Prometheus(prometheus, interval) => {
                tracing::info!(prometheus = %prometheus.url, "evidence from Prometheus");
                tokio::spawn(prometheus::collect(
                    active,
                    judge,
                    Prometheus::new(prometheus),
                    interval,
                    metrics,
                ));
            }
            Evidence::Sync { interval } => {
                tracing::info!("evidence from the Envoys' reports (POST /v1/evidence)");
                let source = SyncEvidence::new(judge, metrics, crate::units::now_ms());
                let fleet = Arc::clone(&controller);
                let following = move || {
                    let now = crate::units::now_ms();
                    fleet
                        .fleet()
                        .status(fleet.routes().revision, now, ENVOY_STALE_AFTER)
                        .envoys
                        .into_iter()
                        .filter(|e| !e.stale)
                        .map(|e| e.id)
                        .collect()
                };
                tokio::spawn(Arc::clone(&source).run(active, following, interval));
                sync_evidence = Some(source);
            }
            Evidence::EnvoyAdmin | Evidence::None => {
                tokio::spawn(envoy_admin::collect(
                    active,
                    judge,
                    options.envoy_admins.clone(),
                    options.scrape_interval,
                    metrics,
                ));
            }
        }
    }

    let loop_controller = Arc::clone(&controller);
    let tick = options.tick;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let c = Arc::clone(&loop_controller);
            match tokio::task::spawn_blocking(move || c.reconcile(Now::read())).await {
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
        tokio::spawn(crate::controller::runtime_weights::run(
            Arc::clone(&controller),
            options.envoy_admins.clone(),
        ));
    }

    if !options.listen.ip().is_loopback() {
        tracing::warn!(listen = %options.listen, "listening beyond loopback: protect this port");
    }
    let tls = match &options.tls {
        Some((cert, key)) => Some(http::tls_acceptor(cert, key)?),
        None => None,
    };
    let mut connections = options.connections;
    connections.max_connections = fit_open_files(connections.max_connections);
    controller.metrics().polls_max.store(
        options.limits.max_waiting_polls,
        std::sync::atomic::Ordering::Relaxed,
    );
    let listener =
        listen(options.listen).with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "canaryctl listening on {scheme}://{address} (state in {})",
        options.state_dir.display()
    );
    let metrics = Arc::clone(controller.metrics());
    let state = AppState {
        controller,
        token: Arc::from(token),
        webhooks: notifier,
        limits: options.limits,
        open_routes: options.open_routes,
        evidence: sync_evidence,
    };
    http::run(listener, app(state), connections, tls, metrics, shutdown()).await;
    Ok(())
}

/// File descriptors kept aside for everything but connections (SQLite, the
/// listener, webhooks, evidence sources, logs).
const RESERVED_FILES: u64 = 256;

/// Raises the open-file limit to its hard limit (a fleet's long-polls are one
/// file each) and returns the connection cap that fits in it, saying so when it
/// is below `wanted`.
fn fit_open_files(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
            tracing::info!(
                from = before,
                to = limit.rlim_cur,
                "raised the open-file limit"
            );
        }
    }
    let fits = usize::try_from(limit.rlim_cur.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_connections = fits,
            wanted,
            "the open-file limit allows fewer connections than --max-connections: raise the \
             hard limit (ulimit -Hn, LimitNOFILE=, a container's nofile) to hold that many Envoys"
        );
        return fits.max(1);
    }
    wanted
}

/// A listener with a deep accept queue: a fleet reconnecting at once (a
/// controller restart) must not overflow it and wait for SYN retries.
fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(8192)
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
