//! `webvlm chat` and `webvlm batch`: OpenAI chat-completions requests (JSON) and batches
//! (`{custom_id, body}` JSONL) run natively through the same code as the browser package.
//! Image URLs that are not `data:` URLs are read as file paths.

use std::io::Write;

use webvlm::api::{batch, run, ChatRequest};

use crate::{open_engine, read_file, CliResult, Flags};

/// Engine flags shared with `generate`.
const ENGINE_FLAGS: &[&str] = &["model", "mmproj", "vision-quant", "image-max-edge", "ctx", "chunk", "f16"];

pub fn chat(args: &[String]) -> CliResult {
    let flags = Flags::parse(args, &["f16"])?;
    flags.only(&[ENGINE_FLAGS, &["request"]].concat())?;
    let json = std::fs::read_to_string(flags.require("request")?)?;
    let mut engine = open_engine(&flags)?;
    let out = match ChatRequest::parse(&json, engine.decoder.cfg.vocab as usize) {
        Ok(req) => {
            let mut stdout = std::io::stdout();
            let result = pollster::block_on(run(&mut engine, &req, &mut |url| read_file(url), None, |chunk| {
                let _ = writeln!(stdout, "data: {chunk}");
                None
            }));
            if req.stream {
                println!("data: [DONE]");
            }
            result
        }
        Err(e) => Err(e),
    };
    match out {
        Ok(completion) if !completion.is_null() => {
            println!("{completion:#}");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            println!("{:#}", e.to_json());
            Err(e.message.into())
        }
    }
}

pub fn batch(args: &[String]) -> CliResult {
    let (input, rest) = match args.split_first() {
        Some((path, rest)) if !path.starts_with("--") => (path.as_str(), rest),
        _ => return Err(format!("usage: webvlm batch REQUESTS.jsonl --model M.gguf ...\n{}", crate::USAGE).into()),
    };
    let flags = Flags::parse(rest, &["f16"])?;
    flags.only(&[ENGINE_FLAGS, &["out"]].concat())?;
    let jsonl = std::fs::read_to_string(input)?;
    let mut engine = open_engine(&flags)?;
    let lines = pollster::block_on(batch::run_batch(&mut engine, &jsonl, &mut |url| read_file(url), |i, total, line| {
        let status = if line["error"].is_null() { "ok" } else { "error" };
        eprintln!("[{}/{total}] {}: {status}", i + 1, line["custom_id"].as_str().unwrap_or("?"));
    }));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    match flags.get("out") {
        Some(path) => std::fs::write(path, text)?,
        None => print!("{text}"),
    }
    let failed = lines.iter().filter(|l| !l["error"].is_null()).count();
    eprintln!("{} requests, {failed} failed", lines.len());
    Ok(())
}
