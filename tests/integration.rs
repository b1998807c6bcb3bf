//! The native integration tests, one module per file of this directory (but the CPU kernels'
//! `cpu_*.rs`, in `cpu.rs`, and `tokenizer_leak.rs`, whose global allocator must count its one
//! test alone), in one binary: one link of webvlm and its dependencies instead of one per file.
//! `cargo test --test integration MODULE::` runs one file's tests.

mod common;
#[path = "common/gguf_vocab.rs"]
mod gguf_vocab;
#[path = "common/json_schemas.rs"]
mod json_schemas;
#[path = "common/serve_http.rs"]
mod serve_http;
#[path = "common/tiktoken.rs"]
mod tiktoken;

mod api;
mod api_defaults;
mod api_models;
mod bench_smoke;
mod chat_template;
mod cli;
mod constraint;
mod device_lost;
mod engine_mllama;
mod engine_parallel;
#[cfg(feature = "fuzzing")]
mod fuzz_smoke;
mod gguf_malformed;
mod gguf_reader;
mod hf_convert;
mod hostile_templates;
mod image_preprocess;
mod image_preprocess_mllama;
mod kernels_attention;
mod kernels_basic;
mod kernels_delta_net;
mod kernels_fused;
mod kernels_gdn_prep;
mod kernels_matmul;
mod kernels_mrope;
mod kernels_sample;
mod kernels_vision;
mod kernels_vision_mllama;
mod kernels_vision_qwen;
mod mllama_processor;
mod mmproj_load;
mod model_batch;
mod model_f16;
mod model_hf;
mod model_mistral_small;
mod model_mllama;
mod model_mllama_vision;
mod model_qwen35;
mod model_qwen35_vision;
mod model_qwen_vision;
mod model_smollm2;
mod model_stream;
mod model_tiny;
mod model_vision;
mod prompt_cache;
mod quantizers;
mod repo_references;
mod responses;
mod safetensors_malformed;
mod safetensors_reader;
mod sampling;
mod serve;
mod serve_device_lost;
mod soak;
mod tokenizer;
mod tool_calls;
