//! The store of recent responses (`store: true`, the default): each response object with the
//! conversation that led to it and its own output, as chat messages, so that a request naming
//! it in `previous_response_id` continues that conversation. Bounded by count and by bytes
//! (each entry holds its whole conversation, images included); the oldest go first.

use std::collections::VecDeque;

use serde_json::Value;

/// Responses kept at most.
pub const MAX_STORED_RESPONSES: usize = 256;
/// Bytes of JSON (conversations and response objects) kept at most.
pub const MAX_STORED_BYTES: usize = 64 << 20;

#[derive(Debug)]
struct Stored {
    id: String,
    response: Value,
    /// The conversation as chat messages: the input's and the response's output.
    history: Vec<Value>,
    bytes: usize,
}

/// Recent responses, oldest first.
#[derive(Debug)]
pub struct ResponseStore {
    entries: VecDeque<Stored>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for ResponseStore {
    fn default() -> Self {
        Self::new(MAX_STORED_RESPONSES, MAX_STORED_BYTES)
    }
}

impl ResponseStore {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        ResponseStore { entries: VecDeque::new(), bytes: 0, max_entries, max_bytes }
    }

    /// Keeps `response` (its `id`) and its conversation, evicting the oldest entries to stay
    /// within the bounds; one larger than the byte bound alone is not kept.
    pub fn insert(&mut self, response: &Value, history: Vec<Value>) {
        let Some(id) = response["id"].as_str() else { return };
        self.remove(id);
        let bytes = history.iter().chain([response]).map(|v| v.to_string().len()).sum::<usize>();
        if bytes > self.max_bytes || self.max_entries == 0 {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + bytes > self.max_bytes {
            let Some(old) = self.entries.pop_front() else { break };
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        self.entries.push_back(Stored { id: id.into(), response: response.clone(), history, bytes });
    }

    /// The response object stored under `id`.
    pub fn get(&self, id: &str) -> Option<&Value> {
        self.entries.iter().find(|e| e.id == id).map(|e| &e.response)
    }

    /// The conversation a request continuing `id` starts from.
    pub fn history(&self, id: &str) -> Option<&[Value]> {
        self.entries.iter().find(|e| e.id == id).map(|e| e.history.as_slice())
    }

    /// Forgets `id`; whether it was stored.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(at) = self.entries.iter().position(|e| e.id == id) else { return false };
        let old = self.entries.remove(at).expect("found");
        self.bytes -= old.bytes;
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(id: &str) -> Value {
        json!({ "id": id, "object": "response" })
    }

    #[test]
    fn evicts_the_oldest_by_count_and_by_bytes() {
        let mut store = ResponseStore::new(2, 1 << 20);
        for id in ["a", "b", "c"] {
            store.insert(&response(id), vec![json!({ "role": "user", "content": id })]);
        }
        assert!(store.get("a").is_none());
        assert_eq!(store.history("c").unwrap()[0]["content"], "c");
        assert_eq!(store.len(), 2);

        let big = "x".repeat(600);
        let mut store = ResponseStore::new(10, 1000);
        store.insert(&response("a"), vec![json!(big)]);
        store.insert(&response("b"), vec![json!(big)]);
        assert!(store.get("a").is_none() && store.get("b").is_some(), "the bytes bound evicts the oldest");
        store.insert(&response("huge"), vec![json!("y".repeat(2000))]);
        assert!(store.get("huge").is_none() && store.get("b").is_some(), "an entry above the bound alone is not kept");
        assert!(store.remove("b") && !store.remove("b"));
        assert!(store.is_empty());
    }
}
