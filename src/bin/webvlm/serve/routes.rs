//! The router: every route of the server, the bearer-key check, OpenAI-shaped 404 and 405
//! answers, the body limit, CORS when asked for; and the small routes (`/health`,
//! `/v1/models`; `/metrics` is [`metrics`]).
//!
//! With `--api-key`, every request needs the key but those to [`PUBLIC_PATHS`] (`/health`,
//! for load balancers and probes, which carry no key) and CORS preflights (browsers send them
//! without credentials; the CORS layer answers them before the check). Unknown routes and
//! wrong methods need it too: without the key, nothing tells which routes exist.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use super::checks::model_not_found;
use super::errors::HttpError;
use super::{batches, chat, files, metrics, responses, App};

/// The server's routes over `app`; `cors` is `--cors` (an origin, or `*` for any).
pub fn router(app: Arc<App>, cors: Option<&str>) -> Result<Router, String> {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{response_id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/files", post(files::upload).get(files::list))
        .route("/v1/files/{file_id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{file_id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{batch_id}", get(batches::retrieve))
        .route("/v1/batches/{batch_id}/cancel", post(batches::cancel));
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .merge(v1)
        .fallback(|method: Method, uri: Uri| async move { HttpError::unknown_route(method.as_str(), uri.path()) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            HttpError::method_not_allowed(method.as_str(), uri.path())
        })
        .layer(from_fn_with_state(app.clone(), require_key))
        .layer(DefaultBodyLimit::max(app.limits.max_body_bytes))
        .with_state(app);
    Ok(match cors {
        Some(origin) => router.layer(cors_layer(origin)?),
        None => router,
    })
}

/// Cross-origin access for `origin` (`*`: any), with the headers the OpenAI clients send: a
/// preflight's requested headers are named back (`Access-Control-Allow-Headers: *` would not
/// do: the Fetch standard never lets the wildcard cover `Authorization`, the API key).
fn cors_layer(origin: &str) -> Result<CorsLayer, String> {
    let allow_origin = if origin == "*" {
        AllowOrigin::any()
    } else {
        let value = HeaderValue::from_str(origin).map_err(|_| format!("--cors {origin:?} is not a valid origin"))?;
        AllowOrigin::exact(value)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([header::RETRY_AFTER]))
}

/// The paths that need no key.
const PUBLIC_PATHS: [&str; 1] = ["/health"];

/// `Authorization: Bearer <--api-key>` on every request but those to [`PUBLIC_PATHS`] when the
/// server has a key.
async fn require_key(State(app): State<Arc<App>>, request: Request, next: Next) -> Result<Response, HttpError> {
    let public = PUBLIC_PATHS.contains(&request.uri().path());
    if let Some(key) = app.api_key.as_ref().filter(|_| !public) {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        // The scheme's name is case-insensitive (RFC 9110).
        let token = given.and_then(|v| v.split_once(' ')).filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
        match token.map(|(_, token)| token) {
            None => {
                return Err(HttpError::unauthorized(
                    "You didn't provide an API key: send it in the Authorization header as `Bearer KEY`",
                ))
            }
            Some(token) if !same_secret(token.trim().as_bytes(), key.as_bytes()) => {
                return Err(HttpError::unauthorized("Incorrect API key provided"))
            }
            Some(_) => {}
        }
    }
    Ok(next.run(request).await)
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The served model as OpenAI's `model` object, with the tokens a request may take (prompt
/// and reply) as `context_length` and, under vLLM's name, `max_model_len`.
fn model_object(app: &App) -> Value {
    let m = &app.model;
    json!({
        "id": m.id, "object": "model", "created": m.created, "owned_by": "webvlm",
        "context_length": m.context_length, "max_model_len": m.context_length,
    })
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&app)] }))
}

async fn model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Value>, HttpError> {
    if id != app.model.id {
        return Err(model_not_found(&id));
    }
    Ok(Json(model_object(&app)))
}

/// Liveness and the queue: what a load balancer or a load script polls. 503 with
/// `"status": "unhealthy"` and the reason once the engine cannot take requests (its device
/// lost and the model not loaded again).
async fn health(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let stats = &app.engine.stats;
    let cache = stats.prompt_cache();
    let unhealthy = stats.unhealthy();
    let status = if unhealthy.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({
        "status": if unhealthy.is_some() { "unhealthy" } else { "ok" },
        "error": unhealthy,
        "model": app.model.id,
        "backend": app.model.backend,
        "device": app.model.device,
        "backend_reason": app.model.backend_reason,
        "reloads": stats.reloads.load(Ordering::SeqCst),
        "queue": {
            "capacity": app.engine.queue_capacity,
            "waiting": stats.waiting.load(Ordering::SeqCst),
            "running": stats.running.load(Ordering::SeqCst),
        },
        "requests": {
            "completed": stats.completed.load(Ordering::SeqCst),
            "failed": stats.failed.load(Ordering::SeqCst),
            "aborted": stats.aborted.load(Ordering::SeqCst),
            "mean_run_seconds": stats.mean_run_seconds(),
        },
        "slots": stats.slots().map(|slots| json!({
            "total": slots.total,
            "busy": slots.sequences.len(),
            "kv_tokens_per_slot": slots.rows_per_slot,
            "kv_pool_tokens": slots.kv_pool_rows,
            "kv_held_tokens": slots.kv_rows_held,
            "preemptions": slots.preemptions,
            "failed_steps": slots.failed_steps,
            "sequences": slots.sequences.iter().map(|s| json!({
                "id": s.id,
                "state": super::metrics::slot_state(s),
                "prompt_tokens": s.prompt_tokens,
                "generated_tokens": s.generated,
                "kv_tokens": s.cached,
                "kv_rows": s.kv_rows,
            })).collect::<Vec<_>>(),
        })),
        "prompt_cache": {
            "live_tokens": cache.live_tokens,
            "saved_prefixes": cache.saved_tokens.len(),
            "saved_tokens": cache.saved_tokens.iter().sum::<usize>(),
            "saved_bytes": cache.saved_bytes,
            "budget_bytes": cache.budget_bytes,
        },
    });
    (status, Json(body))
}
