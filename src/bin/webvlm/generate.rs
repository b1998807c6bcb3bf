//! `webvlm generate`: text streamed to stdout (with `--tools`, the model's calls printed as
//! JSON after it); `webvlm logits`: a prompt's logits to a .npy file.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::{ArgGroup, Args};
use serde_json::{json, Value};
use webvlm::api::{run, ChatRequest};
use webvlm::chat::{ChatContent, ChatMessage, ContentPart};
use webvlm::engine::{Engine, EngineError, JsonMap, Prompt};
use webvlm::model::ImageFeatures;

use crate::args::{EngineArgs, ImageArgs, SamplingArgs};
use crate::stdout::{out, outln};
use crate::{open_engine, read_file, CliResult};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt text
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    /// Format the prompt with the model's chat template, as one user message (images first)
    #[arg(long)]
    chat: bool,
    /// Extra chat-template variables, a JSON object (vLLM's chat_template_kwargs), e.g.
    /// '{"enable_thinking": false}'
    #[arg(long, value_name = "JSON", requires = "chat")]
    chat_template_kwargs: Option<String>,
    /// No think block: chat-template variable enable_thinking = false (Qwen3, Qwen3.5)
    #[arg(long, requires = "chat")]
    no_think: bool,
    /// Functions the model may call: a JSON file holding OpenAI's `tools` array. The reply's
    /// calls are printed as JSON, `{"tool_calls": [...]}`, after its text
    #[arg(long, value_name = "TOOLS.json", requires = "chat")]
    tools: Option<PathBuf>,
    /// Whether the model may (auto), must (required) or must not (none) call, or the name of
    /// the function it calls
    #[arg(long, value_name = "CHOICE", requires = "tools", default_value = "auto")]
    tool_choice: String,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

impl GenerateArgs {
    /// `--chat-template-kwargs` checked as the API checks `chat_template_kwargs`, with
    /// `--no-think` setting `enable_thinking` to false.
    fn template_kwargs(&self) -> Result<Option<JsonMap>, String> {
        let value = match &self.chat_template_kwargs {
            Some(json) => Some(serde_json::from_str(json).map_err(|e| format!("--chat-template-kwargs: {e}"))?),
            None => None,
        };
        let mut kwargs = webvlm::api::chat_template_kwargs(value).map_err(|e| format!("--chat-template-kwargs: {e}"))?;
        if self.no_think {
            kwargs.get_or_insert_with(JsonMap::new).insert("enable_thinking".into(), false.into());
        }
        Ok(kwargs)
    }
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "tokens"])))]
pub struct LogitsArgs {
    /// The prompt text
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
    /// The prompt as token ids (images in the expanded layout)
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    tokens: Vec<u32>,
    /// Where to write the logits, an f32 array [tokens, vocab]
    #[arg(long, value_name = "OUT.npy")]
    out: PathBuf,
    /// Position of the first token (RoPE and attention), as after that many cached tokens
    #[arg(long, value_name = "N", default_value_t = 0)]
    pos_offset: u32,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn generate(args: &GenerateArgs) -> CliResult {
    let kwargs = args.template_kwargs()?;
    args.images.check(&args.engine);
    if let Some(tools) = &args.tools {
        return generate_with_tools(args, tools, kwargs);
    }
    let mut engine = open_engine(&args.engine, 1)?;
    let prompt = text_prompt(&mut engine, &args.images.images, args.chat, &args.prompt, kwargs.as_ref())?;
    let opts = args.sampling.options(engine.sampling_defaults());
    let out = pollster::block_on(engine.generate_prompt(&prompt, &opts, |step| {
        out!("{}", step.text);
        None
    }))?;
    outln!();
    let n = out.tokens.len().max(1) as f64;
    // Sampled text can be repeated with --seed; greedy text does not depend on it.
    let seed = if opts.sampling.temperature > 0.0 { format!("; seed {}", out.seed) } else { String::new() };
    eprintln!(
        "[{} prompt tokens ({} images), {} generated ({:?}); first token {:.0} ms; decode {:.1} tokens/s{seed}]",
        out.prompt_tokens,
        prompt.images.len(),
        out.tokens.len(),
        out.finish,
        out.time_to_first_token * 1e3,
        (n - 1.0) / out.decode_seconds.max(1e-9)
    );
    Ok(())
}

/// `generate --tools`: the prompt as a chat request with the tools, run through the API (the
/// call syntax, its grammar and parser are the server's); the text streamed, the calls after.
fn generate_with_tools(args: &GenerateArgs, tools: &Path, kwargs: Option<JsonMap>) -> CliResult {
    let tools: Value = serde_json::from_slice(&read_file(tools)?).map_err(|e| format!("{}: {e}", tools.display()))?;
    let choice = match args.tool_choice.as_str() {
        "auto" | "required" | "none" => json!(args.tool_choice),
        name => json!({ "type": "function", "function": { "name": name } }),
    };
    let mut content: Vec<Value> =
        args.images.images.iter().map(|f| json!({ "type": "image_url", "image_url": { "url": f } })).collect();
    content.push(json!({ "type": "text", "text": args.prompt }));
    let body = json!({
        "messages": [{ "role": "user", "content": content }],
        "tools": tools, "tool_choice": choice, "chat_template_kwargs": kwargs, "stream": true,
    });
    let mut engine = open_engine(&args.engine, 1)?;
    let mut request = ChatRequest::from_value(body, crate::vocab_size(&engine)).map_err(|e| format!("--tools: {e}"))?;
    // The command line's sampling (greedy unless asked), not the API's defaults.
    let base = args.sampling.base();
    request.requested = args.sampling.requested();
    request.options.sampling.temperature = base.sampling.temperature;
    request.options.sampling.seed = base.sampling.seed;
    request.options.stop = base.stop;
    request.options.max_tokens = base.max_tokens;
    let completion = pollster::block_on(run(&mut engine, &request, &mut |url| read_file(url), None, |chunk| {
        out!("{}", chunk.pointer("/choices/0/delta/content").and_then(Value::as_str).unwrap_or(""));
        None
    }))
    .map_err(|e| e.message)?;
    outln!();
    let choice = &completion["choices"][0];
    if let Some(calls) = choice["message"].get("tool_calls") {
        outln!("{:#}", json!({ "tool_calls": calls }));
    }
    let usage = &completion["usage"];
    eprintln!(
        "[{} prompt tokens, {} generated ({}); first token {:.0} ms]",
        usage["prompt_tokens"],
        usage["completion_tokens"],
        choice["finish_reason"].as_str().unwrap_or("?"),
        usage["timings"]["time_to_first_token"].as_f64().unwrap_or(0.0) * 1e3,
    );
    Ok(())
}

pub fn logits(args: &LogitsArgs) -> CliResult {
    args.images.check(&args.engine);
    let mut engine = open_engine(&args.engine, 1)?;
    let files = &args.images.images;
    let prompt = match &args.prompt {
        Some(text) => text_prompt(&mut engine, files, false, text, None)?,
        None => Prompt { tokens: args.tokens.clone(), images: image_features(&mut engine, files)? },
    };
    engine.set_position_offset(args.pos_offset);
    let values = pollster::block_on(engine.logits(&prompt))?;
    let (n, vocab) = (prompt.tokens.len(), crate::vocab_size(&engine));
    let file = std::io::BufWriter::new(std::fs::File::create(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?);
    webvlm::npy::write_f32(file, &[n, vocab], &values)?;
    eprintln!("wrote logits [{n}, {vocab}] to {}", args.out.display());
    Ok(())
}

fn image_features(engine: &mut Engine, files: &[PathBuf]) -> Result<Vec<Rc<ImageFeatures>>, EngineError> {
    files.iter().map(|f| engine.image_features(&read_file(f)?, None)).collect()
}

/// The prompt of `generate` / `logits --prompt`: chat or plain text, with the `--image`s. As
/// plain text each `[IMG]` in `text` is one image, or all images go before the text when it
/// has none.
fn text_prompt(
    engine: &mut Engine,
    files: &[PathBuf],
    chat: bool,
    text: &str,
    kwargs: Option<&JsonMap>,
) -> Result<Prompt, EngineError> {
    if chat {
        // Plain string content unless there are images: not every template takes part lists.
        let message = if files.is_empty() {
            ChatMessage::text("user", text)
        } else {
            let url = |f: &PathBuf| ContentPart::Image { url: Some(f.to_string_lossy().into_owned()) };
            let mut parts: Vec<ContentPart> = files.iter().map(url).collect();
            parts.push(ContentPart::Text(text.to_string()));
            ChatMessage { role: "user".into(), content: ChatContent::Parts(parts), ..ChatMessage::default() }
        };
        return engine.chat_prompt(&[message], None, kwargs, &mut |url| read_file(url));
    }
    let images = image_features(engine, files)?;
    let mut tokens = engine.text_tokens(text)?;
    if let Some(vision) = engine.vision() {
        tokens = vision.with_leading_images(tokens, images.len(), engine.tokenizer().bos_id());
    }
    engine.prompt_with_images(&tokens, images)
}
