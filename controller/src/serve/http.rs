//! The API's HTTP/1.1 server, with the limits an open port needs: a cap on open
//! connections (over it, a new one is closed at once), a deadline for each
//! request's headers (also for an idle keep-alive connection's next request), and
//! a deadline for each whole request (`api::limits`). A few hundred slow sockets
//! then cost a few hundred idle tasks, and never the Envoys' polls, the CLI or the
//! control loop. With a certificate and key it speaks TLS (rustls) only; the
//! handshake gets the header deadline too.
//!
//! Polls and the API have separate budgets. The last `RESERVE` connection slots
//! are the API's: a connection admitted into them is marked `reserved`, and a
//! route long-poll on it is refused (503, `Retry-After`, closed), so however many
//! Envoys poll, an operator's rollback and `/healthz` find a slot. Connections that
//! have not yet authenticated a request are limited per client address.

use crate::api::connection::{Connection, Unauthenticated};
use crate::metrics::Metrics;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// How long open connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Most connections one client address may hold open before it has
    /// authenticated a request on them.
    pub max_unauthenticated_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(10),
            max_unauthenticated_per_address: 512,
        }
    }
}

/// Default connection cap: 10,000 Envoys' long-polls and the reserve, with room.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Connection slots kept for the API (never a long-poll's): at most this, and at
/// most an eighth of the cap.
pub const RESERVE: usize = 256;

/// The slots of a cap of `max` kept for the API.
pub fn reserve_of(max: usize) -> usize {
    RESERVE.min(max / 8)
}

/// A TLS server configuration from PEM files: the certificate chain and its key.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a TLS server")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let reserve = reserve_of(max);
    let permits = Arc::new(Semaphore::new(max));
    let unauthenticated = Arc::new(Unauthenticated::default());
    metrics.connections_max.store(max as u64, Relaxed);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused_logged = false;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pass, then accept again.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.connections_refused.fetch_add(1, Relaxed);
            if !std::mem::replace(&mut refused_logged, true) {
                tracing::warn!(
                    max_connections = max,
                    "connection cap reached: closing new connections (counted in /metrics)"
                );
            }
            drop(tcp);
            continue;
        };
        if permits.available_permits() > max / 2 {
            refused_logged = false;
        }
        let address = peer.ip();
        if !unauthenticated.admit(address, limits.max_unauthenticated_per_address) {
            metrics
                .connections_refused_unauthenticated
                .fetch_add(1, Relaxed);
            drop(tcp);
            continue;
        }
        let connection = Arc::new(Connection::new(
            address,
            permits.available_permits() < reserve,
            Arc::clone(&unauthenticated),
        ));
        metrics.connections_open.fetch_add(1, Relaxed);
        // Long-poll answers are small: without TCP_NODELAY, Nagle plus the peer's
        // delayed ACK holds each one back ~40 ms.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let closing = closing_rx.clone();
        let tls = tls.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, app, limits, closing, connection).await,
                Some(tls) => {
                    match tokio::time::timeout(limits.header_timeout, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, app, limits, closing, connection).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            metrics.connections_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
    closing_tx.send_replace(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
}

async fn serve_connection<IO>(
    io: IO,
    app: Router,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
    connection: Arc<Connection>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Every request carries its connection (`Extension<Arc<Connection>>`), put in
    // per request: `Router::layer` would rebuild every route for each connection.
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(Arc::clone(&connection));
        hyper::service::Service::call(&app, request)
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let closed = tokio::select! {
        _ = connection.as_mut() => true,
        _ = closing.wait_for(|closing| *closing) => false,
    };
    if !closed {
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }
}
