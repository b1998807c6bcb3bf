//! A GPU device lost mid-generation (forced with `Gpu::device_loss`, which calls wgpu's
//! `Device::destroy`, from the token callback) on the tiny VLM: the running request ends
//! with the lost-device error (`ErrorClass::DeviceLost`, OpenAI code `device_lost`), every
//! later request, image encode and logits call fails at once with the same error (no panic,
//! no hang), and an engine loaded again on a new device answers as before the loss. Both
//! ways of choosing tokens are covered: pipelined on the GPU and on the host (logprobs).

use crate::common;
use common::*;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use webvlm::api::{run, ApiError, ChatRequest};
use webvlm::engine::{Engine, Prompt};
use webvlm::error::{Classify, ErrorClass};

/// How long the whole scenario may take before the test calls it a hang (lavapipe on shared
/// cores is slow; a hang is forever).
const BOUND: Duration = Duration::from_secs(300);
/// How long a request may take to fail once the device is lost.
const FAIL_FAST: Duration = Duration::from_secs(5);
/// Content deltas streamed before the device is lost.
const DELTAS_BEFORE_LOSS: usize = 3;

fn request(extra: Value) -> ChatRequest {
    let mut body = json!({
        "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": "img_84x56.png" } },
            { "type": "text", "text": "Describe this picture in a long story." },
        ] }],
        "max_tokens": 16, "temperature": 0, "stream": true,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    ChatRequest::from_value(body, 131072).unwrap()
}

/// A streamed request: its result and the content deltas it streamed; `on_delta(n)` runs
/// after the n-th one.
fn stream(e: &mut Engine, req: &ChatRequest, mut on_delta: impl FnMut(usize)) -> (Result<Value, ApiError>, String) {
    let mut text = String::new();
    let mut deltas = 0;
    let result = pollster::block_on(run(e, req, &mut read_tiny_vlm_image, None, |chunk| {
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str().filter(|d| !d.is_empty()) {
            text.push_str(delta);
            deltas += 1;
            on_delta(deltas);
        }
        None
    }));
    (result, text)
}

/// Fails unless `r` is the lost-device error.
fn assert_lost<T: std::fmt::Debug, E: Classify + std::fmt::Display>(what: &str, r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("{what}: succeeded after the device was lost: {v:?}"),
        Err(e) => {
            assert_eq!(e.class(), ErrorClass::DeviceLost, "{what}: {e}");
            e.to_string()
        }
    }
}

/// Runs `f` on a thread of its own, failing the test if it panics or takes longer than
/// [`BOUND`] (a hang).
fn bounded(f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(BOUND) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the scenario did not finish within {BOUND:?}: a hang"),
    }
}

/// How the device is lost.
#[derive(Clone, Copy)]
enum Loss {
    /// `Gpu::device_loss` (records the loss at once).
    Hook,
    /// wgpu's `Device::destroy` alone: the engine learns of the loss from wgpu (its failed
    /// maps and validation errors, then its device-lost callback).
    Wgpu,
}

fn lost_mid_generation(extra: Value, how: Loss) {
    let req = request(extra);
    let (before, before_text) = stream(&mut tiny_vlm_engine(), &req, |_| {});
    let before = before.unwrap();
    let generated = before["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        before_text.chars().count() > DELTAS_BEFORE_LOSS && generated > DELTAS_BEFORE_LOSS as u64,
        "the reply is long enough to lose the device in the middle: {before}"
    );

    let mut e = tiny_vlm_engine();
    let gpu = e.device().gpu().unwrap();
    let (loss, device) = (gpu.device_loss(), gpu.device.clone());
    let mut lost_at = None;
    let (running, streamed) = stream(&mut e, &req, |n| {
        if n == DELTAS_BEFORE_LOSS {
            match how {
                Loss::Hook => loss.lose(),
                Loss::Wgpu => device.destroy(),
            }
            lost_at = Some(Instant::now());
        }
    });
    let lost_at = lost_at.expect("the device was lost while tokens streamed");
    let message = assert_lost("the running request", running);
    eprintln!("the running request failed {:?} after the loss: {message}", lost_at.elapsed());
    assert!(lost_at.elapsed() < FAIL_FAST, "the running request took {:?} to fail", lost_at.elapsed());
    assert!(message.contains("device was lost"), "{message}");
    assert!(
        before_text.starts_with(&streamed),
        "what streamed before the loss is the reply's start: {streamed:?} vs {before_text:?}"
    );
    assert!(e.device_lost());

    // Every later call fails at once with the same error.
    for (what, req) in
        [("a later request", request(json!({}))), ("a later host-sampled request", request(json!({ "logprobs": true })))]
    {
        let started = Instant::now();
        let (later, text) = stream(&mut e, &req, |_| {});
        assert_lost(what, later);
        assert!(text.is_empty(), "{what} streamed {text:?}");
        assert!(started.elapsed() < FAIL_FAST, "{what} took {:?} to fail", started.elapsed());
    }
    let image = read_tiny_vlm_image("img_56x112.png").unwrap();
    assert_lost("an image encode", e.image_features(&image, None).map(|_| ()));
    let prompt = Prompt { tokens: e.text_tokens("Hello").unwrap(), images: Vec::new() };
    assert_lost("logits", pollster::block_on(e.logits(&prompt)).map(|l| l.len()));
    let api_error =
        pollster::block_on(run(&mut e, &request(json!({ "stream": false })), &mut read_tiny_vlm_image, None, |_| None))
            .expect_err("a request after the loss fails");
    assert_eq!(api_error.code, Some("device_lost"), "{api_error:?}");
    drop(e);

    // The model loaded again on a new device answers as before the loss.
    let (after, after_text) = stream(&mut tiny_vlm_engine(), &req, |_| {});
    let after = after.unwrap();
    assert_eq!(after_text, before_text);
    assert_eq!(after["choices"][0]["finish_reason"], before["choices"][0]["finish_reason"]);
}

#[test]
fn a_device_lost_mid_generation_ends_it_and_fails_later_requests_fast() {
    bounded(|| lost_mid_generation(json!({}), Loss::Hook));
}

#[test]
fn a_device_destroyed_through_wgpu_alone_is_a_lost_device() {
    bounded(|| lost_mid_generation(json!({}), Loss::Wgpu));
}

#[test]
fn a_device_lost_mid_host_sampled_generation_ends_it_and_fails_later_requests_fast() {
    bounded(|| lost_mid_generation(json!({ "logprobs": true, "top_logprobs": 2 }), Loss::Hook));
}

#[test]
fn a_device_lost_between_requests_fails_the_next_one_before_any_gpu_work() {
    bounded(|| {
        let mut e = tiny_vlm_engine();
        let (first, _) = stream(&mut e, &request(json!({ "max_tokens": 2 })), |_| {});
        first.unwrap();
        e.device().gpu().unwrap().destroy_device_for_tests();
        let started = Instant::now();
        let (next, text) = stream(&mut e, &request(json!({})), |_| {});
        assert_lost("the next request", next);
        assert!(text.is_empty());
        assert!(started.elapsed() < FAIL_FAST, "{:?}", started.elapsed());
        // The GPU layer's own reads fail with it too.
        let buffer = e.device().storage("after the loss", 16).unwrap();
        assert_lost("a read", e.device().read_blocking(&buffer, 0, 16));
    });
}
