//! GPU memory a model needs, planned from file headers alone (metadata + tensor infos of the
//! text model and optional mmproj; no weight is read), against the adapter's limits and a
//! memory budget: so that a browser can refuse a model that cannot fit after fetching only
//! the headers (Range requests), before the download.
//!
//! What is counted: the weights as uploaded (each matrix's type after [`LoadQuant`], split into
//! binding-sized parts by [`plan_parts`], q/k/v and gate/up stacked as `source::load_stacked`
//! does; norm vectors as f32), the KV cache at the chosen context (recurrent states for
//! hybrid decoders), the step buffers and family scratch at the prefill chunk, and the vision
//! encoder's scratch for the largest image. A Llama 3.2 Vision (`mllama`) file holds its
//! encoder too: its `v.*` / `mm.*` tensors are the vision weights, and each context adds the
//! cross-attention store of one image (see `memory_plan/mllama.rs`). Weights, KV cache and the
//! cross-attention store are exact for the Llama family, Mllama and the Pixtral encoder
//! (tests compare them with loaded models); step, scratch and Mllama's vision buffers are the
//! allocations' formulas, the Pixtral and Qwen-VL encoders' scratch is the list of buffers
//! they allocate ([`vision_scratch_bytes`]), and other families' stacks are not modelled (a
//! few bytes of scale padding per stack).
//!
//! Load-time quantization follows the loaders: the text file's float matrices come through
//! `source::Requantize` (`text_quant`: every float matrix a model asks for in its file type,
//! embedding, LM head and an mllama file's encoder matrices included, but not the tables it
//! uploads as stored); an mmproj's matrices are asked for as `vision_quant` directly.
//!
//! On the CPU backend the budget is the RAM available ([`MemoryBudget::available_ram`]) and
//! the weights are counted once: a mapped GGUF's matrices are used where they lie (the page
//! cache's pages, which `MemAvailable` counts as available, not a copy), requantized ones are
//! copies in place of the file's. Where the backend repacks its matrices for their
//! products (`cpu::Repacked`, the AVX-512 levels), each product's matrix is counted a second
//! time as its repacked copy (an untied model's token embedding is a table, not repacked).
//!
//! WebGPU exposes no total memory figure, so the budget is the user's ([`MemoryBudget`]).
//! Reference for the browser practice: WebLLM's model records carry a `vram_required_MB`
//! figure and it checks `maxStorageBufferBindingSize` / `maxBufferSize` before loading.

use crate::backend::cpu::Repacked;
use crate::backend::gpu::Caps;
use crate::gguf::{GgmlType, GgufHeader, Metadata, TensorInfo};
use crate::image::DEFAULT_MAX_EDGE;
use crate::kernels::attention::KvDtype;
use crate::kernels::quant::plan_parts;
use crate::kernels::vision::PatchGrid;
use crate::model::families::llama::{self, LlamaConfig};
use crate::model::families::mllama::{self as mllama_family, MllamaConfig};
use crate::model::families::qwen35::{self, Qwen35Config};
use crate::model::vision;
use crate::model::vision::pixtral::PixtralConfig;
use crate::model::vision::qwen_vl::{self, QwenVlConfig};
use crate::model::{LayerKind, ModelError, TextConfig};
use crate::source::LoadQuant;

/// Bytes of GPU memory the model may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBudget {
    /// Given by the user (`--dev-memory 8G`, the package's `gpuMemory` option).
    Bytes(u64),
    /// Nothing known: only the adapter's per-buffer limits are checked, and the driver
    /// reports an allocation it cannot serve.
    Unknown,
}

/// The browser's default budget: WebGPU reports no memory size, and 4 GiB holds the 3-4 B
/// models at 4-8 bits (what WebLLM lists as fitting common laptops); users with larger GPUs
/// raise it. Natively the default is [`MemoryBudget::Unknown`] (wgpu exposes no portable
/// heap size; Vulkan's would need the raw instance).
pub const DEFAULT_WEB_BUDGET: u64 = 4 << 30;

impl MemoryBudget {
    /// The default for this build: [`DEFAULT_WEB_BUDGET`] in wasm, unknown natively.
    pub fn default_for_target() -> MemoryBudget {
        if cfg!(target_arch = "wasm32") {
            MemoryBudget::Bytes(DEFAULT_WEB_BUDGET)
        } else {
            MemoryBudget::Unknown
        }
    }

    /// The memory available to a new process now (Linux: `MemAvailable` of
    /// `/proc/meminfo`, what the kernel can give without swapping), the CPU backend's
    /// default budget; unknown elsewhere.
    pub fn available_ram() -> MemoryBudget {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib =
            meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
        kib.map_or(MemoryBudget::Unknown, |k| MemoryBudget::Bytes(k << 10))
    }

    fn bytes(self) -> Option<u64> {
        match self {
            MemoryBudget::Bytes(b) => Some(b),
            MemoryBudget::Unknown => None,
        }
    }
}

impl std::str::FromStr for MemoryBudget {
    type Err = String;
    /// `8G`, `8GiB`, `8GB`, `512M`, `1.5G`, a plain byte count (units are binary).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let digits = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits);
        let scale: u64 = match unit.trim() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(format!("unknown memory unit in {s:?} (B, K, M, G, T)")),
        };
        let value: f64 = num.parse().map_err(|_| format!("not a memory size: {s:?}"))?;
        let bytes = value * scale as f64;
        if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
            return Err(format!("memory size out of range: {s:?}"));
        }
        Ok(MemoryBudget::Bytes(bytes as u64))
    }
}

/// The adapter limits the plan checks (from [`Caps`] or `wgpu::Limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_buffer: u64,
    pub max_storage_binding: u64,
    /// Each matrix of a format the CPU backend repacks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) has a
    /// repacked copy too ([`Caps::repacked_weights`]).
    pub repacked_weights: bool,
}

impl PlanLimits {
    pub fn from_caps(caps: &Caps) -> PlanLimits {
        PlanLimits {
            max_buffer: caps.max_buffer,
            max_storage_binding: caps.max_storage_binding,
            repacked_weights: caps.repacked_weights,
        }
    }

    pub fn from_limits(limits: &wgpu::Limits) -> PlanLimits {
        PlanLimits {
            max_buffer: limits.max_buffer_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            repacked_weights: false,
        }
    }

    /// The largest weight part ([`Caps::part_limit`]).
    fn part_limit(&self) -> u64 {
        self.max_storage_binding.min(self.max_buffer)
    }
}

/// What the engine will be asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Context in tokens (KV cache rows).
    pub ctx: u32,
    /// Prompt tokens per prefill step.
    pub chunk: u32,
    pub kv: KvDtype,
    /// Load-time quantization of the text file's float matrices (`source::Requantize`).
    pub text_quant: LoadQuant,
    /// Load-time quantization of the mmproj's matrices.
    pub vision_quant: LoadQuant,
    /// Longest image edge the encoder will be given.
    pub image_edge: u32,
    /// Sequences decoding at once (`serve --parallel`): above one, each has a context of
    /// its own beside the engine's (see [`MemoryPlan::contexts`]).
    pub seqs: u32,
    /// KV rows the sequences share (a parallel run's pool, `engine::KvPool`); `None`: a
    /// whole context each.
    pub kv_pool: Option<u64>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            ctx: 4096,
            chunk: 512,
            kv: KvDtype::F16,
            text_quant: LoadQuant::Keep,
            vision_quant: LoadQuant::Keep,
            image_edge: DEFAULT_MAX_EDGE,
            seqs: 1,
            kv_pool: None,
        }
    }
}

/// A GGUF file's header as the plan reads it.
#[derive(Clone, Copy)]
pub struct ModelHeaders<'a> {
    pub metadata: &'a Metadata,
    pub tensors: &'a [TensorInfo],
}

impl<'a> From<&'a GgufHeader> for ModelHeaders<'a> {
    fn from(h: &'a GgufHeader) -> Self {
        ModelHeaders { metadata: &h.metadata, tensors: &h.tensors }
    }
}

/// GPU bytes of one model at one context, by kind; the state, step buffers and cross store
/// are per context, and there are [`MemoryPlan::contexts`] of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub options: PlanOptions,
    /// Text model weights as uploaded.
    pub text_weights: u64,
    /// Vision encoder + projector weights as uploaded (0 without an mmproj).
    pub vision_weights: u64,
    /// KV caches (and recurrent states with their checkpoints) at `options.ctx`, per context.
    pub state: u64,
    /// Bytes each context position adds to `state`.
    pub state_per_token: u64,
    /// Step buffers, family scratch and logits at `options.chunk`, of the engine's context.
    pub step: u64,
    /// The same for the context of one of the sequences decoding at once, whose logits
    /// buffer holds one row (`Context::paged`).
    pub slot_step: u64,
    /// The buffers of a batched step of `n` sequences (`model::batch::StepBatch`: rows of
    /// activations and scratch for a token of each and a prompt chunk, a row of logits per
    /// sequence, a scratch for the decode steps of sequences in one KV arena) take
    /// `batch_step[0] + n * batch_step[1]`.
    pub batch_step: [u64; 2],
    /// The vision encoder's scratch for one image of `options.image_edge` (0 without an
    /// encoder; Mllama: one image at its tile count, whatever the edge).
    pub vision_scratch: u64,
    /// A cross-attention decoder's store for one image (Mllama: keys and values of every cross
    /// layer, and the step's mask rows), per context; 0 for other decoders.
    pub cross_store: u64,
    /// The model's own context length (the largest context worth planning).
    pub model_context: u32,
    /// Most positions one layer's KV cache buffer can hold within the binding limit.
    pub ctx_buffer_limit: u32,
}

impl MemoryPlan {
    /// Plans `text` (+ `mmproj`) for `limits` and `opts`. Fails on headers the engine could
    /// not load (unsupported architecture, misshapen tensors) and on buffers over the
    /// adapter's limits.
    pub fn new(
        text: ModelHeaders<'_>,
        mmproj: Option<ModelHeaders<'_>>,
        limits: PlanLimits,
        opts: PlanOptions,
    ) -> Result<MemoryPlan, ModelError> {
        let vocab = text.tensors.iter().find(|t| t.name == "token_embd.weight").and_then(|t| t.dims.get(1)).copied();
        let vocab = vocab.ok_or_else(|| ModelError::Invalid("no token_embd.weight".into()))? as u32;
        let (cfg, layers, mllama) = text_layers(text.metadata, vocab)?;
        let float = |t: &TensorInfo| matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let text_quant =
            |t: &TensorInfo| if float(t) && !mllama::is_kept_table(&t.name) { opts.text_quant } else { LoadQuant::Keep };
        // The RoPE divisors fill the family's RoPE table, not a weight.
        let weights = |vision: bool| -> Vec<TensorInfo> {
            let wanted = |t: &&TensorInfo| t.name != "rope_freqs.weight" && mllama::is_vision_tensor(&t.name) == vision;
            text.tensors.iter().filter(wanted).cloned().collect()
        };
        let text_weights = weight_bytes(&weights(false), limits, text_quant)?;
        let (vision_weights, vision_scratch) = match (mmproj, &mllama) {
            (Some(m), _) => {
                (weight_bytes(m.tensors, limits, |_| opts.vision_quant)?, vision_scratch(m, limits, opts.image_edge)?)
            }
            (None, Some(_)) => {
                (weight_bytes(&weights(true), limits, text_quant)?, mllama::vision_scratch(text.metadata, limits)?)
            }
            (None, None) => (0, 0),
        };
        let chunk = opts.chunk.min(opts.ctx).max(1);
        let (extra_step, cross_store) = match &mllama {
            Some(m) => (mllama::extra_step_bytes(m, chunk as u64), mllama::cross_store_bytes(m, chunk as u64)),
            None => (0, 0),
        };
        let state_per_token: u64 = layers
            .iter()
            .map(|l| match *l {
                LayerKind::Attention { kv_dim } => 2 * opts.kv.cache_bytes(1, kv_dim),
                LayerKind::Recurrent { .. } => 0,
            })
            .sum();
        let max_kv_row = layers
            .iter()
            .map(|l| if let LayerKind::Attention { kv_dim } = *l { opts.kv.cache_bytes(1, kv_dim) } else { 0 })
            .max()
            .unwrap_or(0);
        let ctx_buffer_limit = match max_kv_row {
            0 => u32::MAX,
            row => (limits.part_limit() / row).min(u32::MAX as u64) as u32,
        };
        let plan = MemoryPlan {
            options: opts,
            text_weights,
            vision_weights,
            state: state_bytes(&layers, opts.ctx, opts.kv),
            state_per_token,
            step: step_bytes(&cfg, chunk, logits_rows(&cfg, chunk, limits)) + extra_step,
            slot_step: step_bytes(&cfg, chunk, 1) + extra_step,
            batch_step: {
                // A row per sequence and a chunk's, a row of logits (and of last rows) per
                // sequence, and the scratch of steps whose sequences share a KV arena.
                let rows = |n: u32| {
                    let (rows, last_rows) = (n + chunk, 4 * n as u64 * cfg.n_embd as u64);
                    step_bytes(&cfg, rows, n as u64)
                        + last_rows
                        + scratch_bytes(&cfg, n)
                        + decode_partials(&cfg, n)
                        + mllama.as_ref().map_or(0, |m| mllama::extra_step_bytes(m, rows as u64))
                };
                let row = rows(2) - rows(1);
                [rows(1) - row, row]
            },
            vision_scratch,
            cross_store,
            model_context: cfg.context_length,
            ctx_buffer_limit,
        };
        if opts.ctx > ctx_buffer_limit {
            return Err(ModelError::BufferTooLarge {
                what: format!("one layer's KV cache at {} tokens", opts.ctx),
                bytes: max_kv_row * opts.ctx as u64,
                limit: limits.part_limit(),
            });
        }
        Ok(plan)
    }

    /// Contexts the engine holds: its own, and with sequences decoding at once
    /// (`options.seqs` > 1) one per sequence (`engine::Parallel`'s slots).
    pub fn contexts(&self) -> u64 {
        contexts(self.options.seqs)
    }

    /// Bytes of everything but the contexts' state.
    pub fn fixed(&self) -> u64 {
        self.text_weights + self.vision_weights + self.vision_scratch + self.buffers(self.options.seqs)
    }

    /// Bytes of the contexts' step buffers and cross stores with `seqs` sequences decoding at
    /// once: the engine's own context, and when there are several, one per sequence and the
    /// batched step's.
    fn buffers(&self, seqs: u32) -> u64 {
        let slots = contexts(seqs) - 1;
        let batch = if slots > 0 { self.batch_step[0] + slots * self.batch_step[1] } else { 0 };
        self.step + self.cross_store + slots * (self.slot_step + self.cross_store) + batch
    }

    /// Everything at the planned context and sequences.
    pub fn total(&self) -> u64 {
        self.fixed() + self.states(self.options.seqs)
    }

    /// Bytes of the sequence states of `seqs` sequences decoding at once: each context's
    /// whole state, or with a KV pool, the engine's own context's, the sequences' recurrent
    /// states and the pool's rows; with several sequences, one context's KV range more (a
    /// sequence's KV cache grows by a copy to a larger range).
    fn states(&self, seqs: u32) -> u64 {
        let kv_range = self.state_per_token * self.options.ctx as u64;
        let fixed_state = self.state - kv_range;
        match self.options.kv_pool {
            _ if seqs <= 1 => self.state,
            Some(rows) => self.state + seqs as u64 * fixed_state + rows * self.state_per_token + kv_range,
            None => contexts(seqs) * self.state + kv_range,
        }
    }

    /// The largest context (at most the model's own and the KV buffer limit) whose total
    /// fits `budget`; `None` when not even one position fits (or nothing is known: the
    /// model's context then).
    pub fn largest_context(&self, budget: MemoryBudget) -> Option<u32> {
        let cap = self.model_context.min(self.ctx_buffer_limit);
        let Some(bytes) = budget.bytes() else { return Some(cap) };
        // Recurrent states do not grow with the context: they are in `state` at any context.
        let fixed_state = self.state - self.state_per_token * self.options.ctx as u64;
        let room = bytes.checked_sub(self.fixed() + self.contexts() * fixed_state)?;
        // Each context's KV range, and one more for a growing one (`Self::states`; a KV
        // pool's rows are counted as whole contexts here).
        let ranges = self.contexts() + u64::from(self.options.seqs > 1);
        let ctx = match self.state_per_token {
            0 => cap as u64,
            per => (room / (per * ranges)).min(cap as u64),
        };
        (ctx >= 1).then_some(ctx as u32)
    }

    /// The most sequences decoding at once (up to `cap`) whose contexts fit `budget` at the
    /// planned context: `cap` when nothing is known, 0 when not even one fits.
    pub fn largest_seqs(&self, budget: MemoryBudget, cap: u32) -> u32 {
        let Some(bytes) = budget.bytes() else { return cap };
        let shared = self.text_weights + self.vision_weights + self.vision_scratch;
        let fit = |n: u32| shared + self.buffers(n) + self.states(n) <= bytes;
        (1..=cap).rev().find(|&n| fit(n)).unwrap_or(0)
    }

    /// Ok when the plan fits `budget`; else what needs how much, and the largest context
    /// (and number of sequences) that would fit.
    pub fn check(&self, budget: MemoryBudget) -> Result<(), ModelError> {
        match budget.bytes() {
            Some(available) if self.total() > available => Err(ModelError::DoesNotFit {
                needed: self.total(),
                available,
                weights: self.text_weights + self.vision_weights,
                state: self.states(self.options.seqs),
                ctx: self.options.ctx,
                other: self.fixed() - self.text_weights - self.vision_weights,
                largest_ctx: self.largest_context(budget).unwrap_or(0),
                seqs: self.options.seqs,
                largest_seqs: self.largest_seqs(budget, self.options.seqs),
            }),
            _ => Ok(()),
        }
    }

    /// The load-time quantization for a source whose text matrices are F32/F16/BF16: none
    /// when the file is already quantized; else Q8_0 when the model fits `budget` at
    /// `opts.ctx` with it, otherwise Q4_0. (Q4_K takes the same bytes and is closer to the
    /// weights, but its quantizer runs about ten times slower on the CPU: ~17 minutes for a
    /// 24B model's matrices natively; a user may still ask for it.) Fails with the 4-bit
    /// plan's error when neither fits.
    pub fn choose_quant(
        text: ModelHeaders<'_>,
        mmproj: Option<ModelHeaders<'_>>,
        limits: PlanLimits,
        opts: PlanOptions,
        budget: MemoryBudget,
    ) -> Result<LoadQuant, ModelError> {
        let float = |t: &&TensorInfo| matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        let float_matrices = text.tensors.iter().filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2).any(|t| float(&t));
        if !float_matrices {
            return Ok(LoadQuant::Keep);
        }
        let mut last = Ok(());
        for quant in [LoadQuant::Q8_0, LoadQuant::Q4_0] {
            let plan = MemoryPlan::new(text, mmproj, limits, PlanOptions { text_quant: quant, ..opts })?;
            last = plan.check(budget);
            if last.is_ok() {
                return Ok(quant);
            }
        }
        last.map(|()| LoadQuant::Q4_0)
    }
}

/// Contexts of an engine running `seqs` sequences at once: its own, and one per sequence
/// when there are several.
fn contexts(seqs: u32) -> u64 {
    match seqs {
        0 | 1 => 1,
        n => 1 + n as u64,
    }
}

/// The decoder's shape and what each layer keeps, from the text model's metadata (and the
/// Mllama config of an `mllama` file); `vocab` is the token embedding's rows.
fn text_layers(md: &Metadata, vocab: u32) -> Result<(TextConfig, Vec<LayerKind>, Option<MllamaConfig>), ModelError> {
    let arch = md.architecture()?;
    if qwen35::ARCHITECTURES.contains(&arch) {
        let cfg = Qwen35Config::from_metadata(md, vocab)?;
        return Ok((cfg.text.clone(), qwen35::layer_kinds(&cfg), None));
    }
    if arch == mllama_family::ARCH {
        let cfg = MllamaConfig::from_metadata(md, vocab)?;
        let t = &cfg.llama.text;
        // Cross layers keep no KV cache (`Mllama::layers`).
        let layers = vec![LayerKind::Attention { kv_dim: t.kv_dim() }; t.n_layer as usize - cfg.cross_layers.len()];
        return Ok((t.clone(), layers, Some(cfg)));
    }
    if !llama::ARCHITECTURES.contains(&arch) {
        return Err(ModelError::UnsupportedArch { arch: arch.into(), supported: crate::model::families::SUPPORTED });
    }
    let cfg = LlamaConfig::from_metadata(md, vocab)?;
    let layers = vec![LayerKind::Attention { kv_dim: cfg.text.kv_dim() }; cfg.text.n_layer as usize];
    Ok((cfg.text, layers, None))
}

/// Bytes of the uploaded weights: vectors as f32; matrices (2-D, or more dims flattened into
/// the columns as the patch embedding is) in their upload type, split into parts; runs of
/// a block's q/k/v and gate/up (`blk.N.attn_q`..., not Mllama's `cross_attn_*`, loaded one
/// by one) of one type stacked into one weight where it fits one binding. `quant` gives each
/// 2-D tensor's load-time quantization.
fn weight_bytes(tensors: &[TensorInfo], limits: PlanLimits, quant: impl Fn(&TensorInfo) -> LoadQuant) -> Result<u64, ModelError> {
    let by_name: std::collections::HashMap<&str, &TensorInfo> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut stacked = std::collections::HashSet::new();
    let mut total = 0u64;
    for t in tensors {
        for group in [["attn_q", "attn_k", "attn_v"].as_slice(), ["ffn_gate", "ffn_up"].as_slice()] {
            let Some(prefix) = t.name.strip_suffix(&format!("{}.weight", group[0])) else { continue };
            let block = prefix.strip_prefix("blk.").and_then(|rest| rest.strip_suffix('.'));
            if !block.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
                continue;
            }
            let members: Option<Vec<&TensorInfo>> =
                group.iter().map(|g| by_name.get(format!("{prefix}{g}.weight").as_str()).copied()).collect();
            if let Some(members) = members {
                total += stack_bytes(&members, limits, &quant)?;
                stacked.extend(members.iter().map(|m| m.name.clone()));
            }
        }
    }
    // The token embedding is a table, not a product's matrix, unless it is the LM head too.
    let untied = by_name.contains_key("output.weight");
    for t in tensors.iter().filter(|t| !stacked.contains(&t.name)) {
        total += match t.dims.len() {
            0 | 1 => (4 * t.n_elements()).max(4),
            _ => {
                let (ty, rows, cols) = upload_shape(t, &quant)?;
                let table = untied && t.name == "token_embd.weight";
                matrix_bytes(ty, rows, cols, PlanLimits { repacked_weights: limits.repacked_weights && !table, ..limits })?
            }
        };
    }
    Ok(total)
}

/// A tensor's upload type and `rows x cols` (2-D: the load-time quantization applies; more
/// dims: the last is the rows, the file's type is kept).
fn upload_shape(t: &TensorInfo, quant: &impl Fn(&TensorInfo) -> LoadQuant) -> Result<(GgmlType, u32, u32), ModelError> {
    let rows = *t.dims.last().unwrap_or(&1);
    let cols = t.n_elements() / rows.max(1);
    let (rows, cols) = (to_u32(&t.name, rows)?, to_u32(&t.name, cols)?);
    let ty = if t.dims.len() == 2 { quant(t).target(t.ty, cols) } else { t.ty };
    Ok((ty, rows, cols))
}

fn to_u32(name: &str, v: u64) -> Result<u32, ModelError> {
    u32::try_from(v).map_err(|_| ModelError::Invalid(format!("{name}: dimension {v} too large")))
}

/// Bytes of a matrix's parts, and of its repacked copy where the CPU backend makes one.
fn matrix_bytes(ty: GgmlType, rows: u32, cols: u32, limits: PlanLimits) -> Result<u64, ModelError> {
    let (_, parts) = plan_parts(ty, rows, cols, limits.part_limit()).map_err(|e| ModelError::Invalid(e.to_string()))?;
    Ok(parts.iter().map(|p| p.bytes).sum::<u64>() + repacked_bytes(ty, rows, cols, limits))
}

/// Bytes of the repacked copy the CPU backend makes of a matrix its products read.
fn repacked_bytes(ty: GgmlType, rows: u32, cols: u32, limits: PlanLimits) -> u64 {
    if limits.repacked_weights {
        Repacked::bytes_for(ty, rows as usize, cols as usize)
    } else {
        0
    }
}

/// Bytes of matrices that multiply one input, as `source::load_stacked` uploads them:
/// consecutive ones of one type stacked when the stack is one part and keeps split scales
/// aligned, the others alone.
fn stack_bytes(
    members: &[&TensorInfo],
    limits: PlanLimits,
    quant: &impl Fn(&TensorInfo) -> LoadQuant,
) -> Result<u64, ModelError> {
    let shapes = members.iter().map(|t| upload_shape(t, quant)).collect::<Result<Vec<_>, _>>()?;
    let mut total = 0;
    let mut start = 0;
    while start < shapes.len() {
        let (ty, _, cols) = shapes[start];
        let end = start + shapes[start..].iter().take_while(|s| s.0 == ty && s.2 == cols).count();
        let run = &shapes[start..end];
        let alone = || run.iter().map(|&(ty, rows, cols)| matrix_bytes(ty, rows, cols, limits)).sum::<Result<u64, _>>();
        let format = crate::kernels::quant::WeightFormat::of(ty, cols as usize);
        let aligned = format.is_some_and(|f| {
            !f.split_scale() || (cols as usize / f.block()).is_multiple_of(2) || run.iter().all(|s| s.1 % 2 == 0)
        });
        let rows: u32 = run.iter().map(|s| s.1).sum();
        total += match plan_parts(ty, rows, cols, limits.part_limit()) {
            Ok((_, parts)) if run.len() >= 2 && aligned && parts.len() == 1 => {
                parts[0].bytes + repacked_bytes(ty, rows, cols, limits)
            }
            _ => alone()?,
        };
        start = end;
    }
    Ok(total)
}

/// Bytes of every layer's state at `ctx` positions (`SequenceState::new`).
fn state_bytes(layers: &[LayerKind], ctx: u32, kv: KvDtype) -> u64 {
    let buffer = |b: u64| b.max(4).next_multiple_of(4);
    layers
        .iter()
        .map(|l| match *l {
            LayerKind::Attention { kv_dim } => 2 * buffer(kv.cache_bytes(ctx, kv_dim)),
            // The state and its checkpoint.
            LayerKind::Recurrent { conv_floats, ssm_floats } => 2 * (4 * conv_floats.max(1) + 4 * ssm_floats.max(1)),
        })
        .sum()
}

/// Rows of logits an engine's context keeps: a whole chunk's, within the binding limit
/// (`Context::new`).
fn logits_rows(c: &TextConfig, chunk: u32, limits: PlanLimits) -> u64 {
    (chunk as u64).min(limits.max_storage_binding.min(256 << 20) / (4 * c.vocab as u64)).max(1)
}

/// Step buffers (`model::step::StepBuffers`) with `logits_rows` rows of logits, the Llama
/// family's scratch and the decode attention's split-K partials at `chunk` tokens (counted at
/// their most splits, under 2 MiB, so that the plan's only context-dependent term is the
/// state).
fn step_bytes(c: &TextConfig, chunk: u32, logits_rows: u64) -> u64 {
    let (rows, d, vocab) = (chunk as u64, c.n_embd as u64, c.vocab as u64);
    let step = 4 * (rows * (1 + 3 + 2 * d) + d + logits_rows * vocab) + 8 * vocab;
    step + scratch_bytes(c, chunk) + decode_partials(c, 1)
}

/// A family scratch's rows for `rows` rows: q|k|v, the attention's output, the gated FFN's.
fn scratch_bytes(c: &TextConfig, rows: u32) -> u64 {
    let qkv = (c.n_head + 2 * c.n_head_kv) as u64 * c.head_dim as u64;
    4 * rows as u64 * (qkv + c.q_dim() as u64 + 3 * c.n_ff as u64)
}

/// Split-K decode partials of `seqs` one-token sequences at the most splits.
fn decode_partials(c: &TextConfig, seqs: u32) -> u64 {
    let splits = crate::kernels::attention::default_splits(u32::MAX) as u64;
    4 * splits * seqs as u64 * c.n_head as u64 * (c.head_dim as u64 + 2)
}

/// The vision encoder's scratch for a square image of the largest `edge` it would be given
/// (at most the encoder's own largest, sides rounded up to whole merged patches).
fn vision_scratch(mmproj: ModelHeaders<'_>, limits: PlanLimits, edge: u32) -> Result<u64, ModelError> {
    let md = mmproj.metadata;
    let square = |largest: u32, side: u32| edge.min(largest).max(side).next_multiple_of(side);
    match vision::projector_type(md)?.as_str() {
        "pixtral" => {
            let c = PixtralConfig::from_metadata(md)?;
            let edge = square(c.image_size, c.patch_size * c.merge_size);
            vision_scratch_bytes(EncoderConfig::Pixtral(&c), edge, edge, limits)
        }
        p if qwen_vl::PROJECTORS.contains(&p) => {
            let position_embd = mmproj.tensors.iter().find(|t| t.name == qwen_vl::POSITION_EMBD);
            let c = QwenVlConfig::from_headers(md, position_embd)?;
            let edge = square(c.max_image_edge(), c.patch_size * c.merge_size);
            vision_scratch_bytes(EncoderConfig::QwenVl(&c), edge, edge, limits)
        }
        other => Err(vision::unsupported(other)),
    }
}

/// The config of an mmproj's encoder, for [`vision_scratch_bytes`].
#[derive(Clone, Copy, Debug)]
pub enum EncoderConfig<'a> {
    Pixtral(&'a PixtralConfig),
    QwenVl(&'a QwenVlConfig),
}

/// Bytes of the vision encoder's scratch for one preprocessed `height x width` image (sides
/// multiples of the patch): every buffer one encode allocates, the features included (the
/// encoders' `scratch_buffers`, which their allocations are checked against in debug
/// builds), each checked against the binding limit.
pub fn vision_scratch_bytes(encoder: EncoderConfig<'_>, height: u32, width: u32, limits: PlanLimits) -> Result<u64, ModelError> {
    let binding = limits.max_storage_binding;
    let grid = |patch: u32| PatchGrid { rows: height / patch, cols: width / patch };
    let buffers = match encoder {
        EncoderConfig::Pixtral(c) => c.scratch_buffers(grid(c.patch_size), binding),
        EncoderConfig::QwenVl(c) => c.scratch_buffers(grid(c.patch_size), binding),
    };
    if let Some(&(what, bytes)) = buffers.iter().find(|(_, b)| *b > binding) {
        return Err(ModelError::BufferTooLarge {
            what: format!("vision {what} of a {width}x{height} image"),
            bytes,
            limit: binding,
        });
    }
    Ok(buffers.iter().map(|(_, b)| b).sum())
}

mod mllama;

#[cfg(test)]
#[path = "memory_plan_tests.rs"]
mod tests;
