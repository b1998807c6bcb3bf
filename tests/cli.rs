//! The `webvlm` command line: help for every subcommand, typed values and conflicting flags
//! rejected by the parser (before any model or GPU work), output into a closed pipe
//! (`webvlm info | head -n 1`) ending quietly, `info`, `chat` and `batch` on Qwen3.5, and
//! `info` and `generate` on a Hugging Face folder.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use crate::common;
use common::fixture;

fn webvlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webvlm")).args(args).output().expect("the webvlm binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `args`, which the parser must reject (status 2) with a message holding each of `needles`.
fn rejected(args: &[&str], needles: &[&str]) {
    let out = webvlm(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "webvlm {args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "webvlm {args:?}: {n:?} not in\n{stderr}");
    }
}

const ENGINE_FLAGS: &[&str] = &[
    "--model",
    "--quant",
    "--mmproj",
    "--vision-quant",
    "--ctx",
    "--chunk",
    "--f16",
    "--no-f16",
    "--kv-f32",
    "--image-max-edge",
    "--gpu-memory",
];
/// Where a model runs: every command that loads one takes these.
const DEVICE_FLAGS: &[&str] = &["--backend", "--threads", "--cpu-mode", "--geometry"];
const SAMPLING_FLAGS: &[&str] =
    &["--max-tokens", "--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "--seed", "--stop"];

fn subcommands() -> Vec<(&'static str, Vec<&'static str>)> {
    let with = |own: &[&'static str], groups: &[&[&'static str]]| [own, &groups.concat()].concat();
    vec![
        (
            "generate",
            with(
                &["--prompt", "--chat", "--chat-template-kwargs", "--no-think", "--tools", "--tool-choice", "--image"],
                &[ENGINE_FLAGS, DEVICE_FLAGS, SAMPLING_FLAGS],
            ),
        ),
        ("logits", with(&["--prompt", "--tokens", "--out", "--pos-offset", "--image"], &[ENGINE_FLAGS, DEVICE_FLAGS])),
        ("chat", with(&["--request"], &[ENGINE_FLAGS, DEVICE_FLAGS])),
        ("batch", with(&["REQUESTS.jsonl", "--out"], &[ENGINE_FLAGS, DEVICE_FLAGS])),
        (
            "serve",
            with(
                &[
                    "--host",
                    "--port",
                    "--api-key",
                    "--cors",
                    "--max-body-bytes",
                    "--max-image-bytes",
                    "--queue",
                    "--served-model-name",
                ],
                &[ENGINE_FLAGS, DEVICE_FLAGS],
            ),
        ),
        ("info", with(&["--model", "--ctx", "--plan", "--mmproj", "--gpu-memory"], &[DEVICE_FLAGS])),
        ("split", vec!["--model", "--parts", "--out"]),
        ("convert", vec!["--model", "--quant", "--out"]),
        (
            "soak",
            with(
                &[
                    "--requests",
                    "--seed",
                    "--model",
                    "--mmproj",
                    "--fixtures",
                    "--ctx",
                    "--max-tokens",
                    "--warmup",
                    "--sample-every",
                    "--replay",
                    "--tolerance",
                    "--plan",
                ],
                &[DEVICE_FLAGS],
            ),
        ),
        ("synthetic", vec!["--out", "--mmproj-out", "--shape", "--seed", "--zeros", "--vocab-from"]),
        (
            "bench",
            with(
                &[
                    "--model",
                    "--synthetic",
                    "--shape",
                    "--quick",
                    "--json-only",
                    "--prompt-tokens",
                    "--decode-tokens",
                    "--prefill-reps",
                    "--reps",
                    "--seed",
                    "--no-kernels",
                    "--breakdown",
                    "--no-breakdown",
                    "--no-model",
                    "--no-f16",
                    "--vision",
                    "--no-vision",
                    "--vision-sizes",
                    "--layers",
                    "--vision-layers",
                    "--vision-quant",
                ],
                &[DEVICE_FLAGS],
            ),
        ),
    ]
}

#[test]
fn help_lists_every_subcommand() {
    for help in [&["--help"][..], &["help"], &["-h"]] {
        let out = webvlm(help);
        assert!(out.status.success(), "{help:?}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        for (sub, _) in subcommands() {
            assert!(stdout.contains(sub), "{help:?}: no {sub} in\n{stdout}");
        }
    }
    // No subcommand: the help, as a usage error.
    let out = webvlm(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("generate"), "{}", text(&out.stderr));
}

#[test]
fn each_subcommand_help_describes_its_flags() {
    for (sub, flags) in subcommands() {
        let out = webvlm(&[sub, "--help"]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{sub} --help: {}", text(&out.stderr));
        for flag in flags {
            // `  --flag <VALUE>  what it does` (a positional argument: `  <NAME>  what it does`).
            let line =
                stdout.lines().find(|l| [flag.to_string(), format!("<{flag}>")].iter().any(|f| l.trim_start().starts_with(f)));
            let line = line.unwrap_or_else(|| panic!("{sub} --help: no {flag} in\n{stdout}"));
            let words = line.split_whitespace().filter(|w| !w.starts_with(['-', '<', '['])).count();
            assert!(words >= 2, "{sub} --help: {flag} has no description: {line:?}");
        }
        assert!(webvlm(&[sub, "-h"]).status.success(), "{sub} -h");
        assert!(webvlm(&["help", sub]).status.success(), "help {sub}");
    }
    let synthetic = text(&webvlm(&["synthetic", "--help"]).stdout);
    assert!(
        synthetic.contains(
            "[possible values: 3b, tiny, mistral-small-24b, qwen3.5-0.8b, qwen3.5-2b, qwen3.5-4b, qwen3.5-9b, qwen3.5-tiny, \
             llama3.2-11b-vision, llama3.2-vision-tiny]"
        ),
        "{synthetic}"
    );
}

#[test]
fn bad_values_name_the_flag() {
    let m = ["--model", "m.gguf"];
    rejected(&[&["generate", "--prompt", "hi", "--max-tokens", "abc"][..], &m].concat(), &["--max-tokens", "abc"]);
    rejected(&[&["generate", "--prompt", "hi", "--temperature", "warm"][..], &m].concat(), &["--temperature"]);
    rejected(&["synthetic", "--out", "x.gguf", "--shape", "7b"], &["--shape", "7b", "3b", "tiny"]);
    rejected(&["bench", "--shape", "huge"], &["--shape", "huge"]);
    rejected(&["bench", "--vision-quant", "q2_k"], &["--vision-quant", "q2_k", "q8_0"]);
    rejected(&[&["chat", "--request", "r.json", "--vision-quant", "q3"][..], &m].concat(), &["--vision-quant"]);
    rejected(&["bench", "--vision-sizes", "512,0"], &["--vision-sizes", "\"0\""]);
    rejected(&[&["logits", "--tokens", "1,x,3", "--out", "o.npy"][..], &m].concat(), &["--tokens", "x"]);
    rejected(&["info", "--model", "m.gguf", "--ctx", "1e3"], &["--ctx", "1e3"]);
    rejected(&["split", "--model", "m.gguf", "--out", "p", "--parts", "two"], &["--parts"]);
    rejected(&["info", "--model", "m.gguf", "--bogus"], &["--bogus"]);
}

#[test]
fn missing_and_conflicting_flags_are_rejected() {
    let m = ["--model", "m.gguf"];
    rejected(&["generate", "--prompt", "hi"], &["--model"]);
    rejected(&[&["logits", "--out", "o.npy"][..], &m].concat(), &["--prompt", "--tokens"]);
    rejected(&[&["logits", "--prompt", "hi", "--tokens", "1,2", "--out", "o.npy"][..], &m].concat(), &["cannot be used with"]);
    rejected(&[&["generate", "--prompt", "hi", "--image", "a.png"][..], &m].concat(), &["--mmproj"]);
    rejected(&["bench", "--breakdown", "--no-breakdown"], &["--breakdown", "--no-breakdown", "cannot be used with"]);
    rejected(&["bench", "--vision", "--no-vision"], &["--vision", "--no-vision", "cannot be used with"]);
    rejected(
        &[&["generate", "--prompt", "hi", "--f16", "--no-f16"][..], &m].concat(),
        &["--f16", "--no-f16", "cannot be used with"],
    );
    rejected(
        &[&["generate", "--prompt", "hi", "--no-f16", "--kv-f32"][..], &m].concat(),
        &["--no-f16", "--kv-f32", "cannot be used with"],
    );
    rejected(&["synthetic", "--out", "x.gguf", "--seed", "3", "--zeros"], &["--seed", "--zeros", "cannot be used with"]);
    rejected(&[&["batch"][..], &m].concat(), &["REQUESTS.jsonl"]);
    rejected(&["chat", "--request", "r.json"], &["--model"]);
    rejected(&[&["generate", "--prompt", "hi", "--no-think"][..], &m].concat(), &["--chat"]);
    rejected(&[&["generate", "--prompt", "hi", "--chat-template-kwargs", "{}"][..], &m].concat(), &["--chat"]);
}

/// `--chat-template-kwargs` is checked as the API checks `chat_template_kwargs`, before the
/// model is opened.
#[test]
fn chat_template_kwargs_flag_is_checked() {
    for (json, needle) in
        [("[1]", "must be a JSON object"), ("{oops", "--chat-template-kwargs"), (r#"{"messages": 1}"#, "may not set")]
    {
        let out = webvlm(&["generate", "--model", "missing.gguf", "--prompt", "hi", "--chat", "--chat-template-kwargs", json]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{json}");
        assert!(stderr.contains(needle) && !stderr.contains("missing.gguf"), "{json}: {stderr}");
    }
}

/// Whether `stderr` reads like a failure: a panic or an error message.
fn complains(stderr: &str) -> bool {
    let s = stderr.to_lowercase();
    s.contains("panicked") || s.contains("error") || s.contains("broken pipe")
}

/// `webvlm info | head -n 1`: the first line arrives, the reader goes, the program ends quietly.
#[test]
fn info_into_head_ends_quietly() {
    let model = fixture("tiny_mistral3_b/model.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_webvlm"))
        .args(["info", "--model", model.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("webvlm runs");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("file:"), "{first:?}");
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success() && !complains(&stderr), "{:?}: {stderr}", out.status);
}

/// Every printing subcommand whose stdout is closed before it writes (the reader gone at once)
/// ends with status 0 and nothing on stderr but its own notes.
#[test]
fn generate_draws_a_seed_per_run_and_prints_it() {
    let tiny = fixture("tiny_mistral3_tekken/model.gguf");
    let run = |extra: &[&str]| {
        let base = ["generate", "--model", tiny.to_str().unwrap(), "--prompt", "hi", "--max-tokens", "8", "--ctx", "256"];
        let out = webvlm(&[&base[..], extra].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        let seed = stderr.rsplit_once("; seed ").map(|(_, s)| s.trim_end().trim_end_matches(']').to_string());
        (text(&out.stdout), seed)
    };
    let (_, greedy_seed) = run(&[]);
    assert_eq!(greedy_seed, None, "greedy decoding has no seed to print");
    let (first, seed) = run(&["--temperature", "1"]);
    let seed = seed.expect("a sampled run prints its seed");
    let (_, other) = run(&["--temperature", "1"]);
    assert_ne!(Some(&seed), other.as_ref(), "each run draws its own seed");
    // The printed seed repeats the run.
    assert_eq!(run(&["--temperature", "1", "--seed", &seed]), (first, Some(seed.clone())));
}

/// `generate --tools`: a required call is printed as JSON after the text, with arguments that
/// hold the tool's schema; `none` prints no calls; a tools file that is not OpenAI's `tools`
/// is refused naming the field.
#[test]
fn generate_with_tools_prints_the_calls_as_json() {
    let tiny = fixture("tiny_mistral3_tekken/model.gguf");
    let dir = std::env::temp_dir().join(format!("webvlm-cli-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = dir.join("tools.json");
    let schema = r#"{"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"]}"#;
    std::fs::write(&tools, format!(r#"[{{"type": "function", "function": {{"name": "get_weather", "parameters": {schema}}}}}]"#))
        .unwrap();
    let run = |choice: &str| {
        let args = [
            "generate",
            "--model",
            tiny.to_str().unwrap(),
            "--chat",
            "--prompt",
            "Weather?",
            "--tools",
            tools.to_str().unwrap(),
            "--tool-choice",
            choice,
            "--temperature",
            "1",
            "--seed",
            "3",
            "--max-tokens",
            "60",
            "--ctx",
            "1024",
            "--backend",
            "cpu",
        ];
        webvlm(&args)
    };
    let out = run("required");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let json_at = stdout.find("{\n").unwrap_or_else(|| panic!("no JSON in {stdout:?}"));
    let printed: serde_json::Value = serde_json::from_str(&stdout[json_at..]).unwrap();
    let calls = printed["tool_calls"].as_array().unwrap();
    assert!(!calls.is_empty());
    for call in calls {
        assert_eq!(call["function"]["name"], "get_weather");
        let args: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(["c", "f"].contains(&args["unit"].as_str().unwrap()), "{args}");
    }
    assert!(text(&out.stderr).contains("(tool_calls)"), "{}", text(&out.stderr));

    let out = run("none");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("tool_calls"));

    std::fs::write(&tools, r#"[{"type": "function", "function": {"name": "bad name"}}]"#).unwrap();
    let out = run("auto");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--tools") && text(&out.stderr).contains("name"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let tiny = fixture("tiny_mistral3_tekken/model.gguf");
    let tiny = tiny.to_str().unwrap();
    let request = common::temp_path("cli-stream-request.json");
    let body = r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true}"#;
    std::fs::write(&request, body).unwrap();
    let batch = common::temp_path("cli-batch.jsonl");
    std::fs::write(&batch, format!("{{\"custom_id\": \"a\", \"body\": {body}}}\n")).unwrap();
    let cases: [&[&str]; 5] = [
        &["info", "--model", tiny],
        &["generate", "--model", tiny, "--prompt", "hi", "--max-tokens", "3", "--ctx", "256"],
        &["chat", "--model", tiny, "--request", request.to_str().unwrap(), "--ctx", "256"],
        &["batch", batch.to_str().unwrap(), "--model", tiny, "--ctx", "256"],
        &["bench", "--quick", "--json-only", "--no-kernels", "--no-model", "--no-vision"],
    ];
    for args in cases {
        let mut child = Command::new(env!("CARGO_BIN_EXE_webvlm"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("webvlm runs");
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        // `batch` reports each request's status ("ok" / "error") on stderr, its own notes.
        let stderr: String = stderr.lines().filter(|l| !l.starts_with('[') && !l.contains("failed")).collect();
        assert!(out.status.success() && !complains(&stderr), "webvlm {args:?}: {:?}\n{stderr}", out.status);
    }
}

/// The tiny Qwen3.5 VLM through the CLI: `info` shows the hybrid layer pattern; `chat` answers
/// a request with an image and thinking off (no `reasoning_content`); `batch` gives the same
/// answer for the same request, and a request with thinking on (the template's default) puts
/// what it generates in `reasoning_content`.
#[test]
fn qwen35_info_chat_and_batch() {
    let dir = fixture("tiny_qwen35_a");
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let info = webvlm(&["info", "--model", &path("model.gguf")]);
    assert!(text(&info.stdout).contains("layer pattern: LLLF  (3 Gated DeltaNet, 1 full attention)"), "{}", text(&info.stdout));

    let image = serde_json::json!({ "type": "image_url", "image_url": { "url": path("img_64x96.png") } });
    let no_think = serde_json::json!({
        "messages": [{ "role": "user", "content": [image, { "type": "text", "text": "What is it?" }] }],
        "max_tokens": 5, "temperature": 0, "chat_template_kwargs": { "enable_thinking": false },
    });
    let think = serde_json::json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 3, "temperature": 0 });
    let request = common::temp_path("qwen35-cli-request.json");
    std::fs::write(&request, no_think.to_string()).unwrap();
    let batch = common::temp_path("qwen35-cli-batch.jsonl");
    std::fs::write(
        &batch,
        format!(
            "{}\n{}\n",
            serde_json::json!({ "custom_id": "a", "body": no_think }),
            serde_json::json!({ "custom_id": "b", "body": think })
        ),
    )
    .unwrap();
    let model = [
        "--model",
        &path("model.gguf"),
        "--mmproj",
        &path("mmproj.gguf"),
        "--image-min-area",
        "1024",
        "--image-max-area",
        "65536",
    ];

    let out = webvlm(&[&["chat", "--request", request.to_str().unwrap()][..], &model].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 6 image tokens (3 x 2 merged patches) besides the text.
    assert_eq!(reply["usage"]["prompt_tokens"], 29, "{reply}");
    assert!(reply["choices"][0]["message"]["reasoning_content"].is_null(), "{reply}");

    let out = webvlm(&[&["batch", batch.to_str().unwrap()][..], &model].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let message = |i: usize| &lines[i]["response"]["body"]["choices"][0]["message"];
    assert_eq!(message(0)["content"], reply["choices"][0]["message"]["content"]);
    assert_eq!(message(1)["content"], "", "{}", lines[1]);
    assert!(message(1)["reasoning_content"].as_str().is_some_and(|r| !r.is_empty()), "{}", lines[1]);
}

/// `generate` resolves its sampling settings as the chat API does: a flag not given takes the
/// model's published default (`tiny_llama_hf`: temperature 0.6, top-k 40, top-p 0.9, repetition
/// penalty 1.1, in its `generation_config.json` and as `general.sampling.*` in its GGUF), so
/// with one seed `generate --chat` writes what `chat` answers to the same message.
#[test]
fn generate_takes_the_models_sampling_defaults_as_chat_does() {
    let dir = fixture("tiny_llama_hf");
    let request = common::temp_path("cli-defaults-request.json");
    let body = serde_json::json!({ "messages": [{ "role": "user", "content": "Hello" }], "max_tokens": 8, "seed": 11 });
    std::fs::write(&request, body.to_string()).unwrap();
    for model in [dir.clone(), dir.join("model.gguf")] {
        let model = model.to_str().unwrap();
        let generated =
            webvlm(&["generate", "--model", model, "--chat", "--prompt", "Hello", "--max-tokens", "8", "--seed", "11"]);
        assert!(generated.status.success(), "{}", text(&generated.stderr));
        assert!(text(&generated.stderr).contains("; seed 11]"), "sampled, not greedy: {}", text(&generated.stderr));
        let chat = webvlm(&["chat", "--model", model, "--request", request.to_str().unwrap()]);
        assert!(chat.status.success(), "{}", text(&chat.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&chat.stdout).unwrap();
        let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(text(&generated.stdout).strip_suffix('\n'), Some(content), "{model}");
        // An explicit flag still wins: greedy prints no seed.
        let greedy = webvlm(&["generate", "--model", model, "--prompt", "Hello", "--max-tokens", "2", "--temperature", "0"]);
        assert!(greedy.status.success() && !text(&greedy.stderr).contains("seed"), "{}", text(&greedy.stderr));
    }
}

/// A Hugging Face folder as `--model` (`tiny_llama_hf`): `info` reads its config and
/// safetensors; a greedy chat `generate` writes what the GGUF llama.cpp converted from the
/// same folder writes, and with `--quant q8_0` what the converter's Q8_0 GGUF writes.
#[test]
fn hf_folder_info_and_generate() {
    let dir = fixture("tiny_llama_hf");
    let folder = dir.to_str().unwrap();
    let info = webvlm(&["info", "--model", folder]);
    let stdout = text(&info.stdout);
    assert!(info.status.success(), "{}", text(&info.stderr));
    for needle in ["architecture:  llama", "heads:         4 query, 2 key/value, head_dim 16", "BF16", "tokenizer.json"] {
        assert!(stdout.contains(needle), "{needle:?} not in\n{stdout}");
    }
    let generate = |model: &str, quant: &str| {
        let args = [
            "generate",
            "--model",
            model,
            "--quant",
            quant,
            "--chat",
            "--prompt",
            "Hello",
            "--max-tokens",
            "6",
            "--temperature",
            "0",
        ];
        let out = webvlm(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("6 generated"), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(generate(folder, "keep"), generate(dir.join("model.gguf").to_str().unwrap(), "keep"));
    assert_eq!(generate(folder, "q8_0"), generate(dir.join("model_q8_0.gguf").to_str().unwrap(), "keep"));
}

/// `--backend auto` (the default) takes the CPU backend where the only GPU adapter is a
/// software one and says so; `--backend gpu` and `--backend cpu` take what they name, and all
/// three give the same greedy text on the tiny model (CPU in exact mode).
#[test]
fn backend_auto_takes_the_cpu_only_on_a_software_adapter() {
    let model = fixture("tiny_mistral3_b").join("model.gguf");
    let run = |backend: &[&str]| {
        let args = [
            &["generate", "--model", model.to_str().unwrap(), "--prompt", "Hello", "--max-tokens", "8", "--kv-f32"][..],
            backend,
        ];
        let out = webvlm(&args.concat());
        assert!(out.status.success(), "{backend:?}: {}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr).contains("running on the CPU backend"))
    };
    let (auto, auto_noted) = run(&["--cpu-mode", "exact"]);
    assert_eq!(auto_noted, common::auto_takes_the_cpu(), "--backend auto's note");
    let (gpu, gpu_noted) = run(&["--backend", "gpu"]);
    let (cpu, cpu_noted) = run(&["--backend", "cpu", "--cpu-mode", "exact"]);
    assert!(!gpu_noted && !cpu_noted, "only auto explains its choice");
    assert_eq!((&auto, &cpu), (&gpu, &gpu), "the same greedy text on every backend");
}

/// `info` names the backend a model would run on and why; `--plan` plans on it: the GPU's
/// adapter and f16 KV cache, or the CPU backend's RAM (the budget: the memory available now)
/// and its mode's KV cache (f16 fast, f32 exact).
#[test]
fn info_plans_on_the_backend_it_would_run_on() {
    let model = fixture("tiny_mistral3_b").join("model.gguf");
    let plan = |backend: &[&str]| {
        let model = model.to_str().unwrap();
        let out = webvlm(&[&["info", "--model", model, "--plan", "--ctx", "64", "--backend"], backend].concat());
        assert!(out.status.success(), "{backend:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let cpu = plan(&["cpu"]);
    assert!(cpu.contains("backend:       cpu on CPU (") && cpu.contains("(--backend cpu)"), "{cpu}");
    assert!(cpu.contains("RAM of the CPU backend") && cpu.contains("bytes, F16)") && cpu.contains("fits: yes"), "{cpu}");
    let exact = plan(&["cpu", "--cpu-mode", "exact"]);
    assert!(exact.contains("bytes, F32)"), "{exact}");
    let budget: f64 = cpu.split("budget").nth(1).and_then(|b| b.split_whitespace().next()).and_then(|b| b.parse().ok()).unwrap();
    assert!(budget > 0.0, "the available RAM: {cpu}");
    let gpu = plan(&["gpu"]);
    assert!(gpu.contains("memory plan:   adapter") && gpu.contains("F16") && gpu.contains("(--backend gpu)"), "{gpu}");
    assert!(gpu.contains("budget         unknown"), "{gpu}");
}
