//! `webvlm chat` and `webvlm batch`: OpenAI chat-completions requests (JSON) and batches
//! (`{custom_id, body}` JSONL) run natively through the same code as the browser package.
//! Image URLs that are not `data:` URLs are read as file paths.

use std::path::PathBuf;

use clap::Args;
use webvlm::api::{batch, run, ChatRequest};

use crate::args::EngineArgs;
use crate::stdout::{out, outln};
use crate::{open_engine, open_engine_for, read_file, CliResult};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The request, an OpenAI chat-completions body (JSON)
    #[arg(long, value_name = "REQ.json")]
    request: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// The requests, one OpenAI batch line {custom_id, body} each
    #[arg(value_name = "REQUESTS.jsonl")]
    input: PathBuf,
    /// Where to write the result lines [default: stdout]
    #[arg(long, value_name = "RESULTS.jsonl")]
    out: Option<PathBuf>,
    /// Requests run at once, decoding together in batched steps (each takes a context of
    /// `--ctx` tokens, which the memory plan counts) [default: on the CPU backend as many as
    /// the memory plan fits, up to 4; on a GPU 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    parallel: Option<u32>,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn chat(args: &ChatArgs) -> CliResult {
    let json = read_text(&args.request)?;
    let mut engine = open_engine(&args.engine, 1)?;
    let out = match ChatRequest::parse(&json, crate::vocab_size(&engine)) {
        Ok(req) => {
            let result = pollster::block_on(run(&mut engine, &req, &mut |url| read_file(url), None, |chunk| {
                outln!("data: {chunk}");
                None
            }));
            if req.stream {
                outln!("data: [DONE]");
            }
            result
        }
        Err(e) => Err(e),
    };
    match out {
        Ok(completion) if !completion.is_null() => {
            outln!("{completion:#}");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            outln!("{:#}", e.to_json());
            Err(e.message.into())
        }
    }
}

pub fn batch(args: &BatchArgs) -> CliResult {
    let jsonl = read_text(&args.input)?;
    let (mut engine, parallel) = open_engine_for(&args.engine, args.parallel, None)?;
    let mut load = |url: &str| read_file(url);
    let run = batch::run_batch(&mut engine, &jsonl, &mut load, parallel, |i, total, line| {
        let status = if line["error"].is_null() { "ok" } else { "error" };
        eprintln!("[{}/{total}] {}: {status}", i + 1, line["custom_id"].as_str().unwrap_or("?"));
    });
    let lines = pollster::block_on(run);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?,
        None => out!("{text}"),
    }
    let failed = lines.iter().filter(|l| !l["error"].is_null()).count();
    eprintln!("{} requests, {failed} failed", lines.len());
    Ok(())
}

/// A text file's contents (the error names the file).
fn read_text(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}
