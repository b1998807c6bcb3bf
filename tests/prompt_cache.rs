//! The prompt cache across requests on the tiny VLM: two chats taken in turns over one
//! system prompt keep their prefixes (saved on the GPU when the other chat overwrites the
//! KV cache, copied back when they continue), each reply equals a fresh engine's, and saved
//! prefixes stay within their byte budget, the least recently used evicted first.

use crate::common;
use common::*;

use serde_json::{json, Value};
use webvlm::api::{run, ChatRequest};
use webvlm::engine::Engine;

/// A greedy 8-token reply to `messages`.
fn reply(e: &mut Engine, messages: &[Value]) -> Value {
    let req = ChatRequest::from_value(json!({ "messages": messages, "max_tokens": 8, "temperature": 0 }), 131072).unwrap();
    pollster::block_on(run(e, &req, &mut read_tiny_vlm_image, None, |_| None)).unwrap()
}

fn content(reply: &Value) -> String {
    reply["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

fn tokens(reply: &Value, field: &str) -> u64 {
    match field {
        "cached" => reply["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(),
        _ => reply["usage"]["prompt_tokens"].as_u64().unwrap(),
    }
}

/// `turn` with the assistant's reply and a next question appended.
fn next_turn(turn: &[Value], answer: &Value, question: &str) -> Vec<Value> {
    let mut next = turn.to_vec();
    next.push(json!({ "role": "assistant", "content": content(answer) }));
    next.push(json!({ "role": "user", "content": question }));
    next
}

#[test]
fn two_chats_in_turns_keep_their_prefixes() {
    let instructions = "You are a careful assistant who answers briefly. ".repeat(6);
    let system = json!({ "role": "system", "content": instructions });
    let chat_a = vec![
        system.clone(),
        json!({ "role": "user", "content": [
        { "type": "image_url", "image_url": { "url": "img_84x56.png" } },
        { "type": "text", "text": "What is in this picture? ".repeat(6) },
    ] }),
    ];
    let chat_b = vec![system, json!({ "role": "user", "content": "Write a list of ten fruits and their colours. ".repeat(5) })];

    let mut e = tiny_vlm_engine();
    let a1 = reply(&mut e, &chat_a);
    let b1 = reply(&mut e, &chat_b);
    // B shares the system prompt with A, still live; A is saved before B overwrites it.
    let stats = e.prompt_cache_stats();
    assert_eq!(stats.saved_tokens.len(), 1, "{stats:?}");
    assert!(stats.saved_tokens[0] as u64 >= tokens(&a1, "prompt"), "{stats:?}");
    let system_tokens = e.text_tokens(&instructions).unwrap().len() as u64;
    assert!(tokens(&b1, "cached") >= system_tokens, "the system prompt is reused: {}", b1["usage"]);
    assert!(tokens(&b1, "cached") < tokens(&b1, "prompt") - 40);

    let chat_a2 = next_turn(&chat_a, &a1, "And what colour is it?");
    let a2 = reply(&mut e, &chat_a2);
    let chat_b2 = next_turn(&chat_b, &b1, "Now sort them by colour.");
    let b2 = reply(&mut e, &chat_b2);
    eprintln!(
        "A: {} then {} of {} cached; B: {} then {} of {} cached; {:?}",
        tokens(&a1, "prompt"),
        tokens(&a2, "cached"),
        tokens(&a2, "prompt"),
        tokens(&b1, "prompt"),
        tokens(&b2, "cached"),
        tokens(&b2, "prompt"),
        e.prompt_cache_stats()
    );
    assert!(tokens(&a2, "cached") >= tokens(&a1, "prompt"), "A's second turn: {}", a2["usage"]);
    assert!(tokens(&b2, "cached") >= tokens(&b1, "prompt"), "B's second turn: {}", b2["usage"]);
    // Copied-back prefixes answer as a fresh engine does.
    assert_eq!(content(&a2), content(&reply(&mut tiny_vlm_engine(), &chat_a2)));
    assert_eq!(content(&b2), content(&reply(&mut tiny_vlm_engine(), &chat_b2)));

    // With no budget for saved prefixes only the live sequence is reused.
    let mut live_only = tiny_vlm_engine();
    live_only.set_prompt_cache_bytes(0);
    reply(&mut live_only, &chat_a);
    reply(&mut live_only, &chat_b);
    let a2_live_only = reply(&mut live_only, &chat_a2);
    assert_eq!(tokens(&a2_live_only, "cached"), tokens(&b1, "cached"), "{}", a2_live_only["usage"]);
    assert_eq!(content(&a2_live_only), content(&a2));
}

#[test]
fn saved_prefixes_stay_within_the_budget_least_recently_used_first() {
    let mut e = tiny_vlm_engine();
    let chat = |topic: &str| vec![json!({ "role": "user", "content": format!("Tell me about {topic}. ").repeat(12) })];
    let topics = ["rivers", "mountains", "deserts", "forests"];
    let first = reply(&mut e, &chat(topics[0]));
    // What every chat shares: the template's default system prompt.
    let shared = tokens(&reply(&mut e, &chat(topics[1])), "cached");
    reply(&mut e, &chat(topics[0]));
    // Room for two of these sequences (prompt + 8 reply tokens), not three.
    let per_sequence = (tokens(&first, "prompt") + 8) * e.context().state_bytes_per_token();
    let budget = per_sequence * 5 / 2;
    e.set_prompt_cache_bytes(budget);
    for topic in &topics[1..] {
        reply(&mut e, &chat(topic));
        let stats = e.prompt_cache_stats();
        assert!(stats.saved_bytes <= budget, "{stats:?}");
    }
    // Rivers was saved first and evicted when forests came: mountains and deserts remain.
    let stats = e.prompt_cache_stats();
    assert_eq!(stats.saved_tokens.len(), 2, "{stats:?}");
    let rivers = reply(&mut e, &chat(topics[0]));
    assert_eq!(tokens(&rivers, "cached"), shared, "evicted: {}", rivers["usage"]);
    // Asking about rivers saved forests and evicted mountains, the least recently used.
    let deserts = reply(&mut e, &chat(topics[2]));
    assert_eq!(tokens(&deserts, "cached"), tokens(&deserts, "prompt") - 1, "kept: {}", deserts["usage"]);
    let mountains = reply(&mut e, &chat(topics[1]));
    assert_eq!(tokens(&mountains, "cached"), shared, "evicted: {}", mountains["usage"]);
    assert!(e.prompt_cache_stats().saved_bytes <= budget);

    // A smaller budget evicts at once; 0 drops every saved prefix.
    e.set_prompt_cache_bytes(per_sequence);
    assert!(e.prompt_cache_stats().saved_tokens.len() <= 1);
    e.set_prompt_cache_bytes(0);
    assert_eq!(e.prompt_cache_stats().saved_bytes, 0);
}
