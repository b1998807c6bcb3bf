//! `webvlm bench --quick` on the tiny synthetic model: every JSON line parses and carries the
//! expected fields with positive numbers. No timing thresholds: figures depend on the adapter.

use serde_json::Value;

fn bench_lines(args: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webvlm")).arg("bench").args(args).output().expect("webvlm runs");
    assert!(out.status.success(), "webvlm bench failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn positive(v: &Value, field: &str) -> f64 {
    let x = v[field].as_f64().unwrap_or_else(|| panic!("{field} missing in {v}"));
    assert!(x > 0.0 && x.is_finite(), "{field} = {x} in {v}");
    x
}

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["kind"] == kind).collect()
}

/// A `prefill_launch` or `vision_launch` line: its families cover its dispatches, each with
/// its workgroup size, and weights are fetched. Returns the families.
fn check_pass_launch(v: &Value) -> &Vec<Value> {
    let families = v["families"].as_array().expect("families");
    let counted: u64 = families.iter().map(|f| f["dispatches"].as_u64().unwrap()).sum();
    assert_eq!(counted, v["dispatches"].as_u64().unwrap(), "families cover every dispatch");
    for f in families {
        positive(f, "workgroups_per_dispatch");
        positive(f, "invocations_per_workgroup");
    }
    positive(v, "weight_bytes_fetched");
    families
}

#[test]
fn quick_bench_on_tiny_synthetic_model_reports_every_figure() {
    let lines = bench_lines(&["--quick", "--synthetic", "--shape", "tiny", "--json-only", "--backend", "gpu"]);
    let adapter = of_kind(&lines, "adapter");
    assert_eq!(adapter.len(), 1);
    assert!(adapter[0]["adapter"].as_str().is_some_and(|s| !s.is_empty()));

    for kind in ["copy", "read"] {
        let v = of_kind(&lines, kind);
        assert_eq!(v.len(), 1, "{kind}");
        positive(v[0], "gbps");
        positive(v[0], "seconds");
    }
    positive(of_kind(&lines, "fma")[0], "gflops");
    positive(of_kind(&lines, "dispatch_overhead")[0], "us_per_dispatch");

    let matvecs = of_kind(&lines, "matvec");
    for ty in ["Q4_K", "Q6_K", "Q8_0", "Q4_0"] {
        let rows: Vec<_> = matvecs.iter().filter(|v| v["type"] == ty).collect();
        assert_eq!(rows.len(), 3, "{ty}: one row per shape");
        for v in rows {
            for f in [
                "gbps",
                "fraction_of_copy",
                "gflops",
                "fraction_of_fma",
                "weight_bytes",
                "seconds",
                // The same kernel on a weight that stays in the CPU's caches.
                "cached_gbps",
                "cached_gflops",
                "cached_fraction_of_copy",
                "cached_seconds",
                "cached_speedup",
            ] {
                positive(v, f);
            }
        }
    }

    let models = of_kind(&lines, "model");
    assert_eq!(models.len(), 1, "--synthetic without --model benches only the synthetic model");
    let m = models[0];
    assert_eq!(m["arch"], "mistral3");
    for f in [
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "dispatches_per_token",
        "submits_per_token",
        "read_back_bytes_per_token",
        "decode_weight_gbps",
    ] {
        positive(m, f);
    }
    positive(&m["prompt_cache"], "ttft_uncached_seconds");
    positive(&m["prompt_cache"], "ttft_cached_seconds");
    // Counted, not assumed: the engine's contract is one submit and a 4-byte id per token.
    assert_eq!(m["submits_per_token"].as_f64(), Some(1.0));
    assert_eq!(m["read_back_bytes_per_token"].as_f64(), Some(4.0));
    // Pipelined: the next step is always submitted before a token is read.
    assert_eq!(m["host_waits_per_token"].as_f64(), Some(0.0));
    let breakdown = m["breakdown"].as_array().expect("breakdown");
    assert!(breakdown.iter().any(|f| f["family"].as_str().is_some_and(|s| s.starts_with("matvec"))));
    let total: u64 =
        breakdown.iter().filter(|f| f["family"] != "whole decode program").map(|f| f["dispatches"].as_u64().unwrap()).sum();
    assert_eq!(total, m["dispatches_per_token"].as_u64().unwrap(), "families cover every dispatch");

    // The launch geometry of that decode step, read off the recorded program: every dispatch
    // in a family, the synthetic model's `attn_v` (another type than q and k) leaving 10
    // dispatches per layer, and every weight read once per token.
    let launch = of_kind(&lines, "launch");
    assert_eq!(launch.len(), 1);
    let l = launch[0];
    let families = l["families"].as_array().expect("families");
    let counted: u64 = families.iter().map(|f| f["dispatches"].as_u64().unwrap()).sum();
    assert_eq!(counted, l["dispatches_per_token"].as_u64().unwrap(), "families cover every dispatch");
    assert_eq!(l["dispatches_per_token"], m["dispatches_per_token"]);
    assert_eq!(l["dispatches_per_layer"].as_f64(), Some(10.0));
    let (fetched, model) = (positive(l, "weight_bytes_fetched_per_token"), positive(l, "model_weight_bytes"));
    assert!(fetched <= model && fetched > 0.95 * model, "weights fetched {fetched} of {model}");
    for f in families {
        positive(f, "workgroups_per_dispatch");
        positive(f, "invocations_per_workgroup");
    }
    for stacked in ["attn_q+attn_k", "ffn_gate_up"] {
        assert!(families.iter().any(|f| f["family"] == stacked), "{stacked} is one weight");
    }

    // A full prefill chunk's launch (the adapter's chunk: 128 tokens in the CPU shape) and an
    // image's: every dispatch in a family with its workgroup size, every weight fetched.
    let prefill = of_kind(&lines, "prefill_launch");
    assert_eq!(prefill.len(), 1);
    let chunk = if l["geometry"] == "gpu" { 512 } else { 128 };
    assert_eq!(prefill[0]["chunk_tokens"].as_u64(), Some(chunk));
    let prefill_families = check_pass_launch(prefill[0]);
    // The blocks' matrices (the decode step's weights less the embedding and head) are each
    // fetched once per matmul tile of tokens in the GPU shape (128), once per matvec thread's
    // tokens in the CPU one (8: a CPU adapter's prompt chunks run the matvec).
    let m_tiles = chunk / if l["geometry"] == "gpu" { 128 } else { 8 };
    for f in families.iter().filter(|f| f["weight_bytes"].as_u64() > Some(0)) {
        let name = f["family"].as_str().unwrap();
        if name != "token_embd" && name != "output" {
            let p = prefill_families.iter().find(|p| p["family"] == name).unwrap_or_else(|| panic!("{name} in prefill"));
            let once = f["weight_bytes"].as_u64().unwrap();
            assert_eq!(p["weight_bytes"].as_u64(), Some(once * m_tiles), "{name}: {p} fetched per chunk");
        }
    }
    let vision_launch = of_kind(&lines, "vision_launch");
    assert_eq!(vision_launch.len(), 1);
    assert_eq!(vision_launch[0]["rows"].as_u64(), Some(64));
    check_pass_launch(vision_launch[0]);

    // The vision encoder + projector, tiny shape on one small image (112x112: 8x8 patches,
    // 4x4 merged image tokens).
    let vision = of_kind(&lines, "vision");
    assert_eq!(vision.len(), 1, "--quick encodes one image size");
    let v = vision[0];
    assert_eq!(v["image"], "112x112");
    assert_eq!(v["processed"], "112x112");
    assert_eq!(v["patches"].as_u64(), Some(64));
    assert_eq!(v["image_tokens"].as_u64(), Some(16));
    for f in ["seconds", "ms", "flops", "gflops", "fraction_of_fma", "first_seconds", "weight_bytes", "activation_bytes"] {
        positive(v, f);
    }
}

/// `--backend cpu`: the roofline measured on the CPU backend's pool, the matvec kernels, the
/// model through `Context` (one op list per step, no read-back wait to pipeline) and the
/// vision encoder; no launch geometry (there are no workgroups).
#[test]
fn quick_bench_on_the_cpu_backend_reports_its_figures() {
    let lines = bench_lines(&["--quick", "--synthetic", "--shape", "tiny", "--json-only", "--backend", "cpu", "--threads", "2"]);
    let adapter = of_kind(&lines, "adapter");
    assert_eq!(adapter[0]["backend"], "cpu");
    assert!(adapter[0]["adapter"].as_str().is_some_and(|s| s.starts_with("CPU") && s.contains("2 threads")), "{}", adapter[0]);
    for kind in ["copy", "read"] {
        positive(of_kind(&lines, kind)[0], "gbps");
    }
    positive(of_kind(&lines, "fma")[0], "gflops");
    let pool = of_kind(&lines, "dispatch_overhead")[0];
    assert_eq!(pool["threads"].as_u64(), Some(2));
    positive(pool, "us_per_dispatch");
    positive(pool, "us_after_idle");

    let matvecs = of_kind(&lines, "matvec");
    for ty in ["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "F32"] {
        let rows: Vec<_> = matvecs.iter().filter(|v| v["type"] == ty).collect();
        assert_eq!(rows.len(), 3, "{ty}: one row per shape");
        for (v, f) in rows.iter().flat_map(|v| ["gbps", "fraction_of_copy", "fraction_of_fma", "cached_gbps"].map(|f| (v, f))) {
            positive(v, f);
        }
    }

    let m = of_kind(&lines, "model");
    assert_eq!(m.len(), 1);
    for f in
        ["prefill_tokens_per_s", "decode_tokens_per_s", "dispatches_per_token", "decode_weight_gbps", "decode_fraction_of_read"]
    {
        positive(m[0], f);
    }
    positive(&m[0]["prompt_cache"], "ttft_cached_seconds");
    assert!(m[0].get("breakdown").is_none(), "the per-family breakdown times GPU dispatches");
    for kind in ["launch", "prefill_launch", "vision_launch"] {
        assert!(of_kind(&lines, kind).is_empty(), "{kind} is GPU launch geometry");
    }
    let vision = of_kind(&lines, "vision");
    assert_eq!(vision.len(), 1);
    assert_eq!(vision[0]["image_tokens"].as_u64(), Some(16));
    for f in ["ms", "gflops", "fraction_of_fma"] {
        positive(vision[0], f);
    }
}

#[test]
fn no_vision_skips_the_vision_encoder() {
    let lines = bench_lines(&["--quick", "--no-kernels", "--no-model", "--no-vision", "--json-only"]);
    assert!(of_kind(&lines, "vision").is_empty());
    assert!(of_kind(&lines, "model").is_empty(), "--no-model skips the default model");
    assert_eq!(of_kind(&lines, "fma").len(), 1);
}

/// `--batch --profile` on the GPU: each batch size's kernels timed with timestamp queries
/// (lavapipe has them), every dispatch of the step counted once per step under its kernel.
#[test]
fn profiled_batch_steps_time_every_kernel() {
    let args = ["--quick", "--synthetic", "--shape", "tiny", "--no-model", "--no-kernels", "--no-vision", "--no-breakdown"];
    let lines = bench_lines(&[&args[..], &["--json-only", "--backend", "gpu", "--batch", "2", "--profile"]].concat());
    for n in [1u64, 2] {
        let kernels: Vec<_> = of_kind(&lines, "batch_profile").into_iter().filter(|v| v["sequences"] == n).collect();
        let name = |v: &Value| v["kernel"].as_str().unwrap_or_default().to_string();
        for v in &kernels {
            positive(v, "ms_per_step");
        }
        let count = |prefix: &str| -> u64 {
            kernels.iter().filter(|v| name(v).starts_with(prefix)).map(|v| v["dispatches_per_step"].as_u64().unwrap()).sum()
        };
        // The tiny model's 2 layers: attention once per layer for all sequences (their caches
        // slots of one KV arena), one product per weight role.
        assert_eq!(count("attention_decode attn_decode"), 2, "{kernels:?}");
        assert_eq!(count("rope rope_qkv_store"), 2, "{kernels:?}");
        assert!(kernels.iter().any(|v| name(v).ends_with("ffn_down.weight")), "weight roles summed over layers: {kernels:?}");
        assert_eq!(count("matvec"), 2 * 5 + 1, "per layer q+k, v, output, gate+up, down; one LM head: {kernels:?}");
    }
}

/// A Qwen3.5 text config as Hugging Face writes it (`text_config`): the numbers the
/// structural figures are checked against.
struct HfQwen35 {
    layers: u64,
    hidden: u64,
    full_attention_interval: u64,
    kv_heads: u64,
    head_dim: u64,
    conv_kernel: u64,
    linear_k_heads: u64,
    linear_v_heads: u64,
    linear_k_dim: u64,
    linear_v_dim: u64,
}

impl HfQwen35 {
    /// f32 recurrent state of every linear-attention layer: the conv keeps its last
    /// `kernel - 1` inputs of q, k and v; the delta rule one `d_k x d_v` matrix per v head.
    fn recurrent_state_bytes(&self) -> u64 {
        let linear = self.layers - self.layers / self.full_attention_interval;
        let conv_channels = 2 * self.linear_k_heads * self.linear_k_dim + self.linear_v_heads * self.linear_v_dim;
        let per_layer = (self.conv_kernel - 1) * conv_channels + self.linear_v_heads * self.linear_k_dim * self.linear_v_dim;
        linear * per_layer * 4
    }

    /// f16 keys and values of the full-attention layers at `ctx` positions.
    fn kv_bytes(&self, ctx: u64) -> u64 {
        (self.layers / self.full_attention_interval) * 2 * ctx * self.kv_heads * self.head_dim * 2
    }
}

#[test]
fn qwen35_structure_of_the_released_sizes() {
    // Qwen/Qwen3.5-{0.8B, 2B, 4B, 9B} text configs (linear heads: 16 q/k, 16 or 32 v, of 128).
    let sizes = [("0.8b", 24, 1024, 2, 16), ("2b", 24, 2048, 2, 16), ("4b", 32, 2560, 4, 32), ("9b", 32, 4096, 4, 32)];
    for (size, layers, hidden, kv_heads, linear_v_heads) in sizes {
        let hf = HfQwen35 {
            layers,
            hidden,
            full_attention_interval: 4,
            kv_heads,
            head_dim: 256,
            conv_kernel: 4,
            linear_k_heads: 16,
            linear_v_heads,
            linear_k_dim: 128,
            linear_v_dim: 128,
        };
        let lines = bench_lines(&["--structure-only", "--shape", &format!("qwen3.5-{size}"), "--json-only"]);
        assert_eq!(lines.len(), 1, "{size}: only the structure line");
        let s = &lines[0];
        assert_eq!(s["kind"], "structure");
        assert_eq!(s["n_embd"].as_u64(), Some(hf.hidden));
        assert_eq!(s["recurrent_layers"].as_u64(), Some(layers * 3 / 4), "{size}: 3 DeltaNet layers per attention layer");
        assert_eq!(s["recurrent_state_bytes"].as_u64(), Some(hf.recurrent_state_bytes()), "{size}");
        assert_eq!(s["kv_context"].as_u64(), Some(4096));
        assert_eq!(s["kv_bytes"].as_u64(), Some(hf.kv_bytes(4096)), "{size}");
        positive(s, "weight_bytes");
    }
    // The 0.8B: 18 layers x (3 x 8192 conv + 16 x 128 x 128) f32 = 19.3 MiB; 6 x 2 x 4096 x 512 x 2 = 48 MiB.
    let s = &bench_lines(&["--structure-only", "--shape", "qwen3.5-0.8b", "--json-only"])[0];
    assert_eq!(s["recurrent_state_bytes"].as_u64(), Some(20_201_472));
    assert_eq!(s["kv_bytes"].as_u64(), Some(50_331_648));
}

#[test]
fn quick_bench_on_tiny_qwen35_reports_structure_run_and_vision() {
    let lines =
        bench_lines(&["--quick", "--no-kernels", "--synthetic", "--shape", "qwen3.5-tiny", "--json-only", "--backend", "gpu"]);
    let structure = of_kind(&lines, "structure");
    assert_eq!(structure.len(), 1);
    let s = structure[0];
    // The tiny shape: 8 layers (6 DeltaNet, 2 attention), 1 KV head of 128; DeltaNet 2 q/k and
    // 4 v heads of 64, conv of 4 taps.
    let hf = HfQwen35 {
        layers: 8,
        hidden: 256,
        full_attention_interval: 4,
        kv_heads: 1,
        head_dim: 128,
        conv_kernel: 4,
        linear_k_heads: 2,
        linear_v_heads: 4,
        linear_k_dim: 64,
        linear_v_dim: 64,
    };
    assert_eq!((s["recurrent_layers"].as_u64(), s["attention_layers"].as_u64()), (Some(6), Some(2)));
    assert_eq!(s["recurrent_state_bytes"].as_u64(), Some(hf.recurrent_state_bytes()));
    assert_eq!(s["kv_bytes"].as_u64(), Some(hf.kv_bytes(4096)));
    assert_eq!(s["kv_bytes_per_token"].as_u64(), Some(hf.kv_bytes(1)));

    // The run: the engine's own allocation agrees with the structure (every weight uploaded
    // in its file type; KV rows of the attention layers only; each recurrent state twice,
    // with the checkpoint the pipelined decode keeps).
    let models = of_kind(&lines, "model");
    assert_eq!(models.len(), 1);
    let m = models[0];
    assert_eq!(m["arch"], "qwen35");
    for f in ["prefill_tokens_per_s", "decode_tokens_per_s", "dispatches_per_token"] {
        positive(m, f);
    }
    assert_eq!(m["weight_bytes_on_gpu"], s["weight_bytes"]);
    assert_eq!(m["state_bytes_per_token"], s["kv_bytes_per_token"]);
    let max_ctx = m["max_ctx"].as_u64().unwrap();
    let expected_state = max_ctx * hf.kv_bytes(1) + 2 * hf.recurrent_state_bytes();
    assert_eq!(m["state_bytes"].as_u64(), Some(expected_state));
    assert_eq!(m["submits_per_token"].as_f64(), Some(1.0));
    assert_eq!(m["host_waits_per_token"].as_f64(), Some(0.0));

    // The decode step: one delta-rule dispatch per DeltaNet layer (`gdn_recurrent`, on CPU
    // adapters `gdn_recurrent_cols`), one attention (and its combine) per attention layer,
    // every dispatch in a family.
    let launch = of_kind(&lines, "launch");
    assert_eq!(launch.len(), 1);
    let families = launch[0]["families"].as_array().expect("families");
    let count = |name: &str| families.iter().find(|f| f["family"] == name).and_then(|f| f["dispatches"].as_u64());
    let recurrent = count("gated_delta_net gdn_recurrent").or(count("gated_delta_net gdn_recurrent_cols"));
    assert_eq!(recurrent, Some(6), "{families:?}");
    assert_eq!(count("attention_decode attn_decode"), Some(2));
    assert_eq!(count("ssm_out"), Some(6));
    assert_eq!(count("attn_output"), Some(2));
    let counted: u64 = families.iter().map(|f| f["dispatches"].as_u64().unwrap()).sum();
    assert_eq!(counted, m["dispatches_per_token"].as_u64().unwrap());

    // The Qwen encoder on one small image: 112x112 is resized up to the processor's
    // 256x256 minimum (16x16 patches of 16, 8x8 merged tokens).
    let vision = of_kind(&lines, "vision");
    assert_eq!(vision.len(), 1);
    let v = vision[0];
    assert_eq!(v["processed"], "256x256");
    assert_eq!((v["patches"].as_u64(), v["image_tokens"].as_u64()), (Some(256), Some(64)));
    assert_eq!(v["head_dim"].as_u64(), Some(64));
    for f in ["seconds", "flops", "weight_bytes", "activation_bytes"] {
        positive(v, f);
    }
    assert_eq!(of_kind(&lines, "vision_launch").len(), 1);
    check_pass_launch(of_kind(&lines, "vision_launch")[0]);
}

#[test]
fn fewer_layers_scale_to_the_full_depth() {
    let args = ["--quick", "--no-kernels", "--no-vision", "--no-breakdown", "--synthetic", "--shape", "tiny", "--json-only"];
    let lines = bench_lines(&[&args[..], &["--layers", "2"]].concat());
    let runs = of_kind(&lines, "model");
    let layers: Vec<_> = runs.iter().map(|v| v["n_layer"].as_u64().unwrap()).collect();
    assert_eq!(layers, [1, 2], "timed at half and all of --layers");
    let scaled = of_kind(&lines, "model_scaled");
    assert_eq!(scaled.len(), 1);
    let s = scaled[0];
    assert_eq!(s["n_layer"].as_u64(), Some(2), "the tiny shape's own depth");
    // At the measured depth the line gives the measured bytes back exactly.
    for key in ["weight_bytes_on_gpu", "state_bytes", "dispatches_per_token"] {
        assert_eq!(s[key].as_f64(), runs[1][key].as_f64(), "{key}");
    }
    positive(s, "decode_tokens_per_s");
    positive(s, "prefill_tokens_per_s");
}

/// Llama 3.2 Vision at tiny size: one 4-tile image through the encoder, its states in the
/// context's cross-attention store, then prefill and decode with the cross layer running.
/// The store's bytes are checked against the shapes (1 cross layer of 2 KV heads of 64, 4
/// tiles of 5 keys, f32) and the encoder's depth is scaled from 2 and 4 of its 6 layers.
#[test]
fn quick_bench_on_tiny_mllama_reports_the_cross_attention_cost_per_image() {
    let args = ["--quick", "--no-kernels", "--no-breakdown", "--synthetic", "--shape", "llama3.2-vision-tiny", "--json-only"];
    let lines = bench_lines(&[&args[..], &["--vision-layers", "4", "--backend", "gpu"]].concat());

    let vision = of_kind(&lines, "cross_vision");
    let depths: Vec<_> = vision.iter().map(|v| v["layers"].as_u64().unwrap()).collect();
    assert_eq!(depths, [2, 4], "the encoder timed at half and all of --vision-layers");
    let (tiles, tile_tokens, text_hidden) = (4u64, 5u64, 256u64);
    for v in &vision {
        assert_eq!((v["tiles"].as_u64(), v["tile_tokens"].as_u64()), (Some(tiles), Some(tile_tokens)));
        assert_eq!(v["states_bytes"].as_u64(), Some(4 * tiles * tile_tokens * text_hidden));
        assert_eq!(v["full_layers"].as_u64(), Some(6));
        positive(v, "seconds");
        positive(v, "weight_bytes");
    }
    assert!(vision[1]["weight_bytes"].as_u64() > vision[0]["weight_bytes"].as_u64(), "two more layers of weights");

    let models = of_kind(&lines, "model");
    assert_eq!(models.len(), 1);
    let m = models[0];
    assert_eq!(m["arch"], "mllama");
    for f in ["prefill_tokens_per_s", "decode_tokens_per_s", "dispatches_per_token", "cross_fill_seconds"] {
        positive(m, f);
    }
    assert_eq!(m["submits_per_token"].as_f64(), Some(1.0));
    assert_eq!(m["host_waits_per_token"].as_f64(), Some(0.0));
    // Keys and values of 20 image tokens x 128 (2 KV heads of 64) f32 for the one cross
    // layer, and the step's mask rows (a u32 per chunk token and tile).
    let chunk = m["prefill_chunk"].as_u64().unwrap();
    let store = 2 * 4 * tiles * tile_tokens * 128 + 4 * chunk * tiles;
    assert_eq!(m["cross_store_bytes"].as_u64(), Some(store));
    // Four self-attention layers keep a KV cache, the cross layer none.
    assert_eq!(m["state_bytes_per_token"].as_u64(), Some(4 * 2 * 128 * 2));

    // The cross layer runs in every decode step: its attention is one dispatch.
    let launch = of_kind(&lines, "launch");
    let families = launch[0]["families"].as_array().expect("families");
    let cross: Vec<_> =
        families.iter().filter(|f| f["family"].as_str().is_some_and(|s| s.starts_with("cross_attention"))).collect();
    assert_eq!(cross.len(), 1, "{families:?}");
    assert_eq!(cross[0]["dispatches"].as_u64(), Some(1));

    let per_image = of_kind(&lines, "cross_attention");
    assert_eq!(per_image.len(), 1);
    let p = per_image[0];
    assert_eq!(p["cross_store_bytes"].as_u64(), Some(store));
    assert_eq!(p["vision_measured_layers"], serde_json::json!([2, 4]));
    let (s2, s4) = (vision[0]["seconds"].as_f64().unwrap(), vision[1]["seconds"].as_f64().unwrap());
    let scaled = s4 + (s4 - s2) / 2.0 * 2.0;
    assert!((p["vision_seconds"].as_f64().unwrap() - scaled).abs() < 1e-9, "the line through both depths at 6 layers");
    assert!((p["seconds_per_image"].as_f64().unwrap() - scaled - m["cross_fill_seconds"].as_f64().unwrap()).abs() < 1e-9);
    assert!(of_kind(&lines, "vision").is_empty(), "no Pixtral or Qwen encoder figures");
}
