//! A batch input file checked as OpenAI checks it before running anything: every non-blank
//! line a JSON object `{custom_id, method: "POST", url: <the batch's endpoint>, body: {...}}`
//! with a unique `custom_id`. Problems are OpenAI's `BatchError` objects
//! (`{code, message, param, line}`, lines counted from 1); a file with any fails its batch.
//! Request bodies are checked when their line runs (a bad body fails that line only).

use std::collections::HashSet;

use serde_json::{json, Value};

/// Most requests one batch may hold (OpenAI's limit).
const MAX_LINES: usize = 50_000;

/// One checked input line.
#[derive(Debug)]
pub struct InputLine {
    pub custom_id: String,
    pub body: Value,
}

/// The file's requests, or every problem found (each a `BatchError` object).
pub fn parse_input(content: &[u8], endpoint: &str) -> Result<Vec<InputLine>, Vec<Value>> {
    let text = std::str::from_utf8(content)
        .map_err(|_| vec![batch_error("invalid_file_format", "the file is not UTF-8", None, None)])?;
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (index, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match parse_line(raw, endpoint) {
            Ok(line) if !seen.insert(line.custom_id.clone()) => {
                let message = format!("the custom_id {:?} is used by an earlier line", line.custom_id);
                errors.push(batch_error("duplicate_custom_id", &message, Some("custom_id"), Some(index + 1)));
            }
            Ok(line) => lines.push(line),
            Err((code, param, message)) => errors.push(batch_error(code, &message, Some(param), Some(index + 1))),
        }
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(batch_error("empty_file", "the input file holds no requests", None, None));
    }
    if lines.len() > MAX_LINES {
        let message = format!("the input file holds {} requests; a batch may hold at most {MAX_LINES}", lines.len());
        errors.push(batch_error("too_many_requests", &message, None, None));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// A line's problem: its code, the field at fault and a message.
type LineError = (&'static str, &'static str, String);

fn parse_line(raw: &str, endpoint: &str) -> Result<InputLine, LineError> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(raw) else {
        return Err(("invalid_json_line", "line", "the line is not a JSON object".into()));
    };
    let custom_id = match fields.remove("custom_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return Err(("missing_required_parameter", "custom_id", "each line needs a non-empty string custom_id".into())),
    };
    match fields.remove("method") {
        Some(Value::String(m)) if m == "POST" => {}
        _ => return Err(("invalid_method", "method", "method must be \"POST\"".into())),
    }
    match fields.remove("url") {
        Some(Value::String(u)) if u == endpoint => {}
        _ => return Err(("invalid_url", "url", format!("url must be {endpoint:?}, the batch's endpoint"))),
    }
    let body = match fields.remove("body") {
        Some(body @ Value::Object(_)) => body,
        _ => return Err(("missing_required_parameter", "body", "each line needs a request object in body".into())),
    };
    if let Some(name) = fields.keys().next() {
        return Err(("unknown_parameter", "line", format!("unknown field {name}")));
    }
    Ok(InputLine { custom_id, body })
}

fn batch_error(code: &str, message: &str, param: Option<&str>, line: Option<usize>) -> Value {
    json!({ "code": code, "message": message, "param": param, "line": line })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "/v1/chat/completions";

    fn line(id: &str) -> String {
        json!({ "custom_id": id, "method": "POST", "url": URL, "body": { "messages": [] } }).to_string()
    }

    #[test]
    fn good_lines_are_read_in_order() {
        let file = format!("{}\n\n{}\n", line("a"), line("b"));
        let lines = parse_input(file.as_bytes(), URL).unwrap();
        let ids: Vec<&str> = lines.iter().map(|l| l.custom_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn each_bad_line_is_reported_with_its_number() {
        let wrong_url = line("c").replace(URL, "/v1/embeddings");
        let file = format!("{}\nnot json\n{}\n{wrong_url}\n", line("a"), line("a"));
        let errors = parse_input(file.as_bytes(), URL).unwrap_err();
        let found: Vec<(&str, u64)> = errors.iter().map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap())).collect();
        assert_eq!(found, [("invalid_json_line", 2), ("duplicate_custom_id", 3), ("invalid_url", 4)]);
    }

    #[test]
    fn an_empty_file_fails() {
        let errors = parse_input(b"\n  \n", URL).unwrap_err();
        assert_eq!(errors[0]["code"], "empty_file");
    }
}
