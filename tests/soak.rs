//! The soak's short version (issue 15): `webvlm soak` runs 100 requests of its seeded mix
//! (text, images, streams completed and aborted, JSON schemas, bad requests, prompt-cache
//! hits and evictions) against one engine on the tiny VLM. No request may fail other than as
//! its bad request asks, the GPU memory of live buffers and the process's resident memory
//! must stay within 5% after the warm-up, and greedy requests replayed on a fresh engine must
//! give the soaked engine's replies; on the GPU and on the CPU backend (where the model's
//! buffers are resident memory, which alone is watched). The full run (1000 requests) and its
//! figures: docs/RELIABILITY.md.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_hundred_mixed_requests_leave_memory_flat_and_replies_unchanged() {
    soak("gpu");
}

#[test]
fn the_same_on_the_cpu_backend() {
    soak("cpu");
}

fn soak(backend: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_webvlm"))
        .args(["soak", "--requests", "100", "--seed", "7", "--sample-every", "10", "--replay", "6", "--backend", backend])
        .output()
        .expect("the webvlm binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stderr}"));
    eprintln!("{stderr}");
    assert_eq!(s["requests"], 100);
    assert_eq!(s["errors"]["unexpected"], 0, "{:#}", s["errors"]);
    // Every kind ran, and the bad requests failed as they should.
    for kind in ["text", "stream", "abort", "image", "json", "bad", "cached"] {
        assert!(s["kinds"][kind].as_u64().unwrap_or(0) > 0, "no {kind} request: {}", s["kinds"]);
    }
    let expected: u64 = s["errors"]["expected"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(expected, s["kinds"]["bad"].as_u64().unwrap());
    assert!(s["finish_reasons"]["abort"].as_u64().unwrap_or(0) > 0, "{}", s["finish_reasons"]);
    // The prompt cache both served long prefixes and evicted them.
    let cache = &s["prompt_cache"];
    assert!(cache["hits_of_64_tokens_or_more"].as_u64().unwrap() > 0, "{cache}");
    assert!(cache["evicted"].as_u64().unwrap() > 0, "{cache}");
    // GPU memory was counted, and it and the resident memory stayed flat after the warm-up.
    let m = &s["memory"];
    let on_gpu = backend == "gpu";
    assert_eq!(m["start"]["gpu_bytes"].as_u64().unwrap() > 0, on_gpu, "GPU memory counted on the GPU only: {m}");
    assert!(m["after_warmup"]["rss_bytes"].as_u64().unwrap() > 0, "no resident memory read: {m}");
    let watched: &[&str] =
        if on_gpu { &["gpu_end_pct", "gpu_max_pct", "rss_end_pct", "rss_max_pct"] } else { &["rss_end_pct", "rss_max_pct"] };
    for key in watched {
        let pct = m["drift"][key].as_f64().unwrap();
        assert!(pct.abs() <= 5.0, "{key} = {pct}%: {:#}", m["drift"]);
    }
    assert_eq!(s["replay"]["requests"], 6);
    assert_eq!(s["replay"]["equal_end"], true, "{:#}", s["replay"]);
    assert_eq!(s["replay"]["equal_in_soak"], true, "{:#}", s["replay"]);
    assert_eq!(s["pass"], true);
    assert!(out.status.success(), "{stderr}");
}
