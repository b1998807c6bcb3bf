//! Tokenizers built, used and dropped leave no memory behind (a model is loaded again after a
//! device loss, a reload or a model switch; the fuzz targets build one per input). Counted
//! exactly: this test binary's global allocator tracks the bytes alive, and the one test in it
//! runs alone. `tokenizers` 0.23.2's thread-local cache of merged words kept every dropped
//! model's entries, about 2 KB per build of these six-token vocabularies.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use webvlm::tokenizer::{GgufVocab, Tokenizer};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A byte-level vocabulary (`gpt2`, with its split regex) or a SentencePiece one.
fn vocab(model: &str) -> GgufVocab {
    let (tokens, merges): (&[&str], &[&str]) = match model {
        "gpt2" => (&["H", "e", "l", "o", "Ġ", "w", "He", "ll", "llo", "Ġw"], &["H e", "l l", "ll o", "Ġ w"]),
        _ => (&["<unk>", "<s>", "</s>", "<0x41>", "▁", "H", "i", "▁H", "▁Hi"], &[]),
    };
    let n = tokens.len();
    GgufVocab {
        model: model.into(),
        pre: Some("gpt2".into()),
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        scores: Some((0..n).map(|i| -(i as f32)).collect()),
        merges: Some(merges.iter().map(|m| m.to_string()).collect()),
        ..GgufVocab::default()
    }
}

fn build_encode_drop(times: usize) {
    for model in ["gpt2", "llama"] {
        let vocab = vocab(model);
        for _ in 0..times {
            let tokenizer = Tokenizer::from_gguf_vocab(&vocab).expect("builds");
            let ids = tokenizer.encode("Hello world, Hi Hi! 123", true).expect("encodes");
            assert!(!ids.is_empty());
        }
    }
}

#[test]
fn building_and_dropping_tokenizers_leaks_nothing() {
    // Warm-up: the shared pre-tokenizer, lazily built statics, the first thread-local tables.
    build_encode_drop(20);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    build_encode_drop(300);
    let grown = LIVE_BYTES.load(Ordering::Relaxed) - before;
    // 600 builds: a leak of even 100 bytes a build would show.
    assert!(grown < 16 * 1024, "{grown} bytes still allocated after 600 tokenizers were dropped");
}
