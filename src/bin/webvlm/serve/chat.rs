//! `POST /v1/chat/completions`: the body checked, a queue place taken (429 when full), the
//! job sent to the engine thread; the answer is the `chat.completion` object, or with
//! `stream: true` server-sent events (`data: {chunk}` ... `data: [DONE]`). The status is
//! decided by the job's first event, so a request that fails before generating (a bad image,
//! a prompt too long) is an error response, not a stream. A client that goes away cancels
//! its job (a drop guard on the handler future and on the event stream).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_core::Stream;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use super::checks::check_request;
use super::errors::HttpError;
use super::worker::{Event, Job};
use super::App;

pub async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Response, HttpError> {
    let body = super::body_json(body, app.limits.max_body_bytes)?;
    let checked = check_request(&app.model, app.limits.max_image_bytes, body)?;
    let (first, events, cancel) = start_job(&app, checked.body).await?;
    match first {
        Event::Failed(error) => Err(error.into()),
        Event::Done(completion) => {
            cancel.disarm();
            Ok(Json(completion).into_response())
        }
        Event::Chunk(chunk) => {
            let stream = ChunkStream { first: Some(chunk), events, state: StreamState::Open, cancel };
            Ok(Sse::new(stream).into_response())
        }
    }
}

/// Queues a checked chat body (429 when the queue is full) and waits for the job's first
/// event: that event, the receiver of the rest, and the guard that cancels the job when the
/// client goes away (dropped with the handler's future, or with the stream it is moved to).
pub(super) async fn start_job(app: &App, body: Value) -> Result<(Event, UnboundedReceiver<Event>, CancelOnDrop), HttpError> {
    let slot = app.engine.admit()?;
    let cancel = CancelOnDrop::new();
    let (job, mut events) = Job::new(body, cancel.flag.clone(), Some(slot));
    app.engine.submit(job)?;
    let first = events.recv().await.ok_or_else(|| HttpError::internal("the engine thread stopped"))?;
    Ok((first, events, cancel))
}

/// Sets the job's cancel flag when dropped, unless disarmed (the job ended normally).
pub(super) struct CancelOnDrop {
    pub(super) flag: Arc<AtomicBool>,
    pub(super) armed: bool,
}

impl CancelOnDrop {
    fn new() -> CancelOnDrop {
        CancelOnDrop { flag: Arc::new(AtomicBool::new(false)), armed: true }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Open,
    /// An error event was sent; `[DONE]` follows.
    DoneNext,
    Closed,
}

/// The job's events as server-sent events: each chunk, then `[DONE]` (after an error object
/// when the generation failed midway, as vLLM does).
struct ChunkStream {
    first: Option<Value>,
    events: UnboundedReceiver<Event>,
    state: StreamState,
    cancel: CancelOnDrop,
}

impl ChunkStream {
    fn done(&mut self) -> Poll<Option<Result<SseEvent, Infallible>>> {
        self.state = StreamState::Closed;
        self.cancel.armed = false;
        Poll::Ready(Some(Ok(SseEvent::default().data("[DONE]"))))
    }
}

impl Stream for ChunkStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let data = |value: &Value| Poll::Ready(Some(Ok(SseEvent::default().data(value.to_string()))));
        match self.state {
            StreamState::Closed => return Poll::Ready(None),
            StreamState::DoneNext => return self.done(),
            StreamState::Open => {}
        }
        if let Some(chunk) = self.first.take() {
            return data(&chunk);
        }
        match self.events.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Event::Chunk(chunk))) => data(&chunk),
            Poll::Ready(Some(Event::Done(_))) => self.done(),
            Poll::Ready(Some(Event::Failed(error))) => {
                self.state = StreamState::DoneNext;
                data(&error.to_json())
            }
            // The engine thread ended the job without a last event: end the stream.
            Poll::Ready(None) => {
                self.state = StreamState::Closed;
                Poll::Ready(None)
            }
        }
    }
}
