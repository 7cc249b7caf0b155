//! The HTTP API (`/contacts`, bearer token when configured) and the admin
//! routes (`/_admin`, no token, writes counted as a user's).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::cdc::Origin;
use super::table::{Change, Snapshot, Table, WriteError};

pub(crate) struct App {
    pub(crate) table: Table,
    pub(crate) token: Option<String>,
}

impl App {
    /// Makes `change` on a task of its own, so a caller that goes away (a
    /// client hanging up while NATS is down) cannot cut a write in half: an
    /// event published but the record not changed.
    pub(crate) async fn write(
        self: &Arc<Self>,
        origin: Origin,
        change: Change,
    ) -> Result<Option<Value>, WriteError> {
        let app = self.clone();
        let write = tokio::spawn(async move { app.table.write(origin, change).await });
        match write.await {
            Ok(written) => written,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

type AppState = State<Arc<App>>;

pub(crate) fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/contacts", post(api_create))
        .route(
            "/contacts/{id}",
            get(read).patch(api_update).delete(api_delete),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    let admin = Router::new()
        .route("/_admin/contacts", post(user_create))
        .route(
            "/_admin/contacts/{id}",
            get(read).patch(user_update).delete(user_delete),
        )
        .route("/_admin/state", get(state));
    api.merge(admin).with_state(app)
}

/// Refuses API requests without the configured bearer token.
async fn authorize(State(app): AppState, request: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let bearer = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if bearer != Some(token.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        }
    }
    next.run(request).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The body as JSON whatever its content type, so a bare `curl -d` works;
/// or the 400 answer.
fn body(bytes: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))
}

async fn write(app: &Arc<App>, origin: Origin, change: Change, success: StatusCode) -> Response {
    match app.write(origin, change).await {
        Ok(Some(record)) => (success, Json(record)).into_response(),
        Ok(None) => success.into_response(),
        Err(e) => {
            let status = match e {
                WriteError::NotFound(_) => StatusCode::NOT_FOUND,
                WriteError::BadFields(_) => StatusCode::BAD_REQUEST,
                WriteError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, &e.to_string())
        }
    }
}

async fn create(app: &Arc<App>, origin: Origin, bytes: Bytes) -> Response {
    match body(&bytes) {
        Ok(fields) => write(app, origin, Change::Create(fields), StatusCode::CREATED).await,
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

async fn update(app: &Arc<App>, origin: Origin, id: String, bytes: Bytes) -> Response {
    match body(&bytes) {
        Ok(patch) => write(app, origin, Change::Update(id, patch), StatusCode::OK).await,
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

async fn api_create(State(app): AppState, bytes: Bytes) -> Response {
    create(&app, Origin::Api, bytes).await
}

async fn api_update(State(app): AppState, Path(id): Path<String>, bytes: Bytes) -> Response {
    update(&app, Origin::Api, id, bytes).await
}

async fn api_delete(State(app): AppState, Path(id): Path<String>) -> Response {
    write(
        &app,
        Origin::Api,
        Change::Delete(id),
        StatusCode::NO_CONTENT,
    )
    .await
}

async fn user_create(State(app): AppState, bytes: Bytes) -> Response {
    create(&app, Origin::User, bytes).await
}

async fn user_update(State(app): AppState, Path(id): Path<String>, bytes: Bytes) -> Response {
    update(&app, Origin::User, id, bytes).await
}

async fn user_delete(State(app): AppState, Path(id): Path<String>) -> Response {
    write(
        &app,
        Origin::User,
        Change::Delete(id),
        StatusCode::NO_CONTENT,
    )
    .await
}

async fn read(State(app): AppState, Path(id): Path<String>) -> Response {
    match app.table.get(&id) {
        Some(record) => Json(record).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("contact {id} not found")),
    }
}

async fn state(State(app): AppState) -> Json<Snapshot> {
    Json(app.table.snapshot())
}
