//! The tokio driver: binds the transports, runs one engine per shard and moves messages and
//! timers between them. All SIP logic lives in the sans-IO [`Engine`].

use crate::config::Profile;
use crate::engine::Engine;
use crate::script::Rules;
use crate::transport::{Hub, ShardInput};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Loads the profile and its rules, binds every listener and serves until the process is
/// stopped. Nothing is bound unless the whole profile and every script are valid.
pub fn run(profile: Profile) -> anyhow::Result<()> {
    let profile = Arc::new(profile);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shards = if profile.shards == 0 {
        cores
    } else {
        profile.shards
    };
    // Each shard has its own Lua state; load them all before binding anything.
    let mut engines = Vec::with_capacity(shards);
    for shard in 0..shards {
        let rules = Rules::load(&profile).map_err(|errors| {
            anyhow::anyhow!(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        engines.push(Engine::new(profile.clone(), rules, shard, shards));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let (hub, tcp) = Hub::bind(&profile, senders).await?;
        for (engine, rx) in engines.into_iter().zip(receivers) {
            tokio::spawn(run_shard(engine, rx, hub.clone()));
        }
        hub.start(tcp);
        for listener in &profile.listeners {
            tracing::info!(
                listener = %listener.name,
                address = %listener.address,
                transports = ?listener.transports,
                "listening"
            );
        }
        tracing::info!(shards, profile = %profile.path.display(), "ready");
        tokio::signal::ctrl_c().await?;
        tracing::info!("shutting down");
        Ok(())
    })
}

async fn run_shard(
    mut engine: Engine,
    mut inputs: mpsc::UnboundedReceiver<ShardInput>,
    hub: Arc<Hub>,
) {
    loop {
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { return };
                handle(&mut engine, input);
                // Drain what queued up meanwhile before sending, to batch the work.
                while let Ok(input) = inputs.try_recv() {
                    handle(&mut engine, input);
                }
            }
            () = sleep => {}
        }
        engine.handle_timeout(Instant::now());
        while let Some(transmit) = engine.poll_transmit() {
            hub.send(transmit).await;
        }
    }
}

fn handle(engine: &mut Engine, input: ShardInput) {
    let now = Instant::now();
    match input {
        ShardInput::Message(msg, peer) => engine.handle_message(msg, peer, now),
        ShardInput::Malformed(err, peer) => engine.handle_malformed(err, peer, now),
    }
}
