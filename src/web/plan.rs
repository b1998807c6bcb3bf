//! The memory plan in the browser, before any weight is downloaded: the page fetches only the
//! headers (each GGUF part's and the mmproj's metadata and tensor infos, or a repository's
//! safetensors headers, with small Range requests) and pushes them; [`plan`] then checks the
//! model against the adapter's buffer limits and the `gpuMemory` budget
//! ([`crate::model::MemoryPlan`]) and refuses one that cannot fit with the
//! `AdapterTooSmallError` naming the largest context that would. A repository loaded without
//! a quantization gets the one [`MemoryPlan::choose_quant`] picks (Q8_0 if it fits, else
//! 4-bit).

use serde_json::{json, Value};

use super::{Inner, State, WebError};
use crate::error::{Classify, ErrorClass};
use crate::image::DEFAULT_MAX_EDGE;
use crate::model::{MemoryBudget, MemoryPlan, ModelError, ModelHeaders, PlanLimits, PlanOptions};
use crate::source::{LoadQuant, WeightLoader};

/// Plans the model whose headers are in; `Ok` with the plan as JSON, or with `"plan": null`
/// and the reason when the headers are of a model the plan does not read (the loader's own
/// errors then name the problem).
pub(super) fn plan(inner: &mut Inner) -> Result<Value, PlanError> {
    let State::Device(gpu) = &inner.state else { return Err(WebError::RepoLate.into()) };
    let limits = PlanLimits::from_caps(gpu.caps());
    let budget = inner.budget;
    let opts = PlanOptions {
        ctx: inner.context.max_ctx,
        chunk: inner.context.max_chunk,
        kv: inner.context.precision.kv_dtype(),
        text_quant: LoadQuant::Keep,
        vision_quant: inner.vision_quant,
        image_edge: DEFAULT_MAX_EDGE,
        seqs: 1,
        kv_pool: None,
    };
    let mmproj = inner.vision.as_ref().and_then(|v| v.header()).map(ModelHeaders::from);
    if inner.vision.is_some() && mmproj.is_none() {
        return Err(WebError::HeadersFirst.into());
    }
    let planned = match &mut inner.repo {
        Some(repo) => {
            let asked = repo.quant();
            let (metadata, tensors) = repo.headers().map_err(ModelError::from)?.ok_or(WebError::HeadersFirst)?;
            let text = ModelHeaders { metadata, tensors: &tensors };
            let quant = match inner.repo_quant_auto {
                true => MemoryPlan::choose_quant(text, mmproj, limits, opts, budget),
                false => Ok(asked),
            };
            let planned =
                quant.and_then(|q| Ok((q, MemoryPlan::new(text, mmproj, limits, PlanOptions { text_quant: q, ..opts })?)));
            // Without a plan, the quantization asked for (or Q8_0) stands.
            let quant = planned.as_ref().map_or(asked, |(q, _)| *q);
            repo.set_quant(quant);
            planned
        }
        None => {
            let tensors = inner.text.tensor_infos().ok_or(WebError::HeadersFirst)?;
            let text = ModelHeaders { metadata: inner.text.metadata(), tensors: &tensors };
            MemoryPlan::new(text, mmproj, limits, opts).map(|p| (LoadQuant::Keep, p))
        }
    };
    let (quant, plan) = match planned {
        Ok(p) => p,
        Err(e) if e.class() == ErrorClass::AdapterTooSmall => return Err(e.into()),
        Err(e) => return Ok(json!({ "plan": null, "reason": e.to_string() })),
    };
    plan.check(budget)?;
    Ok(json!({
        "plan": {
            "quant": format!("{quant:?}").to_lowercase(),
            "textWeightBytes": plan.text_weights,
            "visionWeightBytes": plan.vision_weights,
            "stateBytes": plan.state,
            "otherBytes": plan.step + plan.vision_scratch,
            "totalBytes": plan.total(),
            "budgetBytes": match budget { MemoryBudget::Bytes(b) => Some(b), MemoryBudget::Unknown => None },
            "context": plan.options.ctx,
            "largestContext": plan.largest_context(budget),
            // Requests that can decode together, each on a context of its own beside the engine's.
            "largestParallel": plan.largest_seqs(budget, 64),
        }
    }))
}

/// wasm32's whole address space: 64 Ki pages of 64 KiB.
const WASM32_MEMORY_BYTES: u64 = 4 << 30;

/// Memory outside the plan's buffers that the module needs while it runs: the tokenizer and
/// chat template, a download chunk in flight, a decoded image, the allocator's slack.
const WASM_RUNTIME_RESERVE: u64 = 256 << 20;

/// The CPU backend's budget: its weights, KV cache, recurrent states and scratch all live in
/// this module's memory, so the plan counts on what wasm32 can still address (4 GiB less what
/// the module holds now, the prompt cache's budget and [`WASM_RUNTIME_RESERVE`]), or on
/// `asked` (`gpuMemory`) where that is less. No single buffer can reach 2 GiB there: the CPU
/// device's buffer limit is `isize::MAX`, one byte under it.
pub(super) fn wasm_memory_budget(asked: Option<MemoryBudget>, prompt_cache_bytes: u64) -> MemoryBudget {
    let held = core::arch::wasm32::memory_size(0) as u64 * 65536;
    let free = WASM32_MEMORY_BYTES.saturating_sub(held + prompt_cache_bytes + WASM_RUNTIME_RESERVE);
    match asked {
        Some(MemoryBudget::Bytes(b)) => MemoryBudget::Bytes(b.min(free)),
        _ => MemoryBudget::Bytes(free),
    }
}

/// Why [`plan`] refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum PlanError {
    #[error(transparent)]
    Web(#[from] WebError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Classify for PlanError {
    fn class(&self) -> ErrorClass {
        match self {
            PlanError::Web(e) => e.class(),
            PlanError::Model(e) => e.class(),
        }
    }
}
