//! The HTTP side of the agent's API: routes, body limits, and error answers. No state here:
//! every handler is one call into the [`Table`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::api::{self, ApiError, RegisterRequest, UnreachableRequest, MAX_BODY};
use super::handle::Handle;
use super::table::Table;

/// The API's routes over `table`.
pub(crate) fn router(table: Arc<Table>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/registrations", post(register))
        .route("/v1/registrations/{handle}", delete(deregister))
        .route("/v1/registrations/{handle}/ready", post(ready))
        .route("/v1/registrations/{handle}/unreachable", post(unreachable))
        .route("/v1/registrations/{handle}/events", get(events))
        .fallback(|| async {
            ApiError::not_found("no such path (the API's paths start with /v1/)")
        })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "bad_request",
                message: "method not allowed on this path".into(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(table)
}

/// A JSON body, or the API's error for it (413 when over the limit, 400 otherwise).
fn body<T: DeserializeOwned>(bytes: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = bytes.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large()
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn handle(text: &str) -> Result<Handle, ApiError> {
    Handle::parse(text).ok_or_else(|| ApiError::not_found("a handle is 64 hex digits"))
}

async fn health(State(table): State<Arc<Table>>) -> Response {
    Json(json!({
        "v": api::VERSION,
        "version": env!("CARGO_PKG_VERSION"),
        "registrations": table.len(),
        "synced": table.connector().wait_synced(std::time::Duration::ZERO).await.is_ok(),
        "stale": table.connector().is_stale(),
    }))
    .into_response()
}

async fn register(
    State(table): State<Arc<Table>>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: RegisterRequest = body(bytes)?;
    let done = table.register(req).await?;
    let state = if done.reserved {
        "reserved"
    } else {
        "registered"
    };
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"v": api::VERSION, "id": done.id, "handle": done.handle.to_string(),
                    "state": state, "lease": format!("{:016x}", done.lease)}),
        ),
    )
        .into_response())
}

async fn ready(
    State(table): State<Arc<Table>>,
    Path(text): Path<String>,
) -> Result<StatusCode, ApiError> {
    table.ready(&handle(&text)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deregister(
    State(table): State<Arc<Table>>,
    Path(text): Path<String>,
) -> Result<StatusCode, ApiError> {
    table.deregister(&handle(&text)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unreachable(
    State(table): State<Arc<Table>>,
    Path(text): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let handle = handle(&text)?;
    let req: UnreachableRequest = body(bytes)?;
    if req.id == 0 {
        return Err(ApiError::invalid("id must be 1..=65535"));
    }
    let status = table.unreachable(&handle, req.id).await?;
    let status = match status {
        darkrift_etcd::PeerStatus::Registered => "registered",
        darkrift_etcd::PeerStatus::Gone => "gone",
        darkrift_etcd::PeerStatus::Evicted => "evicted",
        darkrift_etcd::PeerStatus::Unknown => "unknown",
    };
    Ok(Json(json!({"v": api::VERSION, "id": req.id, "status": status})).into_response())
}

async fn events(
    State(table): State<Arc<Table>>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let rx = table.attach(&handle(&text)?)?;
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}
