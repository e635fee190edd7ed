//! Seeing it run: the admin HTTP server (axum, on the shared runtime, never on a shard's
//! thread) with Prometheus metrics (`/metrics`) and the admin API (`/api/…`) that
//! `bridgehead ctl` uses.
//!
//! What shards own (their counters, their calls) is asked of them through their queues
//! ([`AdminQuery`]): a scrape or an API call costs the shards one message each and nothing on
//! their hot path. What is process-wide (rule metrics, the relay, the transports, peer health)
//! is read where it is.

mod api;
pub mod calls;
pub mod ctl;

mod https;
mod metrics;

use crate::engine::{AdminAnswer, AdminQuery};
use crate::media::relay::RelayStats;
use crate::script::RuleMetrics;
use crate::shared::PeerHealth;
use crate::transport::{Hub, ShardInput};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long the server waits for a shard's answer.
const SHARD_WAIT: Duration = Duration::from_secs(2);

/// A reload asked for, with where its outcome goes (the new version, or why it was refused).
pub type ReloadRequest = Option<oneshot::Sender<Result<u64, Vec<String>>>>;

/// What the admin server reads and whom it asks.
pub struct Observed {
    pub hub: Arc<Hub>,
    pub rules: Arc<RuleMetrics>,
    pub relay: Option<Arc<RelayStats>>,
    /// The cluster writer's counters, when call state is shared.
    pub cluster: Option<Arc<crate::cluster::ClusterStats>>,
    pub health: Arc<PeerHealth>,
    /// The reloader's requests.
    pub reload: mpsc::UnboundedSender<ReloadRequest>,
    /// Asks the process to drain (as SIGTERM does).
    pub drain: mpsc::UnboundedSender<()>,
    /// The bearer token every request must carry, when the profile sets one.
    pub token: Option<String>,
    /// Ended calls, per trunk.
    pub calls: Arc<calls::CallLog>,
    /// The ladders of the last calls (the dashboard's).
    pub recent: Arc<crate::capture::Recent>,
    pub started: Instant,
}

impl Observed {
    /// Asks shard `shard`; None when it does not answer in time.
    async fn ask(&self, shard: usize, query: AdminQuery) -> Option<AdminAnswer> {
        let (reply, answer) = oneshot::channel();
        self.hub.to_shard(shard, ShardInput::Admin(query, reply));
        tokio::time::timeout(SHARD_WAIT, answer).await.ok()?.ok()
    }

    /// Asks every shard at once; the answers of those that answered in time.
    async fn ask_all(&self, query: AdminQuery) -> Vec<AdminAnswer> {
        let asked: Vec<_> = (0..self.hub.shards())
            .map(|shard| self.ask(shard, query.clone()))
            .collect();
        let mut answers = Vec::with_capacity(asked.len());
        for answer in asked {
            answers.extend(answer.await);
        }
        answers
    }
}

/// Binds the admin server's address (before anything is served: a start fails when it cannot).
pub async fn bind(address: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| anyhow::anyhow!("admin: cannot bind {address}: {err}"))
}

/// Serves the admin API, the metrics and the dashboard on `listener` until the process
/// ends: over HTTPS with `tls` (a rustls server setup), plain HTTP without.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    observed: Arc<Observed>,
) {
    let router = api::router(observed);
    let served = match tls {
        Some(config) => axum::serve(https::Listener::new(listener, config), router).await,
        None => axum::serve(listener, router).await,
    };
    if let Err(err) = served {
        tracing::error!("admin server stopped: {err}");
    }
}
