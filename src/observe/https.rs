//! The admin server's HTTPS: TCP connections accepted and their TLS handshakes done off the
//! accept loop (a slow or silent client holds up no one), handed to axum once secured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections handshaken and waiting for axum at most.
const WAITING: usize = 64;

/// Handshakes under way at most: past it, new connections wait to be accepted.
const HANDSHAKES: usize = 256;

/// A listener axum serves whose connections are TLS-secured.
pub struct Listener {
    secured: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl Listener {
    /// Accepts on `tcp` and secures each connection with `config`.
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> Listener {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, secured) = mpsc::channel(WAITING);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!("admin: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let secured = handshake.await;
                    drop(permit);
                    match secured {
                        Ok(Ok(secured)) => {
                            let _ = tx.send((secured, peer)).await;
                        }
                        Ok(Err(err)) => tracing::info!(%peer, "admin: TLS handshake failed: {err}"),
                        Err(_) => tracing::info!(%peer, "admin: TLS handshake timed out"),
                    }
                });
            }
        });
        Listener { secured, local }
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.secured.recv().await {
            Some(secured) => secured,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
