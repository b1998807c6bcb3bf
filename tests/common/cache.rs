//! Where the files that `scripts/fetch_smollm2.sh` and `scripts/fetch_qwen_tokenizer.sh` fetch
//! (real models, tokenizers; not committed) are found: `$WEBVLM_CACHE` when set (`./build.sh`
//! sets it; relative to the repository), else the first that has the file of
//! `${XDG_CACHE_HOME:-$HOME/.cache}/webvlm` (the scripts' default) and the repository's `.cache`
//! (where they used to go), so a plain `cargo test` finds them too.
#![allow(dead_code)]

use std::path::PathBuf;

/// `rel` (e.g. `models/SmolLM2-135M-Instruct.Q4_1.gguf`) in the cache; when no candidate has
/// it, where the fetch scripts would put it (for the test's "run scripts/..." message).
pub fn cached(rel: &str) -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("WEBVLM_CACHE") {
        return repo.join(dir).join(rel);
    }
    let user = set("XDG_CACHE_HOME").or_else(|| set("HOME").map(|h| h.join(".cache"))).map(|c| c.join("webvlm").join(rel));
    let candidates: Vec<PathBuf> = user.into_iter().chain([repo.join(".cache").join(rel)]).collect();
    candidates.iter().find(|p| p.exists()).unwrap_or(&candidates[0]).clone()
}
