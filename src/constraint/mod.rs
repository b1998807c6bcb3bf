//! JSON-schema constrained decoding with llguidance (<https://github.com/guidance-ai/llguidance>,
//! crates `llguidance` and `toktrie` 1.9).
//!
//! llguidance compiles a JSON Schema into a grammar and, at each step, walks a byte trie of
//! the vocabulary to find the tokens that keep the output a prefix of some valid document.
//! The trie is built once per tokenizer ([`ConstraintFactory::new`]); each request gets a
//! [`Constraint`], whose [`mask`](Constraint::mask) is the allowed-token bitset for the next
//! sampled token and whose [`commit`](Constraint::commit) advances it by the sampled token.
//! A [`SchemaCache`] keeps the last few schemas compiled, so that a request's check and its
//! generation (and later requests with the same schema) compile it once.
//! Token bytes come from [`Tokenizer::token_bytes`] (byte-level BPE: the GPT-2 byte alphabet
//! mapped back to bytes; SentencePiece: `▁` as a space, `<0xNN>` as its byte); special tokens
//! are marked so no grammar matches them, and the end-of-generation ids are allowed exactly
//! when the document is complete (see `env.rs`).
//!
//! Schemas: drafts 4 to 2020-12; types, `properties`/`required`/`additionalProperties`,
//! `items`/`prefixItems`/`minItems`/`maxItems`, `enum`/`const`, numeric ranges and
//! `multipleOf`, `minLength`/`maxLength`/`pattern`, the formats llguidance implements
//! (`date-time`, `time`, `date`, `duration`, `email`, `hostname`, `ipv4`, `ipv6`, `uuid`,
//! `uri`, ...), `anyOf`/`allOf`, and `$ref` inside the document (`#/...`; no remote refs).
//! With `strict`, a keyword llguidance does not implement (`uniqueItems`, `contains`, `not`,
//! `if`, most `min/maxProperties`, `oneOf` whose options may overlap, an unknown `format`,
//! ...) is an error. Without it, such keywords are dropped with a warning
//! ([`Constraint::warnings`]) and the output may violate them; `oneOf` is treated as
//! `anyOf`. Keywords no draft defines (typos, `x-*` extensions) are ignored either way, as
//! JSON Schema says. An `x-guidance` key is replaced by our options. Known leniency: the
//! date formats accept second 60 at any time and February 29 in any year.
//!
//! Whitespace between JSON tokens is limited to one space or one or two newlines followed by
//! up to 20 spaces or tabs (as llama.cpp's JSON grammars do), so a model cannot loop on
//! whitespace; none is allowed before or after the document (with SentencePiece, the first
//! token cannot be a `▁`-prefixed one). Text the grammar fixes may be forced: the mask is
//! then that single token (byte-level BPE vocabularies only); there is no separate
//! fast-forward API.

mod env;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use toktrie::TokEnv;

use crate::tokenizer::Tokenizer;
use env::TokenEnv;

/// Skip pattern between JSON tokens: a space, or newlines and indentation.
const WHITESPACE: &str = r"(?: |\n{1,2}[ \t]{0,20})";
/// Compiled schemas a [`SchemaCache`] keeps.
const CACHED_SCHEMAS: usize = 4;

/// Why a constraint could not be built or advanced.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The vocabulary cannot be turned into llguidance's token trie.
    #[error("vocabulary unsupported for constrained decoding: {0}")]
    Vocabulary(String),
    /// The tokenizer has no end-of-generation token, so a document could never end.
    #[error("the tokenizer has no end-of-sequence token")]
    NoEos,
    /// llguidance could not set up its token tables.
    #[error("llguidance: {0}")]
    Setup(String),
    /// The schema is invalid, unsatisfiable, or (strict) uses an unsupported keyword.
    #[error("JSON schema rejected: {0}")]
    Schema(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownToken { id: u32, vocab_size: usize },
    /// The token is not allowed here (it is not in the mask); the state is unchanged.
    #[error("token {token} ({text:?}) is not allowed by the constraint here")]
    Rejected { token: u32, text: String },
    /// The parser failed while computing a mask or consuming a token; it stays failed.
    #[error("constraint failed: {0}")]
    Parser(String),
}

/// Shared, per-tokenizer state: the vocabulary trie and llguidance's token slices.
pub struct ConstraintFactory {
    parsers: ParserFactory,
    vocab_size: usize,
    /// Schemas compiled so far.
    compilations: AtomicU64,
}

impl std::fmt::Debug for ConstraintFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintFactory").field("vocab_size", &self.vocab_size).finish_non_exhaustive()
    }
}

impl ConstraintFactory {
    /// Reads every token's bytes and builds the trie (one pass over the vocabulary; build
    /// it once per model and share it).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self, ConstraintError> {
        let vocab_size = tokenizer.vocab_size();
        let env: TokEnv = Arc::new(TokenEnv::new(tokenizer)?);
        let mut parsers = ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Setup(format!("{e:#}")))?;
        parsers.quiet();
        Ok(Self { parsers, vocab_size, compilations: AtomicU64::new(0) })
    }

    /// Number of token ids (bits in a mask).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// How many schemas [`Self::json_schema`] has compiled (tests, statistics).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// The bytes the constraint matches for token `id`: its decoded bytes, or `0xFF` and
    /// its text for a special token.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        ((id as usize) < self.vocab_size).then(|| self.parsers.tok_env().tok_trie().token(id))
    }

    /// A constraint to documents valid under `schema` (see the module docs for `strict`).
    /// Every error in the schema is reported here, before any token is generated.
    pub fn json_schema(&self, schema: &Value, strict: bool) -> Result<Constraint, ConstraintError> {
        let mut schema = match schema {
            Value::Object(_) => schema.clone(),
            Value::Bool(true) => json!({}),
            Value::Bool(false) => return Err(ConstraintError::Schema("the schema `false` admits no document".into())),
            other => {
                return Err(ConstraintError::Schema(format!("a schema must be an object or a boolean, not {}", json_kind(other))))
            }
        };
        with_json_options(&mut schema, strict);
        self.compile(TopLevelGrammar::from_json_schema(schema), strict)
    }

    /// A constraint to the language of a grammar in llguidance's Lark syntax (JSON Schemas
    /// inline as `%json {...}`, special tokens as `<[id]>`): a tool call's syntax. Its inline
    /// schemas are compiled strictly.
    pub fn lark(&self, grammar: &str) -> Result<Constraint, ConstraintError> {
        self.compile(TopLevelGrammar::from_lark(grammar.to_string()), true)
    }

    fn compile(&self, grammar: TopLevelGrammar, strict: bool) -> Result<Constraint, ConstraintError> {
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let parser = self.parsers.create_parser(grammar).map_err(|e| ConstraintError::Schema(schema_message(&e)))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Schema(e));
        }
        let warnings = matcher.grammar_warnings();
        if strict && !warnings.is_empty() {
            return Err(ConstraintError::Schema(warnings.join("; ")));
        }
        Ok(Constraint { matcher, vocab_size: self.vocab_size, warnings })
    }

    /// A constraint to any JSON object.
    pub fn json_object(&self) -> Result<Constraint, ConstraintError> {
        self.json_schema(&object_schema(), true)
    }
}

/// The last few schemas' constraints, each compiled once: a request's check, its generation
/// and later requests with the same schema start from a clone of the fresh constraint.
pub struct SchemaCache {
    factory: ConstraintFactory,
    /// Fresh constraints by [`schema_key`], most recently used last.
    compiled: Vec<([u8; 32], Constraint)>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCache").field("factory", &self.factory).field("schemas", &self.compiled.len()).finish()
    }
}

impl SchemaCache {
    pub fn new(factory: ConstraintFactory) -> Self {
        Self { factory, compiled: Vec::new() }
    }

    pub fn factory(&self) -> &ConstraintFactory {
        &self.factory
    }

    /// [`ConstraintFactory::json_schema`], compiled only when `(schema, strict)` is not
    /// among the last few used. Errors are not kept: an invalid schema is compiled again.
    pub fn json_schema(&mut self, schema: &Value, strict: bool) -> Result<Constraint, ConstraintError> {
        self.cached(schema_key(schema, strict), |f| f.json_schema(schema, strict))
    }

    /// [`ConstraintFactory::lark`], compiled only when the grammar is not among the last few
    /// used.
    pub fn lark(&mut self, grammar: &str) -> Result<Constraint, ConstraintError> {
        let key: [u8; 32] = Sha256::new().chain_update(b"lark\0").chain_update(grammar.as_bytes()).finalize().into();
        self.cached(key, |f| f.lark(grammar))
    }

    /// The constraint of `key`, from the cache or from `compile`.
    fn cached(
        &mut self,
        key: [u8; 32],
        compile: impl FnOnce(&ConstraintFactory) -> Result<Constraint, ConstraintError>,
    ) -> Result<Constraint, ConstraintError> {
        if let Some(i) = self.compiled.iter().position(|(k, _)| *k == key) {
            let entry = self.compiled.remove(i);
            let constraint = entry.1.clone();
            self.compiled.push(entry);
            return Ok(constraint);
        }
        let constraint = compile(&self.factory)?;
        if self.compiled.len() >= CACHED_SCHEMAS {
            self.compiled.remove(0);
        }
        self.compiled.push((key, constraint.clone()));
        Ok(constraint)
    }

    /// [`ConstraintFactory::json_object`], compiled once.
    pub fn json_object(&mut self) -> Result<Constraint, ConstraintError> {
        self.json_schema(&object_schema(), true)
    }
}

/// Puts our JSON compile options into `schema` (an object): lenient unless `strict`, and
/// the whitespace between tokens limited (see the module docs). For schemas inlined in a
/// Lark grammar (`%json {...}`), which take their options from the schema itself.
pub fn with_json_options(schema: &mut Value, strict: bool) {
    let options = JsonCompileOptions {
        lenient: !strict,
        whitespace_pattern: Some(WHITESPACE.to_string()),
        ..JsonCompileOptions::default()
    };
    options.apply_to(schema);
}

/// The identity of a compiled schema: SHA-256 of the strict flag and the schema's JSON as
/// serde_json writes it. Object keys keep the document's order: llguidance emits properties
/// in that order, so schemas differing only in it compile differently.
pub fn schema_key(schema: &Value, strict: bool) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([u8::from(strict)]);
    h.update(schema.to_string().as_bytes());
    h.finalize().into()
}

/// The schema of [`ConstraintFactory::json_object`].
fn object_schema() -> Value {
    json!({"type": "object"})
}

/// One request's constraint: the grammar state after the tokens committed so far. A clone
/// goes on from the same state independently (llguidance's lexer cache stays shared).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    vocab_size: usize,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("vocab_size", &self.vocab_size)
            .field("finished", &self.is_finished())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// The tokens allowed next, as a bitset: token `t` is allowed when
    /// `mask[t / 32] >> (t % 32) & 1 == 1`; `ceil(vocab / 32)` words. The end-of-generation
    /// ids are set exactly when the document is complete; once [`is_finished`](Self::is_finished),
    /// only they are. A single set bit means the grammar forces that token.
    pub fn mask(&mut self) -> Result<Vec<u32>, ConstraintError> {
        let set = self.matcher.compute_mask_or_eos().map_err(|e| ConstraintError::Parser(format!("{e:#}")))?;
        let words = self.vocab_size.div_ceil(32);
        let mut mask = set.as_slice().get(..words).unwrap_or(set.as_slice()).to_vec();
        mask.resize(words, 0);
        if !self.vocab_size.is_multiple_of(32) {
            if let Some(last) = mask.last_mut() {
                *last &= (1u32 << (self.vocab_size % 32)) - 1;
            }
        }
        Ok(mask)
    }

    /// Advances by the sampled `token`. A token the mask does not allow is
    /// [`ConstraintError::Rejected`] and leaves the state as it was; an end-of-generation
    /// token after the document is finished is accepted and changes nothing.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if token as usize >= self.vocab_size {
            return Err(ConstraintError::UnknownToken { id: token, vocab_size: self.vocab_size });
        }
        if self.is_finished() && self.is_eos(token) {
            return Ok(());
        }
        let consumed = self.matcher.try_consume_tokens(&[token]).map_err(|e| ConstraintError::Parser(format!("{e:#}")))?;
        if consumed == 0 {
            return Err(ConstraintError::Rejected { token, text: self.token_text(token) });
        }
        Ok(())
    }

    /// Whether the document is complete and nothing but end-of-generation may follow (or an
    /// end-of-generation token was committed): generation can stop.
    pub fn is_finished(&self) -> bool {
        !self.matcher.is_error() && self.matcher.is_stopped()
    }

    /// What a non-strict schema compile dropped or approximated (empty when strict).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn is_eos(&self, token: u32) -> bool {
        self.matcher.tok_env().is_ok_and(|env| env.tok_trie().eos_tokens().contains(&token))
    }

    fn token_text(&self, token: u32) -> String {
        self.matcher
            .tok_env()
            .map_or_else(|_| String::new(), |env| String::from_utf8_lossy(env.tok_trie().token(token)).into_owned())
    }
}

/// llguidance's message, with its option names replaced by ours.
fn schema_message(e: &impl std::fmt::Display) -> String {
    format!("{e:#}").replace(
        "Enable 'coerce_one_of' option to approximate oneOf with anyOf",
        "without `strict`, oneOf is approximated by anyOf",
    )
}

/// The JSON type name of a value, for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
