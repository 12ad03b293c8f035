//! `/metrics` (Prometheus text), `/healthz` (process up), `/readyz` (database
//! reachable, the consumer has joined its group, the registry answers, and
//! no commit has been in flight for 30 s: a lock or a full disk).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::kafka::assignment::Assignment;
use crate::ops::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub pool: PgPool,
    pub assignment: Assignment,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(state))
}

async fn metrics(State(s): State<Arc<HttpState>>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<Arc<HttpState>>) -> (StatusCode, String) {
    let db = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&s.pool),
    )
    .await;
    let db_ok = matches!(db, Ok(Ok(_)));
    let (joined, parts) = s.assignment.status();
    let stalled = s.assignment.stalled();
    let body = format!(
        "database: {}\nconsumer: {}\npartitions: {parts}\nstalled: {}\n",
        if db_ok { "ok" } else { "unreachable" },
        if joined {
            "joined"
        } else {
            "waiting for assignment"
        },
        stalled
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let registry_ok = s.metrics.schema_registry_up.get() == 1;
    let body = format!(
        "{body}schema registry: {}\n",
        if registry_ok {
            "ok"
        } else {
            "unreachable (batches wait)"
        }
    );
    // A commit waiting this long (a lock, a full disk) is not ready work.
    let commit = s.metrics.commit_in_flight.get();
    let commit_ok = commit < 30.0;
    let body = if commit > 0.0 {
        format!("{body}commit: in flight for {commit:.0} s (the log says on what)\n")
    } else {
        format!("{body}commit: ok\n")
    };
    let code = if db_ok && joined && registry_ok && commit_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// Serves until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
