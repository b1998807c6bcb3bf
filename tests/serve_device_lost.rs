//! `webvlm serve` after its GPU device is lost (on purpose, with the hidden
//! `--lose-device-after N` flag, which calls wgpu's `Device::destroy` after N requests), on the
//! tiny VLM: the server loads the model again on a new device and answers as before; when it
//! cannot (its model file is gone), the waiting and later requests fail with 503, `/health`
//! says unhealthy with 503, and the process exits non-zero for a supervisor to restart it.

use crate::common;
use crate::serve_http;

use std::time::Duration;

use serde_json::{json, Value};
use serve_http::Server;

/// How long an unhealthy server may take to exit (it drains for a few seconds first).
const EXIT_LIMIT: Duration = Duration::from_secs(60);

fn start(dir: &std::path::Path) -> Server {
    let model = dir.join("model.gguf").display().to_string();
    let mmproj = dir.join("mmproj.gguf").display().to_string();
    let args =
        ["--model", &model, "--mmproj", &mmproj, "--ctx", "256", "--chunk", "16", "--lose-device-after", "1", "--backend", "gpu"];
    Server::start(&args)
}

fn request(max_tokens: u32) -> Value {
    json!({ "messages": [{ "role": "user", "content": "Tell a story." }], "max_tokens": max_tokens, "temperature": 0 })
}

/// The error's status and code.
fn error_of(response: &serve_http::Response) -> (u16, String) {
    (response.status, response.json()["error"]["code"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_lost_device_is_replaced_and_the_next_request_answers_as_before() {
    let server = start(&common::fixture(common::TINY_VLM));
    let before = server.post_json("/v1/chat/completions", &request(8));
    assert_eq!(before.status, 200, "{}", before.text());
    // The device was lost after that request; the next one runs on the model loaded again.
    let after = server.post_json("/v1/chat/completions", &request(8));
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.json()["choices"], before.json()["choices"], "the same greedy answer on the new device");
    let health = server.get("/health");
    assert_eq!((health.status, health.json()["status"].clone(), health.json()["reloads"].clone()), (200, json!("ok"), json!(1)));
    assert!(server.stderr().contains("loading the model again"), "{}", server.stderr());
}

#[test]
fn a_server_that_cannot_reload_is_unhealthy_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("webvlm-serve-lost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["model.gguf", "mmproj.gguf"] {
        std::fs::copy(common::fixture(common::TINY_VLM).join(name), dir.join(name)).unwrap();
    }
    let mut server = start(&dir);
    // The loaded model keeps its memory map; loading it again will find no file.
    std::fs::remove_dir_all(&dir).unwrap();

    // One request runs (the device is lost after it) while a second waits behind it.
    let mut long = request(48);
    long["stream"] = json!(true);
    let mut running = server.stream(&long);
    assert_eq!(running.status, 200);
    assert!(running.next_data().is_some(), "the first request has started");
    let waiting = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| server.post_json("/v1/chat/completions", &request(4)));
        for _ in 0..600 {
            if server.get("/health").json()["queue"]["waiting"] == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(running.rest().last().is_some_and(|e| e == "[DONE]"), "the running request ends normally");
        waiting.join().unwrap()
    });
    assert_eq!(error_of(&waiting), (503, "device_lost".into()), "the waiting request: {}", waiting.text());
    assert!(waiting.json()["error"]["message"].as_str().unwrap().contains("could not be loaded again"));
    let later = server.post_json("/v1/chat/completions", &request(4));
    assert_eq!(error_of(&later), (503, "device_lost".into()), "a later request: {}", later.text());
    let health = server.get("/health");
    assert_eq!((health.status, health.json()["status"].clone()), (503, json!("unhealthy")), "{}", health.text());

    let status = server.wait_exit(EXIT_LIMIT).expect("the unhealthy server exits");
    assert!(!status.success(), "a non-zero exit: {status:?}");
    assert!(server.stderr().contains("could not be loaded again"), "{}", server.stderr());
}
