//! The Responses API over the engine (`webvlm::api::responses::run`, the browser's path; the
//! server's is tested in tests/serve.rs and by the Python SDK): a response is the chat
//! completion it amounts to, its stream's typed events put together are the response, an
//! agent loop continues through `previous_response_id` with the prompt cache reusing the
//! stored conversation's prefix, and bad requests name the Responses field at fault.

use crate::common::*;

use serde_json::{json, Value};
use webvlm::api::responses::{run, ResponseStore};
use webvlm::api::{self, ApiError, ChatRequest};
use webvlm::engine::{Engine, EngineError};
use webvlm::gguf::MappedGguf;
use webvlm::model::ContextOptions;
use webvlm::source::Eager;

fn engine() -> Engine {
    let opts = ContextOptions { max_ctx: 2048, max_chunk: 64, ..Default::default() };
    let gguf = MappedGguf::open(fixture(TINY_VLM).join("model.gguf")).unwrap();
    Engine::builder(cpu()).context(opts).load(&mut Eager(&gguf)).unwrap()
}

fn no_urls(url: &str) -> Result<Vec<u8>, EngineError> {
    Err(EngineError::BadImageUrl(url.into()))
}

/// The response to `body` and its events (none unless it streams).
fn respond(e: &mut Engine, store: &mut ResponseStore, body: Value) -> Result<(Value, Vec<Value>), ApiError> {
    let mut events = Vec::new();
    let response = pollster::block_on(run(e, store, body, &mut no_urls, None, |event| {
        events.push(event);
        None
    }))?;
    Ok((response, events))
}

fn output_text(response: &Value) -> String {
    let items = response["output"].as_array().unwrap();
    items
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap())
        .map(|p| p["text"].as_str().unwrap())
        .collect()
}

fn tools() -> Value {
    json!([{ "type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": { "city": { "type": "string", "maxLength": 8 }, "unit": { "type": "string", "enum": ["c", "f"] } },
        "required": ["city", "unit"] } }])
}

#[test]
fn a_response_is_the_chat_completion_it_amounts_to() {
    let mut e = engine();
    let mut store = ResponseStore::default();
    let (response, events) = respond(
        &mut e,
        &mut store,
        json!({ "instructions": "Be brief.", "input": "Hello there", "max_output_tokens": 6, "temperature": 0 }),
    )
    .unwrap();
    assert!(events.is_empty(), "a plain request sends no events");
    let chat = json!({ "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hello there" }],
        "max_tokens": 6, "temperature": 0 });
    let req = ChatRequest::from_value(chat, e.decoder().cfg.vocab as usize).unwrap();
    let completion = pollster::block_on(api::run(&mut e, &req, &mut no_urls, None, |_| None)).unwrap();
    assert_eq!(output_text(&response), completion["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(response["object"], "response");
    assert!(response["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(response["usage"]["input_tokens"], completion["usage"]["prompt_tokens"]);
    assert_eq!(response["usage"]["output_tokens"], 6);
    assert_eq!(response["status"], "incomplete", "cut at max_output_tokens");
    assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(response["instructions"], "Be brief.");
    assert_eq!(store.get(response["id"].as_str().unwrap()), Some(&response), "stored by default");
}

#[test]
fn a_streamed_response_puts_together_to_the_response() {
    let mut e = engine();
    let mut store = ResponseStore::default();
    let body = json!({ "input": "Tell me a story", "max_output_tokens": 12, "temperature": 0.9, "seed": 3, "stream": true, "store": false });
    let (response, events) = respond(&mut e, &mut store, body.clone()).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(&kinds[..2], ["response.created", "response.in_progress"]);
    assert!(events.iter().enumerate().all(|(i, e)| e["sequence_number"] == i));
    let last = events.last().unwrap();
    assert!(["response.completed", "response.incomplete"].contains(&last["type"].as_str().unwrap()));
    assert_eq!(last["response"], response, "the last event holds the response");
    let deltas: String =
        events.iter().filter(|e| e["type"] == "response.output_text.delta").map(|e| e["delta"].as_str().unwrap()).collect();
    assert_eq!(deltas, output_text(&response));
    assert!(!deltas.is_empty());
    assert!(store.is_empty(), "store: false keeps nothing");
    let (plain, _) = respond(
        &mut e,
        &mut store,
        json!({ "input": "Tell me a story", "max_output_tokens": 12, "temperature": 0.9, "seed": 3 }),
    )
    .unwrap();
    assert_eq!(output_text(&plain), output_text(&response), "the same seed, streamed or not");
}

/// Responses requests running together as their chat requests (`ResponseRun` in a parallel
/// run, as the browser's host groups them): each gives the events and the response it gives
/// alone, and a stored one continues as a stored one does.
#[test]
fn responses_running_together_give_what_they_give_alone() {
    use webvlm::api::many::{run_many, ManyEvent, ManyRequest};
    use webvlm::api::responses::ResponseRun;
    let mut e = engine();
    let bodies = [
        json!({ "input": "Tell me a story", "max_output_tokens": 12, "temperature": 0.9, "seed": 3, "stream": true }),
        json!({ "instructions": "Be brief.", "input": "Hello there", "max_output_tokens": 6, "temperature": 0 }),
        json!({ "input": "Hi", "max_output_tokens": 5, "temperature": 0, "stream": true, "store": false }),
    ];
    let stable = |events: &[Value]| -> Vec<String> {
        events.iter().map(|e| e["type"].as_str().unwrap().to_string() + e["delta"].as_str().unwrap_or("")).collect()
    };
    let mut alone_store = ResponseStore::default();
    let alone: Vec<(Value, Vec<Value>)> = bodies.iter().map(|b| respond(&mut e, &mut alone_store, b.clone()).unwrap()).collect();
    let mut store = ResponseStore::default();
    let vocab = e.decoder().cfg.vocab as usize;
    let (mut runs, mut requests) = (Vec::new(), Vec::new());
    for body in &bodies {
        let (run, chat) = ResponseRun::start(body.clone(), &store, vocab).unwrap();
        runs.push(Some(run));
        requests.push(ManyRequest { request: Ok(chat), abort: None });
    }
    let mut got: Vec<(Option<Value>, Vec<Value>)> = vec![(None, Vec::new()); bodies.len()];
    pollster::block_on(run_many(&mut e, requests.into_iter(), &mut no_urls, 4, |i, event| {
        match event {
            ManyEvent::Chunk(chunk) => got[i].1.extend(runs[i].as_mut().unwrap().chunk(&chunk)),
            ManyEvent::Done(completion) => {
                let (response, closing) = runs[i].take().unwrap().end(&mut store, completion).unwrap();
                got[i].1.extend(closing);
                got[i].0 = Some(response);
            }
        }
        None
    }));
    for (i, ((response, events), (want, want_events))) in got.iter().zip(&alone).enumerate() {
        let response = response.as_ref().unwrap();
        assert_eq!(output_text(response), output_text(want), "request {i}");
        assert_eq!(
            (&response["status"], &response["usage"]["output_tokens"]),
            (&want["status"], &want["usage"]["output_tokens"])
        );
        assert_eq!(stable(events), stable(want_events), "request {i}'s events");
    }
    assert_eq!(store.len(), 2, "the two stored (store: false keeps nothing)");
    let first = got[1].0.as_ref().unwrap()["id"].as_str().unwrap();
    let next = json!({ "previous_response_id": first, "input": "And again?", "max_output_tokens": 4, "temperature": 0 });
    let want_first = alone[1].0["id"].as_str().unwrap();
    let (continued, _) = respond(&mut e, &mut store, next.clone()).unwrap();
    let mut again = next;
    again["previous_response_id"] = json!(want_first);
    let (want, _) = respond(&mut e, &mut alone_store, again).unwrap();
    assert_eq!(output_text(&continued), output_text(&want), "continued from the stored response");
}

#[test]
fn an_agent_loop_continues_through_previous_response_id() {
    let mut e = engine();
    let mut store = ResponseStore::default();
    let ask = json!([{ "role": "user", "content": [{ "type": "input_text", "text": "Weather in Paris?" }] }]);
    let first = json!({ "input": ask, "tools": tools(), "tool_choice": "required", "temperature": 1.0, "seed": 5, "max_output_tokens": 80 });
    let (response, _) = respond(&mut e, &mut store, first).unwrap();
    let calls: Vec<&Value> = response["output"].as_array().unwrap().iter().filter(|i| i["type"] == "function_call").collect();
    assert!(!calls.is_empty(), "required: {response}");
    for call in &calls {
        assert_eq!(call["name"], "get_weather");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(["c", "f"].contains(&args["unit"].as_str().unwrap()), "{args}");
    }
    let results: Vec<Value> = calls
        .iter()
        .map(|c| json!({ "type": "function_call_output", "call_id": c["call_id"], "output": "{\"temperature\": 18}" }))
        .collect();
    let next = json!({ "previous_response_id": response["id"], "input": results, "tools": tools(), "tool_choice": "none",
        "temperature": 0, "max_output_tokens": 6 });
    let (answer, _) = respond(&mut e, &mut store, next).unwrap();
    assert_eq!(answer["previous_response_id"], response["id"]);
    assert!(answer["output"].as_array().unwrap().iter().all(|i| i["type"] == "message"), "none: no call");
    let cached = answer["usage"]["input_tokens_details"]["cached_tokens"].as_u64().unwrap();
    let first_input = response["usage"]["input_tokens"].as_u64().unwrap();
    assert!(
        cached >= first_input,
        "the stored conversation's prefix is reused: {cached} cached of {first_input} first-turn tokens"
    );

    // The same conversation sent whole (the first response's output items as input) is the same prompt.
    let mut items = ask.as_array().unwrap().clone();
    items.extend(response["output"].as_array().unwrap().iter().cloned());
    items.extend(results);
    let whole = json!({ "input": items, "tools": tools(), "tool_choice": "none", "temperature": 0, "max_output_tokens": 6 });
    let (again, _) = respond(&mut e, &mut store, whole).unwrap();
    assert_eq!(again["usage"]["input_tokens"], answer["usage"]["input_tokens"]);
    assert_eq!(output_text(&again), output_text(&answer));
}

#[test]
fn bad_requests_name_the_responses_field() {
    let mut e = engine();
    let mut store = ResponseStore::default();
    let cases = [
        (json!({ "input": "a", "previous_response_id": "resp_gone" }), "previous_response_id", "previous_response_not_found"),
        (
            json!({ "input": [{ "role": "user", "content": "a" }, { "type": "function_call_output", "call_id": "c1", "output": "1" }] }),
            "input[1].call_id",
            "invalid_value",
        ),
        (json!({ "input": "a", "tools": [{ "type": "function", "name": "bad name" }] }), "tools[0].name", "invalid_value"),
        (json!({ "input": "a", "max_output_tokens": 0 }), "max_output_tokens", "invalid_value"),
        (
            json!({ "input": "a", "tools": tools(), "tool_choice": { "type": "function", "name": "nope" } }),
            "tool_choice",
            "invalid_value",
        ),
        (
            json!({ "input": "a", "text": { "format": { "type": "json_schema", "name": "x y", "schema": {} } } }),
            "text.format.name",
            "invalid_value",
        ),
        (
            json!({ "input": [{ "role": "assistant", "content": [{ "type": "input_image", "image_url": "data:image/png;base64,AA" }] }] }),
            "input[0].content",
            "invalid_value",
        ),
        (json!({ "input": "a", "n": 2 }), "n", "unknown_parameter"),
    ];
    for (body, param, code) in cases {
        let e = respond(&mut e, &mut store, body.clone()).expect_err(&body.to_string());
        assert_eq!((e.param.as_deref(), e.code), (Some(param), Some(code)), "{body}: {}", e.message);
    }
}
