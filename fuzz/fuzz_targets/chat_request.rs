#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webvlm::fuzz::chat_request(data));
