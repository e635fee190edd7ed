//! The admin HTTP routes: `/metrics` and the JSON admin API.

use super::{metrics, Observed};
use crate::call::admin::CallSummary;
use crate::engine::{AdminAnswer, AdminQuery, ShardSnapshot};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<Observed>>;

/// Every route: the data behind the bearer token when the profile sets one, the dashboard's
/// page and assets (which hold no data: a browser cannot send the token when it opens a
/// page) without.
pub fn router(observed: Arc<Observed>) -> Router {
    let data = Router::new()
        .route("/metrics", get(scrape))
        .route("/api/status", get(status))
        .route("/api/trunks", get(trunks))
        .route("/api/recent", get(recent))
        .route("/api/calls", get(calls))
        .route("/api/calls/{id}", get(call).delete(hang_up))
        .route("/api/peers", get(peers))
        .route("/api/versions", get(versions))
        .route("/api/reload", post(reload))
        .route("/api/drain", post(drain))
        .layer(middleware::from_fn_with_state(observed.clone(), authorize))
        .with_state(observed);
    Router::new()
        .route(
            "/",
            get(|| asset("text/html; charset=utf-8", DASHBOARD_PAGE)),
        )
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", DASHBOARD_SCRIPT)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", DASHBOARD_STYLE)),
        )
        .merge(data)
}

/// The dashboard, embedded in the binary (it works offline: no CDN).
const DASHBOARD_PAGE: &str = include_str!("dashboard/index.html");
const DASHBOARD_SCRIPT: &str = include_str!("dashboard/app.js");
const DASHBOARD_STYLE: &str = include_str!("dashboard/style.css");

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Refuses a request without the profile's bearer token (401, RFC 6750).
async fn authorize(State(observed): Shared, request: Request, next: Next) -> Response {
    if let Some(token) = &observed.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            let mut refused = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "a bearer token is required"})),
            )
                .into_response();
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return refused;
        }
    }
    next.run(request).await
}

async fn scrape(State(observed): Shared) -> Response {
    match metrics::encode(&observed, snapshots(&observed).await) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// Every call in progress, oldest first.
async fn all_calls(observed: &Observed) -> Vec<CallSummary> {
    let mut calls: Vec<CallSummary> = observed
        .ask_all(AdminQuery::Calls)
        .await
        .into_iter()
        .flat_map(|answer| match answer {
            AdminAnswer::Calls(calls) => calls,
            _ => Vec::new(),
        })
        .collect();
    calls.sort_by(|x, y| y.age_s.total_cmp(&x.age_s));
    calls
}

async fn snapshots(observed: &Observed) -> Vec<ShardSnapshot> {
    observed
        .ask_all(AdminQuery::Snapshot)
        .await
        .into_iter()
        .filter_map(|answer| match answer {
            AdminAnswer::Snapshot(snapshot) => Some(*snapshot),
            _ => None,
        })
        .collect()
}

async fn status(State(observed): Shared) -> Json<serde_json::Value> {
    let snapshots = snapshots(&observed).await;
    let sum = |field: fn(&ShardSnapshot) -> u64| snapshots.iter().map(field).sum::<u64>();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": observed.started.elapsed().as_secs_f64(),
        "shards": observed.hub.shards(),
        "calls": snapshots.iter().map(|s| s.calls.calls).sum::<usize>(),
        "answered": snapshots.iter().map(|s| s.calls.answered).sum::<usize>(),
        "calls_started": sum(|s| s.stats.calls_started),
        "calls_answered": sum(|s| s.stats.calls_answered),
        "calls_failed": sum(|s| s.stats.calls_failed),
    }))
}

/// Ended calls per trunk pair: the answer rate, failures by status, short calls, setup time
/// and the MOS of the caller's trunk's legs.
async fn trunks(State(observed): Shared) -> Json<serde_json::Value> {
    let quality = observed.calls.quality();
    let trunks: Vec<_> = observed
        .calls
        .trunks()
        .into_iter()
        .map(|((trunk, to), calls)| {
            let total: u64 = calls.by_status.values().sum();
            let answered: u64 = calls
                .by_status
                .iter()
                .filter(|(status, _)| (200..300).contains(*status))
                .map(|(_, count)| count)
                .sum();
            let mos = quality
                .iter()
                .find(|(name, _)| *name == trunk)
                .map(|(_, q)| &q.mos);
            json!({
                "trunk": trunk,
                "to": to,
                "calls": total,
                "answered": answered,
                "failed": total - answered,
                "asr": if total > 0 { answered as f64 / total as f64 } else { 0.0 },
                "by_status": calls.by_status,
                "short": calls.short,
                "setup_mean_s": (calls.setup.count() > 0)
                    .then(|| calls.setup.sum / calls.setup.count() as f64),
                "mos": mos.map(|mos| json!({"bounds": mos.bounds, "counts": mos.counts})),
            })
        })
        .collect();
    Json(json!(trunks))
}

/// The last calls' SIP messages (the dashboard's ladders), newest first.
async fn recent(State(observed): Shared) -> Json<Vec<crate::capture::RecentCall>> {
    Json(observed.recent.calls())
}

async fn calls(State(observed): Shared) -> Json<Vec<CallSummary>> {
    Json(all_calls(&observed).await)
}

fn no_call(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no call {id}")})),
    )
        .into_response()
}

async fn call(State(observed): Shared, Path(id): Path<String>) -> Response {
    let shard = observed.hub.shard_of_call(&id);
    match observed.ask(shard, AdminQuery::Call(id.clone())).await {
        Some(AdminAnswer::Call(Some(call))) => Json(*call).into_response(),
        _ => no_call(&id),
    }
}

async fn hang_up(State(observed): Shared, Path(id): Path<String>) -> Response {
    let shard = observed.hub.shard_of_call(&id);
    match observed.ask(shard, AdminQuery::HangUp(id.clone())).await {
        Some(AdminAnswer::HungUp(true)) => Json(json!({"hung_up": id})).into_response(),
        _ => no_call(&id),
    }
}

async fn peers(State(observed): Shared) -> Json<serde_json::Value> {
    let peers: Vec<_> = observed
        .health
        .snapshot()
        .into_iter()
        .map(|(trunk, peer, state)| {
            json!({
                "trunk": trunk,
                "peer": peer.to_string(),
                "up": !state.down,
                "changes": state.changes,
                "rtt_ms": state.round_trip.map(|rtt| rtt.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    Json(json!(peers))
}

async fn versions(State(observed): Shared) -> Json<serde_json::Value> {
    let mut versions: Vec<(u64, usize)> = Vec::new();
    for snapshot in snapshots(&observed).await {
        for (version, calls) in snapshot.calls.versions {
            match versions.iter_mut().find(|(v, _)| *v == version) {
                Some((_, count)) => *count += calls,
                None => versions.push((version, calls)),
            }
        }
    }
    versions.sort_unstable();
    let rules = &observed.rules;
    Json(json!({
        "current": rules.version.load(std::sync::atomic::Ordering::Relaxed),
        "reloads": rules.reloads.load(std::sync::atomic::Ordering::Relaxed),
        "reload_failures": rules.reload_failures.load(std::sync::atomic::Ordering::Relaxed),
        "calls_by_version": versions
            .iter()
            .map(|(version, calls)| json!({"version": version, "calls": calls}))
            .collect::<Vec<_>>(),
        "history": rules.history(),
        "rules": rules
            .hooks()
            .into_iter()
            .map(|(script, hook, counters)| {
                let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
                json!({
                    "script": script.file_name().map_or_else(|| script.display().to_string(), |n| n.to_string_lossy().to_string()),
                    "hook": hook.name(),
                    "calls": load(&counters.calls),
                    "errors": load(&counters.errors),
                    "budget_hits": load(&counters.budget_hits),
                })
            })
            .collect::<Vec<_>>(),
        "counters": rules
            .user_counters()
            .into_iter()
            .map(|(name, labels, value)| json!({
                "name": name,
                "labels": labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "value": value,
            }))
            .collect::<Vec<_>>(),
    }))
}

async fn reload(State(observed): Shared) -> Response {
    let (reply, outcome) = tokio::sync::oneshot::channel();
    if observed.reload.send(Some(reply)).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the reloader is gone").into_response();
    }
    match outcome.await {
        Ok(Ok(version)) => Json(json!({"version": version})).into_response(),
        Ok(Err(errors)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"refused": errors})),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the reloader is gone").into_response(),
    }
}

async fn drain(State(observed): Shared) -> Response {
    let timeout = observed.hub.profile().drain_timeout;
    match observed.drain.send(()) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({"draining": true, "timeout_s": timeout})),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopping").into_response(),
    }
}
