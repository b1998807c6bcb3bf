#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webvlm::fuzz::tokenizer_vocab(data));
