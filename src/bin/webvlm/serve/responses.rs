//! `POST /v1/responses`: the Responses request read here as its chat-completions request
//! ([`ResponsesRequest`]), checked and queued like one; the engine thread runs it as chat, and
//! its completion or chunks become the `response` object or its typed events here
//! (`event: response.output_text.delta` / `data: {...}` ..., `response.completed` last; no
//! `[DONE]`, as OpenAI's stream has none). A stored response (`store`, the default) is kept in
//! the server's [`ResponseStore`] for `previous_response_id`, `GET /v1/responses/{id}` and
//! `DELETE /v1/responses/{id}`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_core::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use webvlm::api::responses::{ResponseEvents, ResponsesRequest};

use super::chat::{start_job, CancelOnDrop};
use super::checks::check_request;
use super::errors::HttpError;
use super::worker::Event;
use super::App;

pub async fn create(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Response, HttpError> {
    let body = super::body_json(body, app.limits.max_body_bytes)?;
    let request = ResponsesRequest::read(body, &app.responses.lock().expect("the store's lock"))?;
    let rename = |e: HttpError| HttpError { error: request.rename(e.error), ..e };
    let checked = check_request(&app.model, app.limits.max_image_bytes, request.chat_body().clone()).map_err(rename)?;
    let (first, events, cancel) = start_job(&app, checked.body).await?;
    match first {
        Event::Failed(error) => Err(rename(error.into())),
        Event::Done(completion) => {
            cancel.disarm();
            Ok(Json(respond(&app, &request, &completion)).into_response())
        }
        Event::Chunk(chunk) => {
            let mut maker = request.events();
            let queue = maker.push(&chunk).into();
            let stream = EventStream { app, request, maker, queue, events, ended: false, cancel };
            Ok(Sse::new(stream).into_response())
        }
    }
}

/// The response object of a finished chat completion, kept in the store when asked to.
fn respond(app: &App, request: &ResponsesRequest, completion: &Value) -> Value {
    let response = request.response(completion);
    request.keep(&mut app.responses.lock().expect("the store's lock"), &response, completion);
    response
}

pub async fn retrieve(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Value>, HttpError> {
    let store = app.responses.lock().expect("the store's lock");
    store.get(&id).cloned().map(Json).ok_or_else(|| not_found(&id))
}

pub async fn delete(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Value>, HttpError> {
    if !app.responses.lock().expect("the store's lock").remove(&id) {
        return Err(not_found(&id));
    }
    Ok(Json(json!({ "id": id, "object": "response.deleted", "deleted": true })))
}

fn not_found(id: &str) -> HttpError {
    HttpError::not_found(None, Some("not_found"), format!("No response found with id '{id}' (not stored, or evicted)"))
}

/// The job's chat events as Responses events.
struct EventStream {
    app: Arc<App>,
    request: ResponsesRequest,
    maker: ResponseEvents,
    /// Events made and not yet sent.
    queue: VecDeque<Value>,
    events: UnboundedReceiver<Event>,
    /// The job's last event came: the stream ends once the queue is sent.
    ended: bool,
    cancel: CancelOnDrop,
}

impl Stream for EventStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                let kind = event["type"].as_str().unwrap_or("message").to_string();
                return Poll::Ready(Some(Ok(SseEvent::default().event(kind).data(event.to_string()))));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let this = &mut *self;
            match this.events.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Event::Chunk(chunk))) => this.queue.extend(this.maker.push(&chunk)),
                Poll::Ready(Some(Event::Done(completion))) => {
                    this.ended = true;
                    this.cancel.armed = false;
                    let response = respond(&this.app, &this.request, &completion);
                    this.queue.extend(this.maker.finish(&response));
                }
                Poll::Ready(Some(Event::Failed(error))) => {
                    this.ended = true;
                    this.queue.push_back(this.maker.error(&this.request.rename(error)));
                }
                // The engine thread ended the job without a last event.
                Poll::Ready(None) => this.ended = true,
            }
        }
    }
}
