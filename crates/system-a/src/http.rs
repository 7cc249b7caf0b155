//! The HTTP API (`/contacts`, bearer token when configured) and the admin
//! routes (`/_admin`, no token, writes counted as a user's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
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
    /// API creates by their `Idempotency-Key`: the record answered, or
    /// `None` while the first request with that key is being made. A
    /// client that retries a create whose answer it lost (syncflow after a
    /// `kill -9` between the create and storing the new key) gets the same
    /// record instead of a second one, as from the mock CRM. Only creates:
    /// an update or a delete made twice changes nothing more, and a
    /// redelivered change may carry a different update under its key.
    pub(crate) creates: Mutex<HashMap<String, Option<Value>>>,
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
        Err(e) => write_error(&e),
    }
}

fn write_error(e: &WriteError) -> Response {
    let status = match e {
        WriteError::NotFound(_) => StatusCode::NOT_FOUND,
        WriteError::BadFields(_) => StatusCode::BAD_REQUEST,
        WriteError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
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

async fn api_create(State(app): AppState, headers: HeaderMap, bytes: Bytes) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok());
    let Some(key) = key else {
        return create(&app, Origin::Api, bytes).await;
    };
    let creates = || app.creates.lock().unwrap_or_else(PoisonError::into_inner);
    match creates().get(key) {
        Some(Some(record)) => {
            let replayed = [("idempotent-replayed", "true")];
            return (StatusCode::CREATED, replayed, Json(record.clone())).into_response();
        }
        Some(None) => {
            return error(
                StatusCode::CONFLICT,
                "a create with this Idempotency-Key is in progress",
            );
        }
        None => {}
    }
    creates().insert(key.to_owned(), None);
    // Only a create that was made is kept: a refused one may be sent again.
    let made = match body(&bytes) {
        Ok(fields) => app.write(Origin::Api, Change::Create(fields)).await,
        Err(message) => {
            creates().remove(key);
            return error(StatusCode::BAD_REQUEST, &message);
        }
    };
    match made {
        Ok(record) => {
            let record = record.unwrap_or_default();
            creates().insert(key.to_owned(), Some(record.clone()));
            (StatusCode::CREATED, Json(record)).into_response()
        }
        Err(e) => {
            creates().remove(key);
            write_error(&e)
        }
    }
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
