//! What the server checks of a chat-completions body before it queues it (chat requests and
//! batch lines alike): the API's own field checks ([`ChatRequest::from_value`]), the model
//! named, and the images (`data:` URLs only, each at most `--max-image-bytes` decoded).

use serde_json::Value;
use webvlm::api::ChatRequest;
use webvlm::chat::{ChatContent, ContentPart};

use super::errors::HttpError;
use super::worker::ModelInfo;

/// A body that passed the checks.
#[derive(Debug)]
pub struct CheckedRequest {
    pub body: Value,
    pub stream: bool,
}

/// Checks a request body; the engine thread parses it again (a parsed request holds `Rc`s
/// and cannot cross threads).
pub fn check_request(model: &ModelInfo, max_image_bytes: usize, body: Value) -> Result<CheckedRequest, HttpError> {
    let request = ChatRequest::from_value(body.clone(), model.vocab)?;
    if let Some(name) = request.model.as_deref().filter(|&name| name != model.id) {
        return Err(model_not_found(name));
    }
    check_images(&request, max_image_bytes)?;
    Ok(CheckedRequest { body, stream: request.stream })
}

/// 404 for a model this server does not serve.
pub fn model_not_found(name: &str) -> HttpError {
    HttpError::not_found(Some("model"), Some("model_not_found"), format!("The model `{name}` does not exist"))
}

/// Image parts must be `data:` URLs (the server reads no files and fetches nothing) of at
/// most `max_bytes` once decoded.
fn check_images(request: &ChatRequest, max_bytes: usize) -> Result<(), HttpError> {
    for (i, message) in request.messages.iter().enumerate() {
        let ChatContent::Parts(parts) = &message.content else { continue };
        for (j, part) in parts.iter().enumerate() {
            let ContentPart::Image { url: Some(url) } = part else { continue };
            let param = format!("messages[{i}].content[{j}].image_url.url");
            let Some(rest) = url.strip_prefix("data:") else {
                return Err(HttpError::invalid(param, "invalid_image_url", "this server reads images from data: URLs only"));
            };
            let payload = rest.split_once(',').map_or(rest, |(_, data)| data);
            let decoded = payload.len() / 4 * 3;
            if decoded > max_bytes {
                let message =
                    format!("the image is about {decoded} bytes; this server takes images of at most {max_bytes} bytes");
                return Err(HttpError::invalid(param, "image_too_large", message));
            }
        }
    }
    Ok(())
}
