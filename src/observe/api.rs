//! The admin HTTP routes: `/metrics` and the JSON admin API.

use super::{metrics, Observed};
use crate::call::admin::CallSummary;
use crate::engine::{AdminAnswer, AdminQuery};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<Observed>>;

/// Every route, behind the bearer token when the profile sets one.
pub fn router(observed: Arc<Observed>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/api/status", get(status))
        .route("/api/calls", get(calls))
        .route("/api/calls/{id}", get(call).delete(hang_up))
        .route("/api/peers", get(peers))
        .route("/api/versions", get(versions))
        .route("/api/reload", post(reload))
        .route("/api/drain", post(drain))
        .layer(middleware::from_fn_with_state(observed.clone(), authorize))
        .with_state(observed)
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
    let snapshots = observed
        .ask_all(AdminQuery::Snapshot)
        .await
        .into_iter()
        .filter_map(|answer| match answer {
            AdminAnswer::Snapshot(snapshot) => Some(*snapshot),
            _ => None,
        })
        .collect();
    match metrics::encode(&observed, snapshots) {
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

async fn status(State(observed): Shared) -> Json<serde_json::Value> {
    let calls = all_calls(&observed).await;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": observed.started.elapsed().as_secs_f64(),
        "shards": observed.hub.shards(),
        "calls": calls.len(),
        "answered": calls.iter().filter(|c| c.state == "answered").count(),
    }))
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
            })
        })
        .collect();
    Json(json!(peers))
}

async fn versions(State(observed): Shared) -> Json<serde_json::Value> {
    let mut versions: Vec<(u64, usize)> = Vec::new();
    for answer in observed.ask_all(AdminQuery::Snapshot).await {
        if let AdminAnswer::Snapshot(snapshot) = answer {
            for (version, calls) in snapshot.calls.versions {
                match versions.iter_mut().find(|(v, _)| *v == version) {
                    Some((_, count)) => *count += calls,
                    None => versions.push((version, calls)),
                }
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
