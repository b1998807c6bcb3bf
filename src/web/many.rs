//! The requests of a `generateMany` call ([`super::WebEngine::generate_many`]): chat
//! requests, and Responses requests running as their chat requests ([`ResponseRun`]); those
//! given at the start, then those its `more()` hands over while they run. What goes back to
//! the page for each: a chat request's chunks and end as they are, a Responses request's as
//! its events and its `response` object (stored when it asks).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue};

use super::js;
use crate::api::many::{ManyEvent, ManyRequest, ManySource};
use crate::api::responses::{ResponseRun, ResponseStore};
use crate::api::{request_json, ApiError, ChatRequest};
use crate::engine::Wait;

/// The requests as they come: `(JSON, kind)` with kind `"generate"` (chat) or `"respond"`
/// (Responses). `more()` returns the next as a `[JSON, kind]` array, or a Promise the next
/// step waits for, which settles once the worker has handled the messages that came
/// meanwhile. Each request gets an abort flag and, a Responses request, its run
/// ([`Shared`]).
pub struct PageRequests<'a> {
    given: std::vec::IntoIter<(String, String)>,
    more: Option<js_sys::Function>,
    shared: &'a Shared<'a>,
    pause: Option<js_sys::Promise>,
}

impl<'a> PageRequests<'a> {
    pub fn new(given: Vec<(String, String)>, more: Option<js_sys::Function>, shared: &'a Shared<'a>) -> Self {
        PageRequests { given: given.into_iter(), more, shared, pause: None }
    }

    /// The next request's JSON and kind: given, or from `more()`.
    fn next_json(&mut self) -> Option<(String, String)> {
        if let Some(next) = self.given.next() {
            return Some(next);
        }
        let answer = self.more.as_ref()?.call0(&JsValue::NULL).ok()?;
        match answer.dyn_into::<js_sys::Array>() {
            Ok(pair) => Some((pair.get(0).as_string()?, pair.get(1).as_string()?)),
            Err(answer) => {
                self.pause = answer.dyn_into().ok();
                None
            }
        }
    }
}

/// What [`PageRequests`] and [`deliver`] share: each request's abort flag and Responses run
/// (`None` for a chat request), by index; the engine's stored responses; the vocabulary size.
pub struct Shared<'a> {
    pub aborts: &'a RefCell<Vec<Rc<Cell<bool>>>>,
    pub runs: &'a RefCell<Vec<Option<ResponseRun>>>,
    pub store: &'a RefCell<ResponseStore>,
    pub vocab: usize,
}

impl ManySource for PageRequests<'_> {
    fn next_request(&mut self) -> Option<ManyRequest> {
        let (json, kind) = self.next_json()?;
        let (request, run) = match kind.as_str() {
            "respond" => match request_json(&json)
                .and_then(|body| ResponseRun::start(body, &self.shared.store.borrow(), self.shared.vocab))
            {
                Ok((run, chat)) => (Ok(chat), Some(run)),
                Err(e) => (Err(e), None),
            },
            _ => (ChatRequest::parse(&json, self.shared.vocab), None),
        };
        let abort = Rc::<Cell<bool>>::default();
        self.shared.aborts.borrow_mut().push(abort.clone());
        self.shared.runs.borrow_mut().push(run);
        Some(ManyRequest { request, abort: Some(abort) })
    }

    fn before_step(&mut self) -> Option<Wait> {
        let pause = wasm_bindgen_futures::JsFuture::from(self.pause.take()?);
        Some(Box::pin(async move {
            let _ = pause.await;
        }))
    }
}

/// Sends request `i`'s `event` to the page through `on_event(i, kind, value)` and returns
/// what the next step waits for: the Promise `on_event` returned last, if any.
pub fn deliver(on_event: &js_sys::Function, shared: &Shared, i: usize, event: ManyEvent) -> Option<Wait> {
    let mut wait = None;
    for (kind, value) in page_events(shared, i, event) {
        let ret = on_event.call3(&JsValue::NULL, &JsValue::from(i as u32), &JsValue::from_str(kind), &value).ok();
        wait = ret.and_then(|r| r.dyn_into::<js_sys::Promise>().ok()).map(|promise| {
            let promise = wasm_bindgen_futures::JsFuture::from(promise);
            Box::pin(async move {
                let _ = promise.await;
            }) as Wait
        });
    }
    wait
}

/// What the page gets for request `i`'s `event`: a chat request's chunk (`"chunk"`) or end
/// (`"result"`, `"error"`) as it is; a Responses request's chunk as its events, and its end
/// as the stream's closing events then its `response` object (kept in the store when asked).
fn page_events(shared: &Shared, i: usize, event: ManyEvent) -> Vec<(&'static str, JsValue)> {
    let chunk = |v: Value| ("chunk", JsValue::from(v.to_string()));
    let end = |result: Result<Value, ApiError>| match result {
        Ok(v) => ("result", JsValue::from(v.to_string())),
        Err(e) => ("error", js(e).into()),
    };
    let mut runs = shared.runs.borrow_mut();
    match (event, &mut runs[i]) {
        (ManyEvent::Chunk(c), None) => vec![chunk(c)],
        (ManyEvent::Done(result), None) => vec![end(result)],
        (ManyEvent::Chunk(c), Some(run)) => run.chunk(&c).into_iter().map(chunk).collect(),
        (ManyEvent::Done(completion), run) => {
            let run = run.take().expect("a Responses request's run");
            match run.end(&mut shared.store.borrow_mut(), completion) {
                Ok((response, closing)) => closing.into_iter().map(chunk).chain([end(Ok(response))]).collect(),
                Err(e) => vec![end(Err(e))],
            }
        }
    }
}
